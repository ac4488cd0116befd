"""Run sympy comparisons under a deadline that C code cannot defeat.

:func:`compare` sends two normalised answers to a server process
(:mod:`.server`), started once per process on first use and shared by all
threads. The server compares them in a forked compute child and kills the
child with SIGKILL at the deadline, so a comparison returns within
``timeout_s`` plus :data:`TIMEOUT_MARGIN_S` on any thread, whatever sympy is
doing in C. A killed child is replaced by a fork of the server (milliseconds,
sympy is already imported); only the server's own start-up (sympy's import,
about a second, once per process) is not counted against ``timeout_s``.

Where no server can run (no ``fork``, process creation refused), the
comparison runs in this process as before: under a SIGALRM deadline on the
main thread, numerically without ``simplify`` and without a deadline on other
threads. A warning says so.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from pipelines.common.math_check import protocol

log = logging.getLogger(__name__)

TIMEOUT_MARGIN_S = 0.5
"""Longest a call may run past its ``timeout_s`` (reply, kill and pipe latency)."""

MAX_CHILDREN = 8
"""Compute children of the server: comparisons that run at the same time."""

START_TIMEOUT_S = 120.0
"""Longest wait for the server's start-up (sympy's import) before falling back."""

_REPLY_GRACE_S = 0.3  # what the server may need after the deadline to say so
_RETRY_AFTER_S = 60.0  # after a failed start, run in-process for this long
_MAX_DEATHS = 3  # server deaths within _RETRY_AFTER_S before giving up a while

_stats: collections.Counter[str] = collections.Counter()
_stats_lock = threading.Lock()


def count(event: str, n: int = 1) -> None:
    """Add ``n`` to the counter ``event`` (see :func:`stats`)."""
    with _stats_lock:
        _stats[event] += n


def stats() -> dict[str, int]:
    """Counts of this process's checker events since it started.

    Keys: ``compared`` (sympy comparisons that finished), ``timed_out``,
    ``errors`` (sympy raised or a child died), ``refused`` (answers refused by
    :mod:`.guards`), ``too_long`` (answers never parsed for their length),
    ``in_process`` (comparisons run without a server), ``server_starts``.
    """
    with _stats_lock:
        return dict(_stats)


def _readable(fd: int, timeout_s: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout_s * 1000))))


class _Waiter:
    """One request in flight: its event and, once set, its result."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.result: tuple[str, bool | None] = ("error", None)


class _Client:
    """The client end of one server process; thread-safe."""

    def __init__(self, max_children: int) -> None:
        # This very copy of pipelines/, whatever the working directory holds.
        root = str(Path(__file__).resolve().parents[3])
        code = (
            f"import sys; sys.path.insert(0, {root!r}); "
            "from pipelines.common.math_check.server import main; "
            "raise SystemExit(main())"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(max_children)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._request_fd = self.proc.stdin.fileno()
        self._replies = protocol.LineReader(self.proc.stdout.fileno())
        self._lock = threading.Lock()
        self._waiters: dict[int, _Waiter] = {}
        self._next_id = 0
        self.alive = False
        self._reader_started = False
        try:
            self._await_ready()
        except BaseException:
            self.close()
            raise
        self.alive = True
        self._reader_started = True
        threading.Thread(
            target=self._read_replies, name="math-check-replies", daemon=True
        ).start()

    def _await_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not _readable(self._replies.fd, left):
                raise RuntimeError(f"no answer within {START_TIMEOUT_S:.0f} s")
            messages = self._replies.read_ready()
            if messages and messages[0].get("ready"):
                return
            if self._replies.eof:
                raise RuntimeError(f"it exited with status {self.proc.wait()}")

    def _read_replies(self) -> None:
        try:
            while not self._replies.eof:
                for message in self._replies.read_ready():
                    with self._lock:
                        waiter = self._waiters.pop(message["id"], None)
                    if waiter is not None:
                        waiter.result = (message["status"], message["verdict"])
                        waiter.event.set()
        except (OSError, ValueError, KeyError) as error:
            log.warning("math checker: bad reply from the sympy server: %s", error)
        finally:
            with self._lock:
                self.alive = False
                waiters, self._waiters = self._waiters, {}
            for waiter in waiters.values():
                waiter.event.set()  # result stays ("error", None)
            with contextlib.suppress(OSError):
                self.proc.stdout.close()  # only this thread reads it

    def compare(
        self, a: str, b: str, budget: float, use_simplify: bool
    ) -> tuple[str, bool | None]:
        """``(status, verdict)`` of one comparison, within ``budget`` + margin."""
        waiter = _Waiter()
        with self._lock:
            if not self.alive:
                return "error", None
            request_id = self._next_id
            self._next_id += 1
            self._waiters[request_id] = waiter
            request = {"id": request_id, "a": a, "b": b}
            request |= {"simplify": use_simplify, "budget": budget}
            try:
                protocol.send(self._request_fd, request)
            except OSError:
                self._waiters.pop(request_id, None)
                self.alive = False
                return "error", None
        if waiter.event.wait(budget + _REPLY_GRACE_S):
            return waiter.result
        with self._lock:
            self._waiters.pop(request_id, None)
        return "timeout", None

    def close(self) -> None:
        """Close the server's stdin (it exits and kills its children), then reap it."""
        self.alive = False
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if not self._reader_started:
            with contextlib.suppress(OSError):
                self.proc.stdout.close()


_client_lock = threading.Lock()
_client: _Client | None = None
_unavailable_until = 0.0
_deaths: list[float] = []  # when the last servers died
_orphans: list[_Client] = []  # a forked child's copies of its parent's client


def _get_client() -> _Client | None:
    """The live server client, started on first use; None when none can run."""
    global _client, _unavailable_until
    with _client_lock:
        if _client is not None and _client.alive:
            return _client
        if _client is not None:
            _client.close()
            _client = None
            now = time.monotonic()
            _deaths[:] = [t for t in _deaths if now - t < _RETRY_AFTER_S] + [now]
            if len(_deaths) >= _MAX_DEATHS:
                _unavailable_until = now + _RETRY_AFTER_S
                log.warning(
                    "math checker: the sympy server died %d times in %.0f s;"
                    " comparing in-process, without a hard deadline, for %.0f s",
                    len(_deaths),
                    _RETRY_AFTER_S,
                    _RETRY_AFTER_S,
                )
            else:
                log.warning("math checker: the sympy server died; starting another")
        if time.monotonic() < _unavailable_until:
            return None
        if not hasattr(os, "fork") or not hasattr(select, "poll"):
            _unavailable_until = float("inf")
            log.warning("math checker: no fork() here; sympy runs in-process")
            return None
        try:
            _client = _Client(MAX_CHILDREN)
        except (OSError, RuntimeError) as error:
            _unavailable_until = time.monotonic() + _RETRY_AFTER_S
            log.warning(
                "math checker: could not start the sympy server (%s); comparing"
                " in-process, without a hard deadline, for %.0f s",
                error,
                _RETRY_AFTER_S,
            )
            return None
        count("server_starts")
        return _client


def _shutdown() -> None:
    global _client
    with _client_lock:
        if _client is not None:
            _client.close()
            _client = None


def _after_fork_in_child() -> None:
    """Forget the parent's server in a forked child, which starts its own."""
    global _client, _client_lock, _stats_lock
    _client_lock = threading.Lock()
    _stats_lock = threading.Lock()
    if _client is not None:
        # Close our copies of the pipes (raw descriptors, no locks involved),
        # so the server sees EOF when the parent goes, and keep the object so
        # that Popen's finaliser never runs on a process that is not ours.
        for pipe in (_client.proc.stdin, _client.proc.stdout):
            with contextlib.suppress(OSError, AttributeError):
                pipe.close()
        _orphans.append(_client)
        _client = None


atexit.register(_shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def compare(
    a: str, b: str, *, timeout_s: float, use_simplify: bool = True
) -> bool | None:
    """Compare two normalised answers with sympy within ``timeout_s``.

    Args:
        a: a normalised answer that passed :func:`.guards.refusal`.
        b: the other one.
        timeout_s: time limit; the call returns within ``timeout_s`` plus
            :data:`TIMEOUT_MARGIN_S` (once the server has started).
        use_simplify: let sympy ``simplify`` when the numeric test is
            inconclusive.

    Returns:
        The verdict, or None when the comparison timed out or failed.
    """
    client = _get_client()
    if client is None:
        count("in_process")
        return compare_in_process(a, b, timeout_s=timeout_s, use_simplify=use_simplify)
    status, verdict = client.compare(a, b, timeout_s, use_simplify)
    if status == "ok":
        count("compared")
        return verdict
    count("timed_out" if status == "timeout" else "errors")
    log.debug("sympy comparison %s: %r vs %r", status, a[:80], b[:80])
    return None


# --------------------------------------------------------------------------
# In-process fallback (and the peer of benchmarks/math_check.py)
# --------------------------------------------------------------------------


class _Deadline(BaseException):
    """Raised by the SIGALRM handler when a time limit expires.

    A BaseException, so that sympy's and latex2sympy's own ``except Exception``
    clauses cannot swallow it.
    """


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`_Deadline` in the main thread after ``seconds``.

    Python code only: a signal handler runs between bytecodes, never inside a
    long C call. An outer interval timer, if one was running, is re-armed on
    exit with what was left of it.
    """

    def _on_alarm(signum: int, frame: object) -> None:
        raise _Deadline

    started = time.monotonic()
    previous_handler = signal.signal(signal.SIGALRM, _on_alarm)
    previous_timer = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        # The timer is one-shot: if it fires during the clean-up, the retry
        # finishes the job.
        while True:
            try:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous_handler)
                break
            except _Deadline:
                continue
        if previous_timer[0] > 0:
            left = previous_timer[0] - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), previous_timer[1])


def compare_in_process(
    a: str, b: str, *, timeout_s: float, use_simplify: bool = True
) -> bool | None:
    """:func:`compare` in this process, as the checker did before the server.

    On the main thread sympy runs under a SIGALRM deadline, which interrupts
    Python code but not C code; elsewhere there is no timer, so ``simplify``
    is skipped and only the numeric test runs, without any deadline.
    """
    from pipelines.common.math_check import symbolic

    main = threading.current_thread() is threading.main_thread()
    try:
        if main and hasattr(signal, "setitimer"):
            with _time_limit(timeout_s):
                return symbolic.sympy_equiv(a, b, use_simplify=use_simplify)
        return symbolic.sympy_equiv(a, b, use_simplify=False)
    except _Deadline:
        count("timed_out")
        return None
    except Exception:
        count("errors")
        return None
