"""Checkpoints: save, find, resume, prune; plain (safetensors) or DeepSpeed.

A plain or DDP checkpoint holds the trainable weights, the optimiser and
scheduler state, the loop position and every RNG state, written without pickle
(safetensors + JSON, DESIGN.md principle 6). A DeepSpeed checkpoint is an
``accelerator.save_state`` folder (each process writes its shards; DeepSpeed's
own format, pickle inside) plus the loop's JSON. Either appears whole (a temp
folder renamed once ``state.json`` is in it) and only the newest is kept.

torch and safetensors' torch API are imported by the functions that need them.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipelines.common.training.distributed import zero_stage
from pipelines.common.training.outputs import json_default

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

# the training modules log as their package, the name users grep logs for
logger = logging.getLogger(__package__)

CHECKPOINT_PREFIX = "step-"
# ``format`` of a checkpoint written by accelerator.save_state under DeepSpeed;
# plain and DDP checkpoints carry no ``format`` (safetensors + JSON, see below)
DEEPSPEED_CHECKPOINT = "accelerate-deepspeed"


def rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    """Python, numpy and torch (CPU and CUDA) RNG states as JSON + tensors."""
    import torch

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
    import torch

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
    import torch

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
    from safetensors.torch import save_file

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
            json.dumps(meta, default=json_default), encoding="utf-8"
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
    import torch
    from safetensors.torch import load_file

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


def checkpoint_kind(meta: Mapping) -> tuple[str, int | None, int | None]:
    """(format, ZeRO stage, processes) of a checkpoint's ``state.json``."""
    if meta.get("format") == DEEPSPEED_CHECKPOINT:
        return DEEPSPEED_CHECKPOINT, meta.get("zero_stage"), meta.get("num_processes")
    return "safetensors", None, None


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
