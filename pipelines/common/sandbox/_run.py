"""One sandboxed run: work directory, supervisor process, output, wall clock, status."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import marshal
import os
import selectors
import signal
import subprocess
import threading
import time
from typing import BinaryIO

from pipelines.common.sandbox import _launch, _uids
from pipelines.common.sandbox._types import BWRAP, RunResult, SandboxLimits

logger = logging.getLogger(__name__)

_TAIL_BYTES = 8192  # stderr tail kept for classification even past output_bytes
_READ_CHUNK = 1 << 16
_POLL_S = 0.05
# How long the supervisor may take to clean up after SIGTERM; its own sweep gives
# up after 5 s (_supervisor._KILL_ROUNDS_S), so this is only reached if it hangs.
_STOP_GRACE_S = 6.0
_BWRAP_SETUP_RC = 1  # bwrap exits 1 (with "bwrap: ..." on stderr) when setup fails
_MEMORY_MARKERS = (b"MemoryError", b"Cannot allocate memory")


def run_one(
    code: str,
    stdin: str | None,
    limits: SandboxLimits,
    python: str | None,
    kind: str,
) -> RunResult:
    """Run ``code`` once with backend ``kind`` (already resolved and probed).

    Args:
        code: program source.
        stdin: text fed to standard input, or None for an empty one.
        limits: resource limits.
        python: interpreter, or None for :func:`_launch.default_python`.
        kind: ``bwrap``, ``landlock`` or ``rlimit``.

    Returns:
        The outcome; failures of the program or the sandbox are never raised.
    """
    uid = _uids.acquire_uid() if os.geteuid() == 0 else None
    try:
        return _run_as(code, stdin, limits, python, kind, uid)
    finally:
        if uid is not None:
            _uids.release_uid(uid)


def _run_as(
    code: str,
    stdin: str | None,
    limits: SandboxLimits,
    python: str | None,
    kind: str,
    uid: int | None,
) -> RunResult:
    interpreter = python or _launch.default_python(uid is not None)
    if interpreter is None:
        return failed(kind, "no Python interpreter usable by the sandbox user")
    try:
        workdir = _uids.make_workdir(uid)
    except OSError as exc:
        return failed(kind, f"cannot create the sandbox directory: {exc}")
    stdin_file = None
    try:
        script = os.path.join(workdir, _launch.SCRIPT_NAME)
        with open(script, "w", encoding="utf-8") as handle:
            handle.write(code)
        if stdin is not None:
            # A pipe, not a file: what the program reads is gone from it, so no
            # process of the run (bwrap's init keeps a copy of fd 0) can read it
            # again through /proc/<pid>/fd/0. A thread feeds it; it ends when
            # the data is written or every reader has closed the pipe.
            stdin_file, writer = _feed(stdin.encode("utf-8"))
        return _execute(interpreter, workdir, stdin_file, limits, kind, uid)
    except OSError as exc:
        return failed(kind, f"cannot prepare the sandbox: {exc}")
    finally:
        if stdin_file is not None:
            stdin_file.close()
            writer.join()
        _uids.remove_tree(workdir)


def _feed(data: bytes) -> tuple[BinaryIO, threading.Thread]:
    """A pipe whose read end yields ``data`` then EOF, fed by a thread."""
    read_fd, write_fd = os.pipe()
    with contextlib.suppress(OSError):  # room for typical inputs in one write
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 1 << 20)

    def write() -> None:
        with contextlib.suppress(OSError):  # EPIPE: the program stopped reading
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view) :]
        os.close(write_fd)

    writer = threading.Thread(target=write, name="sandbox-stdin", daemon=True)
    writer.start()
    return os.fdopen(read_fd, "rb"), writer


def _execute(
    interpreter: str,
    workdir: str,
    stdin_file: BinaryIO | None,
    limits: SandboxLimits,
    kind: str,
    uid: int | None,
) -> RunResult:
    status_r, status_w = os.pipe()
    try:
        config = _launch.supervisor_config(
            kind, interpreter, workdir, limits, uid, status_w
        )
        start = time.monotonic()
        proc = subprocess.Popen(
            _launch.supervisor_command(config),
            stdin=stdin_file if stdin_file is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_launch.program_env(workdir),
            cwd=workdir,
            start_new_session=True,
            close_fds=True,
            pass_fds=(status_w,),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        os.close(status_r)
        return failed(kind, f"cannot start the sandbox: {exc}")
    finally:
        os.close(status_w)
    watch = _Watch(proc, status_r, limits, uid)
    try:
        timed_out = watch.collect(start + limits.wall_s)
    except BaseException:  # e.g. KeyboardInterrupt: leave nothing running
        watch.hard_kill()
        raise
    finally:
        watch.close()
    elapsed = time.monotonic() - start
    return _classify(watch, timed_out, kind, elapsed)


class _Watch:
    """Collects a run's output and status reports; enforces its wall-clock limit."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        status_fd: int,
        limits: SandboxLimits,
        uid: int | None,
    ) -> None:
        self.proc = proc
        self.uid = uid
        self.limit = limits.output_bytes
        self.out = bytearray()
        self.err = bytearray()
        self.err_tail = bytearray()
        self.status_buf = bytearray()
        self.reports: dict[str, object] = {}
        self.selector = selectors.DefaultSelector()
        assert proc.stdout is not None and proc.stderr is not None
        self.selector.register(proc.stdout, selectors.EVENT_READ, "out")
        self.selector.register(proc.stderr, selectors.EVENT_READ, "err")
        self.selector.register(status_fd, selectors.EVENT_READ, "status")

    def collect(self, deadline: float) -> bool:
        """Read until the run is over; return whether the wall limit hit."""
        timed_out = False
        grace_end: float | None = None
        while self.selector.get_map():
            now = time.monotonic()
            if grace_end is None:
                if now >= deadline:
                    timed_out = True
                    self._stop()
                    grace_end = now + _STOP_GRACE_S
                elif self.proc.poll() is not None:
                    # The supervisor is gone yet something holds the pipes: it
                    # was killed (possible only with the rlimit backend).
                    self.hard_kill()
                    grace_end = now + _STOP_GRACE_S
            elif now >= grace_end:
                self.hard_kill()
                logger.warning("sandbox pipes still open after kill; giving up")
                break
            wait = (deadline if grace_end is None else grace_end) - now
            for key, _ in self.selector.select(max(0.0, min(wait, _POLL_S))):
                self._read(key)
        try:
            self.proc.wait(timeout=_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.hard_kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=_STOP_GRACE_S)
        if self.reports.get("complete") is not True:
            # No final report, or the supervisor's sweep did not finish.
            self.hard_kill()
        return timed_out

    def _stop(self) -> None:
        """Ask the supervisor to end the run (it kills and reaps everything)."""
        with contextlib.suppress(OSError):
            self.proc.send_signal(signal.SIGTERM)

    def hard_kill(self) -> None:
        """SIGKILL the supervisor, the program's group and (root) the run's uid."""
        if self.proc.returncode is None:  # not reaped yet: its pgid is still ours
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        child = self.reports.get("child")
        if isinstance(child, int):
            with contextlib.suppress(OSError):
                os.killpg(child, signal.SIGKILL)
        if self.uid is not None:
            _uids.kill_uid(self.uid)

    def _read(self, key: selectors.SelectorKey) -> None:
        fd = key.fd
        try:
            data = os.read(fd, _READ_CHUNK)
        except OSError:
            data = b""
        if not data:
            self.selector.unregister(key.fileobj)
            if key.data == "status":
                os.close(fd)
            return
        if key.data == "out":
            self._keep(self.out, data)
        elif key.data == "err":
            self._keep(self.err, data)
            self.err_tail += data
            del self.err_tail[:-_TAIL_BYTES]
        else:
            self._note_status(data)

    def _keep(self, buf: bytearray, data: bytes) -> None:
        room = self.limit - len(buf)
        if room > 0:
            buf += data[:room]

    def _note_status(self, data: bytes) -> None:
        self.status_buf += data
        *lines, rest = self.status_buf.split(b"\n")
        self.status_buf = bytearray(rest)
        for line in lines:
            try:
                report = marshal.loads(bytes.fromhex(line.decode("ascii")))
            except (ValueError, EOFError, TypeError, UnicodeDecodeError):
                logger.warning("unreadable sandbox status line: %r", line[:200])
                continue
            if isinstance(report, dict):
                self.reports.update(report)

    def close(self) -> None:
        """Release file descriptors."""
        for key in list(self.selector.get_map().values()):
            self.selector.unregister(key.fileobj)
            if key.data == "status":
                os.close(key.fd)
        self.selector.close()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def _classify(watch: _Watch, timed_out: bool, kind: str, elapsed: float) -> RunResult:
    reports = watch.reports
    stderr = bytes(watch.err)
    returncode: int | None = None
    signum: int | None = None
    if isinstance(reports.get("exit"), int):
        returncode = int(reports["exit"])  # type: ignore[arg-type]
    elif isinstance(reports.get("signal"), int):
        signum = int(reports["signal"])  # type: ignore[arg-type]
        returncode = -signum
    elif "stopped" in reports:
        returncode = -signal.SIGKILL
    if kind == BWRAP and returncode is not None and 128 < returncode < 128 + 65:
        # bwrap reports a child killed by signal N as exit status 128 + N.
        signum = returncode - 128
        returncode = -signum
    problem = _sandbox_problem(watch, kind, returncode, stderr)
    if timed_out:
        status = "timeout"
    elif problem is not None:
        status = "sandbox_error"
        returncode = None  # the program never ran (or its sandbox died)
        stderr = problem.encode() + (b"\n" + stderr if stderr else b"")
    elif returncode == 0:
        status = "ok"
    elif signum == signal.SIGXCPU:
        status = "timeout"
    elif any(marker in watch.err_tail for marker in _MEMORY_MARKERS):
        status = "memory"
    elif signum is not None:
        status = "signal"
    else:
        status = "error"
    return RunResult(
        status=status,
        returncode=returncode,
        stdout=bytes(watch.out).decode("utf-8", errors="replace"),
        stderr=stderr.decode("utf-8", errors="replace"),
        wall_s=elapsed,
        backend=kind,
    )


def _sandbox_problem(
    watch: _Watch, kind: str, returncode: int | None, stderr: bytes
) -> str | None:
    """Why the sandbox (not the program) failed, or None."""
    reports = watch.reports
    if "setup_error" in reports:
        return f"sandbox setup failed: {reports['setup_error']}"
    if "error" in reports:
        return f"sandbox supervisor failed: {reports['error']}"
    if "stopped" in reports:
        return f"sandbox supervisor stopped by signal {reports['stopped']}"
    if returncode is None:
        return (
            "sandbox supervisor ended without reporting an outcome "
            f"(its exit status: {watch.proc.returncode})"
        )
    if (
        kind == BWRAP
        and returncode == _BWRAP_SETUP_RC
        and stderr.startswith(b"bwrap: ")
    ):
        return "bubblewrap could not set up the sandbox"
    return None


def failed(kind: str, message: str) -> RunResult:
    """A run that never started, with ``message`` as its stderr."""
    logger.error("sandbox failed: %s", message)
    return RunResult(
        status="sandbox_error",
        returncode=None,
        stdout="",
        stderr=message,
        wall_s=0.0,
        backend=kind,
    )
