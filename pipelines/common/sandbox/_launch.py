"""What a run executes: interpreter, allowed paths, bwrap argv, supervisor config."""

from __future__ import annotations

import functools
import json
import logging
import marshal
import os
import resource
import shutil
import stat
import subprocess
import sys

from pipelines.common.sandbox import _confine, _uids
from pipelines.common.sandbox._types import BWRAP, LANDLOCK, SandboxLimits

logger = logging.getLogger(__name__)

SUPERVISOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_supervisor.py")
# Read-only for the program (bwrap binds them, Landlock allows read+execute):
# what a dynamically linked interpreter and its standard library need. Homes,
# /tmp, /var, /run, /srv, /mnt, /media, /opt and /proc of the host stay out.
SYSTEM_DIRS = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/nix/store",
)
# Device files the program may use under Landlock (bwrap builds its own /dev).
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
SCRIPT_NAME = "main.py"
TMPFS_BYTES = 64 << 20  # size cap of bwrap's private /tmp and /dev/shm (RAM-backed)
_FALLBACK_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3")
_R_X_OTHER = stat.S_IROTH | stat.S_IXOTH
_ROOTS_CODE = (
    "import json, os, sys\n"
    "print(json.dumps([sys.prefix, sys.exec_prefix, sys.base_prefix,"
    " sys.base_exec_prefix, os.path.realpath(sys.executable)]))\n"
)


@functools.cache
def default_python(as_other: bool) -> str | None:
    """The interpreter runs use: ours if the sandbox user may execute it.

    Args:
        as_other: whether the program runs as a uid other than ours (root).

    Returns:
        A path, or None when no candidate is executable by that uid.
    """
    candidates = [sys.executable] if sys.executable else []
    candidates += [p for p in _FALLBACK_PYTHONS if os.path.exists(p)]
    for candidate in candidates:
        if not as_other or _uids.other_can_reach(candidate, _R_X_OTHER):
            logger.info("sandbox interpreter: %s", candidate)
            return candidate
    logger.error(
        "no Python interpreter the sandbox user can execute (tried %s)",
        ", ".join(candidates),
    )
    return None


def _covered(path: str, dirs: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


@functools.cache
def interpreter_roots(interpreter: str) -> tuple[str, ...]:
    """Directories outside :data:`SYSTEM_DIRS` the interpreter must read.

    Its prefixes (a virtual environment's and its base installation's) and the
    installation of the resolved executable. ``/`` and the caller's home itself
    are never returned: allowing them would void the isolation; an interpreter
    that needs them then fails to start, which is reported.

    Args:
        interpreter: path of the Python executable runs use.

    Returns:
        Sorted absolute directories, parents before children.
    """
    found = set()
    for spelling in (os.path.abspath(interpreter), os.path.realpath(interpreter)):
        found.add(os.path.dirname(os.path.dirname(spelling)))
    try:
        out = subprocess.run(
            [interpreter, "-E", "-s", "-c", _ROOTS_CODE],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        *prefixes, executable = json.loads(out.stdout)
        found.update(prefixes)
        found.add(os.path.dirname(os.path.dirname(executable)))
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        logger.warning("cannot ask %s for its prefixes: %s", interpreter, exc)
    system = [os.path.realpath(d) for d in SYSTEM_DIRS if os.path.isdir(d)]
    home = os.path.realpath(os.path.expanduser("~"))
    roots = []
    for root in sorted(found):
        if root in ("/", home):
            logger.warning("not exposing %s to sandboxed programs", root)
            continue
        if os.path.isdir(root) and not _covered(root, system + roots):
            roots.append(root)
    return tuple(roots)


def bwrap_path() -> str:
    """The bubblewrap executable (``bwrap`` on PATH)."""
    return shutil.which("bwrap") or "/usr/bin/bwrap"


@functools.cache
def _bwrap_supports_size() -> bool:
    try:
        out = subprocess.run(
            [bwrap_path(), "--help"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return "--size" in out.stdout + out.stderr


def bwrap_argv(workdir: str, roots: tuple[str, ...]) -> list[str]:
    """Bubblewrap's arguments: an allow-listed read-only view, ``workdir`` writable.

    Args:
        workdir: the run's directory (bound read-write at the same path).
        roots: interpreter directories from :func:`interpreter_roots`.

    Returns:
        The argv prefix, ending in ``--``.
    """
    argv = [bwrap_path(), "--unshare-all", "--die-with-parent", "--new-session"]
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    for root in roots:
        argv += ["--ro-bind", root, root]
    sized = ["--size", str(TMPFS_BYTES)] if _bwrap_supports_size() else []
    argv += ["--dev", "/dev", "--proc", "/proc"]
    argv += [*sized, "--tmpfs", "/tmp", *sized, "--tmpfs", "/dev/shm"]
    argv += ["--bind", workdir, workdir]
    # bwrap's own root is a writable tmpfs (mount points for the binds above):
    # read-only, so writes land only in the work dir and the capped tmpfses.
    argv += ["--remount-ro", "/", "--chdir", workdir, "--"]
    return argv


def rlimits(limits: SandboxLimits, uid: int | None) -> list[tuple[int, int, int]]:
    """The ``(resource, soft, hard)`` limits of a run, address space last.

    Without a per-run uid the program shares our uid, whose existing tasks count
    against ``RLIMIT_NPROC``: the budget is added on top of them. Hard limits we
    cannot raise (not root) are respected.
    """
    nproc = limits.nproc
    if uid is None:
        nproc += _uids.tasks_of(os.getuid())
    wanted = [
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_NPROC, nproc, nproc),
        (resource.RLIMIT_FSIZE, limits.fsize_mb << 20, limits.fsize_mb << 20),
        (resource.RLIMIT_CPU, limits.cpu_s, limits.cpu_s + 1),
        # Address space last: the forked child may already be bigger than it.
        (resource.RLIMIT_AS, limits.mem_mb << 20, limits.mem_mb << 20),
    ]
    settings = []
    for which, soft, hard in wanted:
        cur_hard = resource.getrlimit(which)[1]
        if uid is None and cur_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, cur_hard), min(hard, cur_hard)
        settings.append((which, soft, hard))
    return settings


def program_env(workdir: str) -> dict[str, str]:
    """The program's whole environment (nothing of the caller's leaks in)."""
    return {
        "PATH": SAFE_PATH,
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "HOME": workdir,
        "TMPDIR": workdir,
    }


@functools.cache
def landlock_abi() -> int:
    """The kernel's Landlock ABI (cached; raises ConfineError when absent)."""
    return _confine.landlock_abi()


def supervisor_config(
    kind: str,
    interpreter: str,
    workdir: str,
    limits: SandboxLimits,
    uid: int | None,
    status_fd: int,
) -> dict[str, object]:
    """Everything the supervisor needs to start one run.

    Args:
        kind: backend name.
        interpreter: Python executable of the program.
        workdir: the run's directory, holding the script.
        limits: resource limits.
        uid: per-run uid when root, else None.
        status_fd: descriptor the supervisor reports on.

    Returns:
        A dict of plain values, marshal-able (see ``_supervisor.py``).
    """
    # -s -B rather than -I: -I implies -E, which would drop PYTHONHASHSEED; the
    # environment is built from scratch, so -E would protect nothing.
    argv = [interpreter, "-s", "-B", os.path.join(workdir, SCRIPT_NAME)]
    landlock = None
    if kind == BWRAP:
        argv = bwrap_argv(workdir, interpreter_roots(interpreter)) + argv
    elif kind == LANDLOCK:
        landlock = {
            "abi": landlock_abi(),
            "read": [d for d in SYSTEM_DIRS if os.path.exists(d)]
            + list(interpreter_roots(interpreter)),
            "write": [workdir],
            "devices": [d for d in DEVICES if os.path.exists(d)],
        }
    return {
        "mode": kind,
        "argv": argv,
        "env": program_env(workdir),
        "cwd": workdir,
        "uid": uid,
        "rlimits": rlimits(limits, uid),
        "status_fd": status_fd,
        "parent": os.getpid(),
        "landlock": landlock,
    }


def supervisor_command(config: dict[str, object]) -> list[str]:
    """The command that starts the supervisor on ``config``."""
    python = sys.executable or str(config["argv"][0])  # type: ignore[index]
    return [python, "-E", "-s", "-S", "-B", SUPERVISOR, marshal.dumps(config).hex()]
