r"""Label pairs of the policy's own replies with a gold scorer (proxy-RM data).

    python -m pipelines.label_gold --policy results/models/sft/general \
        --gold-model results/models/gold \
        --pairs results/data/general/train.jsonl results/data/math/train.jsonl \
        --exclude results/data/general/test.jsonl results/data/math/test.jsonl \
        --out results/data/gold-labelled/train.jsonl \
            results/data/gold-labelled/test.jsonl

The synthetic setup of Gao et al. 2022 and Coste et al. 2024 (seed README
llm-overoptimization-ensembles: ``1.4b-policy_preference_data_gold_labelled``):
the policy answers each prompt ``samples`` times; consecutive replies form
pairs ``(0, 1), (2, 3)...``; the gold scores both and its preferred reply is
``chosen`` (:mod:`pipelines.common.gold_labels`: hard labels, or BT-sampled
ones with ``--labels bt``; ``--noise`` flips that share of labels). Pairs of
identical replies carry no preference and are dropped, as are hard-label ties
and pairs with an empty reply (the policy stopped at once; the pair format has
no empty messages).

Prompts come from the ``--pairs`` files (each domain's *train* split), never
one that appears in an ``--exclude`` file (the best-of-n and PPO evaluation
prompts): per file, the usable records are shuffled with the seed and the
first ``sizes[split]`` go to each ``--out`` split (file stem = split), in the
order given. The gold is ``--gold-model`` (an RM folder or hub id, scored
under its own chat format) or, without it, each domain's verifier (1.0 / 0.0,
hard labels only: pairs where both replies get the same verdict are dropped).

Output records are in the standard format (domain ``gold-labelled``, subset =
the source domain) with ``metadata.gold``: the kind, both replies' gold
scores, the BT probability of the label given, whether noise flipped it; so
any RM ``trainset`` can name ``gold-labelled``. ``--help`` loads no torch.
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
    UserError,
    add_dataclass_args,
    dataclass_from_args,
    field_help,
    handle_user_errors,
)
from pipelines.common.gold_labels import LABELS, label_pairs
from pipelines.common.io import write_jsonl_all
from pipelines.common.logs import (
    PROGRESS_EVERY_S,
    add_progress_arg,
    library_versions,
    log_run_header,
    setup_logging,
)
from pipelines.common.modeling import DTYPES
from pipelines.common.records import count_words, prompt_key, read_pairs
from pipelines.common.sampling import sample_policy
from pipelines.domains import (
    MATH_EXTRACTION,
    VerifierOptions,
    add_sandbox_arg,
    domain_module,
    verifier_record,
)

logger = logging.getLogger(__name__)

DOMAIN = "gold-labelled"


@dataclass(frozen=True, kw_only=True)
class LabelGoldConfig:
    """Knobs of gold labelling (YAML section ``gold.label``)."""

    sizes: dict = field_help(
        "prompts per output split taken from each --pairs file",
        default_factory=lambda: {"train": 80, "test": 20},
    )
    samples: int = field_help(
        "replies per prompt; consecutive replies pair up (even, >= 2)", default=2
    )
    labels: str = field_help(
        "hard: the higher gold score wins; bt: drawn with the BT probability",
        choices=LABELS,
        default="hard",
    )
    noise: float = field_help(
        "share of labels flipped (Coste et al. 2024: 0.25 in their noisy setting)",
        default=0.0,
    )
    temperature: float = field_help("sampling temperature", default=1.0)
    top_p: float = field_help("nucleus mass", default=1.0)
    max_new_tokens: int = field_help("tokens sampled per reply", default=128)
    batch_size: int = field_help(
        "sequences per generate call and per gold forward pass", default=16
    )
    max_length: int = field_help(
        "gold RM: maximum tokens per scored conversation (cut on the left)",
        default=1024,
    )
    chat_template: str | None = field_help(
        "policy chat template; None: the policy's run_config.json", default=None
    )
    system_prompt: str | None = field_help(
        "policy system prompt; None: the policy's run_config.json", default=None
    )
    device: str = field_help("'auto', 'cpu', 'cuda:0'...", default="auto")
    dtype: str = field_help("float32, bfloat16 or float16", default="float32")
    workers: int = field_help("verifier processes (0: all cores)", default=0)
    trust_remote_code: bool = field_help("allow model code from the hub", default=False)

    def __post_init__(self) -> None:
        """Reject values labelling cannot honour."""
        if self.samples < 2 or self.samples % 2:
            raise ValueError(f"samples must be even and >= 2, got {self.samples}")
        if self.labels not in LABELS:
            raise ValueError(f"labels must be one of {LABELS}, got {self.labels!r}")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {self.noise}")
        bad = {k: v for k, v in self.sizes.items() if not isinstance(v, int) or v < 0}
        if not self.sizes or bad:
            raise ValueError(f"sizes must map splits to counts >= 0, got {self.sizes}")
        for name in ("max_new_tokens", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}")

    @property
    def big_n(self) -> int:
        """Replies per prompt, as :func:`sample_policy` calls it."""
        return self.samples


def select_prompts(
    pairs: Sequence[Path],
    exclude: Sequence[Path],
    splits: Sequence[str],
    cfg: LabelGoldConfig,
    *,
    seed: int,
) -> list[tuple[str, dict]]:
    """``(split, record)`` of every prompt to label, per file then split.

    Raises:
        UserError: a file has fewer usable prompts than the splits need.
    """
    banned = {prompt_key(r["prompt"]) for path in exclude for r in read_pairs(path)}
    chosen: list[tuple[str, dict]] = []
    for k, path in enumerate(pairs):
        records, seen = [], set(banned)
        for rec in read_pairs(path):
            key = prompt_key(rec["prompt"])
            if key not in seen:  # one pair per prompt; never an excluded one
                seen.add(key)
                records.append(rec)
        need = sum(cfg.sizes.get(s, 0) for s in splits)
        if len(records) < need:
            raise UserError(
                f"{path}: {len(records)} prompts not in the --exclude files, but"
                f" sizes {cfg.sizes} need {need}"
            )
        order = np.random.default_rng([seed, k]).permutation(len(records))
        start = 0
        for split in splits:
            take = cfg.sizes.get(split, 0)
            chosen += [(split, records[i]) for i in order[start : start + take]]
            start += take
    return chosen


def _gold_model_scores(
    lines: list[tuple[dict, list[str]]], gold_model: str, cfg: LabelGoldConfig
) -> tuple[np.ndarray, dict]:
    """The gold RM's score of every reply (flat, line order) and its record."""
    from pipelines.common.scoring import InputSettings, ScorerConfig, score_with_gold

    convs = [
        [*rec["prompt"], {"role": "assistant", "content": text}]
        for rec, texts in lines
        for text in texts
    ]
    gold = score_with_gold(
        gold_model,
        convs,
        ScorerConfig(
            batch_size=cfg.batch_size,
            dtype=cfg.dtype,
            device=cfg.device,
            trust_remote_code=cfg.trust_remote_code,
        ),
        InputSettings(max_length=cfg.max_length, truncation_side="left"),
    )
    record = {
        "kind": f"model:{gold_model}",
        "chat_format": gold.chat_format.record(with_template=False),
    }
    return gold.scores, record


def _verifier_scores(
    lines: list[tuple[dict, list[str]]],
    cfg: LabelGoldConfig,
    verifier: VerifierOptions,
) -> tuple[np.ndarray, dict]:
    """Each domain's verifier verdict on every reply (1.0 / 0.0)."""
    verifier.apply()
    workers = cfg.workers or os.cpu_count() or 1
    out = np.zeros(sum(len(t) for _, t in lines))
    at, by_domain = 0, {}
    for rec, texts in lines:
        task = (rec.get("metadata") or {}).get("task")
        if task is None:
            raise UserError(
                f"record {rec['id']}: no metadata.task, so the verifier cannot"
                " label it (name a gold model instead)"
            )
        for j, text in enumerate(texts):
            by_domain.setdefault(rec["domain"], []).append((at + j, task, text))
        at += len(texts)
    for domain, items in by_domain.items():
        verdicts = domain_module(domain).verify_many(
            [(task, text) for _, task, text in items],
            workers=workers,
            **verifier.kwargs(domain),
        )
        for (k, _, _), ok in zip(items, verdicts, strict=True):
            out[k] = 1.0 if ok else 0.0
    sources = {d: verifier_record(d, verifier) for d in sorted(by_domain)}
    return out, {"kind": "verifier", "verifiers": sources}


def build_records(
    lines: list[tuple[str, dict, list[str]]],
    scores: np.ndarray,
    gold: dict,
    cfg: LabelGoldConfig,
    *,
    seed: int,
) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """Pair consecutive replies, label them, and build the standard records.

    Returns:
        Records per split, and counts of pairs dropped (an empty reply,
        identical replies, ties) and flipped.
    """
    candidates, at = [], 0
    dropped = {"empty": 0, "identical": 0, "tie": 0}
    for split, rec, texts in lines:
        for k in range(0, len(texts), 2):
            pair = (texts[k], texts[k + 1]), (scores[at + k], scores[at + k + 1])
            if not (texts[k].strip() and texts[k + 1].strip()):
                dropped["empty"] += 1  # the pair format has no empty replies
            elif texts[k].strip() == texts[k + 1].strip():
                dropped["identical"] += 1
            elif cfg.labels == "hard" and pair[1][0] == pair[1][1]:
                dropped["tie"] += 1
            else:
                candidates.append((split, rec, k // 2, *pair))
        at += len(texts)
    rng = np.random.default_rng([seed, 1])
    labelled = label_pairs(
        np.array([c[4][0] for c in candidates], dtype=np.float64),
        np.array([c[4][1] for c in candidates], dtype=np.float64),
        labels=cfg.labels,
        noise=cfg.noise,
        rng=rng,
    )
    out: dict[str, list[dict]] = {}
    for i, (split, rec, k, texts, pair_scores) in enumerate(candidates):
        win = 0 if labelled.a_wins[i] else 1
        chosen, rejected = texts[win], texts[1 - win]
        prompt = rec["prompt"]
        out.setdefault(split, []).append(
            {
                "id": f"gold-{rec['id']}-{k}",
                "domain": DOMAIN,
                "subset": rec.get("domain") or "",
                "prompt": prompt,
                "chosen": [*prompt, {"role": "assistant", "content": chosen}],
                "rejected": [*prompt, {"role": "assistant", "content": rejected}],
                "attributes": {
                    side: {
                        "correctness": float("nan"),
                        "verbosity": count_words(text),
                        "format": float("nan"),
                    }
                    for side, text in (("chosen", chosen), ("rejected", rejected))
                },
                "metadata": {
                    "source_id": rec["id"],
                    "gold": {
                        **gold,
                        "chosen_score": float(pair_scores[win]),
                        "rejected_score": float(pair_scores[1 - win]),
                        "prob_chosen": float(
                            labelled.prob_a[i] if win == 0 else 1 - labelled.prob_a[i]
                        ),
                        "labels": cfg.labels,
                        "noise": cfg.noise,
                        "flipped": bool(labelled.flipped[i]),
                    },
                    "seed": seed,
                },
            }
        )
    counts = {**dropped, "flipped": int(labelled.flipped.sum())}
    return out, counts


def label_gold(
    policy: str,
    pairs: Sequence[Path],
    out: Sequence[Path],
    *,
    seed: int,
    cfg: LabelGoldConfig,
    gold_model: str | None = None,
    exclude: Sequence[Path] = (),
    verifier: VerifierOptions | None = None,
    progress_every: float = PROGRESS_EVERY_S,
) -> dict:
    """Sample replies, score them with the gold, write labelled pair splits.

    Args:
        policy: causal LM folder or hub id that answers the prompts.
        pairs: pair files whose prompts are labelled (the train splits).
        out: one JSONL per split (file stem = split), written all or none.
        seed: seeds the prompt choice, sampling, BT labels and noise.
        cfg: the stage config.
        gold_model: RM folder or hub id; None: the domains' verifiers.
        exclude: pair files whose prompts must not be used.
        verifier: how the verifiers check (without ``gold_model``).
        progress_every: seconds between two progress lines of the sampling.

    Returns:
        Summary: pairs per split, drops, flips, gold kind, agreement of the
        labels with the gold, the gold score spread and sampling speed.

    Raises:
        UserError: too few prompts, or a split left with no pair.
        ValueError: on bad arguments.
    """
    splits = [Path(p).stem for p in out]
    if len(set(splits)) != len(splits) or set(splits) - set(cfg.sizes):
        raise ValueError(f"--out splits {splits} must be distinct keys of sizes")
    if gold_model is None and cfg.labels != "hard":
        raise ValueError("verifier gold gives 1/0 verdicts: use --labels hard")
    picked = select_prompts(pairs, exclude, splits, cfg, seed=seed)
    sampled = sample_policy(
        policy,
        [rec["prompt"] for _, rec in picked],
        seed=seed,
        cfg=cfg,
        name="label_gold",
        progress_every=progress_every,
    )
    texts = sampled.texts
    lines = [(rec, t) for (_, rec), t in zip(picked, texts, strict=True)]
    if gold_model is not None:
        scores, gold = _gold_model_scores(lines, gold_model, cfg)
    else:
        scores, gold = _verifier_scores(lines, cfg, verifier or VerifierOptions())
    gold["policy_chat_format"] = sampled.chat_format.record(with_template=False)
    records, counts = build_records(
        [(s, r, t) for (s, r), t in zip(picked, sampled.texts, strict=True)],
        scores,
        gold,
        cfg,
        seed=seed,
    )
    empty = [s for s in splits if not records.get(s)]
    if empty:
        raise UserError(
            f"no labelled pair left for split(s) {empty}: every pair was identical"
            f" or tied ({counts}); raise sizes or samples, or use another gold"
        )
    written = write_jsonl_all(
        {Path(p): records[s] for p, s in zip(out, splits, strict=True)}
    )
    summary = {
        "pairs": {s: written[Path(p)] for p, s in zip(out, splits, strict=True)},
        **counts,
        "gold": gold["kind"],
        "gold_score_mean": float(np.mean(scores)),
        "gold_score_std": float(np.std(scores)),
        "replies": int(len(scores)),
        "replies_per_second": len(scores) / sampled.seconds if sampled.seconds else 0,
    }
    logger.info("gold-labelled pairs: %s", summary)
    return summary


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`label_gold`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.label_gold",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[2:8]),
    )
    parser.add_argument("--policy", required=True, help="causal LM folder or hub id")
    parser.add_argument(
        "--gold-model",
        default=None,
        help="gold RM folder or hub id (default: each domain's verifier)",
    )
    parser.add_argument(
        "--pairs", type=Path, nargs="+", required=True, help="prompt sources"
    )
    parser.add_argument(
        "--exclude", type=Path, nargs="*", default=[], help="prompts never used"
    )
    parser.add_argument(
        "--out", type=Path, nargs="+", required=True, help="JSONL per split"
    )
    parser.add_argument("--seed", type=int, required=True, help="run seed")
    parser.add_argument(
        "--math-extraction", choices=MATH_EXTRACTION, default="balanced"
    )
    add_sandbox_arg(parser)
    add_progress_arg(parser)
    add_dataclass_args(parser, LabelGoldConfig)
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = make_parser().parse_args(argv)
    setup_logging()
    cfg = dataclass_from_args(LabelGoldConfig, args)
    log_run_header(
        logger,
        cfg,
        policy=args.policy,
        gold_model=args.gold_model,
        pairs=[str(p) for p in args.pairs],
        exclude=[str(p) for p in args.exclude],
        out=[str(p) for p in args.out],
        seed=args.seed,
        versions=library_versions(),
    )
    label_gold(
        args.policy,
        args.pairs,
        args.out,
        seed=args.seed,
        cfg=cfg,
        gold_model=args.gold_model,
        exclude=args.exclude,
        verifier=VerifierOptions(
            math_extraction=args.math_extraction,
            sandbox_backend=args.sandbox_backend,
        ),
        progress_every=args.progress_every,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
