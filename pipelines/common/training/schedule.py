"""What each optimiser step trains on, and at what rate.

- the optimiser (AdamW, no decay on biases and norms) and a cosine schedule
  with linear warmup;
- the data order: one seeded permutation per epoch, a pure function of
  ``(seed, epoch)``, so a resumed run sees the batches an uninterrupted run
  sees; optionally grouped by length;
- the split of each global batch into this process's micro-batches.

torch is imported by the functions that need it, not at import.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from pipelines.common.seeding import derive_seed

if TYPE_CHECKING:
    import torch


class LoopConfig(Protocol):
    """The config fields :func:`train_loop` reads (both stage configs have them)."""

    @property
    def learning_rate(self) -> float: ...  # noqa: D102
    @property
    def weight_decay(self) -> float: ...  # noqa: D102
    @property
    def adam_beta1(self) -> float: ...  # noqa: D102
    @property
    def adam_beta2(self) -> float: ...  # noqa: D102
    @property
    def adam_epsilon(self) -> float: ...  # noqa: D102
    @property
    def warmup_ratio(self) -> float: ...  # noqa: D102
    @property
    def min_lr_ratio(self) -> float: ...  # noqa: D102
    @property
    def max_grad_norm(self) -> float: ...  # noqa: D102
    @property
    def epochs(self) -> int: ...  # noqa: D102
    @property
    def max_steps(self) -> int: ...  # noqa: D102
    @property
    def batch_size(self) -> int: ...  # noqa: D102
    @property
    def gradient_accumulation_steps(self) -> int: ...  # noqa: D102
    @property
    def log_every(self) -> int: ...  # noqa: D102
    @property
    def checkpoint_every(self) -> int: ...  # noqa: D102


def build_optimizer(model: torch.nn.Module, cfg: LoopConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on 1-D tensors.

    Biases and norm gains are not decayed (karpathy/nanoGPT model.py
    ``configure_optimizers`` groups parameters the same way).
    """
    import torch

    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs = {
        "lr": cfg.learning_rate,
        "betas": (cfg.adam_beta1, cfg.adam_beta2),
        "eps": cfg.adam_epsilon,
    }
    params = [g for g in groups if g["params"]]
    try:
        # the fused kernel (CPU and CUDA) is what the HF Trainer picks by default
        # (optim="adamw_torch_fused"); same maths, one kernel per step
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):  # dtype/device without a fused kernel
        return torch.optim.AdamW(params, **kwargs)


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_steps: int,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0, then a cosine decay to ``min_lr_ratio`` x peak.

    Args:
        optimizer: the optimiser whose learning rates are scaled.
        total_steps: optimiser steps of the whole run.
        warmup_steps: steps of linear warmup.
        min_lr_ratio: the floor at the end of the decay, as a share of the peak.

    Returns:
        A ``LambdaLR`` to step once per optimiser step.
    """
    import torch

    total = max(total_steps, 1)
    warm = min(max(warmup_steps, 0), total)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        span = max(total - warm, 1)
        progress = min((step - warm) / span, 1.0)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return min_lr_ratio + (1.0 - min_lr_ratio) * cosine

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def epoch_order(
    n: int,
    seed: int,
    epoch: int,
    *,
    lengths: Sequence[int] | None = None,
    global_batch: int = 1,
    megabatch: int = 50,
) -> list[int]:
    """The data order of one epoch, a pure function of ``(seed, epoch)``.

    A fresh ``torch.Generator`` per epoch draws a permutation, so resuming
    mid-run needs no generator state. With ``lengths``, batches are grouped by
    length as the Hugging Face ``LengthGroupedSampler`` does
    (transformers trainer_pt_utils.py: megabatches of 50 batches, each sorted
    by length), which cuts padding; the full batches are then shuffled so
    lengths do not trend through the epoch. The last, short batch stays last.

    Args:
        n: number of examples.
        seed: the run seed.
        epoch: the epoch (0-based).
        lengths: per-example lengths, or None for a plain permutation.
        global_batch: examples per optimiser step (the grouping unit).
        megabatch: batches per sorted megabatch.

    Returns:
        The example indices in training order.
    """
    import torch

    gen = torch.Generator().manual_seed(derive_seed(seed, "data-order", str(epoch)))
    order = torch.randperm(n, generator=gen).tolist()
    if lengths is None:
        return order
    size = max(global_batch * megabatch, 1)
    grouped: list[int] = []
    for start in range(0, n, size):
        grouped += sorted(order[start : start + size], key=lambda i: -lengths[i])
    batches = [grouped[s : s + global_batch] for s in range(0, n, global_batch)]
    tail = batches.pop() if len(batches[-1]) < global_batch else []
    shuffled = torch.randperm(len(batches), generator=gen).tolist()
    return [i for b in shuffled for i in batches[b]] + tail


def global_batch_size(cfg: LoopConfig, num_processes: int) -> int:
    """Examples per optimiser step over all processes and micro-batches."""
    return cfg.batch_size * cfg.gradient_accumulation_steps * num_processes


def steps_per_epoch(n: int, global_batch: int) -> int:
    """Optimiser steps in one epoch; the last, smaller batch is kept."""
    return max(math.ceil(n / global_batch), 1)


def micro_batches(
    order: Sequence[int],
    step_in_epoch: int,
    *,
    global_batch: int,
    batch_size: int,
    process_index: int,
    num_processes: int,
) -> list[list[int]]:
    """This process's micro-batches (example indices) of one optimiser step.

    The global batch is cut into equal contiguous shards, one per process.
    With several processes a short last batch is topped up from the start of
    the epoch's order so every process gets the same number of examples (as
    ``accelerate``'s ``even_batches`` does).
    """
    start = step_in_epoch * global_batch
    chunk = list(order[start : start + global_batch])
    if num_processes > 1 and len(chunk) % num_processes:
        need = num_processes - len(chunk) % num_processes
        chunk += list(order[:need])
    per_proc = len(chunk) // num_processes
    mine = chunk[process_index * per_proc : (process_index + 1) * per_proc]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
