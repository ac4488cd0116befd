"""The PPO report's figure: gold and proxy against KL and against steps.

As tlc4418/llm_optimization (Coste et al. 2024) plots its PPO runs: the gold
and proxy score of the policy's held-out replies against KL(policy ||
reference) and against PPO steps. One colour per objective; each seed a thin
line, the mean over seeds a thick one; on the gold-vs-KL panel the mean
curve's fit of Gao et al.'s RL form ``d (alpha - beta log d)`` is dashed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipelines.common.figures import pyplot
from pipelines.common.gao_fit import GaoRLFit

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

VERIFIER = "verifier"
MEAN = "mean"
THIN, THICK = 0.8, 2.4
KL_LABEL = "KL(policy || reference)\n(nats per reply)"
STEP_LABEL = "PPO step"
FIT_LABEL = "gold fit d(alpha - beta log d), d = sqrt(KL) (Gao et al.)"


def gold_label(gold: str) -> str:
    """The y label of gold scores: a verifier pass rate or a gold RM's score."""
    if gold == VERIFIER:
        return "gold score\n(verifier: fraction correct)"
    return f"gold score\n(gold RM {gold}: logit)"


def objective_label(objective: str, n_seeds: int) -> str:
    """A legend entry: ``single RM (mean of 3 seeds)``, ``ensemble uwo (1 seed)``."""
    name = "single RM" if objective == "single" else objective.replace("_", " ", 1)
    seeds = "1 seed" if n_seeds == 1 else f"mean of {n_seeds} seeds"
    return f"{name} ({seeds})"


def _fit_line(ax: Axes, mean: pd.DataFrame, color: object) -> None:
    """The mean curve's fitted gold, dashed over its KL range."""
    first = mean.iloc[0]
    if pd.isna(first["fit_alpha"]):
        return
    fit = GaoRLFit(
        alpha=first["fit_alpha"],
        beta=first["fit_beta"],
        r2=first["fit_r2"],
        peak_kl=first["fit_peak_kl"],
        peak_gain=first["fit_peak_gain"],
        offset=float(first["gold"]),
        n_points=len(mean),
    )
    grid = np.linspace(0.0, max(float(mean["kl"].max()), 0.0), 80)
    ax.plot(grid, fit.predict(grid), color=color, ls="--", lw=1.3, alpha=0.9)


def _draw(ax: Axes, table: pd.DataFrame, x: str, y: str, colors) -> None:
    """Each objective's seeds (thin) and mean (thick) in its colour."""
    for k, objective in enumerate(dict.fromkeys(table["objective"])):
        color = colors(k % 10)
        rows = table[table["objective"] == objective]
        mean = rows[rows["seed"] == MEAN].sort_values("step")
        n_seeds = int(mean["n_seeds"].iloc[0])
        if n_seeds > 1:
            for _, curve in rows[rows["seed"] != MEAN].groupby("seed"):
                curve = curve.sort_values("step")
                ax.plot(curve[x], curve[y], color=color, lw=THIN, alpha=0.45)
        ax.plot(
            mean[x],
            mean[y],
            color=color,
            lw=THICK,
            marker="o",
            ms=3.5,
            label=objective_label(objective, n_seeds),
        )
        if (x, y) == ("kl", "gold"):
            _fit_line(ax, mean, color)


def ppo_figure(table: pd.DataFrame, gold: str = VERIFIER) -> Figure:
    """Gold and proxy (columns) against KL and steps (rows), per objective.

    Args:
        table: the curves table of :func:`pipelines.report_ppo.report_ppo`.
        gold: what scored gold (``verifier`` or the gold RM), for the label.

    Returns:
        The figure (sized for the report, see :mod:`pipelines.common.figures`).
    """
    plt = pyplot()
    colors = plt.get_cmap("tab10")
    # within figures.MAX_PX at its DPI, with the legend below the panels
    fig, axes = plt.subplots(2, 2, figsize=(9.2, 5.6), sharex="row")
    panels = (
        (axes[0, 0], "kl", "gold", "Gold against KL: what PPO really gains"),
        (axes[0, 1], "kl", "proxy", "Proxy against KL: what the RM believes"),
        (axes[1, 0], "step", "gold", "Gold over training"),
        (axes[1, 1], "step", "proxy", "Proxy over training"),
    )
    for ax, x, y, title in panels:
        _draw(ax, table, x, y, colors)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(KL_LABEL if x == "kl" else STEP_LABEL, fontsize=9)
        ax.set_ylabel(
            gold_label(gold)
            if y == "gold"
            else "proxy score\n(RM logit; ensembles: combined)",
            fontsize=9,
        )
        ax.grid(True, lw=0.4, alpha=0.5)
    handles, labels = axes[0, 1].get_legend_handles_labels()
    entries = dict(zip(labels, handles, strict=True))
    if (table.loc[table["seed"] == MEAN, "n_seeds"] > 1).any():
        (thin,) = axes[0, 1].plot([], [], color="grey", lw=THIN, alpha=0.6)
        entries["one seed (thin lines)"] = thin
    if table["fit_alpha"].notna().any():
        (dashed,) = axes[0, 0].plot([], [], color="grey", ls="--", lw=1.3)
        entries[FIT_LABEL] = dashed
    fig.legend(  # below the panels: never over the data
        entries.values(),
        entries.keys(),
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.01),
        ncol=3,
        title="proxy objective",
        title_fontsize=8,
    )
    samples = int(table["n_samples"].min())
    fig.suptitle(
        f"PPO, evaluated on {samples} held-out prompts: gold rising is real gain;"
        "\nproxy rising while gold falls is over-optimisation",
        fontsize=10.5,
    )
    fig.tight_layout()
    return fig
