"""Kernel primitives of the ``landlock`` backend: libc calls, prctl, Landlock rules.

Standard library only (``ctypes``): the supervisor process imports this module as a
plain script sibling, outside the ``pipelines`` package. Our own code rather than a
PyPI package: ``landlock`` (1.0.0.dev5, an alpha) covers filesystem rules only,
without the TCP rules (ABI 4) and the signal and abstract-socket scopes (ABI 6)
this backend depends on; the kernel interface is three system calls. The seccomp
half is in ``_seccomp``.

Constants come from the kernel's UAPI headers (``linux/landlock.h``,
``linux/prctl.h``) and the Landlock documentation
(Documentation/userspace-api/landlock.rst, ABI versions 1-7).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable

# --------------------------------------------------------------------- prctl

PR_SET_PDEATHSIG = 1
PR_GET_SECCOMP = 21
PR_SET_SECCOMP = 22
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39

# ------------------------------------------------------------------- Landlock

LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

# Rights a rule on a regular or device file may carry (the rest are directory rights).
FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ_RIGHTS = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
DEVICE_RIGHTS = FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE

# Lowest ABI the backend accepts: 6 (Linux 6.12) adds the signal and abstract UNIX
# socket scopes; without them a sandboxed program could signal its caller's other
# processes and reach abstract sockets of the host's network namespace.
MIN_LANDLOCK_ABI = 6

_NR_LANDLOCK_CREATE_RULESET = 444  # same number on every architecture
_NR_LANDLOCK_ADD_RULE = 445
_NR_LANDLOCK_RESTRICT_SELF = 446


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # __attribute__((packed)) in linux/landlock.h
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class ConfineError(OSError):
    """A confinement step failed; the message names the step and the errno."""


_libc: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    """The C library, loaded once, with errno capture."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
        _libc.prctl.restype = ctypes.c_int
        _libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    return _libc


def check_result(result: int, step: str) -> int:
    """Return ``result``, or raise ConfineError with errno when it is negative."""
    if result < 0:
        code = ctypes.get_errno()
        raise ConfineError(code, f"{step}: {os.strerror(code)}")
    return result


def prctl(option: int, arg: int = 0, step: str = "prctl") -> int:
    """Call ``prctl(option, arg, 0, 0, 0)``.

    Args:
        option: ``PR_*`` constant.
        arg: its first argument.
        step: name used in the error message.

    Returns:
        The call's result.

    Raises:
        ConfineError: the call failed.
    """
    return check_result(libc().prctl(option, arg, 0, 0, 0), step)


def missing_prctl_features() -> list[str]:
    """The prctl features the supervisor needs and this kernel lacks."""
    missing = []
    if libc().prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) < 0:
        missing.append("no_new_privs (Linux >= 3.5)")
    flag = ctypes.c_int(0)
    if libc().prctl(PR_GET_CHILD_SUBREAPER, ctypes.addressof(flag), 0, 0, 0) < 0:
        missing.append("child subreapers (Linux >= 3.4)")
    return missing


# ------------------------------------------------------------------- Landlock


def landlock_abi() -> int:
    """Return the kernel's Landlock ABI version.

    Raises:
        ConfineError: Landlock is absent (ENOSYS), disabled at boot (EOPNOTSUPP)
            or blocked by an outer seccomp policy.
    """
    result = libc().syscall(
        ctypes.c_long(_NR_LANDLOCK_CREATE_RULESET),
        ctypes.c_void_p(None),
        ctypes.c_size_t(0),
        ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION),
    )
    return check_result(result, "landlock_create_ruleset(VERSION)")


def handled_fs(abi: int) -> int:
    """Every filesystem right the given Landlock ABI knows (all of them handled)."""
    rights = (FS_MAKE_SYM << 1) - 1  # ABI 1: bits 0-12
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def apply_landlock(
    abi: int,
    read: Iterable[str],
    write: Iterable[str],
    devices: Iterable[str],
) -> None:
    """Restrict this process (and its future children) with one Landlock domain.

    Everything the ABI can restrict is restricted, then allowed back only for:
    read and execute below ``read``, every filesystem right below ``write``, read
    and write on the ``devices`` files. TCP bind/connect (ABI >= 4) get no rule,
    so they are denied; signals and abstract UNIX sockets are scoped to the
    domain (ABI >= 6). ``no_new_privs`` must already be set (or CAP_SYS_ADMIN).

    Args:
        abi: the kernel's Landlock ABI (from :func:`landlock_abi`).
        read: directories (or files) to allow read and execute under.
        write: directories to allow every right under.
        devices: device files to allow read/write/truncate on.

    Raises:
        ConfineError: a step failed; paths that do not exist (or that this
            process may not reach) are skipped: without a rule they stay denied.
    """
    fs = handled_fs(abi)
    attr = _RulesetAttr(
        handled_access_fs=fs,
        handled_access_net=NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
        scoped=SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0,
    )
    c = libc()
    ruleset = check_result(
        c.syscall(
            ctypes.c_long(_NR_LANDLOCK_CREATE_RULESET),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
            ctypes.c_uint32(0),
        ),
        "landlock_create_ruleset",
    )
    try:
        rules = [(path, READ_RIGHTS) for path in read]
        rules += [(path, fs) for path in write]
        rules += [(path, DEVICE_RIGHTS) for path in devices]
        for path, rights in rules:
            _add_path_rule(ruleset, path, rights & fs)
        check_result(
            c.syscall(
                ctypes.c_long(_NR_LANDLOCK_RESTRICT_SELF),
                ctypes.c_int(ruleset),
                ctypes.c_uint32(0),
            ),
            "landlock_restrict_self",
        )
    finally:
        os.close(ruleset)


def _add_path_rule(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, PermissionError):
        return  # what cannot be reached needs no rule: it stays denied
    try:
        if not os.path.isdir(path):
            rights &= FILE_RIGHTS
        rule = _PathBeneathAttr(allowed_access=rights, parent_fd=fd)
        check_result(
            libc().syscall(
                ctypes.c_long(_NR_LANDLOCK_ADD_RULE),
                ctypes.c_int(ruleset),
                ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                ctypes.byref(rule),
                ctypes.c_uint32(0),
            ),
            f"landlock_add_rule({path})",
        )
    finally:
        os.close(fd)
