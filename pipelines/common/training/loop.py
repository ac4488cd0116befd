"""The training loop shared by the SFT and reward-model stages.

:func:`train_loop` drives a :class:`~pipelines.common.training.run.TrainingRun`
over the epochs: the seeded data order of each epoch, one optimiser step at a
time, loss logging every ``log_every`` steps, a progress line (steps done,
rate, ETA) every ``progress_every`` seconds and at the end, checkpoints and
the stop on SIGTERM. Each process takes its slice of every global batch
(``batch_size * gradient_accumulation_steps * num_processes`` examples).

torch is imported by the functions that need it, not at import.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.common.logs import PROGRESS_EVERY_S
from pipelines.common.progress import Progress
from pipelines.common.training.distributed import gather_zero3_weights
from pipelines.common.training.run import (
    Batch,
    LossFn,
    Plan,
    StopFlag,
    TrainingRun,
)
from pipelines.common.training.schedule import LoopConfig, epoch_order

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

# the training modules log as their package, the name users grep logs for
logger = logging.getLogger(__package__)


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
    name: str = "train",
    progress_every: float = PROGRESS_EVERY_S,
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

    Under DeepSpeed (see :mod:`pipelines.common.training.distributed`) the
    engine accumulates, clips and steps; the loss scaling is the same as in
    the other modes (each micro-batch's summed loss over the step's units, no
    extra division by the accumulation steps), and checkpoints are sharded
    (:func:`save_deepspeed_checkpoint`).

    A progress line (steps done of the total, steps/s, elapsed, ETA) is logged
    every ``progress_every`` seconds and once at the end; steps of a resumed
    run count as done but not in the rate.

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
        name: the run's name at the start of each progress line (the stage).
        progress_every: seconds between two progress lines.

    Returns:
        The unwrapped trained model and the loop's measurements. Under ZeRO-3
        the model holds the whole weights (on CPU, hooks removed) on the main
        process only (:func:`gather_zero3_weights`); other processes get
        empty parameters and must not save it.

    Raises:
        Interrupted: SIGTERM arrived; a checkpoint was saved if possible.
    """
    nproc = accelerator.num_processes
    plan = Plan.of(cfg, n_examples, nproc)
    run = TrainingRun(
        accelerator=accelerator,
        model=model,
        cfg=cfg,
        plan=plan,
        checkpoint_dir=checkpoint_dir,
        fingerprint=fingerprint,
        unit_name=unit_name,
    )
    run.resume()
    state = run.state
    result = LoopResult(total_steps=plan.total_steps, resumed_from_step=state["step"])
    logger.info(
        "training: %d %s, %d epochs x %d steps (%d total, %d warmup), global batch"
        " %d on %d process(es), device %s",
        n_examples,
        unit_name,
        cfg.epochs,
        plan.per_epoch,
        plan.total_steps,
        plan.warmup,
        plan.global_batch,
        nproc,
        accelerator.device,
    )
    progress = Progress(
        name,
        plan.total_steps,
        unit="steps",
        logger=logger,
        every_s=progress_every,
        done=state["step"],
    )
    run.start()
    with StopFlag() as stop:
        while state["step"] < plan.total_steps:
            epoch = state["epoch"]
            order = epoch_order(
                n_examples, seed, epoch, lengths=lengths, global_batch=plan.global_batch
            )
            while (
                state["step_in_epoch"] < plan.per_epoch
                and state["step"] < plan.total_steps
            ):
                step_stats, step_lr = run.step(order, make_batch, loss_fn)
                run.record(step_stats, step_lr, epoch)
                progress.update()
                run.stop_or_checkpoint(stop)
            run.end_epoch(epoch)
    result.seconds_this_run = time.perf_counter() - run.started
    progress.finish()
    if run.stage == 3:
        gather_zero3_weights(accelerator, run.prepared)
    result.examples_this_run = run.seen
    result.steps = state["step"]
    result.history = state["history"]
    result.epochs = state["epochs"]
    return run.base_model, result
