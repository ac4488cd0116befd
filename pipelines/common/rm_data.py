"""Pair data for reward-model training: both sides tokenised, over-length handled.

Each standard-format pair becomes the token ids of its chosen and rejected
conversations (chat template, optional system turn). A pair with a side over
``max_length`` tokens is cut on the declared side with the tokenizer's special
tokens kept (``over_length="truncate"``, RLHFlow) or removed
(``over_length="drop"``, DogeRM: MiuLab/DogeRM src/train_rm.py filters out
pairs over 2048 tokens, ALGORITHMS.md section 4.1); either count is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.common.records import read_pairs
from pipelines.common.tokenization import encode_conversations

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

OVER_LENGTH = ("truncate", "drop")


@dataclass
class PairData:
    """Token ids of the chosen and rejected sequences of every pair."""

    chosen: list[list[int]]
    rejected: list[list[int]]
    n_truncated: int  # pairs with at least one side cut (and kept)
    n_truncated_chosen: int
    n_truncated_rejected: int
    per_file: dict[str, int]
    n_dropped: int = 0  # over-length pairs removed (over_length="drop")
    n_over_chosen: int = 0  # sequences over max_length, cut or dropped
    n_over_rejected: int = 0


def without_spurious(record: dict) -> dict:
    """The pair with its chosen reply as written before spurious features.

    build_prefs keeps the reply it padded or made polite in
    ``metadata.spurious.clean_chosen``; a record without one is returned as is.
    """
    clean = (record.get("metadata") or {}).get("spurious", {}).get("clean_chosen")
    if clean is None:
        return record
    chosen = [*record["chosen"][:-1], {**record["chosen"][-1], "content": clean}]
    return {**record, "chosen": chosen}


def load_pair_data(
    pairs: Sequence[Path],
    tok: PreTrainedTokenizerBase,
    *,
    max_length: int,
    truncation_side: str,
    over_length: str = "truncate",
    system_prompt: str | None = None,
    clean_chosen: bool = False,
) -> PairData:
    """Read pair files and tokenise both sides; cut or drop over-length pairs.

    With ``over_length="truncate"`` an over-length side is cut on the declared
    side (the tokenizer's special tokens kept) and the pair is kept; with
    ``"drop"`` a pair with either side over ``max_length`` is removed. Either
    way the pairs concerned are counted and logged.

    Args:
        pairs: standard-format JSONL files, concatenated in order.
        tok: the tokenizer, with the chat template to use.
        max_length: maximum tokens per sequence.
        truncation_side: ``left`` or ``right``.
        over_length: ``truncate`` or ``drop``.
        system_prompt: prepended as a system turn to conversations without one.
        clean_chosen: replace each chosen reply that build_prefs gave spurious
            features by the reply as written before (``metadata.spurious.
            clean_chosen``); pairs without it are used as they are.

    Returns:
        The ids and the truncation / drop counts.

    Raises:
        ValueError: no pairs, an unknown ``over_length``, or every pair dropped.
    """
    if over_length not in OVER_LENGTH:
        raise ValueError(f"over_length must be one of {OVER_LENGTH}: {over_length!r}")
    records: list[dict] = []
    per_file: dict[str, int] = {}
    for path in pairs:
        recs = read_pairs(path)
        per_file[str(path)] = len(recs)
        records.extend(recs)
    if not records:
        raise ValueError(f"no pairs in {[str(p) for p in pairs]}")
    if clean_chosen:
        records = [without_spurious(r) for r in records]
    encoded = [
        encode_conversations(
            tok,
            [r[side] for r in records],
            max_length=max_length,
            truncation_side=truncation_side,
            system_prompt=system_prompt,
        )
        for side in ("chosen", "rejected")
    ]
    chosen, rejected = encoded
    over = [c or r for c, r in zip(chosen.cut, rejected.cut, strict=True)]
    keep = [not o for o in over] if over_length == "drop" else [True] * len(over)
    n_dropped = len(over) - sum(keep)
    if n_dropped == len(records):
        raise ValueError(
            f"over_length=drop removed all {len(records)} pairs of"
            f" {[str(p) for p in pairs]}: every pair has a side over max_length"
            f" {max_length} tokens"
        )
    cut = over_length == "truncate"  # else no kept pair was cut
    data = PairData(
        chosen=[ids for ids, k in zip(chosen.ids, keep, strict=True) if k],
        rejected=[ids for ids, k in zip(rejected.ids, keep, strict=True) if k],
        n_truncated=sum(over) if cut else 0,
        n_truncated_chosen=chosen.truncated if cut else 0,
        n_truncated_rejected=rejected.truncated if cut else 0,
        per_file=per_file,
        n_dropped=n_dropped,
        n_over_chosen=chosen.truncated,
        n_over_rejected=rejected.truncated,
    )
    _log_pair_data(data, len(records), max_length, truncation_side)
    return data


def _log_pair_data(
    data: PairData, n_read: int, max_length: int, truncation_side: str
) -> None:
    """Log where the pairs came from, their lengths and the cut / dropped counts."""
    for path, n in data.per_file.items():
        logger.info("pairs: %d from %s", n, path)
    lengths = [len(s) for s in data.chosen + data.rejected]
    logger.info(
        "tokenised %d pairs: mean length %.1f, max %d (max_length %d)",
        n_read,
        sum(lengths) / len(lengths),
        max(lengths),
        max_length,
    )
    if data.n_truncated:
        logger.warning(
            "%d of %d pairs exceed max_length %d and were truncated on the %s"
            " (chosen %d, rejected %d); they are kept",
            data.n_truncated,
            n_read,
            max_length,
            truncation_side,
            data.n_truncated_chosen,
            data.n_truncated_rejected,
        )
    if data.n_dropped:
        logger.warning(
            "%d of %d pairs have a side over max_length %d (chosen %d, rejected"
            " %d) and were dropped (over_length=drop); %d pairs remain",
            data.n_dropped,
            n_read,
            max_length,
            data.n_over_chosen,
            data.n_over_rejected,
            len(data.chosen),
        )
