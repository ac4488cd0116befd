"""reStructuredText pieces of the report's pages (plain text in, rst out)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from pipelines.common.provenance import NOT_SET


def fmt(value: float | None, digits: int = 3) -> str:
    """A number as the page shows it (``—`` for missing)."""
    if value is None or not np.isfinite(value):
        return NOT_SET
    return f"{value:.{digits}f}"


def fmt_spread(stats: Mapping[str, float]) -> str:
    """``mean ± SD`` (just the value when one seed)."""
    if stats["k"] == 0:
        return NOT_SET
    if stats["k"] == 1:
        return fmt(stats["value"])
    return f"{fmt(stats['value'])} ± {fmt(stats['sd'])}"


def list_table(title: str, header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """An rst ``list-table`` (cells are plain text)."""
    lines = [f".. list-table:: {title}", "   :header-rows: 1", ""]
    for row in [header, *rows]:
        cells = [str(c).replace("\n", " ") or NOT_SET for c in row]
        lines.append(f"   * - {cells[0]}")
        lines.extend(f"     - {c}" for c in cells[1:])
    return "\n".join(lines) + "\n"


def section(title: str, body: Sequence[str]) -> str:
    """An rst section (``-`` underline) with blank-line separated blocks."""
    return "\n".join([title, "-" * len(title), "", "\n\n".join(body), ""])


def lit(text: object) -> str:
    """``text`` as an rst inline literal, so ids and paths are never markup."""
    return f"``{text}``"


def join(values: Iterable) -> str:
    """Values joined by commas (floats as ``%g``)."""
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def as_int(value: float) -> str:
    """An integer cell (``—`` for missing)."""
    return NOT_SET if pd.isna(value) else str(int(value))


def pick(rows: Sequence[dict], **match: str) -> dict | None:
    """The first headline row whose fields equal ``match``; None if none."""
    for row in rows:
        if all(row[k] == v for k, v in match.items()):
            return row
    return None


def as_stats(row: dict | None) -> dict:
    """A headline row as the ``value``/``sd``/``k`` of :func:`fmt_spread`."""
    if row is None:
        return {"k": 0}
    return {"value": row["value"], "sd": row["sd"], "k": row["n_seeds"]}
