"""Pair data for reward-model training: both sides tokenised, over-length handled.

Each standard-format pair becomes the token ids of its chosen and rejected
conversations (chat template, optional system turn). A pair with a side over
``max_length`` tokens is cut on the declared side with the tokenizer's special
tokens kept (``over_length="truncate"``, RLHFlow) or removed
(``over_length="drop"``, DogeRM: MiuLab/DogeRM src/train_rm.py filters out
pairs over 2048 tokens, ALGORITHMS.md section 4.1); either count is kept.

With ``max_pairs`` > 0 only a seeded draw of that many pairs is used (the
transfer study's n-curves, ALGORITHMS.md section 6.3): a permutation of the
loaded pairs (every file concatenated in order, before ``clean_chosen``,
tokenising and over-length handling, so the draw does not depend on the
tokenizer or ``max_length``), seeded by ``derive_seed(subset_seed, "subset")``;
its first ``max_pairs`` entries are kept, in file order. For one seed the draws
are nested (the 16 pairs of n = 16 are among the 64 of n = 64), so the n-curve
adds pairs rather than redrawing them and is smoother. With
``over_length="drop"`` the draw comes first, so fewer than ``max_pairs`` may
remain (``n_dropped`` says how many went).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.common.cli import UserError
from pipelines.common.records import read_pairs
from pipelines.common.seeding import rng_for
from pipelines.common.tokenization import encode_conversations

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

OVER_LENGTH = ("truncate", "drop")
# metrics list the drawn ids up to this many; beyond, only their sha256
MAX_LISTED_IDS = 256


class SubsetSizeError(UserError, ValueError):
    """``max_pairs`` is negative or more than the pairs available."""


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
    n_available: int = 0  # pairs read from the files, before any draw
    drawn_ids: list[str] | None = None  # ids of a max_pairs draw, in file order


def subset_indices(n_available: int, max_pairs: int, subset_seed: int) -> list[int]:
    """Indices of a seeded draw of ``max_pairs`` of ``n_available`` pairs.

    A permutation of ``range(n_available)`` by ``random.Random.shuffle`` seeded
    with ``derive_seed(subset_seed, "subset")``; its first ``max_pairs``
    entries, sorted. Draws of one seed are nested across ``max_pairs``.

    Args:
        n_available: the number of pairs loaded.
        max_pairs: how many to draw; 0 draws all of them.
        subset_seed: the draw's seed.

    Returns:
        Sorted indices into the loaded pairs.

    Raises:
        SubsetSizeError: ``max_pairs`` is negative or above ``n_available``.
    """
    if max_pairs < 0:
        raise SubsetSizeError(f"max_pairs {max_pairs}: must be >= 0 (0 = all pairs)")
    if max_pairs > n_available:
        raise SubsetSizeError(
            f"max_pairs {max_pairs} is more than the {n_available} pairs available"
        )
    order = list(range(n_available))
    if max_pairs == 0:
        return order
    rng_for(subset_seed, "subset").shuffle(order)
    return sorted(order[:max_pairs])


def draw_pairs(
    records: list[dict], max_pairs: int, subset_seed: int, sources: Sequence[Path]
) -> list[dict]:
    """The records of :func:`subset_indices` (all of them when ``max_pairs`` is 0).

    Raises:
        SubsetSizeError: as :func:`subset_indices`, naming ``sources``.
    """
    try:
        keep = subset_indices(len(records), max_pairs, subset_seed)
    except SubsetSizeError as err:
        raise SubsetSizeError(f"{[str(p) for p in sources]}: {err}") from None
    if max_pairs:
        logger.info(
            "training on a draw of %d of the %d pairs (subset_seed %d)",
            max_pairs,
            len(records),
            subset_seed,
        )
    return [records[i] for i in keep]


def subset_record(data: PairData, max_pairs: int, subset_seed: int) -> dict:
    """What metrics.json says of the draw: sizes, seed, drawn ids (or sha256)."""
    ids = data.drawn_ids
    digest = None if ids is None else hashlib.sha256("\n".join(ids).encode())
    listed = ids is not None and len(ids) <= MAX_LISTED_IDS
    return {
        "n_pairs_available": data.n_available,
        "max_pairs": max_pairs,
        "subset_seed": subset_seed,
        "subset_ids": ids if listed else None,
        "subset_ids_sha256": None if digest is None else digest.hexdigest(),
    }


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
    max_pairs: int = 0,
    subset_seed: int = 0,
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
        max_pairs: use a seeded draw of this many pairs (module docstring);
            0 uses all.
        subset_seed: the seed of that draw.

    Returns:
        The ids, the truncation / drop counts and the draw.

    Raises:
        ValueError: no pairs, an unknown ``over_length``, or every pair dropped.
        SubsetSizeError: ``max_pairs`` above the pairs available (or < 0).
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
    n_available = len(records)
    records = draw_pairs(records, max_pairs, subset_seed, pairs)
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
        n_available=n_available,
        drawn_ids=[r["id"] for r in records] if max_pairs else None,
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
