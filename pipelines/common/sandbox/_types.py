"""Public value types of the sandbox: limits, results, backend names, the refusal."""

from __future__ import annotations

from dataclasses import dataclass

AUTO = "auto"
BWRAP = "bwrap"
LANDLOCK = "landlock"
RLIMIT = "rlimit"
BACKENDS = (AUTO, BWRAP, LANDLOCK, RLIMIT)
BACKEND_ENV = "RMFLOW_SANDBOX"


class SandboxUnavailable(RuntimeError):
    """No backend that isolates untrusted code works here (or a forced one fails).

    The message names what is missing for each backend tried, how to get it, and
    how to opt in to the weak ``rlimit`` backend explicitly. Stages show it as
    one line, like a user error (:func:`pipelines.common.cli.handle_user_errors`):
    it is about the machine, not a bug. The sandbox package imports nothing of
    the rest of the project, so it can be staged and run on its own.
    """


@dataclass(frozen=True, kw_only=True)
class SandboxLimits:
    """Resource limits of one sandboxed run.

    Attributes:
        wall_s: wall-clock limit in seconds. The 10 s default is the execution
            timeout of RD211/eth-dl-rewards (utils/code_pairs.py,
            ``CodeConfig(timeout=10)``).
        cpu_s: CPU-time limit per process in seconds (``RLIMIT_CPU``).
        mem_mb: address-space limit per process in MiB (``RLIMIT_AS``).
        fsize_mb: largest file the program may write, in MiB (``RLIMIT_FSIZE``).
        nproc: most processes/threads the run may have at once (fork-bomb guard).
        output_bytes: bytes of stdout and of stderr kept; the rest is dropped.
    """

    wall_s: float = 10.0
    cpu_s: int = 10
    mem_mb: int = 1024
    fsize_mb: int = 16
    nproc: int = 64
    output_bytes: int = 1_000_000

    def __post_init__(self) -> None:
        for name in ("wall_s", "cpu_s", "mem_mb", "fsize_mb", "nproc"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SandboxLimits.{name} must be positive")
        if self.output_bytes < 0:
            raise ValueError("SandboxLimits.output_bytes must be >= 0")


@dataclass(frozen=True)
class RunResult:
    """Outcome of one sandboxed run.

    Attributes:
        status: ``"ok"`` (exit 0), ``"error"`` (nonzero exit), ``"timeout"``
            (wall or CPU limit), ``"signal"`` (killed by another signal, e.g.
            SIGSEGV), ``"memory"`` (MemoryError / address-space limit) or
            ``"sandbox_error"`` (the sandbox itself failed to start or died).
        returncode: exit code; negative signal number when killed by a signal;
            None when the program never ran.
        stdout: captured standard output (UTF-8, truncated to output_bytes).
        stderr: captured standard error (UTF-8, truncated to output_bytes).
        wall_s: wall-clock seconds of the run.
        backend: ``"bwrap"``, ``"landlock"`` or ``"rlimit"``: the backend that
            ran it (record it with every output derived from the run).
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    backend: str

    @property
    def passed(self) -> bool:
        """Whether the program exited with status 0 within the limits."""
        return self.status == "ok"
