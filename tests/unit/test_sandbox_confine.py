"""Kernel primitives of the landlock backend: syscall tables, seccomp filter, Landlock.

Filters and Landlock domains cannot be undone, so each behaviour test runs a fresh
Python process that confines itself and reports what each attempt returned; the
same probe without confinement is the control.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.common.sandbox import _confine, _launch, _seccomp, _select

from .test_sandbox import cannot_run

PACKAGE_DIR = Path(_confine.__file__).parent
HEADERS = {
    "x86_64": [
        Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
        Path("/usr/include/asm/unistd_64.h"),
    ],
    "aarch64": [Path("/usr/include/asm-generic/unistd.h")],
}
LANDLOCK_HEADER = Path("/usr/include/linux/landlock.h")
NEEDS_HEADERS = "kernel UAPI headers missing (Debian: apt-get install linux-libc-dev)"


def _header_numbers(arch: str) -> dict[str, int]:
    for path in HEADERS[arch]:
        if path.exists():
            text = path.read_text()
            pairs = re.findall(r"#define __NR_(\w+)\s+(\d+)\b", text)
            return {name: int(number) for name, number in pairs}
    cannot_run(f"{NEEDS_HEADERS}: none of {[str(p) for p in HEADERS[arch]]}")


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_syscall_numbers_match_kernel_headers(arch: str) -> None:
    expected = _header_numbers(arch)
    table = _seccomp.ARCHES[arch].numbers
    # Headers older than a syscall lack it; every number they have must agree.
    known = {name: nr for name, nr in table.items() if name in expected}
    assert known == {name: expected[name] for name in known}
    assert len(known) >= len(table) - 3, "headers too old to check the table"
    x86_only = {"iopl", "ioperm"} if arch != "x86_64" else set()
    assert set(_seccomp.DENIED) - x86_only <= set(table)


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_filter_program_denies_each_listed_syscall(arch: str) -> None:
    target = _seccomp.ARCHES[arch]
    program = _seccomp.build_filter(target)
    insns = [
        struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)
    ]
    assert len(insns) < 256  # jump offsets are 8-bit; the program stays small
    assert insns[1] == (0x15, 1, 0, target.audit)  # architecture check first
    denied = {
        insns[i][3]
        for i in range(len(insns) - 1)
        if insns[i][:3] == (0x15, 0, 1)
        and insns[i + 1] == (0x06, 0, 0, 0x00050000 | errno.EPERM)
    }
    expected = {
        target.numbers[name] for name in _seccomp.DENIED if name in target.numbers
    }
    assert denied == expected
    assert insns[-1] == (0x06, 0, 0, 0x7FFF0000)  # default: allow


def test_landlock_constants_match_kernel_header() -> None:
    if not LANDLOCK_HEADER.exists():
        cannot_run(f"{NEEDS_HEADERS}: {LANDLOCK_HEADER}")
    text = LANDLOCK_HEADER.read_text()
    found = dict(
        re.findall(r"#define LANDLOCK_ACCESS_FS_(\w+)\s+\(1ULL << (\d+)\)", text)
    )
    assert found, "no LANDLOCK_ACCESS_FS_* in the header"
    for name, bit in found.items():
        assert getattr(_confine, f"FS_{name}") == 1 << int(bit), name
    assert "LANDLOCK_CREATE_RULESET_VERSION\t\t\t(1U << 0)" in text or re.search(
        r"LANDLOCK_CREATE_RULESET_VERSION\s+\(1U << 0\)", text
    )


def test_handled_rights_grow_with_abi() -> None:
    assert _confine.handled_fs(1) == (1 << 13) - 1
    assert _confine.handled_fs(2) == (1 << 14) - 1
    assert _confine.handled_fs(4) == (1 << 15) - 1
    assert _confine.handled_fs(7) == (1 << 16) - 1


# ------------------------------------------------------------ behaviour

SECCOMP_PROBE = r"""
import ctypes, json, os, socket, sys, threading
sys.path.insert(0, sys.argv[1])
import _confine, _seccomp
arch = _seccomp.native_arch()
if sys.argv[2] == "filter":
    _confine.prctl(_confine.PR_SET_NO_NEW_PRIVS, 1)
    _seccomp.install_filter(_seccomp.build_filter(arch))
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = 0
    except OSError as exc:
        out[name] = exc.errno
def raw(name, *args):
    args = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    result = libc.syscall(ctypes.c_long(arch.numbers[name]), *args)
    return 0 if result >= 0 else ctypes.get_errno()
attempt("socket_inet", lambda: socket.socket(socket.AF_INET).close())
attempt("socket_inet6_udp", lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
attempt("socket_unix", lambda: socket.socket(socket.AF_UNIX).close())
attempt("socketpair_unix", lambda: [s.close() for s in socket.socketpair()])
attempt("socketpair_inet", lambda: socket.socketpair(socket.AF_INET))
out["io_uring_setup"] = raw("io_uring_setup", 1, None)
victim = os.fork()  # a sleeping child: attaching to it stops nothing else
if victim == 0:
    os.execv("/bin/sleep", ["sleep", "60"])
out["ptrace_attach"] = raw("ptrace", 16, victim, 0, 0)
out["process_vm_readv"] = raw("process_vm_readv", victim, None, 0, None, 0, 0)
os.kill(victim, 9)
os.waitpid(victim, 0)
out["unshare_user"] = raw("unshare", 0x10000000)
out["mount"] = raw("mount", None, None, None, 0, None)
out["setsid"] = raw("setsid")
out["clone3"] = raw("clone3", None, 0)
zero = ctypes.c_long(0)
pid = libc.syscall(ctypes.c_long(arch.numbers["clone"]),
                   ctypes.c_long(0x10000000 | 17), zero, zero, zero, zero)
if pid == 0:
    os._exit(0)
out["clone_newuser"] = ctypes.get_errno() if pid < 0 else 0
if pid > 0:
    os.waitpid(pid, 0)
child = os.fork()
if child == 0:
    os._exit(7)
out["fork"] = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) - 7
thread = threading.Thread(target=lambda: out.__setitem__("thread", 0))
thread.start(); thread.join()
print(json.dumps(out))
"""


def _seccomp_probe(mode: str) -> dict[str, int]:
    if _seccomp.native_arch() is None:
        cannot_run("no seccomp table for this architecture")
    proc = subprocess.run(
        [sys.executable, "-S", "-c", SECCOMP_PROBE, str(PACKAGE_DIR), mode],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_seccomp_filter_denies_escapes_and_keeps_the_rest() -> None:
    eperm, eafnosupport, enosys = errno.EPERM, errno.EAFNOSUPPORT, errno.ENOSYS
    filtered = _seccomp_probe("filter")
    assert filtered == {
        "socket_inet": eperm,
        "socket_inet6_udp": eperm,
        "socket_unix": eperm,
        "socketpair_unix": 0,
        "socketpair_inet": eafnosupport,
        "io_uring_setup": eperm,
        "ptrace_attach": eperm,
        "process_vm_readv": eperm,
        "unshare_user": eperm,
        "mount": eperm,
        "setsid": eperm,
        "clone3": enosys,
        "clone_newuser": eperm,
        "fork": 0,
        "thread": 0,
    }


def test_seccomp_probe_control_without_filter() -> None:
    # The same attempts unfiltered: the filter, not the machine, refused them.
    control = _seccomp_probe("none")
    assert control["socket_inet"] == 0
    assert control["socket_unix"] == 0
    assert control["socketpair_inet"] == errno.EOPNOTSUPP  # the kernel's own answer
    assert control["clone3"] != errno.ENOSYS  # EFAULT on the NULL argument
    assert control["setsid"] in (0, errno.EPERM)
    assert (control["fork"], control["thread"]) == (0, 0)


X32_PROBE = r"""
import ctypes, sys
sys.path.insert(0, sys.argv[1])
import _confine, _seccomp
if sys.argv[2] == "filter":
    _confine.prctl(_confine.PR_SET_NO_NEW_PRIVS, 1)
    _seccomp.install_filter(_seccomp.build_filter(_seccomp.native_arch()))
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall(ctypes.c_long(0x40000000 | 39))  # x32 getpid
print("survived")
"""


def test_seccomp_kills_x32_syscalls() -> None:
    if _seccomp.native_arch() is None or _seccomp.native_arch().name != "x86_64":
        cannot_run("x32 numbers exist on x86_64 only")
    base = [sys.executable, "-S", "-c", X32_PROBE, str(PACKAGE_DIR)]
    control = subprocess.run([*base, "none"], capture_output=True, text=True)
    assert control.stdout == "survived\n", control.stderr
    filtered = subprocess.run([*base, "filter"], capture_output=True, text=True)
    assert filtered.returncode == -signal.SIGSYS
    assert filtered.stdout == ""


LANDLOCK_PROBE = r"""
import json, os, socket, sys
sys.path.insert(0, sys.argv[1])
import _confine
cfg = json.loads(sys.argv[2])
if cfg["confine"]:
    _confine.prctl(_confine.PR_SET_NO_NEW_PRIVS, 1)
    _confine.apply_landlock(_confine.landlock_abi(), cfg["read"], [cfg["work"]],
                            ["/dev/null"])
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = 0
    except OSError as exc:
        out[name] = exc.errno
attempt("read_system", lambda: open("/etc/passwd").read())
attempt("read_outside", lambda: open(cfg["outside_file"]).read())
attempt("list_outside", lambda: os.listdir(cfg["outside_dir"]))
attempt("write_work", lambda: open(os.path.join(cfg["work"], "f"), "w").write("x"))
attempt("write_outside", lambda: open(cfg["outside_dir"] + "/new", "w").write("x"))
attempt("truncate_devnull", lambda: open("/dev/null", "w").write("x"))
attempt("signal_parent", lambda: os.kill(os.getppid(), 0))
def tcp():
    with socket.create_connection(("127.0.0.1", cfg["port"]), timeout=2):
        pass
attempt("tcp_connect", tcp)
def abstract():
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(cfg["abstract"].encode())
attempt("abstract_connect", abstract)
print(json.dumps(out))
"""


def _landlock_probe(tmp_path: Path, confine: bool) -> dict[str, int]:
    problems = _select.landlock_kernel_problems()
    if problems:
        cannot_run(f"kernel lacks what the landlock backend needs: {problems}")
    work = tmp_path / "work"
    outside = tmp_path / "outside"
    work.mkdir(exist_ok=True)
    outside.mkdir(exist_ok=True)
    (outside / "secret").write_text("s")
    read = list(_launch.SYSTEM_DIRS) + list(_launch.interpreter_roots(sys.executable))
    abstract = f"\0rmflow-test-{os.getpid()}-{int(confine)}"
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.socket(socket.AF_UNIX) as unix_server,
    ):
        unix_server.bind(abstract.encode())
        unix_server.listen(1)
        cfg = {
            "confine": confine,
            "read": read,
            "work": str(work),
            "outside_dir": str(outside),
            "outside_file": str(outside / "secret"),
            "port": server.getsockname()[1],
            "abstract": abstract,
        }
        proc = subprocess.run(
            [sys.executable, "-S", "-c", LANDLOCK_PROBE, str(PACKAGE_DIR)]
            + [json.dumps(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_landlock_domain_confines(tmp_path: Path) -> None:
    eacces, eperm = errno.EACCES, errno.EPERM
    assert _landlock_probe(tmp_path, confine=True) == {
        "read_system": 0,
        "read_outside": eacces,
        "list_outside": eacces,
        "write_work": 0,
        "write_outside": eacces,
        "truncate_devnull": 0,
        "signal_parent": eperm,
        "tcp_connect": eacces,
        "abstract_connect": eperm,
    }


def test_landlock_probe_control_without_domain(tmp_path: Path) -> None:
    assert set(_landlock_probe(tmp_path, confine=False).values()) == {0}
