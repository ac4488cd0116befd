r"""Sample best-of-n candidates from a policy and attach their gold scores.

    python -m pipelines.generate_candidates --policy results/models/sft/general \
        --pairs results/data/math/test.jsonl --domain math --seed 0 \
        --out results/bon/gens/math.jsonl

The first ``n_prompts`` records of a held-out pair file give the prompts
(``record["prompt"]``). For each, ``big_n`` replies are sampled from the policy
(a causal LM folder or hub id) after the chat template's generation prompt,
with T 1.0, top_p 1.0 and no top-k cut: tlc4418/llm_optimization's rollout
settings (ALGORITHMS.md section 5.4; the DogeRM GSM8K BoN of section 4.3 uses
the same T and top_p). Generation is batched with left padding and stops at
EOS; only the new tokens are decoded. ``torch.manual_seed(seed)`` precedes
sampling, so a seed reproduces the candidates on the same machine and settings.
The chat template and system prompt are ``--chat-template`` /
``--system-prompt`` when given, else the policy's (its ``run_config.json``,
see :mod:`pipelines.common.chat_format`); a prompt too long for the context is
cut on the left with the tokenizer's BOS kept.

Gold scores (the BoN estimator's ``gold_scores``, section 5.2) come from the
domain's programmatic verifier (1.0 correct, 0.0 not), re-run from the record's
``metadata["task"]``; with ``--gold-model`` they are that reward model's scores.
For code the record's chosen reply (source ``reference``) and rejected reply
(source ``mutant``) can be added as candidates, since a tiny policy rarely
writes passing code. Output, one JSON line per prompt::

    {"prompt_id": "math-test-00000", "domain": "math", "prompt": [messages],
     "candidates": [{"text": "...", "gold": 0.0, "source": "policy"}, ...],
     "task": {...}, "chat_format": {...}}

``chat_format`` records the policy's system prompt and template (sha256, rmflow
default or not, sources); with ``--gold-model`` a ``gold_chat_format`` records
the gold RM's. ``prompt`` stays the record's own turns (no system turn), so
each scorer applies its own format.

Every ``--progress-every`` seconds the log gets a progress line (sequences
sampled, rate, ETA), and one when sampling ends. ``--help`` loads no torch:
the model stack is imported when sampling starts.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.common.cli import (
    add_dataclass_args,
    dataclass_from_args,
    field_help,
    handle_user_errors,
)
from pipelines.common.io import write_jsonl
from pipelines.common.logs import (
    PROGRESS_EVERY_S,
    add_progress_arg,
    library_versions,
    log_run_header,
    setup_logging,
)
from pipelines.common.modeling import DTYPES
from pipelines.common.records import read_pairs
from pipelines.common.sampling import Sampled, sample_policy
from pipelines.domains import (
    MATH_EXTRACTION,
    VerifierOptions,
    add_sandbox_arg,
    domain_module,
    verifier_record,
)

logger = logging.getLogger(__name__)

SOURCES = ("policy", "reference", "mutant")
EXTRA_DOMAIN = "code"  # the domain whose chosen/rejected replies join the candidates


@dataclass(frozen=True, kw_only=True)
class GenerateConfig:
    """Knobs of candidate generation (YAML section ``bon.generate``)."""

    n_prompts: int = field_help(
        "prompts taken from the start of the pair file", default=10
    )
    big_n: int = field_help(
        "policy samples per prompt (N; 64 leaves the tiny study's curves room"
        " to bend, Gao et al. 2022 go to 12,600)",
        default=64,
    )
    temperature: float = field_help(
        "sampling temperature (tlc4418 rollouts: 1.0)", default=1.0
    )
    top_p: float = field_help("nucleus mass (tlc4418 rollouts: 1.0)", default=1.0)
    max_new_tokens: int = field_help("tokens sampled per candidate", default=128)
    batch_size: int = field_help(
        "sequences (prompts x samples) per generate call", default=16
    )
    include_reference: bool = field_help(
        "code: add the record's chosen reply as a candidate (source 'reference')",
        default=True,
    )
    include_mutants: bool = field_help(
        "code: add the record's rejected reply as a candidate (source 'mutant')",
        default=True,
    )
    gold_model: str | None = field_help(
        "RM folder or hub id whose scores are the gold; None: the verifier",
        default=None,
    )
    chat_template: str | None = field_help(
        "policy chat template (Jinja text or a file); None: the one in the"
        " policy's run_config.json, else the tokenizer's",
        default=None,
    )
    system_prompt: str | None = field_help(
        "system turn prepended to prompts without one ('' = none); None: the"
        " one in the policy's run_config.json, else none",
        default=None,
    )
    device: str = field_help(
        "'auto' (CUDA if available, else CPU), 'cpu', 'cuda:0'...", default="auto"
    )
    dtype: str = field_help("float32, bfloat16 or float16", default="float32")
    workers: int = field_help("verifier processes (0: all cores)", default=0)
    trust_remote_code: bool = field_help("allow model code from the hub", default=False)

    def __post_init__(self) -> None:
        """Reject values generation cannot honour."""
        for name in ("n_prompts", "big_n", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.dtype not in DTYPES:
            raise ValueError(
                f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}"
            )


def verifier_gold(
    domain: str,
    items: Sequence[tuple[dict, str]],
    *,
    workers: int,
    verifier: VerifierOptions | None = None,
) -> list[float]:
    """Gold of ``(task, response)`` items from the domain's verifier (1.0 / 0.0)."""
    verifier = verifier or VerifierOptions()
    verifier.apply()
    verdicts = domain_module(domain).verify_many(
        list(items), workers=workers, **verifier.kwargs(domain)
    )
    return [1.0 if ok else 0.0 for ok in verdicts]


def _extras(record: dict, cfg: GenerateConfig, domain: str) -> list[tuple[str, str]]:
    """``(source, text)`` of the record's replies added as candidates."""
    if domain != EXTRA_DOMAIN:
        return []
    out = []
    if cfg.include_reference:
        out.append(("reference", record["chosen"][-1]["content"]))
    if cfg.include_mutants:
        out.append(("mutant", record["rejected"][-1]["content"]))
    return out


def _gold_scores(
    lines: list[dict], domain: str, cfg: GenerateConfig, verifier: VerifierOptions
) -> tuple[list[float], str]:
    """Gold of every candidate (flat, line order) and the gold's kind.

    With ``cfg.gold_model`` the RM scores under its own chat format (its
    ``run_config.json``), recorded in each line as ``gold_chat_format``.

    Returns:
        ``(gold values, kind)``, kind ``verifier:<domain>`` or ``model:<id>``.
    """
    if cfg.gold_model is None:
        workers = cfg.workers or os.cpu_count() or 1
        items = [(ln["task"], c["text"]) for ln in lines for c in ln["candidates"]]
        gold = verifier_gold(domain, items, workers=workers, verifier=verifier)
        return gold, f"verifier:{domain}"
    from pipelines.common.scoring import (
        ScorerConfig,
        candidate_conversations,
        score_with_gold,
    )

    gold = score_with_gold(
        cfg.gold_model,
        [c for ln in lines for c in candidate_conversations(ln)],
        ScorerConfig(
            batch_size=cfg.batch_size,
            dtype=cfg.dtype,
            device=cfg.device,
            trust_remote_code=cfg.trust_remote_code,
        ),
    )
    gold_format = gold.chat_format.record(with_template=False)
    for line in lines:
        line["gold_chat_format"] = gold_format
    return gold.scores.tolist(), f"model:{cfg.gold_model}"


def generate_candidates(
    policy: str,
    pairs: Path,
    out: Path,
    *,
    seed: int,
    cfg: GenerateConfig,
    domain: str,
    verifier: VerifierOptions | None = None,
    progress_every: float = PROGRESS_EVERY_S,
) -> dict:
    """Sample candidates for held-out prompts, score them with the gold, write JSONL.

    Args:
        policy: causal LM folder or hub id.
        pairs: a standard-format pair file (e.g. ``results/data/math/test.jsonl``).
        out: the JSONL to write (atomically).
        seed: seeds sampling.
        cfg: the stage config.
        domain: the pairs' domain; picks the verifier (unless ``cfg.gold_model``)
            and, for ``code``, the reference / mutant extras.
        verifier: how the domain's verifier checks (math extraction, code
            sandbox backend); recorded with the gold in every line
            (``gold_source``).
        progress_every: seconds between two progress lines of the sampling.

    Returns:
        Summary: counts, ``mean_gold`` by source, ``new_tokens``,
        ``generation_seconds``, ``tokens_per_second``,
        ``candidates_per_second`` (policy samples), ``truncated_prompts``
        and the ``gold`` kind.

    Raises:
        ValueError: on an empty pair file, a domain without a verifier (and no
            gold model) or a record without ``metadata["task"]``.
    """
    verifier = verifier or VerifierOptions()
    if cfg.gold_model is None:
        domain_module(domain)  # fail before sampling on a domain with no verifier
    records, tasks = _read_prompts(pairs, cfg)
    sampled = sample_policy(
        policy,
        [r["prompt"] for r in records],
        seed=seed,
        cfg=cfg,
        name="generate_candidates",
        progress_every=progress_every,
    )
    lines = _candidate_lines(records, tasks, sampled, cfg, domain)
    gold, gold_kind = _gold_scores(lines, domain, cfg, verifier)
    flat = [c for ln in lines for c in ln["candidates"]]
    for cand, value in zip(flat, gold, strict=True):
        cand["gold"] = float(value)
    gold_source = {"kind": gold_kind}
    if cfg.gold_model is None:
        gold_source.update(verifier_record(domain, verifier))
    for line in lines:
        line["gold_source"] = gold_source
    write_jsonl(out, lines)
    return _summary(lines, sampled, gold_source, domain=domain, out=out)


def _read_prompts(
    pairs: Path, cfg: GenerateConfig
) -> tuple[list[dict], list[dict | None]]:
    """The first ``cfg.n_prompts`` records of ``pairs`` and their verifier tasks.

    Raises:
        ValueError: no records, or (without a gold model) a record without
            ``metadata["task"]``.
    """
    records = read_pairs(pairs)[: cfg.n_prompts]
    if not records:
        raise ValueError(f"{pairs}: no records")
    if len(records) < cfg.n_prompts:
        logger.warning(
            "%s has %d records, fewer than n_prompts %d: using all",
            pairs,
            len(records),
            cfg.n_prompts,
        )
    tasks = [(r.get("metadata") or {}).get("task") for r in records]
    if cfg.gold_model is None and any(t is None for t in tasks):
        missing = [r["id"] for r, t in zip(records, tasks, strict=True) if t is None]
        raise ValueError(
            f"records without metadata.task cannot be verified: {missing[:5]}"
            " (set gold_model to score them with an RM)"
        )
    return records, tasks


def _candidate_lines(
    records: list[dict],
    tasks: list[dict | None],
    sampled: Sampled,
    cfg: GenerateConfig,
    domain: str,
) -> list[dict]:
    """One output line per prompt: its policy samples and extras, gold unset."""
    policy_format = sampled.chat_format.record(with_template=False)
    lines = []
    for record, task, texts in zip(records, tasks, sampled.texts, strict=True):
        cands = [{"text": t, "gold": float("nan"), "source": "policy"} for t in texts]
        cands += [
            {"text": t, "gold": float("nan"), "source": s}
            for s, t in _extras(record, cfg, domain)
        ]
        lines.append(
            {
                "prompt_id": record["id"],
                "domain": domain,
                "prompt": record["prompt"],
                "candidates": cands,
                "task": task,
                "chat_format": policy_format,
            }
        )
    return lines


def _summary(
    lines: list[dict], sampled: Sampled, gold_source: dict, *, domain: str, out: Path
) -> dict:
    """Counts, mean gold by source and sampling speed; logged and returned."""
    flat = [c for ln in lines for c in ln["candidates"]]
    gold_kind = gold_source["kind"]
    mean_gold = {
        s: float(np.mean([c["gold"] for c in flat if c["source"] == s]))
        for s in SOURCES
        if any(c["source"] == s for c in flat)
    }
    rate = sampled.new_tokens / sampled.seconds if sampled.seconds > 0 else 0.0
    sampled_n = sum(len(t) for t in sampled.texts)
    per_s = sampled_n / sampled.seconds if sampled.seconds > 0 else 0.0
    summary = {
        "n_prompts": len(lines),
        "n_candidates": len(flat),
        "n_by_source": {s: sum(c["source"] == s for c in flat) for s in mean_gold},
        "mean_gold": mean_gold,
        "gold": gold_kind,
        "gold_source": gold_source,
        "new_tokens": sampled.new_tokens,
        "generation_seconds": sampled.seconds,
        "tokens_per_second": rate,
        "candidates_per_second": per_s,
        "truncated_prompts": sampled.truncated_prompts,
        "chat_format": sampled.chat_format.record(with_template=False),
    }
    logger.info(
        "%s: %d prompts, %d candidates %s; mean gold (%s) by source %s;"
        " %d tokens sampled in %.2fs (%.0f tokens/s, %.1f candidates/s) -> %s",
        domain,
        summary["n_prompts"],
        summary["n_candidates"],
        summary["n_by_source"],
        gold_kind,
        mean_gold,
        sampled.new_tokens,
        sampled.seconds,
        rate,
        per_s,
        out,
    )
    return summary


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`generate_candidates`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.generate_candidates",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[2:5]),
    )
    parser.add_argument("--policy", required=True, help="causal LM folder or hub id")
    parser.add_argument(
        "--pairs", type=Path, required=True, help="standard-format pair JSONL"
    )
    parser.add_argument(
        "--domain", required=True, help="domain of the pairs (picks the verifier)"
    )
    parser.add_argument("--seed", type=int, required=True, help="sampling seed")
    parser.add_argument("--out", type=Path, required=True, help="JSONL to write")
    parser.add_argument(
        "--math-extraction",
        choices=MATH_EXTRACTION,
        default="balanced",
        help="math verifier: 'balanced' braces or the paper's 'regex'"
        " (config data.math_extraction)",
    )
    add_sandbox_arg(parser)
    add_progress_arg(parser)
    add_dataclass_args(parser, GenerateConfig)
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = make_parser().parse_args(argv)
    setup_logging()
    cfg = dataclass_from_args(GenerateConfig, args)
    log_run_header(
        logger,
        cfg,
        policy=args.policy,
        pairs=str(args.pairs),
        domain=args.domain,
        seed=args.seed,
        out=str(args.out),
        versions=library_versions(),
    )
    verifier = VerifierOptions(
        math_extraction=args.math_extraction, sandbox_backend=args.sandbox_backend
    )
    generate_candidates(
        args.policy,
        args.pairs,
        args.out,
        seed=args.seed,
        cfg=cfg,
        domain=args.domain,
        verifier=verifier,
        progress_every=args.progress_every,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
