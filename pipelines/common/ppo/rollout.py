"""Rollouts: sample responses to left-padded prompts, as PPO's tensors.

A rollout batch keeps the prompts left-padded to one width ``P`` and the
responses after them, each cut after its first stop token (the rest becomes
padding, masked out). ``response_mask`` marks the generated tokens, so the
score goes on each row's last generated token (:func:`.core.token_rewards`),
whether the row stopped early or ran to ``max_new_tokens``.

torch is imported by the functions that need it, not at import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipelines.common.sampling import left_pad

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class RolloutBatch:
    """Prompts and sampled responses of one batch, on the policy's device."""

    input_ids: torch.Tensor  # [B, P + T]: left-padded prompt, response, padding
    attention_mask: torch.Tensor  # [B, P + T]
    prompt_width: int  # P
    response_mask: torch.Tensor  # [B, T] float: 1 on generated tokens
    ended: list[bool]  # the response ends with a stop token
    texts: list[str]  # decoded responses, special tokens removed
    prompt_index: list[int]  # which prompt of the caller's list each row answers

    @property
    def lengths(self) -> list[int]:
        """Generated tokens per row (a stop token included)."""
        return [int(n) for n in self.response_mask.sum(dim=1).tolist()]


def cut_at_stop(
    responses: torch.Tensor, stops: Sequence[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
    """Keep each response up to and including its first stop token.

    Returns:
        ``(ids, mask, ended)``: padding after the cut, ``mask`` 1 on kept
        tokens (float), ``ended[i]`` whether row ``i`` hit a stop token.
    """
    import torch

    is_stop = torch.isin(
        responses, torch.as_tensor(list(stops), device=responses.device)
    )
    width = responses.shape[1]
    cols = torch.arange(width, device=responses.device).expand_as(responses)
    first = torch.where(is_stop, cols, torch.full_like(cols, width)).min(dim=1).values
    ended = (first < width).tolist()
    keep = cols <= first.unsqueeze(1)
    ids = torch.where(keep, responses, torch.full_like(responses, pad_id))
    return ids, keep.float(), ended


def generate_rollouts(
    lm: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompt_ids: Sequence[Sequence[int]],
    rows: Sequence[int],
    *,
    generate_kwargs: dict,
    stops: Sequence[int],
    device: torch.device,
    chunk: int,
) -> RolloutBatch:
    """Sample one response for each of ``rows`` (indices into ``prompt_ids``).

    Generation runs ``chunk`` rows per ``generate`` call (the original's
    ``chunk_size``); the chunks are padded to one prompt width and one
    response width afterwards. The caller seeds torch.

    Args:
        lm: the policy (eval mode: dropout off), on ``device``.
        tok: its tokenizer (pad id set, distinct from the stop tokens).
        prompt_ids: token ids of every prompt.
        rows: the prompts of this batch, in row order.
        generate_kwargs: sampling settings for ``generate``.
        stops: stop token ids.
        device: the policy's device.
        chunk: rows per ``generate`` call.

    Returns:
        The batch.
    """
    import torch

    width = max(len(prompt_ids[r]) for r in rows)
    pieces = []
    for lo in range(0, len(rows), chunk):
        part = [list(prompt_ids[r]) for r in rows[lo : lo + chunk]]
        # pad every chunk to the batch's prompt width: one P for the batch
        ids, mask = left_pad(part, tok.pad_token_id, device)
        if ids.shape[1] < width:
            extra = width - ids.shape[1]
            ids = torch.nn.functional.pad(ids, (extra, 0), value=tok.pad_token_id)
            mask = torch.nn.functional.pad(mask, (extra, 0), value=0)
        with torch.no_grad():
            out = lm.generate(
                input_ids=ids,
                attention_mask=mask,
                pad_token_id=tok.pad_token_id,
                eos_token_id=list(stops),
                **generate_kwargs,
            )
        pieces.append((ids, mask, out[:, width:]))
    t = max(p[2].shape[1] for p in pieces)
    responses = torch.cat(
        [
            torch.nn.functional.pad(r, (0, t - r.shape[1]), value=tok.pad_token_id)
            for _, _, r in pieces
        ]
    )
    resp_ids, resp_mask, ended = cut_at_stop(responses, stops, tok.pad_token_id)
    prompt_ids_t = torch.cat([p[0] for p in pieces])
    prompt_mask = torch.cat([p[1] for p in pieces])
    kept = [
        row[: int(n)]
        for row, n in zip(resp_ids.tolist(), resp_mask.sum(1).tolist(), strict=True)
    ]
    return RolloutBatch(
        input_ids=torch.cat([prompt_ids_t, resp_ids], dim=1),
        attention_mask=torch.cat([prompt_mask, resp_mask.long()], dim=1),
        prompt_width=width,
        response_mask=resp_mask,
        ended=ended,
        texts=tok.batch_decode(kept, skip_special_tokens=True),
        prompt_index=list(rows),
    )
