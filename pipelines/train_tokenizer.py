r"""Train the tiny preset's byte-level BPE tokenizer on the generated corpus.

    python -m pipelines.train_tokenizer --data results/data/*/train.jsonl \
        results/data/sft/*/train.jsonl --out results/tokenizer

Every message of every record (pairs: prompt, chosen and rejected replies; SFT:
messages) is a training text, read in the order the files are given, so the
same files give the same tokenizer. Only the ``train`` splits and SFT data are
meant to be passed: test prompts stay unseen.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.common.cli import (
    add_dataclass_args,
    dataclass_from_args,
    field_help,
    handle_user_errors,
)
from pipelines.common.io import atomic_dir
from pipelines.common.logs import log_run_header, setup_logging

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrainTokenizerConfig:
    """Tokenizer knobs (YAML section ``tokenizer``)."""

    vocab_size: int = field_help(
        "BPE vocabulary size, special tokens included", default=4096
    )
    min_frequency: int = field_help("minimum pair count for a merge", default=2)


def corpus(files: Sequence[Path]) -> Iterator[str]:
    """Yield the message texts of every record of ``files``, in order."""
    for path in files:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                rec = json.loads(line)
                if "messages" in rec:
                    yield from (m["content"] for m in rec["messages"])
                else:
                    yield from (m["content"] for m in rec["prompt"])
                    yield rec["chosen"][-1]["content"]
                    yield rec["rejected"][-1]["content"]


def train_tokenizer(
    data: Sequence[Path], out: Path, *, cfg: TrainTokenizerConfig
) -> dict[str, int]:
    """Train and save the tokenizer (atomically) as a Hugging Face fast tokenizer.

    Args:
        data: JSONL files of pairs or SFT records.
        out: the folder to write (``save_pretrained``).
        cfg: vocabulary size and merge threshold.

    Returns:
        ``{"vocab_size": ..., "texts": ...}``.
    """
    from pipelines.common import modeling

    texts = list(corpus(data))
    if not texts:
        raise ValueError(f"no text in {list(map(str, data))}")
    tok = modeling.train_tokenizer(
        texts, vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency
    )
    with atomic_dir(out) as tmp:
        tok.save_pretrained(tmp)
    logger.info("tokenizer: %d tokens from %d texts -> %s", len(tok), len(texts), out)
    return {"vocab_size": len(tok), "texts": len(texts)}


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`train_tokenizer`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.train_tokenizer", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--data", nargs="+", type=Path, required=True, help="JSONL files"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    add_dataclass_args(parser, TrainTokenizerConfig)
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = make_parser().parse_args(argv)
    setup_logging()
    cfg = dataclass_from_args(TrainTokenizerConfig, args)
    log_run_header(logger, cfg, data=[str(p) for p in args.data], out=str(args.out))
    train_tokenizer(args.data, args.out, cfg=cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
