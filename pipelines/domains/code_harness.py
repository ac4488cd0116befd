"""Sandbox side of the code verifier: run a problem's tests against a candidate.

The pipeline never runs this module in its own process.
:mod:`pipelines.domains.code_check` sends :mod:`pipelines.domains.code_wire`'s
source, this file's source and one call of :func:`main` as the program of a
sandboxed run (:mod:`pipelines.common.sandbox`), and the problem's test code,
trusted helpers and a fresh secret nonce on that run's standard input. Standard
library only, so any ``python3`` the sandbox picks can run it::

    <code_wire.py><code_harness.py>
    raise SystemExit(main(candidate_code, "has_close_elements"))

Two processes, so that nothing the candidate does can reach the check:

* The *checker* is the program's first process. Before anything else it drops the
  program's directory (writable by the candidate) from ``sys.path`` and makes
  itself non-dumpable (``prctl(PR_SET_DUMPABLE, 0)``: processes of the same uid
  can then neither ptrace it nor open its ``/proc/<pid>/mem`` or ``fd/``).
* The *candidate process* is forked next, before the checker reads standard input,
  so the test code and the nonce never exist in its memory. It points its stdin,
  stdout and stderr at ``/dev/null``, closes every other inherited descriptor and
  waits. Once the checker has read standard input to the end and closed it, the
  candidate process enters a Landlock domain of its own where the kernel has
  Landlock (Linux >= 5.13): from there it cannot open ``/proc/<pid>/mem``,
  ``fd/`` or ``environ`` of any process outside the domain (the checker, the
  sandbox's init, which still holds the run's standard input), nor, with Landlock
  ABI >= 6 (Linux 6.12), signal them. Then it executes the candidate's code in
  fresh globals and answers calls over a pair of pipes.
* The checker defines the problem's helpers (for HumanEval, the problem's own
  prompt) and test, and calls ``check`` with a stand-in for the entry point that
  sends each call's arguments to the candidate process and rebuilds the answer
  from plain built-in values only (:mod:`pipelines.domains.code_wire`). Any other
  value, an exception, or the candidate process ending fails the check.
* Only after ``check`` returns does the checker write
  ``<MARKER> <nonce> landlock=<abi>`` as a line on its stdout and exit 0 (``abi``
  0: the candidate process ran without Landlock). The host counts a pass only when
  it sees that line with its nonce and exit status 0.

What the candidate can still do is limited by the sandbox it runs in: it can read
the files the sandbox lets it read (for example a copy of the HumanEval data with
the reference solutions), and whatever it computes is its answer.
"""

from __future__ import annotations

import builtins
import ctypes
import json
import os
import signal
import sys
import time

if __name__ != "__main__":  # in the sandbox, code_wire's source precedes this one
    from pipelines.domains.code_wire import (
        ProtocolError,
        decode,
        encode,
        receive,
        send,
        write_all,
    )

MARKER = "RMFLOW-CODE-CHECK-PASSED"  # then " <nonce> landlock=<abi>"

MAX_MESSAGE_CHARS = 2000  # error text kept from the candidate process
_EXIT_WAIT_S = 2.0  # time a candidate process that closed its pipe gets to exit
# Signals that end a candidate process and are passed on to the checker, so the
# sandbox classifies the run as it would a single process (SIGXCPU = CPU limit).
_PASSED_ON = ("SIGXCPU", "SIGKILL", "SIGSEGV", "SIGBUS", "SIGABRT", "SIGFPE")
_GO = ["go"]  # checker -> candidate process: stdin is read and closed
# Imported before the fork, so both processes have it for the price of one: every
# HumanEval prompt imports from typing.
_PRELOADED = ("typing",)

# <linux/prctl.h> and <linux/landlock.h>; the landlock syscalls have the same
# numbers on every architecture Linux added them to at once (all but alpha).
_PR_SET_DUMPABLE = 4
_PR_SET_NO_NEW_PRIVS = 38
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
# Handled (so denied, no rule grants them) in the candidate's domain: making
# character and block devices, which it cannot do anyway without CAP_MKNOD. A
# domain needs one handled right; what the domain is for is its ptrace scope.
_LANDLOCK_ACCESS_FS_MAKE_CHAR_BLOCK = (1 << 6) | (1 << 11)
_LANDLOCK_SCOPE_UNIX_AND_SIGNAL = (1 << 0) | (1 << 1)  # ABI >= 6


class CandidateError(Exception):
    """The candidate failed a call: it raised, returned a non-plain value, or died."""


# ------------------------------------------------------------------ the kernel


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _os_error(call: str) -> OSError:
    errno = ctypes.get_errno()
    return OSError(errno, f"{call}: {os.strerror(errno)}")


def _make_undumpable() -> None:
    """prctl(PR_SET_DUMPABLE, 0): shield this process from same-uid processes.

    Raises:
        OSError: the call failed, or this is not Linux (the check must not run
            unshielded).
    """
    if not sys.platform.startswith("linux"):
        raise OSError("the code checker needs Linux (prctl, Landlock)")
    if _libc().prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise _os_error("prctl(PR_SET_DUMPABLE, 0)")


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is unavailable."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        version = _libc().syscall(
            _SYS_LANDLOCK_CREATE_RULESET,
            None,
            ctypes.c_size_t(0),
            ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION),
        )
    except (OSError, AttributeError):
        return 0
    return max(int(version), 0)


def _confine(abi: int) -> None:
    """Move this process into a Landlock domain of its own (see module docstring).

    Args:
        abi: :func:`landlock_abi`; nothing is done when 0.

    Raises:
        OSError: Landlock is there but the domain could not be entered.
    """
    if abi <= 0:
        return

    class RulesetAttr(ctypes.Structure):
        _fields_ = [
            ("handled_access_fs", ctypes.c_uint64),
            ("handled_access_net", ctypes.c_uint64),
            ("scoped", ctypes.c_uint64),
        ]

    attr = RulesetAttr(_LANDLOCK_ACCESS_FS_MAKE_CHAR_BLOCK, 0, 0)
    size = 8  # ABI 1-3 know handled_access_fs only; 4-5 add net; 6 adds scoped
    if abi >= 6:
        attr.scoped = _LANDLOCK_SCOPE_UNIX_AND_SIGNAL
        size = 24
    elif abi >= 4:
        size = 16
    libc = _libc()
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise _os_error("prctl(PR_SET_NO_NEW_PRIVS, 1)")
    ruleset = libc.syscall(
        _SYS_LANDLOCK_CREATE_RULESET,
        ctypes.byref(attr),
        ctypes.c_size_t(size),
        ctypes.c_uint32(0),
    )
    if ruleset < 0:
        raise _os_error("landlock_create_ruleset")
    try:
        if libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, int(ruleset), 0) != 0:
            raise _os_error("landlock_restrict_self")
    finally:
        os.close(int(ruleset))


# ------------------------------------------------------------ candidate process


def _describe(exc: BaseException) -> str:
    """``"TypeName: message"`` of an exception, never raising."""
    try:
        text = f"{type(exc).__name__}: {exc}"
    except BaseException:  # noqa: B036 - a candidate's __str__ may raise anything
        text = "an exception whose message cannot be shown"
    return text[:MAX_MESSAGE_CHARS]


def _detach(keep: tuple[int, int]) -> None:
    """Point fds 0-2 at /dev/null and close every other fd except ``keep``."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    # Every descriptor above 2 but ``keep``, by range: listing /proc/self/fd
    # is not allowed under the sandbox's Landlock backend.
    low, high = sorted(keep)
    limit = os.sysconf("SC_OPEN_MAX")
    os.closerange(3, low)
    os.closerange(low + 1, high)
    os.closerange(high + 1, limit if limit > 0 else 1 << 20)


def _serve(code: str, entry_point: str, abi: int, requests: int, replies: int) -> None:
    """Body of the candidate process: load the code, then answer calls. Never returns.

    Args:
        code: the candidate's source.
        entry_point: the function the tests call; it must exist after loading.
        abi: Landlock ABI to confine the process with (0: none).
        requests: read end of the checker's calls.
        replies: write end of the answers.
    """
    try:
        _detach((requests, replies))
        if receive(requests) != _GO:
            os._exit(0)  # the checker is gone
        _confine(abi)
    except BaseException as exc:  # noqa: B036 - nothing of the candidate ran yet
        send(replies, ["error", "setting up the candidate process: " + _describe(exc)])
        os._exit(70)
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(code, "<candidate>", "exec"), namespace)
        if not callable(namespace.get(entry_point)):
            raise NameError(f"the code defines no function {entry_point!r}")
    except BaseException as exc:  # noqa: B036 - SystemExit etc. fail the load too
        send(replies, ["error", "loading the code: " + _describe(exc)])
        os._exit(1)
    send(replies, ["ready"])
    while True:
        request = receive(requests)
        if request is None:
            os._exit(0)
        name, args, kwargs = request
        try:
            result = namespace[name](*decode(args), **decode(kwargs))
            reply = ["ok", encode(result)]
        except BaseException as exc:  # noqa: B036 - every failure is an answer
            reply = ["error", _describe(exc)]
        send(replies, reply)


# --------------------------------------------------------------------- checker


class _Channel:
    """The checker's end of the pipes to the candidate process."""

    def __init__(self, pid: int, requests: int, replies: int) -> None:
        self.pid = pid
        self.requests = requests
        self.replies = replies
        self.status: int | None = None  # wait status once reaped

    def send(self, message: list) -> None:
        """Send ``message`` to the candidate process.

        Raises:
            CandidateError: the process closed its end.
        """
        try:
            send(self.requests, message)
        except OSError:
            ending = self._ending()
            raise CandidateError(f"the candidate process ended ({ending})") from None

    def receive(self) -> list:
        """The candidate process's next message.

        Raises:
            CandidateError: the process ended first.
            ProtocolError: the message is malformed.
        """
        try:
            message = receive(self.replies)
        except OSError:
            message = None
        if message is None:
            raise CandidateError(f"the candidate process ended ({self._ending()})")
        if type(message) is not list or not message:
            raise ProtocolError("malformed message")
        return message

    def go(self) -> None:
        """Let the candidate process load the code (stdin is read and closed).

        Raises:
            CandidateError: the process ended.
        """
        self.send(_GO)

    def wait_ready(self) -> None:
        """Block until the candidate process loaded the code.

        Raises:
            CandidateError: the code failed to load or the process ended.
            ProtocolError: the process sent something else.
        """
        message = self.receive()
        if message == ["ready"]:
            return
        if len(message) == 2 and message[0] == "error" and type(message[1]) is str:
            raise CandidateError(message[1][:MAX_MESSAGE_CHARS])
        raise ProtocolError("malformed answer to loading the code")

    def call(self, name: str, args: tuple, kwargs: dict) -> object:
        """Call ``name`` in the candidate process and return its plain answer.

        Args:
            name: a global of the candidate's code.
            args: positional arguments (plain values).
            kwargs: keyword arguments (plain values).

        Returns:
            The answer, rebuilt from plain built-in types.

        Raises:
            CandidateError: the call raised, returned a non-plain value, or the
                process ended.
            ProtocolError: the answer is malformed.
        """
        self.send([name, encode(tuple(args)), encode(dict(kwargs))])
        message = self.receive()
        if len(message) == 2 and message[0] == "ok":
            return decode(message[1])
        if len(message) == 2 and message[0] == "error" and type(message[1]) is str:
            raise CandidateError(f"{name}() failed: {message[1][:MAX_MESSAGE_CHARS]}")
        raise ProtocolError("malformed answer")

    def stand_in(self, name: str) -> object:
        """A function that forwards its calls to ``name`` in the candidate process."""

        def forward(*args: object, **kwargs: object) -> object:
            return self.call(name, args, kwargs)

        forward.__name__ = forward.__qualname__ = name
        return forward

    def _ending(self) -> str:
        """How the candidate process ended (it is killed if it lingers)."""
        deadline = time.monotonic() + _EXIT_WAIT_S
        while self.reap() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        status = self.reap()
        if status is None:
            self.close()
            return "it closed its end of the pipe"
        if os.WIFSIGNALED(status):
            return f"killed by signal {os.WTERMSIG(status)}"
        return f"exit status {os.WEXITSTATUS(status)}"

    def reap(self, block: bool = False) -> int | None:
        """The candidate process's wait status, reaping it; None if still running."""
        if self.status is None:
            try:
                pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
            except ChildProcessError:
                return None
            if pid == self.pid:
                self.status = status
        return self.status

    def close(self) -> None:
        """Kill and reap the candidate process; close the pipes."""
        for fd in (self.requests, self.replies):
            try:
                os.close(fd)
            except OSError:
                pass
        self.requests = self.replies = -1
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass
            self.reap(block=True)


def _isolate_imports() -> None:
    """Keep the program's own (candidate-writable) directory off the import path."""
    here = os.path.dirname(os.path.abspath(sys.argv[0] or "."))
    sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != here]


def _pass_on_death(channel: _Channel) -> None:
    """End this process with the signal that ended the candidate process, if any."""
    status = channel.reap()
    if status is None or not os.WIFSIGNALED(status):
        return
    signum = os.WTERMSIG(status)
    if signum not in {getattr(signal, n) for n in _PASSED_ON if hasattr(signal, n)}:
        return
    sys.stderr.write(f"candidate process killed by signal {signum}\n")
    sys.stderr.flush()
    if signum != signal.SIGKILL:
        signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _check(channel: _Channel, entry_point: str, secret: dict) -> None:
    """Define the problem's helpers and test, and run ``check`` on the stand-in."""
    channel.go()  # the candidate's code loads while the test is defined
    namespace = {"__name__": "__check__", "__builtins__": builtins}
    exec(compile(secret["prelude"], "<problem>", "exec"), namespace)
    for name in [entry_point, *secret["remote"]]:
        namespace[name] = channel.stand_in(name)
    exec(compile(secret["test"], "<test>", "exec"), namespace)
    check = namespace["check"]
    channel.wait_ready()
    check(namespace[entry_point])


def main(code: str, entry_point: str) -> int:
    """Run the check; write the pass marker only if ``check`` returned.

    Standard input holds one JSON object: ``nonce``, ``test`` (the problem's test
    code, defining ``check``), ``prelude`` (trusted code run before the test, e.g.
    a HumanEval prompt's helpers) and ``remote`` (other names the test calls that
    only the candidate's code defines).

    Args:
        code: the candidate's source.
        entry_point: the function the tests call.

    Returns:
        0 after writing the marker; failures raise (exit status 1) or end the
        process with the candidate process's signal.
    """
    _isolate_imports()
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)
    _make_undumpable()
    abi = landlock_abi()
    for name in _PRELOADED:
        __import__(name)
    requests_r, requests_w = os.pipe()
    replies_r, replies_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the candidate process never runs the checker's code below
        try:
            os.close(requests_w)
            os.close(replies_r)
            _serve(code, entry_point, abi, requests_r, replies_w)
        finally:
            os._exit(70)
    os.close(requests_r)
    os.close(replies_w)
    channel = _Channel(pid, requests_w, replies_r)
    try:
        secret = json.loads(sys.stdin.buffer.read())
        sys.stdin.close()
        try:
            _check(channel, entry_point, secret)
        except CandidateError:
            _pass_on_death(channel)
            raise
    finally:
        channel.close()
    write_all(1, f"{MARKER} {secret['nonce']} landlock={abi}\n".encode())
    return 0
