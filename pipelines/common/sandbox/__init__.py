"""Run untrusted Python code (HumanEval checks, model-written programs) contained.

    from pipelines.common.sandbox import SandboxLimits, run_many
    results = run_many(programs, limits=SandboxLimits(wall_s=10))

Untrusted code never runs open (DESIGN.md principle 9): when no isolating backend
works, runs raise :class:`SandboxUnavailable`, whose message names what is missing,
how to get it, and how to opt in to the weak backend explicitly.

Every run gets a fresh temporary directory (its cwd, HOME and TMPDIR, deleted
afterwards), a minimal environment, wall-clock and CPU-time limits, address-space,
file-size and process-count limits (``SandboxLimits``), and a supervisor process
(``_supervisor.py``) that is a child subreaper: when the program ends or times out
it SIGKILLs the program's process group and every remaining descendant, and reaps
them all. When the caller is root the program runs as an unprivileged uid fresh
for each run (``_uids.py``).

Backends and what each guarantees:

* ``bwrap``: bubblewrap with every namespace unshared: no network (own network
  namespace), own pid namespace (cannot see or signal host processes), an
  allow-list filesystem (system directories and the interpreter's prefixes
  read-only; a private ``/dev``, ``/proc`` and size-capped ``/tmp``, ``/dev/shm``
  (discarded with the run); only the run's directory writable on the host;
  homes, ``/run``, ``/var``, ``/srv``, ``/mnt`` absent). Needs the
  ``bwrap`` executable and unprivileged user namespaces.
* ``landlock``: needs no root, no namespaces and no extra package. The program
  runs under ``no_new_privs``, a Landlock domain and a seccomp filter
  (``_confine.py``). Landlock: read and execute only below the system
  directories and the interpreter's prefixes (even under a home), every right
  only below the run's directory, read/write on ``/dev/null`` and friends;
  nothing else can be opened, listed, written or executed (file metadata via
  ``stat`` is not hidden), TCP bind/connect denied, and signals and abstract
  UNIX sockets scoped to the run (no signal reaches a process it did not start).
  Seccomp: ``socket()`` denied for every family (AF_UNIX too: Landlock does not
  govern connecting to pathname sockets such as a D-Bus session bus), only
  AF_UNIX ``socketpair()``; ptrace, process_vm_*, pidfd_getfd, mount and the
  new mount API, unshare/setns/namespace clones, io_uring, bpf, perf, keyrings,
  module and kexec calls denied; ``setsid``/``setpgid`` denied so every process
  stays in the group the supervisor kills. Kernel features needed: Linux >= 6.12
  (Landlock ABI >= 6) with Landlock enabled in ``lsm=``, seccomp filters,
  no_new_privs and child subreapers, on x86_64 or aarch64. Where one is missing
  this backend refuses rather than running open.
* ``rlimit``: resource limits, the per-run uid (root only) and the supervisor's
  cleanup, nothing else: untrusted code can use the network, write and read what
  its user may, and (not root) signal its user's processes. Never chosen
  automatically; it must be asked for.

Selection (first that is set wins): the ``backend=`` argument of
:func:`run_python`/:func:`run_many`, :func:`set_backend` (the stages pass the
``sandbox.backend`` config value), the ``RMFLOW_SANDBOX`` environment variable,
else ``auto``: ``bwrap`` if a real trial run works, else ``landlock`` if the kernel
has every feature and a trial run works, else :class:`SandboxUnavailable`. A
backend asked for by name that does not work raises too (never a silent
downgrade); ``rlimit`` logs a warning once. Every :class:`RunResult` names the
backend that ran it.

Bubblewrap leaves a zombie: it exits as soon as its in-sandbox init reports the
program's status, without reaping that init (``monitor_child`` in bubblewrap's
bubblewrap.c), so the init was reparented to PID 1 and stayed ``[bwrap]
<defunct>`` wherever PID 1 does not reap orphans (containers). The supervisor,
as subreaper, now inherits and reaps it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from pipelines.common.sandbox._run import run_one
from pipelines.common.sandbox._select import reset_probes, set_backend
from pipelines.common.sandbox._select import resolve as _resolve
from pipelines.common.sandbox._types import (
    AUTO,
    BACKEND_ENV,
    BACKENDS,
    BWRAP,
    LANDLOCK,
    RLIMIT,
    RunResult,
    SandboxLimits,
    SandboxUnavailable,
)

__all__ = [
    "AUTO",
    "BACKENDS",
    "BACKEND_ENV",
    "BWRAP",
    "LANDLOCK",
    "RLIMIT",
    "RunResult",
    "SandboxLimits",
    "SandboxUnavailable",
    "backend",
    "reset_probes",
    "run_many",
    "run_python",
    "set_backend",
]

_DEFAULT_LIMITS = SandboxLimits()


def backend(name: str | None = None) -> str:
    """Return the backend runs use here, probing it once per process.

    Args:
        name: a backend to force (``auto``, ``bwrap``, ``landlock``, ``rlimit``);
            None uses :func:`set_backend`'s choice, else ``RMFLOW_SANDBOX``,
            else ``auto``.

    Returns:
        ``"bwrap"``, ``"landlock"`` or ``"rlimit"``.

    Raises:
        SandboxUnavailable: no isolating backend works (``auto``), or the one
            asked for does not.
        ValueError: unknown backend name.
    """
    return _resolve(name)


def run_python(
    code: str,
    *,
    stdin: str | None = None,
    limits: SandboxLimits = _DEFAULT_LIMITS,
    python: str | None = None,
    backend: str | None = None,
) -> RunResult:
    """Run ``code`` as a Python program in a fresh sandbox.

    Args:
        code: program source, run as ``__main__``.
        stdin: text fed to the program's standard input (empty if None).
        limits: resource limits of the run.
        python: interpreter to run; by default the current one if the sandbox
            user may execute it, else the system ``python3``.
        backend: backend to use (see :func:`backend`); None for the default.

    Returns:
        The run's outcome; failures of the program are never raised.

    Raises:
        SandboxUnavailable: no backend can isolate the run (see :func:`backend`).
    """
    return run_one(code, stdin, limits, python, _resolve(backend))


def run_many(
    codes: Sequence[str],
    *,
    stdins: Sequence[str | None] | None = None,
    limits: SandboxLimits = _DEFAULT_LIMITS,
    workers: int | None = None,
    python: str | None = None,
    backend: str | None = None,
) -> list[RunResult]:
    """Run several programs in parallel sandboxes.

    Args:
        codes: program sources.
        stdins: standard input of each program (same length as ``codes``).
        limits: resource limits of every run.
        workers: runs at once; default ``os.cpu_count()``.
        python: interpreter, as in :func:`run_python`.
        backend: backend to use (see :func:`backend`); None for the default.

    Returns:
        One result per program, in input order.

    Raises:
        ValueError: ``stdins`` and ``codes`` differ in length, or workers < 1.
        SandboxUnavailable: no backend can isolate the runs.
    """
    if stdins is None:
        stdins = [None] * len(codes)
    if len(stdins) != len(codes):
        raise ValueError(f"{len(stdins)} stdins for {len(codes)} programs")
    n_workers = workers if workers is not None else (os.cpu_count() or 1)
    if n_workers < 1:
        raise ValueError("workers must be >= 1")
    if not codes:
        return []
    kind = _resolve(backend)  # probe (and warn) once, before the threads start
    with ThreadPoolExecutor(max_workers=min(n_workers, len(codes))) as pool:
        futures = [
            pool.submit(run_one, code, text, limits, python, kind)
            for code, text in zip(codes, stdins, strict=True)
        ]
        return [future.result() for future in futures]
