"""Training-loop pieces shared by the SFT and reward-model stages.

What lives where (every name is importable from this package):

- :mod:`.schedule`: the optimiser (AdamW, no decay on biases and norms), a
  cosine schedule with linear warmup, the data order (one seeded permutation
  per epoch, a pure function of ``(seed, epoch)``, so a resumed run sees the
  batches an uninterrupted run sees) and each process's micro-batches;
- :mod:`.distributed`: the ``Accelerator`` (one process, DDP, DeepSpeed
  ZeRO-2/3), DeepSpeed settings from the stage config, the ZeRO-3 gather of
  the final weights, and logging on rank 0 only;
- :mod:`.checkpoints`: trainable weights, optimiser and scheduler state, loop
  position and every RNG state, written atomically (temp folder + rename, only
  the last kept) and without pickle (safetensors + JSON, DESIGN.md principle
  6); DeepSpeed's sharded ``save_state`` folders; resume and cleanup;
- :mod:`.outputs`: run fingerprints, file digests and the atomic
  ``save_pretrained`` of the final model and tokenizer;
- :mod:`.run`: one run's state (prepared model, optimiser, schedule, loop
  position) and what one optimiser step, a checkpoint, a resume and a stop on
  SIGTERM do with it;
- :mod:`.loop`: :func:`train_loop`, one loop for both stages (epochs, loss
  logging, progress lines with rate and ETA, SIGTERM and checkpoints).

In every launch mode each process takes its slice of every global batch
(``batch_size * gradient_accumulation_steps * num_processes`` examples) and
the main process alone writes the output folder.

Importing the package loads neither torch nor accelerate (DESIGN.md principle
8: a stage's ``--help`` stays cheap); the functions import them when called.
Every module logs as ``pipelines.common.training``.
"""

from pipelines.common.training.checkpoints import (
    CHECKPOINT_PREFIX,
    DEEPSPEED_CHECKPOINT,
    check_checkpoint_dir,
    checkpoint_kind,
    latest_checkpoint,
    load_checkpoint,
    load_deepspeed_checkpoint,
    remove_checkpoints,
    rng_state,
    save_checkpoint,
    save_deepspeed_checkpoint,
    set_rng_state,
    trainable_state,
)
from pipelines.common.training.distributed import (
    MIXED_PRECISION,
    configure_deepspeed,
    deepspeed_launched,
    gather_zero3_weights,
    make_accelerator,
    quiet_logging,
    zero_stage,
)
from pipelines.common.training.loop import (
    LoopResult,
    loop_metrics,
    train_loop,
)
from pipelines.common.training.outputs import (
    config_dict,
    file_digest,
    json_default,
    run_fingerprint,
    save_pretrained_atomic,
)
from pipelines.common.training.run import (
    SIGTERM_EXIT_CODE,
    Batch,
    Interrupted,
    LossFn,
    StopFlag,
)
from pipelines.common.training.schedule import (
    LoopConfig,
    build_optimizer,
    cosine_with_warmup,
    epoch_order,
    global_batch_size,
    micro_batches,
    steps_per_epoch,
)

__all__ = [
    "CHECKPOINT_PREFIX",
    "DEEPSPEED_CHECKPOINT",
    "MIXED_PRECISION",
    "SIGTERM_EXIT_CODE",
    "Batch",
    "Interrupted",
    "LoopConfig",
    "LoopResult",
    "LossFn",
    "StopFlag",
    "build_optimizer",
    "check_checkpoint_dir",
    "checkpoint_kind",
    "config_dict",
    "configure_deepspeed",
    "cosine_with_warmup",
    "deepspeed_launched",
    "epoch_order",
    "file_digest",
    "gather_zero3_weights",
    "global_batch_size",
    "json_default",
    "latest_checkpoint",
    "load_checkpoint",
    "load_deepspeed_checkpoint",
    "loop_metrics",
    "make_accelerator",
    "micro_batches",
    "quiet_logging",
    "remove_checkpoints",
    "rng_state",
    "run_fingerprint",
    "save_checkpoint",
    "save_deepspeed_checkpoint",
    "save_pretrained_atomic",
    "set_rng_state",
    "steps_per_epoch",
    "train_loop",
    "trainable_state",
    "zero_stage",
]
