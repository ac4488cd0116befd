"""Stream tensors out of and into safetensors checkpoints, one tensor at a time.

:class:`Checkpoint` reads a folder saved by ``save_pretrained`` (one
``model.safetensors`` or shards with an index) lazily; :class:`ShardWriter`
writes tensors into shards of bounded size with the index transformers reads.
Memory stays near one shard, whatever the model size (the DogeRM merge).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import safe_open

if TYPE_CHECKING:
    import torch

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class Checkpoint:
    """Lazy tensor access to a safetensors checkpoint folder (single or sharded)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        if (folder / INDEX_FILE).exists():
            index = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
            files = dict(index["weight_map"])
        elif (folder / SINGLE_FILE).exists():
            with safe_open(folder / SINGLE_FILE, framework="pt") as fh:
                files = {name: SINGLE_FILE for name in fh.keys()}
        else:
            raise FileNotFoundError(
                f"{folder} has neither {SINGLE_FILE} nor {INDEX_FILE}"
                " (only safetensors checkpoints can be merged)"
            )
        self.files = files
        self._handles: dict[str, object] = {}
        firsts = Counter(name.split(".", 1)[0] for name in files if "." in name)
        self.prefix = firsts.most_common(1)[0][0] + "." if firsts else ""

    def _handle(self, name: str) -> object:
        fname = self.files[name]
        if fname not in self._handles:
            self._handles[fname] = safe_open(self.folder / fname, framework="pt")
        return self._handles[fname]

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor."""
        return self._handle(name).get_tensor(name)

    def shape(self, name: str) -> list[int]:
        """Shape of one tensor without reading its data."""
        return list(self._handle(name).get_slice(name).get_shape())

    def strip(self, name: str) -> str:
        """``name`` without the model's base prefix (``gpt_neox.``, ``model.``)."""
        return name[len(self.prefix) :] if name.startswith(self.prefix) else name


class ShardWriter:
    """Accumulate tensors and flush them to safetensors shards of bounded size."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max(1, max_bytes)
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[tuple[str, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue a tensor; flush the pending shard first if it would overflow."""
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self.flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += size
        self.total_bytes += size

    def flush(self) -> None:
        """Write the pending tensors as one shard (a temporary name)."""
        if not self.pending:
            return
        from safetensors.torch import save_file

        fname = f"shard-{len(self.shards):05d}.safetensors"
        save_file(self.pending, str(self.folder / fname), metadata={"format": "pt"})
        self.shards.append((fname, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> int:
        """Flush, give the shards their final names and write the index if needed.

        Returns:
            The number of shards.
        """
        self.flush()
        n = len(self.shards)
        if n == 1:
            (self.folder / self.shards[0][0]).rename(self.folder / SINGLE_FILE)
            return 1
        weight_map = {}
        for i, (fname, names) in enumerate(self.shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (self.folder / fname).rename(self.folder / final)
            weight_map.update({name: final for name in names})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.folder / INDEX_FILE).write_text(
            json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        return n
