"""SFT examples: chat conversations tokenised, with labels on the last reply only.

The prompt (every turn but the last, the generation prompt, any system turn)
gets label -100; the last assistant reply and the template's closing tokens are
trained. Truncation keeps the tokenizer's special tokens (BOS, an added EOS)
and cuts ids and labels alike (:func:`pipelines.common.tokenization.truncate_ids`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipelines.common.chat_format import with_system_prompt
from pipelines.common.modeling import pad_batch
from pipelines.common.tokenization import (
    chat_text,
    prompt_text,
    special_frame,
    truncate_ids,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

IGNORE = -100  # the label PyTorch's cross-entropy skips


@dataclass
class SFTExample:
    """Token ids of one conversation and their labels (-100 where not trained)."""

    ids: list[int]
    labels: list[int]


def build_sft_examples(
    tok: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[dict]],
    *,
    system_prompt: str | None = None,
) -> list[SFTExample]:
    """Tokenise conversations and mask everything but the last assistant reply.

    The prompt is the template of all messages but the last, with the
    generation prompt (``<|assistant|>``). Its tokens are usually a prefix of
    the full conversation's tokens; when BPE merges across the boundary they
    are not, and the boundary is found from character offsets instead (a token
    that straddles it is trained, so no reply text is lost).

    Args:
        tok: the tokenizer (with a chat template).
        conversations: message lists whose last message is the assistant's.
        system_prompt: prepended as a system turn (part of the prompt, so not
            trained) to conversations without one.

    Returns:
        One example per conversation, untruncated.

    Raises:
        ValueError: on a conversation not ending with an assistant message, or a
            template whose prompt text is not a prefix of the full text.
    """
    fulls, prompts = [], []
    for i, messages in enumerate(conversations):
        if not messages or messages[-1].get("role") != "assistant":
            raise ValueError(f"conversation {i} does not end with an assistant turn")
        messages = with_system_prompt(messages, system_prompt)
        fulls.append(chat_text(tok, messages))
        prompts.append(prompt_text(tok, messages[:-1]))
    full_ids = tok(fulls, add_special_tokens=True)["input_ids"]
    prompt_ids = tok(prompts, add_special_tokens=True)["input_ids"]
    out: list[SFTExample] = []
    fallbacks = 0
    for i, (ids, pids) in enumerate(zip(full_ids, prompt_ids, strict=True)):
        ids = list(ids)
        n = len(pids)
        if list(ids[:n]) == list(pids) and n < len(ids):
            labels = [IGNORE] * n + ids[n:]
        else:
            fallbacks += 1
            labels = _labels_from_offsets(tok, fulls[i], prompts[i], ids, index=i)
        out.append(SFTExample(ids=ids, labels=labels))
    if fallbacks:
        logger.info(
            "%d of %d examples: prompt tokens are not a prefix of the full tokens;"
            " labels placed by character offsets",
            fallbacks,
            len(out),
        )
    return out


def _labels_from_offsets(
    tok: PreTrainedTokenizerBase,
    full: str,
    prompt: str,
    ids: list[int],
    *,
    index: int,
) -> list[int]:
    if not full.startswith(prompt):
        raise ValueError(
            f"conversation {index}: the chat template's prompt text is not a prefix"
            " of the full conversation text, so the reply cannot be located"
        )
    if not getattr(tok, "is_fast", False):
        raise ValueError(
            f"conversation {index}: prompt tokens differ from the full text's and a"
            " slow tokenizer gives no offsets; use a fast tokenizer"
        )
    enc = tok(full, add_special_tokens=True, return_offsets_mapping=True)
    if list(enc["input_ids"]) != ids:
        raise ValueError(f"conversation {index}: tokenisation is not deterministic")
    boundary = len(prompt)
    # A token is trained if it holds at least one character of the reply; one
    # straddling the boundary (prompt space + first reply word) is trained, so
    # no reply text is lost. Special tokens added by the tokenizer have empty
    # (0, 0) offsets and stay masked.
    return [
        tid if end > boundary and end > start else IGNORE
        for tid, (start, end) in zip(ids, enc["offset_mapping"], strict=True)
    ]


def sft_batches(
    examples: Sequence[SFTExample], pad_id: int, device: torch.device
) -> Callable[[list[int]], tuple[dict[str, torch.Tensor], int]]:
    """``make_batch`` of the training loop: example indices -> padded batch.

    Returns:
        A function of example indices giving ``input_ids``,
        ``attention_mask`` and ``labels`` (-100 on padding), right-padded on
        ``device``, and the number of trained targets (labels after the first
        position that are not -100).
    """

    def make_batch(indices: list[int]) -> tuple[dict[str, torch.Tensor], int]:
        chosen = [examples[i] for i in indices]
        ids, mask = pad_batch([ex.ids for ex in chosen], pad_id, device)
        labels, _ = pad_batch([ex.labels for ex in chosen], IGNORE, device)
        units = int((labels[:, 1:] != IGNORE).sum())
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}, units

    return make_batch


def truncate_examples(
    tok: PreTrainedTokenizerBase,
    examples: Sequence[SFTExample],
    *,
    max_length: int,
    side: str,
) -> list[SFTExample]:
    """Cut over-long examples' ids and labels alike, keeping special tokens.

    The tokenizer's added BOS (and EOS) stay, as in Hugging Face truncation
    (:func:`pipelines.common.tokenization.truncate_ids`).
    """
    frame = special_frame(tok)
    out = []
    for ex in examples:
        if len(ex.ids) > max_length:
            kw = {"max_length": max_length, "side": side, "frame": frame}
            ex = SFTExample(
                ids=truncate_ids(ex.ids, **kw), labels=truncate_ids(ex.labels, **kw)
            )
        out.append(ex)
    return out
