"""The sandbox attack table: every attack x every backend x {root, unprivileged user}.

Each case runs a small driver process (as root, or as a throwaway unprivileged uid
through ``setpriv --reuid --regid --clear-groups``) that calls the sandbox on the
attack and prints the RunResult as JSON. The unprivileged user has a home with a
0600 secret and a virtual environment (the interpreter lives under that home, as
on a cluster). Each case asserts, from the host, that the attack failed and the
host is unchanged: the driver is alive, the run's temp dir is gone, no process of
the run remains (zombies included), plus the attack's own evidence (the listener
saw no connection, the files outside are absent, the secret did not leak...).

The ``rlimit`` backend is weak by design: the cases it cannot stop are strict
expected failures, so the table documents the difference.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipelines.common.sandbox import _select, _uids

from .test_sandbox import cannot_run

ROOT = Path(__file__).resolve().parents[2]
IS_ROOT = os.geteuid() == 0
LIMITS = {"wall_s": 8.0, "cpu_s": 1, "mem_mb": 512, "nproc": 24}
OUTPUT_CAP = 1_000_000  # the default SandboxLimits.output_bytes
TEST_UID_BASE = 1_850_000_000  # below the sandbox's own per-run uids
DRIVER = """\
import dataclasses, json, os, sys
spec = json.loads(sys.stdin.read())
os.environ["RMFLOW_SANDBOX"] = spec["backend"]
from pipelines.common import sandbox
from pipelines.common.sandbox import _uids
uids = []
_acquire = _uids.acquire_uid
def _recording():
    uid = _acquire()
    uids.append(uid)
    return uid
_uids.acquire_uid = _recording
code = spec["code"].replace("@DRIVER_PID@", str(os.getpid()))
try:
    result = sandbox.run_python(code, limits=sandbox.SandboxLimits(**spec["limits"]))
except sandbox.SandboxUnavailable as exc:
    print(json.dumps({"unavailable": str(exc)}))
    raise SystemExit(0)
print(json.dumps({"result": dataclasses.asdict(result), "uids": uids}))
"""


# ------------------------------------------------------------------ actors


@dataclass
class Actor:
    """Who calls the sandbox: root, or an unprivileged user with a home."""

    name: str
    uid: int
    gid: int
    home: Path
    secret: Path
    python: str
    stage: Path  # readable copy of the sandbox package
    prefix: list[str] = field(default_factory=list)  # setpriv, for the user


def _stage_package(dest: Path) -> None:
    """Copy the (stdlib-only) sandbox package where any uid can import it."""
    src = ROOT / "pipelines"
    for rel in ("__init__.py", "common/__init__.py"):
        (dest / "pipelines" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / rel, dest / "pipelines" / rel)
    shutil.copytree(
        src / "common" / "sandbox",
        dest / "pipelines" / "common" / "sandbox",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (dest / "driver.py").write_text(DRIVER)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def _reachable_python() -> str | None:
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate) and _uids.other_can_reach(
            candidate, stat.S_IROTH | stat.S_IXOTH
        ):
            return candidate
    return None


def _make_home(base: Path, uid: int, gid: int, venv_python: str) -> tuple[Path, Path]:
    """A home owning a 0600 secret and a venv (the user's interpreter)."""
    home = Path(tempfile.mkdtemp(prefix="rmflow-home-", dir=base))
    home.chmod(0o755)
    secret = home / "secret.txt"
    secret.write_text(f"top-secret-{uuid.uuid4().hex}")
    secret.chmod(0o600)
    subprocess.run(
        [venv_python, "-m", "venv", "--without-pip", str(home / "venv")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    if os.geteuid() == 0:
        for path in [home, *home.rglob("*")]:
            os.lchown(path, uid, gid)
    return home, secret


def _new_test_uid() -> int:
    return TEST_UID_BASE + random.SystemRandom().randrange(1 << 20)


def _fresh_uid(actor: Actor) -> Actor:
    """The same user home under a uid no earlier case used.

    A case that lost (rlimit: the driver killed) can leave zombies of its uid
    under a PID 1 that does not reap; a fresh uid keeps them out of this case.
    """
    uid = _new_test_uid()
    for path in [actor.home, *actor.home.rglob("*")]:
        os.lchown(path, uid, uid)
    prefix = [actor.prefix[0], f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    return dataclasses.replace(actor, uid=uid, gid=uid, prefix=prefix)


@pytest.fixture(scope="module")
def actors() -> Iterator[dict[str, Actor | str]]:
    """Both actors, or for each the reason it cannot run here."""
    base = Path(tempfile.mkdtemp(prefix="rmflow-attack-", dir="/var/tmp"))
    base.chmod(0o755)
    stage = base / "stage"
    _stage_package(stage)
    found: dict[str, Actor | str] = {}
    python = _reachable_python()
    if IS_ROOT:
        home, secret = _make_home(base, 0, 0, sys.executable)
        found["root"] = Actor("root", 0, 0, home, secret, sys.executable, stage)
        setpriv = shutil.which("setpriv")
        uid = _new_test_uid()
        if setpriv is None:
            found["user"] = "setpriv (util-linux) is not installed"
        elif python is None:
            found["user"] = "no Python interpreter that another uid may execute"
        else:
            home, secret = _make_home(base, uid, uid, python)
            prefix = [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
            venv = str(home / "venv" / "bin" / "python")
            found["user"] = Actor("user", uid, uid, home, secret, venv, stage, prefix)
    else:
        found["root"] = "needs root (the root column runs the sandbox as root)"
        uid, gid = os.getuid(), os.getgid()
        home, secret = _make_home(base, uid, gid, sys.executable)
        venv = str(home / "venv" / "bin" / "python")
        found["user"] = Actor("user", uid, gid, home, secret, venv, stage)
    yield found
    shutil.rmtree(base, ignore_errors=True)


# ----------------------------------------------------------------- helpers


@dataclass
class Case:
    """One attack run: what the host prepared and what came back."""

    actor: Actor
    token: str
    tmp: Path  # the driver's TMPDIR: the run's work dir is created in it
    shared: Path  # a world-writable directory (mode 1777)
    listener: socket.socket
    result: dict = field(default_factory=dict)
    uids: list[int] = field(default_factory=list)
    driver_rc: int | None = None
    driver_err: str = ""

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    def outside_targets(self) -> list[Path]:
        name = f"rmflow-pwned-{self.token}"
        return [
            self.shared / name,
            self.actor.home / name,
            Path("/tmp") / name,
            Path("/var/tmp") / name,
            Path("/dev/shm") / name,
        ]


def _run_driver(case: Case, code: str) -> None:
    actor = case.actor
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(actor.home),
        "TMPDIR": str(case.tmp),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(actor.stage),
    }
    spec = {"backend": case.result["backend"], "code": code, "limits": LIMITS}
    proc = subprocess.run(
        [*actor.prefix, actor.python, "-s", "-B", str(actor.stage / "driver.py")],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        env=env,
        cwd=case.tmp,
        timeout=120,
    )
    case.driver_rc = proc.returncode
    case.driver_err = proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    reply = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    if "unavailable" in reply:
        cannot_run(f"{case.result['backend']} unusable as {actor.name}: {reply}")
    case.result = reply.get("result", {})
    case.uids = reply.get("uids", [])


def _leftovers(case: Case) -> list[str]:
    """Processes of the run still on the host (zombies too)."""
    owners = set(case.uids)
    if case.actor.name == "user" and IS_ROOT:
        owners.add(case.actor.uid)  # a test uid: only this case's driver uses it
    needles = (str(case.tmp).encode(), case.token.encode())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uid = int(fields["Uid"].split()[0])
        mine = uid in owners and not (case.actor.name == "root" and uid == 0)
        if mine or any(needle in cmdline for needle in needles):
            found.append(
                f"{entry} uid={uid} {fields['State'].strip()} {cmdline[:80]!r}"
            )
    return found


# ----------------------------------------------------------------- attacks


@dataclass(frozen=True)
class Attack:
    """Program text and the host-side proof that it failed."""

    code: Callable[[Case], str]
    check: Callable[[Case], None]


def _infinite_loop_check(case: Case) -> None:
    assert case.result["status"] == "timeout", case.result
    assert case.result["returncode"] == -signal.SIGXCPU  # CPU limit, not wall kill
    assert case.result["wall_s"] < LIMITS["wall_s"]


def _fork_loop_check(case: Case) -> None:
    assert case.result["status"] in ("error", "timeout"), case.result
    assert "BlockingIOError" in case.result["stderr"]  # fork() was refused


def _alloc_check(case: Case) -> None:
    assert case.result["status"] == "memory", case.result
    assert "MemoryError" in case.result["stderr"]


def _write_code(case: Case) -> str:
    targets = [str(p) for p in case.outside_targets()]
    return (
        f"for path in {targets!r}:\n"
        "    try:\n"
        "        open(path, 'w').write('pwned')\n"
        "        print('wrote', path)\n"
        "    except OSError as exc:\n"
        "        print('refused', path, exc.errno)\n"
    )


def _write_check(case: Case) -> None:
    assert case.result["status"] == "ok", case.result
    created = [str(p) for p in case.outside_targets() if p.exists()]
    assert created == [], f"files written outside the work dir: {created}"


def _read_code(case: Case) -> str:
    return (
        "import sys\n"
        "print('prefix', sys.prefix)\n"
        f"home, secret = {str(case.actor.home)!r}, {str(case.actor.secret)!r}\n"
        "try:\n"
        "    print(open(secret).read())\n"
        "except OSError as exc:\n"
        "    print('refused', exc.errno)\n"
    )


def _read_check(case: Case) -> None:
    assert case.result["status"] == "ok", case.result
    secret = case.actor.secret.read_text()
    assert secret not in case.result["stdout"] + case.result["stderr"]
    assert "refused" in case.result["stdout"]
    if case.actor.name == "user":
        # The program's own interpreter lives under that same home (a venv).
        venv = str(case.actor.home / "venv")
        assert case.result["stdout"].startswith(f"prefix {venv}\n"), case.result


def _tcp_code(case: Case) -> str:
    return (
        "import socket\n"
        "try:\n"
        f"    s = socket.create_connection(('127.0.0.1', {case.port}), timeout=2)\n"
        "    s.sendall(b'leak')\n"
        "    print('connected')\n"
        "except OSError as exc:\n"
        "    print('refused', exc.errno)\n"
    )


def _tcp_check(case: Case) -> None:
    readable, _, _ = select.select([case.listener], [], [], 0.5)
    assert readable == [], "the listener on 127.0.0.1 got a connection"
    assert case.result["status"] == "ok" and "refused" in case.result["stdout"]


KILL_CODE = (
    "import os, signal\n"
    "for pid in (@DRIVER_PID@, os.getppid()):\n"
    "    try:\n"
    "        os.kill(pid, signal.SIGKILL)\n"
    "    except OSError as exc:\n"
    "        print('refused', exc.errno)\n"
    "print('done')\n"
)


def _kill_check(case: Case) -> None:
    assert case.driver_rc == 0, f"driver died ({case.driver_rc}): {case.driver_err}"
    # The supervisor survived to report the program's own clean exit.
    assert case.result["status"] == "ok", case.result
    assert case.result["stdout"].endswith("done\n")


def _setsid_code(case: Case) -> str:
    return (
        "import os, sys, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    try:\n"
        "        os.setsid()\n"
        "    except OSError:\n"
        "        pass\n"
        "    if os.fork() == 0:\n"
        "        os.chdir('/')\n"
        "        argv = [sys.executable, '-c', 'import time; time.sleep(120)']\n"
        f"        os.execv(sys.executable, argv + [{case.token!r}])\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "time.sleep(0.5)\n"
        "print('spawned')\n"
    )


def _setsid_check(case: Case) -> None:
    assert case.result["status"] == "ok", case.result
    assert case.result["stdout"] == "spawned\n"
    # _leftovers (checked for every case) finds the sleeper by its token.


def _flood_check(case: Case) -> None:
    assert case.result["status"] == "ok", case.result
    assert len(case.result["stdout"]) == OUTPUT_CAP


def _recursion_check(case: Case) -> None:
    # Python 3.11 keeps Python frames on the heap: the run ends on the address
    # space or CPU limit, or on a C stack overflow; never on the wall clock.
    assert case.result["status"] in ("signal", "error", "memory", "timeout")
    assert case.result["returncode"] != -signal.SIGKILL, case.result
    assert case.result["wall_s"] < LIMITS["wall_s"]


ATTACKS = {
    "infinite-loop": Attack(lambda c: "while True:\n    pass\n", _infinite_loop_check),
    "fork-loop": Attack(
        lambda c: "import os\nwhile True:\n    os.fork()\n", _fork_loop_check
    ),
    "alloc-8GB": Attack(lambda c: "x = bytearray(8 << 30)\n", _alloc_check),
    "write-outside": Attack(_write_code, _write_check),
    "read-0600-file": Attack(_read_code, _read_check),
    "tcp-127.0.0.1": Attack(_tcp_code, _tcp_check),
    "kill-parent": Attack(lambda c: KILL_CODE, _kill_check),
    "setsid-child": Attack(_setsid_code, _setsid_check),
    "stdout-100MB": Attack(
        lambda c: (
            "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * (1 << 20))\n"
        ),
        _flood_check,
    ),
    "deep-recursion": Attack(
        lambda c: (
            "import sys\nsys.setrecursionlimit(10**7)\n"
            "def down(n):\n    return down(n + 1) + 1\ndown(0)\n"
        ),
        _recursion_check,
    ),
}

# What the rlimit backend cannot stop (it isolates nothing but resources).
RLIMIT_GAPS = {
    ("write-outside", "root"): "the per-run uid may write world-writable dirs",
    ("tcp-127.0.0.1", "root"): "no network isolation",
    ("write-outside", "user"): "runs as the user: writes where the user may",
    ("read-0600-file", "user"): "runs as the user: reads the user's files",
    ("tcp-127.0.0.1", "user"): "no network isolation",
    ("kill-parent", "user"): "runs as the user: may signal the user's processes",
}


def _cases() -> Iterator[object]:
    for attack in ATTACKS:
        for backend in ("bwrap", "landlock", "rlimit"):
            for who in ("root", "user"):
                marks = []
                gap = RLIMIT_GAPS.get((attack, who)) if backend == "rlimit" else None
                if gap is not None:
                    marks.append(
                        pytest.mark.xfail(reason=f"rlimit: {gap}", strict=True)
                    )
                yield pytest.param(
                    attack, backend, who, marks=marks, id=f"{attack}-{backend}-{who}"
                )


@pytest.mark.parametrize(("attack", "backend", "who"), list(_cases()))
def test_attack(attack: str, backend: str, who: str, actors: dict) -> None:
    actor = actors[who]
    if isinstance(actor, str):
        cannot_run(actor)
    if backend != "rlimit":
        problems = (
            _select.bwrap_problems()
            if backend == "bwrap"
            else _select.landlock_problems()
        )
        if problems:
            cannot_run(f"{backend} backend unusable here: {'; '.join(problems)}")
    if who == "user" and IS_ROOT:
        actor = _fresh_uid(actor)
    tmp = Path(tempfile.mkdtemp(prefix="rmflow-case-", dir=actor.stage.parent))
    shared = Path(tempfile.mkdtemp(prefix="rmflow-shared-", dir=actor.stage.parent))
    shared.chmod(0o1777)
    tmp.chmod(0o755)
    if who == "user" and IS_ROOT:
        os.chown(tmp, actor.uid, actor.gid)
    listener = socket.create_server(("127.0.0.1", 0), backlog=8)
    case = Case(actor, uuid.uuid4().hex, tmp, shared, listener)
    case.result = {"backend": backend}
    secret_before = actor.secret.read_bytes()
    try:
        _run_driver(case, ATTACKS[attack].code(case))
        assert case.driver_rc == 0, f"driver died ({case.driver_rc}): {case.driver_err}"
        assert case.result.get("backend") == backend, case.result
        ATTACKS[attack].check(case)
        assert list(tmp.iterdir()) == [], "the run's temp dir was left behind"
        assert _leftovers(case) == [], "processes of the run outlived it"
        assert actor.secret.read_bytes() == secret_before
    finally:
        listener.close()
        for path in case.outside_targets():
            path.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(shared, ignore_errors=True)
