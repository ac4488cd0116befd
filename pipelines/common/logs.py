"""Logging setup for the CLIs: one format, versions and config logged first.

Where a record goes depends on what stderr is. A terminal or a pipe is a
*screen*: it gets the run's log lines but no error tracebacks, so a user error
ends with one clear line. A regular file (Snakemake's ``> {log} 2>&1``, a Slurm
job file) is a *log*: it gets everything, tracebacks included. ``--log-file``
adds a log file beside whatever stderr is.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import stat
import sys
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import IO

LIBRARIES = (
    "torch",
    "transformers",
    "tokenizers",
    "accelerate",
    "peft",
    "datasets",
    "numpy",
)
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# seconds between two progress lines of a long job (pipelines.common.progress):
# often enough for ``tail -f``, rare enough that a day-long job logs ~3000 lines
PROGRESS_EVERY_S = 30.0

# ``extra={ROUTE: ...}`` on a record limits where it goes:
ROUTE = "rmflow_route"
LOGS_ONLY = "logs"  # log files and a stderr that is a regular file, not a screen
FILES_ONLY = "files"  # log files only, never stderr (Python prints it there itself)


def stream_is_log(stream: IO[str]) -> bool:
    """True when ``stream`` writes to a regular file (a log), not a screen/pipe."""
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):  # no real descriptor
        return False


class _StderrRoute(logging.Filter):
    """Keep routed records (error tracebacks) off a stderr that is a screen."""

    def __init__(self, stderr_is_log: bool) -> None:
        super().__init__()
        self.stderr_is_log = stderr_is_log

    def filter(self, record: logging.LogRecord) -> bool:
        route = getattr(record, ROUTE, None)
        if route == FILES_ONLY:
            return False
        return route != LOGS_ONLY or self.stderr_is_log


def setup_logging(level: str = "INFO", log_file: Path | str | None = None) -> None:
    """Configure the root logger: stderr (rules redirect it to a log), a file.

    Args:
        level: the root level.
        log_file: also append every record, error tracebacks included, here.
    """
    screen = logging.StreamHandler(sys.stderr)
    screen.addFilter(_StderrRoute(stream_is_log(sys.stderr)))
    handlers: list[logging.Handler] = [screen]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(level=level, format=FORMAT, handlers=handlers, force=True)


def add_logging_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--log-file`` (read by :func:`setup_logging`) to a CLI."""
    parser.add_argument(
        "--log-file",
        type=Path,
        default=None,
        help="also append the log, with the traceback of any error, to this file",
    )


def add_progress_arg(parser: argparse.ArgumentParser) -> None:
    """Add ``--progress-every SECONDS``: the cadence of a long loop's progress line."""
    parser.add_argument(
        "--progress-every",
        type=float,
        default=PROGRESS_EVERY_S,
        metavar="SECONDS",
        help="log a progress line (done, rate, ETA) every this many seconds"
        f" (default: {PROGRESS_EVERY_S:g})",
    )


def log_run_header(logger: logging.Logger, config: object, **extra: object) -> None:
    """Log python version, platform, the run's config and extra fields.

    Args:
        logger: where to log.
        config: a dataclass instance (or any JSON-able object).
        **extra: further key/values to record (seed, paths...).
    """
    cfg = asdict(config) if is_dataclass(config) else config
    logger.info("python %s on %s", platform.python_version(), platform.platform())
    logger.info("config %s", json.dumps(cfg, default=str, sort_keys=True))
    for key, value in extra.items():
        logger.info("%s = %s", key, value)


def library_versions(packages: Sequence[str] = LIBRARIES) -> dict[str, str]:
    """Versions of python and ``packages`` (``"absent"`` when not installed).

    Read from package metadata, so nothing heavy is imported.
    """
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out
