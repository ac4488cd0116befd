"""Processes and precision: the ``Accelerator``, DeepSpeed, logging per rank.

Launch modes (the same module and flags in each):

- one process: ``python -m pipelines.train_rm ...`` (CPU or one GPU);
- DDP: ``accelerate launch --config_file accelerate/ddp.yaml --num_processes N
  -m pipelines.train_rm ...``; every process holds the whole model, gradients
  are averaged (NCCL on GPUs, gloo on CPU);
- DeepSpeed ZeRO-2 / ZeRO-3: the same with ``accelerate/zero2.yaml`` or
  ``accelerate/zero3.yaml``; optimiser state and gradients (ZeRO-2) or also the
  weights (ZeRO-3) are sharded over the processes.

Under DeepSpeed the engine owns accumulation, clipping and the optimiser step:
:func:`configure_deepspeed` writes ``batch_size``,
``gradient_accumulation_steps`` and ``max_grad_norm`` of the stage config into
the DeepSpeed config (the launcher file does not set them); under ZeRO-3 the
final weights are gathered from every process before saving
(:func:`gather_zero3_weights`).

torch and accelerate are imported by the functions that need them.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from pipelines.common.modeling import resolve_device
from pipelines.common.training.schedule import LoopConfig, global_batch_size

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

# the training modules log as their package, the name users grep logs for
logger = logging.getLogger(__package__)

MIXED_PRECISION = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}


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
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, InitProcessGroupKwargs

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
    from accelerate.utils import DistributedType

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
    import torch

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
