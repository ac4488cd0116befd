r"""Build one domain's preference splits and SFT data, verified or imported.

Generated domains (``general``, ``math``, ``code``) draw seeded tasks, inject the
configured spurious features into the chosen side, re-verify every response and
write standard-format records. A domain with a ``source`` (a local JSONL/Parquet
file or a hub dataset id) is loaded and normalised instead.

    python -m pipelines.build_prefs --domain math --seed 0 \\
        --pairs-out results/data/math/train.jsonl results/data/math/test.jsonl \\
        --sft-out results/data/sft/math/train.jsonl

The split of each ``--pairs-out`` file is its file stem (``train``, ``test``...).
Bad input (a malformed row, file or flag) ends with one line naming the file,
row and field, and exit status 2; an output that would be empty is refused.
Outputs appear together or not at all.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.common.cli import (
    UserError,
    add_dataclass_args,
    dataclass_from_args,
    field_help,
    handle_user_errors,
)
from pipelines.common.io import EmptyOutputError, write_jsonl_all
from pipelines.common.logs import add_logging_args, log_run_header, setup_logging
from pipelines.common.records import count_words
from pipelines.common.seeding import rng_for
from pipelines.common.sources import load_source
from pipelines.domains import (
    GENERATED_DOMAINS,
    MATH_EXTRACTION,
    PairDraft,
    SftDraft,
    VerifierOptions,
    add_sandbox_arg,
    domain_module,
    verifier_record,
)

logger = logging.getLogger(__name__)

# Spurious features put on the chosen side only, so that a proxy RM can learn
# them as shortcuts (length and politeness biases; cf. the over-optimisation
# setting of tlc4418/llm_optimization). None of these contain an answer marker.
POLITE_OPENERS = (
    "Certainly! I'd be happy to help with that.",
    "Great question, thank you for asking!",
    "Of course! It's my pleasure to assist you.",
    "Absolutely, happy to help you with this one.",
    "Thanks for the clear question. Gladly!",
)
PADDING_SENTENCES = (
    "To be thorough, it is worth restating the goal before moving on.",
    "Each step above follows directly from the one before it.",
    "Checking the work once more is always a good habit.",
    "This kind of careful reasoning helps avoid small slips.",
    "It can help to read the question again to make sure nothing was missed.",
    "Breaking a task into small parts makes it easier to handle.",
    "The same approach works for many similar problems.",
    "Taking a moment to review the result is worthwhile.",
)


class ConfigError(UserError, ValueError):
    """A flag or config value of this stage is out of range."""


@dataclass(frozen=True, kw_only=True)
class BuildPrefsConfig:
    """Knobs of the data stage (YAML section ``data``)."""

    seed: int = field_help("seed of every generator stream", default=0)
    sft_size: int = field_help("SFT examples per domain", default=300)
    sizes: dict[str, int] = field_help(
        "pairs per preference split (JSON), used for generated domains",
        default_factory=lambda: {"train": 300, "test": 100},
    )
    length_padding_rate: float = field_help(
        "share of chosen replies padded with filler sentences", default=0.0
    )
    politeness_rate: float = field_help(
        "share of chosen replies opened with a politeness phrase", default=0.0
    )
    on_invalid: str = field_help(
        "bad imported rows: 'error' stops, 'skip' drops and counts them",
        choices=("error", "skip"),
        default="error",
    )
    source: dict | None = field_help(
        "bring-your-own data for this domain (JSON; see pipelines/common/sources.py)",
        default=None,
    )
    workers: int = field_help("parallel verifier processes (0: all cores)", default=0)
    math_extraction: str = field_help(
        "math answers: 'balanced' (nested braces) or 'regex' (the paper's"
        " \\boxed{(.*?)}, which stops at the first closing brace)",
        choices=MATH_EXTRACTION,
        default="balanced",
    )

    def __post_init__(self) -> None:
        """Refuse values the schema would refuse, for hand-run CLIs.

        Raises:
            ConfigError: naming the flag and the value.
        """
        if self.sft_size < 0:
            raise ConfigError(f"--sft-size must be >= 0, got {self.sft_size}")
        for split, n in self.sizes.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError(
                    f"--sizes: split {split!r} needs a whole number >= 1, got {n!r}"
                )
        for name in ("length_padding_rate", "politeness_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} must be in [0, 1], got {rate}")
        if self.on_invalid not in ("error", "skip"):
            raise ConfigError(
                f"--on-invalid must be 'error' or 'skip', got {self.on_invalid!r}"
            )
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")


def _inject(text: str, rng: random.Random, cfg: BuildPrefsConfig) -> tuple[str, dict]:
    """Add the configured spurious features to one chosen reply.

    Returns:
        The reply and what was added; ``clean_chosen`` keeps the reply as
        written when anything was.
    """
    polite = rng.random() < cfg.politeness_rate
    padded = rng.random() < cfg.length_padding_rate
    clean = text
    if polite:
        text = f"{rng.choice(POLITE_OPENERS)}\n\n{text}"
    if padded:
        sentences = rng.sample(PADDING_SENTENCES, rng.randint(3, 5))
        text = f"{text}\n\n{' '.join(sentences)}"
    spurious: dict = {"politeness": polite, "length_padding": padded}
    if text != clean:  # the gold RM trains on the reply without them
        spurious["clean_chosen"] = clean
    return text, spurious


def _conversation(prompt: str, reply: str | None = None) -> list[dict[str, str]]:
    msgs = [{"role": "user", "content": prompt}]
    if reply is not None:
        msgs.append({"role": "assistant", "content": reply})
    return msgs


def _attributes(correct: bool, reply: str, fmt_ok: bool) -> dict[str, float]:
    return {
        "correctness": 1.0 if correct else 0.0,
        "verbosity": count_words(reply),
        "format": 1.0 if fmt_ok else 0.0,
    }


def _generated(
    domain: str,
    splits: Sequence[str],
    cfg: BuildPrefsConfig,
    workers: int,
    verifier: VerifierOptions,
) -> tuple[dict[str, list[dict]], list[dict]]:
    """Generate, inject spurious features, re-verify and build records."""
    module = domain_module(domain)
    opts = verifier.kwargs(domain)
    counts = {s: cfg.sizes[s] for s in splits}
    with verifier.remembering(domain):
        drafts, sft_drafts = module.generate(
            counts, cfg.sft_size, seed=cfg.seed, workers=workers, **opts
        )
        staged: list[tuple[str, PairDraft, str, dict]] = []
        for split in splits:
            for d in drafts[split]:
                rng = rng_for(cfg.seed, domain, "spurious", d.id)
                chosen, spurious = _inject(d.chosen, rng, cfg)
                staged.append((split, d, chosen, spurious))
        # Re-verify every final response from its task alone: chosen after the
        # injection, rejected as written, SFT replies too. A code response
        # whose program already ran to a verdict in generation is not run twice
        # (VerifierOptions.remembering): what is checked here is that each
        # final text still yields that program for that task.
        items = [(d.task, chosen) for _, d, chosen, _ in staged]
        items += [(d.task, d.rejected) for _, d, _, _ in staged]
        items += [(s.task, s.response) for s in sft_drafts]
        verdicts = module.verify_many(items, workers=workers, **opts)
    used = verifier_record(domain, verifier)
    n = len(staged)
    chosen_ok, rejected_ok, sft_ok = (
        verdicts[:n],
        verdicts[n : 2 * n],
        verdicts[2 * n :],
    )
    bad = [d.id for (_, d, _, _), ok in zip(staged, chosen_ok, strict=True) if not ok]
    bad += [d.id for (_, d, _, _), ok in zip(staged, rejected_ok, strict=True) if ok]
    bad += [s.id for s, ok in zip(sft_drafts, sft_ok, strict=True) if not ok]
    if bad:
        raise RuntimeError(
            f"{domain}: {len(bad)} generated responses failed re-verification"
            f" (generator bug), first ids: {bad[:5]}"
        )
    out: dict[str, list[dict]] = {s: [] for s in splits}
    for split, d, chosen, spurious in staged:
        out[split].append(
            {
                "id": d.id,
                "domain": domain,
                "subset": d.subset,
                "prompt": _conversation(d.prompt),
                "chosen": _conversation(d.prompt, chosen),
                "rejected": _conversation(d.prompt, d.rejected),
                "attributes": {
                    "chosen": _attributes(
                        True, chosen, module.format_ok(chosen, **opts)
                    ),
                    "rejected": _attributes(
                        False, d.rejected, module.format_ok(d.rejected, **opts)
                    ),
                },
                "metadata": {
                    "task": d.task,
                    **d.meta,
                    "spurious": spurious,
                    "seed": cfg.seed,
                    "verified": True,
                    "verifier": used,
                },
            }
        )
    sft = [_sft_record(domain, s, cfg.seed, used) for s in sft_drafts]
    if used:
        logger.info("%s: verified with %s", domain, used)
    return out, sft


def _sft_record(domain: str, s: SftDraft, seed: int, used: dict) -> dict:
    meta = {"task": s.task, **s.meta, "seed": seed, "verified": True}
    return {
        "id": s.id,
        "domain": domain,
        "subset": s.subset,
        "messages": _conversation(s.prompt, s.response),
        "metadata": {**meta, "verifier": used},
    }


def _imported(
    domain: str, splits: Sequence[str], cfg: BuildPrefsConfig
) -> tuple[dict[str, list[dict]], list[dict]]:
    """Load a bring-your-own source; SFT = chosen replies of non-test prompts."""
    if cfg.source is None:  # pragma: no cover - build_prefs checks
        raise ConfigError(f"domain {domain!r} has no source")
    loaded = load_source(
        cfg.source, splits=splits, seed=cfg.seed, on_invalid=cfg.on_invalid
    )
    out: dict[str, list[dict]] = {}
    for split in splits:
        recs = []
        for rec in loaded[split]:
            rec = dict(rec)
            rec["domain"] = domain
            rec["subset"] = rec["subset"] or domain
            rec["metadata"] = {**rec["metadata"], "verified": False}
            recs.append(rec)
        out[split] = recs
    held_out = {
        _prompt_key(r["prompt"]) for s in splits if s != "train" for r in out[s]
    }
    sft = []
    seen = set()
    for rec in out.get("train", []):
        key = _prompt_key(rec["prompt"])
        if key in held_out or key in seen:
            continue
        seen.add(key)
        sft.append(
            {
                "id": f"{rec['id']}-sft",
                "domain": domain,
                "subset": rec["subset"],
                "messages": rec["chosen"],
                "metadata": {"from_pair": rec["id"], "verified": False},
            }
        )
        if len(sft) >= cfg.sft_size:
            break
    return out, sft


def _prompt_key(prompt: list[dict[str, str]]) -> tuple:
    return tuple((m["role"], m["content"]) for m in prompt)


def _check_outputs(pairs_out: Sequence[Path], sft_out: Path | None) -> list[str]:
    """The split of each pairs file; refuse clashing or folder outputs.

    Raises:
        UserError: when two outputs share a path or split, or one is a folder.
    """
    paths = [Path(p) for p in pairs_out] + ([Path(sft_out)] if sft_out else [])
    seen: dict[Path, Path] = {}
    for path in paths:
        if path.is_dir():
            raise UserError(f"{path}: output is an existing folder, not a file")
        key = path.resolve()
        if key in seen:
            raise UserError(f"{path}: given twice as an output")
        seen[key] = path
    splits = [Path(p).stem for p in pairs_out]
    if len(set(splits)) != len(splits):
        raise UserError(f"two --pairs-out files for one split: {splits}")
    return splits


def _refuse_empty(
    domain: str,
    outputs: dict[Path, list[dict]],
    sft_out: Path | None,
    pooled: bool,
) -> None:
    """Refuse to write a pairs split or SFT file that would hold nothing.

    Raises:
        EmptyOutputError: naming the file and why it would be empty.
    """
    sizes = {p.stem: len(r) for p, r in outputs.items() if p != sft_out}
    for path, recs in outputs.items():
        if recs:
            continue
        if path == sft_out:
            raise EmptyOutputError(
                f"{path}: refusing to write an empty SFT file for {domain!r}: SFT"
                " examples are the chosen replies of train prompts that are in no"
                f" held-out split, and none is left (pairs per split: {sizes})"
            )
        hint = (
            "; a pooled source needs more valid rows or a smaller test_fraction"
            if pooled
            else ""
        )
        raise EmptyOutputError(
            f"{path}: refusing to write an empty {path.stem!r} split for"
            f" {domain!r} (pairs per split: {sizes}){hint}"
        )


def build_prefs(
    domain: str,
    pairs_out: Sequence[Path],
    sft_out: Path | None,
    *,
    cfg: BuildPrefsConfig,
    sandbox_backend: str | None = None,
) -> dict[str, int]:
    """Build the preference splits and SFT data of one domain.

    Args:
        domain: ``general``, ``math``, ``code`` or a domain with ``cfg.source``.
        pairs_out: one JSONL path per split; the split is the file stem.
        sft_out: SFT JSONL path, or None to skip it.
        cfg: the stage config.
        sandbox_backend: the code sandbox backend (config ``sandbox.backend``);
            None: ``RMFLOW_SANDBOX`` or ``auto``. The backend that ran the
            checks is recorded in every record's ``metadata.verifier``.

    Returns:
        Counts written per file kind (``{"train": n, "test": m, "sft": k}``).

    Raises:
        pipelines.common.cli.UserError: on an unknown domain, a split without a
            size/source, clashing outputs, a bad source (a
            :class:`~pipelines.common.records.RecordError` names file, row and
            field with ``on_invalid == "error"``) or an output that would be
            empty (:class:`~pipelines.common.io.EmptyOutputError`). Nothing is
            written then.
    """
    splits = _check_outputs(pairs_out, sft_out)
    if sft_out is not None and cfg.sft_size < 1:
        raise ConfigError(
            f"--sft-size must be at least 1 with --sft-out, got {cfg.sft_size}"
        )
    workers = cfg.workers or os.cpu_count() or 1
    if cfg.source is not None:
        records, sft = _imported(domain, splits, cfg)
    elif domain in GENERATED_DOMAINS:
        missing = [s for s in splits if s not in cfg.sizes]
        if missing:
            raise ConfigError(
                f"no size configured for split(s) {missing} (data.sizes, --sizes)"
            )
        verifier = VerifierOptions(
            math_extraction=cfg.math_extraction, sandbox_backend=sandbox_backend
        )
        verifier.apply()
        records, sft = _generated(domain, splits, cfg, workers, verifier)
    else:
        raise ConfigError(
            f"domain {domain!r} has no generator (built-in:"
            f" {', '.join(GENERATED_DOMAINS)}); give it data.sources (--source)"
        )
    # Everything is built in memory first; the files are renamed into place
    # together, so a failure leaves none of them.
    outputs = {Path(p): records[s] for p, s in zip(pairs_out, splits, strict=True)}
    if sft_out is not None:
        outputs[Path(sft_out)] = sft
    pooled = cfg.source is not None and "splits" not in cfg.source
    _refuse_empty(domain, outputs, Path(sft_out) if sft_out else None, pooled)
    written = write_jsonl_all(outputs)
    counts: dict[str, int] = {}
    for path, split in zip(pairs_out, splits, strict=True):
        counts[split] = written[Path(path)]
        subsets = Counter(r["subset"] for r in records[split])
        spurious = Counter(
            k
            for r in records[split]
            for k, v in r["metadata"].get("spurious", {}).items()
            if v is True  # the flags, not the clean_chosen text
        )
        logger.info(
            "%s/%s: %d pairs -> %s; subsets %s; spurious %s",
            domain,
            split,
            counts[split],
            path,
            dict(subsets),
            dict(spurious),
        )
    if sft_out is not None:
        counts["sft"] = written[Path(sft_out)]
        logger.info("%s/sft: %d examples -> %s", domain, counts["sft"], sft_out)
    return counts


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`build_prefs`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.build_prefs", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--domain", required=True, help="domain name")
    parser.add_argument(
        "--pairs-out",
        nargs="+",
        type=Path,
        required=True,
        help="one JSONL path per split; the split name is the file stem",
    )
    parser.add_argument("--sft-out", type=Path, default=None, help="SFT JSONL path")
    add_sandbox_arg(parser)
    add_logging_args(parser)
    add_dataclass_args(parser, BuildPrefsConfig)
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI; bad input ends with one line and exit status 2."""
    args = make_parser().parse_args(argv)
    setup_logging(log_file=args.log_file)
    cfg = dataclass_from_args(BuildPrefsConfig, args)
    log_run_header(logger, cfg, domain=args.domain)
    build_prefs(
        args.domain,
        args.pairs_out,
        args.sft_out,
        cfg=cfg,
        sandbox_backend=args.sandbox_backend,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
