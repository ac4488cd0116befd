"""The policy with a value head on its trunk, and the forward pass PPO needs.

The value model is a head on the policy's own trunk (trlx's
``AutoModelForCausalLMWithValueHead``, what the original trained with), not a
separate model initialised from the proxy RM: it reads the policy's tokens
(an RM may have another tokenizer; an ensemble has no one RM to start from),
and it costs one small MLP instead of a second model and its AdamW state.

Positions follow the attention mask (``cumsum - 1``, 1 on padding), as
``generate`` numbers a left-padded batch, so the log-probabilities of a
forward pass match the ones the tokens were sampled with.

torch is imported by the functions that need it, not at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions of a left-padded batch: ``cumsum(mask) - 1``, 1 on padding."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 1)


def make_policy_with_value(lm: PreTrainedModel) -> torch.nn.Module:
    """Wrap a causal LM with a value head (``Linear(D, 2D)``, ReLU, ``Linear(2D, 1)``).

    The head's shape is trlx's ``make_head``; it is float32 whatever the LM's
    dtype, and initialised by torch's default (seed torch first).
    """
    import torch

    class PolicyWithValue(torch.nn.Module):
        def __init__(self, lm: PreTrainedModel) -> None:
            super().__init__()
            self.lm = lm
            hidden = lm.config.hidden_size
            self.v_head = torch.nn.Sequential(
                torch.nn.Linear(hidden, 2 * hidden),
                torch.nn.ReLU(),
                torch.nn.Linear(2 * hidden, 1),
            )

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            *,
            start: int,
            with_values: bool = True,
        ) -> tuple[torch.Tensor, torch.Tensor | None]:
            return forward_logprobs(
                self.lm,
                input_ids,
                attention_mask,
                start=start,
                v_head=self.v_head if with_values else None,
            )

    return PolicyWithValue(lm)


def forward_logprobs(
    lm: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    start: int,
    v_head: torch.nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities of tokens ``start..`` and the values predicting them.

    Column ``j`` of the output is about token ``start + j``: its log-probability
    under the distribution at position ``start + j - 1``, and the value head at
    that same position (the state before the token is chosen). Only those
    positions go through the LM head.

    Args:
        lm: a causal LM (its ``base_model`` trunk and output embeddings are used).
        input_ids: ``[B, S]`` left-padded prompts followed by responses.
        attention_mask: ``[B, S]``.
        start: first column whose token is scored (``>= 1``): the prompt width
            for PPO, 1 for every token.
        v_head: the value head, or None for no values.

    Returns:
        ``(logprobs [B, S - start], values [B, S - start] or None)``, float32.
    """
    if start < 1:
        raise ValueError(f"start must be >= 1, got {start}")
    trunk = lm.base_model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        use_cache=False,
    )
    hidden = trunk.last_hidden_state[:, start - 1 : -1]
    logits = lm.get_output_embeddings()(hidden).float()
    targets = input_ids[:, start:].unsqueeze(-1)
    logprobs = logits.gather(-1, targets).squeeze(-1) - logits.logsumexp(dim=-1)
    values = None
    if v_head is not None:
        values = v_head(hidden.float()).squeeze(-1)
    return logprobs, values
