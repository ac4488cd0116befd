"""Setting up a PPO run: prompts, the policy with its value head, the reference.

Prompts come from pair files (each record's ``prompt``), deduplicated; the eval
prompts are the first ``eval_size`` of the eval files taken in turn, and a train
prompt that is also an eval prompt is dropped (counted). Each prompt carries
its ``(domain, task)`` for a verifier gold.

torch is imported by the functions that need it, not at import.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.common.cli import UserError
from pipelines.common.ppo.config import PPOConfig
from pipelines.common.records import prompt_key, read_pairs

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from pipelines.common.ppo.trainer import Prompts
    from pipelines.common.sampling import Policy

logger = logging.getLogger(__package__)


def read_prompts(
    paths: Sequence[Path], *, exclude: set[str] = frozenset(), limit: int | None = None
) -> tuple[list[list[dict]], list[tuple[str, dict | None]], int]:
    """Distinct prompts of pair files (files in turn when ``limit`` cuts).

    Returns:
        ``(messages, (domain, task) per prompt, n_excluded)``.
    """
    per_file = []
    excluded = 0
    seen: set[str] = set()
    for path in paths:
        rows = []
        for rec in read_pairs(path):
            key = prompt_key(rec["prompt"])
            if key in exclude:
                excluded += 1
                continue
            if key in seen:
                continue
            seen.add(key)
            meta = rec.get("metadata") or {}
            domain = meta.get("domain") or Path(path).parent.name
            rows.append((rec["prompt"], (domain, meta.get("task"))))
        per_file.append(rows)
    picked = []
    for i in range(max((len(r) for r in per_file), default=0)):  # files in turn
        picked.extend(rows[i] for rows in per_file if i < len(rows))
    picked = picked[:limit] if limit is not None else picked
    if not picked:
        raise UserError(f"no prompts left in {[str(p) for p in paths]}")
    return [p for p, _ in picked], [t for _, t in picked], excluded


def load_prompt_sets(
    loaded: Policy,
    train_files: Sequence[Path],
    eval_files: Sequence[Path],
    cfg: PPOConfig,
) -> tuple[Prompts, Prompts]:
    """Train and eval prompts, encoded as the policy saw prompts in SFT."""
    from pipelines.common.ppo.trainer import Prompts
    from pipelines.common.sampling import encode_prompts, prompt_room

    room = min(
        prompt_room(loaded.model, cfg.max_new_tokens) or cfg.max_prompt_length,
        cfg.max_prompt_length,
    )
    eval_msgs, eval_tasks, _ = read_prompts(eval_files, limit=cfg.eval_size)
    banned = {prompt_key(m) for m in read_prompts(eval_files)[0]}
    train_msgs, train_tasks, n_excl = read_prompts(train_files, exclude=banned)
    logger.info(
        "%d train prompts (%d dropped: also eval prompts), %d eval prompts",
        len(train_msgs),
        n_excl,
        len(eval_msgs),
    )

    def encode(msgs: list, tasks: list) -> Prompts:
        ids, cut = encode_prompts(
            loaded.tok, msgs, max_length=room, system_prompt=loaded.fmt.system_prompt
        )
        if cut:
            logger.warning(
                "%d prompts longer than %d tokens cut on the left", cut, room
            )
        return Prompts(messages=msgs, ids=ids, tasks=tasks)

    return encode(train_msgs, train_tasks), encode(eval_msgs, eval_tasks)


@dataclass
class PolicyParts:
    """The trainable policy and what trains it, prepared by accelerate."""

    accelerator: Accelerator
    loaded: Policy  # tokenizer, chat format, the causal LM (inside ``model``)
    ref: PreTrainedModel  # frozen, ``cfg.ref_dtype``
    model: torch.nn.Module  # PolicyWithValue, prepared
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def load_policy_parts(policy: str, cfg: PPOConfig, seed: int) -> PolicyParts:
    """The policy (float32) with its value head, the reference, AdamW, schedule.

    Raises:
        UserError: under a DeepSpeed launcher (PPO runs on one process or DDP).
    """
    import torch

    from pipelines.common.modeling import ensure_pad_embeddings, load_causal_lm
    from pipelines.common.ppo.model import make_policy_with_value
    from pipelines.common.ppo.trainer import make_scheduler
    from pipelines.common.sampling import load_policy
    from pipelines.common.training import deepspeed_launched, make_accelerator

    if deepspeed_launched():
        raise UserError(
            "PPO runs on one process or DDP (accelerate/ddp.yaml), not DeepSpeed"
        )
    accelerator = make_accelerator(cfg.device, cfg.dtype)
    torch.manual_seed(seed)
    loaded = load_policy(
        policy,
        device=str(accelerator.device),
        dtype="float32",
        trust_remote_code=cfg.trust_remote_code,
        chat_template=cfg.chat_template,
        system_prompt=cfg.system_prompt,
    )
    ref = load_causal_lm(
        policy, dtype=cfg.ref_dtype, trust_remote_code=cfg.trust_remote_code
    )
    ensure_pad_embeddings(ref, loaded.tok)
    ref.to(accelerator.device).eval().requires_grad_(False)
    model = make_policy_with_value(loaded.model).to(accelerator.device)
    model.eval()  # dropout off: the first minibatch's ratio is exactly 1
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
    )
    scheduler = make_scheduler(optimizer, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    return PolicyParts(accelerator, loaded, ref, model, optimizer, scheduler)


def generate_kwargs(
    cfg: PPOConfig, tok: PreTrainedTokenizerBase, new_pad_row: bool
) -> dict:
    """Rollout sampling settings for ``generate``."""
    kwargs = {
        "do_sample": True,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "top_k": 0,  # off, as the original's rollouts (HF would apply 50)
        "max_new_tokens": cfg.max_new_tokens,
        "use_cache": True,
    }
    if new_pad_row:  # an untrained pad row must never be sampled
        kwargs["suppress_tokens"] = [tok.pad_token_id]
    return kwargs
