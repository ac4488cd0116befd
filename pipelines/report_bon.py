r"""Collect BoN curves of single RMs and ensembles into one table and plot.

    python -m pipelines.report_bon \
        --results results/bon/seed0.json results/bon/seed1.json \
            results/bon/ensemble_mean.json results/bon/ensemble_uwo.json \
        --out-csv results/report/bon.csv --out-png results/report/bon.png

The CSV has one row per result file and draw size (the overall curve of
:func:`pipelines.bon_estimate.bon_estimate`): ``name`` (the file stem, e.g.
``seed0``, ``ensemble_uwo``), ``aggregate``, ``n``, ``kl_bon``,
``proxy_score``, ``gold_score``, ``n_prompts``, then the curve's fit of Gao et
al.'s best-of-n form (:mod:`pipelines.common.gao_fit`: ``gold(d) - gold(0) =
d (alpha - beta d)``, ``d = sqrt(KL_bon)``, least squares): ``fit_alpha``,
``fit_beta``, ``fit_r2``, ``fit_peak_kl`` (the KL where the fitted gold peaks;
empty when ``beta <= 0``: no peak) and ``fit_gold`` (the fitted value at that
n). The plot has two panels, gold and proxy score against KL_bon (nats; n on
a top axis): each single seeded RM is a thin grey line and their mean a black
one (the seed spread), each ensemble a thick line with its own colour and
marker; on the gold panel each curve's fit is a dashed line of its colour. The
legend sits below the panels, and a note says so when every gold curve
coincides. The gold
axis is labelled by what scored gold (``--gold``: the verifier's fraction of
prompts correct, or a gold RM's logit). Over-optimisation shows as a gold curve
that peaks and falls while the proxy curve keeps rising.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipelines.common.cli import handle_user_errors
from pipelines.common.figures import pyplot, save_png
from pipelines.common.gao_fit import GaoFit, fit_gao_bon
from pipelines.common.io import atomic_open
from pipelines.common.logs import setup_logging

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

COLUMNS = (
    "name",
    "aggregate",
    "n",
    "kl_bon",
    "proxy_score",
    "gold_score",
    "n_prompts",
    "fit_alpha",
    "fit_beta",
    "fit_r2",
    "fit_peak_kl",
    "fit_gold",
)
FIT_COLUMNS = ("fit_alpha", "fit_beta", "fit_r2", "fit_peak_kl")
SINGLE = "single"
VERIFIER = "verifier"
THIN, THICK = 1.0, 2.4
MARKERS = ("o", "s", "^", "D", "v", "P", "*", "X")


def bon_rows(name: str, result: dict) -> list[dict]:
    """The table rows of one BoN JSON (its overall ``results``)."""
    return [
        {
            "name": name,
            "aggregate": result["aggregate"],
            "n": row["n"],
            "kl_bon": row["kl_bon"],
            "proxy_score": row["proxy_score"],
            "gold_score": row["gold_score"],
            "n_prompts": row["n_prompts"],
        }
        for row in result["results"]
    ]


def curve_fit(curve: pd.DataFrame) -> GaoFit | None:
    """Gao et al.'s ``d (alpha - beta d)`` fitted to one curve's gold.

    None when the curve cannot carry a fit (no n = 1 point, or fewer than two
    points past it): its fit columns are then left empty.
    """
    try:
        return fit_gao_bon(curve["kl_bon"].to_numpy(), curve["gold_score"].to_numpy())
    except ValueError as err:
        logger.warning("%s: no fit (%s)", curve["name"].iloc[0], err)
        return None


def add_fits(table: pd.DataFrame) -> pd.DataFrame:
    """The table with each curve's fit: coefficients, R^2, peak KL, fitted gold."""
    table = table.copy()
    for column in (*FIT_COLUMNS, "fit_gold"):
        table[column] = np.nan
    for name in dict.fromkeys(table["name"]):
        rows = table["name"] == name
        fit = curve_fit(table[rows])
        if fit is None:
            continue
        for column in FIT_COLUMNS:
            table.loc[rows, column] = getattr(fit, column.removeprefix("fit_"))
        table.loc[rows, "fit_gold"] = fit.predict(table.loc[rows, "kl_bon"])
    return table


def _fit_line(ax, curve: pd.DataFrame, **style: object) -> None:
    """The fitted gold as a dashed line over the curve's KL range."""
    if "fit_alpha" not in curve or curve["fit_alpha"].isna().all():
        return
    first = curve.iloc[0]
    fit = GaoFit(
        alpha=first["fit_alpha"],
        beta=first["fit_beta"],
        r2=first["fit_r2"],
        peak_kl=first["fit_peak_kl"],
        peak_gain=np.nan,
        offset=float(curve.loc[curve["n"].idxmin(), "gold_score"]),
        n_points=len(curve),
    )
    grid = np.linspace(0.0, float(curve["kl_bon"].max()), 60)
    ax.plot(grid, fit.predict(grid), ls="--", **style)


def gold_label(gold: str) -> str:
    """The y label of gold scores: a verifier pass rate or a gold RM's score."""
    if gold == VERIFIER:
        return "gold score of the pick\n(verifier: fraction of prompts correct)"
    return f"gold score of the pick\n(gold RM {gold}: logit)"


def _style_singles(ax, table: pd.DataFrame, y: str, colors) -> None:
    """Each seed as a thin line, their mean as a dashed black line."""
    singles = table[table["aggregate"] == SINGLE]
    names = list(dict.fromkeys(singles["name"]))
    for name in names:
        curve = singles[singles["name"] == name]
        ax.plot(
            curve["kl_bon"],
            curve[y],
            color="grey",
            lw=THIN,
            alpha=0.8,
            marker=".",
            ms=4,
            label=f"single RM, one line per seed ({len(names)})",
        )
        if y == "gold_score":
            _fit_line(ax, curve, color="grey", lw=0.8, alpha=0.8)
    if len(names) > 1:
        mean = singles.groupby("n", sort=True)[["kl_bon", y]].mean()
        ax.plot(
            mean["kl_bon"],
            mean[y],
            color="black",
            lw=1.8,
            label=f"single RM, mean over {len(names)} seeds",
        )


def _style_ensembles(ax, table: pd.DataFrame, y: str, colors) -> None:
    """One thick line per ensemble objective, distinct colour and marker."""
    ensembles = table[table["aggregate"] != SINGLE]
    for k, name in enumerate(dict.fromkeys(ensembles["name"])):
        curve = ensembles[ensembles["name"] == name]
        ax.plot(
            curve["kl_bon"],
            curve[y],
            color=colors(k % 10),
            lw=THICK,
            alpha=0.85,
            marker=MARKERS[k % len(MARKERS)],
            ms=6,
            label=f"ensemble {name.removeprefix('ensemble_')}",
        )
        if y == "gold_score":
            _fit_line(ax, curve, color=colors(k % 10), lw=1.2, alpha=0.9)


def _n_axis(ax, table: pd.DataFrame) -> None:
    """A top axis marking each n at its KL_bon."""
    ticks = table.groupby("n", sort=True)["kl_bon"].first()
    top = ax.twiny()
    top.set_xlim(ax.get_xlim())
    top.set_xticks(ticks.to_numpy(), [str(n) for n in ticks.index])
    top.set_xlabel("n (candidates best-of-n picks from)")


def _note_coinciding(ax, table: pd.DataFrame, y: str) -> None:
    """Say so when every curve has the same values (they hide each other)."""
    wide = table.pivot_table(index="n", columns="name", values=y)
    if wide.shape[1] > 1 and bool((wide.max(axis=1) - wide.min(axis=1) < 1e-9).all()):
        ax.text(
            0.03,
            0.97,
            f"all {wide.shape[1]} curves coincide",
            transform=ax.transAxes,
            va="top",
            fontsize=9,
            bbox={"facecolor": "white", "edgecolor": "grey", "alpha": 0.9},
        )


def bon_figure(table: pd.DataFrame, gold: str = VERIFIER) -> Figure:
    """Gold and proxy score against KL_bon, with n marked on a top axis.

    Args:
        table: the table of :func:`report_bon`.
        gold: what scored gold (``verifier`` or the gold RM), for the label.

    Returns:
        The figure (sized for the report, see :mod:`pipelines.common.figures`).
    """
    plt = pyplot()

    colors = plt.get_cmap("tab10")
    # within figures.MAX_PX at its DPI, legend below the panels
    fig, axes = plt.subplots(1, 2, figsize=(9.2, 4.0))
    panels = (
        (axes[0], "gold_score", "Gold score: what best-of-n really gains"),
        (axes[1], "proxy_score", "Proxy score: what the reward model believes"),
    )
    for ax, y, title in panels:
        _style_singles(ax, table, y, colors)
        _style_ensembles(ax, table, y, colors)
        ax.set_xlabel("KL(best-of-n || policy) = log n - (n-1)/n (nats)")
        ax.grid(True, lw=0.4, alpha=0.5)
        ax.set_title(title, fontsize=10)
        _n_axis(ax, table)
    _note_coinciding(axes[0], table, "gold_score")
    axes[0].set_ylabel(gold_label(gold))
    axes[1].set_ylabel("proxy score of the pick\n(RM logit; ensembles: combined)")
    if gold == VERIFIER:
        axes[0].set_ylim(bottom=min(0.0, axes[0].get_ylim()[0]))
    handles, labels = axes[1].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))  # one entry per seed group
    if "fit_alpha" in table and not table["fit_alpha"].isna().all():
        (fit_handle,) = axes[0].plot([], [], color="grey", ls="--", lw=1.0)
        unique["gold fit d(alpha - beta d), d = sqrt(KL) (Gao et al.)"] = fit_handle
    fig.legend(  # below both panels: never over the data
        unique.values(),
        unique.keys(),
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.02),
        ncol=3,
        title="proxy objective",
        title_fontsize=8,
    )
    prompts = int(table["n_prompts"].max())
    fig.suptitle(
        f"Best-of-n over {prompts} held-out prompts: gold rising with n is real"
        " gain;\nproxy rising while gold stalls is over-optimisation",
        fontsize=10.5,
    )
    fig.tight_layout()
    return fig


def report_bon(
    results: Sequence[Path], out_csv: Path, out_png: Path, *, gold: str = VERIFIER
) -> pd.DataFrame:
    """Tabulate BoN JSONs and plot their curves.

    Args:
        results: JSON files written by :func:`pipelines.bon_estimate.bon_estimate`.
        out_csv: the table to write (atomically).
        out_png: the plot to write (atomically).
        gold: what scored the candidates' gold (``verifier`` or the gold RM),
            for the plot's label.

    Returns:
        The table (columns :data:`COLUMNS`): single RMs first, then ensembles,
        each by name, then ascending ``n``.

    Raises:
        ValueError: when ``results`` is empty or two files share a stem.
    """
    if not results:
        raise ValueError("no BoN result files given")
    rows: list[dict] = []
    seen: dict[str, Path] = {}
    for path in results:
        name = Path(path).stem
        if name in seen:
            raise ValueError(f"{path} and {seen[name]} share the name {name!r}")
        seen[name] = Path(path)
        with open(path, encoding="utf-8") as fh:
            rows.extend(bon_rows(name, json.load(fh)))
    table = pd.DataFrame(rows, columns=list(COLUMNS[:7]))
    table = table.astype(
        {
            "n": "int64",
            "n_prompts": "int64",
            "kl_bon": "float64",
            "proxy_score": "float64",
            "gold_score": "float64",
        }
    )
    table["_ensemble"] = table["aggregate"] != SINGLE
    table = table.sort_values(["_ensemble", "name", "n"], kind="stable")
    table = table.drop(columns="_ensemble").reset_index(drop=True)
    table = add_fits(table)
    with atomic_open(out_csv) as fh:
        table.to_csv(fh, index=False, float_format="%.6f")
    save_png(bon_figure(table, gold), Path(out_png))
    logger.info(
        "%d BoN files -> %d rows in %s and %s",
        len(results),
        len(table),
        out_csv,
        out_png,
    )
    return table


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`report_bon`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.report_bon", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--results", nargs="+", type=Path, required=True, help="BoN JSON files"
    )
    parser.add_argument(
        "--gold",
        default=VERIFIER,
        help="what scored gold: 'verifier' or the gold RM (for the plot's label)",
    )
    parser.add_argument("--out-csv", type=Path, required=True, help="CSV to write")
    parser.add_argument("--out-png", type=Path, required=True, help="PNG to write")
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = make_parser().parse_args(argv)
    setup_logging()
    report_bon(args.results, args.out_csv, args.out_png, gold=args.gold)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
