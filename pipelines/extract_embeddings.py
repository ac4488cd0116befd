r"""Frozen-backbone embeddings of one shard of an ArmoRM data set.

    python -m pipelines.extract_embeddings --kind pairs \
        --data results/armo/data/preference/train.jsonl \
        --backbone results/models/rm/general/seed0 --shard 0 --n-shards 4 \
        --out results/armo/embeddings/preference/train/shard0-of-4.safetensors

One job per (dataset, split, shard), so the cluster runs the shards as parallel
GPU jobs (the original's ``--n_shards/--shard_idx``). Shard ``i`` of ``n``
covers rows ``[N i / n, N (i + 1) / n)`` of ``--data``, so the shards
concatenate to exactly the unsharded result
(:func:`pipelines.common.armo.embeddings.read_shards`).

``--kind responses`` reads :mod:`pipelines.build_armo_data`'s labelled
responses and writes last-token embeddings and labels; ``--kind pairs`` reads
standard pair records and writes, for chosen and rejected, the last-token and
the prompt embeddings (:mod:`pipelines.common.armo.backbone`). Conversations
are encoded whole under the backbone's chat format (its ``run_config.json``,
else its tokenizer's template, unless configured); a row with a side longer
than ``max_length`` tokens is dropped (the original: 8192), counted, and its id
listed in the file, whose ``ids`` name the kept rows in order. ``--help``
loads no torch.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from pipelines.common.armo.embeddings import (
    KINDS,
    EmbeddingSet,
    shard_range,
    write_shard,
)
from pipelines.common.cli import (
    add_dataclass_args,
    dataclass_from_args,
    field_help,
    handle_user_errors,
)
from pipelines.common.io import iter_jsonl
from pipelines.common.logs import PROGRESS_EVERY_S, log_run_header, setup_logging
from pipelines.common.progress import Progress
from pipelines.common.records import RecordError, nan_attributes, read_pairs

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True, kw_only=True)
class ExtractConfig:
    """Settings of an extraction job (YAML section ``armo.extract``)."""

    dtype: str = field_help("backbone weights", choices=DTYPES, default="float32")
    batch_size: int = field_help(
        "sequences per forward pass (length-sorted)", default=16
    )
    max_length: int = field_help(
        "a row with a longer side is dropped (the original: 8192)", default=8192
    )
    device: str = field_help("auto (CUDA if available), cpu, cuda:0...", default="auto")
    trust_remote_code: bool = field_help("allow model code from the hub", default=False)
    chat_template: str | None = field_help(
        "chat template (Jinja text or a file); None: the backbone's", default=None
    )
    system_prompt: str | None = field_help(
        "system prompt ('' = none); None: the backbone's", default=None
    )

    def __post_init__(self) -> None:
        """Reject values the job cannot honour."""
        if self.batch_size < 1 or self.max_length < 1:
            raise ValueError("batch_size and max_length must be >= 1")


def _read_responses(path: Path) -> list[tuple[int, dict]]:
    """``(row, line)`` of a responses file, checked: same label names in each."""
    out: list[tuple[int, dict]] = []
    names: list[str] | None = None
    for row, value in iter_jsonl(path):
        if not isinstance(value, Mapping):
            raise RecordError(str(path), row, "(row)", f"not an object: {value}")
        for key in ("id", "messages", "labels"):
            if key not in value:
                raise RecordError(str(path), row, key, "missing")
        labels = value["labels"]
        if not isinstance(labels, Mapping):
            raise RecordError(str(path), row, "labels", "expected an object")
        if names is None:
            names = list(labels)
        elif list(labels) != names:
            raise RecordError(
                str(path), row, "labels", f"names {list(labels)} differ from {names}"
            )
        out.append((row, dict(value)))
    return out


def _read(path: Path, kind: str) -> tuple[list[tuple[int, dict]], list[str]]:
    """Rows of the data file and the attribute names (responses)."""
    if kind == "pairs":
        return list(enumerate(read_pairs(path), start=1)), []
    rows = _read_responses(path)
    return rows, list(rows[0][1]["labels"]) if rows else []


def _encode_rows(tok, rows, kind, cfg, system_prompt, pattern, source):
    """Token ids per kept row (1 or 2 sequences), prompt positions, dropped ids."""
    from pipelines.common.armo.backbone import encode_texts, prompt_positions

    sides = ("messages",) if kind == "responses" else ("chosen", "rejected")
    per_side = [
        encode_texts(tok, [r[s] for _, r in rows], system_prompt) for s in sides
    ]
    kept, dropped, seqs = [], [], []
    for i, (_, rec) in enumerate(rows):
        ids = [side[i] for side in per_side]
        if max(len(x) for x in ids) > cfg.max_length:
            dropped.append(str(rec["id"]))
            continue
        kept.append(i)
        seqs.extend(ids)
    positions = None
    if kind == "pairs":
        names = [
            f"{source}: row {rows[i][0]} (id {rows[i][1]['id']}) {side}"
            for i in kept
            for side in sides
        ]
        positions = prompt_positions(seqs, pattern, names)
    return kept, dropped, seqs, positions


def extract_embeddings(
    data: Path,
    backbone: str,
    out: Path,
    *,
    kind: str,
    shard: int = 0,
    n_shards: int = 1,
    cfg: ExtractConfig | None = None,
) -> EmbeddingSet:
    """Embed one shard of ``data`` with the frozen ``backbone`` and write it.

    Returns:
        What was written.

    Raises:
        pipelines.common.records.RecordError: on a malformed row (file, row, field).
        pipelines.common.armo.backbone.PatternError: when the chat template
            yields no assistant-turn pattern, or a pair side lacks it.
    """
    from pipelines.common.armo.backbone import assistant_pattern, embed, load_backbone
    from pipelines.common.chat_format import setup_chat_format
    from pipelines.common.modeling import load_tokenizer, resolve_device

    cfg = cfg or ExtractConfig()
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rows, attributes = _read(data, kind)
    rows = [rows[i] for i in shard_range(len(rows), shard, n_shards)]
    tok = load_tokenizer(backbone, trust_remote_code=cfg.trust_remote_code)
    fmt = setup_chat_format(
        tok, backbone, chat_template=cfg.chat_template, system_prompt=cfg.system_prompt
    )
    pattern = assistant_pattern(tok) if kind == "pairs" else []
    logger.info("assistant-turn pattern: %s", pattern or "(not needed)")
    kept, dropped, seqs, positions = _encode_rows(
        tok, rows, kind, cfg, fmt.system_prompt, pattern, str(data)
    )
    if dropped:
        logger.warning(
            "%d of %d rows dropped: a side over %d tokens (first: %s)",
            len(dropped),
            len(rows),
            cfg.max_length,
            dropped[:5],
        )
    model = load_backbone(
        backbone,
        dtype=cfg.dtype,
        device=resolve_device(cfg.device),
        trust_remote_code=cfg.trust_remote_code,
    )
    progress = Progress(
        "embedding",
        len(seqs),
        unit="sequences",
        logger=logger,
        every_s=PROGRESS_EVERY_S,
    )
    last, prompt = embed(
        model, seqs, prompt_at=positions, batch_size=cfg.batch_size, progress=progress
    )
    progress.finish()
    recs = [rows[i][1] for i in kept]
    result = _result(kind, recs, last, prompt, attributes, dropped, len(rows))
    result.backbone, result.pattern = str(backbone), list(pattern)
    write_shard(out, result, shard=shard, n_shards=n_shards)
    logger.info("wrote %d rows (%d dropped) to %s", len(recs), len(dropped), out)
    return result


def _result(kind, recs, last, prompt, attributes, dropped, n_rows) -> EmbeddingSet:
    import numpy as np

    ids = [str(r["id"]) for r in recs]
    if kind == "responses":
        labels = np.array(
            [list(nan_attributes(r["labels"]).values()) for r in recs],
            dtype=np.float32,
        ).reshape(len(recs), len(attributes))
        return EmbeddingSet(
            kind=kind,
            embeddings=last,
            labels=labels,
            ids=ids,
            attributes=attributes,
            domains=[str(r.get("domain")) for r in recs],
            dropped=dropped,
            n_rows=n_rows,
        )
    dim = last.shape[-1]
    return EmbeddingSet(
        kind=kind,
        embeddings=last.reshape(len(recs), 2, dim),
        prompt_embeddings=prompt.reshape(len(recs), 2, dim),
        ids=ids,
        domains=[str(r.get("domain")) for r in recs],
        subsets=[str(r.get("subset")) for r in recs],
        dropped=dropped,
        n_rows=n_rows,
    )


def make_parser() -> argparse.ArgumentParser:
    """The CLI parser."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.extract_embeddings",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--data", type=Path, required=True, help="a .jsonl data file")
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument("--backbone", required=True, help="folder or hub id")
    parser.add_argument("--shard", type=int, default=0, help="0-based shard index")
    parser.add_argument("--n-shards", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="a .safetensors file")
    add_dataclass_args(parser, ExtractConfig)
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = make_parser().parse_args(argv)
    setup_logging()
    cfg = dataclass_from_args(ExtractConfig, args)
    log_run_header(
        logger,
        cfg,
        data=str(args.data),
        kind=args.kind,
        backbone=args.backbone,
        shard=f"{args.shard} of {args.n_shards}",
        out=str(args.out),
    )
    extract_embeddings(
        args.data,
        args.backbone,
        args.out,
        kind=args.kind,
        shard=args.shard,
        n_shards=args.n_shards,
        cfg=cfg,
    )
    logger.info("settings %s", json.dumps(asdict(cfg), sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
