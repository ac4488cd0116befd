r"""The frozen ArmoRM backbone: last-token and prompt embeddings (spec section 3).

Features are the backbone's final-layer hidden state *after* the final norm
(``AutoModel(...).last_hidden_state``, no head):

- the **response embedding** at the last token of the conversation;
- the **prompt embedding** at the start of the last occurrence of the
  assistant-turn pattern: the tokens between the end of a user turn and the
  start of the assistant's reply (Llama-3: ``<|eot_id|><|start_header_id|>
  assistant<|end_header_id|>\n\n``, ids ``[128009, 128006, 78191, 128007,
  271]``, so the position is the ``<|eot_id|>`` closing the last user turn).

The pattern is derived from the tokenizer's own chat template
(:func:`assistant_pattern`), never from token ids hard-coded per model family
as the original did (it knew Llama-3 and Gemma-2 only).

Batches are length-sorted and right-padded with an attention mask; a row's
embeddings do not depend on its batch beyond float noise (the original ran
batch 1; the tests hold batched and batch-1 results within 1e-5).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from pipelines.common.chat_format import with_system_prompt
from pipelines.common.cli import UserError
from pipelines.common.progress import Progress
from pipelines.common.tokenization import chat_text

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# Placeholder turns rendered to find the pattern (plain words, so that no BPE
# merge crosses the turn boundaries).
_USER = "Which colour is the sky"
_REPLY = "The sky is blue"


class PatternError(UserError, ValueError):
    """The assistant-turn pattern cannot be derived, or a sequence lacks it."""


def assistant_pattern(tok: PreTrainedTokenizerBase) -> list[int]:
    """Token ids between a user turn's content and the assistant reply's.

    Rendered with the tokenizer's current chat template (set it first, e.g.
    with :func:`pipelines.common.chat_format.setup_chat_format`). The ids come
    from tokenising the conversation's text up to the user content's end and
    up to the reply's start; both must be prefixes of the whole text's ids.

    Raises:
        PatternError: when the template renders no text between the turns, or
            the tokenisation of the boundary is not stable.
    """
    text = chat_text(
        tok,
        [{"role": "user", "content": _USER}, {"role": "assistant", "content": _REPLY}],
    )
    user_end = text.find(_USER) + len(_USER)
    reply_start = text.rfind(_REPLY)
    if user_end < len(_USER) or reply_start < user_end:
        raise PatternError(
            f"the chat template does not render the turns in order: {text!r}"
        )

    def ids(s: str) -> list[int]:
        return list(tok(s, add_special_tokens=False)["input_ids"])

    whole, to_user, to_reply = ids(text), ids(text[:user_end]), ids(text[:reply_start])
    stable = whole[: len(to_reply)] == to_reply and to_reply[: len(to_user)] == to_user
    pattern = to_reply[len(to_user) :]
    if not stable or not pattern:
        raise PatternError(
            "cannot derive the assistant-turn pattern from the chat template:"
            f" text between the turns {text[user_end:reply_start]!r} tokenises"
            f" to {pattern} {'unstably' if not stable else '(nothing)'}"
        )
    return pattern


def last_occurrence(ids: Sequence[int], pattern: Sequence[int]) -> int:
    """Start index of the last occurrence of ``pattern`` in ``ids``, or -1."""
    seq = np.asarray(ids)
    k = len(pattern)
    if k == 0 or len(seq) < k:
        return -1
    windows = np.lib.stride_tricks.sliding_window_view(seq, k)
    hits = np.flatnonzero((windows == np.asarray(pattern)).all(axis=1))
    return int(hits[-1]) if len(hits) else -1


def prompt_positions(
    seqs: Sequence[Sequence[int]], pattern: Sequence[int], names: Sequence[str]
) -> np.ndarray:
    """The prompt-embedding position of each sequence.

    Raises:
        PatternError: naming the first sequence without the pattern.
    """
    out = np.empty(len(seqs), dtype=np.int64)
    for i, seq in enumerate(seqs):
        out[i] = last_occurrence(seq, pattern)
        if out[i] < 0:
            raise PatternError(
                f"{names[i]}: no assistant-turn pattern {list(pattern)} in its"
                " tokens (is the last turn an assistant reply, and was it cut?)"
            )
    return out


def load_backbone(
    name: str, *, dtype: str, device: torch.device, trust_remote_code: bool = False
) -> PreTrainedModel:
    """The frozen backbone as ``AutoModel`` (no head), in eval mode on ``device``.

    An RM or causal-LM folder loads its trunk; the head's weights are unused.
    """
    from transformers import AutoModel

    from pipelines.common.modeling import torch_dtype

    model = AutoModel.from_pretrained(
        str(name), dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code
    )
    model.requires_grad_(False)
    return model.to(device).eval()


def hidden_states(
    model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Final-norm hidden states ``[B, T, D]`` of a right-padded batch.

    Pad positions are fed as id 0 (the mask hides them), so a pad id beyond
    the backbone's vocabulary (a ``<|pad|>`` added to the tokenizer) is fine.
    """
    ids = ids.masked_fill(mask == 0, 0)
    return model(input_ids=ids, attention_mask=mask).last_hidden_state


def embed(
    model: PreTrainedModel,
    seqs: Sequence[Sequence[int]],
    *,
    prompt_at: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Last-token (and prompt-position) embeddings of token sequences, float32.

    Sequences go in length-sorted batches (longest first); results are in
    input order.

    Args:
        model: from :func:`load_backbone`.
        seqs: unpadded token ids.
        prompt_at: per sequence, the position of its prompt embedding
            (:func:`prompt_positions`); None: response embeddings only.
        batch_size: sequences per forward pass.
        progress: counts sequences (one update per batch).

    Returns:
        ``[N, D]`` last-token embeddings and ``[N, D]`` prompt embeddings (or
        None).
    """
    import torch

    from pipelines.common.modeling import pad_batch

    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    dim = int(model.config.hidden_size)
    last = np.empty((len(seqs), dim), dtype=np.float32)
    prompt = None if prompt_at is None else np.empty_like(last)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = pad_batch([seqs[i] for i in idx], 0, device)
            states = hidden_states(model, ids, mask).float()
            rows = torch.arange(len(idx), device=device)
            ends = mask.sum(dim=1) - 1
            last[idx] = states[rows, ends].cpu().numpy()
            if prompt is not None:
                at = torch.as_tensor([prompt_at[i] for i in idx], device=device)
                prompt[idx] = states[rows, at].cpu().numpy()
            if progress is not None:
                progress.update(len(idx))
    return last, prompt


def encode_texts(
    tok: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[Mapping[str, str]]],
    system_prompt: str | None = None,
) -> list[list[int]]:
    """Token ids of whole conversations, never truncated.

    Chat template, BOS as the tokenizer adds it, ``system_prompt`` prepended
    where there is none.
    """
    texts = [
        chat_text(tok, with_system_prompt(c, system_prompt)) for c in conversations
    ]
    return [list(x) for x in tok(texts, add_special_tokens=True)["input_ids"]]
