"""Per-run uids (when root) and per-run work directories.

When the caller is root, the sandboxed process runs as an unprivileged uid that is
fresh for each run (the kernel does not apply ``RLIMIT_NPROC`` to uid 0, so as
root a fork bomb would be unbounded). A per-run uid, rather than a shared one such
as ``nobody``, keeps concurrent runs from sharing one process budget and lets
every leftover process of a run be killed by uid.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import stat
import subprocess
import tempfile
import threading

logger = logging.getLogger(__name__)

# Unprivileged uids handed out to runs when we are root: above every range that
# distributions and systemd assign (users, dynamic users, nspawn containers end
# at 1879048191) and below 2**31, so that no tool mistakes them for negative.
UID_BASE = 1_900_000_000
UID_SPAN = 1 << 20
_uid_lock = threading.Lock()
_uid_rng = random.SystemRandom()  # leaves the caller's seeded `random` alone
_uids_in_use: set[int] = set()


def acquire_uid() -> int:
    """Reserve a fresh unprivileged uid for one run."""
    with _uid_lock:
        while True:
            uid = UID_BASE + _uid_rng.randrange(UID_SPAN)
            if uid not in _uids_in_use:
                _uids_in_use.add(uid)
                return uid


def release_uid(uid: int) -> None:
    """Return ``uid`` to the pool."""
    with _uid_lock:
        _uids_in_use.discard(uid)


def other_can_reach(path: str, bits: int) -> bool:
    """Whether a uid that neither owns nor shares a group with ``path`` can use it.

    Args:
        path: file or directory; symlinks are checked along both spellings.
        bits: ``S_IROTH``/``S_IXOTH`` bits the path itself must grant.

    Returns:
        True if ``path`` grants ``bits`` to others and every ancestor directory
        is searchable by others.
    """
    for candidate in {os.path.abspath(path), os.path.realpath(path)}:
        try:
            if os.stat(candidate).st_mode & bits != bits:
                return False
            parent = os.path.dirname(candidate)
            while True:
                if not os.stat(parent).st_mode & stat.S_IXOTH:
                    return False
                if parent == os.path.dirname(parent):
                    break
                parent = os.path.dirname(parent)
        except OSError:
            return False
    return True


def tasks_of(uid: int) -> int:
    """Count the tasks (threads included, as RLIMIT_NPROC does) owned by ``uid``."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        try:
            if int(fields["Uid"].split()[0]) == uid:
                total += int(fields["Threads"])
        except (KeyError, ValueError, IndexError):
            continue
    return total


def kill_uid(uid: int) -> None:
    """SIGKILL every process owned by ``uid`` (root only).

    A helper process switches to ``uid`` and calls ``kill(-1, SIGKILL)``, which
    reaches exactly the processes that uid may signal: its own.
    """

    def preexec() -> None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)

    try:
        subprocess.run(
            [shutil.which("true") or "/bin/true"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=preexec,
            close_fds=True,
            check=False,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("could not sweep processes of uid %d: %s", uid, exc)


def make_workdir(uid: int | None) -> str:
    """Create the run's private directory (owned by ``uid`` when given)."""
    parent = tempfile.gettempdir()
    if uid is not None and not other_can_reach(parent, stat.S_IXOTH):
        parent = "/tmp"
    workdir = tempfile.mkdtemp(prefix="rmflow-sbx-", dir=parent)
    if uid is not None:
        os.chown(workdir, uid, uid)
    return workdir


def remove_tree(path: str) -> None:
    """Delete a run's directory, also when the program made parts unreadable."""
    try:
        shutil.rmtree(path)
        return
    except OSError as exc:
        error = exc
    if os.geteuid() != 0:
        # Not root: the program may have left directories we cannot list or
        # write. They are ours, so open them up (never through a symlink).
        with contextlib.suppress(OSError):
            os.chmod(path, stat.S_IRWXU)
        for root, dirs, _ in os.walk(path):
            for name in dirs:
                child = os.path.join(root, name)
                if not os.path.islink(child):
                    with contextlib.suppress(OSError):
                        os.chmod(child, stat.S_IRWXU)
        try:
            shutil.rmtree(path)
            return
        except OSError as exc:
            error = exc
    logger.warning("could not remove sandbox directory %s: %s", path, error)
