r"""Pairwise accuracy of one reward model on one benchmark, per subset and section.

    python -m pipelines.eval_rm --model results/models/rm/math/seed0 \
        --model-id rm-math-seed0 --benchmark-name math-test \
        --benchmark '{"kind": "standard", "path": "results/data/math/test.jsonl"}' \
        --out results/eval/rm-math-seed0/math-test.json

``--model`` (and ``--tokenizer``) take a local folder or a hub id. The
benchmark spec is described in :mod:`pipelines.common.benchmarks`; a plain
path stands for ``{"kind": "standard", "path": ...}``.

A pair is correct when ``r_chosen > r_rejected`` (strict, as RewardBench and
Auto-J score it); an exact tie scores 0, or 0.5 with ``--ties half`` (the
RLHFlow Bradley-Terry eval, ALGORITHMS.md sections 0 and 2). Scores follow the
tokenisation contract of :mod:`pipelines.common.modeling`: chat template, a pad
token distinct from EOS, right padding, the score at the last non-pad token,
declared truncation side, truncations counted, length-sorted batches. The
chat template and system prompt are ``--chat-template`` / ``--system-prompt``
when given, else the ones the model was trained with (its ``run_config.json``;
a DogeRM merge carries its RM's), else the tokenizer's template and none
(:mod:`pipelines.common.chat_format`); ``settings.chat_format`` records them.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pipelines.common import rewardbench
from pipelines.common.benchmarks import (
    AUTOJ_CATEGORIES,
    Benchmark,
    autoj_category,
    load_benchmark,
)
from pipelines.common.chat_format import setup_chat_format
from pipelines.common.cli import (
    add_dataclass_args,
    dataclass_from_args,
    field_help,
    handle_user_errors,
)
from pipelines.common.io import write_json
from pipelines.common.logs import library_versions, log_run_header, setup_logging
from pipelines.common.modeling import (
    DTYPES,
    encode_conversations,
    ensure_pad_embeddings,
    load_reward_model,
    load_tokenizer,
    resolve_device,
    score_ids,
    warn_if_untrained_head,
)

logger = logging.getLogger(__name__)

TIES = ("wrong", "half")
VERSIONED_PACKAGES = ("torch", "transformers", "tokenizers", "datasets", "numpy")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Knobs of the eval stage (YAML section ``eval``); all of them move scores."""

    batch_size: int = field_help("sequences per forward pass", default=16)
    max_length: int = field_help("maximum tokens per sequence", default=1024)
    truncation_side: str = field_help(
        "'left' keeps the end of a long conversation (RewardBench, RLHFlow);"
        " 'right' keeps the start",
        default="left",
    )
    dtype: str = field_help("float32, bfloat16 or float16", default="float32")
    ties: str = field_help(
        "a tie r_c == r_r scores 'wrong' (0) or 'half' (0.5, RLHFlow BT eval)",
        default="wrong",
    )
    xstest_weights: str = field_help(
        "RewardBench xstest weights: 'corrected' (refuse 154 / respond 250)"
        " or 'legacy' (250 / 154, RLHFlow, DogeRM)",
        default="corrected",
    )
    device: str = field_help(
        "'auto' (CUDA if available, else CPU), 'cpu', 'cuda:0'...", default="auto"
    )
    tokenizer: str | None = field_help(
        "tokenizer folder or hub id; None: the model's", default=None
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
    trust_remote_code: bool = field_help("allow model code from the hub", default=False)
    seed: int = field_help(
        "seeds torch before loading; only matters when the model has no trained"
        " score head (a new one is initialised)",
        default=0,
    )

    def __post_init__(self) -> None:
        """Reject values the scorer cannot honour."""
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        choices = {
            "truncation_side": ("left", "right"),
            "dtype": tuple(DTYPES),
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
        flags.append(any(bool(v) for v in features.values()))
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


def eval_rm(
    model: str,
    benchmark: Mapping[str, object],
    out: Path,
    *,
    cfg: EvalConfig,
    model_id: str,
    benchmark_name: str,
) -> dict:
    """Score a benchmark's pairs with a reward model and write the eval JSON.

    Args:
        model: local folder or hub id of a sequence-classification RM.
        benchmark: a benchmark spec (see :mod:`pipelines.common.benchmarks`).
        out: the JSON to write (atomically; nothing is written on failure).
        cfg: the stage config.
        model_id: the path-safe id recorded in the output.
        benchmark_name: the benchmark's name recorded in the output.

    Returns:
        The written result: counts, ``accuracy``, ``subsets``, ``sections``,
        ``overall``, ``settings`` and per-pair scores under ``pairs``.

    Raises:
        ValueError: on a bad spec or an empty benchmark.
        pipelines.common.records.RecordError: on a bad benchmark row.
    """
    bench: Benchmark = load_benchmark(benchmark)
    records = bench.records
    device = resolve_device(cfg.device)
    tok_name = cfg.tokenizer or model
    torch.manual_seed(cfg.seed)
    tok = load_tokenizer(tok_name, trust_remote_code=cfg.trust_remote_code)
    fmt = setup_chat_format(
        tok, model, chat_template=cfg.chat_template, system_prompt=cfg.system_prompt
    )
    rm = load_reward_model(
        model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code
    )
    new_head = warn_if_untrained_head(rm, model)
    rows_before = rm.get_input_embeddings().weight.shape[0]
    ensure_pad_embeddings(rm, tok)  # config pad id = the id score_ids pads with
    resized = rm.get_input_embeddings().weight.shape[0] != rows_before
    rm.to(device)

    enc_c = encode_conversations(
        tok,
        [r["chosen"] for r in records],
        max_length=cfg.max_length,
        truncation_side=cfg.truncation_side,
        system_prompt=fmt.system_prompt,
    )
    enc_r = encode_conversations(
        tok,
        [r["rejected"] for r in records],
        max_length=cfg.max_length,
        truncation_side=cfg.truncation_side,
        system_prompt=fmt.system_prompt,
    )
    truncated = enc_c.truncated + enc_r.truncated
    if truncated:
        logger.warning(
            "%d of %d sequences longer than %d tokens were cut on the %s",
            truncated,
            2 * len(records),
            cfg.max_length,
            cfg.truncation_side,
        )
    scores = score_ids(
        rm,
        enc_c.ids + enc_r.ids,
        pad_id=tok.pad_token_id,
        batch_size=cfg.batch_size,
        sort_by_length=True,
        device=device,
    )
    chosen, rejected = scores[: len(records)], scores[len(records) :]
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
    chat_format = fmt.record(with_template=False)
    result = {
        "model_id": model_id,
        "model": str(model),
        "tokenizer": str(tok_name),
        "benchmark": {
            "name": benchmark_name,
            "kind": bench.kind,
            "spec": dict(benchmark),
        },
        "n_pairs": len(records),
        "n_ties": int(is_tie.sum()),
        "n_truncated": truncated,
        "n_truncated_chosen": enc_c.truncated,
        "n_truncated_rejected": enc_r.truncated,
        "load": bench.counts(),
        "accuracy": float(credit.mean()),
        "spurious_split": split,
        "subsets": subsets,
        "sections": sections,
        "overall": overall,
        "settings": {
            **asdict(cfg),
            "device_requested": cfg.device,
            "device": str(device),
            "sort_by_length": True,
            "strict_greater": True,
            "chat_template_sha256": chat_format["chat_template_sha256"],
            "chat_template_is_rmflow_default": chat_format[
                "chat_template_is_rmflow_default"
            ],
            "chat_format": chat_format,
            "pad_token": tok.pad_token,
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.eos_token_id,
            "resized_embeddings": resized,
            "new_score_head": new_head,
            "versions": library_versions(VERSIONED_PACKAGES),
        },
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
        model_id,
        benchmark_name,
        result["accuracy"],
        len(records),
        result["n_ties"],
        truncated,
        split and {k: (v["accuracy"], v["n"]) for k, v in split.items()},
        {k: v["accuracy"] for k, v in sections.items()},
        overall,
        out,
    )
    return result


def parse_benchmark(text: str) -> dict:
    """A benchmark spec from JSON text, or a plain path for a standard file."""
    stripped = text.strip()
    if stripped.startswith("{"):
        spec = json.loads(stripped)
        if not isinstance(spec, dict):
            raise argparse.ArgumentTypeError("--benchmark must be a JSON object")
        return spec
    return {"kind": "standard", "path": stripped}


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`eval_rm`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.eval_rm",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[2:7]),
    )
    parser.add_argument("--model", required=True, help="RM folder or hub id")
    parser.add_argument("--model-id", required=True, help="path-safe model id")
    parser.add_argument(
        "--benchmark-name", required=True, help="benchmark name for the output"
    )
    parser.add_argument(
        "--benchmark",
        required=True,
        type=parse_benchmark,
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
        cfg,
        model=args.model,
        model_id=args.model_id,
        benchmark=json.dumps(args.benchmark, sort_keys=True),
        versions=library_versions(VERSIONED_PACKAGES),
    )
    eval_rm(
        args.model,
        args.benchmark,
        args.out,
        cfg=cfg,
        model_id=args.model_id,
        benchmark_name=args.benchmark_name,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
