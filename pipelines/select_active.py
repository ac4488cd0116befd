r"""Select the next pairs to label: by the RM's uncertainty, or at random.

    python -m pipelines.select_active --strategy uncertainty --k 2500 \
        --seed 0 --iteration 1 --pool results/data/math/train.jsonl \
        --model results/models/rm/general/seed0 \
        --out-selected results/active/math/uncertainty/seed0/iter1/selected.jsonl \
        --out-rest results/active/math/uncertainty/seed0/iter1/rest.jsonl \
        --out-report results/active/math/uncertainty/seed0/iter1/selection.json

One iteration of active learning (ALGORITHMS.md section 6.4, eth-dl-rewards
``active_data_selection.py``). The pool (standard pair records) is shuffled
with a seeded generator and cut to ``--pool-cap`` pairs (the original:
``shuffle(42)``, 40,000; pairs beyond the cap are dropped: neither selected
nor in the rest). Then ``--k`` pairs are drawn without replacement:

- ``uncertainty``: every pair of the capped pool is scored by ``--model``
  (chosen and rejected conversations, encoded with ``--max-length`` and
  ``--truncation-side`` as YAML ``eval``), margin ``m = |r(chosen) -
  r(rejected)|``, and pairs are drawn successively with probability
  proportional to ``exp(-m / T)`` (``--temperature``; 0: the k smallest
  margins; ``inf``: uniform);
- ``random``: uniformly, no model (torch is not imported).

Both draw from ``numpy.random.default_rng`` seeded by ``(--seed,
--iteration)`` (:mod:`pipelines.common.active`; the original seeded numpy's
global generator with 42 and called ``np.random.choice(replace=False, p=p)``,
the same successive-sampling process).

Outputs: ``--out-selected`` (the k records, in draw order) and ``--out-rest``
(the rest of the capped pool, in pool order), written together (neither
appears without the other), and ``--out-report``, a JSON: strategy, k,
temperature, seed, iteration, pool sizes before and after the cap, each
selected pair's id, margin and probability of being drawn first, mean and
median margins of the selected pairs and of the pool, the model and inputs.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipelines.common.active import (
    Draw,
    draw_rng,
    draw_seed,
    margin_stats,
    pair_margins,
    pool_seed,
    select,
    select_uniform,
    shuffle_and_cap,
)
from pipelines.common.cli import (
    UserError,
    add_dataclass_args,
    dataclass_from_args,
    field_help,
    handle_user_errors,
)
from pipelines.common.io import write_json, write_jsonl_all
from pipelines.common.logs import (
    PROGRESS_EVERY_S,
    add_progress_arg,
    library_versions,
    log_run_header,
    setup_logging,
)
from pipelines.common.records import read_pairs
from pipelines.common.score_store import file_sha256
from pipelines.common.scoring import DTYPE_NAMES, SIDES, InputSettings, ScorerConfig

logger = logging.getLogger(__name__)

STRATEGIES = ("uncertainty", "random")
VERSIONED_PACKAGES = ("numpy", "torch", "transformers", "tokenizers")
ORIGINAL = (
    "eth-dl-rewards active_data_selection.py: dataset.shuffle(42), first 40000"
    " pairs, margins under the current RM, np.random.seed(42) then"
    " np.random.choice(n, k, replace=False, p=softmax(-m / T))"
)


class ActiveConfigError(UserError, ValueError):
    """A setting of the selection is out of range."""


class ActiveSelectionError(UserError, ValueError):
    """The inputs cannot give the selection asked for (k above the pool...)."""


@dataclass(frozen=True, kw_only=True)
class SelectActiveConfig:
    """Settings of one selection (YAML ``active`` and ``eval`` sections)."""

    strategy: str = field_help(
        "'uncertainty': draw pairs with small RM margins more often; 'random':"
        " uniformly (no model)",
        choices=STRATEGIES,
        default="uncertainty",
    )
    k: int = field_help("pairs to select (the original: 2500)", default=2500)
    temperature: float = field_help(
        "T of P(i) ∝ exp(-margin_i / T); 0: the k smallest margins; inf: uniform",
        default=1.0,
    )
    pool_cap: int = field_help(
        "the shuffled pool is cut to this many pairs; the others are dropped",
        default=40000,
    )
    seed: int = field_help("run seed (the shuffle and the draw)", default=0)
    iteration: int = field_help(
        "active-learning iteration, from 1 (seeds its own streams)", default=1
    )
    max_length: int = field_help("maximum tokens per sequence", default=1024)
    truncation_side: str = field_help(
        "'left' keeps the end of a long conversation (the reply)",
        choices=SIDES,
        default="left",
    )
    batch_size: int = field_help("sequences per forward pass", default=16)
    dtype: str = field_help(
        "float32, bfloat16 or float16", choices=DTYPE_NAMES, default="float32"
    )
    device: str = field_help(
        "'auto' (CUDA if available, else CPU), 'cpu', 'cuda:0'...", default="auto"
    )

    def __post_init__(self) -> None:
        """Reject values the selection cannot honour."""
        checks = (
            ("strategy", self.strategy in STRATEGIES, f"one of {STRATEGIES}"),
            ("k", self.k >= 1, ">= 1"),
            ("temperature", self.temperature >= 0, ">= 0 (0: greedy; inf: uniform)"),
            ("pool_cap", self.pool_cap >= 1, ">= 1"),
            ("seed", self.seed >= 0, ">= 0"),
            ("iteration", self.iteration >= 1, ">= 1"),
            ("max_length", self.max_length >= 1, ">= 1"),
            ("truncation_side", self.truncation_side in SIDES, f"one of {SIDES}"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("dtype", self.dtype in DTYPE_NAMES, f"one of {DTYPE_NAMES}"),
        )
        for name, ok, want in checks:  # NaN fails every comparison: refused too
            if not ok:
                raise ActiveConfigError(
                    f"{name} must be {want}, got {getattr(self, name)!r}"
                )

    def settings(self) -> InputSettings:
        """How the pool's conversations are encoded."""
        return InputSettings(
            max_length=self.max_length, truncation_side=self.truncation_side
        )

    def scorer(self) -> ScorerConfig:
        """How the model is loaded."""
        return ScorerConfig(
            batch_size=self.batch_size,
            dtype=self.dtype,
            device=self.device,
            seed=self.seed,
            reuse=False,
        )


def json_number(value: float) -> float | str:
    """``value``, or ``"inf"`` (JSON has no infinity)."""
    return "inf" if math.isinf(value) else value


def score_margins(
    model: str,
    records: list[dict],
    cfg: SelectActiveConfig,
    *,
    progress_every: float = PROGRESS_EVERY_S,
) -> tuple[np.ndarray, dict]:
    """``|r(chosen) - r(rejected)|`` of each record under ``model``.

    All chosen and rejected conversations are one input of
    :func:`pipelines.common.scoring.score_inputs` (pooled length-sorted
    batches). Imports torch.

    Returns:
        The margins (float64, in record order) and what the report records of
        the scoring (load, tokenizer, settings, chat format, truncations).

    Raises:
        ActiveSelectionError: when a pair gets a score that is not finite.
    """
    from pipelines.common.scoring import ScoringInput, load_scorer, score_inputs

    scorer = load_scorer(model, cfg.scorer())
    settings = cfg.settings()
    conversations = [r["chosen"] for r in records] + [r["rejected"] for r in records]
    got = score_inputs(
        scorer,
        [ScoringInput("pool", conversations, settings)],
        what=f"select_active {model}",
        every_s=progress_every,
    )["pool"]
    n = len(records)
    try:
        margins = pair_margins(got.scores[:n], got.scores[n:])
    except ValueError as err:
        raise ActiveSelectionError(
            f"{model}: {err}; try --dtype float32 ({cfg.dtype} now)"
        ) from err
    info = {
        "load": scorer.record(),
        "tokenizer": scorer.tokenizer_name,
        "settings": asdict(settings),
        "chat_format": got.chat_format.record(with_template=False),
        "n_sequences": 2 * n,
        "n_truncated_chosen": int(got.truncated[:n].sum()),
        "n_truncated_rejected": int(got.truncated[n:].sum()),
    }
    return margins, info


def _check_inputs(model: str | None, cfg: SelectActiveConfig, outs: list[Path]) -> None:
    if cfg.strategy == "uncertainty" and model is None:
        raise ActiveSelectionError(
            "strategy 'uncertainty' scores the pool: give --model (the current RM)"
        )
    if cfg.strategy == "random" and model is not None:
        raise ActiveSelectionError(
            f"strategy 'random' uses no model, but --model {model} was given;"
            " leave it out (a random selection must not depend on a model)"
        )
    resolved = [Path(p).resolve() for p in outs]
    if len(set(resolved)) < len(resolved):
        raise ActiveSelectionError(
            f"the outputs must be three different files: {[str(p) for p in outs]}"
        )


def _selected_rows(
    draw: Draw, capped: list[dict], order: np.ndarray, margins: np.ndarray | None
) -> list[dict]:
    rows = []
    for pos, p_first in zip(draw.positions, draw.first_probability, strict=True):
        rows.append(
            {
                "id": capped[pos]["id"],
                "capped_position": int(pos),  # in the shuffled, capped pool
                "pool_index": int(order[pos]),  # 0-based record of the pool file
                "margin": None if margins is None else float(margins[pos]),
                "p_first": float(p_first),
            }
        )
    return rows


def select_active(
    pool: Path,
    out_selected: Path,
    out_rest: Path,
    out_report: Path,
    *,
    cfg: SelectActiveConfig,
    model: str | None = None,
    progress_every: float = PROGRESS_EVERY_S,
) -> dict:
    """Shuffle and cap the pool, draw ``cfg.k`` pairs, write the three outputs.

    Args:
        pool: standard pair records (JSON lines).
        out_selected: the selected records, in draw order.
        out_rest: the rest of the capped pool, in pool order.
        out_report: the selection JSON.
        cfg: the settings.
        model: the current RM (folder or hub id); required for
            ``uncertainty``, refused for ``random``.
        progress_every: seconds between two progress lines of the scoring.

    Returns:
        The selection report (what ``out_report`` holds).

    Raises:
        UserError: no model for ``uncertainty`` or one for ``random``, outputs
            that are one file, a bad pool record (naming file, row, field),
            ``k`` above the capped pool, a score that is not finite.
    """
    _check_inputs(model, cfg, [out_selected, out_rest, out_report])
    records = read_pairs(pool)
    order = shuffle_and_cap(
        len(records), cap=cfg.pool_cap, seed=cfg.seed, iteration=cfg.iteration
    )
    capped = [records[i] for i in order]
    if cfg.k > len(capped):
        raise ActiveSelectionError(
            f"--k {cfg.k} exceeds the pool: {pool} holds {len(records)} pairs,"
            f" {len(capped)} after the cap of {cfg.pool_cap}"
        )
    logger.info(
        "%s: %d pairs, %d after shuffling and the cap of %d",
        pool,
        len(records),
        len(capped),
        cfg.pool_cap,
    )
    rng = draw_rng(cfg.seed, cfg.iteration)
    margins, scoring = None, None
    if cfg.strategy == "uncertainty":
        assert model is not None  # _check_inputs
        margins, scoring = score_margins(
            model, capped, cfg, progress_every=progress_every
        )
        draw = select(margins, cfg.k, temperature=cfg.temperature, rng=rng)
    else:
        draw = select_uniform(len(capped), cfg.k, rng=rng)
    taken = np.zeros(len(capped), dtype=bool)
    taken[draw.positions] = True
    selected = [capped[p] for p in draw.positions]
    rest = [rec for rec, t in zip(capped, taken, strict=True) if not t]
    stats = None
    if margins is not None:
        stats = {
            "selected": margin_stats(margins[draw.positions]),
            "pool": margin_stats(margins),
        }
    report = {
        "strategy": cfg.strategy,
        "k": cfg.k,
        "temperature": json_number(cfg.temperature),
        "seed": cfg.seed,
        "iteration": cfg.iteration,
        "config": {**asdict(cfg), "temperature": json_number(cfg.temperature)},
        "model": None if model is None else str(model),
        "inputs": {
            "pool": {"path": str(pool), "sha256": file_sha256(pool)},
            "model": None if model is None else str(model),
        },
        "pool": {
            "n_records": len(records),
            "cap": cfg.pool_cap,
            "n_capped": len(capped),
            "n_dropped": len(records) - len(capped),
            "shuffle_seed": pool_seed(cfg.seed, cfg.iteration),
        },
        "draw_seed": draw_seed(cfg.seed, cfg.iteration),
        "n_selected": len(selected),
        "n_rest": len(rest),
        "margins": stats,
        "selected": _selected_rows(draw, capped, order, margins),
        "scoring": scoring,
        "original": ORIGINAL,
        "versions": library_versions(VERSIONED_PACKAGES),
    }
    write_jsonl_all({Path(out_selected): selected, Path(out_rest): rest})
    write_json(out_report, report)
    logger.info(
        "%s, T=%s: %d selected -> %s, %d rest -> %s%s",
        cfg.strategy,
        cfg.temperature,
        len(selected),
        out_selected,
        len(rest),
        out_rest,
        ""
        if stats is None
        else f"; mean margin {stats['selected']['mean']:.4f} selected vs"
        f" {stats['pool']['mean']:.4f} pool",
    )
    return report


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`select_active`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.select_active",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[2:8]),
    )
    parser.add_argument("--pool", type=Path, required=True, help="pair records")
    parser.add_argument(
        "--model",
        default=None,
        help="the current RM (folder or hub id): required for uncertainty,"
        " refused for random",
    )
    parser.add_argument(
        "--out-selected", type=Path, required=True, help="selected records to write"
    )
    parser.add_argument(
        "--out-rest", type=Path, required=True, help="the rest of the capped pool"
    )
    parser.add_argument(
        "--out-report", type=Path, required=True, help="selection JSON to write"
    )
    add_progress_arg(parser)
    add_dataclass_args(parser, SelectActiveConfig)
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = make_parser().parse_args(argv)
    setup_logging()
    cfg = dataclass_from_args(SelectActiveConfig, args)
    log_run_header(
        logger,
        cfg,
        pool=str(args.pool),
        model=args.model,
        out_selected=str(args.out_selected),
        out_rest=str(args.out_rest),
        out_report=str(args.out_report),
        versions=library_versions(VERSIONED_PACKAGES),
    )
    select_active(
        args.pool,
        args.out_selected,
        args.out_rest,
        args.out_report,
        cfg=cfg,
        model=args.model,
        progress_every=args.progress_every,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
