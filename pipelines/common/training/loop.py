"""Training-loop pieces shared by the SFT and reward-model stages.

What lives here:

- the optimiser (AdamW, no decay on biases and norms) and a cosine schedule
  with linear warmup;
- the data order: one seeded permutation per epoch, a pure function of
  ``(seed, epoch)``, so a resumed run sees the batches an uninterrupted run sees;
- :func:`train_loop`, one loop for both stages (gradient accumulation, clipping,
  logging, ``accelerate`` preparation, SIGTERM and checkpoints);
- checkpoints: trainable weights, optimiser and scheduler state, loop position
  and every RNG state, written atomically (temp folder + rename, only the last
  kept) and without pickle (safetensors + JSON, DESIGN.md principle 6);
- atomic ``save_pretrained`` of the final model and tokenizer.

Launch modes (the same module and flags in each):

- one process: ``python -m pipelines.train_rm ...`` (CPU or one GPU);
- DDP: ``accelerate launch --config_file accelerate/ddp.yaml --num_processes N
  -m pipelines.train_rm ...``; every process holds the whole model, gradients
  are averaged (NCCL on GPUs, gloo on CPU);
- DeepSpeed ZeRO-2 / ZeRO-3: the same with ``accelerate/zero2.yaml`` or
  ``accelerate/zero3.yaml``; optimiser state and gradients (ZeRO-2) or also the
  weights (ZeRO-3) are sharded over the processes.

In every mode each process takes its slice of every global batch
(``batch_size * gradient_accumulation_steps * num_processes`` examples) and
the main process alone writes the output folder. Under DeepSpeed the engine
owns accumulation, clipping and the optimiser step: :func:`train_loop` writes
``batch_size``, ``gradient_accumulation_steps`` and ``max_grad_norm`` of the
stage config into the DeepSpeed config (the launcher file does not set them),
marks the last micro-batch of a step as the accumulation boundary and steps
the LR schedule itself, once per optimiser step, as in the other modes.
DeepSpeed checkpoints are ``accelerator.save_state`` folders (each process
writes its shards; DeepSpeed's own format, pickle inside) plus the loop's JSON;
under ZeRO-3 the final weights are gathered from every process before saving.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from pipelines.common.io import atomic_dir, write_json
from pipelines.common.modeling import resolve_device
from pipelines.common.seeding import derive_seed

logger = logging.getLogger(__name__)

SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a killed job
CHECKPOINT_PREFIX = "step-"
# ``format`` of a checkpoint written by accelerator.save_state under DeepSpeed;
# plain and DDP checkpoints carry no ``format`` (safetensors + JSON, see below)
DEEPSPEED_CHECKPOINT = "accelerate-deepspeed"
MIXED_PRECISION = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}

Batch = dict[str, torch.Tensor]
# (sum of the loss over the micro-batch's units, summed statistics)
LossFn = Callable[
    [torch.nn.Module, Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]
]


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


class Interrupted(RuntimeError):
    """Training stopped on SIGTERM after saving a checkpoint (exit code 143)."""

    exit_code = SIGTERM_EXIT_CODE


# --------------------------------------------------------------------------- setup


def quiet_logging() -> None:
    """Tame log output for rule logs: no progress bars; rank 0 alone logs INFO.

    ``torchrun`` and ``accelerate launch`` set ``RANK``; the other processes
    keep warnings and errors only, so a multi-GPU log is not doubled.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger().setLevel(logging.WARNING)


def deepspeed_launched() -> bool:
    """Whether ``accelerate launch`` started this process with a DeepSpeed config."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def make_accelerator(device: str = "auto", dtype: str = "float32") -> Accelerator:
    """An ``Accelerator`` for ``device`` with ``dtype`` as the compute precision.

    Weights and optimiser state stay float32; ``bfloat16``/``float16`` turn on
    autocast mixed precision (what the Hugging Face Trainer's ``bf16=True`` does).
    Under ``accelerate launch`` the launcher's settings (processes, DeepSpeed)
    apply on top, except the precision: ``dtype`` is passed to ``Accelerator``,
    and that argument wins over the launcher's ``mixed_precision`` (accelerate
    reads ``ACCELERATE_MIXED_PRECISION`` only when the argument is None). Under
    DeepSpeed accelerate turns ``dtype`` into the DeepSpeed ``bf16``/``fp16``
    section instead of autocast: the engine then keeps bfloat16/float16 weights
    with float32 master weights in the optimiser, and saves those 16-bit weights.

    DeepSpeed on a machine without CUDA (the 2-process CPU tests) runs on
    DeepSpeed's CPU accelerator over gloo: accelerate disables DeepSpeed when
    ``cpu=True``, so the process group is set up as gloo instead.

    Args:
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        dtype: ``float32``, ``bfloat16`` or ``float16``.

    Returns:
        The accelerator.

    Raises:
        ValueError: on an unknown dtype, or CUDA asked for but absent.
    """
    if dtype not in MIXED_PRECISION:
        raise ValueError(f"dtype must be one of {sorted(MIXED_PRECISION)}, got {dtype}")
    target = resolve_device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    cpu = target.type == "cpu"
    handlers = []
    if cpu and deepspeed_launched():
        if torch.cuda.is_available():
            raise ValueError(
                "DeepSpeed with --device cpu needs a machine without CUDA"
                " (DeepSpeed picks its accelerator itself)"
            )
        cpu = False
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=MIXED_PRECISION[dtype],
        # the loop steps the scheduler once per global optimiser step itself
        step_scheduler_with_optimizer=False,
        kwargs_handlers=handlers or None,
    )
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        plugin = accelerator.state.deepspeed_plugin
        if not plugin.zero3_init_flag:
            # Selecting the plugin registers transformers' HfDeepSpeedConfig;
            # with ZeRO-3 that alone makes from_pretrained partition the model at
            # load (deepspeed.zero.Init), whatever zero3_init_flag says. Our
            # stages edit the model before prepare (pad rows, score head, LoRA),
            # so without the flag the model is built whole and sharded by
            # prepare.
            from transformers.integrations import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
    return accelerator


def zero_stage(accelerator: Accelerator) -> int | None:
    """The DeepSpeed ZeRO stage of ``accelerator``, or None without DeepSpeed."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return None
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    return int(config["zero_optimization"]["stage"])


def configure_deepspeed(accelerator: Accelerator, cfg: LoopConfig) -> None:
    """Write the stage config's batch, accumulation and clipping into DeepSpeed's.

    The launcher files leave these out (accelerate then has ``auto``, and fills
    ``gradient_clipping: auto`` with 1.0 whatever ``max_grad_norm`` says), so
    the engine accumulates ``gradient_accumulation_steps`` micro-batches of
    ``batch_size`` and clips at ``max_grad_norm`` (0: off), as the plain loop
    does. A value the launcher did set and that differs is overridden with a
    warning.

    Raises:
        ValueError: under ZeRO-3 without ``zero3_save_16bit_model`` (the final
            weights could not be gathered for saving).
    """
    plugin = accelerator.state.deepspeed_plugin
    config = plugin.deepspeed_config
    wanted = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "gradient_clipping": float(cfg.max_grad_norm),
        "train_batch_size": global_batch_size(cfg, accelerator.num_processes),
    }
    for key, value in wanted.items():
        current = config.get(key, "auto")
        if current != "auto" and current != value:
            logger.warning(
                "DeepSpeed config has %s=%s; using %s from the stage config",
                key,
                current,
                value,
            )
        config[key] = value
    plugin.gradient_accumulation_steps = cfg.gradient_accumulation_steps
    plugin.gradient_clipping = float(cfg.max_grad_norm)
    # accelerate compares its own count with DeepSpeed's at prepare
    accelerator.gradient_accumulation_steps = cfg.gradient_accumulation_steps
    zero = config["zero_optimization"]
    if int(zero["stage"]) == 3 and not zero.get(
        "stage3_gather_16bit_weights_on_model_save", False
    ):
        raise ValueError(
            "ZeRO-3 needs zero3_save_16bit_model: true in the accelerate config"
            " (stage3_gather_16bit_weights_on_model_save) to save whole weights"
        )


def build_optimizer(model: torch.nn.Module, cfg: LoopConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on 1-D tensors.

    Biases and norm gains are not decayed (karpathy/nanoGPT model.py
    ``configure_optimizers`` groups parameters the same way).
    """
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


# -------------------------------------------------------------------- stop signal


class StopFlag:
    """Set by SIGTERM (Slurm preemption, ``scancel``); the loop checks it per step.

    Used as a context manager, it installs the handler on entry and restores the
    previous one on exit. Outside the main thread no handler can be installed;
    the flag then only changes through :meth:`set`.
    """

    def __init__(self) -> None:
        self.raised = False
        self._previous: object = None
        self._installed = False

    def set(self, *_: object) -> None:
        """Mark that training should stop at the end of the current step."""
        if not self.raised:
            logger.warning("SIGTERM received: stopping after the current step")
        self.raised = True

    def __enter__(self) -> StopFlag:
        try:
            self._previous = signal.signal(signal.SIGTERM, self.set)
            self._installed = True
        except ValueError:  # not the main thread
            logger.debug("SIGTERM handler not installed (not the main thread)")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)  # type: ignore[arg-type]
            self._installed = False


# -------------------------------------------------------------------- checkpoints


def _json_default(obj: object) -> object:
    if isinstance(obj, tuple | set):
        return list(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    """Python, numpy and torch (CPU and CUDA) RNG states as JSON + tensors."""
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [
            np_state[0],
            np_state[1].tolist(),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
    tensors = {"rng.torch": torch.get_rng_state()}
    if meta["cuda_devices"]:
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    return meta, tensors


def set_rng_state(meta: Mapping, tensors: Mapping[str, torch.Tensor]) -> None:
    """Restore the states captured by :func:`rng_state`."""
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state(
        (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
    )
    torch.set_rng_state(tensors["rng.torch"])
    n_cuda = meta.get("cuda_devices", 0)
    if n_cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[f"rng.cuda.{i}"] for i in range(n_cuda)])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the trainable parameters (all of them, or LoRA + head)."""
    return {
        name: p.detach().to("cpu", copy=True).contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def _optimizer_to_files(
    state: dict,
) -> tuple[dict, dict[str, torch.Tensor]]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict] = {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(pid), {})[key] = value
    return {"param_groups": state["param_groups"], "plain": plain}, tensors


def _optimizer_from_files(meta: Mapping, tensors: Mapping[str, torch.Tensor]) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, extra in meta["plain"].items():
        state.setdefault(int(pid), {}).update(extra)
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def _temp_dir(parent: Path, prefix: str) -> Path:
    """A new folder in ``parent`` with the umask's permissions (not mkdtemp's 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o777 & ~mask)
    return path


def latest_checkpoint(checkpoint_dir: Path | None) -> Path | None:
    """The newest complete checkpoint folder in ``checkpoint_dir``, if any."""
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return None
    found = sorted(
        p
        for p in Path(checkpoint_dir).glob(f"{CHECKPOINT_PREFIX}*")
        if p.is_dir() and (p / "state.json").is_file()
    )
    return found[-1] if found else None


def save_checkpoint(
    checkpoint_dir: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loop_state: Mapping,
) -> Path:
    """Write one checkpoint atomically and delete the older ones.

    The folder ``step-<N>`` appears whole (written as a temp folder, then
    renamed); only then are earlier checkpoints removed.

    Args:
        checkpoint_dir: where checkpoints live (not inside the output folder).
        model: the unwrapped model; its trainable parameters are saved.
        optimizer: the optimiser.
        scheduler: the LR scheduler.
        loop_state: JSON-able loop position and history (must hold ``step``).

    Returns:
        The checkpoint folder.
    """
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{int(loop_state['step']):09d}"
    tmp = _temp_dir(checkpoint_dir, ".tmp-")
    try:
        save_file(trainable_state(model), str(tmp / "model.safetensors"))
        optim_meta, optim_tensors = _optimizer_to_files(optimizer.state_dict())
        rng_meta, rng_tensors = rng_state()
        save_file({**optim_tensors, **rng_tensors}, str(tmp / "state.safetensors"))
        meta = {
            "loop": dict(loop_state),
            "optimizer": optim_meta,
            "scheduler": scheduler.state_dict(),
            "rng": rng_meta,
        }
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish_checkpoint(tmp, final, meta)
    return final


def _publish_checkpoint(tmp: Path, final: Path, meta: Mapping) -> None:
    """Finish a checkpoint written to ``tmp``: state.json, rename, prune.

    ``state.json`` is written last, since its presence marks a complete
    checkpoint; then ``tmp`` becomes ``final`` and the older checkpoints beside
    it are deleted. On any error ``tmp`` is removed and nothing else changes.
    """
    try:
        (tmp / "state.json").write_text(
            json.dumps(meta, default=_json_default), encoding="utf-8"
        )
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in final.parent.glob(f"{CHECKPOINT_PREFIX}*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict:
    """Restore weights, optimiser, scheduler and RNG states; return the loop state.

    Raises:
        ValueError: if the checkpoint's parameters do not match the model's
            trainable parameters.
    """
    path = Path(path)
    meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    weights = load_file(str(path / "model.safetensors"))
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != expected:
        missing = sorted(expected - set(weights))[:5]
        extra = sorted(set(weights) - expected)[:5]
        raise ValueError(
            f"checkpoint {path} does not match the model: missing {missing},"
            f" unexpected {extra}"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device))
    tensors = load_file(str(path / "state.safetensors"))
    optimizer.load_state_dict(_optimizer_from_files(meta["optimizer"], tensors))
    scheduler.load_state_dict(meta["scheduler"])
    set_rng_state(meta["rng"], tensors)
    return meta["loop"]


def save_deepspeed_checkpoint(
    checkpoint_dir: Path,
    *,
    accelerator: Accelerator,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loop_state: Mapping,
) -> Path:
    """Write one DeepSpeed checkpoint atomically (every process calls this).

    ZeRO shards the optimiser state (and under ZeRO-3 the weights) over the
    processes, so each one writes its part through ``accelerator.save_state``
    (DeepSpeed's ``save_checkpoint`` plus each process's RNG states) into a
    temp folder whose name every process knows; after a barrier the main
    process adds ``state.json`` (loop state, LR schedule) and renames the
    folder to ``step-<N>``, then deletes older checkpoints.

    Args:
        checkpoint_dir: where checkpoints live (not inside the output folder).
        accelerator: the accelerator that prepared the DeepSpeed engine.
        scheduler: the LR scheduler (stepped by the loop, not by DeepSpeed).
        loop_state: JSON-able loop position and history (must hold ``step``).

    Returns:
        The checkpoint folder.
    """
    checkpoint_dir = Path(checkpoint_dir)
    name = f"{CHECKPOINT_PREFIX}{int(loop_state['step']):09d}"
    final = checkpoint_dir / name
    tmp = checkpoint_dir / f".tmp-{name}"
    if accelerator.is_main_process:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        meta = {
            "format": DEEPSPEED_CHECKPOINT,
            "zero_stage": zero_stage(accelerator),
            "num_processes": accelerator.num_processes,
            "loop": dict(loop_state),
            "scheduler": scheduler.state_dict(),
        }
        _publish_checkpoint(tmp, final, meta)
    accelerator.wait_for_everyone()
    return final


def load_deepspeed_checkpoint(
    path: Path,
    *,
    accelerator: Accelerator,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict:
    """Restore a :func:`save_deepspeed_checkpoint` folder; return the loop state.

    Every process calls this: ``accelerator.load_state`` loads its shards of
    weights and optimiser state and its RNG states.
    """
    path = Path(path)
    meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    accelerator.load_state(str(path))
    scheduler.load_state_dict(meta["scheduler"])
    return meta["loop"]


def _checkpoint_kind(meta: Mapping) -> tuple[str, int | None, int | None]:
    """(format, ZeRO stage, processes) of a checkpoint's ``state.json``."""
    if meta.get("format") == DEEPSPEED_CHECKPOINT:
        return DEEPSPEED_CHECKPOINT, meta.get("zero_stage"), meta.get("num_processes")
    return "safetensors", None, None


def gather_zero3_weights(accelerator: Accelerator, prepared: torch.nn.Module) -> None:
    """Put the whole trained weights back into the model on the main process.

    Under ZeRO-3 every parameter of the unwrapped model is a shard (an empty
    tensor outside the engine's gather hooks), so ``save_pretrained`` or a
    LoRA merge on it would write empty or partial weights. Every process
    takes part in gathering (``accelerator.get_state_dict``, the accelerate
    recipe; it needs ``stage3_gather_16bit_weights_on_model_save``, and gives
    the weights in the engine's dtype: float32, or bfloat16/float16 under a
    DeepSpeed precision section); then the engine's hooks are removed and the
    main process swaps every parameter for a plain one holding the whole
    tensor (on CPU). Other processes keep empty parameters: they must not save.

    Args:
        accelerator: the accelerator that prepared the engine.
        prepared: the DeepSpeed engine (the prepared model).
    """
    full = accelerator.get_state_dict(prepared)  # collective: every process
    model = accelerator.unwrap_model(prepared)
    if hasattr(prepared, "destroy"):  # removes ZeRO-3's hooks (older: kept,
        prepared.destroy()  # harmless here as the model only gets saved)
    if not accelerator.is_main_process:
        return
    # On CUDA the gathered tensors are CPU copies; on CPU (tests) they would
    # share storage with the engine's gather buffers, so they are copied.
    copy = accelerator.device.type == "cpu"
    replaced: dict[int, torch.nn.Parameter] = {}  # id(shard) -> whole
    done: set[int] = set()  # ids of the new parameters
    for prefix, module in model.named_modules(remove_duplicate=False):
        for name, param in list(module._parameters.items()):
            if param is None or id(param) in done:
                continue  # a module reached twice is done already
            if id(param) not in replaced:  # tied weights stay tied
                key = f"{prefix}.{name}" if prefix else name
                whole = full[key].detach()
                whole = whole.clone() if copy else whole
                replaced[id(param)] = torch.nn.Parameter(
                    whole, requires_grad=param.requires_grad
                )
                done.add(id(replaced[id(param)]))
            module._parameters[name] = replaced[id(param)]
    empty = [n for n, p in model.named_parameters() if p.numel() == 0]
    if empty:
        raise RuntimeError(f"ZeRO-3 gather left empty parameters: {empty[:5]}")


# ----------------------------------------------------------------- final outputs


def file_digest(path: Path) -> str:
    """SHA-256 of a file (recorded in run configs and checkpoint fingerprints)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_fingerprint(**parts: object) -> str:
    """A short hash of what determines a run (config, seed, base, data digests)."""
    text = json.dumps(parts, sort_keys=True, default=_json_default)
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


# ---------------------------------------------------------------------- the loop


@dataclass
class LoopResult:
    """What :func:`train_loop` measured."""

    history: list[dict[str, float]] = field(default_factory=list)
    epochs: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    total_steps: int = 0
    examples_this_run: int = 0
    seconds_this_run: float = 0.0
    resumed_from_step: int = 0

    @property
    def examples_per_second(self) -> float:
        """Training throughput of this process run (examples over loop time)."""
        return self.examples_this_run / max(self.seconds_this_run, 1e-9)


def _means(sums: Mapping[str, float]) -> dict[str, float]:
    """``loss`` per unit and every other stat per example, from running sums."""
    out = {}
    units = sums.get("units", 0.0)
    examples = sums.get("examples", 0.0)
    for key, value in sums.items():
        if key in ("units", "examples"):
            continue
        denom = units if key == "loss" else examples
        out[key] = value / denom if denom else float("nan")
    return out


def _add(into: dict[str, float], new: Mapping[str, float]) -> None:
    for key, value in new.items():
        into[key] = into.get(key, 0.0) + value


def train_loop(
    *,
    accelerator: Accelerator,
    model: torch.nn.Module,
    n_examples: int,
    make_batch: Callable[[list[int]], tuple[Batch, int]],
    loss_fn: LossFn,
    cfg: LoopConfig,
    seed: int,
    checkpoint_dir: Path | None = None,
    fingerprint: str = "",
    unit_name: str = "examples",
    lengths: Sequence[int] | None = None,
) -> tuple[torch.nn.Module, LoopResult]:
    """Train ``model`` for ``cfg.epochs`` over ``n_examples`` indexed examples.

    Each optimiser step takes the next ``global_batch_size`` indices of the
    epoch's seeded order; this process builds its micro-batches with
    ``make_batch(indices) -> (tensors, n_units)`` and sums ``loss_fn`` over
    them; the loss of the step is that sum divided by the step's units (pairs
    for an RM, target tokens for SFT), so accumulation does not change it.

    Checkpoints go to ``checkpoint_dir`` every ``cfg.checkpoint_every`` steps
    and when SIGTERM arrives (then :class:`Interrupted` is raised after the
    save). A checkpoint found there at the start is resumed from, unless its
    fingerprint differs, or it was written in another mode (DeepSpeed or not,
    another ZeRO stage or process count); then it is ignored with a warning.

    Under DeepSpeed (see the module docstring) the engine accumulates, clips
    and steps; the loss scaling is the same as in the other modes (each
    micro-batch's summed loss over the step's units, no extra division by the
    accumulation steps), and checkpoints are sharded
    (:func:`save_deepspeed_checkpoint`).

    Args:
        accelerator: from :func:`make_accelerator`.
        model: the model to train, not yet prepared.
        n_examples: size of the training set.
        make_batch: indices -> (tensors on ``accelerator.device``, units).
        loss_fn: (prepared model, batch) -> (summed loss, summed statistics).
        cfg: optimisation settings (see :class:`LoopConfig`).
        seed: seeds the data order (model init is the caller's business).
        checkpoint_dir: where to checkpoint, or None for no checkpoints.
        fingerprint: identifies the run; a checkpoint of another run is ignored.
        unit_name: what an example is called in the logs (``pairs``...).
        lengths: per-example lengths to group batches by (see
            :func:`epoch_order`), or None for uniformly random batches.

    Returns:
        The unwrapped trained model and the loop's measurements. Under ZeRO-3
        the model holds the whole weights (on CPU, hooks removed) on the main
        process only (:func:`gather_zero3_weights`); other processes get
        empty parameters and must not save it.

    Raises:
        Interrupted: SIGTERM arrived; a checkpoint was saved if possible.
    """
    if cfg.batch_size < 1 or cfg.gradient_accumulation_steps < 1:
        raise ValueError("batch_size and gradient_accumulation_steps must be >= 1")
    if n_examples < 1:
        raise ValueError("no training examples")
    nproc, rank = accelerator.num_processes, accelerator.process_index
    global_batch = global_batch_size(cfg, nproc)
    per_epoch = steps_per_epoch(n_examples, global_batch)
    total_steps = per_epoch * cfg.epochs
    if cfg.max_steps > 0:
        total_steps = min(total_steps, cfg.max_steps)
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    stage = zero_stage(accelerator)
    deepspeed = stage is not None
    if deepspeed:
        configure_deepspeed(accelerator, cfg)
    optimizer = build_optimizer(model, cfg)
    scheduler = cosine_with_warmup(
        optimizer,
        total_steps=total_steps,
        warmup_steps=warmup,
        min_lr_ratio=cfg.min_lr_ratio,
    )
    prepared, optimizer = accelerator.prepare(model, optimizer)
    base_model = accelerator.unwrap_model(prepared)

    loop_state: dict = {
        "fingerprint": fingerprint,
        "step": 0,
        "epoch": 0,
        "step_in_epoch": 0,
        "history": [],
        "epochs": [],
        "window": {},
        "epoch_sums": {},
    }
    found = latest_checkpoint(checkpoint_dir)
    if found is not None:
        meta = json.loads((found / "state.json").read_text(encoding="utf-8"))
        saved = meta["loop"]
        kind = (
            (DEEPSPEED_CHECKPOINT, stage, nproc)
            if deepspeed
            else ("safetensors", None, None)
        )
        if saved.get("fingerprint") != fingerprint:
            logger.warning(
                "ignoring checkpoint %s: it belongs to another run (fingerprint %s,"
                " this run %s)",
                found,
                saved.get("fingerprint"),
                fingerprint,
            )
        elif _checkpoint_kind(meta) != kind:
            logger.warning(
                "ignoring checkpoint %s: written as %s (ZeRO stage, processes),"
                " this run is %s",
                found,
                _checkpoint_kind(meta),
                kind,
            )
        else:
            if deepspeed:
                loop_state = load_deepspeed_checkpoint(
                    found, accelerator=accelerator, scheduler=scheduler
                )
            else:
                loop_state = load_checkpoint(
                    found, model=base_model, optimizer=optimizer, scheduler=scheduler
                )
            logger.info(
                "resumed from %s: step %d/%d, epoch %d, batch %d of the epoch",
                found,
                loop_state["step"],
                total_steps,
                loop_state["epoch"],
                loop_state["step_in_epoch"],
            )
    result = LoopResult(total_steps=total_steps, resumed_from_step=loop_state["step"])
    logger.info(
        "training: %d %s, %d epochs x %d steps (%d total, %d warmup), global batch"
        " %d on %d process(es), device %s",
        n_examples,
        unit_name,
        cfg.epochs,
        per_epoch,
        total_steps,
        warmup,
        global_batch,
        nproc,
        accelerator.device,
    )

    def checkpoint() -> None:
        if checkpoint_dir is None:
            return
        if deepspeed:  # every process writes its shards
            path = save_deepspeed_checkpoint(
                Path(checkpoint_dir),
                accelerator=accelerator,
                scheduler=scheduler,
                loop_state=loop_state,
            )
            logger.info("checkpoint %s", path)
            return
        if accelerator.is_main_process:
            path = save_checkpoint(
                Path(checkpoint_dir),
                model=base_model,
                optimizer=optimizer,
                scheduler=scheduler,
                loop_state=loop_state,
            )
            logger.info("checkpoint %s", path)
        accelerator.wait_for_everyone()

    prepared.train()
    started = time.perf_counter()
    seen = 0
    with StopFlag() as stop:
        while loop_state["step"] < total_steps:
            epoch = loop_state["epoch"]
            order = epoch_order(
                n_examples, seed, epoch, lengths=lengths, global_batch=global_batch
            )
            while loop_state["step_in_epoch"] < per_epoch:
                if loop_state["step"] >= total_steps:
                    break
                parts = micro_batches(
                    order,
                    loop_state["step_in_epoch"],
                    global_batch=global_batch,
                    batch_size=cfg.batch_size,
                    process_index=rank,
                    num_processes=nproc,
                )
                built = [make_batch(idx) for idx in parts]
                step_units = max(sum(units for _, units in built), 1)
                sums: dict[str, torch.Tensor] = {}
                step_lr = scheduler.get_last_lr()[0]  # the rate this step uses
                for i, (batch, _) in enumerate(built):
                    last = i == len(built) - 1
                    if deepspeed:
                        loss_sum, stats = loss_fn(prepared, batch)
                        # the last micro-batch is the accumulation boundary:
                        # the engine then reduces, clips, steps and zeroes;
                        # the loss is already over the step's units, so no
                        # division by the accumulation steps (scale_wrt_gas)
                        accelerator.deepspeed_engine_wrapped.backward(
                            loss_sum / step_units,
                            sync_gradients=last,
                            scale_wrt_gas=False,
                        )
                    else:
                        sync = (
                            contextlib.nullcontext()
                            if last
                            else accelerator.no_sync(prepared)
                        )
                        with sync:
                            loss_sum, stats = loss_fn(prepared, batch)
                            accelerator.backward(loss_sum / step_units)
                    for key, value in {"loss": loss_sum, **stats}.items():
                        value = value.detach().float()
                        sums[key] = sums[key] + value if key in sums else value
                if not deepspeed:
                    if cfg.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(
                            prepared.parameters(), cfg.max_grad_norm
                        )
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                scheduler.step()  # ours, not the engine's: once per step

                sums["units"] = torch.tensor(
                    float(step_units), device=accelerator.device
                )
                sums["examples"] = torch.tensor(
                    float(sum(len(p) for p in parts)), device=accelerator.device
                )
                keys = sorted(sums)
                totals = accelerator.reduce(torch.stack([sums[k] for k in keys]), "sum")
                step_stats = dict(zip(keys, totals.tolist(), strict=True))
                seen += int(step_stats["examples"])
                _add(loop_state["window"], step_stats)
                _add(loop_state["epoch_sums"], step_stats)
                loop_state["step"] += 1
                loop_state["step_in_epoch"] += 1
                step = loop_state["step"]

                if step % max(cfg.log_every, 1) == 0 or step == total_steps:
                    means = _means(loop_state["window"])
                    entry = {
                        "step": step,
                        "epoch": epoch,
                        "lr": step_lr,
                        **means,
                    }
                    loop_state["history"].append(entry)
                    loop_state["window"] = {}
                    rate = seen / max(time.perf_counter() - started, 1e-9)
                    extra = " ".join(
                        f"{k} {v:.4f}" for k, v in means.items() if k != "loss"
                    )
                    logger.info(
                        "step %d/%d epoch %d loss %.4f %s lr %.3g %s/s %.1f",
                        step,
                        total_steps,
                        epoch,
                        means["loss"],
                        extra,
                        entry["lr"],
                        unit_name,
                        rate,
                    )
                stopping = stop.raised
                if nproc > 1:  # every process must agree to stop at the same step
                    flag = torch.tensor(float(stopping), device=accelerator.device)
                    stopping = bool(accelerator.reduce(flag, "sum").item() > 0)
                if stopping and step < total_steps:
                    checkpoint()
                    raise Interrupted(
                        f"stopped by SIGTERM after step {step}/{total_steps}"
                        + (
                            f"; checkpoint in {checkpoint_dir}"
                            if checkpoint_dir
                            else ""
                        )
                    )
                if (
                    cfg.checkpoint_every > 0
                    and step % cfg.checkpoint_every == 0
                    and step < total_steps
                ):
                    checkpoint()
            if (
                loop_state["step_in_epoch"] >= per_epoch
                or loop_state["step"] >= total_steps
            ):
                summary = {"epoch": epoch, **_means(loop_state["epoch_sums"])}
                loop_state["epochs"].append(summary)
                logger.info("epoch %d done: %s", epoch, summary)
                loop_state["epoch_sums"] = {}
                loop_state["epoch"] += 1
                loop_state["step_in_epoch"] = 0
    result.seconds_this_run = time.perf_counter() - started
    if stage == 3:
        gather_zero3_weights(accelerator, prepared)
    result.examples_this_run = seen
    result.steps = loop_state["step"]
    result.history = loop_state["history"]
    result.epochs = loop_state["epochs"]
    return base_model, result


def check_checkpoint_dir(out: Path, checkpoint_dir: Path | None) -> None:
    """Refuse a checkpoint folder inside the output folder (Snakemake wipes it).

    Raises:
        ValueError: if ``checkpoint_dir`` is ``out`` or lies inside it.
    """
    if checkpoint_dir is None:
        return
    inner = Path(checkpoint_dir).resolve()
    if Path(out).resolve() in (inner, *inner.parents):
        raise ValueError(f"checkpoint_dir {checkpoint_dir} must not be inside {out}")


def remove_checkpoints(checkpoint_dir: Path | None, accelerator: Accelerator) -> None:
    """Delete the checkpoint folder after a successful run (main process)."""
    if checkpoint_dir is None:
        return
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and Path(checkpoint_dir).exists():
        shutil.rmtree(checkpoint_dir)
        logger.info("removed checkpoints in %s", checkpoint_dir)


def loop_metrics(result: LoopResult, unit_name: str) -> dict[str, object]:
    """The loop's part of ``metrics.json``: loss curve, per-epoch means, speed."""
    final = result.history[-1] if result.history else {}
    return {
        "final_loss": final.get("loss", float("nan")),
        "steps": result.steps,
        "total_steps": result.total_steps,
        "resumed_from_step": result.resumed_from_step,
        f"{unit_name}_per_second": result.examples_per_second,
        "train_seconds_this_run": result.seconds_this_run,
        "loss_curve": result.history,
        "epochs": result.epochs,
    }
