r"""Pairwise accuracy of one model on one benchmark, per subset and section.

    python -m pipelines.eval_rm --scores results/scores/rm-math-seed0.parquet \
        --benchmark-name math-test \
        --benchmark '{"kind": "standard", "path": "results/data/math/test.jsonl"}' \
        --out results/eval/rm-math-seed0/math-test.json

Torch-free: the scores come from the model's store (:mod:`pipelines.score_model`
scores every benchmark of a model in one job, see
:mod:`pipelines.common.score_store`); this stage reloads the benchmark (a plain
path stands for ``{"kind": "standard", "path": ...}``, specs as in
:mod:`pipelines.common.benchmarks`), checks that the store scored this very
benchmark (same spec, same file bytes, same pair ids) with the settings given
here (``--max-length``, ``--truncation-side``, ``--chat-template``,
``--system-prompt``, YAML ``eval``), and writes the eval JSON.

A pair is correct when ``r_chosen > r_rejected`` (strict, as RewardBench and
Auto-J score it); an exact tie scores 0, or 0.5 with ``--ties half`` (the
RLHFlow Bradley-Terry eval, ALGORITHMS.md sections 0 and 2). The scores follow
the tokenisation contract of :mod:`pipelines.common.modeling`; the chat
template and system prompt used (configured, else the model's
``run_config.json``, else the tokenizer's) are recorded in
``settings.chat_format``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipelines.common import rewardbench
from pipelines.common.benchmarks import (
    AUTOJ_CATEGORIES,
    Benchmark,
    autoj_category,
    load_benchmark,
)
from pipelines.common.cli import (
    add_dataclass_args,
    dataclass_from_args,
    field_help,
    handle_user_errors,
)
from pipelines.common.io import write_json
from pipelines.common.logs import log_run_header, setup_logging
from pipelines.common.score_store import (
    PairScores,
    StoreError,
    check_files,
    parse_benchmark_spec,
    read_pair_scores,
)

logger = logging.getLogger(__name__)

TIES = ("wrong", "half")
SIDES = ("left", "right")
SCORED_WITH = ("max_length", "truncation_side", "chat_template", "system_prompt")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Knobs of the eval stage (YAML section ``eval``).

    The first four are how the benchmark's conversations were scored (by
    ``score_model``); the store must hold scores made with exactly these.
    """

    max_length: int = field_help("maximum tokens per sequence", default=1024)
    truncation_side: str = field_help(
        "'left' keeps the end of a long conversation (RewardBench, RLHFlow);"
        " 'right' keeps the start",
        default="left",
    )
    chat_template: str | None = field_help(
        "chat template (Jinja text or a file); None: the one in the model's"
        " run_config.json, else the tokenizer's",
        default=None,
    )
    system_prompt: str | None = field_help(
        "system turn prepended to conversations without one ('' = none); None:"
        " the one in the model's run_config.json, else none",
        default=None,
    )
    ties: str = field_help(
        "a tie r_c == r_r scores 'wrong' (0) or 'half' (0.5, RLHFlow BT eval)",
        default="wrong",
    )
    xstest_weights: str = field_help(
        "RewardBench xstest weights: 'corrected' (refuse 154 / respond 250)"
        " or 'legacy' (250 / 154, RLHFlow, DogeRM)",
        default="corrected",
    )

    def __post_init__(self) -> None:
        """Reject values the stage cannot honour."""
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        choices = {
            "truncation_side": SIDES,
            "ties": TIES,
            "xstest_weights": rewardbench.XSTEST_MODES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )


def pair_outcomes(
    chosen: np.ndarray, rejected: np.ndarray, *, ties: str = "wrong"
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair credit and tie flags.

    Args:
        chosen: scores of the chosen replies.
        rejected: scores of the rejected replies.
        ties: ``"wrong"`` (a tie scores 0) or ``"half"`` (0.5).

    Returns:
        ``(credit, is_tie)``: credit is 1.0 for ``r_c > r_r`` (strict), 0.5 or
        0.0 for a tie, else 0.0.
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    is_tie = chosen == rejected
    credit = (chosen > rejected).astype(np.float64)
    if ties == "half":
        credit[is_tie] = 0.5
    return credit, is_tie


def _group_stats(
    keys: list[str], credit: np.ndarray, is_tie: np.ndarray
) -> dict[str, dict[str, float | int]]:
    out: dict[str, dict[str, float | int]] = {}
    for key in sorted(set(keys)):
        mask = np.array([k == key for k in keys])
        n = int(mask.sum())
        correct = float(credit[mask].sum())
        out[key] = {
            "n": n,
            "n_correct": correct,
            "n_ties": int(is_tie[mask].sum()),
            "accuracy": correct / n,
        }
    return out


def spurious_split(
    records: list[dict], credit: np.ndarray, is_tie: np.ndarray
) -> dict[str, dict[str, float | int | None]] | None:
    """Accuracy on clean pairs and on pairs with an injected spurious feature.

    The generators add features such as a politeness opener or length padding
    to the chosen reply of some pairs (``metadata.spurious``, a map of feature
    to bool); a scorer that reads only those features is right on the
    spurious pairs and no better than chance on the clean ones, so the clean
    accuracy is what the RM learned about the task itself.

    Args:
        records: the benchmark's pair records.
        credit: per-pair credit from :func:`pair_outcomes`.
        is_tie: per-pair tie flags.

    Returns:
        ``{"clean": {...}, "spurious": {...}}`` with ``n``, ``n_correct``,
        ``n_ties`` and ``accuracy`` (None when the group is empty), or None
        when some record does not say which features it carries (hub
        benchmarks such as RewardBench or Auto-J).
    """
    flags = []
    for rec in records:
        features = (rec.get("metadata") or {}).get("spurious")
        if not isinstance(features, Mapping):
            return None
        flags.append(any(v is True for v in features.values()))  # not clean_chosen
    has_feature = np.asarray(flags, dtype=bool)
    out: dict[str, dict[str, float | int | None]] = {}
    for name, mask in (("clean", ~has_feature), ("spurious", has_feature)):
        n = int(mask.sum())
        correct = float(credit[mask].sum())
        out[name] = {
            "n": n,
            "n_correct": correct,
            "n_ties": int(is_tie[mask].sum()),
            "accuracy": correct / n if n else None,
        }
    return out


def summarize_sections(
    kind: str,
    records: list[dict],
    subsets: Mapping[str, Mapping[str, float | int]],
    credit: np.ndarray,
    is_tie: np.ndarray,
    *,
    xstest_weights: str,
) -> tuple[dict[str, dict[str, float | int | None]], dict[str, float | None]]:
    """Sections and overall variants for a benchmark's kind and subsets.

    Auto-J: categories Math / Code / Other (pooled over their pairs).
    RewardBench subsets present: the four sections and Prior Sets, with the
    2024 leaderboard score and the 4-section mean. Otherwise: one section per
    record ``domain`` (our test splits).

    Returns:
        ``(sections, overall)``; each section is ``{"n", "accuracy"}``;
        ``overall`` always holds ``pooled`` (the accuracy over all pairs).
    """
    pooled = float(credit.mean())
    overall: dict[str, float | None] = {"pooled": pooled}
    sections: dict[str, dict[str, float | int | None]] = {}
    if kind == "autoj":
        cats = [autoj_category(r["subset"]) for r in records]
        stats = _group_stats(cats, credit, is_tie)
        for cat in AUTOJ_CATEGORIES:
            got = stats.get(cat)
            sections[cat] = {
                "n": got["n"] if got else 0,
                "accuracy": got["accuracy"] if got else None,
            }
    elif any(rewardbench.is_rewardbench_subset(s) for s in subsets):
        counts = {s: (v["n_correct"], v["n"]) for s, v in subsets.items()}
        summary = rewardbench.summarize(counts, xstest_weights=xstest_weights)
        scores = dict(summary["sections"])
        scores[rewardbench.PRIOR_SETS_SECTION] = summary["prior_sets"]
        for name, value in scores.items():
            n = sum(
                int(v["n"])
                for s, v in subsets.items()
                if rewardbench.section_of(s) == name
            )
            sections[name] = {"n": n, "accuracy": value}
        overall.update(summary["overall"])
    else:
        domains = [r.get("domain") or "" for r in records]
        if all(domains):
            for dom, st in _group_stats(domains, credit, is_tie).items():
                sections[dom] = {"n": st["n"], "accuracy": st["accuracy"]}
    return sections, overall


def _check_store(
    scores: Path,
    name: str,
    spec: Mapping,
    records: list[dict],
    got: PairScores,
    cfg: EvalConfig,
) -> None:
    """The store scored this benchmark, as loaded now, with ``cfg``'s settings."""
    info = got.input
    if info["source"] != dict(spec):
        raise StoreError(
            f"{scores}: {name!r} was scored from spec {info['source']},"
            f" not {dict(spec)}"
        )
    check_files(scores, name, info.get("files", {}))
    asked = {key: getattr(cfg, key) for key in SCORED_WITH}
    scored = {key: info["settings"].get(key) for key in SCORED_WITH}
    if asked != scored:
        diff = {k: (scored[k], asked[k]) for k in SCORED_WITH if scored[k] != asked[k]}
        raise StoreError(
            f"{scores}: {name!r} was scored with other settings (scored, asked):"
            f" {diff}; rerun its score_model job or pass the store's settings"
        )
    ids = [str(r["id"]) for r in records]
    if ids != got.ids:
        raise StoreError(
            f"{scores}: {name!r} holds {len(got.ids)} pairs that are not the"
            f" {len(ids)} pairs of the benchmark as loaded now; rerun its"
            " score_model job"
        )


def _settings(scores: Path, got: PairScores, cfg: EvalConfig) -> dict:
    """The eval JSON's ``settings``: how the store scored, and how this stage ran."""
    meta, info, load = got.meta, got.input, got.meta["load"]
    fmt = info["chat_format"]
    scored = info["settings"]
    return {
        "batch_size": load["batch_size"],
        "max_length": scored["max_length"],
        "truncation_side": scored["truncation_side"],
        "dtype": load["dtype"],
        "ties": cfg.ties,
        "xstest_weights": cfg.xstest_weights,
        "device": load["device"],
        "tokenizer": load["tokenizer"],
        "chat_template": scored["chat_template"],
        "system_prompt": scored["system_prompt"],
        "trust_remote_code": load["trust_remote_code"],
        "seed": load["seed"],
        "device_requested": load["device_requested"],
        "sort_by_length": meta["sort_by_length"],
        "strict_greater": True,
        "chat_template_sha256": fmt["chat_template_sha256"],
        "chat_template_is_rmflow_default": fmt["chat_template_is_rmflow_default"],
        "chat_format": fmt,
        "pad_token": load["pad_token"],
        "pad_token_id": load["pad_token_id"],
        "eos_token_id": load["eos_token_id"],
        "resized_embeddings": load["resized_embeddings"],
        "new_score_head": load["new_score_head"],
        "versions": meta["versions"],
        "score_store": str(scores),
        "scored_with": info.get("pool", sorted(meta["inputs"])),
    }


def eval_rm(
    scores: Path,
    benchmark: Mapping[str, object],
    out: Path,
    *,
    cfg: EvalConfig,
    benchmark_name: str,
) -> dict:
    """Read a benchmark's scores from a model's store and write the eval JSON.

    Args:
        scores: the model's score store (``results/scores/{model_id}.parquet``).
        benchmark: the benchmark spec (see :mod:`pipelines.common.benchmarks`).
        out: the JSON to write (atomically; nothing is written on failure).
        cfg: the stage config.
        benchmark_name: the benchmark's name (its input in the store).

    Returns:
        The written result: counts, ``accuracy``, ``subsets``, ``sections``,
        ``overall``, ``spurious_split``, ``settings`` and per-pair scores
        under ``pairs``.

    Raises:
        ValueError: on a bad spec or an empty benchmark.
        pipelines.common.records.RecordError: on a bad benchmark row.
        pipelines.common.score_store.StoreError: the store lacks this
            benchmark, or scored another version of it or other settings.
    """
    bench: Benchmark = load_benchmark(benchmark)
    records = bench.records
    got = read_pair_scores(scores, benchmark_name)
    _check_store(scores, benchmark_name, benchmark, records, got, cfg)
    chosen, rejected = got.chosen, got.rejected
    credit, is_tie = pair_outcomes(chosen, rejected, ties=cfg.ties)
    subsets = _group_stats([r["subset"] for r in records], credit, is_tie)
    sections, overall = summarize_sections(
        bench.kind,
        records,
        subsets,
        credit,
        is_tie,
        xstest_weights=cfg.xstest_weights,
    )
    split = spurious_split(records, credit, is_tie)
    cut_c = int(got.truncated_chosen.sum())
    cut_r = int(got.truncated_rejected.sum())
    result = {
        "model_id": got.meta["model_id"],
        "model": got.meta["model"],
        "tokenizer": got.meta["tokenizer"],
        "benchmark": {
            "name": benchmark_name,
            "kind": bench.kind,
            "spec": dict(benchmark),
        },
        "n_pairs": len(records),
        "n_ties": int(is_tie.sum()),
        "n_truncated": cut_c + cut_r,
        "n_truncated_chosen": cut_c,
        "n_truncated_rejected": cut_r,
        "load": bench.counts(),
        "accuracy": float(credit.mean()),
        "spurious_split": split,
        "subsets": subsets,
        "sections": sections,
        "overall": overall,
        "settings": _settings(scores, got, cfg),
        "pairs": [
            {
                "id": r["id"],
                "subset": r["subset"],
                "chosen": float(c),
                "rejected": float(x),
            }
            for r, c, x in zip(records, chosen, rejected, strict=True)
        ],
    }
    write_json(out, result)
    logger.info(
        "%s on %s: accuracy %.4f over %d pairs (%d ties, %d truncated sequences);"
        " clean/spurious %s; sections %s; overall %s -> %s",
        result["model_id"],
        benchmark_name,
        result["accuracy"],
        len(records),
        result["n_ties"],
        result["n_truncated"],
        split and {k: (v["accuracy"], v["n"]) for k, v in split.items()},
        {k: v["accuracy"] for k, v in sections.items()},
        overall,
        out,
    )
    return result


def _spec_arg(text: str) -> dict:
    """The type of ``--benchmark``: a JSON spec or a plain path."""
    try:
        return parse_benchmark_spec(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`eval_rm`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.eval_rm",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[2:6]),
    )
    parser.add_argument(
        "--scores", type=Path, required=True, help="the model's score store"
    )
    parser.add_argument(
        "--benchmark-name", required=True, help="benchmark name (its store input)"
    )
    parser.add_argument(
        "--benchmark",
        required=True,
        type=_spec_arg,
        help='JSON spec, e.g. \'{"kind": "autoj", "path": "pairwise.jsonl"}\','
        " or a path to a standard/flat pairs file",
    )
    parser.add_argument("--out", type=Path, required=True, help="eval JSON to write")
    add_dataclass_args(parser, EvalConfig)
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = make_parser().parse_args(argv)
    setup_logging()
    cfg = dataclass_from_args(EvalConfig, args)
    log_run_header(
        logger,
        asdict(cfg),
        scores=str(args.scores),
        benchmark_name=args.benchmark_name,
        benchmark=args.benchmark,
        out=str(args.out),
    )
    eval_rm(
        args.scores,
        args.benchmark,
        args.out,
        cfg=cfg,
        benchmark_name=args.benchmark_name,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
