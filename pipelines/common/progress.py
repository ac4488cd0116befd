"""Progress lines with rate and ETA for long jobs (training, generation, scoring).

A job's log is what a user tails (``tail -f logs/train_rm/general/seed0.log``),
so a long loop logs one line at a steady cadence::

    train_rm: 120/400 steps (30.0%), 3.41 steps/s, elapsed 35s, ETA 1m22s

and a last line when it is done. Torch-free; the clock is injectable for tests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


def format_seconds(seconds: float) -> str:
    """``75.2`` -> ``1m15s``; ``3725`` -> ``1h02m05s``; ``4.2`` -> ``4s``."""
    total = max(0, int(round(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Progress:
    """Counts work done and logs progress every ``every_s`` seconds.

    Args:
        what: the loop's name at the start of each line (e.g. ``"train_rm"``).
        total: units expected in all (None when unknown: no percentage or ETA).
        unit: the unit's plural name (``"steps"``, ``"sequences"``).
        logger: where lines go; this module's logger by default.
        every_s: seconds between two lines (the first comes after ``every_s``).
        done: units already done (a resumed run), not counted in the rate.
        clock: monotonic clock in seconds (tests pass a fake one).
    """

    def __init__(
        self,
        what: str,
        total: int | None,
        *,
        unit: str = "items",
        logger: logging.Logger | None = None,
        every_s: float = 30.0,
        done: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.total = total
        self.unit = unit
        self.logger = logger or logging.getLogger(__name__)
        self.every_s = every_s
        self.clock = clock
        self.start_done = done
        self.done = done
        self.started = clock()
        self.last_line = self.started

    def rate(self) -> float:
        """Units per second since the start (units of a resumed run excluded)."""
        elapsed = self.clock() - self.started
        return (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """The current progress line."""
        elapsed = self.clock() - self.started
        rate = self.rate()
        parts = [f"{self.what}: {self.done}"]
        if self.total is not None:
            share = 100.0 * self.done / self.total if self.total else 100.0
            parts[0] += f"/{self.total} {self.unit} ({share:.1f}%)"
        else:
            parts[0] += f" {self.unit}"
        parts.append(f"{rate:.3g} {self.unit}/s")
        parts.append(f"elapsed {format_seconds(elapsed)}")
        if self.total is not None and self.done < self.total:
            eta = (self.total - self.done) / rate if rate > 0 else None
            parts.append("ETA " + (format_seconds(eta) if eta is not None else "?"))
        return ", ".join(parts)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units; log a line when ``every_s`` has passed."""
        self.done += n
        now = self.clock()
        if now - self.last_line >= self.every_s:
            self.last_line = now
            self.logger.info("%s", self.line())

    def finish(self) -> None:
        """Log the final line (always)."""
        self.logger.info("%s (done)", self.line())
