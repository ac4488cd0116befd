r"""Best-of-n curves (proxy and gold score vs n and KL) of one RM or an ensemble.

    python -m pipelines.bon_estimate \
        --gens results/bon/gens/math.jsonl results/bon/gens/code.jsonl \
        --scores results/scores/rm-math-seed0.parquet \
        --member-ids rm-math-seed0 --out results/bon/seed0.json

    python -m pipelines.bon_estimate --gens results/bon/gens/math.jsonl \
        --scores S0.parquet S1.parquet S2.parquet --member-ids s0 s1 s2 \
        --aggregate uwo --uwo-lambda 0.5 --sample-ns '[1, 2, 4, 8]' \
        --out results/bon/ensemble_uwo.json

Inputs: candidate files (one JSON line per prompt with its ``candidates``, each
carrying a ``gold`` score) and one score store per ensemble member (written by
``score_model``, :mod:`pipelines.common.score_store`; only its candidate rows
are read, and a store scored from another version of a given gens file is
refused). Members are matched to candidates by ``(prompt_id, cand_idx)``, never
by row order or text; every member must score every candidate. Member scores are
combined per candidate (``single``: the one member as is;
``mean``/``wco``/``uwo``: :func:`pipelines.common.bon.combine`), then the
unbiased estimator of :mod:`pipelines.common.bon` gives, per draw size ``n``,
the mean over prompts of the expected proxy and gold score of the candidate
best-of-n would pick (gold always in the combined proxy's order).
Output JSON layout: see :func:`bon_estimate`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.common.bon import AGGREGATES, TIE_RULE, combine, estimate
from pipelines.common.cli import (
    add_dataclass_args,
    dataclass_from_args,
    field_help,
    handle_user_errors,
)
from pipelines.common.io import write_json
from pipelines.common.logs import log_run_header, setup_logging
from pipelines.common.score_store import load_candidates, load_member_scores

logger = logging.getLogger(__name__)

SINGLE = "single"


@dataclass(frozen=True, kw_only=True)
class BonEstimateConfig:
    """Knobs of the BoN stage (YAML section ``bon``)."""

    aggregate: str = field_help(
        "'single' (exactly one member) or an ensemble objective: 'mean', 'wco'"
        " (min over members) or 'uwo' (mean - uwo_lambda * variance)",
        default=SINGLE,
    )
    # tlc4418/llm_optimization src/bon/run_bon_pipeline.py uses
    # 1, 2, 4, ..., 4096, 6144, 8192, 12500 with N = 12,600; tiny runs have small N.
    sample_ns: tuple[int, ...] = field_help(
        "draw sizes n (JSON list); sizes above a prompt's candidate count skip it",
        default=(1, 2, 4, 8, 16),
    )
    # 0.5: the UWO weight of tlc4418/llm_optimization src/bon/run_bon_pipeline.py
    # (`uwo_weights` default); their PPO example uses 0.1 (ALGORITHMS.md 5.3).
    uwo_lambda: float = field_help(
        "UWO variance penalty (0 means none; used only by aggregate 'uwo')",
        default=0.5,
    )
    # 0: np.var, as tlc4418 src/bon/ensemble_rm.py; their PPO uses torch.var (1).
    uwo_ddof: int = field_help(
        "delta degrees of freedom of the UWO variance: 0 population, 1 sample",
        default=0,
    )

    def __post_init__(self) -> None:
        """Reject values the estimator cannot honour."""
        if self.aggregate not in (SINGLE, *AGGREGATES):
            raise ValueError(
                f"aggregate must be one of {(SINGLE, *AGGREGATES)},"
                f" got {self.aggregate!r}"
            )
        ns = tuple(self.sample_ns)
        if not ns or any(isinstance(n, bool) or int(n) != n or n < 1 for n in ns):
            raise ValueError(f"sample_ns must be ints >= 1, got {self.sample_ns!r}")
        object.__setattr__(self, "sample_ns", tuple(int(n) for n in ns))
        if not (np.isfinite(self.uwo_lambda) and self.uwo_lambda >= 0):
            raise ValueError(
                f"uwo_lambda must be finite and >= 0, got {self.uwo_lambda}"
            )
        if self.uwo_ddof not in (0, 1):
            raise ValueError(f"uwo_ddof must be 0 or 1, got {self.uwo_ddof}")


def bon_estimate(
    gens: Sequence[Path],
    scores: Sequence[Path],
    out: Path,
    *,
    cfg: BonEstimateConfig,
    member_ids: Sequence[str],
) -> dict:
    """Estimate the BoN curve of one RM or an ensemble and write it as JSON.

    The JSON (written atomically) holds:

    - ``gold_spread``: the candidates' gold mean, SD, min, max, the mean SD
      within a prompt and how many prompts' gold varies at all;
    - ``results``: ``[{n, proxy_score, gold_score, kl_bon, n_prompts}]`` over
      all prompts, ascending ``n`` (sizes above every prompt's N dropped);
    - ``per_domain``: ``{domain: [same rows]}`` over that domain's prompts;
    - ``aggregate``, ``uwo_lambda`` and ``uwo_ddof`` (null unless ``uwo``),
      ``members`` (the member ids), ``score_files``, ``gens_files``,
      ``sample_ns`` (as configured), ``n_prompts``, ``n_candidates``,
      ``candidates_per_prompt`` (``{min, max}``) and ``tie_rule``.

    Args:
        gens: candidate JSONL files.
        scores: one score store per member.
        out: the JSON file to write.
        cfg: the stage config.
        member_ids: one name per score file, same order.

    Returns:
        The written object.

    Raises:
        ValueError: on mismatched members, ``single`` with other than one
            member, or bad inputs (see :func:`load_candidates`,
            :func:`load_member_scores`).
    """
    if len(member_ids) != len(scores):
        raise ValueError(f"{len(scores)} score files but {len(member_ids)} member ids")
    if len(set(member_ids)) != len(member_ids):
        raise ValueError(f"member ids repeat: {list(member_ids)}")
    if cfg.aggregate == SINGLE and len(scores) != 1:
        raise ValueError(
            f"aggregate 'single' needs exactly one score file, got {len(scores)};"
            f" use one of {AGGREGATES} for an ensemble"
        )
    if not scores:
        raise ValueError("no score files given")
    cands = load_candidates(gens)
    members = np.stack(
        [
            load_member_scores(Path(path), cands, member_id)
            for path, member_id in zip(scores, member_ids, strict=True)
        ]
    )
    uwo = cfg.aggregate == "uwo"
    if cfg.aggregate == SINGLE:
        proxy = members[0]
    else:
        proxy = combine(
            members,
            cfg.aggregate,
            uwo_lambda=cfg.uwo_lambda if uwo else None,
            ddof=cfg.uwo_ddof,
        )
    cuts = cands.offsets[1:-1]
    proxy_rows = np.split(proxy, cuts)
    gold_rows = np.split(cands.gold, cuts)
    results = estimate(proxy_rows, gold_rows, cfg.sample_ns)
    per_domain = {}
    for domain in sorted(set(cands.domains)):
        keep = [p for p, d in enumerate(cands.domains) if d == domain]
        per_domain[domain] = estimate(
            [proxy_rows[p] for p in keep], [gold_rows[p] for p in keep], cfg.sample_ns
        )
    dropped = sorted(set(cfg.sample_ns) - {row["n"] for row in results})
    if dropped:
        logger.warning("sizes above every prompt's candidate count: %s", dropped)
    sizes = cands.sizes
    report = {
        "results": results,
        "aggregate": cfg.aggregate,
        "uwo_lambda": cfg.uwo_lambda if uwo else None,
        "uwo_ddof": cfg.uwo_ddof if uwo else None,
        "members": list(member_ids),
        "score_files": [str(p) for p in scores],
        "gens_files": [str(p) for p in gens],
        "sample_ns": [int(n) for n in cfg.sample_ns],
        "n_prompts": len(cands.prompt_ids),
        "n_candidates": len(cands.gold),
        "candidates_per_prompt": {"min": int(sizes.min()), "max": int(sizes.max())},
        "gold_spread": gold_spread(cands.gold, cuts),
        "tie_rule": TIE_RULE,
        "per_domain": per_domain,
    }
    write_json(out, report)
    top = results[-1]
    logger.info(
        "%s over %d prompts (N %d..%d): n=%d proxy %.4f gold %.4f -> %s",
        cfg.aggregate,
        report["n_prompts"],
        sizes.min(),
        sizes.max(),
        top["n"],
        top["proxy_score"],
        top["gold_score"],
        out,
    )
    return report


def gold_spread(gold: np.ndarray, cuts: np.ndarray) -> dict[str, float]:
    """How much the gold varies: over all candidates and within a prompt.

    A gold that does not vary among a prompt's candidates (a 0/1 verifier on
    a policy that never solves the task) leaves best-of-n nothing to gain.
    """
    within = [float(np.std(g)) for g in np.split(gold, cuts)]
    return {
        "mean": float(np.mean(gold)),
        "std": float(np.std(gold)),
        "min": float(np.min(gold)),
        "max": float(np.max(gold)),
        "within_prompt_std": float(np.mean(within)),
        "prompts_with_spread": int(sum(w > 0 for w in within)),
    }


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`bon_estimate`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.bon_estimate", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--gens", nargs="+", type=Path, required=True, help="candidate JSONL files"
    )
    parser.add_argument(
        "--scores",
        nargs="+",
        type=Path,
        required=True,
        help="score stores (results/scores/<model_id>.parquet), one per member",
    )
    parser.add_argument(
        "--member-ids",
        nargs="+",
        required=True,
        help="one id per score file, same order",
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON to write")
    add_dataclass_args(parser, BonEstimateConfig)
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = make_parser().parse_args(argv)
    setup_logging()
    cfg = dataclass_from_args(BonEstimateConfig, args)
    log_run_header(
        logger,
        cfg,
        gens=[str(p) for p in args.gens],
        scores=[str(p) for p in args.scores],
        member_ids=args.member_ids,
        out=str(args.out),
    )
    bon_estimate(args.gens, args.scores, args.out, cfg=cfg, member_ids=args.member_ids)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
