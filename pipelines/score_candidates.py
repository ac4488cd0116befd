r"""Score every best-of-n candidate with one reward model.

    python -m pipelines.score_candidates --model results/models/rm/math/seed0 \
        --gens results/bon/gens/math.jsonl results/bon/gens/code.jsonl \
        --out results/bon/scores/rm-math-seed0.parquet

Each candidate is scored as the conversation ``prompt + [{"role": "assistant",
"content": text}]`` under the tokenisation contract of
:mod:`pipelines.common.modeling` (the eval stage's scorer: chat template, pad
distinct from EOS, right padding, score at the last non-pad token, declared
truncation side with truncations counted, length-sorted batches). The chat
template and system prompt are ``--chat-template`` / ``--system-prompt`` when
given, else the ones the RM was trained with (its ``run_config.json``, see
:mod:`pipelines.common.chat_format`). The output is a Parquet table with one
row per candidate, in the order of the gens files, their lines and their
candidates: ``prompt_id`` (string), ``domain`` (string), ``cand_idx`` (int64,
the index in the line's ``candidates``) and ``score`` (float64). Its schema
metadata key ``rmflow`` holds JSON with the model and the chat format used.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipelines.common.chat_format import ChatFormat, setup_chat_format
from pipelines.common.cli import (
    add_dataclass_args,
    dataclass_from_args,
    field_help,
    handle_user_errors,
)
from pipelines.common.io import atomic_path, read_jsonl
from pipelines.common.logs import library_versions, log_run_header, setup_logging
from pipelines.common.modeling import (
    DTYPES,
    encode_conversations,
    ensure_pad_embeddings,
    load_reward_model,
    load_tokenizer,
    resolve_device,
    score_ids,
    warn_if_untrained_head,
)

logger = logging.getLogger(__name__)

COLUMNS = ("prompt_id", "domain", "cand_idx", "score")
METADATA_KEY = b"rmflow"  # Parquet schema metadata: model and chat format
HEAD_SEED = 0  # seeds a score head that the checkpoint lacks (warned about)


@dataclass(frozen=True, kw_only=True)
class ScoreConfig:
    """Knobs of the candidate scorer (YAML section ``bon.score``)."""

    batch_size: int = field_help("sequences per forward pass", default=16)
    max_length: int = field_help("maximum tokens per sequence", default=1024)
    truncation_side: str = field_help(
        "'left' keeps the end of a long conversation (the reply); 'right' the start",
        default="left",
    )
    dtype: str = field_help("float32, bfloat16 or float16", default="float32")
    device: str = field_help(
        "'auto' (CUDA if available, else CPU), 'cpu', 'cuda:0'...", default="auto"
    )
    tokenizer: str | None = field_help(
        "tokenizer folder or hub id; None: the model's", default=None
    )
    chat_template: str | None = field_help(
        "chat template (Jinja text or a file); None: the one in the model's"
        " run_config.json, else the tokenizer's",
        default=None,
    )
    system_prompt: str | None = field_help(
        "system turn prepended to conversations without one ('' = none); None:"
        " the one in the model's run_config.json, else none",
        default=None,
    )
    trust_remote_code: bool = field_help("allow model code from the hub", default=False)

    def __post_init__(self) -> None:
        """Reject values the scorer cannot honour."""
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if self.truncation_side not in ("left", "right"):
            raise ValueError(
                f"truncation_side must be left or right, got {self.truncation_side!r}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(
                f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}"
            )


@dataclass
class Scorer:
    """A reward model with its tokenizer, ready to score on ``device``."""

    model: PreTrainedModel
    tok: PreTrainedTokenizerBase
    device: torch.device
    new_head: bool
    chat_format: ChatFormat


def load_scorer(model: str, cfg: ScoreConfig) -> Scorer:
    """Load an RM and its tokenizer and align the pad id (the eval stage's setup).

    Args:
        model: RM folder or hub id.
        cfg: the scorer config (tokenizer, dtype, device, remote code).

    Returns:
        The scorer, with the chat format resolved for ``model``; a checkpoint
        without a trained score head gets one seeded with ``HEAD_SEED`` (and a
        warning).
    """
    device = resolve_device(cfg.device)
    tok = load_tokenizer(
        cfg.tokenizer or model, trust_remote_code=cfg.trust_remote_code
    )
    fmt = setup_chat_format(
        tok, model, chat_template=cfg.chat_template, system_prompt=cfg.system_prompt
    )
    torch.manual_seed(HEAD_SEED)
    rm = load_reward_model(
        model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code
    )
    new_head = warn_if_untrained_head(rm, model)
    ensure_pad_embeddings(rm, tok)  # config pad id = the id score_ids pads with
    rm.to(device)
    rm.eval()
    return Scorer(model=rm, tok=tok, device=device, new_head=new_head, chat_format=fmt)


def score_conversations(
    scorer: Scorer,
    conversations: Sequence[Sequence[dict[str, str]]],
    *,
    cfg: ScoreConfig,
    sort_by_length: bool = True,
) -> tuple[np.ndarray, int]:
    """Reward of each conversation, in input order.

    Args:
        scorer: from :func:`load_scorer` (its chat format is applied).
        conversations: message lists ending with the assistant reply.
        cfg: batch size, maximum length and truncation side.
        sort_by_length: length-sorted batches (the result does not depend on it).

    Returns:
        ``(scores, n_truncated)``: float64 scores and how many sequences were cut.
    """
    if not conversations:
        return np.empty(0, dtype=np.float64), 0
    enc = encode_conversations(
        scorer.tok,
        conversations,
        max_length=cfg.max_length,
        truncation_side=cfg.truncation_side,
        system_prompt=scorer.chat_format.system_prompt,
    )
    scores = score_ids(
        scorer.model,
        enc.ids,
        pad_id=scorer.tok.pad_token_id,
        batch_size=cfg.batch_size,
        sort_by_length=sort_by_length,
        device=scorer.device,
    )
    return scores, enc.truncated


def candidate_conversations(line: dict) -> list[list[dict[str, str]]]:
    """One conversation per candidate of a gens line: prompt + assistant reply."""
    prompt = list(line["prompt"])
    return [
        [*prompt, {"role": "assistant", "content": cand["text"]}]
        for cand in line["candidates"]
    ]


def write_scores_parquet(
    path: Path, rows: dict[str, list], metadata: dict | None = None
) -> None:
    """Write the score table atomically with its fixed column types.

    Args:
        path: the Parquet file.
        rows: column name -> values, for the columns of ``COLUMNS``.
        metadata: JSON-able record stored under the schema metadata key
            ``rmflow`` (:data:`METADATA_KEY`).
    """
    import pyarrow as pa  # the eval env has it; the train env need not
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("prompt_id", pa.string()),
            ("domain", pa.string()),
            ("cand_idx", pa.int64()),
            ("score", pa.float64()),
        ]
    )
    if metadata is not None:
        schema = schema.with_metadata(
            {METADATA_KEY: json.dumps(metadata, sort_keys=True).encode("utf-8")}
        )
    table = pa.table({name: rows[name] for name in COLUMNS}, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def score_candidates(
    model: str, gens: Sequence[Path], out: Path, *, cfg: ScoreConfig
) -> dict:
    """Score all candidates of ``gens`` with one RM and write the Parquet table.

    Args:
        model: RM folder or hub id.
        gens: candidate files of :mod:`pipelines.generate_candidates`.
        out: the Parquet file to write (atomically).
        cfg: the scorer config.

    Returns:
        Summary: ``n_rows``, ``n_prompts``, ``n_truncated``, ``seconds``,
        ``candidates_per_second``, ``mean_score`` per domain and ``settings``.

    Raises:
        ValueError: when a gens file has no lines.
    """
    lines: list[dict] = []
    for path in gens:
        got = read_jsonl(path)
        if not got:
            raise ValueError(f"{path}: no candidates")
        lines.extend(got)
    conversations: list[list[dict[str, str]]] = []
    rows: dict[str, list] = {name: [] for name in COLUMNS}
    for line in lines:
        convs = candidate_conversations(line)
        conversations.extend(convs)
        rows["prompt_id"].extend([str(line["prompt_id"])] * len(convs))
        rows["domain"].extend([str(line["domain"])] * len(convs))
        rows["cand_idx"].extend(range(len(convs)))

    scorer = load_scorer(model, cfg)
    start = time.perf_counter()
    scores, truncated = score_conversations(scorer, conversations, cfg=cfg)
    seconds = time.perf_counter() - start
    rows["score"] = scores.tolist()
    chat_format = scorer.chat_format.record(with_template=False)
    write_scores_parquet(out, rows, {"model": str(model), "chat_format": chat_format})

    if truncated:
        logger.warning(
            "%d of %d candidates longer than %d tokens were cut on the %s",
            truncated,
            len(conversations),
            cfg.max_length,
            cfg.truncation_side,
        )
    domains = np.asarray(rows["domain"], dtype=object)
    mean_score = {
        d: float(scores[domains == d].mean()) for d in sorted(set(rows["domain"]))
    }
    rate = len(conversations) / seconds if seconds > 0 else float("inf")
    summary = {
        "n_rows": len(conversations),
        "n_prompts": len(lines),
        "n_truncated": truncated,
        "seconds": seconds,
        "candidates_per_second": rate,
        "mean_score": mean_score,
        "settings": {
            **asdict(cfg),
            "device": str(scorer.device),
            "new_score_head": scorer.new_head,
            "chat_format": chat_format,
        },
    }
    logger.info(
        "%s: %d candidates of %d prompts scored in %.2fs (%.1f candidates/s),"
        " %d truncated; mean score by domain %s -> %s",
        model,
        len(conversations),
        len(lines),
        seconds,
        rate,
        truncated,
        mean_score,
        out,
    )
    return summary


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`score_candidates`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.score_candidates",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[2:5]),
    )
    parser.add_argument("--model", required=True, help="RM folder or hub id")
    parser.add_argument(
        "--gens", type=Path, nargs="+", required=True, help="candidate JSONL files"
    )
    parser.add_argument("--out", type=Path, required=True, help="Parquet to write")
    add_dataclass_args(parser, ScoreConfig)
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = make_parser().parse_args(argv)
    setup_logging()
    cfg = dataclass_from_args(ScoreConfig, args)
    log_run_header(
        logger,
        cfg,
        model=args.model,
        gens=[str(p) for p in args.gens],
        out=str(args.out),
        versions=library_versions(),
    )
    score_candidates(args.model, args.gens, args.out, cfg=cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
