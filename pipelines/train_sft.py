r"""Supervised fine-tuning of a causal LM on the assistant turns of chat data.

    python -m pipelines.train_sft --data results/data/sft/general/train.jsonl \
        --tokenizer results/tokenizer --seed 0 --out results/models/sft/general

    python -m pipelines.train_sft --data D.jsonl --base EleutherAI/pythia-70m \
        --seed 0 --out DIR --learning-rate 1e-5 --epochs 1      # from a hub model

    accelerate launch --config_file accelerate/zero2.yaml --num_machines 1 \
        --num_processes N -m pipelines.train_sft ...     # N GPUs: ddp/zero2/zero3

Without ``--base`` a tiny GPT-NeoX is initialised from ``--seed`` with the
vocabulary of ``--tokenizer`` (the offline ``tiny`` preset). With ``--base`` (a hub
id or a local folder) training continues from that model, with its own
tokenizer unless ``--tokenizer`` names another.

Records are ``{"messages": [..., {"role": "assistant", ...}]}``. The loss is the
causal-LM cross-entropy on the last assistant message only: its content and
the template's closing tokens (``<|endoftext|>``); the prompt, the role
markers and padding get label -100. The chat template and system prompt are
``--chat-template`` / ``--system-prompt`` when given, else the base's (its
``run_config.json``), else the tokenizer's template and none; a system prompt
is a prompt turn, never trained. The output folder holds the model and
tokenizer (``save_pretrained``, safetensors; the tokenizer carries the
template used), ``run_config.json`` (with the chat format, which RM training
and generation inherit) and ``metrics.json`` (loss curve). Every
``--progress-every`` seconds the log gets a progress line (steps done, rate,
ETA). ``--help`` loads no torch: the model stack is imported when training
starts.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.common.chat_format import ChatFormat, setup_chat_format
from pipelines.common.cli import (
    add_dataclass_args,
    dataclass_from_args,
    field_help,
    handle_user_errors,
)
from pipelines.common.io import read_jsonl
from pipelines.common.logs import (
    PROGRESS_EVERY_S,
    add_progress_arg,
    library_versions,
    log_run_header,
    setup_logging,
)
from pipelines.common.modeling import (
    TinyArchFields,
    count_parameters,
    ensure_pad_embeddings,
    init_tiny_causal_lm,
    load_causal_lm,
    load_tokenizer,
)
from pipelines.common.seeding import seed_everything
from pipelines.common.sft_data import (
    IGNORE,
    SFTExample,
    build_sft_examples,
    sft_batches,
    truncate_examples,
)
from pipelines.common.training import (
    Batch,
    Interrupted,
    check_checkpoint_dir,
    config_dict,
    file_digest,
    loop_metrics,
    make_accelerator,
    quiet_logging,
    remove_checkpoints,
    run_fingerprint,
    save_pretrained_atomic,
    train_loop,
)

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

OPERATIONAL_FIELDS = ("log_every", "checkpoint_every", "device")


@dataclass(frozen=True, kw_only=True)
class TrainSFTConfig(TinyArchFields):
    """Hyperparameters of SFT (YAML section ``sft``).

    The defaults are the tiny preset: a 4-layer GPT-NeoX trained from scratch on
    a few hundred examples on 2 CPU cores in about a minute. Such "baby" models
    take a high learning rate: karpathy/nanoGPT config/train_shakespeare_char.py
    uses lr 1e-3, beta2 0.99, weight decay 0.1 and a cosine decay to lr/10, which
    we follow. Continuing a hub model needs hub-scale values (e.g. lr 1e-5,
    1-3 epochs), set per preset in the workflow config.
    """

    learning_rate: float = field_help("AdamW peak learning rate", default=1e-3)
    epochs: int = field_help("passes over the data", default=8)
    max_steps: int = field_help(
        "stop after this many optimiser steps (0: run all epochs)", default=0
    )
    batch_size: int = field_help("examples per micro-batch per process", default=16)
    gradient_accumulation_steps: int = field_help(
        "micro-batches per optimiser step", default=1
    )
    weight_decay: float = field_help("AdamW weight decay (nanoGPT: 0.1)", default=0.1)
    warmup_ratio: float = field_help("share of steps with linear warmup", default=0.05)
    min_lr_ratio: float = field_help(
        "cosine floor as a share of the peak (nanoGPT: 0.1)", default=0.1
    )
    adam_beta1: float = field_help("AdamW beta1", default=0.9)
    adam_beta2: float = field_help(
        "AdamW beta2 (nanoGPT uses 0.99 for small batches)", default=0.99
    )
    adam_epsilon: float = field_help("AdamW epsilon", default=1e-8)
    max_grad_norm: float = field_help("gradient clipping norm (0: off)", default=1.0)
    group_by_length: bool = field_help(
        # Off for SFT: on the generated data, length-grouped batches hold one
        # task family each, and the tiny model ended at loss 1.18 vs 0.92 with
        # random batches (600 examples, 8 epochs), for a 2x speed-up only.
        "batch examples of similar length (less padding; HF group_by_length)",
        default=False,
    )
    max_length: int = field_help("maximum tokens per example", default=512)
    truncation_side: str = field_help(
        "side cut from over-long examples: right keeps the prompt start",
        default="right",
    )
    chat_template: str | None = field_help(
        "chat template (Jinja text or a file); None: the one in the base's"
        " run_config.json, else the tokenizer's",
        default=None,
    )
    system_prompt: str | None = field_help(
        "system turn prepended to conversations without one ('' = none); None:"
        " the one in the base's run_config.json, else none",
        default=None,
    )
    device: str = field_help("auto (CUDA when available), cpu or cuda", default="auto")
    dtype: str = field_help(
        "compute precision: float32, or bfloat16 autocast (GPU)", default="float32"
    )
    trust_remote_code: bool = field_help("allow model code from the hub", default=False)
    log_every: int = field_help("log the loss every this many steps", default=10)
    checkpoint_every: int = field_help(
        "checkpoint every this many steps (needs --checkpoint-dir; 0: only on SIGTERM)",
        default=200,
    )


def lm_loss_sum(
    model: torch.nn.Module, batch: Batch
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Next-token cross-entropy summed over the labelled positions.

    Args:
        model: a causal LM.
        batch: ``input_ids``, ``attention_mask`` and ``labels`` (-100 = skip).

    Returns:
        The summed loss and ``{"tokens": number of labelled targets}``.
    """
    import torch.nn.functional as F

    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        use_cache=False,
    ).logits
    targets = batch["labels"][:, 1:]
    pred = logits[:, :-1].float()
    loss = F.cross_entropy(
        pred.reshape(-1, pred.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    return loss, {"tokens": (targets != IGNORE).sum().float()}


def train_sft(
    data: Sequence[Path],
    out: Path,
    *,
    base: str | None,
    tokenizer: str | None,
    seed: int,
    cfg: TrainSFTConfig,
    checkpoint_dir: Path | None = None,
    progress_every: float = PROGRESS_EVERY_S,
) -> dict[str, float]:
    """Fine-tune (or train from a seeded init) a causal LM on SFT records.

    Args:
        data: SFT JSONL files (``messages`` lists), concatenated.
        out: the output folder (appears whole; replaced if present).
        base: hub id or local folder to continue from; None initialises the tiny
            GPT-NeoX of ``cfg`` from ``seed``.
        tokenizer: tokenizer folder or hub id; required without ``base``,
            defaults to ``base``'s otherwise.
        seed: seeds the init, dropout and the data order.
        cfg: hyperparameters.
        checkpoint_dir: checkpoint/resume folder outside ``out``; deleted after
            success. None disables checkpoints.
        progress_every: seconds between two progress lines of the loop.

    Returns:
        ``final_loss``, ``first_loss`` (first logged), ``n_examples``,
        ``n_truncated``, ``n_target_tokens``, ``steps``, ``examples_per_second``.

    Raises:
        ValueError: without ``base`` and ``tokenizer``, or on bad records.
        Interrupted: on SIGTERM, after the checkpoint is saved.
    """
    if base is None and tokenizer is None:
        raise ValueError("train_sft needs a base model or a tokenizer folder")
    if cfg.truncation_side not in ("left", "right"):
        raise ValueError(
            f"truncation_side must be left or right: {cfg.truncation_side}"
        )
    check_checkpoint_dir(out, checkpoint_dir)
    accelerator = make_accelerator(cfg.device, cfg.dtype)
    seed_everything(seed)
    tok, model, fmt = _load_start(base, tokenizer, seed=seed, cfg=cfg)
    examples, counts = _prepare_examples(data, tok, cfg, fmt.system_prompt)
    digests = {str(p): file_digest(Path(p)) for p in data}
    run = {"seed": seed, "base": base, "tokenizer": tokenizer, "data": data}
    fingerprint = _fingerprint(cfg, fmt, run, digests, accelerator)
    trained, result = train_loop(
        accelerator=accelerator,
        model=model,
        n_examples=len(examples),
        make_batch=sft_batches(examples, tok.pad_token_id, accelerator.device),
        loss_fn=lm_loss_sum,
        cfg=cfg,
        seed=seed,
        checkpoint_dir=checkpoint_dir,
        fingerprint=fingerprint,
        unit_name="examples",
        lengths=[len(ex.ids) for ex in examples] if cfg.group_by_length else None,
        name="train_sft",
        progress_every=progress_every,
    )
    metrics = {
        "n_examples": len(examples),
        **counts,
        "first_loss": result.history[0]["loss"] if result.history else float("nan"),
        **loop_metrics(result, "examples"),
    }
    run_config = _run_config(cfg, fmt, run, digests, accelerator, fingerprint)
    if accelerator.is_main_process:
        files = {"run_config.json": run_config, "metrics.json": metrics}
        save_pretrained_atomic(out, trained, tok, files)
    remove_checkpoints(checkpoint_dir, accelerator)
    keys = (
        "final_loss",
        "first_loss",
        "n_examples",
        "n_truncated",
        "n_target_tokens",
        "steps",
        "examples_per_second",
    )
    return {k: float(metrics[k]) for k in keys}  # type: ignore[arg-type]


def _fingerprint(
    cfg: TrainSFTConfig,
    fmt: ChatFormat,
    run: dict,
    digests: dict[str, str],
    accelerator: Accelerator,
) -> str:
    """What a checkpoint must match to be resumed (operational fields aside).

    ``run`` holds the run's ``seed``, ``base``, ``tokenizer`` and ``data``
    files; ``digests`` maps each file to its SHA-256.
    """
    science = {k: v for k, v in config_dict(cfg).items() if k not in OPERATIONAL_FIELDS}
    return run_fingerprint(
        stage="train_sft",
        config=science,
        chat_format=fmt.record(with_template=False),
        seed=run["seed"],
        base=run["base"],
        tokenizer=run["tokenizer"],
        data=digests,
        processes=accelerator.num_processes,
    )


def _run_config(
    cfg: TrainSFTConfig,
    fmt: ChatFormat,
    run: dict,
    digests: dict[str, str],
    accelerator: Accelerator,
    fingerprint: str,
) -> dict[str, object]:
    """The run record saved as ``run_config.json`` (``run`` as in _fingerprint)."""
    base, tokenizer = run["base"], run["tokenizer"]
    return {
        "stage": "train_sft",
        "config": config_dict(cfg),
        "seed": run["seed"],
        "base": base,
        "tokenizer": tokenizer if tokenizer is not None else base,
        "data": [{"path": str(p), "sha256": digests[str(p)]} for p in run["data"]],
        "chat_format": fmt.record(),
        "num_processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "fingerprint": fingerprint,
        "versions": library_versions(),
    }


def _load_start(
    base: str | None, tokenizer: str | None, *, seed: int, cfg: TrainSFTConfig
) -> tuple[PreTrainedTokenizerBase, torch.nn.Module, ChatFormat]:
    """Tokenizer (chat format resolved) and the model training starts from.

    The chat format is inherited from ``base``'s ``run_config.json`` (a domain
    LM continuing the general SFT model keeps its format); a tiny run (no
    ``base``) takes its tokenizer's template.
    """
    tok_source = tokenizer if tokenizer is not None else base
    tok = load_tokenizer(tok_source, trust_remote_code=cfg.trust_remote_code)
    fmt = setup_chat_format(
        tok,
        base if base is not None else tok_source,
        chat_template=cfg.chat_template,
        system_prompt=cfg.system_prompt,
    )
    if base is None:
        model = init_tiny_causal_lm(tok, seed=seed, arch=cfg.arch())
    else:
        model = load_causal_lm(base, trust_remote_code=cfg.trust_remote_code)
    ensure_pad_embeddings(model, tok)
    logger.info(
        "model %s: %d parameters",
        base or f"tiny GPT-NeoX (seed {seed})",
        count_parameters(model),
    )
    return tok, model, fmt


def _prepare_examples(
    data: Sequence[Path],
    tok: PreTrainedTokenizerBase,
    cfg: TrainSFTConfig,
    system_prompt: str | None,
) -> tuple[list[SFTExample], dict[str, int]]:
    """Read, tokenise, mask and truncate the SFT records; log and count them.

    Returns:
        The examples and ``n_truncated``, ``n_without_targets``,
        ``n_target_tokens``.
    """
    records = [rec for path in data for rec in read_jsonl(path)]
    if not records:
        raise ValueError(f"no SFT records in {[str(p) for p in data]}")
    examples = build_sft_examples(
        tok, [rec["messages"] for rec in records], system_prompt=system_prompt
    )
    n_truncated = sum(len(ex.ids) > cfg.max_length for ex in examples)
    examples = truncate_examples(
        tok, examples, max_length=cfg.max_length, side=cfg.truncation_side
    )
    n_empty = sum(all(t == IGNORE for t in ex.labels[1:]) for ex in examples)
    n_targets = sum(sum(t != IGNORE for t in ex.labels[1:]) for ex in examples)
    logger.info(
        "%d examples, %d target tokens, mean length %.1f",
        len(examples),
        n_targets,
        sum(len(ex.ids) for ex in examples) / len(examples),
    )
    if n_truncated:
        logger.warning(
            "%d examples exceed max_length %d: truncated on the %s and kept",
            n_truncated,
            cfg.max_length,
            cfg.truncation_side,
        )
    if n_empty:
        logger.warning("%d examples have no reply token left after truncation", n_empty)
    counts = {
        "n_truncated": n_truncated,
        "n_without_targets": n_empty,
        "n_target_tokens": n_targets,
    }
    return examples, counts


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`train_sft`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.train_sft", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--data", nargs="+", type=Path, required=True, help="SFT JSONL file(s)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--base", default=None, help="hub id or folder to continue from (default: tiny)"
    )
    parser.add_argument(
        "--tokenizer", default=None, help="tokenizer folder/id (default: --base's)"
    )
    parser.add_argument("--seed", type=int, required=True, help="run seed")
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="checkpoint/resume folder outside --out (deleted after success)",
    )
    add_progress_arg(parser)
    add_dataclass_args(parser, TrainSFTConfig)
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI; exit code 143 after a SIGTERM checkpoint."""
    args = make_parser().parse_args(argv)
    setup_logging()
    quiet_logging()
    cfg = dataclass_from_args(TrainSFTConfig, args)
    log_run_header(
        logger,
        cfg,
        seed=args.seed,
        base=args.base,
        tokenizer=args.tokenizer,
        data=[str(p) for p in args.data],
        out=args.out,
        checkpoint_dir=args.checkpoint_dir,
        versions=library_versions(),
    )
    try:
        metrics = train_sft(
            args.data,
            args.out,
            base=args.base,
            tokenizer=args.tokenizer,
            seed=args.seed,
            cfg=cfg,
            checkpoint_dir=args.checkpoint_dir,
            progress_every=args.progress_every,
        )
    except Interrupted as err:
        logger.warning("%s", err)
        return err.exit_code
    logger.info("done: %s", metrics)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
