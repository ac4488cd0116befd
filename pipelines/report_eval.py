r"""Collect eval JSONs into one table and plot accuracy per benchmark and seed.

    python -m pipelines.report_eval \
        --evals results/eval/rm-math-seed0/math-test.json ... \
        --out-csv results/report/eval.csv --out-png results/report/eval.png

The CSV has one row per model, benchmark and result: ``level`` is ``overall``
(``subset`` = ``ALL`` for the accuracy over all pairs, or the name of an
overall variant such as ``leaderboard_2024``), ``features`` (``subset`` =
``clean`` for the pairs without an injected spurious feature, ``spurious`` for
the others; only for benchmarks whose records say which features they carry),
``section`` (RewardBench sections, Auto-J categories, domains) or ``subset``.
Model ids of the form ``rm-{trainset}-seed{seed}`` fill the ``trainset`` and
``seed`` columns; others leave them empty. The plot shows, per benchmark (its
pair count under the name), the accuracy over all pairs and, where known, over
the clean and the spurious pairs (one panel each): one group per trainset, a
bar at the mean over seeds and one marker per seed beside it (seeds with equal
values stay visible), chance as a dashed line, the legend outside the panels.
The clean panel is what the RM learned about the task; a scorer that only reads
the injected features is at chance or below there. The figure is sized for the
report (:mod:`pipelines.common.figures`).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipelines.common.cli import handle_user_errors
from pipelines.common.figures import pyplot, save_png
from pipelines.common.io import atomic_open
from pipelines.common.logs import setup_logging

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

COLUMNS = (
    "model_id",
    "trainset",
    "seed",
    "benchmark",
    "level",
    "subset",
    "n",
    "accuracy",
)
ALL = "ALL"
LEVELS = ("overall", "features", "section", "subset")
FEATURE_GROUPS = ("clean", "spurious")
PANELS = (
    ("overall", ALL, "All pairs"),
    (
        "features",
        "clean",
        "Clean pairs (no injected feature): what the RM learned about the task",
    ),
    (
        "features",
        "spurious",
        "Pairs whose chosen reply carries an injected spurious feature",
    ),
)
MODEL_ID = re.compile(r"^rm-(?P<trainset>.+)-seed(?P<seed>\d+)$")
MARKERS = ("o", "s", "^", "D", "v", "P", "*", "<", ">", "h")
NO_SEED = "x"


def parse_model_id(model_id: str) -> tuple[str | None, int | None]:
    """``rm-{trainset}-seed{seed}`` -> ``(trainset, seed)``; else ``(None, None)``."""
    match = MODEL_ID.match(model_id)
    if match is None:
        return None, None
    return match["trainset"], int(match["seed"])


def eval_rows(result: dict) -> list[dict]:
    """The table rows of one eval JSON (see the module docstring)."""
    trainset, seed = parse_model_id(result["model_id"])
    base = {
        "model_id": result["model_id"],
        "trainset": trainset,
        "seed": seed,
        "benchmark": result["benchmark"]["name"],
    }
    n_pairs = result["n_pairs"]
    found = [("overall", ALL, n_pairs, result["accuracy"])]
    for name, value in result.get("overall", {}).items():
        if name != "pooled":
            found.append(("overall", name, n_pairs, value))
    for name, group in (result.get("spurious_split") or {}).items():
        found.append(("features", name, group["n"], group["accuracy"]))
    for name, sec in result.get("sections", {}).items():
        found.append(("section", name, sec["n"], sec["accuracy"]))
    for name, sub in result["subsets"].items():
        found.append(("subset", name, sub["n"], sub["accuracy"]))
    rows = []
    for level, subset, n, acc in found:
        rows.append({**base, "level": level, "subset": subset, "n": n, "accuracy": acc})
    return rows


def _n_label(cells: pd.DataFrame, bench: str) -> str:
    """``bench`` and its pair count in this panel (a range if models differ)."""
    ns = cells.loc[cells["benchmark"] == bench, "n"]
    if ns.empty:
        return bench
    lo, hi = int(ns.min()), int(ns.max())
    return f"{bench}\n(n={lo})" if lo == hi else f"{bench}\n(n={lo}-{hi})"


def _panel(ax, cells: pd.DataFrame, groups, benchmarks, marker_of, colors) -> None:
    """One panel: bars at the mean over seeds, one marker per seed beside it."""
    width = 0.8 / max(len(groups), 1)
    for g_idx, group in enumerate(groups):
        color = colors(g_idx % 10)
        for b_idx, bench in enumerate(benchmarks):
            cell = cells[(cells["group"] == group) & (cells["benchmark"] == bench)]
            cell = cell.dropna(subset=["accuracy"])
            if cell.empty:
                continue
            x = b_idx - 0.4 + width * (g_idx + 0.5)
            ax.bar(
                x, cell["accuracy"].mean(), width=width * 0.9, color=color, alpha=0.35
            )
            cell = cell.sort_values(["seed", "model_id"])
            # spread the seeds' markers across the bar so equal values stay visible
            offsets = (
                np.linspace(-0.3, 0.3, len(cell)) * width if len(cell) > 1 else [0]
            )
            for dx, (_, row) in zip(offsets, cell.iterrows(), strict=True):
                seed = row["seed"]
                marker = NO_SEED if pd.isna(seed) else marker_of[int(seed)]
                ax.plot(
                    x + dx,
                    row["accuracy"],
                    marker=marker,
                    color=color,
                    mec="black",
                    mew=0.6,
                    ls="none",
                    ms=6,
                )
    ax.axhline(0.5, color="grey", lw=0.9, ls="--")
    ax.set_xticks(range(len(benchmarks)))
    ax.set_xticklabels([_n_label(cells, b) for b in benchmarks], fontsize=8.5)
    ax.set_xlim(-0.5, len(benchmarks) - 0.5)
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("pairwise accuracy\n(fraction of pairs)", fontsize=8.5)
    ax.grid(True, axis="y", lw=0.4, alpha=0.5)


def _legend(ax, groups, seeds, marker_of, colors, no_seed: bool) -> None:
    """Training sets (bar colours), seeds (marker shapes) and chance, outside."""
    plt = pyplot()
    handles, labels = [], []
    for g_idx, group in enumerate(groups):
        handles.append(plt.Rectangle((0, 0), 1, 1, color=colors(g_idx % 10), alpha=0.5))
        labels.append(f"{group} (bar: mean over seeds)")
    for seed in seeds:
        handles.append(
            plt.Line2D(
                [], [], marker=marker_of[seed], color="white", mec="black", ls="none"
            )
        )
        labels.append(f"seed {seed}")
    if no_seed:
        handles.append(plt.Line2D([], [], marker=NO_SEED, color="black", ls="none"))
        labels.append("no seed")
    handles.append(plt.Line2D([], [], color="grey", lw=0.9, ls="--"))
    labels.append("chance (0.5)")
    ax.legend(
        handles,
        labels,
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        title="RM training set / seed",
        title_fontsize=8,
    )


def eval_figure(table: pd.DataFrame) -> Figure:
    """One panel per pair group (all, clean, spurious) with grouped bars.

    Args:
        table: the table of :func:`report_eval`.

    Returns:
        The figure (sized for the report, see :mod:`pipelines.common.figures`).
    """
    plt = pyplot()

    table = table.copy()
    table["group"] = table["trainset"].fillna(table["model_id"])
    panels = []
    for level, subset, title in PANELS:
        cells = table[(table["level"] == level) & (table["subset"] == subset)]
        if not cells.empty:
            panels.append((cells, title))
    top = panels[0][0]
    benchmarks = sorted(top["benchmark"].unique())
    groups = sorted(top["group"].unique())
    seeds = sorted(int(s) for s in top["seed"].dropna().unique())
    marker_of = {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(seeds)}
    colors = plt.get_cmap("tab10")
    # within figures.MAX_PX at its DPI with the legend beside the top panel
    span = len(benchmarks) * max(1.0, len(groups) / 2)
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(min(3.5 + 1.1 * span, 7.6), 0.8 + 1.9 * len(panels)),
        squeeze=False,
    )
    for ax, (cells, title) in zip(axes[:, 0], panels, strict=True):
        _panel(ax, cells, groups, benchmarks, marker_of, colors)
        ax.set_title(title, fontsize=9.5)
    axes[-1, 0].set_xlabel("benchmark (n = pairs in the panel)")
    _legend(axes[0, 0], groups, seeds, marker_of, colors, top["seed"].isna().any())
    fig.suptitle(
        "Held-out pairwise accuracy of the reward models, per benchmark"
        f" ({len(seeds)} seed{'s' if len(seeds) != 1 else ''}: one marker each)",
        fontsize=11,
    )
    fig.tight_layout()
    return fig


def report_eval(evals: Sequence[Path], out_csv: Path, out_png: Path) -> pd.DataFrame:
    """Tabulate eval JSONs and plot their overall accuracies.

    Args:
        evals: eval JSON files written by :func:`pipelines.eval_rm.eval_rm`.
        out_csv: the table to write (atomically).
        out_png: the plot to write (atomically).

    Returns:
        The table (columns :data:`COLUMNS`), sorted by model, benchmark, level
        and subset.

    Raises:
        ValueError: when ``evals`` is empty or two files share a model id and
            benchmark name.
    """
    if not evals:
        raise ValueError("no eval files given")
    rows: list[dict] = []
    seen: dict[tuple[str, str], Path] = {}
    for path in evals:
        with open(path, encoding="utf-8") as fh:
            result = json.load(fh)
        key = (result["model_id"], result["benchmark"]["name"])
        if key in seen:
            raise ValueError(f"{path} and {seen[key]} both hold {key}")
        seen[key] = Path(path)
        rows.extend(eval_rows(result))
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    table["seed"] = table["seed"].astype("Int64")
    table["n"] = table["n"].astype("int64")
    table["accuracy"] = table["accuracy"].astype("float64")
    table["level"] = pd.Categorical(table["level"], categories=list(LEVELS))
    table = table.sort_values(["model_id", "benchmark", "level", "subset"])
    table["level"] = table["level"].astype(str)
    table = table.reset_index(drop=True)
    with atomic_open(out_csv) as fh:
        table.to_csv(fh, index=False, float_format="%.6f")
    save_png(eval_figure(table), Path(out_png))
    logger.info(
        "%d eval files -> %d rows in %s and %s",
        len(evals),
        len(table),
        out_csv,
        out_png,
    )
    return table


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`report_eval`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.report_eval", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--evals", nargs="+", type=Path, required=True, help="eval JSON files"
    )
    parser.add_argument("--out-csv", type=Path, required=True, help="CSV to write")
    parser.add_argument("--out-png", type=Path, required=True, help="PNG to write")
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = make_parser().parse_args(argv)
    setup_logging()
    report_eval(args.evals, args.out_csv, args.out_png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
