"""Backend choice: explicit > set_backend() > RMFLOW_SANDBOX > auto, probed for real."""

from __future__ import annotations

import functools
import logging
import os
import platform
import shutil
import threading

from pipelines.common.sandbox import _confine, _launch, _run, _seccomp
from pipelines.common.sandbox._types import (
    AUTO,
    BACKEND_ENV,
    BACKENDS,
    BWRAP,
    LANDLOCK,
    RLIMIT,
    SandboxLimits,
    SandboxUnavailable,
)

logger = logging.getLogger(__name__)

_PROBE_LIMITS = SandboxLimits(wall_s=30, cpu_s=10)
_PROBE_CODE = "print('sandbox-ok')\n"
_USERNS_SYSCTLS = (
    "/proc/sys/kernel/unprivileged_userns_clone",
    "/proc/sys/user/max_user_namespaces",
    "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
)
BWRAP_HELP = (
    "bubblewrap needs the `bwrap` executable (Debian/Ubuntu: `apt-get install "
    "bubblewrap`; Fedora/RHEL: `dnf install bubblewrap`) and unprivileged user "
    "namespaces: `sysctl -w kernel.unprivileged_userns_clone=1` (older Debian "
    "kernels), `sysctl -w user.max_user_namespaces=15000` (RHEL/CentOS 7 ship 0), "
    "`sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` or an AppArmor "
    "profile for bwrap (Ubuntu >= 23.10)"
)
LANDLOCK_HELP = (
    "the landlock backend needs Linux >= 6.12 (Landlock ABI >= "
    f"{_confine.MIN_LANDLOCK_ABI}) built with CONFIG_SECURITY_LANDLOCK=y and "
    "`landlock` in the active LSMs (boot parameter `lsm=landlock,...`), seccomp "
    "filters (CONFIG_SECCOMP_FILTER), no_new_privs and child subreapers, on x86_64 "
    "or aarch64, and no container seccomp profile that blocks the landlock_* "
    "system calls"
)
OPT_IN_HELP = (
    "To run untrusted code with resource limits only (no network, filesystem or "
    "signal isolation), opt in explicitly: `sandbox.backend: rlimit` in the "
    f"workflow config, {BACKEND_ENV}=rlimit in the environment, or "
    "pipelines.common.sandbox.set_backend('rlimit')"
)

_state_lock = threading.Lock()
_chosen: str | None = None
_logged: set[str] = set()


def _normalise(name: str, source: str) -> str:
    value = name.strip().lower()
    if value not in BACKENDS:
        raise ValueError(f"{source}={name!r}; expected one of {', '.join(BACKENDS)}")
    return value


def set_backend(name: str | None) -> None:
    """Choose the backend of every later run in this process.

    Stages call this with the ``sandbox.backend`` config value; it overrides
    ``RMFLOW_SANDBOX``. ``None`` goes back to the environment variable.

    Args:
        name: ``auto``, ``bwrap``, ``landlock``, ``rlimit`` or None.

    Raises:
        ValueError: unknown name.
    """
    global _chosen
    value = None if name is None else _normalise(name, "sandbox backend")
    with _state_lock:
        _chosen = value


def requested(name: str | None = None) -> str:
    """The backend asked for: ``name``, else set_backend(), else the env, else auto.

    Raises:
        ValueError: an unknown name, naming where it came from.
    """
    if name is not None:
        return _normalise(name, "backend")
    with _state_lock:
        chosen = _chosen
    if chosen is not None:
        return chosen
    env = os.environ.get(BACKEND_ENV, "").strip()
    return _normalise(env, BACKEND_ENV) if env else AUTO


def resolve(name: str | None = None) -> str:
    """Return the backend runs use, after probing it; never a silent downgrade.

    Args:
        name: explicit backend, or None (see :func:`requested`).

    Returns:
        ``"bwrap"``, ``"landlock"`` or ``"rlimit"``.

    Raises:
        SandboxUnavailable: the requested backend (or, for ``auto``, every
            isolating backend) does not work here.
        ValueError: unknown backend name.
    """
    want = requested(name)
    if want == RLIMIT:
        _log_once(
            RLIMIT,
            logging.WARNING,
            "sandbox backend 'rlimit' chosen explicitly: resource limits only; "
            "untrusted code can use the network, write wherever its user may, "
            "read that user's files and signal that user's processes",
        )
        return RLIMIT
    if want in (BWRAP, LANDLOCK):
        problems = bwrap_problems() if want == BWRAP else landlock_problems()
        if problems:
            raise SandboxUnavailable(
                f"sandbox backend '{want}' was requested but does not work here:\n"
                + _bullets(problems)
                + "\n"
                + (BWRAP_HELP if want == BWRAP else LANDLOCK_HELP)
                + ".\n"
                + OPT_IN_HELP
                + "."
            )
        return want
    bwrap = bwrap_problems()
    if not bwrap:
        return BWRAP
    landlock = landlock_problems()
    if not landlock:
        _log_once(
            LANDLOCK,
            logging.INFO,
            "sandbox backend 'landlock' (bubblewrap unusable: %s)",
            "; ".join(bwrap),
        )
        return LANDLOCK
    raise SandboxUnavailable(
        "refusing to run untrusted code: no isolating sandbox backend works here.\n"
        f"bwrap:\n{_bullets(bwrap)}\n  {BWRAP_HELP}.\n"
        f"landlock:\n{_bullets(landlock)}\n  {LANDLOCK_HELP}.\n"
        f"{OPT_IN_HELP}."
    )


def _bullets(lines: tuple[str, ...]) -> str:
    return "\n".join(f"  - {line}" for line in lines)


def _log_once(key: str, level: int, msg: str, *args: object) -> None:
    with _state_lock:
        if key in _logged:
            return
        _logged.add(key)
    logger.log(level, msg, *args)


@functools.cache
def bwrap_problems() -> tuple[str, ...]:
    """Why bubblewrap cannot sandbox here (empty when a real trial run works)."""
    if shutil.which("bwrap") is None:
        return ("bubblewrap (bwrap) is not on PATH",)
    probe = _run.run_one(_PROBE_CODE, None, _PROBE_LIMITS, None, BWRAP)
    if probe.status == "ok" and probe.stdout == "sandbox-ok\n":
        return ()
    settings = []
    for path in _USERNS_SYSCTLS:
        try:
            with open(path, encoding="ascii") as handle:
                value = handle.read().strip()
        except OSError:
            continue
        settings.append(f"{path.removeprefix('/proc/sys/').replace('/', '.')}={value}")
    detail = probe.stderr.strip().splitlines()
    return (
        f"a trial run under bwrap failed ({probe.status}): "
        + (detail[-1] if detail else "no message"),
        "user namespace settings here: " + (", ".join(settings) or "none readable"),
    )


def landlock_kernel_problems() -> tuple[str, ...]:
    """Kernel features the landlock backend needs and this machine lacks."""
    problems = []
    arch = _seccomp.native_arch()
    if arch is None:
        problems.append(
            f"no seccomp syscall table for this architecture ({platform.machine()}; "
            "x86_64 and aarch64 are supported)"
        )
    try:
        abi = _confine.landlock_abi()
    except OSError as exc:
        if exc.errno == 95:  # EOPNOTSUPP
            problems.append(
                "Landlock is built into this kernel but not enabled: add `landlock` "
                "to the `lsm=` boot parameter"
            )
        else:
            problems.append(
                f"this kernel has no usable Landlock ({exc.strerror}): it needs "
                "Linux >= 5.13 with CONFIG_SECURITY_LANDLOCK=y"
            )
    else:
        if abi < _confine.MIN_LANDLOCK_ABI:
            problems.append(
                f"Landlock ABI {abi} here; ABI >= {_confine.MIN_LANDLOCK_ABI} "
                "(Linux >= 6.12) is needed to scope signals and abstract UNIX sockets"
            )
    if arch is not None and not _seccomp.seccomp_filter_available(arch):
        problems.append(
            "no seccomp filter support (CONFIG_SECCOMP_FILTER, Linux 4.14+)"
        )
    problems += [f"prctl lacks {what}" for what in _confine.missing_prctl_features()]
    return tuple(problems)


@functools.cache
def landlock_problems() -> tuple[str, ...]:
    """Why the landlock backend cannot sandbox here (empty when a trial run works)."""
    problems = landlock_kernel_problems()
    if problems:
        return problems
    probe = _run.run_one(_PROBE_CODE, None, _PROBE_LIMITS, None, LANDLOCK)
    if probe.status == "ok" and probe.stdout == "sandbox-ok\n":
        return ()
    detail = probe.stderr.strip().splitlines()
    return (
        f"a trial run under Landlock + seccomp failed ({probe.status}): "
        + (detail[0] if detail else "no message"),
    )


def reset_probes() -> None:
    """Forget probe results and the one-time log lines (tests, long-lived hosts)."""
    bwrap_problems.cache_clear()
    landlock_problems.cache_clear()
    _launch.landlock_abi.cache_clear()
    with _state_lock:
        _logged.clear()
