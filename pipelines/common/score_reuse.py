"""Reuse a model's earlier scores of the inputs that did not change.

A model's score store is rewritten whenever its ``score_model`` job reruns: a
benchmark was added, a test split or a gens file was rebuilt, a setting
changed. The rule marks the store ``update()``, so Snakemake keeps the
previous one in place (and restores it if the job fails), and the job copies
the scores of every input whose *key* is unchanged instead of computing them
again: adding a benchmark scores only that benchmark, in the same one load.

The key of an input is the SHA-256 of everything that decides its scores:

- the bytes of every file of the model folder (weights, config, tokenizer,
  ``run_config.json``) and of a separate tokenizer folder;
- the load settings, the device they resolve to, and the versions of torch,
  transformers and tokenizers;
- the source of every module of the ``pipelines`` package (any code change
  rescores);
- the input: its kind, spec or path, the bytes of its local files, its
  encoding settings and the bytes of a chat template given as a file.

An input read from the hub without a pinned ``revision``, or a model or
tokenizer given by hub id, gets no key and is always scored afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.common.chat_format import load_chat_template
from pipelines.common.logs import library_versions
from pipelines.common.score_store import (
    CANDIDATE,
    CHOSEN,
    PAIRS,
    REJECTED,
    file_sha256,
    read_metadata,
    read_rows,
)
from pipelines.common.scoring import InputSettings, ScorerConfig

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd

logger = logging.getLogger(__name__)

KEYED_VERSIONS = ("torch", "transformers", "tokenizers")
NOT_KEYED = ("reuse",)  # ScorerConfig fields that do not change a score


def tree_sha256(root: Path, pattern: str = "*") -> str:
    """SHA-256 over the relative paths and bytes of the files under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob(pattern) if p.is_file()):
        rel = path.relative_to(root).as_posix()
        digest.update(f"{rel}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def code_sha256() -> str:
    """SHA-256 of the source of every module of the ``pipelines`` package."""
    import pipelines

    return tree_sha256(Path(pipelines.__file__).parent, "*.py")


def load_context(model: str, cfg: ScorerConfig) -> dict | None:
    """What every input's key shares: model, tokenizer, load, device, code.

    Returns:
        A JSON-able dict, or None when the model or tokenizer is not a local
        folder (nothing is reused then).
    """
    from pipelines.common.modeling import resolve_device

    if not Path(model).is_dir():
        return None
    tokenizer = None
    if cfg.tokenizer is not None:
        if not Path(cfg.tokenizer).is_dir():
            return None
        tokenizer = tree_sha256(Path(cfg.tokenizer))
    load = {k: v for k, v in asdict(cfg).items() if k not in NOT_KEYED}
    return {
        "model": tree_sha256(Path(model)),
        "tokenizer": tokenizer,
        "load": load,
        "device": str(resolve_device(cfg.device)),
        "versions": library_versions(KEYED_VERSIONS),
        "code": code_sha256(),
    }


def _pinned(spec: Mapping) -> bool:
    """Every hub entry of a benchmark spec names a revision (local paths hash)."""
    entries = [spec]
    if isinstance(spec.get("prior_sets"), Mapping):
        entries.append(spec["prior_sets"])
    return all("hub" not in e or e.get("revision") is not None for e in entries)


def input_key(
    context: Mapping | None,
    *,
    kind: str,
    source: object,
    files: Mapping[str, str],
    settings: InputSettings,
) -> str | None:
    """The key of one input, or None when it must always be scored afresh."""
    if context is None:
        return None
    if isinstance(source, Mapping) and not _pinned(source):
        return None
    template = settings.chat_template
    template_sha = None
    if template is not None:
        template_sha = hashlib.sha256(
            load_chat_template(template).encode("utf-8")
        ).hexdigest()
    material = {
        "context": context,
        "kind": kind,
        "source": source,
        "files": dict(files),
        "settings": asdict(settings),
        "chat_template_sha256": template_sha,
    }
    text = json.dumps(material, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def reusable(
    path: Path, keys: Mapping[str, str | None], expected: Mapping[str, Sequence[str]]
) -> tuple[dict, dict[str, pd.DataFrame]]:
    """The previous store's inputs whose key matches, with their rows.

    Args:
        path: the store about to be rewritten (it may not exist).
        keys: input name -> its key now (None: never reused).
        expected: input name -> the record ids it holds now, one per row of a
            pair input and one per candidate of a candidates input (in order),
            checked against the previous rows.

    Returns:
        ``(previous metadata, {name: rows in store order})``; empty when there
        is no readable previous store.
    """
    if not path.is_file() or not any(keys.values()):
        return {}, {}
    try:
        meta = read_metadata(path)
        rows = read_rows(path)
    except (OSError, ValueError) as err:  # unreadable or not a store: rescore
        logger.warning("%s: previous store unreadable, nothing reused (%s)", path, err)
        return {}, {}
    out = {}
    for name, key in keys.items():
        info = meta.get("inputs", {}).get(name)
        if key is None or info is None or info.get("key") != key:
            continue
        part = rows[rows["input"] == name]
        if info["kind"] == PAIRS:
            sides = part["side"].tolist()
            ok = sides == [CHOSEN, REJECTED] * (len(part) // 2)
            ids = part["id"].tolist()[::2]
        else:
            ok = set(part["side"]) <= {CANDIDATE}
            ids = part["id"].tolist()
        if ok and ids == list(expected[name]):
            out[name] = part.reset_index(drop=True)
        else:
            logger.warning("%s: rows of %r do not match its key; rescoring", path, name)
    return meta, out
