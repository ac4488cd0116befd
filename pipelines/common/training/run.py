"""One training run's state and steps, driven by :func:`train_loop`.

:class:`TrainingRun` holds the prepared model, optimiser, LR schedule and the
loop position (``state``, saved in every checkpoint), and does one optimiser
step (micro-batches, gradient accumulation, clipping; under DeepSpeed the
engine accumulates, clips and steps, with the last micro-batch of a step as
the accumulation boundary), the loss log every ``log_every`` steps, resume,
checkpoints and the stop on SIGTERM (:class:`StopFlag`, :class:`Interrupted`).

torch is imported by the functions that need it, not at import.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.common.training.checkpoints import (
    DEEPSPEED_CHECKPOINT,
    checkpoint_kind,
    latest_checkpoint,
    load_checkpoint,
    load_deepspeed_checkpoint,
    save_checkpoint,
    save_deepspeed_checkpoint,
)
from pipelines.common.training.distributed import configure_deepspeed, zero_stage
from pipelines.common.training.schedule import (
    LoopConfig,
    build_optimizer,
    cosine_with_warmup,
    global_batch_size,
    micro_batches,
    steps_per_epoch,
)

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

# the training modules log as their package, the name users grep logs for
logger = logging.getLogger(__package__)

SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a killed job

Batch = dict[str, "torch.Tensor"]
# (sum of the loss over the micro-batch's units, summed statistics)
LossFn = Callable[
    ["torch.nn.Module", Batch], tuple["torch.Tensor", dict[str, "torch.Tensor"]]
]


class Interrupted(RuntimeError):
    """Training stopped on SIGTERM after saving a checkpoint (exit code 143)."""

    exit_code = SIGTERM_EXIT_CODE


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


@dataclass(frozen=True)
class Plan:
    """The sizes of a run, fixed before it starts."""

    n_examples: int
    global_batch: int
    per_epoch: int
    total_steps: int
    warmup: int

    @classmethod
    def of(cls, cfg: LoopConfig, n_examples: int, num_processes: int) -> Plan:
        """Steps per epoch, total and warmup steps of ``cfg`` on ``n_examples``."""
        if cfg.batch_size < 1 or cfg.gradient_accumulation_steps < 1:
            raise ValueError("batch_size and gradient_accumulation_steps must be >= 1")
        if n_examples < 1:
            raise ValueError("no training examples")
        global_batch = global_batch_size(cfg, num_processes)
        per_epoch = steps_per_epoch(n_examples, global_batch)
        total_steps = per_epoch * cfg.epochs
        if cfg.max_steps > 0:
            total_steps = min(total_steps, cfg.max_steps)
        return cls(
            n_examples=n_examples,
            global_batch=global_batch,
            per_epoch=per_epoch,
            total_steps=total_steps,
            warmup=math.ceil(cfg.warmup_ratio * total_steps),
        )


class TrainingRun:
    """One :func:`~pipelines.common.training.loop.train_loop` call's state.

    The prepared model, optimiser, LR schedule and loop position, and what one
    optimiser step, a checkpoint, a resume and a stop do with them.

    ``state`` is the JSON-able loop position and history saved in every
    checkpoint (its keys are the checkpoint format: keep them).
    """

    def __init__(
        self,
        *,
        accelerator: Accelerator,
        model: torch.nn.Module,
        cfg: LoopConfig,
        plan: Plan,
        checkpoint_dir: Path | None,
        fingerprint: str,
        unit_name: str,
    ) -> None:
        self.accelerator = accelerator
        self.cfg = cfg
        self.plan = plan
        self.checkpoint_dir = checkpoint_dir
        self.fingerprint = fingerprint
        self.unit_name = unit_name
        self.stage = zero_stage(accelerator)
        self.deepspeed = self.stage is not None
        if self.deepspeed:
            configure_deepspeed(accelerator, cfg)
        optimizer = build_optimizer(model, cfg)
        self.scheduler = cosine_with_warmup(
            optimizer,
            total_steps=plan.total_steps,
            warmup_steps=plan.warmup,
            min_lr_ratio=cfg.min_lr_ratio,
        )
        self.prepared, self.optimizer = accelerator.prepare(model, optimizer)
        self.base_model = accelerator.unwrap_model(self.prepared)
        self.state: dict = {
            "fingerprint": fingerprint,
            "step": 0,
            "epoch": 0,
            "step_in_epoch": 0,
            "history": [],
            "epochs": [],
            "window": {},
            "epoch_sums": {},
        }
        self.seen = 0  # examples trained on by this process run (all processes)
        self.started = time.perf_counter()

    def resume(self) -> None:
        """Load the newest checkpoint of ``checkpoint_dir`` if it is this run's.

        A checkpoint of another run (fingerprint) or written in another mode
        (DeepSpeed or not, another ZeRO stage or process count) is ignored
        with a warning.
        """
        found = latest_checkpoint(self.checkpoint_dir)
        if found is None:
            return
        meta = json.loads((found / "state.json").read_text(encoding="utf-8"))
        saved = meta["loop"]
        nproc = self.accelerator.num_processes
        kind = (
            (DEEPSPEED_CHECKPOINT, self.stage, nproc)
            if self.deepspeed
            else ("safetensors", None, None)
        )
        if saved.get("fingerprint") != self.fingerprint:
            logger.warning(
                "ignoring checkpoint %s: it belongs to another run (fingerprint %s,"
                " this run %s)",
                found,
                saved.get("fingerprint"),
                self.fingerprint,
            )
            return
        if checkpoint_kind(meta) != kind:
            logger.warning(
                "ignoring checkpoint %s: written as %s (ZeRO stage, processes),"
                " this run is %s",
                found,
                checkpoint_kind(meta),
                kind,
            )
            return
        if self.deepspeed:
            self.state = load_deepspeed_checkpoint(
                found, accelerator=self.accelerator, scheduler=self.scheduler
            )
        else:
            self.state = load_checkpoint(
                found,
                model=self.base_model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
            )
        logger.info(
            "resumed from %s: step %d/%d, epoch %d, batch %d of the epoch",
            found,
            self.state["step"],
            self.plan.total_steps,
            self.state["epoch"],
            self.state["step_in_epoch"],
        )

    def checkpoint(self) -> None:
        """Save a checkpoint (every process under DeepSpeed, else the main one)."""
        if self.checkpoint_dir is None:
            return
        if self.deepspeed:  # every process writes its shards
            path = save_deepspeed_checkpoint(
                Path(self.checkpoint_dir),
                accelerator=self.accelerator,
                scheduler=self.scheduler,
                loop_state=self.state,
            )
            logger.info("checkpoint %s", path)
            return
        if self.accelerator.is_main_process:
            path = save_checkpoint(
                Path(self.checkpoint_dir),
                model=self.base_model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                loop_state=self.state,
            )
            logger.info("checkpoint %s", path)
        self.accelerator.wait_for_everyone()

    def start(self) -> None:
        """Put the model in training mode and start the clock of this run."""
        self.prepared.train()
        self.started = time.perf_counter()
        self.seen = 0

    def step(
        self,
        order: Sequence[int],
        make_batch: Callable[[list[int]], tuple[Batch, int]],
        loss_fn: LossFn,
    ) -> tuple[dict[str, float], float]:
        """One optimiser step on the next global batch of ``order``.

        Returns:
            The step's statistics summed over all processes (``loss``,
            ``units``, ``examples`` and ``loss_fn``'s) and the learning rate
            the step used.
        """
        import torch

        accelerator, prepared = self.accelerator, self.prepared
        parts = micro_batches(
            order,
            self.state["step_in_epoch"],
            global_batch=self.plan.global_batch,
            batch_size=self.cfg.batch_size,
            process_index=accelerator.process_index,
            num_processes=accelerator.num_processes,
        )
        built = [make_batch(idx) for idx in parts]
        step_units = max(sum(units for _, units in built), 1)
        sums: dict[str, torch.Tensor] = {}
        step_lr = self.scheduler.get_last_lr()[0]  # the rate this step uses
        for i, (batch, _) in enumerate(built):
            last = i == len(built) - 1
            if self.deepspeed:
                loss_sum, stats = loss_fn(prepared, batch)
                # the last micro-batch is the accumulation boundary: the engine
                # then reduces, clips, steps and zeroes; the loss is already
                # over the step's units, so no division by the accumulation
                # steps (scale_wrt_gas)
                accelerator.deepspeed_engine_wrapped.backward(
                    loss_sum / step_units, sync_gradients=last, scale_wrt_gas=False
                )
            else:
                sync = (
                    contextlib.nullcontext() if last else accelerator.no_sync(prepared)
                )
                with sync:
                    loss_sum, stats = loss_fn(prepared, batch)
                    accelerator.backward(loss_sum / step_units)
            for key, value in {"loss": loss_sum, **stats}.items():
                value = value.detach().float()
                sums[key] = sums[key] + value if key in sums else value
        if not self.deepspeed:
            if self.cfg.max_grad_norm > 0:
                accelerator.clip_grad_norm_(
                    prepared.parameters(), self.cfg.max_grad_norm
                )
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()  # ours, not the engine's: once per step
        sums["units"] = torch.tensor(float(step_units), device=accelerator.device)
        sums["examples"] = torch.tensor(
            float(sum(len(p) for p in parts)), device=accelerator.device
        )
        keys = sorted(sums)
        totals = accelerator.reduce(torch.stack([sums[k] for k in keys]), "sum")
        return dict(zip(keys, totals.tolist(), strict=True)), step_lr

    def record(self, step_stats: dict[str, float], step_lr: float, epoch: int) -> None:
        """Count a finished step; log the loss window every ``log_every`` steps."""
        self.seen += int(step_stats["examples"])
        _add(self.state["window"], step_stats)
        _add(self.state["epoch_sums"], step_stats)
        self.state["step"] += 1
        self.state["step_in_epoch"] += 1
        step, total = self.state["step"], self.plan.total_steps
        if step % max(self.cfg.log_every, 1) and step != total:
            return
        means = _means(self.state["window"])
        entry = {"step": step, "epoch": epoch, "lr": step_lr, **means}
        self.state["history"].append(entry)
        self.state["window"] = {}
        rate = self.seen / max(time.perf_counter() - self.started, 1e-9)
        extra = " ".join(f"{k} {v:.4f}" for k, v in means.items() if k != "loss")
        logger.info(
            "step %d/%d epoch %d loss %.4f %s lr %.3g %s/s %.1f",
            step,
            total,
            epoch,
            means["loss"],
            extra,
            entry["lr"],
            self.unit_name,
            rate,
        )

    def stop_or_checkpoint(self, stop: StopFlag) -> None:
        """Stop after a SIGTERM (any process), else checkpoint on the cadence.

        Raises:
            Interrupted: SIGTERM arrived before the last step; the checkpoint
                was saved first.
        """
        step, total = self.state["step"], self.plan.total_steps
        stopping = stop.raised
        if self.accelerator.num_processes > 1:  # all must stop at the same step
            import torch

            flag = torch.tensor(float(stopping), device=self.accelerator.device)
            stopping = bool(self.accelerator.reduce(flag, "sum").item() > 0)
        if stopping and step < total:
            self.checkpoint()
            where = (
                f"; checkpoint in {self.checkpoint_dir}" if self.checkpoint_dir else ""
            )
            raise Interrupted(f"stopped by SIGTERM after step {step}/{total}{where}")
        every = self.cfg.checkpoint_every
        if every > 0 and step % every == 0 and step < total:
            self.checkpoint()

    def end_epoch(self, epoch: int) -> None:
        """Log the epoch's means and move to the next epoch."""
        summary = {"epoch": epoch, **_means(self.state["epoch_sums"])}
        self.state["epochs"].append(summary)
        logger.info("epoch %d done: %s", epoch, summary)
        self.state["epoch_sums"] = {}
        self.state["epoch"] += 1
        self.state["step_in_epoch"] = 0
