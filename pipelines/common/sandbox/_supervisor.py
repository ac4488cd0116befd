"""Supervisor of one sandboxed run: confine a child, wait, leave nothing behind.

Started by the sandbox as ``python -E -s -S -B _supervisor.py CONFIG`` with the
caller's privileges; CONFIG is the hex of a ``marshal``-ed dict (marshal needs no
import, unlike json, and both ends run the same interpreter). It imports only the
standard library and its siblings ``_confine`` and ``_seccomp``. It

1. becomes a child subreaper (``PR_SET_CHILD_SUBREAPER``), so every orphaned
   descendant of the run, ``setsid``/double-fork ones included, is reparented
   to it instead of to PID 1;
2. forks the child, which puts itself in a new process group, drops to the
   run's uid (when the caller is root), sets ``PR_SET_PDEATHSIG``, applies
   Landlock and seccomp (``landlock`` mode), sets the resource limits and
   executes the program (or bubblewrap, in ``bwrap`` mode);
3. waits for the child, or for SIGTERM/SIGINT/SIGHUP (the caller's wall-clock
   limit, or the caller's thread ending), then SIGKILLs the child's process
   group and every remaining descendant and reaps them all, bubblewrap's own
   init included (bubblewrap exits without reaping it, which left a
   ``[bwrap] <defunct>`` under PID 1 before).

It reports on the status descriptor named in the config, one hex-encoded
``marshal``-ed dict per line: ``{"child": pid}`` once forked,
``{"setup_error": msg}`` when confining or executing failed, and finally
``{"exit": code}``, ``{"signal": n}`` or ``{"stopped": signum}`` with
``"reaped"`` (other descendants it killed or reaped) and ``"complete"``. It never
writes to the program's stdout or stderr.
"""

from __future__ import annotations

import marshal
import os
import resource
import signal
import sys
import time

if __package__:
    from . import _confine
else:  # run as a script: the sibling module is on sys.path[0]
    import _confine  # type: ignore[no-redef]

_WATCHED = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
_KILL_ROUNDS_S = 5.0  # give up sweeping after this long (reported, never silent)
_SETUP_FAILED = 127


def _report(fd: int, **fields: object) -> None:
    data = marshal.dumps(fields).hex().encode() + b"\n"
    try:
        os.write(fd, data)
    except OSError:
        pass  # the caller is gone; nothing left to tell


def _children() -> list[int]:
    """Pids of this process's children (live or zombie)."""
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children", encoding="ascii") as handle:
            return [int(pid) for pid in handle.read().split()]
    except OSError:
        pass  # kernel without CONFIG_PROC_CHILDREN: scan every process
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        # Field 4 (ppid) follows the parenthesised command name.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == me:
            found.append(int(entry))
    return found


def _decode(info: os.waitid_result) -> dict[str, int]:
    if info.si_code == os.CLD_EXITED:
        return {"exit": info.si_status}
    return {"signal": info.si_status}


def _wait_main(child: int) -> dict[str, int]:
    """Wait until ``child`` ends (left unreaped) or a stop signal arrives."""
    while True:
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        info = os.waitid(os.P_PID, child, flags)
        if info is not None and info.si_pid == child:
            return _decode(info)
        for pid in _children():  # orphans that already died: do not pile up
            if pid != child:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
        received = signal.sigwaitinfo(_WATCHED)
        if received.si_signo != signal.SIGCHLD:
            return {"stopped": received.si_signo}


def _kill_tree(child: int) -> tuple[int, bool]:
    """SIGKILL the child's group and every descendant; reap all of them.

    The child's pid is still held (alive or an unreaped zombie) when this runs,
    so its process group id cannot have been reused.

    Returns:
        How many descendants other than ``child`` were reaped, and whether the
        sweep finished (False if processes kept appearing for too long).
    """
    try:
        os.killpg(child, signal.SIGKILL)
    except OSError:
        pass
    reaped = 0
    deadline = time.monotonic() + _KILL_ROUNDS_S
    while True:
        kids = _children()
        if not kids:
            return reaped, True
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for pid in kids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                continue
            reaped += pid != child
        if time.monotonic() > deadline:
            return reaped, False


def _child(config: dict, status_fd: int, supervisor: int) -> None:
    """Confine this (forked) process and execute the program; never returns."""
    step = "start"
    try:
        step = "setpgid"
        os.setpgid(0, 0)
        step = "signals"
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        for signum in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores these
            signal.signal(signum, signal.SIG_DFL)
        uid = config["uid"]
        if uid is not None:
            step = f"switch to uid {uid}"
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        step = "parent-death signal"
        _confine.prctl(_confine.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != supervisor:
            os._exit(_SETUP_FAILED)
        landlock = config.get("landlock")
        if landlock is not None:
            # Imported now: once Landlock applies, this directory is unreadable.
            if __package__:
                from . import _seccomp
            else:
                import _seccomp  # type: ignore[no-redef]
            step = "no_new_privs"
            _confine.prctl(_confine.PR_SET_NO_NEW_PRIVS, 1)
            step = "Landlock"
            _confine.apply_landlock(
                landlock["abi"],
                landlock["read"],
                landlock["write"],
                landlock["devices"],
            )
        step = "resource limits"
        for which, soft, hard in config["rlimits"]:
            resource.setrlimit(which, (soft, hard))
        if landlock is not None:
            step = "seccomp"
            arch = _seccomp.native_arch()
            if arch is None:
                raise OSError(f"no seccomp syscall table for {os.uname().machine}")
            _seccomp.install_filter(_seccomp.build_filter(arch))
        step = "chdir"
        os.chdir(config["cwd"])
        step = f"execute {config['argv'][0]}"
        os.execve(config["argv"][0], config["argv"], config["env"])
    except BaseException as exc:  # noqa: BLE001 - report every failure, then exit
        _report(status_fd, setup_error=f"{step}: {exc}")
    os._exit(_SETUP_FAILED)


def main(argv: list[str]) -> int:
    """Run the supervisor on the config in ``argv[1]``.

    Args:
        argv: ``sys.argv``.

    Returns:
        0 when it reported an outcome, 70 when it failed itself.
    """
    config = marshal.loads(bytes.fromhex(argv[1]))
    status_fd = config["status_fd"]
    os.set_inheritable(status_fd, False)  # the program never sees it
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
        _confine.prctl(_confine.PR_SET_CHILD_SUBREAPER, 1)
        # The caller (its thread) going away stops the run like a time-out.
        _confine.prctl(_confine.PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != config["parent"]:
            _report(status_fd, setup_error="caller exited before the run started")
            return 70
        me = os.getpid()
        child = os.fork()
        if child == 0:
            _child(config, status_fd, me)
        _report(status_fd, child=child)
        outcome = _wait_main(child)
        reaped, complete = _kill_tree(child)
        _report(status_fd, reaped=reaped, complete=complete, **outcome)
        return 0
    except BaseException:  # noqa: BLE001 - the caller must learn why
        import traceback

        _report(status_fd, error=traceback.format_exc(limit=5))
        return 70


if __name__ == "__main__":
    sys.exit(main(sys.argv))
