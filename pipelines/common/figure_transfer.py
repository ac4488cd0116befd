"""The transfer report's figure: n-curves per target and a transferability heatmap.

Top row, one panel per target domain: accuracy on the target's test split
against n, the number of target pairs a source RM was fine-tuned on (n = 0:
the source RM zero-shot). One colour per source: the mean over seeds as a
line, each seed a dot; the ground-truth RM (the target's SFT model with a new
head on all N_T pairs) a dashed line; a cross where the mean curve first
reaches it (N_F). The n axis is symmetric-log (linear below the least n, so
n = 0 fits). Bottom: transferability ``1 - N_F / N_T`` per source (row) and
target (column), "not reached" when the curve never gets to the ground truth.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipelines.common.figures import pyplot

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

CMAP = "RdYlGn"
LIMIT = 1.0  # the heatmap's colours span -LIMIT..LIMIT (values beyond: clipped)
NOT_REACHED = "not reached"
NOT_REACHED_GREY = "#bdbdbd"
NO_RUNS = "no runs"


def n_label(n: float) -> str:
    """A tick label for a number of pairs: ``0``, ``16``, ``2500``, ``60k``."""
    if n < 10000:
        return f"{n:g}"
    return f"{n / 1000:g}k"


def _rows(table: pd.DataFrame, kind: str, **match: str) -> pd.DataFrame:
    rows = table[table["kind"] == kind]
    for column, value in match.items():
        rows = rows[rows[column] == value]
    return rows


def _curve(ax: Axes, table: pd.DataFrame, target: str, source: str, color) -> None:
    """One source's mean line (zero-shot first), seed dots and N_F cross."""
    zero = _rows(table, "zero_shot", target=target, source=source)
    mean = _rows(table, "mean", target=target, source=source)
    curve = pd.concat([f for f in (zero, mean) if not f.empty]).sort_values("n")
    ax.plot(
        curve["n"],
        curve["accuracy"],
        color=color,
        lw=2,
        marker="o",
        ms=4,
        label=f"from {source}",
    )
    if not zero.empty:
        ax.plot(0, zero["accuracy"].iloc[0], color=color, marker="s", ms=7, mfc="white")
    seeds = _rows(table, "run", target=target, source=source)
    ax.scatter(seeds["n"], seeds["accuracy"], color=color, s=12, alpha=0.55, lw=0)
    summary = _rows(table, "summary", target=target, source=source)
    if not summary.empty and bool(summary["reached"].iloc[0]):
        row = summary.iloc[0]
        ax.plot(
            row["n_f"],
            row["gt_accuracy"],
            color=color,
            marker="X",
            ms=10,
            mec="black",
            mew=0.8,
            zorder=5,
        )


def _curve_panel(ax: Axes, table: pd.DataFrame, target: str, colors: dict) -> None:
    """Accuracy against n on one target, every source, the ground truth dashed."""
    gt = _rows(table, "ground_truth", target=target).iloc[0]
    for source, color in colors.items():
        if not _rows(table, "summary", target=target, source=source).empty:
            _curve(ax, table, target, source, color)
    ax.axhline(gt["accuracy"], color="black", ls="--", lw=1.2)
    accs = [*table.loc[table["target"] == target, "accuracy"].dropna()]
    pad = 0.06 * max(max(accs) - min(accs), 0.02)
    ax.set_ylim(min(accs) - pad, max(accs) + pad)  # the dashed line off the edge
    on_target = table[(table["target"] == target) & (table["kind"] != "ground_truth")]
    ns = sorted(set(on_target["n"].dropna()))
    positive = [n for n in ns if n > 0] or [1]
    ax.set_xscale("symlog", linthresh=min(positive), linscale=0.6)
    ax.set_xticks(ns)
    ax.set_xticklabels(
        [n_label(n) for n in ns], fontsize=7.5, rotation=45 * (len(ns) > 6)
    )
    ax.set_xlim(-0.15 * min(positive), max(ns) * 1.6 if ns else 1)
    n_test = int(gt["n_test_pairs"])
    ax.set_title(
        f"target: {target} ({n_test} test pairs)\nground truth {gt['accuracy']:.3f}"
        f" (new head on N_T = {n_label(gt['n'])} pairs)",
        fontsize=9.5,
    )
    ax.set_xlabel("n: target pairs fine-tuned on (0 = zero-shot)", fontsize=8.5)
    ax.grid(True, lw=0.4, alpha=0.5)


def _best(table: pd.DataFrame, summary: pd.Series) -> float:
    """The highest point of a (source, target)'s curve: zero-shot or a mean."""
    mine = table[
        (table["source"] == summary["source"])
        & (table["target"] == summary["target"])
        & table["kind"].isin(["zero_shot", "mean"])
    ]
    return float(mine["accuracy"].max())


def _heatmap(ax: Axes, table: pd.DataFrame, sources: list[str], targets: list[str]):
    """Transferability per source (row) and target (column), values in the cells."""
    values = np.full((len(sources), len(targets)), np.nan)
    text = np.full(values.shape, NO_RUNS, dtype=object)
    for _, row in _rows(table, "summary").iterrows():
        i, j = sources.index(row["source"]), targets.index(row["target"])
        if bool(row["reached"]):
            values[i, j] = row["transferability"]
            text[i, j] = (
                f"{row['transferability']:.2f}\nN_F = {n_label(round(row['n_f']))}"
            )
        else:
            text[i, j] = f"{NOT_REACHED}\n(best mean {_best(table, row):.3f}"
            text[i, j] += f" < {row['gt_accuracy']:.3f})"
    plt = pyplot()
    cmap = plt.get_cmap(CMAP).with_extremes(bad="white")  # white: no runs
    image = ax.imshow(
        np.ma.masked_invalid(values), cmap=cmap, vmin=-LIMIT, vmax=LIMIT, aspect="auto"
    )
    for (i, j), label in np.ndenumerate(text):
        if label.startswith(NOT_REACHED):
            grey = plt.Rectangle((j - 0.5, i - 0.5), 1, 1, color=NOT_REACHED_GREY)
            ax.add_patch(grey)
        color = "grey" if label == NO_RUNS else "black"
        ax.text(j, i, label, ha="center", va="center", fontsize=9, color=color)
    ax.set_xticks(range(len(targets)), [f"to {t}" for t in targets], fontsize=9)
    ax.set_yticks(range(len(sources)), [f"from {s}" for s in sources], fontsize=9)
    ax.set_title(
        "transferability 1 - N_F / N_T (1: zero-shot matches the ground"
        " truth; < 0: needs more than N_T)",
        fontsize=9,
    )
    return image


def transfer_figure(table: pd.DataFrame) -> Figure:
    """n-curves per target (top) and the transferability heatmap (bottom).

    Args:
        table: the table of :func:`pipelines.report_transfer.build_table`.

    Returns:
        The figure (sized for the report, see :mod:`pipelines.common.figures`).
    """
    plt = pyplot()
    targets = sorted(_rows(table, "ground_truth")["target"].unique())
    sources = sorted(_rows(table, "summary")["source"].unique())
    palette = plt.get_cmap("tab10")
    colors = {s: palette(k % 10) for k, s in enumerate(sources)}
    fig = plt.figure(figsize=(9.2, 7.0))
    grid = fig.add_gridspec(
        3, len(targets), height_ratios=(1.35, 0.26, 0.9), hspace=0.4, top=0.84
    )
    axes = [fig.add_subplot(grid[0, k]) for k in range(len(targets))]
    for ax, target in zip(axes, targets, strict=True):
        _curve_panel(ax, table, target, colors)
    axes[0].set_ylabel("accuracy on the target's test pairs", fontsize=8.5)
    heat = fig.add_subplot(grid[2, :])
    image = _heatmap(heat, table, sources, targets)
    fig.colorbar(image, ax=heat, fraction=0.04, pad=0.02)
    _legend(fig.add_subplot(grid[1, :]), colors)
    fig.suptitle(
        "Reward transfer: a source-domain RM fine-tuned on n target pairs, against\n"
        "the ground-truth RM trained on the target's own data (ALGORITHMS.md 6.5)",
        fontsize=10.5,
    )
    return fig


def _legend(ax: Axes, colors: dict) -> None:
    """Sources by colour, then what the marks mean, in ``ax`` (its frame hidden)."""
    handles = [
        ax.plot([], [], color=c, lw=2, marker="o", ms=4)[0] for c in colors.values()
    ]
    labels = [f"fine-tuned from {s} (mean over seeds)" for s in colors]
    extra = (
        (dict(color="grey", marker="o", ls="", ms=4, alpha=0.6), "one seed"),
        (dict(color="grey", marker="s", ls="", ms=7, mfc="white"), "n = 0: zero-shot"),
        (dict(color="black", ls="--", lw=1.2), "ground truth"),
        (
            dict(color="grey", marker="X", ls="", ms=9, mec="black"),
            "N_F: mean first reaches it",
        ),
    )
    for style, label in extra:
        handles.append(ax.plot([], [], **style)[0])
        labels.append(label)
    ax.axis("off")
    ax.legend(handles, labels, fontsize=8, loc="center", ncol=3, frameon=False)
