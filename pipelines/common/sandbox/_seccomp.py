"""The seccomp filter of the ``landlock`` backend: a classic BPF program, our own.

Standard library only (see ``_confine``, whose libc helpers it uses). Written here
rather than through ``pyseccomp`` (last release 0.1.2, January 2021, a ctypes
wrapper that needs the system ``libseccomp.so``): the program is ~100
instructions of ``struct sock_filter`` installed with one ``prctl`` call.

Constants: linux/seccomp.h, linux/filter.h, linux/audit.h, linux/sched.h.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

if __package__:
    from ._confine import PR_SET_SECCOMP, check_result, libc
else:  # run as a script sibling by the supervisor
    from _confine import PR_SET_SECCOMP, check_result, libc  # type: ignore[no-redef]

SECCOMP_MODE_FILTER = 2
SECCOMP_GET_ACTION_AVAIL = 2
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000

_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_JSET_K = 0x45
_BPF_RET_K = 0x06

_SECCOMP_DATA_NR = 0
_SECCOMP_DATA_ARCH = 4
_SECCOMP_DATA_ARG0 = 16  # low 32 bits of args[0] (little-endian targets only)

_X32_SYSCALL_BIT = 0x40000000
AF_UNIX = 1
# CLONE_NEWTIME | NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
CLONE_NAMESPACE_FLAGS = 0x00000080 | 0x00020000 | 0x7E000000


class Arch:
    """One architecture's seccomp identity and the syscall numbers the filter uses."""

    def __init__(self, name: str, audit: int, numbers: dict[str, int]) -> None:
        self.name = name
        self.audit = audit
        self.numbers = numbers


# Syscall numbers: arch/x86/entry/syscalls/syscall_64.tbl and
# include/uapi/asm-generic/unistd.h (aarch64); tests check them against the
# installed headers.
_GENERIC_NEW = {
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "clone3": 435,
    "pidfd_getfd": 438,
    "process_madvise": 440,
    "mount_setattr": 442,
}
ARCHES = {
    "x86_64": Arch(
        "x86_64",
        0xC000003E,  # AUDIT_ARCH_X86_64
        {
            "socket": 41,
            "socketpair": 53,
            "clone": 56,
            "ptrace": 101,
            "setpgid": 109,
            "setsid": 112,
            "pivot_root": 155,
            "chroot": 161,
            "acct": 163,
            "mount": 165,
            "umount2": 166,
            "swapon": 167,
            "swapoff": 168,
            "reboot": 169,
            "iopl": 172,
            "ioperm": 173,
            "init_module": 175,
            "delete_module": 176,
            "quotactl": 179,
            "kexec_load": 246,
            "add_key": 248,
            "request_key": 249,
            "keyctl": 250,
            "unshare": 272,
            "perf_event_open": 298,
            "name_to_handle_at": 303,
            "open_by_handle_at": 304,
            "setns": 308,
            "process_vm_readv": 310,
            "process_vm_writev": 311,
            "kcmp": 312,
            "finit_module": 313,
            "seccomp": 317,
            "kexec_file_load": 320,
            "bpf": 321,
            "userfaultfd": 323,
            **_GENERIC_NEW,
        },
    ),
    "aarch64": Arch(
        "aarch64",
        0xC00000B7,  # AUDIT_ARCH_AARCH64
        {
            "umount2": 39,
            "mount": 40,
            "pivot_root": 41,
            "chroot": 51,
            "quotactl": 60,
            "acct": 89,
            "unshare": 97,
            "kexec_load": 104,
            "init_module": 105,
            "delete_module": 106,
            "ptrace": 117,
            "reboot": 142,
            "setpgid": 154,
            "setsid": 157,
            "socket": 198,
            "socketpair": 199,
            "add_key": 217,
            "request_key": 218,
            "keyctl": 219,
            "clone": 220,
            "swapon": 224,
            "swapoff": 225,
            "perf_event_open": 241,
            "name_to_handle_at": 264,
            "open_by_handle_at": 265,
            "setns": 268,
            "process_vm_readv": 270,
            "process_vm_writev": 271,
            "kcmp": 272,
            "finit_module": 273,
            "seccomp": 277,
            "bpf": 280,
            "userfaultfd": 282,
            "kexec_file_load": 294,
            **_GENERIC_NEW,
        },
    ),
}

# Denied with EPERM. socket() is denied for every family, AF_UNIX included:
# Landlock (ABI <= 7) does not govern connect() to a pathname UNIX socket, so an
# AF_UNIX socket could reach the user's D-Bus session bus or docker.sock.
# socketpair(AF_UNIX) stays allowed (asyncio, multiprocessing pipes). setsid and
# setpgid are denied so that every process of a run stays in one process group,
# which one killpg() ends atomically.
DENIED = (
    "socket",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "process_madvise",
    "kcmp",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "name_to_handle_at",
    "open_by_handle_at",
    "acct",
    "swapon",
    "swapoff",
    "reboot",
    "quotactl",
    "iopl",
    "ioperm",
    "setsid",
    "setpgid",
)


def native_arch() -> Arch | None:
    """Return the seccomp identity of this machine, or None when unsupported."""
    return ARCHES.get(os.uname().machine)


# -------------------------------------------------------------------- seccomp


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _errno(code: int) -> int:
    return SECCOMP_RET_ERRNO | code


def build_filter(arch: Arch) -> bytes:
    """Build the classic BPF program of the ``landlock`` backend for ``arch``.

    Layout: kill the process on a foreign architecture (i386 ``int 0x80``) and on
    x32 numbers; EPERM for every syscall in :data:`DENIED`; ``socketpair`` only
    for AF_UNIX (else EAFNOSUPPORT); ``clone`` without namespace flags (else
    EPERM); ``clone3`` answers ENOSYS, whose flags sit in memory a filter cannot
    read, so libc falls back to ``clone``; everything else is allowed.

    Args:
        arch: target architecture.

    Returns:
        The program as packed ``struct sock_filter`` records.
    """
    nr = arch.numbers
    prog = [
        _insn(_BPF_LD_W_ABS, 0, 0, _SECCOMP_DATA_ARCH),
        _insn(_BPF_JEQ_K, 1, 0, arch.audit),
        _insn(_BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        _insn(_BPF_LD_W_ABS, 0, 0, _SECCOMP_DATA_NR),
    ]
    if arch.name == "x86_64":
        prog += [
            _insn(_BPF_JGE_K, 0, 1, _X32_SYSCALL_BIT),
            _insn(_BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        ]
    for name in (name for name in DENIED if name in nr):  # iopl: x86 only
        prog += [
            _insn(_BPF_JEQ_K, 0, 1, nr[name]),
            _insn(_BPF_RET_K, 0, 0, _errno(errno.EPERM)),
        ]
    prog += [
        _insn(_BPF_JEQ_K, 0, 1, nr["clone3"]),
        _insn(_BPF_RET_K, 0, 0, _errno(errno.ENOSYS)),
        # socketpair(domain, ...): only AF_UNIX. The blocks below end in returns,
        # so a non-matching syscall number skips a whole block with A unchanged.
        _insn(_BPF_JEQ_K, 0, 4, nr["socketpair"]),
        _insn(_BPF_LD_W_ABS, 0, 0, _SECCOMP_DATA_ARG0),
        _insn(_BPF_JEQ_K, 0, 1, AF_UNIX),
        _insn(_BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        _insn(_BPF_RET_K, 0, 0, _errno(errno.EAFNOSUPPORT)),
        # clone(flags, ...): no new namespaces.
        _insn(_BPF_JEQ_K, 0, 4, nr["clone"]),
        _insn(_BPF_LD_W_ABS, 0, 0, _SECCOMP_DATA_ARG0),
        _insn(_BPF_JSET_K, 0, 1, CLONE_NAMESPACE_FLAGS),
        _insn(_BPF_RET_K, 0, 0, _errno(errno.EPERM)),
        _insn(_BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        _insn(_BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
    return b"".join(prog)


def install_filter(program: bytes) -> None:
    """Install ``program`` as this thread's seccomp filter (needs no_new_privs).

    Args:
        program: packed ``struct sock_filter`` records from :func:`build_filter`.

    Raises:
        ConfineError: the kernel refused the filter.
    """
    count = len(program) // 8
    buf = ctypes.create_string_buffer(program, len(program))

    class _Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = _Fprog(count, ctypes.addressof(buf))
    result = libc().prctl(
        PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0
    )
    check_result(result, "prctl(PR_SET_SECCOMP)")


def seccomp_filter_available(arch: Arch) -> bool:
    """Whether the kernel runs seccomp filters that may return an errno.

    Args:
        arch: this machine's architecture (for the ``seccomp`` syscall number).

    Returns:
        True when ``SECCOMP_GET_ACTION_AVAIL`` (Linux >= 4.14) accepts
        ``SECCOMP_RET_ERRNO``.
    """
    action = ctypes.c_uint32(SECCOMP_RET_ERRNO)
    result = libc().syscall(
        ctypes.c_long(arch.numbers["seccomp"]),
        ctypes.c_uint(SECCOMP_GET_ACTION_AVAIL),
        ctypes.c_uint(0),
        ctypes.byref(action),
    )
    return result == 0
