"""The tokenisation contract (DESIGN.md principle 4): text, ids, truncation.

Every model that scores or learns from text sees it the same way:

- a conversation becomes text through the tokenizer's chat template, with the
  BOS string the template may write removed (the tokenizer adds BOS itself,
  :func:`chat_text`); a prompt stops where the assistant reply starts
  (:func:`prompt_text`);
- a declared truncation side, with over-length sequences counted and logged;
  truncation cuts only the content, as Hugging Face tokenizers do, so the
  special tokens the tokenizer adds (Llama's and Gemma's BOS, an appended EOS)
  survive (:func:`truncate_ids`, :func:`encode_conversations`).

The pad token, right padding and the score position live with the models in
:mod:`pipelines.common.modeling`; chat templates and system prompts are
resolved in :mod:`pipelines.common.chat_format`. Torch-free: only tokenizer
objects are used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from pipelines.common.chat_format import with_system_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def chat_text(
    tok: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]]
) -> str:
    """The conversation as text through the chat template, BOS string removed.

    The tokenizer adds BOS itself when it is configured to, so a template that
    writes it too would double it (RLHFlow strips it the same way, spec 2).
    """
    text = tok.apply_chat_template(list(messages), tokenize=False)
    bos = tok.bos_token
    if bos and bos != tok.eos_token and text.startswith(bos):
        text = text[len(bos) :]
    return text


def prompt_text(
    tok: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]]
) -> str:
    """The template text up to where the assistant reply starts (BOS removed).

    :func:`chat_text` with the generation prompt: a prefix of the full
    conversation's text, used for SFT label masks and for sampling.
    """
    text = tok.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=True
    )
    bos = tok.bos_token
    if bos and bos != tok.eos_token and text.startswith(bos):
        text = text[len(bos) :]
    return text


T = TypeVar("T")


@dataclass(frozen=True)
class SpecialFrame:
    """The special tokens a tokenizer adds around one sequence (BOS ... EOS).

    Empty for the tiny tokenizer; ``prefix=(bos,)`` for Llama and Gemma.
    """

    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        """Number of added special tokens."""
        return len(self.prefix) + len(self.suffix)


NO_FRAME = SpecialFrame()  # a tokenizer that adds no special tokens (tiny)


_PROBE = "rmflow truncation probe"


def special_frame(tok: PreTrainedTokenizerBase) -> SpecialFrame:
    """What ``tok(text, add_special_tokens=True)`` adds around the text's tokens.

    Found by tokenising a probe text with and without special tokens, which
    covers a TemplateProcessing post-processor (fast tokenizers) and
    ``build_inputs_with_special_tokens`` (Python tokenizers) alike.

    Raises:
        ValueError: the added tokens do not surround the text's tokens.
    """
    n = tok.num_special_tokens_to_add(pair=False)
    if n == 0:
        return NO_FRAME
    bare = list(tok(_PROBE, add_special_tokens=False)["input_ids"])
    full = list(tok(_PROBE, add_special_tokens=True)["input_ids"])
    if len(full) == len(bare) + n:
        for start in range(n + 1):
            if full[start : start + len(bare)] == bare:
                end = start + len(bare)
                return SpecialFrame(
                    prefix=tuple(full[:start]), suffix=tuple(full[end:])
                )
    raise ValueError(
        f"cannot locate the {n} special token(s) the tokenizer adds: {full} vs {bare}"
    )


def truncate_ids(
    ids: Sequence[T],
    *,
    max_length: int,
    side: str,
    frame: SpecialFrame = NO_FRAME,
) -> list[T]:
    """Cut a sequence to ``max_length`` the way Hugging Face tokenizers truncate.

    The tokenizer's special prefix and suffix (``frame``) are kept and only the
    content between them is cut on ``side``: ``tok(text, truncation=True,
    max_length=n)`` with ``tok.truncation_side = side`` gives the same ids. Any
    per-token list aligned with the ids (e.g. SFT labels) can be cut alike.

    Args:
        ids: a tokenised sequence, special tokens included.
        max_length: the most tokens kept.
        side: ``"left"`` keeps the end of the content (the reply); ``"right"``
            keeps its start.
        frame: the tokenizer's special tokens (:func:`special_frame`).

    Returns:
        The sequence itself when it fits, else the cut copy.

    Raises:
        ValueError: an unknown side, or ``max_length`` leaves no room for any
            content once the special tokens are kept.
    """
    if side not in ("left", "right"):
        raise ValueError(f"truncation_side must be left or right, got {side!r}")
    if len(ids) <= max_length:
        return list(ids)
    room = max_length - frame.size
    if room < 1:
        raise ValueError(
            f"max_length {max_length} leaves no room for content beside the"
            f" tokenizer's {frame.size} special token(s)"
        )
    head, tail = len(frame.prefix), len(ids) - len(frame.suffix)
    content = ids[head:tail]
    kept = content[len(content) - room :] if side == "left" else content[:room]
    return [*ids[:head], *kept, *ids[tail:]]


@dataclass
class Encoded:
    """Token ids of many sequences and which were cut to fit."""

    ids: list[list[int]]
    cut: list[bool] = field(default_factory=list)  # per sequence

    @property
    def truncated(self) -> int:
        """How many sequences were cut."""
        return sum(self.cut)


def encode_conversations(
    tok: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[Mapping[str, str]]],
    *,
    max_length: int,
    truncation_side: str = "left",
    system_prompt: str | None = None,
) -> Encoded:
    """Tokenise conversations, truncating over-long ones on the declared side.

    Args:
        tok: the tokenizer, with the chat template to use.
        conversations: message lists.
        max_length: maximum tokens per sequence.
        truncation_side: ``"left"`` keeps the end (the reply), as RewardBench
            and RLHFlow do; ``"right"`` keeps the start. Either way the
            tokenizer's special tokens are kept (:func:`truncate_ids`).
        system_prompt: prepended as a system turn to conversations without one.

    Returns:
        The ids and which sequences were truncated (never silently dropped).
    """
    if truncation_side not in ("left", "right"):
        raise ValueError(
            f"truncation_side must be left or right, got {truncation_side!r}"
        )
    texts = [
        chat_text(tok, with_system_prompt(conv, system_prompt))
        for conv in conversations
    ]
    batch = tok(texts, add_special_tokens=True, truncation=False)["input_ids"]
    frame = special_frame(tok)
    out = Encoded(ids=[])
    for ids in batch:
        out.cut.append(len(ids) > max_length)
        out.ids.append(
            truncate_ids(ids, max_length=max_length, side=truncation_side, frame=frame)
        )
    return out
