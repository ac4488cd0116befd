"""Sampling replies from a causal LM: prompt encoding, left padding, batched generate.

Prompts go through the chat template with the generation prompt, as SFT saw
them; a prompt too long for the context keeps its end and the tokenizer's
special tokens (BOS), as Hugging Face left truncation does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pipelines.common.chat_format import with_system_prompt
from pipelines.common.progress import Progress
from pipelines.common.tokenization import prompt_text, special_frame, truncate_ids

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def stop_token_ids(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> list[int]:
    """EOS ids of the tokenizer and the model's generation config, deduplicated."""
    ids: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tok.eos_token_id, gen_eos):
        for i in value if isinstance(value, list | tuple) else [value]:
            if i is not None and i not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError("neither the tokenizer nor the model defines an EOS token")
    return ids


def encode_prompts(
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[dict[str, str]]],
    *,
    max_length: int | None,
    system_prompt: str | None = None,
) -> tuple[list[list[int]], int]:
    """Token ids of the prompts with the generation prompt, as SFT saw them.

    Args:
        tok: the policy's tokenizer, with its chat template.
        prompts: message lists (the reply not included).
        max_length: longest prompt kept (its end, with the tokenizer's special
            tokens such as BOS); None for no limit.
        system_prompt: prepended as a system turn to prompts without one.

    Returns:
        ``(ids, n_truncated)``.
    """
    texts = [
        prompt_text(tok, with_system_prompt(messages, system_prompt))
        for messages in prompts
    ]
    batch = tok(texts, add_special_tokens=True)["input_ids"]
    if max_length is None:
        return [list(ids) for ids in batch], 0
    frame = special_frame(tok)
    out = [
        truncate_ids(ids, max_length=max_length, side="left", frame=frame)
        for ids in batch
    ]
    return out, sum(len(ids) > max_length for ids in batch)


def left_pad(
    seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists into ``(input_ids, attention_mask)`` for generation."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.as_tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def sample_texts(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompt_ids: Sequence[Sequence[int]],
    *,
    n: int,
    batch_size: int,
    generate_kwargs: dict,
    device: torch.device,
    progress: Progress | None = None,
) -> tuple[list[list[str]], int]:
    """Draw ``n`` replies per prompt, ``batch_size`` sequences per generate call.

    The prompts are repeated ``n`` times in order and cut into batches, so one
    call may mix prompts (left padding with an attention mask keeps them
    apart). Each reply is cut at its first stop token and decoded without
    special tokens.

    Args:
        model: the causal LM, on ``device``, in eval mode.
        tok: its tokenizer (pad id must be set).
        prompt_ids: token ids per prompt.
        n: replies per prompt.
        batch_size: sequences per call.
        generate_kwargs: sampling settings for ``model.generate``.
        device: where the inputs go.
        progress: counts the sequences drawn (one update per call); its final
            line is the caller's.

    Returns:
        ``(texts, new_tokens)``: ``texts[p][k]`` is reply ``k`` of prompt ``p``;
        ``new_tokens`` counts sampled tokens (a stop token included).
    """
    import torch

    stops = stop_token_ids(model, tok)
    jobs = [p for p in range(len(prompt_ids)) for _ in range(n)]
    texts: list[list[str]] = [[] for _ in prompt_ids]
    new_tokens = 0
    for start in range(0, len(jobs), batch_size):
        rows = jobs[start : start + batch_size]
        ids, mask = left_pad([prompt_ids[p] for p in rows], tok.pad_token_id, device)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                pad_token_id=tok.pad_token_id,
                eos_token_id=stops,
                **generate_kwargs,
            )
        replies = out[:, ids.shape[1] :].cpu()
        is_stop = torch.isin(replies, torch.as_tensor(stops))
        kept = []
        for row, stopped in zip(replies.tolist(), is_stop.tolist(), strict=True):
            length = stopped.index(True) + 1 if True in stopped else len(row)
            new_tokens += length
            kept.append(row[:length])
        decoded = tok.batch_decode(kept, skip_special_tokens=True)
        for p, text in zip(rows, decoded, strict=True):
            texts[p].append(text)
        if progress is not None:
            progress.update(len(rows))
    return texts, new_tokens
