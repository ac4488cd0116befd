"""The per-model score store: every score one model gave, in one Parquet file.

``results/scores/{model_id}.parquet`` is written by :mod:`pipelines.score_model`
and read by the torch-free stages (``eval_rm``, ``bon_estimate``, the
reports). One row per scored sequence, columns :data:`COLUMNS`:

``input`` (string)
    the input's name: a benchmark name (``math-test``) for pairs, ``gens/<stem>``
    for a best-of-n candidates file.
``row`` (int64)
    the 0-based position of the pair, or of the prompt's line, in its input.
``id`` (string)
    the pair id, or the line's ``prompt_id``.
``side`` (string)
    ``chosen`` or ``rejected`` for a pair; ``candidate`` for a candidate.
``cand_idx`` (int64)
    the candidate's index in its line's ``candidates``; -1 for a pair side.
``score`` (float64), ``truncated`` (bool)
    the model's reward, and whether the sequence was cut to ``max_length``.

The schema metadata key ``rmflow`` holds JSON: ``model_id``, ``model``,
``tokenizer``, ``load`` (dtype, device, batch size, pad token...), ``versions``
and ``inputs``: per input its ``kind`` (``pairs`` or ``candidates``), ``source``
(the benchmark spec or the gens path), ``files`` (sha256 of each local file it
was read from), ``settings`` (max_length, truncation_side, chat_template,
system_prompt as configured), ``chat_format`` (as resolved), counts of
records, sequences and truncations, and for benchmarks the load counts.

Candidate files (``results/bon/gens/{domain}.jsonl``) are read here too
(:func:`load_candidates`), and a store's candidate scores aligned to them
(:func:`load_member_scores`). Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipelines.common.cli import UserError
from pipelines.common.io import atomic_path

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd
    import pyarrow as pa

logger = logging.getLogger(__name__)

COLUMNS = ("input", "row", "id", "side", "cand_idx", "score", "truncated")
METADATA_KEY = b"rmflow"
FORMAT_VERSION = 1
PAIRS, CANDIDATES = "pairs", "candidates"
CHOSEN, REJECTED, CANDIDATE = "chosen", "rejected", "candidate"
NO_CANDIDATE = -1  # cand_idx of a pair side
GENS_PREFIX = "gens/"
MAX_NAMED = 5  # missing candidates named in an error message


class StoreError(UserError, ValueError):
    """A score store that does not hold what a stage needs from it."""


def gens_input_name(path: Path | str) -> str:
    """The input name of a candidates file: ``gens/<file stem>``."""
    return GENS_PREFIX + Path(path).stem


def parse_benchmark_spec(text: str) -> dict:
    """A benchmark spec from CLI text: a JSON object, or a path to a standard file.

    Raises:
        ValueError: JSON that is not an object.
    """
    stripped = text.strip()
    if stripped.startswith("{"):
        spec = json.loads(stripped)
        if not isinstance(spec, dict):
            raise ValueError(f"a benchmark spec must be a JSON object: {text!r}")
        return spec
    return {"kind": "standard", "path": stripped}


def file_sha256(path: Path | str) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("input", pa.string()),
            ("row", pa.int64()),
            ("id", pa.string()),
            ("side", pa.string()),
            ("cand_idx", pa.int64()),
            ("score", pa.float64()),
            ("truncated", pa.bool_()),
        ]
    )


def write_store(
    path: Path | str, columns: Mapping[str, Sequence], metadata: Mapping
) -> None:
    """Write a store atomically (nothing is left on failure).

    Args:
        path: the Parquet file.
        columns: column name -> values, for every name of :data:`COLUMNS`.
        metadata: JSON-able; must hold ``model_id`` and ``inputs`` with a
            ``kind`` for every input named in ``columns["input"]``.

    Raises:
        ValueError: a missing column, or an input without metadata.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"store columns missing: {missing}")
    described = metadata.get("inputs", {})
    undescribed = sorted(set(columns["input"]) - set(described))
    if undescribed or "model_id" not in metadata:
        raise ValueError(
            f"store metadata needs model_id and inputs for {undescribed or 'all'}"
        )
    meta = {"format": FORMAT_VERSION, **metadata}
    schema = _schema().with_metadata(
        {METADATA_KEY: json.dumps(meta, sort_keys=True).encode("utf-8")}
    )
    table = pa.table({name: columns[name] for name in COLUMNS}, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_metadata(path: Path | str) -> dict:
    """The store's ``rmflow`` metadata.

    Raises:
        StoreError: the file is not a score store.
    """
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None or any(c not in schema.names for c in COLUMNS):
        raise StoreError(
            f"{path}: not a score store (needs columns {list(COLUMNS)} and"
            " rmflow metadata; written by pipelines.score_model)"
        )
    return json.loads(raw)


def input_meta(path: Path | str, meta: Mapping, name: str, kind: str) -> dict:
    """The metadata of input ``name``, which must be of ``kind``.

    Raises:
        StoreError: the store holds no such input, or one of another kind.
    """
    inputs = meta.get("inputs", {})
    if name not in inputs:
        raise StoreError(
            f"{path}: no scores for {name!r} (it holds {sorted(inputs)}); rerun"
            f" its score_model job, e.g. snakemake -R score_model {path}"
        )
    got = inputs[name]
    if got.get("kind") != kind:
        raise StoreError(f"{path}: input {name!r} holds {got.get('kind')}, not {kind}")
    return dict(got)


def check_files(path: Path | str, name: str, recorded: Mapping[str, str]) -> None:
    """Check that the local files an input was scored from are unchanged.

    Args:
        path: the store (for messages).
        name: the input (for messages).
        recorded: file -> sha256 at scoring time.

    Raises:
        StoreError: a file that is gone or whose bytes changed since.
    """
    for file, digest in recorded.items():
        if not Path(file).is_file():
            raise StoreError(f"{path}: input {name!r} was scored from {file}, now gone")
        if file_sha256(file) != digest:
            raise StoreError(
                f"{path}: input {name!r} was scored from another version of"
                f" {file} (sha256 differs); rerun its score_model job"
            )


def read_rows(path: Path | str, name: str | None = None) -> pd.DataFrame:
    """The store's rows (a pandas DataFrame), all or those of input ``name``."""
    import pyarrow.parquet as pq

    filters = None if name is None else [("input", "=", name)]
    return pq.read_table(path, filters=filters).to_pandas()


@dataclass(frozen=True)
class PairScores:
    """One benchmark's scores from a store, in its pairs' order."""

    ids: list[str]
    chosen: np.ndarray
    rejected: np.ndarray
    truncated_chosen: np.ndarray
    truncated_rejected: np.ndarray
    meta: dict  # the whole store's metadata
    input: dict  # this input's metadata


def read_pair_scores(path: Path | str, name: str) -> PairScores:
    """Chosen and rejected scores of benchmark ``name`` by pair position.

    Raises:
        StoreError: no such input; rows missing, repeated or not pair sides.
    """
    meta = read_metadata(path)
    info = input_meta(path, meta, name, PAIRS)
    rows = read_rows(path, name)
    n = int(info["n_records"])
    out = {}
    for side in (CHOSEN, REJECTED):
        part = rows[rows["side"] == side].sort_values("row", kind="stable")
        if part["row"].tolist() != list(range(n)):
            raise StoreError(
                f"{path}: input {name!r} needs one {side} score for each of its"
                f" {n} pairs, got {len(part)} rows"
            )
        out[side] = part
    if len(rows) != 2 * n:
        raise StoreError(f"{path}: input {name!r} holds rows that are no pair side")
    ids = out[CHOSEN]["id"].tolist()
    if ids != out[REJECTED]["id"].tolist():
        raise StoreError(f"{path}: input {name!r}: chosen and rejected ids differ")
    return PairScores(
        ids=[str(i) for i in ids],
        chosen=out[CHOSEN]["score"].to_numpy(dtype=np.float64),
        rejected=out[REJECTED]["score"].to_numpy(dtype=np.float64),
        truncated_chosen=out[CHOSEN]["truncated"].to_numpy(dtype=bool),
        truncated_rejected=out[REJECTED]["truncated"].to_numpy(dtype=bool),
        meta=meta,
        input=info,
    )


# ------------------------------------------------------------ best-of-n side


@dataclass(frozen=True)
class Candidates:
    """The candidates of all prompts, flattened in file and prompt order.

    Prompt ``p`` owns flat positions ``offsets[p]:offsets[p + 1]``.
    """

    prompt_ids: list[str]
    domains: list[str]
    offsets: np.ndarray
    gold: np.ndarray
    files: tuple[Path, ...] = ()
    limit: int | None = None  # only the first `limit` candidates of a prompt

    @property
    def sizes(self) -> np.ndarray:
        """Candidate count of every prompt."""
        return np.diff(self.offsets)


def load_candidates(gens: Sequence[Path], limit: int | None = None) -> Candidates:
    """Read candidate files into one flat table of gold scores.

    Args:
        gens: JSONL files with one prompt per line (``prompt_id``, ``domain``,
            ``candidates`` with a ``gold`` score each).
        limit: keep only the first ``limit`` candidates of each prompt (those
            a store scored with ``max_candidates``); None keeps all.

    Returns:
        The flattened candidates.

    Raises:
        ValueError: when no prompt is found, a prompt id repeats, a prompt has
            no candidates or a gold score is not a finite number.
    """
    prompt_ids: list[str] = []
    domains: list[str] = []
    sizes: list[int] = []
    gold: list[float] = []
    where: dict[str, Path] = {}
    for path in gens:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                rec = json.loads(line)
                pid = str(rec["prompt_id"])
                if pid in where:
                    raise ValueError(f"prompt_id {pid!r} in {where[pid]} and {path}")
                where[pid] = Path(path)
                cands = rec["candidates"][:limit]
                if not cands:
                    raise ValueError(f"{path}: prompt {pid!r} has no candidates")
                values = [c["gold"] for c in cands]
                if not all(
                    isinstance(v, int | float) and np.isfinite(v) for v in values
                ):
                    raise ValueError(f"{path}: prompt {pid!r} has a non-finite gold")
                prompt_ids.append(pid)
                domains.append(str(rec["domain"]))
                sizes.append(len(cands))
                gold.extend(values)
    if not prompt_ids:
        raise ValueError(f"no prompts in {[str(p) for p in gens]}")
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return Candidates(
        prompt_ids,
        domains,
        offsets,
        np.asarray(gold, dtype=np.float64),
        tuple(Path(p) for p in gens),
        limit,
    )


def _candidate_rows(path: Path, meta: Mapping, cands: Candidates) -> pd.DataFrame:
    """The candidate rows of a store, after checking its gens files are current."""
    names = [
        n for n, v in meta.get("inputs", {}).items() if v.get("kind") == CANDIDATES
    ]
    if not names:
        raise StoreError(
            f"{path}: holds no candidate scores (its inputs:"
            f" {sorted(meta.get('inputs', {}))})"
        )
    wanted = {str(p) for p in cands.files}
    for name in names:
        recorded = meta["inputs"][name].get("files", {})
        check_files(path, name, {f: d for f, d in recorded.items() if f in wanted})
    rows = read_rows(path)
    return rows[rows["side"] == CANDIDATE]


def load_member_scores(path: Path, cands: Candidates, member_id: str) -> np.ndarray:
    """One model's score of every candidate, in flat candidate order.

    Rows are matched by ``(prompt_id, cand_idx)``. Rows of prompts absent from
    ``cands`` are ignored (the store may hold more candidate files).

    Args:
        path: the model's score store.
        cands: the candidates to fill.
        member_id: the model's name, for messages.

    Returns:
        Float64 array aligned with ``cands.gold``.

    Raises:
        StoreError: not a store, or one without candidates, or one scored from
            another version of a gens file.
        ValueError: a candidate index outside its prompt, a repeated
            ``(prompt_id, cand_idx)``, a non-finite score, or a candidate
            without a score (the first few are named).
    """
    import pandas as pd

    meta = read_metadata(path)
    table = _candidate_rows(Path(path), meta, cands)
    pos = pd.Index(cands.prompt_ids).get_indexer(table["id"].astype(str))
    known = pos >= 0
    if not known.all():
        logger.warning(
            "member %r (%s): ignoring %d rows of %d prompts not in the candidate files",
            member_id,
            path,
            int((~known).sum()),
            table.loc[~known, "id"].nunique(),
        )
    table, pos = table[known], pos[known]
    if cands.limit is not None:  # a store may hold more than the first `limit`
        kept = table["cand_idx"].to_numpy() < cands.limit
        table, pos = table[kept], pos[kept]
    idx = table["cand_idx"].to_numpy()
    sizes = cands.sizes[pos]
    bad = (idx < 0) | (idx >= sizes)
    if bad.any():
        row = table[bad].iloc[0]
        raise ValueError(
            f"member {member_id!r} ({path}): cand_idx {row['cand_idx']} is outside"
            f" prompt {row['id']!r} ({sizes[bad][0]} candidates)"
        )
    flat = cands.offsets[pos] + idx
    seen = np.bincount(flat, minlength=len(cands.gold))
    if (seen > 1).any():
        k = int(np.flatnonzero(seen > 1)[0])
        raise ValueError(
            f"member {member_id!r} ({path}): repeated score for {_name(cands, k)}"
        )
    if (seen == 0).any():
        holes = np.flatnonzero(seen == 0)
        named = ", ".join(_name(cands, int(k)) for k in holes[:MAX_NAMED])
        raise ValueError(
            f"member {member_id!r} ({path}) has no score for {len(holes)}"
            f" candidate(s): {named}{', ...' if len(holes) > MAX_NAMED else ''}"
        )
    scores = np.empty(len(cands.gold), dtype=np.float64)
    scores[flat] = table["score"].to_numpy(dtype=np.float64)
    if not np.isfinite(scores).all():
        k = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise ValueError(
            f"member {member_id!r} ({path}): non-finite score for {_name(cands, k)}"
        )
    return scores


def _name(cands: Candidates, flat: int) -> str:
    """``prompt_id=... cand_idx=...`` of a flat candidate position."""
    p = int(np.searchsorted(cands.offsets, flat, side="right")) - 1
    return f"prompt_id={cands.prompt_ids[p]!r} cand_idx={flat - int(cands.offsets[p])}"
