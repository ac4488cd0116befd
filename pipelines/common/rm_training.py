"""Reward-model training pieces: pair batches, the Bradley-Terry loss, LoRA, save.

A batch holds the pairs' sequences interleaved, ``[c1, r1, c2, r2, ...]``,
right-padded, so one forward pass scores both sides; the reward is the score
head at the last non-pad token (ALGORITHMS.md sections 0 and 2). The loss is
``-log sigmoid(r_c - r_r)`` plus an optional ``l2_coef * 0.5 * (r_c^2 +
r_r^2)`` (section 5.1). With LoRA the score head is trained in full and the
adapters are merged into the saved weights.

torch and peft are imported by the functions that need them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.common.chat_format import ChatFormat, setup_chat_format
from pipelines.common.modeling import (
    TinyArch,
    count_parameters,
    ensure_pad_embeddings,
    init_tiny_reward_model,
    load_reward_model,
    load_tokenizer,
    pad_batch,
)
from pipelines.common.training import Batch, save_pretrained_atomic

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase

    from pipelines.common.rm_data import PairData

logger = logging.getLogger(__name__)


@dataclass
class FitResult:
    """A trained RM in memory (before merging and saving) and its run record."""

    model: torch.nn.Module  # unwrapped; a PeftModel when trained with LoRA
    tokenizer: PreTrainedTokenizerBase
    metrics: dict[str, object]
    run_config: dict[str, object]
    accelerator: Accelerator


def load_rm_base(
    base: str | None,
    *,
    trust_remote_code: bool,
    chat_template: str | None,
    system_prompt: str | None,
    lora: Mapping[str, object] | None = None,
    tokenizer: str | None = None,
    arch: TinyArch | None = None,
) -> tuple[PreTrainedTokenizerBase, torch.nn.Module, ChatFormat]:
    """Tokenizer (chat format resolved) and the RM to train, LoRA-wrapped if asked.

    Args:
        base: a hub id or local folder (causal LM or RM) with its tokenizer;
            None: a tiny GPT-NeoX RM of shape ``arch`` initialised from
            torch's RNG (seed it first) on ``tokenizer``'s vocabulary.
        trust_remote_code: allow model code from the hub.
        chat_template: see :func:`pipelines.common.chat_format.setup_chat_format`.
        system_prompt: likewise.
        lora: keyword arguments of :func:`wrap_lora`, or None to train all
            weights.
        tokenizer: the tokenizer folder or hub id when ``base`` is None.
        arch: the shape of the model from scratch when ``base`` is None.

    Returns:
        The tokenizer, the model and the chat format.

    Raises:
        ValueError: neither ``base`` nor ``tokenizer``.
    """
    if base is None and tokenizer is None:
        raise ValueError("an RM needs a base model or a tokenizer (from scratch)")
    source = base if base is not None else tokenizer
    tok = load_tokenizer(source, trust_remote_code=trust_remote_code)
    fmt = setup_chat_format(
        tok, source, chat_template=chat_template, system_prompt=system_prompt
    )
    if base is None:
        model = init_tiny_reward_model(tok, arch=arch or TinyArch())
    else:
        model = load_reward_model(base, trust_remote_code=trust_remote_code)
    ensure_pad_embeddings(model, tok)
    if tok.pad_token_id == tok.eos_token_id:  # load_tokenizer prevents this
        raise ValueError("the RM pad token must differ from EOS")
    if lora is not None:
        model = wrap_lora(model, **lora)
    logger.info(
        "model %s: %d parameters, %d trainable (%s)",
        base or f"tiny GPT-NeoX from scratch on {tokenizer}",
        count_parameters(model),
        count_parameters(model, trainable_only=True),
        "LoRA + head" if lora is not None else "full",
    )
    return tok, model, fmt


def pair_batches(
    data: PairData, pad_id: int, device: torch.device
) -> Callable[[list[int]], tuple[Batch, int]]:
    """``make_batch`` of the training loop: pair indices -> interleaved batch.

    Returns:
        A function of pair indices giving ``input_ids`` and ``attention_mask``
        (``[c1, r1, c2, r2, ...]``, right-padded, on ``device``) and the
        number of pairs.
    """

    def make_batch(indices: list[int]) -> tuple[Batch, int]:
        seqs: list[list[int]] = []
        for i in indices:
            seqs.append(data.chosen[i])
            seqs.append(data.rejected[i])
        ids, mask = pad_batch(seqs, pad_id, device)
        return {"input_ids": ids, "attention_mask": mask}, len(indices)

    return make_batch


def pair_lengths(data: PairData) -> list[int]:
    """Length of each pair's longer side (what length-grouped batches sort by)."""
    return [
        max(len(c), len(r)) for c, r in zip(data.chosen, data.rejected, strict=True)
    ]


def bt_loss_sum(
    model: torch.nn.Module, batch: Batch, *, l2_coef: float = 0.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bradley-Terry loss summed over the pairs of one interleaved batch.

    Rows ``0, 2, 4...`` are chosen, ``1, 3, 5...`` rejected.

    Args:
        model: a sequence-classification model with one label.
        batch: ``input_ids`` and ``attention_mask``, ``[2 * pairs, length]``.
        l2_coef: weight of ``0.5 * (r_c^2 + r_r^2)`` (OpenAssistant RMLoss).

    Returns:
        The summed loss and summed statistics (``accuracy``: pairs with
        ``r_c > r_r`` strictly; ``margin``: summed ``r_c - r_r``).
    """
    import torch
    import torch.nn.functional as F

    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        use_cache=False,
    ).logits
    rewards = logits[:, 0].float()
    r_c, r_r = rewards[0::2], rewards[1::2]
    loss = -F.logsigmoid(r_c - r_r)
    if l2_coef:
        loss = loss + l2_coef * 0.5 * (r_c.square() + r_r.square())
    with torch.no_grad():
        stats = {
            "accuracy": (r_c > r_r).float().sum(),
            "margin": (r_c - r_r).sum(),
        }
    return loss.sum(), stats


def wrap_lora(
    model: torch.nn.Module,
    *,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: str,
) -> torch.nn.Module:
    """Add LoRA adapters; the score head is trained in full (modules_to_save).

    Args:
        model: a sequence-classification model.
        r: LoRA rank.
        alpha: LoRA alpha.
        dropout: LoRA dropout.
        target_modules: ``all-linear`` or comma-separated module names.

    Returns:
        The PEFT model.

    Raises:
        ValueError: the score head would stay frozen.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    targets: str | list[str] = target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    # eth-dl-rewards train_reward_model.py: r 32, alpha 64, dropout 0.01,
    # all-linear, bias none, SEQ_CLS (ALGORITHMS.md section 6.3). SEQ_CLS makes
    # PEFT add the classification head ("score"/"classifier") to modules_to_save.
    lora_cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        bias="none",
        task_type=TaskType.SEQ_CLS,
    )
    peft_model = get_peft_model(model, lora_cfg)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    if not any("lora_" not in n for n in trainable):
        raise ValueError(
            "LoRA wrapping left the score head frozen; name it in modules_to_save"
        )
    return peft_model


def save_reward_model(fit: FitResult, out: Path, *, keep_adapter: bool = False) -> None:
    """Merge LoRA adapters (if any) and save model, tokenizer and records.

    Args:
        fit: a trained RM (``pipelines.train_rm.fit_reward_model``).
        out: the output folder (replaced atomically).
        keep_adapter: also save the unmerged PEFT adapter under ``out/adapter``.
    """
    from peft import PeftModel

    model = fit.model
    adapter = None
    if isinstance(model, PeftModel):
        adapter = model
        model = model.merge_and_unload()
    model.config.pad_token_id = fit.tokenizer.pad_token_id
    files = {"run_config.json": fit.run_config, "metrics.json": fit.metrics}
    save_pretrained_atomic(out, model, fit.tokenizer, files)
    if keep_adapter and adapter is not None:
        # merge_and_unload leaves the PeftModel's saved state usable: write it
        # beside the merged weights (PEFT format: adapter_config + safetensors)
        adapter.save_pretrained(Path(out) / "adapter")
