"""Models and tokenizers: the tiny offline defaults, hub/local loading, scoring.

The model side of the tokenisation contract (DESIGN.md principle 4) lives here:

- an explicit pad token, never equal to EOS for reward models (a ``<|pad|>``
  token is added and the embeddings resized when a tokenizer lacks one, as
  RLHFlow does for Llama-3 and Mistral, ALGORITHMS.md section 2);
- right padding; the score is read at the last non-pad token (the Hugging Face
  sequence-classification pooling, which takes the rightmost non-pad position).

The text side (chat text, truncation that keeps the tokenizer's special
tokens, encoding conversations) is :mod:`pipelines.common.tokenization`, whose
names stay importable from here; chat templates and system prompts are
resolved in :mod:`pipelines.common.chat_format`.

Hub ids and local paths go through the same ``from_pretrained`` calls, so the
tiny offline models and a cluster's hub models share every code path.
``trust_remote_code`` is off unless asked for.

Importing this module loads neither torch nor transformers (DESIGN.md
principle 8: ``--help`` and torch-free stages stay cheap); each function
imports what it needs when called.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipelines.common.chat_format import CHAT_TEMPLATE
from pipelines.common.cli import field_help
from pipelines.common.progress import Progress

# the text side of the contract; importable from here as before
from pipelines.common.tokenization import NO_FRAME as NO_FRAME
from pipelines.common.tokenization import Encoded as Encoded
from pipelines.common.tokenization import SpecialFrame as SpecialFrame
from pipelines.common.tokenization import chat_text as chat_text
from pipelines.common.tokenization import encode_conversations as encode_conversations
from pipelines.common.tokenization import prompt_text as prompt_text
from pipelines.common.tokenization import special_frame as special_frame
from pipelines.common.tokenization import truncate_ids as truncate_ids

if TYPE_CHECKING:
    import torch
    from transformers import (
        GPTNeoXForCausalLM,
        PreTrainedModel,
        PreTrainedTokenizerBase,
        PreTrainedTokenizerFast,
    )

logger = logging.getLogger(__name__)

EOS = "<|endoftext|>"
PAD = "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
DTYPES = ("float32", "bfloat16", "float16")  # weight dtypes a model loads in


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype named ``name`` (one of :data:`DTYPES`).

    Raises:
        ValueError: on a name outside :data:`DTYPES`.
    """
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {name!r}")
    import torch

    return getattr(torch, name)


@dataclass(frozen=True, kw_only=True)
class TinyArch:
    """GPT-NeoX (Pythia architecture) shape of the tiny preset."""

    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 1024
    rotary_pct: float = 0.25  # Pythia's value


_ARCH = TinyArch()


@dataclass(frozen=True, kw_only=True)
class TinyArchFields:
    """The tiny model's shape as stage-config fields (a model from scratch).

    Mixed into the SFT config (the tiny policy) and the RM config (the gold RM
    trained from scratch, larger than the proxies).
    """

    hidden_size: int = field_help(
        "tiny model (no --base): hidden size", default=_ARCH.hidden_size
    )
    num_hidden_layers: int = field_help(
        "tiny model: layers", default=_ARCH.num_hidden_layers
    )
    num_attention_heads: int = field_help(
        "tiny model: attention heads", default=_ARCH.num_attention_heads
    )
    intermediate_size: int = field_help(
        "tiny model: MLP width", default=_ARCH.intermediate_size
    )
    max_position_embeddings: int = field_help(
        "tiny model: context length", default=_ARCH.max_position_embeddings
    )
    rotary_pct: float = field_help(
        "tiny model: share of head dims with rotary embeddings (Pythia: 0.25)",
        default=_ARCH.rotary_pct,
    )

    def arch(self) -> TinyArch:
        """The tiny model shape named by the ``hidden_size``... fields."""
        return TinyArch(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            rotary_pct=self.rotary_pct,
        )


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as given."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def train_tokenizer(
    texts: Iterable[str], *, vocab_size: int, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with the chat template and special tokens.

    Args:
        texts: the training corpus, in a fixed order (training is deterministic
            for a given order).
        vocab_size: target vocabulary size, special tokens included.
        min_frequency: minimum pair count for a merge.

    Returns:
        A fast tokenizer with ``<|endoftext|>`` as BOS/EOS, a distinct
        ``<|pad|>``, right padding and the chat template.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    # this class loads no torch (AutoTokenizer does): train_tokenizer stays torch-free
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS, PAD, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        padding_side="right",
        truncation_side="left",
        model_max_length=TinyArch().max_position_embeddings,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def load_tokenizer(
    name_or_path: str | Path, *, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a hub id or a local folder, with a distinct pad token.

    A tokenizer without a pad token, or whose pad equals EOS, gets a new
    ``<|pad|>`` special token (callers resize the model embeddings with
    :func:`ensure_pad_embeddings`). Padding is set to the right.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        str(name_or_path), trust_remote_code=trust_remote_code
    )
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        logger.info(
            "tokenizer %s: adding %s (pad was %r)", name_or_path, PAD, tok.pad_token
        )
        tok.add_special_tokens({"pad_token": PAD})
    if tok.chat_template is None:
        logger.info("tokenizer %s has no chat template: using rmflow's", name_or_path)
        tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "right"
    return tok


def ensure_pad_embeddings(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> None:
    """Resize embeddings to the tokenizer and record its pad id in the config."""
    if model.get_input_embeddings().weight.shape[0] < len(tok):
        model.resize_token_embeddings(len(tok))
    model.config.pad_token_id = tok.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tok.pad_token_id


def _tiny_config(tok: PreTrainedTokenizerBase, arch: TinyArch, **extra: object):
    """The GPT-NeoX config of a tiny model on ``tok``'s vocabulary."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=len(tok),
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        intermediate_size=arch.intermediate_size,
        max_position_embeddings=arch.max_position_embeddings,
        rotary_pct=arch.rotary_pct,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **extra,
    )


def init_tiny_causal_lm(
    tok: PreTrainedTokenizerBase, *, seed: int, arch: TinyArch = TinyArch()
) -> GPTNeoXForCausalLM:
    """A freshly initialised GPT-NeoX causal LM sized for the tiny preset.

    Args:
        tok: the tokenizer (vocabulary size and special ids).
        seed: seeds the weight init.
        arch: the model shape.

    Returns:
        The model in float32.
    """
    import torch
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(_tiny_config(tok, arch))
    n = sum(p.numel() for p in model.parameters())
    logger.info(
        "initialised tiny GPT-NeoX with %.2fM parameters (seed %d)", n / 1e6, seed
    )
    return model


def init_tiny_reward_model(
    tok: PreTrainedTokenizerBase, *, arch: TinyArch = TinyArch()
) -> PreTrainedModel:
    """A freshly initialised GPT-NeoX reward model (one score) of shape ``arch``.

    The weights come from torch's RNG as it stands: seed it first.
    """
    from transformers import GPTNeoXForSequenceClassification

    model = GPTNeoXForSequenceClassification(_tiny_config(tok, arch, num_labels=1))
    n = sum(p.numel() for p in model.parameters())
    logger.info("initialised tiny GPT-NeoX RM with %.2fM parameters", n / 1e6)
    return model


def load_causal_lm(
    name_or_path: str | Path,
    *,
    dtype: str = "float32",
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load a causal LM from a hub id or a local folder."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(name_or_path),
        dtype=torch_dtype(dtype),
        trust_remote_code=trust_remote_code,
    )


def load_reward_model(
    name_or_path: str | Path,
    *,
    dtype: str = "float32",
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load a sequence-classification RM (``num_labels=1``) from a hub id or folder.

    Loading a causal LM folder creates a new score head; seed torch before the
    call to make its init reproducible.
    """
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        str(name_or_path),
        num_labels=1,
        dtype=torch_dtype(dtype),
        trust_remote_code=trust_remote_code,
    )


def warn_if_untrained_head(model: PreTrainedModel, name: str) -> bool:
    """Log a warning and return True when ``model`` was not saved as an RM.

    Loading a causal-LM folder as a sequence classifier initialises a new
    (seeded, untrained) score head; its scores mean nothing yet.
    """
    archs = getattr(model.config, "architectures", None) or []
    trained = any(a.endswith("ForSequenceClassification") for a in archs)
    if not trained:
        logger.warning(
            "%s was saved as %s, not a sequence classifier: its score head is"
            " newly initialised (seeded, untrained)",
            name,
            archs or "an unknown architecture",
        )
    return not trained


def pad_batch(
    seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists into ``(input_ids, attention_mask)`` tensors."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask


def score_ids(
    model: PreTrainedModel,
    seqs: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int = 16,
    sort_by_length: bool = True,
    device: torch.device | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """Reward of each sequence, in input order.

    Sequences are grouped by length (longest first) when ``sort_by_length``, so
    each batch pads little; the result does not depend on the grouping.

    Args:
        model: a sequence-classification model with one label.
        seqs: token ids, unpadded.
        pad_id: the pad id (must differ from every real token of ``seqs``).
        batch_size: sequences per forward pass.
        sort_by_length: length-sorted batching (else input order).
        device: where to run; defaults to the model's device.
        progress: counts the sequences scored (one update per batch); its
            final line is the caller's.

    Returns:
        float64 scores, shape ``[len(seqs)]``.
    """
    if model.config.pad_token_id != pad_id:
        # HF pools at the rightmost token that is not config.pad_token_id; padding
        # with another id would silently pool a pad position.
        raise ValueError(
            f"pad_id {pad_id} differs from the model's config.pad_token_id"
            f" {model.config.pad_token_id}; call ensure_pad_embeddings(model, tok)"
        )
    import torch

    model.eval()
    device = device or next(model.parameters()).device
    order = list(range(len(seqs)))
    if sort_by_length:
        order.sort(key=lambda i: -len(seqs[i]))
    scores = np.empty(len(seqs), dtype=np.float64)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = pad_batch([seqs[i] for i in idx], pad_id, device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            scores[idx] = logits[:, 0].float().cpu().numpy()
            if progress is not None:
                progress.update(len(idx))
    return scores


def count_parameters(model: torch.nn.Module, *, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters."""
    return sum(
        p.numel() for p in model.parameters() if p.requires_grad or not trainable_only
    )
