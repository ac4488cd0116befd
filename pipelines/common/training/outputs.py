"""What a training run leaves besides its checkpoints: records and the model.

The run's fingerprint (what decides whether a checkpoint belongs to it), file
digests and the config as a dict for ``run_config.json``, and the atomic
``save_pretrained`` of the final model and tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipelines.common.io import atomic_dir, write_json

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

# the training modules log as their package, the name users grep logs for
logger = logging.getLogger(__package__)


def json_default(obj: object) -> object:
    """``json.dumps`` fallback for tuples, sets and numpy scalars."""
    if isinstance(obj, tuple | set):
        return list(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def file_digest(path: Path) -> str:
    """SHA-256 of a file (recorded in run configs and checkpoint fingerprints)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_fingerprint(**parts: object) -> str:
    """A short hash of what determines a run (config, seed, base, data digests)."""
    text = json.dumps(parts, sort_keys=True, default=json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_dict(cfg: object) -> dict:
    """A dataclass config as a plain dict."""
    return asdict(cfg) if is_dataclass(cfg) else dict(cfg)  # type: ignore[call-overload]


def save_pretrained_atomic(
    out: Path,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    json_files: Mapping[str, object] | None = None,
) -> None:
    """``save_pretrained`` model and tokenizer (safetensors) plus JSON files.

    Args:
        out: the output folder; it appears whole or not at all.
        model: a Hugging Face model (unwrapped, adapters merged).
        tokenizer: its tokenizer.
        json_files: file name -> JSON-able object, written beside the weights.
    """
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name, obj in (json_files or {}).items():
            write_json(tmp / name, obj)
    logger.info("saved %s", out)
