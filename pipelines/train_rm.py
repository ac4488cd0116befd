r"""Train one Bradley-Terry reward model (full fine-tuning or LoRA).

    python -m pipelines.train_rm --pairs results/data/general/train.jsonl \
        results/data/math/train.jsonl --base results/models/sft/general \
        --seed 0 --out results/models/rm/general-math/seed0 \
        --checkpoint-dir results/checkpoints/train_rm/general-math/seed0

On N >= 2 GPUs the same module and flags run under ``accelerate launch`` with
one of the launcher configs in ``accelerate/`` (one process per GPU):

    accelerate launch --config_file accelerate/ddp.yaml --num_machines 1 \
        --num_processes N -m pipelines.train_rm ...        # or zero2 / zero3

``ddp`` keeps the whole model on every GPU (fastest when it fits); ``zero2``
shards gradients and AdamW state, ``zero3`` also the weights (DeepSpeed; see
the comments in each file). ``--batch-size`` is per process, so the global
batch is ``batch_size * gradient_accumulation_steps * N``; with the same
global batch and seed a run matches a one-process run up to float rounding
(tests/unit/test_distributed.py), dropout aside (LoRA's dropout masks depend
on the process count). The main process writes ``--out``; under ZeRO-3 the
weights are first gathered from all processes. On SIGTERM the launcher
forwards the signal, every process stops after the same step and the
checkpoint is written (under DeepSpeed each process writes its shards); the
launcher kills workers still running 30 s later and itself exits 1, not 143.

Every ``--pairs`` file is read and concatenated (a mixture of domains). With
``--max-pairs n`` only a seeded draw of n of those pairs is trained on (the
transfer study's n-curves, ALGORITHMS.md section 6.3): a permutation of the
concatenated pairs in file order, seeded by ``--subset-seed`` alone (not
``--seed``, not the tokenizer), whose first n are kept; so for one subset seed
the draws are nested (the pairs of n = 16 are among those of n = 64). The draw
comes before over-length handling (``drop`` may leave fewer than n). n above
the pairs available is an error; ``metrics.json`` records ``n_pairs_available``,
``max_pairs``, ``subset_seed`` and the drawn ids in file order (``subset_ids``,
listed up to 256, and their ``subset_ids_sha256``; both null without a draw).
Each pair becomes two sequences through the chat template; a batch holds them
as ``[c1, r1, c2, r2, ...]``, right-padded, and goes through the model in one
forward pass; the reward is the score head at the last non-pad token
(ALGORITHMS.md sections 0 and 2). The loss is ``-mean log sigmoid(r_c - r_r)``
plus an optional ``l2_coef * 0.5 * (r_c^2 + r_r^2)`` (section 5.1).

The chat template and system prompt are ``--chat-template`` and
``--system-prompt`` when given, else the ones the base was trained with (its
``run_config.json``; see :mod:`pipelines.common.chat_format`). A pair with a
side over ``--max-length`` tokens is cut on ``--truncation-side`` and kept
(``--over-length truncate``) or removed before training (``drop``, DogeRM's
recipe, section 4.1); either count is logged and saved.

The output folder loads with ``AutoModelForSequenceClassification`` (LoRA
adapters merged, score head included) and holds the tokenizer,
``run_config.json`` (with the chat format used, which scoring then inherits)
and ``metrics.json``. With ``--checkpoint-dir`` the run
checkpoints every ``--checkpoint-every`` steps and on SIGTERM (exit code 143),
resumes from a checkpoint found there, and deletes it after success. Every
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

from pipelines.common.chat_format import ChatFormat
from pipelines.common.cli import (
    add_dataclass_args,
    dataclass_from_args,
    field_help,
    handle_user_errors,
)
from pipelines.common.logs import (
    PROGRESS_EVERY_S,
    add_progress_arg,
    library_versions,
    log_run_header,
    setup_logging,
)
from pipelines.common.modeling import TinyArchFields
from pipelines.common.rm_data import (
    OVER_LENGTH,
    PairData,
    load_pair_data,
    subset_record,
)
from pipelines.common.rm_training import (
    FitResult,
    bt_loss_sum,
    load_rm_base,
    pair_batches,
    pair_lengths,
    save_reward_model,
)
from pipelines.common.seeding import seed_everything
from pipelines.common.training import (
    Batch,
    Interrupted,
    LoopResult,
    check_checkpoint_dir,
    config_dict,
    file_digest,
    loop_metrics,
    make_accelerator,
    quiet_logging,
    remove_checkpoints,
    run_fingerprint,
    train_loop,
)

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

logger = logging.getLogger(__name__)

# Fields that change how a run is executed or reported, not what it computes:
# a checkpoint written under other values of these can still be resumed.
OPERATIONAL_FIELDS = ("log_every", "checkpoint_every", "device", "keep_adapter")


@dataclass(frozen=True, kw_only=True)
class TrainRMConfig(TinyArchFields):
    """Hyperparameters of RM training (YAML section ``rm``).

    The defaults are the tiny preset (a few-million-parameter GPT-NeoX on 2 CPU
    cores). Hub-scale values, set per preset in the workflow config: RLHFlow
    bradley-terry-rm (ALGORITHMS.md section 2) uses lr 1e-5 (Gemma-2B),
    5e-6 (Mistral-7B) or 2e-6 (Llama-3-8B), 1 epoch, weight decay 0.001, cosine,
    warmup ratio 0.03, global batch 512 pairs, max_length 4096, bf16;
    eth-dl-rewards (section 6.3) uses LoRA at lr 5e-5, max_length 1024.
    """

    learning_rate: float = field_help(
        # Tiny preset: a sweep over 5e-5..1e-3 (600 general+math pairs, 2 epochs,
        # full fine-tuning of the 1.2M-parameter SFT model) gave held-out
        # accuracy general/math ~0.79/0.89 at 5e-5..2e-4 and ~0.81/0.91 at 5e-4
        # (mean of 3 seeds), flat at 1e-3; hub-scale rates (<=1e-5) barely move
        # a model this small in ~80 steps.
        "AdamW peak learning rate",
        default=5e-4,
    )
    epochs: int = field_help("passes over the pairs", default=2)
    max_steps: int = field_help(
        "stop after this many optimiser steps (0: run all epochs)", default=0
    )
    batch_size: int = field_help("pairs per micro-batch per process", default=16)
    gradient_accumulation_steps: int = field_help(
        "micro-batches per optimiser step", default=1
    )
    weight_decay: float = field_help(
        "AdamW weight decay (RLHFlow: 0.001)", default=0.001
    )
    warmup_ratio: float = field_help(
        "share of steps with linear warmup (RLHFlow: 0.03)", default=0.03
    )
    min_lr_ratio: float = field_help(
        "cosine floor as a share of the peak learning rate", default=0.0
    )
    adam_beta1: float = field_help("AdamW beta1", default=0.9)
    adam_beta2: float = field_help("AdamW beta2", default=0.999)
    adam_epsilon: float = field_help("AdamW epsilon", default=1e-8)
    max_grad_norm: float = field_help(
        "gradient clipping norm (0: off; HF Trainer default 1.0)", default=1.0
    )
    group_by_length: bool = field_help(
        # ~1.7x pairs/s on general+math (40% fewer padded tokens) at the same
        # held-out accuracy as random batches (3 seeds, within noise).
        "batch pairs of similar length (less padding; HF group_by_length)",
        default=True,
    )
    max_length: int = field_help("maximum tokens per sequence", default=512)
    truncation_side: str = field_help(
        "side cut from over-long sequences: left keeps the reply (RLHFlow)",
        default="left",
    )
    over_length: str = field_help(
        # DogeRM (MiuLab/DogeRM src/train_rm.py, ALGORITHMS.md section 4.1)
        # filters out pairs with a side over 2048 tokens instead of cutting them.
        "a pair with a side over max_length is cut and kept (truncate) or"
        " removed before training (drop, DogeRM)",
        default="truncate",
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
    l2_coef: float = field_help(
        # tlc4418/llm_optimization (OpenAssistant RMLoss) uses 0.001
        "weight of the 0.5*(r_c^2 + r_r^2) reward regulariser",
        default=0.0,
    )
    max_pairs: int = field_help(
        # eth-dl-rewards fine-tunes on n target pairs for several n (section 6.3)
        "train on a seeded draw of this many pairs; 0 = all (drawn from the"
        " concatenated pairs before over-length handling; nested across n for"
        " one --subset-seed)",
        default=0,
    )
    subset_seed: int = field_help(
        "seed of that draw (independent of --seed)", default=0
    )
    clean_chosen: bool = field_help(
        "train on each chosen reply as written before build_prefs injected"
        " spurious features (metadata.spurious.clean_chosen): the gold RM",
        default=False,
    )
    lora: bool = field_help(
        "train LoRA adapters + score head instead of all weights", default=False
    )
    lora_r: int = field_help("LoRA rank (eth-dl-rewards: 32)", default=32)
    lora_alpha: int = field_help("LoRA alpha (eth-dl-rewards: 64)", default=64)
    lora_dropout: float = field_help(
        "LoRA dropout (eth-dl-rewards: 0.01)", default=0.01
    )
    lora_target_modules: str = field_help(
        "LoRA targets: all-linear or comma-separated module names",
        default="all-linear",
    )
    keep_adapter: bool = field_help(
        "also save the unmerged PEFT adapter in <out>/adapter", default=False
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

    def lora_args(self) -> dict[str, object] | None:
        """Keyword arguments of ``wrap_lora``; None for full fine-tuning."""
        if not self.lora:
            return None
        return {
            "r": self.lora_r,
            "alpha": self.lora_alpha,
            "dropout": self.lora_dropout,
            "target_modules": self.lora_target_modules,
        }


def fit_reward_model(
    pairs: Sequence[Path],
    base: str | None,
    *,
    seed: int,
    cfg: TrainRMConfig,
    checkpoint_dir: Path | None = None,
    progress_every: float = PROGRESS_EVERY_S,
    tokenizer: str | None = None,
) -> FitResult:
    """Train an RM in memory (see :func:`train_rm`, which also saves it).

    Args:
        pairs: standard-format pair JSONL files (concatenated).
        base: a hub id or local folder (causal LM or RM) with its tokenizer;
            None: a tiny GPT-NeoX of the config's shape, from scratch on
            ``tokenizer`` (the gold RM of the tiny preset).
        seed: seeds the score-head init, dropout and the data order.
        cfg: hyperparameters.
        checkpoint_dir: where to checkpoint and resume from; None for none.
        progress_every: seconds between two progress lines of the loop.
        tokenizer: the tokenizer folder or hub id of a model from scratch.

    Returns:
        The trained model (unwrapped; a ``PeftModel`` with LoRA), tokenizer,
        metrics and run config.

    Raises:
        Interrupted: SIGTERM arrived; the checkpoint (if any) is saved.
    """
    for name, allowed in (
        ("truncation_side", ("left", "right")),
        ("over_length", OVER_LENGTH),
    ):
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"{name} must be one of {allowed}: {getattr(cfg, name)}")
    accelerator = make_accelerator(cfg.device, cfg.dtype)
    # Seed before loading: the new score head (and any resized embedding rows)
    # are drawn from torch's RNG.
    seed_everything(seed)
    tok, model, fmt = load_rm_base(
        base,
        trust_remote_code=cfg.trust_remote_code,
        chat_template=cfg.chat_template,
        system_prompt=cfg.system_prompt,
        lora=cfg.lora_args(),
        tokenizer=tokenizer,
        arch=cfg.arch(),
    )
    if base is None:  # the run's record names what it started from
        base = f"scratch:{tokenizer}"
    data = load_pair_data(
        pairs,
        tok,
        max_length=cfg.max_length,
        truncation_side=cfg.truncation_side,
        over_length=cfg.over_length,
        system_prompt=fmt.system_prompt,
        clean_chosen=cfg.clean_chosen,
        max_pairs=cfg.max_pairs,
        subset_seed=cfg.subset_seed,
    )
    n_pairs = len(data.chosen)

    def loss_fn(m: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict]:
        return bt_loss_sum(m, batch, l2_coef=cfg.l2_coef)

    digests = {str(p): file_digest(Path(p)) for p in pairs}
    fingerprint = _fingerprint(
        cfg, fmt, seed=seed, base=base, digests=digests, accelerator=accelerator
    )
    trained, result = train_loop(
        accelerator=accelerator,
        model=model,
        n_examples=n_pairs,
        make_batch=pair_batches(data, tok.pad_token_id, accelerator.device),
        loss_fn=loss_fn,
        cfg=cfg,
        seed=seed,
        checkpoint_dir=checkpoint_dir,
        fingerprint=fingerprint,
        unit_name="pairs",
        lengths=pair_lengths(data) if cfg.group_by_length else None,
        name="train_rm",
        progress_every=progress_every,
    )
    return FitResult(
        model=trained,
        tokenizer=tok,
        metrics=_metrics(result, data, n_pairs, cfg),
        run_config=_run_config(
            pairs,
            base,
            seed=seed,
            cfg=cfg,
            data=data,
            fmt=fmt,
            digests=digests,
            accelerator=accelerator,
            fingerprint=fingerprint,
        ),
        accelerator=accelerator,
    )


def _fingerprint(
    cfg: TrainRMConfig,
    fmt: ChatFormat,
    *,
    seed: int,
    base: str,
    digests: dict[str, str],
    accelerator: Accelerator,
) -> str:
    """What a checkpoint must match to be resumed (operational fields aside)."""
    science = {k: v for k, v in config_dict(cfg).items() if k not in OPERATIONAL_FIELDS}
    return run_fingerprint(
        stage="train_rm",
        config=science,
        chat_format=fmt.record(with_template=False),
        seed=seed,
        base=str(base),
        data=digests,
        processes=accelerator.num_processes,
    )


def _run_config(
    pairs: Sequence[Path],
    base: str,
    *,
    seed: int,
    cfg: TrainRMConfig,
    data: PairData,
    fmt: ChatFormat,
    digests: dict[str, str],
    accelerator: Accelerator,
    fingerprint: str,
) -> dict[str, object]:
    """The run record saved as ``run_config.json`` beside the weights."""
    return {
        "stage": "train_rm",
        "config": config_dict(cfg),
        "seed": seed,
        "base": str(base),
        "pairs": [
            {
                "path": str(p),
                "sha256": digests[str(p)],
                "n_pairs": data.per_file[str(p)],
            }
            for p in pairs
        ],
        "n_pairs_trained": len(data.chosen),
        "n_dropped_over_length": data.n_dropped,
        "chat_format": fmt.record(),  # scorers of this RM inherit it
        "num_processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "fingerprint": fingerprint,
        "versions": library_versions(),
    }


def _metrics(
    result: LoopResult, data: PairData, n_pairs: int, cfg: TrainRMConfig
) -> dict[str, object]:
    last_epoch = result.epochs[-1] if result.epochs else {}
    return {
        "n_pairs": n_pairs,
        "n_truncated": data.n_truncated,
        "n_truncated_chosen": data.n_truncated_chosen,
        "n_truncated_rejected": data.n_truncated_rejected,
        "n_dropped_over_length": data.n_dropped,
        "max_length": cfg.max_length,
        "truncation_side": cfg.truncation_side,
        "over_length": cfg.over_length,
        **subset_record(data, cfg.max_pairs, cfg.subset_seed),
        # mean over the last epoch's batches, scored before each update
        "train_accuracy": last_epoch.get("accuracy", float("nan")),
        "train_loss_last_epoch": last_epoch.get("loss", float("nan")),
        **loop_metrics(result, "pairs"),
    }


def train_rm(
    pairs: Sequence[Path],
    base: str | None,
    out: Path,
    *,
    seed: int,
    cfg: TrainRMConfig,
    checkpoint_dir: Path | None = None,
    progress_every: float = PROGRESS_EVERY_S,
    tokenizer: str | None = None,
) -> dict[str, float]:
    """Fit a Bradley-Terry RM on ``pairs``, save it to ``out``, return metrics.

    Args:
        pairs: standard-format pair JSONL files; several are concatenated.
        base: a hub id or local folder (causal LM or RM) with its tokenizer;
            None: a tiny model from scratch on ``tokenizer``.
        out: the output folder (appears whole; replaced if present).
        seed: seeds the score-head init, dropout and the data order.
        cfg: hyperparameters.
        checkpoint_dir: checkpoint/resume folder, outside ``out``; deleted after
            success. None disables checkpoints.
        progress_every: seconds between two progress lines of the loop.
        tokenizer: the tokenizer folder or hub id of a model from scratch.

    Returns:
        Scalar metrics: ``n_pairs`` (trained on), ``n_truncated``,
        ``n_dropped_over_length``, ``train_accuracy``, ``final_loss``,
        ``pairs_per_second``, ``steps``.

    Raises:
        Interrupted: on SIGTERM, after the checkpoint is saved.
    """
    check_checkpoint_dir(out, checkpoint_dir)
    fit = fit_reward_model(
        pairs,
        base,
        seed=seed,
        cfg=cfg,
        checkpoint_dir=checkpoint_dir,
        progress_every=progress_every,
        tokenizer=tokenizer,
    )
    if fit.accelerator.is_main_process:
        save_reward_model(fit, out, keep_adapter=cfg.keep_adapter)
    remove_checkpoints(checkpoint_dir, fit.accelerator)
    keys = (
        "n_pairs",
        "n_truncated",
        "n_dropped_over_length",
        "train_accuracy",
        "final_loss",
        "pairs_per_second",
        "steps",
    )
    return {k: float(fit.metrics[k]) for k in keys}  # type: ignore[arg-type]


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`train_rm`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.train_rm", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--pairs", nargs="+", type=Path, required=True, help="pair JSONL file(s)"
    )
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--base", help="hub id or local model folder")
    start.add_argument(
        "--tokenizer",
        help="tokenizer folder/id: a tiny GPT-NeoX RM from scratch (--hidden-size...)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, required=True, help="run seed")
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="checkpoint/resume folder outside --out (deleted after success)",
    )
    add_progress_arg(parser)
    add_dataclass_args(parser, TrainRMConfig)
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI; exit code 143 after a SIGTERM checkpoint."""
    args = make_parser().parse_args(argv)
    setup_logging()
    quiet_logging()
    cfg = dataclass_from_args(TrainRMConfig, args)
    log_run_header(
        logger,
        cfg,
        seed=args.seed,
        base=args.base,
        tokenizer=args.tokenizer,
        pairs=[str(p) for p in args.pairs],
        out=args.out,
        checkpoint_dir=args.checkpoint_dir,
        versions=library_versions(),
    )
    try:
        metrics = train_rm(
            args.pairs,
            args.base,
            args.out,
            seed=args.seed,
            cfg=cfg,
            checkpoint_dir=args.checkpoint_dir,
            progress_every=args.progress_every,
            tokenizer=args.tokenizer,
        )
    except Interrupted as err:
        logger.warning("%s", err)
        return err.exit_code
    logger.info("done: %s", metrics)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
