"""Read and cross-check the official RewardBench package's result files.

The package writes a results JSON (overall and per-subset accuracy) and a
per-pair JSONL; :func:`convert_results` recomputes the per-subset counts from
the pairs, checks them against the package's own numbers, and weights the
sections as :mod:`pipelines.common.rewardbench` does (xstest weights chosen by
the caller, as ``eval.xstest_weights`` for our own evaluator). Standard library
only: it runs in the package's own env.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipelines.common import rewardbench
from pipelines.common.rewardbench_staging import CORE_DATASET

logger = logging.getLogger(__name__)


class RewardBenchResultError(ValueError):
    """The package's result files are missing, malformed or incomplete."""


def _number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and not (isinstance(value, float) and math.isnan(value))
    )


def read_official(results_path: Path, outputs_path: Path) -> tuple[dict, list[dict]]:
    """Read the package's results JSON and per-pair JSONL.

    Args:
        results_path: ``{output_dir}{model}.json``.
        outputs_path: ``{output_dir}/{model}_outputs.jsonl``.

    Returns:
        ``(results, rows)``.

    Raises:
        RewardBenchResultError: naming the file (and line) on a missing or
            unreadable file.
    """
    for path in (results_path, outputs_path):
        if not path.is_file():
            raise RewardBenchResultError(
                f"{path}: missing; rewardbench wrote no such file (see its log)"
            )
    try:
        official = json.loads(results_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise RewardBenchResultError(f"{results_path}: not JSON ({exc})") from None
    if not isinstance(official, dict):
        raise RewardBenchResultError(f"{results_path}: not a JSON object")
    rows = []
    with open(outputs_path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise RewardBenchResultError(
                    f"{outputs_path}:{lineno}: not JSON ({exc})"
                ) from None
            if not isinstance(row, dict):
                raise RewardBenchResultError(
                    f"{outputs_path}:{lineno}: not a JSON object"
                )
            rows.append(row)
    return official, rows


def convert_results(
    official: Mapping[str, object],
    rows: Sequence[Mapping[str, object]],
    *,
    results_path: Path,
    outputs_path: Path,
    xstest_weights: str = "corrected",
) -> dict:
    """Per-subset, section and overall scores from the package's results.

    Per-subset counts come from the per-pair rows (``results`` is 1 when
    ``scores_chosen > scores_rejected``) and must agree with the package's
    ``extra_results`` accuracies, ``num_prompts`` and ``accuracy``; all 23 core
    subsets must be present. Sections are computed from ``extra_results``
    with :func:`pipelines.common.rewardbench.summarize` (the package only logs
    its ``calculate_scores_per_section``).

    Args:
        official: the results JSON.
        rows: the per-pair JSONL rows.
        results_path: named in errors.
        outputs_path: named in errors.
        xstest_weights: ``"corrected"`` (refuse 154 / respond 250, rewardbench
            0.1.4 constants.py) or ``"legacy"`` (250 / 154, RLHFlow, DogeRM).

    Returns:
        ``n_pairs``, ``accuracy``, ``subsets``, ``sections``, ``overall``,
        ``score`` and ``pairs``.

    Raises:
        RewardBenchResultError: naming the file and field that is missing,
            malformed or inconsistent.
    """
    for field in ("accuracy", "num_prompts"):
        if not _number(official.get(field)):
            raise RewardBenchResultError(
                f"{results_path}: field {field!r} missing or not a number"
                f" (got {official.get(field)!r})"
            )
    extra = official.get("extra_results")
    if not isinstance(extra, Mapping) or not extra:
        raise RewardBenchResultError(
            f"{results_path}: field 'extra_results' (per-subset accuracies) is"
            f" {extra!r}; the package fills it only for --dataset {CORE_DATASET}"
        )
    for subset, acc in extra.items():
        if not _number(acc) or not 0.0 <= float(acc) <= 1.0:
            raise RewardBenchResultError(
                f"{results_path}: field 'extra_results.{subset}' is {acc!r},"
                " not an accuracy"
            )
    core = [s for names in rewardbench.SECTIONS.values() for s in names]
    missing = [s for s in core if s not in extra]
    if missing:
        raise RewardBenchResultError(
            f"{results_path}: field 'extra_results' lacks {len(missing)} of the"
            f" {len(core)} RewardBench subsets: {', '.join(missing)}"
        )
    counts: dict[str, list[int]] = {}
    pairs = []
    for lineno, row in enumerate(rows, 1):
        for field in ("results", "subset", "scores_chosen", "scores_rejected"):
            if field not in row:
                raise RewardBenchResultError(
                    f"{outputs_path}:{lineno}: field {field!r} missing"
                )
        result, subset = row["results"], row["subset"]
        if result not in (0, 1) or isinstance(result, bool):
            raise RewardBenchResultError(
                f"{outputs_path}:{lineno}: field 'results' is {result!r}, not 0 or 1"
            )
        if not isinstance(subset, str):
            raise RewardBenchResultError(
                f"{outputs_path}:{lineno}: field 'subset' is {subset!r}, not a name"
            )
        got = counts.setdefault(subset, [0, 0])
        got[0] += int(result)
        got[1] += 1
        pairs.append(
            {
                "id": row.get("id", lineno - 1),
                "subset": subset,
                "chosen": row["scores_chosen"],
                "rejected": row["scores_rejected"],
            }
        )
    if len(rows) != official["num_prompts"]:
        raise RewardBenchResultError(
            f"{outputs_path}: {len(rows)} pairs but {results_path} field"
            f" 'num_prompts' is {official['num_prompts']}"
        )
    if set(counts) != set(extra):
        raise RewardBenchResultError(
            f"{outputs_path}: subsets {sorted(counts)} differ from {results_path}"
            f" field 'extra_results' {sorted(extra)}"
        )
    subsets: dict[str, dict[str, float | int]] = {}
    for subset in sorted(counts):
        correct, n = counts[subset]
        if not math.isclose(correct / n, float(extra[subset]), abs_tol=1e-9):
            raise RewardBenchResultError(
                f"{outputs_path}: subset {subset} has {correct}/{n} correct pairs"
                f" but {results_path} field 'extra_results.{subset}' is"
                f" {extra[subset]}"
            )
        subsets[subset] = {"n": n, "n_correct": correct, "accuracy": correct / n}
    n_correct = sum(c for c, _ in counts.values())
    if not math.isclose(
        n_correct / len(rows), float(official["accuracy"]), abs_tol=1e-9
    ):
        raise RewardBenchResultError(
            f"{outputs_path}: {n_correct}/{len(rows)} correct pairs but"
            f" {results_path} field 'accuracy' is {official['accuracy']}"
        )
    unknown = sorted(s for s in counts if rewardbench.section_of(s) is None)
    if unknown:
        logger.warning("subsets outside the four sections (not scored): %s", unknown)
    summary = rewardbench.summarize(
        {s: float(extra[s]) for s in extra}, xstest_weights=xstest_weights
    )
    sections = {
        name: {
            "n": sum(subsets[s]["n"] for s in names if s in subsets),
            "accuracy": summary["sections"][name],
        }
        for name, names in rewardbench.SECTIONS.items()
    }
    overall = {"pooled": float(official["accuracy"]), **summary["overall"]}
    return {
        "n_pairs": len(rows),
        "accuracy": float(official["accuracy"]),
        "subsets": subsets,
        "sections": sections,
        "overall": overall,
        "score": summary["overall"]["sections_mean"],
        "pairs": pairs,
    }
