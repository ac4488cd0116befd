r"""DogeRM: merge a reward model with a domain causal LM by linear interpolation.

    python -m pipelines.merge_dogerm merge --rm RM_DIR --lm LM_DIR --out DIR \
        --rm-weight 0.7 --lm-weight 0.3

Every transformer parameter the two models share becomes
``rm_weight * RM + lm_weight * LM`` (ALGORITHMS.md section 4.2); the RM's score
head is kept, the LM head is dropped, and the input embeddings are merged row
by row over the shared vocabulary, LM-only tokens being appended with their LM
rows. Tensors are streamed from the safetensors files one at a time and written
in shards, so memory stays near one output shard rather than three models.

The merged model keeps the RM's tokenizer (extended with LM-only tokens) and
inherits the RM's chat format: the ``chat_format`` of the RM's
``run_config.json`` (template and system prompt it was trained with) is copied
into the merged folder's ``run_config.json``, so scoring a merge uses the RM's
system prompt by default, whatever the folder is called (ALGORITHMS.md
section 4.3 [BUG]). An RM without one leaves ``chat_format`` null: the merged
model is then scored like the RM, with its tokenizer's template.

Every ``--progress-every`` seconds the log gets a progress line (tensors
merged, rate, ETA), and one at the end. ``--help`` loads no torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.common.chat_format import (
    RUN_CONFIG,
    ChatFormat,
    recorded_chat_format,
)
from pipelines.common.cli import (
    add_dataclass_args,
    dataclass_from_args,
    field_help,
    handle_user_errors,
)
from pipelines.common.io import atomic_dir
from pipelines.common.logs import (
    PROGRESS_EVERY_S,
    add_progress_arg,
    log_run_header,
    setup_logging,
)
from pipelines.common.progress import Progress
from pipelines.common.safetensors_shards import Checkpoint, ShardWriter

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# First name components that mark a model's head rather than its body.
SCORE_HEADS = ("score", "classifier")
LM_HEADS = ("lm_head", "embed_out")
# Shape fields that must agree for a parameter-wise merge to make sense.
SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads")


@dataclass(frozen=True, kw_only=True)
class MergeConfig:
    """Merge weights (DogeRM's ``seq_weight`` and ``lm_weight``) and output sharding."""

    rm_weight: float = field_help("weight of the reward model (alpha)", default=0.5)
    lm_weight: float = field_help("weight of the domain LM (beta)", default=0.5)
    shard_size_mb: float = field_help(
        "maximum size of one output safetensors shard in MB", default=2000.0
    )


def model_folder(name: str) -> Path:
    """The local folder of a model given as a folder or a hub id.

    A hub id is fetched into the Hugging Face cache (config, tokenizer and
    safetensors files only: the merge streams safetensors and never unpickles
    ``.bin`` weights). With ``HF_HUB_OFFLINE=1`` only the cache is read.

    Raises:
        FileNotFoundError: ``name`` is neither a folder nor a fetchable hub id.
    """
    folder = Path(name)
    if folder.is_dir():
        return folder
    from huggingface_hub import snapshot_download

    try:
        fetched = snapshot_download(
            repo_id=name,
            allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model"],
        )
    except Exception as err:  # hub errors have many types; name the model
        raise FileNotFoundError(
            f"{name}: not a local folder, and fetching it from the hub failed: {err}"
        ) from err
    logger.info("%s: hub snapshot in %s", name, fetched)
    return Path(fetched)


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{folder} has no config.json")
    return json.loads(path.read_text(encoding="utf-8"))


def check_compatible(rm_config: dict, lm_config: dict, rm: str, lm: str) -> None:
    """Refuse a merge of two models of different architecture or shape.

    Args:
        rm_config: the RM's ``config.json`` contents.
        lm_config: the LM's ``config.json`` contents.
        rm: RM path, for the message.
        lm: LM path, for the message.

    Raises:
        ValueError: ``model_type`` or a shape field differs.
    """
    for key in ("model_type", *SHAPE_KEYS):
        a, b = rm_config.get(key), lm_config.get(key)
        if a != b:
            raise ValueError(
                f"cannot merge models with different {key}: RM {rm} has {a!r},"
                f" LM {lm} has {b!r}"
            )


def _special_tokens(tok: PreTrainedTokenizerBase) -> set[str]:
    special = set(tok.all_special_tokens)
    special.update(t.content for t in tok.added_tokens_decoder.values() if t.special)
    return special


def merge_vocab(
    rm_tok: PreTrainedTokenizerBase, lm_tok: PreTrainedTokenizerBase
) -> tuple[list[int], list[int]]:
    """Check the vocabularies and extend ``rm_tok`` with the LM-only tokens.

    Args:
        rm_tok: the RM tokenizer; LM-only tokens are added to it in place.
        lm_tok: the LM tokenizer.

    Returns:
        ``(shared_ids, lm_only_ids)``: ids of tokens in both vocabularies and
        ids of tokens only the LM has (their ids in the extended RM tokenizer).

    Raises:
        ValueError: a token of the RM is missing from the LM, or sits at a
            different id there (its embedding row could not be merged), or an
            LM-only token would get a different id once appended.
    """
    rm_vocab, lm_vocab = rm_tok.get_vocab(), lm_tok.get_vocab()
    missing = [t for t in rm_vocab if t not in lm_vocab]
    if missing:
        raise ValueError(
            f"{len(missing)} RM token(s) are not in the LM vocabulary (e.g."
            f" {missing[:5]!r}); their embeddings would be lost, so the merge is"
            " refused"
        )
    moved = [(t, i, lm_vocab[t]) for t, i in rm_vocab.items() if lm_vocab[t] != i]
    if moved:
        raise ValueError(
            f"{len(moved)} token(s) have different ids in the RM and LM (token, RM"
            f" id, LM id: {moved[:5]!r}); the vocabularies are not aligned"
        )
    shared = sorted(rm_vocab.values())
    lm_special = _special_tokens(lm_tok)
    lm_only = sorted((i, t) for t, i in lm_vocab.items() if t not in rm_vocab)
    for lm_id, token in lm_only:
        if token in lm_special:
            rm_tok.add_special_tokens(
                {"additional_special_tokens": [token]},
                replace_extra_special_tokens=False,
            )
        else:
            rm_tok.add_tokens([token])
        new_id = rm_tok.convert_tokens_to_ids(token)
        if new_id != lm_id:
            raise ValueError(
                f"LM-only token {token!r} has id {lm_id} in the LM but would get"
                f" id {new_id} in the merged tokenizer; the LM ids are not contiguous"
            )
    return shared, [i for i, _ in lm_only]


def inherited_chat_format(rm_dir: Path) -> ChatFormat | None:
    """The chat format recorded in the RM's ``run_config.json``, if any.

    Returns:
        The RM's template and system prompt, their source naming the RM's
        ``run_config.json``; None when the RM recorded no format.
    """
    recorded, where = recorded_chat_format(rm_dir)
    if recorded is None:
        logger.info("%s records no chat format: the merge records none", where)
        return None
    return ChatFormat(
        template=recorded["chat_template"],
        system_prompt=recorded.get("system_prompt") or None,
        template_source=where,
        system_prompt_source=where,
    )


def _is_head(stripped: str, heads: tuple[str, ...]) -> bool:
    return stripped.split(".", 1)[0] in heads


def merge_dogerm(
    rm: str,
    lm: str,
    out: Path,
    *,
    cfg: MergeConfig,
    progress_every: float = PROGRESS_EVERY_S,
) -> dict:
    """Merge a sequence-classification RM with a causal LM and save the result.

    Args:
        rm: the reward model (safetensors, single file or sharded): a local
            folder, or a hub id fetched into the hub cache (e.g. DogeRM's
            ``miulab/llama2-7b-ultrafeedback-rm``).
        lm: the causal LM of the same architecture (folder or hub id).
        out: output folder, written atomically.
        cfg: merge weights and shard size.
        progress_every: seconds between two progress lines of the tensor loop.

    Returns:
        The summary also written to ``out/merge_config.json``: weights,
        sources, counts of merged/copied/dropped tensors and vocabulary sizes.

    Raises:
        ValueError: different architecture or shape, misaligned vocabularies,
            an RM-only token, or a shared tensor of different shape.
        FileNotFoundError: a folder is not a safetensors checkpoint.
    """
    from transformers import AutoTokenizer

    alpha, beta = float(cfg.rm_weight), float(cfg.lm_weight)
    if abs(alpha + beta - 1.0) > 1e-6:
        logger.warning(
            "rm_weight %g + lm_weight %g = %g, not 1: the merge is not an"
            " interpolation (allowed, as in DogeRM)",
            alpha,
            beta,
            alpha + beta,
        )
    rm_dir, lm_dir = model_folder(rm), model_folder(lm)
    rm_config, lm_config = _read_config(rm_dir), _read_config(lm_dir)
    check_compatible(rm_config, lm_config, rm, lm)
    rm_ck, lm_ck = Checkpoint(rm_dir), Checkpoint(lm_dir)

    rm_tok = AutoTokenizer.from_pretrained(str(rm_dir))
    lm_tok = AutoTokenizer.from_pretrained(str(lm_dir))
    rm_vocab_len, lm_vocab_len = len(rm_tok), len(lm_tok)
    shared_ids, lm_only_ids = merge_vocab(rm_tok, lm_tok)

    chat_format = inherited_chat_format(rm_dir)
    counts: Counter = Counter()
    max_bytes = int(cfg.shard_size_mb * 1024 * 1024)
    progress = Progress(
        "merge_dogerm",
        len(rm_ck.files),
        unit="tensors",
        logger=logger,
        every_s=progress_every,
    )
    with atomic_dir(out) as tmp:
        writer = ShardWriter(tmp, max_bytes)
        vocab_size = _merge_tensors(
            rm_ck,
            lm_ck,
            writer,
            counts,
            (shared_ids, lm_only_ids),
            alpha,
            beta,
            progress=progress,
        )
        progress.finish()
        vocab_size = max(vocab_size, int(rm_config.get("vocab_size", rm_vocab_len)))
        n_shards = writer.finish()
        summary = {
            "method": "dogerm_linear",
            **asdict(cfg),
            "rm": str(rm),
            "lm": str(lm),
            "tensors": dict(sorted(counts.items())),
            "shards": n_shards,
            "rm_vocab": rm_vocab_len,
            "lm_vocab": lm_vocab_len,
            "out_vocab": len(rm_tok),
            "lm_only_tokens": len(lm_only_ids),
            "vocab_size": vocab_size,
            "chat_format": (
                chat_format.record(with_template=False) if chat_format else None
            ),
        }
        _write_records(tmp, rm_dir, rm_tok, rm_config, summary, chat_format)
    logger.info("merged %s + %s -> %s: %s", rm, lm, out, summary["tensors"])
    return summary


def _write_records(
    tmp: Path,
    rm_dir: Path,
    rm_tok: PreTrainedTokenizerBase,
    rm_config: dict,
    summary: dict,
    chat_format: ChatFormat | None,
) -> None:
    """Write the merged folder's config, tokenizer and run records into ``tmp``.

    ``config.json`` is the RM's with the merged ``vocab_size``;
    ``merge_config.json`` is ``summary``; ``run_config.json`` carries the
    RM's chat format (scorers of the merge inherit it).
    """
    config = dict(rm_config)
    config["vocab_size"] = summary["vocab_size"]
    (tmp / "config.json").write_text(
        json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    for extra in ("generation_config.json",):
        if (rm_dir / extra).exists():
            shutil.copy2(rm_dir / extra, tmp / extra)
    rm_tok.save_pretrained(str(tmp))
    run_config = {
        "stage": "merge_dogerm",
        "merge": summary,
        "chat_format": chat_format.record() if chat_format else None,
    }
    for name, obj in (("merge_config.json", summary), (RUN_CONFIG, run_config)):
        (tmp / name).write_text(
            json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )


def _merge_tensors(
    rm_ck: Checkpoint,
    lm_ck: Checkpoint,
    writer: ShardWriter,
    counts: Counter,
    vocab: tuple[list[int], list[int]],
    alpha: float,
    beta: float,
    progress: Progress | None = None,
) -> int:
    """Stream every RM tensor, merged with its LM counterpart, into ``writer``.

    Score heads and RM-only tensors are copied, input embeddings merged row by
    row over ``vocab`` (shared ids, LM-only ids), every other shared tensor
    becomes ``alpha * RM + beta * LM``; ``counts`` tallies each kind and
    ``progress`` counts the RM tensors done.

    Returns:
        The number of rows of the merged embedding (0 when none was merged).

    Raises:
        ValueError: a shared tensor has another shape in the LM.
    """
    lm_names = {lm_ck.strip(n): n for n in lm_ck.files}
    vocab_size = 0
    for name in rm_ck.files:
        stripped = rm_ck.strip(name)
        tensor = rm_ck.get(name)
        lm_name = lm_names.get(stripped)
        if _is_head(stripped, SCORE_HEADS) or "score" in stripped:
            writer.add(name, tensor)
            counts["copied_score"] += 1
        elif "embed" in stripped and (lm_name is None or tensor.dim() != 2):
            writer.add(name, tensor)
            counts["copied_rm_only"] += 1
        elif "embed" in stripped:
            merged = _merge_embeddings(tensor, lm_ck.get(lm_name), *vocab, alpha, beta)
            vocab_size = max(vocab_size, merged.shape[0])
            writer.add(name, merged)
            counts["merged_embeddings"] += 1
        elif lm_name is None:
            logger.warning("%s has no LM counterpart: copied from the RM", name)
            writer.add(name, tensor)
            counts["copied_rm_only"] += 1
        else:
            other = lm_ck.get(lm_name)
            if other.shape != tensor.shape:
                raise ValueError(
                    f"{name}: RM shape {list(tensor.shape)} differs from LM"
                    f" {lm_name} shape {list(other.shape)}"
                )
            # In place on the freshly read copy: no extra full-size temporaries.
            merged = tensor.float().mul_(alpha).add_(other.float(), alpha=beta)
            del other
            writer.add(name, merged.to(tensor.dtype))
            counts["merged"] += 1
        del tensor
        if progress is not None:
            progress.update()
    rm_stripped = {rm_ck.strip(n) for n in rm_ck.files}
    counts["dropped_lm_only"] = sum(1 for s in lm_names if s not in rm_stripped)
    return vocab_size


def _merge_embeddings(
    rm_emb: torch.Tensor,
    lm_emb: torch.Tensor,
    shared_ids: list[int],
    lm_only_ids: list[int],
    alpha: float,
    beta: float,
) -> torch.Tensor:
    """Merge input-embedding matrices row by row (spec 4.2, embeddings).

    Rows of shared tokens become ``alpha * RM + beta * LM``; LM-only rows are
    copied from the LM; RM rows beyond its tokenizer (padding rows) are kept.
    """
    import torch

    if rm_emb.shape[1] != lm_emb.shape[1]:
        raise ValueError(
            f"embedding widths differ: RM {rm_emb.shape[1]}, LM {lm_emb.shape[1]}"
        )
    need = max([*shared_ids, *lm_only_ids], default=-1) + 1
    if lm_emb.shape[0] < need:
        raise ValueError(
            f"the LM embedding has {lm_emb.shape[0]} rows but its tokenizer needs"
            f" {need}; resize the LM's embeddings first"
        )
    if shared_ids and rm_emb.shape[0] <= max(shared_ids):
        raise ValueError(
            f"the RM embedding has {rm_emb.shape[0]} rows but its tokenizer needs"
            f" {max(shared_ids) + 1}"
        )
    rows = max(rm_emb.shape[0], need)
    out = torch.zeros((rows, rm_emb.shape[1]), dtype=torch.float32)
    out[: rm_emb.shape[0]] = rm_emb.float()
    if shared_ids:
        idx = torch.as_tensor(shared_ids, dtype=torch.long)
        out[idx] = alpha * rm_emb[idx].float() + beta * lm_emb[idx].float()
    if lm_only_ids:
        idx = torch.as_tensor(lm_only_ids, dtype=torch.long)
        out[idx] = lm_emb[idx].float()
    return out.to(rm_emb.dtype)


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`merge_dogerm` (subcommand ``merge``)."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.merge_dogerm", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    merge = sub.add_parser("merge", help="merge one RM with one LM")
    merge.add_argument(
        "--rm", required=True, help="reward model (seq-cls): folder or hub id"
    )
    merge.add_argument(
        "--lm", required=True, help="causal LM of the same arch: folder or hub id"
    )
    merge.add_argument("--out", type=Path, required=True, help="output folder")
    add_progress_arg(merge)
    add_dataclass_args(merge, MergeConfig)
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = make_parser().parse_args(argv)
    setup_logging()
    cfg = dataclass_from_args(MergeConfig, args)
    log_run_header(logger, cfg, rm=args.rm, lm=args.lm, out=args.out)
    merge_dogerm(
        args.rm, args.lm, args.out, cfg=cfg, progress_every=args.progress_every
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
