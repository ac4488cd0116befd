r"""The sympy server: forks compute children and kills those that run late.

Started by :mod:`.worker`, which runs :func:`main` in a new interpreter
(``python -m pipelines.common.math_check.server MAX_CHILDREN`` does the
same); not meant to be run by hand. The server imports sympy and
``latex2sympy`` once, then never runs any mathematics itself, so it never
hangs: every comparison runs in a compute child forked from it (a few
milliseconds, the imports are already done), and a child still busy at its
request's deadline is killed with SIGKILL, which no C loop can ignore, and
replaced by a fresh fork.

Protocol (JSON lines, server stdin/stdout):

* request ``{"id": 7, "a": "\\sqrt{4}", "b": "2", "simplify": true,
  "budget": 2.0}``: compare two normalised answers within ``budget``
  seconds of its arrival (time spent queued for a free child included);
* reply ``{"id": 7, "status": "ok", "verdict": true}``, or status
  ``"timeout"`` / ``"error"`` with ``"verdict": null``.

The server answers ``{"ready": true}`` once its imports are done, and exits
(killing its children) when its stdin closes, i.e. when its client exits.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import logging
import os
import resource
import select
import signal
import sys
import time
from dataclasses import dataclass, field

from pipelines.common.math_check import protocol

log = logging.getLogger(__name__)

CHILD_MEMORY_MB = 1024
"""Address space a compute child may add to the server's before MemoryError."""

_PR_SET_PDEATHSIG = 1


@dataclass
class _Child:
    """A compute child: its pid and pipes, and the request it is working on."""

    pid: int
    request_fd: int
    reply: protocol.LineReader
    request: dict | None = None
    deadline: float = 0.0


@dataclass
class _Server:
    input_fd: int
    output_fd: int
    max_children: int
    children: list[_Child] = field(default_factory=list)
    queue: collections.deque = field(default_factory=collections.deque)

    def serve(self) -> None:
        """Answer requests until stdin closes."""
        requests = protocol.LineReader(self.input_fd)
        try:
            while not requests.eof:
                self._expire(time.monotonic())
                self._dispatch()
                poller = select.poll()
                poller.register(self.input_fd, select.POLLIN)
                by_fd = {c.reply.fd: c for c in self.children if c.request}
                for fd in by_fd:
                    poller.register(fd, select.POLLIN)
                for fd, _ in poller.poll(self._poll_ms()):
                    if fd == self.input_fd:
                        now = time.monotonic()
                        for request in requests.read_ready():
                            self.queue.append((request, now + request["budget"]))
                    else:
                        self._read_child(by_fd[fd])
        finally:
            for child in list(self.children):
                self._kill(child)

    def _poll_ms(self) -> int:
        deadlines = [c.deadline for c in self.children if c.request]
        deadlines += [deadline for _, deadline in self.queue]
        if not deadlines:
            return -1
        return max(0, int((min(deadlines) - time.monotonic()) * 1000) + 1)

    def _reply(self, request: dict, status: str, verdict: bool | None) -> None:
        message = {"id": request["id"], "status": status, "verdict": verdict}
        protocol.send(self.output_fd, message)

    def _expire(self, now: float) -> None:
        for child in [c for c in self.children if c.request and c.deadline <= now]:
            request = child.request
            self._kill(child)
            self._reply(request, "timeout", None)
        if any(deadline <= now for _, deadline in self.queue):
            late = [request for request, deadline in self.queue if deadline <= now]
            self.queue = collections.deque(
                (request, deadline)
                for request, deadline in self.queue
                if deadline > now
            )
            for request in late:
                self._reply(request, "timeout", None)

    def _dispatch(self) -> None:
        while self.queue:
            idle = next((c for c in self.children if c.request is None), None)
            if idle is None:
                if len(self.children) >= self.max_children:
                    return
                try:
                    idle = self._fork()
                except OSError as error:  # EAGAIN: the process limit
                    if self.children:
                        return  # a busy child will take it when it is done
                    request, _ = self.queue.popleft()
                    log.warning("math_check server: fork failed: %s", error)
                    self._reply(request, "error", None)
                    continue
            request, deadline = self.queue.popleft()
            idle.request, idle.deadline = request, deadline
            try:
                protocol.send(idle.request_fd, request)
            except OSError:  # the child died while idle
                self._kill(idle)
                self._reply(request, "error", None)

    def _read_child(self, child: _Child) -> None:
        messages = child.reply.read_ready()
        request = child.request
        if child.reply.eof or not messages:
            if child.reply.eof and request is not None:
                self._kill(child)  # it died (a crash in C, the memory limit...)
                self._reply(request, "error", None)
            return
        child.request = None
        message = messages[-1]
        if request is not None and message.get("id") == request["id"]:
            self._reply(request, message["status"], message["verdict"])

    def _kill(self, child: _Child) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child.pid, 0)
        for fd in (child.request_fd, child.reply.fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.children.remove(child)

    def _fork(self) -> _Child:
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        server_pid = os.getpid()
        try:
            pid = os.fork()
        except OSError:
            for fd in (request_r, request_w, reply_r, reply_w):
                os.close(fd)
            raise
        if pid == 0:  # the compute child
            status = 1
            try:
                for fd in (request_w, reply_r, self.input_fd, self.output_fd):
                    os.close(fd)
                for other in self.children:
                    os.close(other.request_fd)
                    os.close(other.reply.fd)
                _compute(request_r, reply_w, server_pid)
                status = 0
            finally:
                os._exit(status)
        os.close(request_r)
        os.close(reply_w)
        child = _Child(pid, request_w, protocol.LineReader(reply_r))
        self.children.append(child)
        return child


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent exits (else a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    libc_name = ctypes.util.find_library("c")
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(libc_name, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def _limit_memory() -> None:
    """Cap the address space so a runaway big integer raises MemoryError."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[0])
        used = pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return  # not Linux: the deadline alone protects
    limit = used + CHILD_MEMORY_MB * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _compute(request_fd: int, reply_fd: int, server_pid: int) -> None:
    """The compute child's loop: one request in, one reply out, until EOF."""
    from pipelines.common.math_check import symbolic

    _die_with_parent(server_pid)
    _limit_memory()
    requests = protocol.LineReader(request_fd)
    while (request := requests.next_message()) is not None:
        try:
            verdict = symbolic.sympy_equiv(
                request["a"], request["b"], use_simplify=request["simplify"]
            )
            status = "ok"
        except Exception:  # MemoryError and RecursionError included
            verdict, status = None, "error"
        reply = {"id": request["id"], "status": status, "verdict": verdict}
        protocol.send(reply_fd, reply)


def main(argv: list[str] | None = None) -> int:
    """Serve on stdin/stdout; the only argument is the number of children."""
    args = sys.argv[1:] if argv is None else argv
    max_children = int(args[0]) if args else 4
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the client decides
    # Keep the protocol on private descriptors: a stray print from sympy must
    # not corrupt it.
    input_fd, output_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    from pipelines.common.math_check import symbolic

    symbolic.warm_up()
    try:
        protocol.send(output_fd, {"ready": True, "pid": os.getpid()})
        _Server(input_fd, output_fd, max_children).serve()
    except BrokenPipeError:
        pass  # the client is gone
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
