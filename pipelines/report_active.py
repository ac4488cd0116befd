r"""Tabulate and plot active learning: target accuracy against labelled pairs.

    python -m pipelines.report_active \
        --start math results/eval/rm-general-seed0/math-test.json \
        --run math uncertainty 0 1 2500 results/eval/active/math/u-s0-i1.json \
        --run math random 0 1 2500 results/eval/active/math/r-s0-i1.json ... \
        --out-csv results/report/active.csv --out-png results/report/active.png

Each ``--run DOMAIN STRATEGY SEED ITER N_LABELLED EVAL_JSON`` is one
evaluation (an ``eval_rm`` result JSON: its top-level ``accuracy`` and
``n_pairs`` are read) of the RM after active-learning iteration ``ITER``
(from 1) of one strategy and seed, trained on ``N_LABELLED`` selected pairs
so far. ``--start DOMAIN EVAL_JSON`` is iteration 0: the start RM, before any
selected pair, shared by every strategy and seed of that domain.

``--out-csv`` has, per domain and strategy, one row per seed and iteration
(iteration 0, ``n_labelled`` 0, is the start RM), then rows ``seed = mean``
per iteration: ``accuracy`` the mean over the seeds, ``accuracy_std`` their
sample SD (ddof 1; empty for one seed), ``accuracy_min``, ``accuracy_max``,
``n_seeds``. Strategy ``uncertainty-random`` holds the difference: per seed
that ran both strategies, ``uncertainty - random`` at that iteration (a paired
difference, same seed), and its mean rows (mean, SD, min and max of the
paired differences over ``n_seeds`` seeds), with ``difference_of_means`` the
difference of the two strategies' means over all their seeds.

``--out-png`` draws one panel per domain: accuracy against labelled pairs,
uncertainty against random; each seed thin, the mean thick with a band of
+-1 SD over seeds.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipelines.common.cli import UserError, handle_user_errors
from pipelines.common.figures import pyplot, save_png
from pipelines.common.io import (
    InputFileError,
    atomic_open,
    read_json_object,
)
from pipelines.common.logs import setup_logging

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

UNCERTAINTY, RANDOM = "uncertainty", "random"
DIFFERENCE = f"{UNCERTAINTY}-{RANDOM}"
STRATEGIES = (UNCERTAINTY, RANDOM)  # known strategies first, in this order
MEAN = "mean"
COLUMNS = (
    "domain",
    "strategy",
    "seed",
    "iteration",
    "n_labelled",
    "n_seeds",
    "accuracy",
    "accuracy_std",
    "accuracy_min",
    "accuracy_max",
    "difference_of_means",
    "n_pairs",
    "benchmark",
    "eval_json",
)
THIN, THICK = 0.8, 2.4
COLORS = {UNCERTAINTY: "tab:orange", RANDOM: "tab:blue"}
STRATEGY_LABELS = {
    UNCERTAINTY: "uncertainty: small-margin pairs favoured",
    RANDOM: "random pairs",
}


class ReportInputError(UserError, ValueError):
    """The report's arguments do not fit together (repeats, gaps, bad values)."""


@dataclass(frozen=True)
class Eval:
    """What the report reads of one eval JSON."""

    accuracy: float
    n_pairs: int
    benchmark: str  # "" when the file names none
    path: Path


def read_eval(path: Path) -> Eval:
    """The ``accuracy`` and ``n_pairs`` of an ``eval_rm`` result JSON.

    Raises:
        MissingInputError: the file does not exist.
        InputFileError: it is not a JSON object, or a key is missing or not
            a number (the message names the file and the key).
    """
    path = Path(path)
    result = read_json_object(path)
    for key in ("accuracy", "n_pairs"):
        if key not in result:
            raise InputFileError(f"{path}: {key}: missing")
    acc, n = result["accuracy"], result["n_pairs"]
    if (
        isinstance(acc, bool)
        or not isinstance(acc, int | float)
        or not 0 <= acc <= 1  # also NaN
    ):
        raise InputFileError(
            f"{path}: accuracy: expected a number in [0, 1], got {acc!r:.40}"
        )
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputFileError(
            f"{path}: n_pairs: expected an integer >= 1, got {n!r:.40}"
        )
    bench = result.get("benchmark")
    name = bench.get("name") if isinstance(bench, dict) else None
    return Eval(float(acc), n, name if isinstance(name, str) else "", path)


def _int(run: Sequence[str], index: int, name: str, low: int) -> int:
    text = run[index]
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low:
        raise ReportInputError(
            f"--run {' '.join(run)}: {name}: expected an integer >= {low}, got {text!r}"
        )
    return value


def parse_run(run: Sequence[str]) -> dict:
    """One ``--run DOMAIN STRATEGY SEED ITER N_LABELLED EVAL_JSON``, checked.

    Raises:
        ReportInputError: a field out of range (named), or an empty name.
    """
    domain, strategy = run[0], run[1]
    for name, value in (("DOMAIN", domain), ("STRATEGY", strategy)):
        if not value or value in (MEAN, DIFFERENCE):
            raise ReportInputError(
                f"--run {' '.join(run)}: {name}: expected a name, got {value!r}"
            )
    return {
        "domain": domain,
        "strategy": strategy,
        "seed": _int(run, 2, "SEED", 0),
        "iteration": _int(run, 3, "ITER", 1),  # 0 is --start's
        "n_labelled": _int(run, 4, "N_LABELLED", 1),
        "eval_json": Path(run[5]),
    }


def _strategy_key(strategy: str) -> tuple[int, str]:
    known = strategy in STRATEGIES
    return (STRATEGIES.index(strategy) if known else len(STRATEGIES), strategy)


def _row(spec: dict, ev: Eval) -> dict:
    return {
        **{k: spec[k] for k in ("domain", "strategy", "seed", "iteration")},
        "n_labelled": spec["n_labelled"],
        "n_seeds": 1,
        "accuracy": ev.accuracy,
        "n_pairs": ev.n_pairs,
        "benchmark": ev.benchmark,
        "eval_json": str(ev.path),
    }


def seed_rows(runs: Sequence[dict], starts: dict[str, Path]) -> pd.DataFrame:
    """One row per domain, strategy, seed and iteration (0: the start RM).

    Raises:
        ReportInputError: a run given twice, a start for a domain without
            runs, seeds of one iteration with different ``n_labelled``.
    """
    seen: dict[tuple, Path] = {}
    rows = []
    for spec in runs:
        key = tuple(spec[k] for k in ("domain", "strategy", "seed", "iteration"))
        if key in seen:
            raise ReportInputError(
                f"{spec['eval_json']} and {seen[key]}: both --run domain {key[0]}"
                f" strategy {key[1]} seed {key[2]} iteration {key[3]}"
            )
        seen[key] = spec["eval_json"]
        rows.append(_row(spec, read_eval(spec["eval_json"])))
    domains = {spec["domain"] for spec in runs}
    unused = sorted(set(starts) - domains)
    if unused:
        raise ReportInputError(
            f"--start {unused[0]} {starts[unused[0]]}: no --run of {unused[0]}"
        )
    for domain in sorted(domains - set(starts)):
        logger.warning("%s: no --start (iteration 0) given; curves begin at 1", domain)
    curves = {(s["domain"], s["strategy"], s["seed"]) for s in runs}
    start_evals = {d: read_eval(p) for d, p in starts.items()}
    for domain, strategy, seed in sorted(curves):
        if domain in start_evals:
            spec = {
                "domain": domain,
                "strategy": strategy,
                "seed": seed,
                "iteration": 0,
                "n_labelled": 0,
            }
            rows.append(_row(spec, start_evals[domain]))
    table = pd.DataFrame(rows)
    labelled = table.groupby(["domain", "strategy", "iteration"])["n_labelled"]
    for (domain, strategy, iteration), values in labelled:
        if values.nunique() > 1:
            files = table.loc[values.index, "eval_json"].tolist()
            raise ReportInputError(
                f"domain {domain} strategy {strategy} iteration {iteration}: the"
                f" seeds' N_LABELLED differ ({sorted(values.unique().tolist())};"
                f" files {files})"
            )
    return table


def _stats(values: pd.Series) -> dict:
    return {
        "n_seeds": int(values.size),
        "accuracy": float(values.mean()) if values.size else math.nan,
        "accuracy_std": float(values.std(ddof=1)) if values.size > 1 else math.nan,
        "accuracy_min": float(values.min()) if values.size else math.nan,
        "accuracy_max": float(values.max()) if values.size else math.nan,
    }


def mean_rows(seeds: pd.DataFrame) -> pd.DataFrame:
    """Per domain, strategy and iteration: mean, SD, min, max over seeds."""
    rows = []
    groups = seeds.groupby(["domain", "strategy", "iteration"], sort=False)
    for (domain, strategy, iteration), part in groups:
        rows.append(
            {
                "domain": domain,
                "strategy": strategy,
                "seed": MEAN,
                "iteration": iteration,
                "n_labelled": int(part["n_labelled"].iloc[0]),
                **_stats(part["accuracy"]),
                "n_pairs": int(part["n_pairs"].min()),
                "benchmark": part["benchmark"].iloc[0],
            }
        )
    return pd.DataFrame(rows)


def difference_rows(seeds: pd.DataFrame) -> pd.DataFrame:
    """``uncertainty - random`` per seed (paired) and its mean rows."""
    rows = []
    for domain in dict.fromkeys(seeds["domain"]):
        dom = seeds[seeds["domain"] == domain]
        unc = dom[dom["strategy"] == UNCERTAINTY].set_index(["iteration", "seed"])
        ran = dom[dom["strategy"] == RANDOM].set_index(["iteration", "seed"])
        if unc.empty or ran.empty:
            continue
        both = sorted(
            set(unc.index.get_level_values(0)) & set(ran.index.get_level_values(0))
        )
        for iteration in both:
            u, r = unc.loc[iteration], ran.loc[iteration]
            labelled = {int(u["n_labelled"].iloc[0]), int(r["n_labelled"].iloc[0])}
            if len(labelled) > 1:
                logger.warning(
                    "%s iteration %d: %s and %s labelled %s pairs; no difference",
                    domain,
                    iteration,
                    UNCERTAINTY,
                    RANDOM,
                    sorted(labelled),
                )
                continue
            base = {
                "domain": domain,
                "strategy": DIFFERENCE,
                "iteration": iteration,
                "n_labelled": labelled.pop(),
                "n_pairs": int(min(u["n_pairs"].min(), r["n_pairs"].min())),
                "benchmark": u["benchmark"].iloc[0],
            }
            shared = sorted(set(u.index) & set(r.index))
            paired = u.loc[shared, "accuracy"] - r.loc[shared, "accuracy"]
            for seed, diff in paired.items():
                rows.append({**base, "seed": seed, "n_seeds": 1, "accuracy": diff})
            rows.append(
                {
                    **base,
                    "seed": MEAN,
                    **_stats(paired),
                    "difference_of_means": u["accuracy"].mean() - r["accuracy"].mean(),
                }
            )
    return pd.DataFrame(rows)


def build_table(runs: Sequence[dict], starts: dict[str, Path]) -> pd.DataFrame:
    """The CSV's table: seed and mean rows per strategy, then the difference.

    Returns:
        Columns :data:`COLUMNS`; domains in order of first appearance,
        strategies uncertainty, random, others by name, then the difference;
        per strategy the seeds' rows (seed, iteration ascending) then its
        mean rows (iteration ascending).
    """
    seeds = seed_rows(runs, starts).sort_values(["seed", "iteration"], kind="stable")
    means = mean_rows(seeds).sort_values("iteration", kind="stable")
    diff = difference_rows(seeds)
    if not diff.empty:
        is_mean = diff["seed"] == MEAN
        diff = pd.concat(
            [
                diff[~is_mean].sort_values(["seed", "iteration"], kind="stable"),
                diff[is_mean].sort_values("iteration", kind="stable"),
            ]
        )

    def part(frame: pd.DataFrame, domain: str, strategy: str) -> pd.DataFrame:
        if frame.empty:
            return frame
        return frame[(frame["domain"] == domain) & (frame["strategy"] == strategy)]

    parts = []
    for domain in dict.fromkeys(s["domain"] for s in runs):
        strategies = sorted(
            seeds.loc[seeds["domain"] == domain, "strategy"].unique(),
            key=_strategy_key,
        )
        for strategy in strategies:
            parts += [part(seeds, domain, strategy), part(means, domain, strategy)]
        parts.append(part(diff, domain, DIFFERENCE))
    parts = [p for p in parts if not p.empty]
    table = pd.concat(parts, ignore_index=True).reindex(columns=list(COLUMNS))
    table["seed"] = table["seed"].astype(str)
    return table.astype(
        {
            "iteration": "int64",
            "n_labelled": "int64",
            "n_seeds": "int64",
            "n_pairs": "Int64",
        }
    )


# ------------------------------------------------------------------ figure


def strategy_label(table: pd.DataFrame, strategy: str) -> str:
    """A legend entry, one for all panels: ``random pairs (mean of 3 seeds)``."""
    rows = table[(table["strategy"] == strategy) & (table["seed"] == MEAN)]
    low, high = int(rows["n_seeds"].min()), int(rows["n_seeds"].max())
    if high == 1:
        seeds = "1 seed"
    elif low == high:
        seeds = f"mean of {high} seeds"
    else:
        seeds = f"mean of {low}-{high} seeds"
    return f"{STRATEGY_LABELS.get(strategy, strategy)} ({seeds})"


def _panel(ax: Axes, table: pd.DataFrame, domain: str) -> None:
    """One domain: each strategy's seeds (thin), mean (thick) and +-1 SD band."""
    rows = table[table["domain"] == domain]
    strategies = [s for s in dict.fromkeys(rows["strategy"]) if s != DIFFERENCE]
    others = iter(["tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive"])
    for strategy in strategies:
        color = COLORS.get(strategy) or next(others, "tab:gray")
        own = rows[rows["strategy"] == strategy]
        mean = own[own["seed"] == MEAN].sort_values("iteration")
        for _, curve in own[own["seed"] != MEAN].groupby("seed"):
            curve = curve.sort_values("iteration")
            ax.plot(
                curve["n_labelled"], curve["accuracy"], color=color, lw=THIN, alpha=0.5
            )
        band = mean["accuracy_std"].fillna(0.0)
        ax.fill_between(
            mean["n_labelled"],
            mean["accuracy"] - band,
            mean["accuracy"] + band,
            color=color,
            alpha=0.18,
            lw=0,
        )
        ax.plot(
            mean["n_labelled"],
            mean["accuracy"],
            color=color,
            lw=THICK,
            marker="o",
            ms=4,
            label=strategy_label(table, strategy),
        )
    start = rows[(rows["iteration"] == 0) & (rows["seed"] == MEAN)]
    if not start.empty:
        ax.axhline(
            float(start["accuracy"].iloc[0]), color="grey", ls=":", lw=1.2, zorder=0
        )
    bench = rows["benchmark"].iloc[0] or "target test set"
    title = f"{domain}: {bench} ({int(rows['n_pairs'].min())} pairs)"
    diff = rows[(rows["strategy"] == DIFFERENCE) & (rows["seed"] == MEAN)]
    diff = diff[diff["iteration"] > 0].sort_values("iteration")
    if not diff.empty and np.isfinite(diff["accuracy"].iloc[-1]):
        last = diff.iloc[-1]  # in the title: never over the data
        sd = last["accuracy_std"]
        spread = f" ± {sd:.3f} SD" if np.isfinite(sd) else ""
        seeds = int(last["n_seeds"])
        title += (
            f"\nuncertainty - random at {int(last['n_labelled'])} pairs:"
            f"\n{last['accuracy']:+.3f}{spread} (paired, {seeds} seed"
            f"{'s' if seeds > 1 else ''})"
        )
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("labelled pairs selected so far\n(0 = the start RM)", fontsize=9)
    ax.set_ylabel("pairwise accuracy\n(fraction chosen > rejected)", fontsize=9)
    ax.grid(True, lw=0.4, alpha=0.5)


def active_figure(table: pd.DataFrame) -> Figure:
    """One panel per domain: accuracy against labelled pairs, per strategy.

    Args:
        table: the table of :func:`build_table`.

    Returns:
        The figure (sized for the report, see :mod:`pipelines.common.figures`).
    """
    plt = pyplot()
    domains = list(dict.fromkeys(table["domain"]))
    ncols = min(len(domains), 3)
    nrows = math.ceil(len(domains) / ncols)
    # within figures.MAX_PX at its DPI, the legend below the panels
    size = (min(8.8, 0.9 + 2.9 * ncols), min(6.8, 1.9 + 3.1 * nrows))
    fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False)
    for ax, domain in zip(axes.flat, domains, strict=False):
        _panel(ax, table, domain)
    for ax in list(axes.flat)[len(domains) :]:
        ax.set_visible(False)
    entries: dict[str, object] = {}
    for ax in axes.flat[: len(domains)]:
        handles, labels = ax.get_legend_handles_labels()
        entries.update(zip(labels, handles, strict=True))
    ax0 = axes.flat[0]
    if (table.loc[table["seed"] == MEAN, "n_seeds"] > 1).any():
        (thin,) = ax0.plot([], [], color="grey", lw=THIN, alpha=0.6)
        entries["one seed (thin lines); band: mean ± 1 SD over seeds"] = thin
    if (table["iteration"] == 0).any():
        (start,) = ax0.plot([], [], color="grey", ls=":", lw=1.2)
        entries["start RM, before any selected pair (dotted)"] = start
    fig.legend(  # below the panels: never over the data
        entries.values(),
        entries.keys(),
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.01),
        ncol=2 if ncols > 1 else 1,
        title="which pairs were labelled",
        title_fontsize=8,
    )
    fig.suptitle(
        "Active learning: RM accuracy as selected pairs are added;"
        "\ndoes labelling the pairs the RM is least sure of beat random pairs?",
        fontsize=10.5,
    )
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ stage


def report_active(
    runs: Sequence[Sequence[str]],
    starts: Sequence[Sequence[str]],
    out_csv: Path,
    out_png: Path,
) -> pd.DataFrame:
    """Tabulate and plot the evaluations of active-learning runs.

    Args:
        runs: ``(DOMAIN, STRATEGY, SEED, ITER, N_LABELLED, EVAL_JSON)`` each.
        starts: ``(DOMAIN, EVAL_JSON)`` each: iteration 0 of the domain.
        out_csv: the table to write (atomically).
        out_png: the plot to write (atomically).

    Returns:
        The table (:func:`build_table`).

    Raises:
        UserError: no runs, a bad field (named), a domain started twice, a
            run given twice, an eval JSON without ``accuracy`` or ``n_pairs``
            (naming the file and the key).
    """
    if not runs:
        raise ReportInputError("no --run given")
    specs = [parse_run(run) for run in runs]
    start_paths: dict[str, Path] = {}
    for domain, path in starts:
        if domain in start_paths:
            raise ReportInputError(
                f"--start {domain} given twice ({start_paths[domain]}, {path})"
            )
        start_paths[domain] = Path(path)
    table = build_table(specs, start_paths)
    with atomic_open(out_csv) as fh:
        table.to_csv(fh, index=False, float_format="%.6f")
    save_png(active_figure(table), Path(out_png))
    logger.info(
        "%d evaluations of %d domains -> %d rows in %s and %s",
        len(specs) + len(start_paths),
        len({s["domain"] for s in specs}),
        len(table),
        out_csv,
        out_png,
    )
    return table


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`report_active`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.report_active",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[2:8]),
    )
    parser.add_argument(
        "--run",
        nargs=6,
        action="append",
        default=[],
        metavar=("DOMAIN", "STRATEGY", "SEED", "ITER", "N_LABELLED", "EVAL_JSON"),
        help="one evaluation after iteration ITER (>= 1) of a run (repeatable)",
    )
    parser.add_argument(
        "--start",
        nargs=2,
        action="append",
        default=[],
        metavar=("DOMAIN", "EVAL_JSON"),
        help="the start RM's evaluation (iteration 0) of a domain (repeatable)",
    )
    parser.add_argument("--out-csv", type=Path, required=True, help="CSV to write")
    parser.add_argument("--out-png", type=Path, required=True, help="PNG to write")
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = make_parser().parse_args(argv)
    setup_logging()
    report_active(args.run, args.start, args.out_csv, args.out_png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
