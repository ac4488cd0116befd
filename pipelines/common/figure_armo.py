"""The ArmoRM report's figure: accuracy, mean gates, verbosity debiasing.

Three panels, from the table of :func:`pipelines.report_armo.build_table`:

- (a) strict pairwise accuracy per test domain (and all pooled): the gated
  ArmoRM, the BT RM of its backbone, uniform gate weights and the best single
  attribute (its name on the bar) as bars, every other attribute as a small
  marker over that bar; chance (0.5) dashed;
- (b) the mean gate per attribute and domain, as a heatmap with the numbers;
- (c) the Spearman correlation of each attribute's reward with the verbosity
  reward on the reference set, before and after debiasing, the band
  ``|rho| <= tau`` shaded and each attribute's ``lambda`` in its label.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipelines.common.figures import pyplot

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLORS = {
    "gated": "tab:blue",
    "bt": "tab:orange",
    "uniform": "tab:gray",
    "attribute": "tab:green",
}
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">")
BEFORE, AFTER = "#b9c7d6", "tab:purple"
ACC_LABEL = "accuracy (fraction of test\npairs scored chosen > rejected)"


def _marker(k: int) -> str:
    return MARKERS[k % len(MARKERS)]


def _attributes(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(table.loc[table["kind"] == "attribute", "scorer"]))


def _bar(ax: Axes, x: float, height: float, width: float, **kw: object) -> None:
    """One bar with its value above it (nothing for a value not computed)."""
    if math.isnan(height):
        ax.text(x, 0.02, "n/a", ha="center", va="bottom", fontsize=6.5)
        return
    ax.bar(x, height, width, edgecolor="white", linewidth=0.5, **kw)
    ax.text(x, height + 0.01, f"{height:.2f}", ha="center", va="bottom", fontsize=6.5)


def _accuracy_panel(ax: Axes, table: pd.DataFrame) -> None:
    """(a): grouped bars per domain, other attributes as markers."""
    domains = list(dict.fromkeys(table["domain"]))
    kinds = [k for k in ("gated", "bt", "uniform") if (table["kind"] == k).any()]
    width = 0.8 / (len(kinds) + 1)
    attributes = _attributes(table)
    labelled: set[str] = set()
    for i, domain in enumerate(domains):
        rows = table[table["domain"] == domain]
        for j, kind in enumerate(kinds):
            row = rows[rows["kind"] == kind].iloc[0]
            x = i - 0.4 + width * (j + 0.5)
            label = None if kind in labelled else row["scorer"]
            labelled.add(kind)
            _bar(ax, x, row["accuracy"], width, color=COLORS[kind], label=label)
        x = i + 0.4 - width / 2
        best = rows[rows["best_attribute"]]
        if len(best):
            label = None if "best" in labelled else "best single attribute (named)"
            labelled.add("best")
            acc = float(best["accuracy"].iloc[0])
            _bar(ax, x, acc, width, color=COLORS["attribute"], label=label)
            ax.text(
                x,
                0.03,
                best["scorer"].iloc[0],
                rotation=90,
                ha="center",
                va="bottom",
                fontsize=7,
                color="black",
            )
        else:  # no attribute scored in this domain
            _bar(ax, x, math.nan, width)
        others = rows[(rows["kind"] == "attribute") & ~rows["best_attribute"]]
        for _, row in others.iterrows():
            k = attributes.index(row["scorer"])
            offset = (k / max(len(attributes) - 1, 1) - 0.5) * width * 0.7
            ax.plot(
                x + offset,
                row["accuracy"],
                _marker(k),
                ms=4.5,
                mfc="white",
                mec="black",
                mew=0.8,
                ls="none",
            )
    ax.axhline(0.5, color="black", ls="--", lw=0.9, label="chance (0.5)")
    n_pairs = table.drop_duplicates("domain").set_index("domain")["n_pairs"]
    names = [f"{d}\n({n_pairs[d]} pairs)" for d in domains]
    ax.set_xticks(range(len(domains)), names, fontsize=8.5)
    if domains[-1] == "overall" and len(domains) > 1:
        ax.axvline(len(domains) - 1.5, color="grey", lw=0.6, ls=":")
    ax.set_xlim(-0.5, len(domains) - 0.5)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel(ACC_LABEL, fontsize=8.5)
    ax.set_xlabel("test domain (overall: all domains' pairs pooled)", fontsize=8.5)
    ax.set_title("(a) Pairwise accuracy per domain (ties count as wrong)", fontsize=10)
    ax.grid(True, axis="y", lw=0.4, alpha=0.5)


def _legend_a(ax: Axes, legend_ax: Axes, attributes: list[str]) -> None:
    """Panel (a)'s legend in its own (blank) axes, right of the panel."""
    handles, labels = ax.get_legend_handles_labels()
    for k, attribute in enumerate(attributes):
        (marker,) = ax.plot(
            [], [], _marker(k), ms=4.5, mfc="white", mec="black", mew=0.8, ls="none"
        )
        handles.append(marker)
        labels.append(f"{attribute} alone")
    legend_ax.axis("off")
    legend_ax.legend(
        handles,
        labels,
        loc="center left",
        fontsize=7.5,
        frameon=False,
        title="scorer",
        title_fontsize=8,
    )


def _gate_panel(fig: Figure, ax: Axes, table: pd.DataFrame) -> None:
    """(b): mean gate per attribute (rows) and domain (columns)."""
    rows = table[table["kind"] == "attribute"]
    grid = rows.pivot(index="scorer", columns="domain", values="mean_gate")
    grid = grid.loc[_attributes(table), list(dict.fromkeys(table["domain"]))]
    values = grid.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    top = float(finite.max()) if finite.size else 1.0
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=top or 1.0, aspect="auto")
    for (r, c), value in np.ndenumerate(values):
        text = "n/a" if math.isnan(value) else f"{value:.2f}"
        dark = not math.isnan(value) and value > 0.6 * top
        ax.text(
            c,
            r,
            text,
            ha="center",
            va="center",
            fontsize=7.5,
            color="white" if dark else "black",
        )
    ax.set_xticks(range(grid.shape[1]), grid.columns, fontsize=8)
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=8)
    ax.set_xlabel("test domain", fontsize=8.5)
    ax.set_ylabel("attribute reward", fontsize=8.5)
    ax.set_title(
        "(b) Mean gate weight on each domain's prompts\n"
        "(a domain's column sums to the gate's logit scale)",
        fontsize=9.5,
    )
    bar = fig.colorbar(image, ax=ax, fraction=0.06, pad=0.03)
    bar.set_label("mean gate weight (unitless)", fontsize=8)
    bar.ax.tick_params(labelsize=7)


def _spearman_panel(
    ax: Axes, table: pd.DataFrame, verbosity_attribute: str, tau: float
) -> None:
    """(c): Spearman with the verbosity reward, before and after, per attribute."""
    rows = table[table["kind"] == "attribute"].drop_duplicates("scorer")
    rows = rows.set_index("scorer").loc[_attributes(table)]
    y = np.arange(len(rows))
    h = 0.38
    if not math.isnan(tau):
        ax.axvspan(
            -tau,
            tau,
            color="tab:green",
            alpha=0.18,
            lw=0,
            label=f"|rho| <= tau = {tau:g}",
        )
    ax.barh(
        y - h / 2,
        rows["spearman_verbosity_before"],
        h,
        color=BEFORE,
        label="before debiasing",
    )
    ax.barh(
        y + h / 2,
        rows["spearman_verbosity_after"],
        h,
        color=AFTER,
        label="after debiasing",
    )
    for k, (name, row) in enumerate(rows.iterrows()):
        for value, dy in (
            (row["spearman_verbosity_before"], -h / 2),
            (row["spearman_verbosity_after"], h / 2),
        ):
            if math.isnan(value):
                what = "removed" if name == verbosity_attribute else "n/a"
                text, x, ha = what, 0.03, "left"
            else:  # past the bar's end; inside it near the axis' edge
                inward = abs(value) > 0.8
                side = 1.0 if (value >= 0) != inward else -1.0
                x, text = value + 0.03 * side, f"{value:+.2f}"
                ha = "left" if side > 0 else "right"
            ax.text(x, k + dy, text, ha=ha, va="center", fontsize=6.5)
    ax.axvline(0, color="black", lw=0.6)
    labels = [
        f"{name}\nlambda = {lam:.3g}" if not math.isnan(lam) else f"{name}\nlambda n/a"
        for name, lam in rows["lambda"].items()
    ]
    ax.set_yticks(y, labels, fontsize=7.5)
    ax.set_ylabel("attribute reward (its lambda)", fontsize=8.5)
    ax.invert_yaxis()  # rows in the heatmap's order
    ax.set_xlim(-1.15, 1.15)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlabel(
        f"Spearman rho with the {verbosity_attribute} reward\n(reference set; -1 to 1)",
        fontsize=8.5,
    )
    ax.set_title(
        f"(c) Correlation with {verbosity_attribute}, before vs after\n"
        "debiasing (each attribute minus lambda x verbosity)",
        fontsize=9.5,
    )
    ax.grid(True, axis="x", lw=0.4, alpha=0.5)
    ax.legend(
        fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.3),
        ncol=3,
        frameon=False,
    )


def armo_figure(
    table: pd.DataFrame,
    *,
    model_id: str,
    verbosity_attribute: str,
    tau: float,
    train_on_debiased: bool | None,
) -> Figure:
    """The three panels (module docstring) of one ArmoRM evaluation.

    Args:
        table: the table of :func:`pipelines.report_armo.build_table`.
        model_id: the ArmoRM's id, for the title.
        verbosity_attribute: the attribute debiased against.
        tau: the debiasing's correlation target (NaN: no band drawn).
        train_on_debiased: whether the gates saw debiased rewards (None:
            unknown), for the title.

    Returns:
        The figure (sized for the report, see :mod:`pipelines.common.figures`);
        its first three axes are panels (a), (b), (c).
    """
    plt = pyplot()
    fig = plt.figure(figsize=(9.2, 6.6))
    outer = fig.add_gridspec(2, 1, height_ratios=[1.0, 1.0], hspace=0.55)
    top = outer[0].subgridspec(1, 2, width_ratios=[3.3, 1.0], wspace=0.02)
    bottom = outer[1].subgridspec(1, 2, width_ratios=[1.0, 1.0], wspace=0.55)
    ax_a = fig.add_subplot(top[0])
    ax_b = fig.add_subplot(bottom[0])
    ax_c = fig.add_subplot(bottom[1])
    legend_ax = fig.add_subplot(top[1])
    _accuracy_panel(ax_a, table)
    _legend_a(ax_a, legend_ax, _attributes(table))
    _gate_panel(fig, ax_b, table)
    _spearman_panel(ax_c, table, verbosity_attribute, tau)
    gates = {True: " (gates trained on debiased rewards)", None: ""}
    fig.suptitle(
        f"ArmoRM {model_id}: gated mixture of attribute rewards"
        + gates.get(train_on_debiased, " (gates trained on raw rewards)"),
        fontsize=10.5,
    )
    return fig
