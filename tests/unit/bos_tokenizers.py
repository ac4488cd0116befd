"""Offline tokenizers that add special tokens the way hub tokenizers do.

Llama-2/3 and Gemma tokenizers prepend BOS to every sequence (a
TemplateProcessing post-processor, or transformers' ``add_bos_token``); some
also append EOS. The tiny tokenizer adds nothing, so these stand in for hub
tokenizers in the truncation tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from pipelines.common.modeling import ROLE_TOKENS

BOS, EOS = "<s>", "</s>"
KINDS = ("add_bos_token", "template_bos", "bos_eos")
# Writes BOS itself, as Llama-2/3 templates do (chat_text strips it again).
LLAMA_LIKE = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|' + m['role'] + '|>' + m['content'] + '</s>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def save_bos_tokenizer(
    texts: Iterable[str], folder: Path, *, kind: str = "template_bos"
) -> Path:
    """Train a byte-level BPE that adds BOS (``bos_eos``: and EOS); save it.

    Args:
        texts: training corpus.
        folder: where to save (``save_pretrained``).
        kind: ``add_bos_token`` (transformers builds Llama's post-processor),
            ``template_bos`` (a TemplateProcessing like Llama-3's / Gemma's
            tokenizer.json) or ``bos_eos`` (BOS and EOS added).

    Returns:
        ``folder``.
    """
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[BOS, EOS, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(list(texts), trainer)
    kwargs = {}
    if kind == "add_bos_token":
        kwargs["add_bos_token"] = True
    elif kind in ("template_bos", "bos_eos"):
        single = f"{BOS} $A {EOS}" if kind == "bos_eos" else f"{BOS} $A"
        raw.post_processor = processors.TemplateProcessing(
            single=single, special_tokens=[(BOS, 0), (EOS, 1)]
        )
    else:
        raise ValueError(f"unknown kind {kind!r}")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=BOS,
        eos_token=EOS,
        additional_special_tokens=list(ROLE_TOKENS),
        **kwargs,
    )
    fast.chat_template = LLAMA_LIKE
    fast.save_pretrained(folder)
    return folder
