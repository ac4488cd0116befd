r"""Collect PPO evaluation curves of single RMs and ensembles into tables and a plot.

    python -m pipelines.report_ppo \
        --evals results/ppo/single/seed0/eval.jsonl \
            results/ppo/ensemble_uwo/seed0/eval.jsonl ... \
        --gold results/models/gold --out-csv results/report/ppo.csv \
        --out-table results/report/ppo_summary.csv --out-png results/report/ppo.png

Each ``eval.jsonl`` is one PPO run (one objective and seed), one evaluation a
line in step order, the first at step 0 (the policy is still its reference).

``--out-csv`` has one row per objective, seed and step: ``kl`` (the sequence
KL(policy || reference) estimate, nats), ``kl_k3``, ``kl_original``,
``kl_coef``, ``proxy``, ``gold``, ``ensemble_variance``, ``rollout_reward``,
``episodes``, ``n_samples``; then, per objective, rows ``seed = mean``: the
mean over the seeds at each step all of them evaluated (``n_seeds``, and the
sample SD over seeds in ``kl_sd``, ``proxy_sd``, ``gold_sd``). Each curve's fit
of Gao et al.'s RL form ``gold(d) - gold(0) = d (alpha - beta log d)``, ``d =
sqrt(KL)`` (:func:`pipelines.common.gao_fit.fit_gao_rl`) is repeated on its
rows: ``fit_alpha``, ``fit_beta``, ``fit_r2``, ``fit_peak_kl``,
``fit_peak_gain`` (empty when ``beta <= 0``: no peak) and ``fit_gold`` (the
fitted value at that row's KL).

``--out-table`` has one row per curve (each seed, and the mean; ``n_samples``
the fewest held-out prompts of an evaluation): gold at step 0, at its peak
(step and KL) and at the last step, proxy and KL at the start and the end,
their changes, and ``gold_falls_while_proxy_rises``: the last gold is below
the peak gold while the last proxy is above the proxy at that peak.

``--out-png`` plots gold and proxy against KL and against steps, as
tlc4418/llm_optimization (Coste et al. 2024) plots its PPO runs.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.common.cli import handle_user_errors
from pipelines.common.figure_ppo import MEAN, VERIFIER, ppo_figure
from pipelines.common.figures import save_png
from pipelines.common.gao_fit import GaoRLFit, fit_gao_rl
from pipelines.common.io import InputFileError, LineProblem, atomic_open, iter_jsonl
from pipelines.common.logs import setup_logging

logger = logging.getLogger(__name__)

# fields of an eval.jsonl line the report reads, and what each must hold
INT_FIELDS = ("seed", "step", "episodes")
FLOAT_FIELDS = (
    "kl",
    "kl_k3",
    "kl_original",
    "kl_coef",
    "proxy",
    "gold",
    "ensemble_variance",
    "rollout_reward",
)
CURVE_COLUMNS = ("step", "episodes", *FLOAT_FIELDS, "n_samples")
SD_COLUMNS = ("kl_sd", "proxy_sd", "gold_sd")
FIT_COLUMNS = ("fit_alpha", "fit_beta", "fit_r2", "fit_peak_kl", "fit_peak_gain")
COLUMNS = (
    "objective",
    "seed",
    "n_seeds",
    *CURVE_COLUMNS,
    *SD_COLUMNS,
    *FIT_COLUMNS,
    "fit_gold",
)
SUMMARY_COLUMNS = (
    "objective",
    "seed",
    "n_seeds",
    "last_step",
    "n_samples",
    "kl_start",
    "kl_final",
    "proxy_start",
    "proxy_final",
    "proxy_rise",
    "gold_start",
    "gold_peak",
    "step_gold_peak",
    "kl_gold_peak",
    "proxy_at_gold_peak",
    "gold_final",
    "gold_change",
    "gold_falls_while_proxy_rises",
    *FIT_COLUMNS,
)
OBJECTIVES = ("single", "ensemble_mean", "ensemble_wco", "ensemble_uwo")


def _field(path: Path, line: int, record: dict, name: str) -> object:
    """One field of an eval line, checked; the error names file, line, field."""

    def bad(problem: str) -> InputFileError:
        return InputFileError(f"{path}: line {line}: {name}: {problem}")

    if name not in record:
        raise bad("missing")
    value = record[name]
    if name == "objective":
        if not isinstance(value, str) or not value:
            raise bad(f"expected the objective's name, got {value!r:.40}")
    elif name == "samples":
        if not isinstance(value, list):
            raise bad(f"expected a list of samples, got {value!r:.40}")
    elif name in INT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad(f"expected an integer >= 0, got {value!r:.40}")
    elif value is None:  # JSON null stands for NaN
        value = math.nan
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(f"expected a number or null, got {value!r:.40}")
    return value


def read_evals(path: Path) -> pd.DataFrame:
    """One run's eval.jsonl as a table (columns objective, seed, CURVE_COLUMNS).

    Raises:
        InputFileError: naming the file, line and field of the first problem:
            a malformed line, a missing or mistyped field, lines of another
            objective or seed, steps out of order, a first step other than 0,
            or no line at all.
    """
    path = Path(path)
    rows, first = [], 0
    for line, record in iter_jsonl(path):  # editor line numbers, blanks passed
        if isinstance(record, LineProblem):
            raise InputFileError(
                f"{path}: line {line}: {record.field}: {record.problem}"
            )
        if not isinstance(record, dict):
            raise InputFileError(f"{path}: line {line}: expected a JSON object")
        names = ("objective", *INT_FIELDS, *FLOAT_FIELDS, "samples")
        row = {name: _field(path, line, record, name) for name in names}
        row["n_samples"] = len(row.pop("samples"))
        if rows:
            for key in ("objective", "seed"):
                if row[key] != rows[0][key]:
                    raise InputFileError(
                        f"{path}: line {line}: {key}: {row[key]!r}, but line"
                        f" {first} has {rows[0][key]!r} (one run per file)"
                    )
            if row["step"] <= rows[-1]["step"]:
                raise InputFileError(
                    f"{path}: line {line}: step: {row['step']} after"
                    f" {rows[-1]['step']} (steps must increase)"
                )
        elif row["step"] != 0:
            raise InputFileError(
                f"{path}: line {line}: step: the first evaluation must be at step 0"
                f" (the reference policy), got {row['step']}"
            )
        else:
            first = line
        rows.append(row)
    if not rows:
        raise InputFileError(f"{path}: no evaluations (an empty file)")
    return pd.DataFrame(rows, columns=["objective", "seed", *CURVE_COLUMNS])


def _objective_key(objective: str) -> tuple[int, str]:
    known = objective in OBJECTIVES
    return (OBJECTIVES.index(objective) if known else len(OBJECTIVES), objective)


def mean_curve(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean (and SD) over the seeds of one objective at the steps all share.

    A NaN (a null in the file) is left out of its step's mean and SD.

    Args:
        runs: rows of one objective, its seeds' curves.

    Returns:
        Rows with ``seed = "mean"``, ``n_seeds`` and :data:`SD_COLUMNS`.
    """
    seeds = runs["seed"].unique()
    shared = runs.groupby("step")["seed"].nunique() == len(seeds)
    part = runs[runs["step"].isin(shared.index[shared])]
    if len(part) < len(runs):
        logger.warning(
            "%s: the seeds' eval steps differ; the mean keeps the %d steps all share",
            runs["objective"].iloc[0],
            int(shared.sum()),
        )
    grouped = part.groupby("step", sort=True)
    mean = grouped[[c for c in CURVE_COLUMNS if c != "step"]].mean()
    mean["n_samples"] = grouped["n_samples"].min()
    for column in SD_COLUMNS:
        mean[column] = grouped[column.removesuffix("_sd")].std(ddof=1)
    mean = mean.reset_index()
    mean.insert(0, "objective", runs["objective"].iloc[0])
    mean.insert(1, "seed", MEAN)
    mean.insert(2, "n_seeds", len(seeds))
    return mean


def curve_fit(curve: pd.DataFrame) -> GaoRLFit | None:
    """Gao et al.'s RL form fitted to one curve's gold against its KL.

    Points with a NaN KL or gold are left out; None (fit columns left empty)
    when the start's gold is missing or fewer than two KL values are above 0.
    """
    name = f"{curve['objective'].iloc[0]} seed {curve['seed'].iloc[0]}"
    finite = np.isfinite(curve["kl"]) & np.isfinite(curve["gold"])
    if not finite.iloc[0]:
        logger.warning("%s: no fit (no KL or gold at step 0)", name)
        return None
    try:
        return fit_gao_rl(curve.loc[finite, "kl"], curve.loc[finite, "gold"])
    except ValueError as err:
        logger.warning("%s: no fit (%s)", name, err)
        return None


def build_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Seed rows and mean rows per objective, each curve with its fit."""
    parts = []
    objectives = sorted(runs["objective"].unique(), key=_objective_key)
    for objective in objectives:
        seeds = runs[runs["objective"] == objective]
        for seed in sorted(seeds["seed"].unique()):
            curve = seeds[seeds["seed"] == seed].assign(seed=str(seed), n_seeds=1)
            parts.append(curve)
        parts.append(mean_curve(seeds))
    table = pd.concat(parts, ignore_index=True).reindex(columns=list(COLUMNS))
    table["seed"] = table["seed"].astype(str)
    curves = table.groupby(["objective", "seed"], sort=False).groups
    for rows in curves.values():
        fit = curve_fit(table.loc[rows])
        if fit is None:
            continue
        for column in FIT_COLUMNS:
            table.loc[rows, column] = getattr(fit, column.removeprefix("fit_"))
        table.loc[rows, "fit_gold"] = fit.predict(table.loc[rows, "kl"])
    table["episodes"] = table["episodes"].round()  # mean rows: the mean over seeds
    return table.astype(
        {"n_seeds": "int64", "step": "int64", "episodes": "int64", "n_samples": "int64"}
    )


def curve_summary(curve: pd.DataFrame) -> dict:
    """Start, peak and end of one curve (rows in step order)."""
    first, last = curve.iloc[0], curve.iloc[-1]
    gold = curve["gold"].astype(float)
    if gold.notna().any():
        peak = curve.loc[gold.idxmax()]  # the first step of the highest gold
        falls = bool(last["gold"] < peak["gold"] and last["proxy"] > peak["proxy"])
    else:
        peak, falls = pd.Series(np.nan, index=curve.columns), False
    return {
        "objective": first["objective"],
        "seed": first["seed"],
        "n_seeds": int(first["n_seeds"]),
        "last_step": int(last["step"]),
        "n_samples": int(curve["n_samples"].min()),
        "kl_start": first["kl"],
        "kl_final": last["kl"],
        "proxy_start": first["proxy"],
        "proxy_final": last["proxy"],
        "proxy_rise": last["proxy"] - first["proxy"],
        "gold_start": first["gold"],
        "gold_peak": peak["gold"],
        "step_gold_peak": peak["step"],
        "kl_gold_peak": peak["kl"],
        "proxy_at_gold_peak": peak["proxy"],
        "gold_final": last["gold"],
        "gold_change": last["gold"] - first["gold"],
        "gold_falls_while_proxy_rises": falls,
        **{column: first[column] for column in FIT_COLUMNS},
    }


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per curve of :func:`build_table` (columns SUMMARY_COLUMNS)."""
    curves = table.groupby(["objective", "seed"], sort=False)
    rows = [curve_summary(curve.sort_values("step")) for _, curve in curves]
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def report_ppo(
    evals: Sequence[Path],
    out_csv: Path,
    out_table: Path,
    out_png: Path,
    *,
    gold: str = VERIFIER,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tabulate PPO eval curves, summarise each, and plot them.

    Args:
        evals: ``eval.jsonl`` files of PPO runs, one per objective and seed.
        out_csv: the curves table to write (atomically).
        out_table: the per-curve summary to write (atomically).
        out_png: the plot to write (atomically).
        gold: what scored gold (``verifier`` or the gold RM), for the plot.

    Returns:
        The curves table (columns :data:`COLUMNS`) and the summary
        (:data:`SUMMARY_COLUMNS`): objectives in :data:`OBJECTIVES` order (then
        others by name), seeds ascending then ``mean``, steps ascending.

    Raises:
        InputFileError: no files, two files of one objective and seed, or a
            file :func:`read_evals` refuses.
    """
    if not evals:
        raise InputFileError("no PPO eval files given")
    seen: dict[tuple[str, int], Path] = {}
    runs = []
    for path in evals:
        run = read_evals(Path(path))
        key = (run["objective"].iloc[0], int(run["seed"].iloc[0]))
        if key in seen:
            raise InputFileError(
                f"{path} and {seen[key]}: both hold objective {key[0]!r} seed {key[1]}"
            )
        seen[key] = Path(path)
        runs.append(run)
    table = build_table(pd.concat(runs, ignore_index=True))
    summary = summary_table(table)
    with atomic_open(out_csv) as fh:
        table.to_csv(fh, index=False, float_format="%.6f")
    with atomic_open(out_table) as fh:
        summary.to_csv(fh, index=False, float_format="%.6f")
    save_png(ppo_figure(table, gold), Path(out_png))
    logger.info(
        "%d PPO runs -> %d rows in %s, %s and %s",
        len(evals),
        len(table),
        out_csv,
        out_table,
        out_png,
    )
    return table, summary


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`report_ppo`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.report_ppo", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--evals", nargs="+", type=Path, required=True, help="PPO eval.jsonl files"
    )
    parser.add_argument(
        "--gold",
        default=VERIFIER,
        help="what scored gold: 'verifier' or the gold RM (for the plot's label)",
    )
    parser.add_argument("--out-csv", type=Path, required=True, help="CSV to write")
    parser.add_argument(
        "--out-table", type=Path, required=True, help="summary CSV to write"
    )
    parser.add_argument("--out-png", type=Path, required=True, help="PNG to write")
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = make_parser().parse_args(argv)
    setup_logging()
    report_ppo(args.evals, args.out_csv, args.out_table, args.out_png, gold=args.gold)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
