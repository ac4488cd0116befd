"""Sampling replies from a causal LM: loading, prompt encoding, batched generate.

Prompts go through the chat template with the generation prompt, as SFT saw
them; a prompt too long for the context keeps its end and the tokenizer's
special tokens (BOS), as Hugging Face left truncation does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pipelines.common.chat_format import (
    ChatFormat,
    setup_chat_format,
    with_system_prompt,
)
from pipelines.common.logs import PROGRESS_EVERY_S
from pipelines.common.modeling import (
    ensure_pad_embeddings,
    load_causal_lm,
    load_tokenizer,
    resolve_device,
)
from pipelines.common.progress import Progress
from pipelines.common.tokenization import prompt_text, special_frame, truncate_ids

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


class SamplingConfig(Protocol):
    """The settings :func:`sample_policy` reads (the stage configs have them)."""

    @property
    def big_n(self) -> int: ...  # noqa: D102
    @property
    def temperature(self) -> float: ...  # noqa: D102
    @property
    def top_p(self) -> float: ...  # noqa: D102
    @property
    def max_new_tokens(self) -> int: ...  # noqa: D102
    @property
    def batch_size(self) -> int: ...  # noqa: D102
    @property
    def device(self) -> str: ...  # noqa: D102
    @property
    def dtype(self) -> str: ...  # noqa: D102
    @property
    def trust_remote_code(self) -> bool: ...  # noqa: D102
    @property
    def chat_template(self) -> str | None: ...  # noqa: D102
    @property
    def system_prompt(self) -> str | None: ...  # noqa: D102


@dataclass
class Policy:
    """A causal LM ready to sample from, with its tokenizer and chat format."""

    tok: PreTrainedTokenizerBase
    model: PreTrainedModel  # on ``device``, in eval mode
    fmt: ChatFormat
    device: torch.device
    new_pad_row: bool  # the pad token got a new (untrained) embedding row


def load_policy(
    policy: str,
    *,
    device: str,
    dtype: str,
    trust_remote_code: bool,
    chat_template: str | None,
    system_prompt: str | None,
) -> Policy:
    """Load a causal LM and its tokenizer (distinct pad id) for sampling.

    Args:
        policy: a causal LM folder or hub id.
        device: ``auto``, ``cpu``, ``cuda:0``...
        dtype: weight dtype (:data:`pipelines.common.modeling.DTYPES`).
        trust_remote_code: allow model code from the hub.
        chat_template: see :func:`pipelines.common.chat_format.setup_chat_format`.
        system_prompt: likewise.

    Returns:
        The policy on its device, in eval mode.
    """
    target = resolve_device(device)
    tok = load_tokenizer(policy, trust_remote_code=trust_remote_code)
    fmt = setup_chat_format(
        tok, policy, chat_template=chat_template, system_prompt=system_prompt
    )
    model = load_causal_lm(policy, dtype=dtype, trust_remote_code=trust_remote_code)
    rows_before = model.get_input_embeddings().weight.shape[0]
    ensure_pad_embeddings(model, tok)
    new_pad_row = model.get_input_embeddings().weight.shape[0] != rows_before
    model.to(target)
    model.eval()
    return Policy(tok=tok, model=model, fmt=fmt, device=target, new_pad_row=new_pad_row)


def prompt_room(model: PreTrainedModel, max_new_tokens: int) -> int | None:
    """Longest prompt that leaves ``max_new_tokens`` in the model's positions.

    Returns:
        The number of tokens, or None when the model declares no limit.

    Raises:
        ValueError: ``max_new_tokens`` leaves no room for any prompt.
    """
    positions = getattr(model.config, "max_position_embeddings", None)
    room = positions - max_new_tokens if positions else None
    if room is not None and room < 1:
        raise ValueError(
            f"max_new_tokens {max_new_tokens} leaves no room for a prompt in"
            f" the policy's {positions} positions"
        )
    return room


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

    The prompts are repeated ``n`` times, ordered by length (longest first,
    ties in prompt order) and cut into batches: length-bucketed, so a call
    that mixes prompts pads little (left padding with an attention mask keeps
    them apart). Each reply is cut at its first stop token and decoded without
    special tokens; ``texts[p]`` keeps the order the replies were drawn in.

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
    by_length = sorted(range(len(prompt_ids)), key=lambda p: -len(prompt_ids[p]))
    jobs = [p for p in by_length for _ in range(n)]
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


@dataclass
class Sampled:
    """Decoded samples per prompt and the work it took."""

    texts: list[list[str]]  # [prompt][sample]
    new_tokens: int  # sampled tokens, up to and including the first stop token
    seconds: float
    truncated_prompts: int
    chat_format: ChatFormat


def sample_policy(
    policy: str,
    prompts: Sequence[Sequence[dict[str, str]]],
    *,
    seed: int,
    cfg: SamplingConfig,
    name: str = "sample",
    progress_every: float = PROGRESS_EVERY_S,
) -> Sampled:
    """Load the policy, sample ``cfg.big_n`` replies per prompt and free it.

    A prompt too long for the policy's context keeps its end (and BOS).
    ``torch.manual_seed(seed)`` precedes sampling, so a seed reproduces the
    samples on the same machine and settings. A progress line (sequences
    drawn, rate, ETA) is logged every ``progress_every`` seconds and at the
    end.

    Args:
        policy: a causal LM folder or hub id.
        prompts: message lists (no reply).
        seed: seeds sampling.
        cfg: the sampling settings (see :class:`SamplingConfig`).
        name: the job's name at the start of each progress line.
        progress_every: seconds between two progress lines.

    Returns:
        The replies (``texts[p][k]``: reply ``k`` of prompt ``p``) and what
        sampling took.
    """
    import torch

    loaded = load_policy(
        policy,
        device=cfg.device,
        dtype=cfg.dtype,
        trust_remote_code=cfg.trust_remote_code,
        chat_template=cfg.chat_template,
        system_prompt=cfg.system_prompt,
    )
    tok, model, device, fmt = loaded.tok, loaded.model, loaded.device, loaded.fmt
    room = prompt_room(model, cfg.max_new_tokens)
    prompt_ids, truncated = encode_prompts(
        tok, prompts, max_length=room, system_prompt=fmt.system_prompt
    )
    if truncated:
        logger.warning(
            "%d of %d prompts longer than %d tokens were cut on the left",
            truncated,
            len(prompts),
            room,
        )
    generate_kwargs = {
        "do_sample": True,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "top_k": 0,  # off, as tlc4418 rollouts (HF would apply 50 by default)
        "max_new_tokens": cfg.max_new_tokens,
        "num_return_sequences": 1,
        "use_cache": True,
    }
    if loaded.new_pad_row:  # an untrained pad row must not be sampled
        generate_kwargs["suppress_tokens"] = [tok.pad_token_id]
    logger.info(
        "sampling %d x %d replies on %s: %s, %d sequences per call",
        len(prompts),
        cfg.big_n,
        device,
        generate_kwargs,
        cfg.batch_size,
    )
    progress = Progress(
        name,
        len(prompts) * cfg.big_n,
        unit="sequences",
        logger=logger,
        every_s=progress_every,
    )
    torch.manual_seed(seed)
    start = time.perf_counter()
    texts, new_tokens = sample_texts(
        model,
        tok,
        prompt_ids,
        n=cfg.big_n,
        batch_size=cfg.batch_size,
        generate_kwargs=generate_kwargs,
        device=device,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    progress.finish()
    del model, loaded
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return Sampled(
        texts=texts,
        new_tokens=new_tokens,
        seconds=seconds,
        truncated_prompts=truncated,
        chat_format=fmt,
    )
