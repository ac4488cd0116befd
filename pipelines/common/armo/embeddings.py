"""ArmoRM embedding files: one safetensors file per (dataset, split, shard).

``extract_embeddings`` writes them; ``fit_ridge``, ``train_gating`` and
``eval_armo`` read them with :func:`read_shards`, which concatenates the shards
of a set in order (shards are contiguous row ranges, :func:`shard_range`), so
the result equals what one unsharded job writes.

Two kinds (ALGORITHMS.md section 3):

``responses`` (the multi-objective data, stage 1)
    ``embeddings`` float32 ``[N, D]``: the backbone's final-norm hidden state
    at the last token of each conversation; ``labels`` float32 ``[N, K]``:
    the absolute attribute labels, NaN where unknown.
``pairs`` (preference, reference and evaluation sets, stage 2)
    ``embeddings`` float32 ``[N, 2, D]`` (index 0 = chosen, 1 = rejected) and
    ``prompt_embeddings`` float32 ``[N, 2, D]``: the hidden state at the start
    of the last assistant-turn pattern (the token closing the last user turn).

Every file carries JSON metadata: ``kind``, ``attributes`` (names of the label
columns, ``[]`` for pairs), ``ids`` of the kept rows (so labels and subsets
stay aligned after over-length rows are dropped), ``domains`` and ``subsets``
of the kept rows (pairs), ``dropped`` (ids dropped as over-length),
``n_rows`` (rows of the dataset this shard covered), ``shard``,
``n_shards``, ``backbone``, ``pattern`` (token ids of the gating pattern).

Torch-free: numpy arrays through ``safetensors.numpy``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.common.cli import UserError
from pipelines.common.io import atomic_path

KINDS = ("responses", "pairs")
_LIST_KEYS = ("attributes", "ids", "domains", "subsets", "dropped", "pattern")


class EmbeddingFileError(UserError, ValueError):
    """An embedding file is missing a tensor, or shards do not fit together."""


def shard_range(n_rows: int, shard: int, n_shards: int) -> range:
    """Rows of shard ``shard`` (0-based) of ``n_shards``: contiguous, balanced.

    Raises:
        ValueError: unless ``0 <= shard < n_shards``.
    """
    if n_shards < 1 or not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} of {n_shards}: need 0 <= shard < n_shards")
    return range(n_rows * shard // n_shards, n_rows * (shard + 1) // n_shards)


@dataclass
class EmbeddingSet:
    """Embeddings of one set (all shards concatenated)."""

    kind: str
    embeddings: np.ndarray  # [N, D] responses, [N, 2, D] pairs
    ids: list[str]
    attributes: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None  # [N, K] responses
    prompt_embeddings: np.ndarray | None = None  # [N, 2, D] pairs
    domains: list[str] = field(default_factory=list)
    subsets: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    n_rows: int = 0  # rows read (kept + dropped)
    backbone: str = ""
    pattern: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        """Hidden size D."""
        return int(self.embeddings.shape[-1])


def write_shard(
    path: Path | str, data: EmbeddingSet, *, shard: int, n_shards: int
) -> None:
    """Write one shard whole (a temp file renamed into place)."""
    from safetensors.numpy import save_file

    if data.kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {data.kind!r}")
    tensors = {"embeddings": np.ascontiguousarray(data.embeddings, dtype=np.float32)}
    if data.kind == "responses":
        if data.labels is None:
            raise ValueError("a responses shard needs labels")
        tensors["labels"] = np.ascontiguousarray(data.labels, dtype=np.float32)
    else:
        if data.prompt_embeddings is None:
            raise ValueError("a pairs shard needs prompt embeddings")
        tensors["prompt_embeddings"] = np.ascontiguousarray(
            data.prompt_embeddings, dtype=np.float32
        )
    meta = {key: json.dumps(getattr(data, key)) for key in _LIST_KEYS}
    meta |= {
        "kind": data.kind,
        "n_rows": str(data.n_rows),
        "shard": str(shard),
        "n_shards": str(n_shards),
        "backbone": data.backbone,
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _read_one(path: Path) -> tuple[EmbeddingSet, int, int]:
    from safetensors import safe_open

    if not path.is_file():
        raise EmbeddingFileError(f"{path}: no such embedding file")
    with safe_open(str(path), framework="numpy") as fh:
        meta: Mapping[str, str] = fh.metadata() or {}
        names = set(fh.keys())
        kind = meta.get("kind")
        if kind not in KINDS:
            raise EmbeddingFileError(f"{path}: metadata 'kind' is {kind!r}")
        need = {"embeddings", "labels" if kind == "responses" else "prompt_embeddings"}
        if need - names:
            raise EmbeddingFileError(
                f"{path}: missing tensor(s) {sorted(need - names)}"
            )
        arrays = {name: fh.get_tensor(name) for name in need}
    lists = {key: json.loads(meta.get(key, "[]")) for key in _LIST_KEYS}
    data = EmbeddingSet(
        kind=kind,
        embeddings=arrays["embeddings"],
        labels=arrays.get("labels"),
        prompt_embeddings=arrays.get("prompt_embeddings"),
        n_rows=int(meta.get("n_rows", "0")),
        backbone=meta.get("backbone", ""),
        **lists,
    )
    if len(data.embeddings) != len(data.ids):
        raise EmbeddingFileError(
            f"{path}: {len(data.embeddings)} embeddings but {len(data.ids)} ids"
        )
    return data, int(meta.get("shard", "0")), int(meta.get("n_shards", "1"))


def read_shards(paths: Sequence[Path | str]) -> EmbeddingSet:
    """Concatenate the shards of one set, checking they are its shards 0..n-1.

    Raises:
        EmbeddingFileError: on a missing file or tensor, shards out of order or
            incomplete, or shards of different kinds, attributes or backbones.
    """
    if not paths:
        raise EmbeddingFileError("no embedding files given")
    parts = [_read_one(Path(p)) for p in paths]
    first = parts[0][0]
    n_shards = parts[0][2]
    got = [s for _, s, _ in parts]
    if got != list(range(n_shards)) or any(n != n_shards for _, _, n in parts):
        raise EmbeddingFileError(
            f"expected shards 0..{n_shards - 1} of {n_shards} in order, got"
            f" {[f'{s} of {n}' for _, s, n in parts]} ({[str(p) for p in paths]})"
        )
    for (part, _, _), path in zip(parts, paths, strict=True):
        for key in ("kind", "attributes", "backbone", "pattern"):
            if getattr(part, key) != getattr(first, key):
                raise EmbeddingFileError(
                    f"{path}: {key} {getattr(part, key)!r} differs from the first"
                    f" shard's {getattr(first, key)!r}"
                )
    sets = [p for p, _, _ in parts]

    def cat(name: str) -> np.ndarray | None:
        arrays = [getattr(s, name) for s in sets]
        return None if arrays[0] is None else np.concatenate(arrays, axis=0)

    return EmbeddingSet(
        kind=first.kind,
        embeddings=cat("embeddings"),
        labels=cat("labels"),
        prompt_embeddings=cat("prompt_embeddings"),
        ids=[i for s in sets for i in s.ids],
        attributes=list(first.attributes),
        domains=[d for s in sets for d in s.domains],
        subsets=[d for s in sets for d in s.subsets],
        dropped=[d for s in sets for d in s.dropped],
        n_rows=sum(s.n_rows for s in sets),
        backbone=first.backbone,
        pattern=list(first.pattern),
    )
