"""Facts about a finished run, read from its files without torch.

What the report's opening page states about what was run: lines per data file,
each saved model's role, architecture, parameter count (from the safetensors
headers) and training record (its ``run_config.json``), and the library
versions that training and scoring recorded.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

NOT_SET = "—"


def count_lines(path: Path) -> int:
    """Non-blank lines of a JSONL file."""
    with open(path, encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def data_sizes(paths: Sequence[Path]) -> pd.DataFrame:
    """Lines per data file, by domain and split (``sft`` for SFT data).

    Paths follow DESIGN.md: ``results/data/{domain}/{split}.jsonl`` (pairs)
    and ``results/data/sft/{domain}/train.jsonl`` (SFT examples).
    """
    rows = []
    for path in map(Path, paths):
        sft = path.parent.parent.name == "sft"
        rows.append(
            {
                "domain": path.parent.name,
                "split": "sft" if sft else path.stem,
                "n": count_lines(path),
            }
        )
    return pd.DataFrame(rows, columns=["domain", "split", "n"])


def safetensors_parameters(folder: Path) -> int | None:
    """Parameters stored in a folder's ``*.safetensors`` files (headers only).

    A safetensors file opens with an 8-byte little-endian header length and a
    JSON header giving every tensor's shape, so no tensor is read.
    """
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for name, entry in header.items():
            if name != "__metadata__":
                total += int(np.prod(entry["shape"], dtype=np.int64))
    return total


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def model_record(folder: Path) -> dict:
    """Role, architecture, size and training facts of one saved model folder.

    Args:
        folder: a folder saved by train_sft, train_rm or merge_dogerm.

    Returns:
        ``folder``, ``group`` (the folder, or its parent for RMs and merges:
        the seeds of a training set, the weights of a merge), ``role``
        (``sft``, ``rm`` or ``merged``), ``arch``, ``parameters`` (None when
        no safetensors file), ``seed``, ``detail`` (examples or pairs trained
        on, or the merge weight), ``source`` (``[base]``, or the merged
        ``[rm, lm]``) and ``versions``.

    Raises:
        ValueError: when the folder has no ``run_config.json`` (every model
            this workflow saves has one).
    """
    folder = Path(folder)
    run = _read_json(folder / "run_config.json")
    if run is None:
        raise ValueError(f"{folder}: no run_config.json")
    arch = _read_json(folder / "config.json") or {}
    metrics = _read_json(folder / "metrics.json") or {}
    epochs = (run.get("config") or {}).get("epochs")
    times = f" x {epochs} epoch{'' if epochs == 1 else 's'}" if epochs else ""
    if "merge" in run:
        merge = run["merge"]
        role, detail = "merged", f"{float(merge['lm_weight']):g}"
        source = [str(merge["rm"]), str(merge["lm"])]
    elif run.get("stage") == "train_rm":
        # results/models/gold is the gold RM; results/models/rm/<set>/seed<k>
        # the seeded RMs, grouped by training set
        role = "gold" if folder.name == "gold" else "rm"
        source = [str(run.get("base"))]
        detail = f"{run['n_pairs_trained']} pairs{times}"
    else:
        role = "sft"
        source = [str(run.get("base") or run.get("tokenizer") or NOT_SET)]
        detail = f"{metrics.get('n_examples', NOT_SET)} examples{times}"
    layers, hidden = arch.get("num_hidden_layers"), arch.get("hidden_size")
    shape = f"{layers} layers x {hidden}" if layers and hidden else ""
    return {
        "folder": str(folder),
        "group": str(folder if role in ("sft", "gold") else folder.parent),
        "role": role,
        "arch": " ".join(x for x in (arch.get("model_type", ""), shape) if x),
        "parameters": safetensors_parameters(folder),
        "seed": run.get("seed"),
        "detail": detail,
        "source": source,
        "versions": run.get("versions") or {},
    }


def versions_table(
    models: Sequence[dict], evals: Sequence[Path]
) -> list[tuple[str, str]]:
    """``(package, versions)`` recorded by training and scoring, per package.

    A package recorded with more than one version lists each with where.
    """
    seen: dict[str, dict[str, set[str]]] = {}
    sources = [("training", m["versions"]) for m in models]
    for path in evals:
        result = _read_json(Path(path)) or {}
        sources.append(("scoring", (result.get("settings") or {}).get("versions", {})))
    for where, versions in sources:
        for package, version in versions.items():
            seen.setdefault(package, {}).setdefault(str(version), set()).add(where)
    rows = []
    for package in sorted(seen, key=lambda p: (p != "python", p)):
        found = seen[package]
        if len(found) == 1:
            rows.append((package, next(iter(found))))
        else:
            parts = [f"{v} ({', '.join(sorted(w))})" for v, w in sorted(found.items())]
            rows.append((package, "; ".join(parts)))
    return rows
