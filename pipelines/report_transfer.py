r"""Collect reward-transfer n-curves into a table and a plot (ALGORITHMS.md 6.3, 6.5).

    python -m pipelines.report_transfer \
        --run code math 16 0 results/eval/transfer/code-math/n16/seed0.json \
        --run code math 64 0 results/eval/transfer/code-math/n64/seed0.json ... \
        --zero-shot code math results/eval/rm/code/math-test.json \
        --ground-truth math 60000 results/eval/rm/scratch-math/math-test.json \
        --out-csv results/report/transfer.csv --out-png results/report/transfer.png

Every JSON is an ``eval_rm`` result on the TARGET domain's test split (its
top-level ``accuracy`` and ``n_pairs``). ``--run SOURCE TARGET N SEED JSON``: a
source RM fine-tuned on a seeded draw of N target pairs (``train_rm
--max-pairs N --subset-seed SEED``); ``--zero-shot SOURCE TARGET JSON``: the
source RM as it is (the n-curve's point n = 0); ``--ground-truth TARGET N_T
JSON``: the target's SFT model with a new head trained on all N_T target pairs.

Per (source, target), the mean curve (zero-shot, then the mean over seeds at
each N) gives N_F, the first n at which it reaches the ground truth's accuracy
(linear interpolation between points), and transferability ``1 - N_F / N_T``
(:mod:`pipelines.common.transfer`); "not reached" when no point gets there.

``--out-csv`` has, in this order per target: its ``ground_truth`` row; per
source, the ``zero_shot`` row, per N the ``run`` rows (one per seed) and their
``mean`` row (``accuracy_std``: the sample SD over seeds, ddof 1, empty with
one seed), then the ``summary`` row (``gt_accuracy``, ``n_t``, ``n_f``,
``transferability``, ``reached``; ``n_f`` and ``transferability`` empty when
not reached). ``--out-png`` draws the curves per target and a source x target
heatmap of transferability (:mod:`pipelines.common.figure_transfer`).
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipelines.common.cli import UserError, handle_user_errors
from pipelines.common.figure_transfer import transfer_figure
from pipelines.common.figures import save_png
from pipelines.common.io import (
    InputFileError,
    atomic_open,
    read_json_object,
)
from pipelines.common.logs import setup_logging
from pipelines.common.transfer import pairs_to_match, transferability

logger = logging.getLogger(__name__)

KINDS = ("ground_truth", "zero_shot", "run", "mean", "summary")
COLUMNS = (
    "kind",
    "source",
    "target",
    "n",
    "seed",
    "n_seeds",
    "accuracy",
    "accuracy_std",
    "n_test_pairs",
    "gt_accuracy",
    "n_t",
    "n_f",
    "transferability",
    "reached",
    "eval_json",
)
INT_COLUMNS = ("n", "seed", "n_seeds", "n_test_pairs", "n_t")


class TransferArgError(UserError, ValueError):
    """A bad --run / --zero-shot / --ground-truth value or combination."""


@dataclass(frozen=True)
class Point:
    """One eval_rm result on a target's test split, and what produced it."""

    kind: str  # ground_truth, zero_shot or run
    source: str | None  # None for the ground truth
    target: str
    n: int  # target pairs trained on: 0 zero-shot, N_T ground truth
    seed: int | None
    path: Path
    accuracy: float = math.nan
    n_test_pairs: int = 0


def read_accuracy(path: Path) -> tuple[float, int]:
    """The top-level ``accuracy`` and ``n_pairs`` of an ``eval_rm`` result.

    Raises:
        MissingInputError: the file does not exist.
        InputFileError: naming the file and key: not a JSON object, ``accuracy``
            missing or not a number in [0, 1], ``n_pairs`` missing or not an
            integer >= 1.
    """
    path = Path(path)
    result = read_json_object(path)
    for key in ("accuracy", "n_pairs"):
        if key not in result:
            raise InputFileError(f"{path}: key '{key}': missing (an eval_rm result?)")
    acc, n = result["accuracy"], result["n_pairs"]
    if isinstance(acc, bool) or not isinstance(acc, int | float) or not 0 <= acc <= 1:
        raise InputFileError(f"{path}: key 'accuracy': expected 0..1, got {acc!r:.40}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputFileError(f"{path}: key 'n_pairs': expected >= 1, got {n!r:.40}")
    return float(acc), n


def _int(value: str, what: str, flag: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise TransferArgError(
            f"{flag}: {what} must be an integer >= {minimum}: {value!r}"
        )
    return number


def _n_t(value: str) -> int:
    """N_T as given, or the ``n_pairs`` of the ground truth's ``metrics.json``."""
    if value.isdigit():
        return _int(value, "N_T", "--ground-truth", 1)
    path = Path(value)
    n = read_json_object(path).get("n_pairs")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputFileError(f"{path}: key 'n_pairs': expected >= 1, got {n!r:.40}")
    return n


def parse_points(
    runs: Sequence[Sequence[str]],
    zero_shot: Sequence[Sequence[str]],
    ground_truth: Sequence[Sequence[str]],
) -> list[Point]:
    """The CLI's value lists as points (not yet read), checked for duplicates.

    Raises:
        TransferArgError: a non-integer or out-of-range N, SEED or N_T, an
            empty name, or two inputs for one (source, target, n, seed).
    """
    points = [
        Point(
            "run", s, t, _int(n, "N", "--run", 1), _int(k, "SEED", "--run", 0), Path(p)
        )
        for s, t, n, k, p in runs
    ]
    points += [Point("zero_shot", s, t, 0, None, Path(p)) for s, t, p in zero_shot]
    points += [
        Point("ground_truth", None, t, _n_t(n), None, Path(p))
        for t, n, p in ground_truth
    ]
    seen: dict[tuple, Path] = {}
    for point in points:
        if "" in (point.source, point.target):
            raise TransferArgError(f"{point.path}: empty source or target name")
        key = (point.kind, point.source, point.target) + (
            (point.n, point.seed) if point.kind == "run" else ()
        )
        if key in seen:
            raise TransferArgError(
                f"{seen[key]} and {point.path}: both are the"
                f" {' '.join(str(k) for k in key if k is not None)}"
            )
        seen[key] = point.path
    return points


def _row(point: Point) -> dict:
    return {
        "kind": point.kind,
        "source": point.source,
        "target": point.target,
        "n": point.n,
        "seed": point.seed,
        "n_seeds": 1,
        "accuracy": point.accuracy,
        "n_test_pairs": point.n_test_pairs,
        "n_t": point.n if point.kind == "ground_truth" else None,
        "eval_json": str(point.path),
    }


def _mean_row(source: str, target: str, n: int, seeds: list[Point]) -> dict:
    accs = [p.accuracy for p in seeds]
    return {
        "kind": "mean",
        "source": source,
        "target": target,
        "n": n,
        "n_seeds": len(accs),
        "accuracy": statistics.fmean(accs),
        "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else None,
        "n_test_pairs": min(p.n_test_pairs for p in seeds),
    }


def _summary_row(source: str, target: str, curve: list[dict], gt: Point) -> dict:
    n_f = pairs_to_match(
        [r["n"] for r in curve], [r["accuracy"] for r in curve], gt.accuracy
    )
    return {
        "kind": "summary",
        "source": source,
        "target": target,
        "gt_accuracy": gt.accuracy,
        "n_t": gt.n,
        "n_f": n_f,
        "transferability": transferability(n_f, gt.n),
        "reached": n_f is not None,
    }


def _pair_rows(source: str, target: str, points: list[Point], gt: Point) -> list[dict]:
    """Zero-shot, run and mean rows of one (source, target), then its summary."""
    mine = [p for p in points if (p.source, p.target) == (source, target)]
    zero = [_row(p) for p in mine if p.kind == "zero_shot"]
    if not zero:
        logger.warning(
            "%s -> %s: no --zero-shot; the curve starts at its least n", source, target
        )
    rows, curve = list(zero), list(zero)
    for n in sorted({p.n for p in mine if p.kind == "run"}):
        seeds = sorted(
            (p for p in mine if p.kind == "run" and p.n == n), key=lambda p: p.seed
        )
        rows += [_row(p) for p in seeds]
        curve.append(_mean_row(source, target, n, seeds))
        rows.append(curve[-1])
    return [*rows, _summary_row(source, target, curve, gt)]


def build_table(points: Sequence[Point]) -> pd.DataFrame:
    """The report's rows (columns :data:`COLUMNS`) from read points.

    Raises:
        TransferArgError: a target with runs or a zero-shot but no ground truth.
    """
    truths = {p.target: p for p in points if p.kind == "ground_truth"}
    rows = []
    for target in sorted({p.target for p in points}):
        sources = sorted({p.source for p in points if p.target == target and p.source})
        if sources and target not in truths:
            raise TransferArgError(
                f"target {target!r}: no --ground-truth (needed for N_F of {sources})"
            )
        rows.append(_row(truths[target]))
        for source in sources:
            rows += _pair_rows(source, target, list(points), truths[target])
    table = pd.DataFrame(rows).reindex(columns=list(COLUMNS))
    types = {c: "Int64" for c in INT_COLUMNS} | {"reached": "boolean"}
    return table.astype(types)


def report_transfer(
    runs: Sequence[Sequence[str]],
    zero_shot: Sequence[Sequence[str]],
    ground_truth: Sequence[Sequence[str]],
    out_csv: Path,
    out_png: Path,
) -> pd.DataFrame:
    """Read the eval results, tabulate the n-curves and transferability, plot them.

    Args:
        runs: ``(SOURCE, TARGET, N, SEED, EVAL_JSON)`` per fine-tuned source RM.
        zero_shot: ``(SOURCE, TARGET, EVAL_JSON)`` per source RM as it is.
        ground_truth: ``(TARGET, N_T, EVAL_JSON)`` per target.
        out_csv: the table to write (atomically).
        out_png: the plot to write (atomically).

    Returns:
        The table (columns :data:`COLUMNS`, rows in the module docstring's order).

    Raises:
        TransferArgError: see :func:`parse_points` and :func:`build_table`;
            also when nothing at all is given.
        InputFileError: an eval result :func:`read_accuracy` refuses.
    """
    if not (runs or zero_shot):
        raise TransferArgError("no --run and no --zero-shot given: nothing to report")
    points = []
    for point in parse_points(runs, zero_shot, ground_truth):
        acc, n_pairs = read_accuracy(point.path)
        points.append(
            Point(**{**vars(point), "accuracy": acc, "n_test_pairs": n_pairs})
        )
    table = build_table(points)
    with atomic_open(out_csv) as fh:
        table.to_csv(fh, index=False, float_format="%.6f")
    save_png(transfer_figure(table), Path(out_png))
    summary = table[table["kind"] == "summary"]
    for _, row in summary.iterrows():
        logger.info(
            "%s -> %s: N_F %s of N_T %d, transferability %s",
            row["source"],
            row["target"],
            "not reached" if pd.isna(row["n_f"]) else f"{row['n_f']:.1f}",
            row["n_t"],
            "-" if pd.isna(row["transferability"]) else f"{row['transferability']:.3f}",
        )
    logger.info("%d eval results -> %s and %s", len(points), out_csv, out_png)
    return table


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`report_transfer`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.report_transfer", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--run",
        nargs=5,
        action="append",
        default=[],
        metavar=("SOURCE", "TARGET", "N", "SEED", "EVAL_JSON"),
        help="a source RM fine-tuned on N target pairs (draw SEED), on the target test",
    )
    parser.add_argument(
        "--zero-shot",
        nargs=3,
        action="append",
        default=[],
        metavar=("SOURCE", "TARGET", "EVAL_JSON"),
        help="the source RM as it is on the target test (n = 0)",
    )
    parser.add_argument(
        "--ground-truth",
        nargs=3,
        action="append",
        default=[],
        metavar=("TARGET", "N_T", "EVAL_JSON"),
        help="the target SFT model + new head trained on all N_T target pairs"
        " (N_T a number, or its train_rm metrics.json: n_pairs)",
    )
    parser.add_argument("--out-csv", type=Path, required=True, help="CSV to write")
    parser.add_argument("--out-png", type=Path, required=True, help="PNG to write")
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = make_parser().parse_args(argv)
    setup_logging()
    report_transfer(
        args.run, args.zero_shot, args.ground_truth, args.out_csv, args.out_png
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
