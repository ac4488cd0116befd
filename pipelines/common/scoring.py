"""Score any model on any list of conversations: one load, pooled sorted batches.

    scorer = load_scorer("results/models/rm/general/seed0", ScorerConfig())
    got = score_inputs(scorer, [
        ScoringInput("math-test", pair_convs, InputSettings(max_length=1024)),
        ScoringInput("gens/math", cand_convs, InputSettings(max_length=512)),
    ])
    got["math-test"].scores  # float64, in the input's order

A model is loaded once (:func:`load_scorer`) and then scores every *input* a
study needs from it: each input is a name, its conversations and its own
:class:`InputSettings` (maximum length, truncation side, chat template, system
prompt). Every input is encoded under its own chat format, then all sequences
are pooled and scored in length-sorted batches (longest first, as
:func:`pipelines.common.modeling.score_ids` sorts), so one job pays one
interpreter start, one import of torch and transformers and one model load
for everything (DESIGN.md principle 8). A score does not depend on which
other sequences share its batch beyond float noise of the batched kernels.

What needs one load is one value per job (:class:`ScorerConfig`): tokenizer,
dtype, device, remote code, batch size and the seed of a missing score head.

The tokenisation contract is :mod:`pipelines.common.modeling`'s (DESIGN.md
principle 4): a pad token distinct from EOS (embeddings resized when one is
added), right padding, the score at the last non-pad token, the declared
truncation side, truncations counted per sequence. Chat formats come from
:mod:`pipelines.common.chat_format` (explicit setting, else the model's
``run_config.json``, else the tokenizer's).

Importing this module does not import torch or transformers; they load with
the first model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pipelines.common.chat_format import ChatFormat, setup_chat_format
from pipelines.common.cli import field_help
from pipelines.common.logs import PROGRESS_EVERY_S
from pipelines.common.progress import Progress

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DTYPE_NAMES = ("float32", "bfloat16", "float16")
SIDES = ("left", "right")
ENCODE_CHUNK = 4096  # conversations tokenised at a time (bounds peak memory)


@dataclass(frozen=True, kw_only=True)
class ScorerConfig:
    """Settings of one model load (YAML section ``score``); one value per job."""

    batch_size: int = field_help(
        "sequences per forward pass, pooled over every input of the job", default=16
    )
    dtype: str = field_help(
        "float32, bfloat16 or float16", choices=DTYPE_NAMES, default="float32"
    )
    device: str = field_help(
        "'auto' (CUDA if available, else CPU), 'cpu', 'cuda:0'...", default="auto"
    )
    tokenizer: str | None = field_help(
        "tokenizer folder or hub id; None: the model's", default=None
    )
    trust_remote_code: bool = field_help("allow model code from the hub", default=False)
    seed: int = field_help(
        "seeds torch before loading; only matters when the model has no trained"
        " score head (a new one is initialised)",
        default=0,
    )
    reuse: bool = field_help(
        "copy the scores of inputs whose key (model, settings, code and input"
        " bytes) is unchanged from the store being rewritten",
        default=True,
    )

    def __post_init__(self) -> None:
        """Reject values the scorer cannot honour."""
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype must be one of {DTYPE_NAMES}, got {self.dtype!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


@dataclass(frozen=True, kw_only=True)
class InputSettings:
    """How one input's conversations become token ids (``eval.*``, ``bon.score.*``)."""

    max_length: int = field_help("maximum tokens per sequence", default=1024)
    truncation_side: str = field_help(
        "'left' keeps the end of a long conversation (the reply; RewardBench,"
        " RLHFlow); 'right' keeps the start",
        choices=SIDES,
        default="left",
    )
    chat_template: str | None = field_help(
        "chat template (Jinja text or a file); None: the one in the model's"
        " run_config.json, else the tokenizer's",
        default=None,
    )
    system_prompt: str | None = field_help(
        "system turn prepended to conversations without one ('' = none); None:"
        " the one in the model's run_config.json, else none",
        default=None,
    )

    max_candidates: int | None = field_help(
        "candidate files: score only the first k candidates of each prompt"
        " (DogeRM's first-n best-of-n reads no more than its largest n);"
        " None: all",
        default=None,
    )

    def __post_init__(self) -> None:
        """Reject values the encoder cannot honour."""
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if self.max_candidates is not None and self.max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {self.max_candidates}")
        if self.truncation_side not in SIDES:
            raise ValueError(
                f"truncation_side must be one of {SIDES}, got {self.truncation_side!r}"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, object], what: str) -> InputSettings:
        """Settings from a JSON object, naming ``what`` in errors.

        Raises:
            ValueError: an unknown key or a bad value.
        """
        allowed = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ValueError(
                f"{what}: unknown key(s) {unknown}; allowed {sorted(allowed)}"
            )
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{what}: {err}") from err


@dataclass(frozen=True)
class ScoringInput:
    """A named list of conversations and how to encode them."""

    name: str
    conversations: Sequence[Sequence[Mapping[str, str]]]
    settings: InputSettings = field(default_factory=InputSettings)


@dataclass(frozen=True)
class Scored:
    """The scores of one input, in its conversations' order."""

    scores: np.ndarray  # float64
    truncated: np.ndarray  # bool, per conversation
    chat_format: ChatFormat

    @property
    def n_truncated(self) -> int:
        """How many conversations were cut to ``max_length``."""
        return int(self.truncated.sum())


@dataclass
class Scorer:
    """A sequence-classification model and its tokenizer, ready on ``device``."""

    model: PreTrainedModel
    tok: PreTrainedTokenizerBase
    device: torch.device
    name: str  # folder or hub id it was loaded from
    tokenizer_name: str
    cfg: ScorerConfig
    new_head: bool  # the checkpoint had no trained score head
    resized_embeddings: bool  # a pad token was added and the embeddings grown

    def chat_format(self, settings: InputSettings) -> ChatFormat:
        """Resolve the chat format of ``settings`` and set it on the tokenizer."""
        return setup_chat_format(
            self.tok,
            self.name,
            chat_template=settings.chat_template,
            system_prompt=settings.system_prompt,
        )

    def record(self) -> dict[str, object]:
        """What was loaded and how, as JSON for outputs."""
        return {
            **asdict(self.cfg),
            "device_requested": self.cfg.device,
            "device": str(self.device),
            "pad_token": self.tok.pad_token,
            "pad_token_id": self.tok.pad_token_id,
            "eos_token_id": self.tok.eos_token_id,
            "resized_embeddings": self.resized_embeddings,
            "new_score_head": self.new_head,
        }


def load_scorer(model: str, cfg: ScorerConfig) -> Scorer:
    """Load a reward model and its tokenizer once, pad id aligned, in eval mode.

    Args:
        model: a sequence-classification folder or hub id (a causal-LM folder
            gets a new score head seeded with ``cfg.seed``, and a warning), or
            an ArmoRM folder (:mod:`pipelines.common.armo.model`).
        cfg: the load settings.

    Returns:
        The scorer.
    """
    import torch

    from pipelines.common.armo.model import armo_model, is_armo_folder
    from pipelines.common.modeling import (
        ensure_pad_embeddings,
        load_reward_model,
        load_tokenizer,
        resolve_device,
        warn_if_untrained_head,
    )

    device = resolve_device(cfg.device)
    tok_name = cfg.tokenizer or model
    tok = load_tokenizer(tok_name, trust_remote_code=cfg.trust_remote_code)
    torch.manual_seed(cfg.seed)
    new_head = resized = False
    if is_armo_folder(model):  # backbone + ridge + gating (ArmoRM)
        rm = armo_model(
            model,
            tok,
            dtype=cfg.dtype,
            device=str(device),
            trust_remote_code=cfg.trust_remote_code,
        )
    else:
        rm = load_reward_model(
            model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code
        )
        new_head = warn_if_untrained_head(rm, model)
        rows_before = rm.get_input_embeddings().weight.shape[0]
        ensure_pad_embeddings(rm, tok)  # config pad id = the id batches pad with
        resized = rm.get_input_embeddings().weight.shape[0] != rows_before
    rm.to(device)
    rm.eval()
    logger.info(
        "loaded %s (tokenizer %s) as %s on %s%s",
        model,
        tok_name,
        cfg.dtype,
        device,
        ", new score head" if new_head else "",
    )
    return Scorer(
        model=rm,
        tok=tok,
        device=device,
        name=str(model),
        tokenizer_name=str(tok_name),
        cfg=cfg,
        new_head=new_head,
        resized_embeddings=resized,
    )


def _encode(
    scorer: Scorer, item: ScoringInput
) -> tuple[list[np.ndarray], np.ndarray, ChatFormat]:
    """Token ids (int64 arrays) and cut flags of one input, under its own format."""
    from pipelines.common.modeling import encode_conversations

    fmt = scorer.chat_format(item.settings)
    ids: list[np.ndarray] = []
    cut: list[bool] = []
    convs = item.conversations
    for start in range(0, len(convs), ENCODE_CHUNK):
        enc = encode_conversations(
            scorer.tok,
            convs[start : start + ENCODE_CHUNK],
            max_length=item.settings.max_length,
            truncation_side=item.settings.truncation_side,
            system_prompt=fmt.system_prompt,
        )
        ids.extend(np.asarray(seq, dtype=np.int64) for seq in enc.ids)
        cut.extend(enc.cut)
    truncated = np.asarray(cut, dtype=bool)
    if truncated.any():
        logger.warning(
            "%s: %d of %d sequences longer than %d tokens were cut on the %s",
            item.name,
            int(truncated.sum()),
            len(convs),
            item.settings.max_length,
            item.settings.truncation_side,
        )
    return ids, truncated, fmt


def score_pooled(
    scorer: Scorer,
    seqs: Sequence[np.ndarray],
    *,
    what: str = "scoring",
    every_s: float = PROGRESS_EVERY_S,
) -> np.ndarray:
    """Scores of token sequences in length-sorted batches, with progress lines.

    The batches of :func:`pipelines.common.modeling.score_ids` with
    ``sort_by_length=True`` (longest first, ties in input order).

    Args:
        scorer: the loaded model.
        seqs: token ids, unpadded.
        what: the name on progress lines.
        every_s: seconds between two progress lines.

    Returns:
        float64 scores in the order of ``seqs``.
    """
    from pipelines.common.modeling import score_ids

    progress = Progress(
        what, len(seqs), unit="sequences", logger=logger, every_s=every_s
    )
    scores = score_ids(
        scorer.model,
        seqs,
        pad_id=scorer.tok.pad_token_id,
        batch_size=scorer.cfg.batch_size,
        sort_by_length=True,
        device=scorer.device,
        progress=progress,
    )
    progress.finish()
    return scores


def score_inputs(
    scorer: Scorer,
    inputs: Sequence[ScoringInput],
    *,
    what: str = "scoring",
    every_s: float = PROGRESS_EVERY_S,
) -> dict[str, Scored]:
    """Score every input with one model: each encoded its own way, all pooled.

    Args:
        scorer: from :func:`load_scorer`.
        inputs: the inputs; names must be unique.
        what: the name on progress lines (e.g. the model id).
        every_s: seconds between two progress lines.

    Returns:
        Input name -> its scores, truncation flags and chat format.

    Raises:
        ValueError: when two inputs share a name.
    """
    names = [item.name for item in inputs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"input names must be unique; repeated: {repeated}")
    pooled: list[np.ndarray] = []
    spans: dict[str, tuple[int, int]] = {}
    encoded: dict[str, tuple[np.ndarray, ChatFormat]] = {}
    for item in inputs:
        ids, truncated, fmt = _encode(scorer, item)
        spans[item.name] = (len(pooled), len(pooled) + len(ids))
        pooled.extend(ids)
        encoded[item.name] = (truncated, fmt)
    logger.info(
        "%s: %d sequences of %d inputs (%s), %d tokens",
        what,
        len(pooled),
        len(inputs),
        ", ".join(f"{n}: {b - a}" for n, (a, b) in spans.items()),
        sum(len(s) for s in pooled),
    )
    scores = score_pooled(scorer, pooled, what=what, every_s=every_s)
    out: dict[str, Scored] = {}
    for name, (lo, hi) in spans.items():
        truncated, fmt = encoded[name]
        out[name] = Scored(scores=scores[lo:hi], truncated=truncated, chat_format=fmt)
    return out


def score_conversations(
    scorer: Scorer,
    conversations: Sequence[Sequence[Mapping[str, str]]],
    settings: InputSettings,
) -> Scored:
    """Score a small batch without progress lines (a PPO step's rollouts).

    The same encoding and length-sorted batches as :func:`score_inputs`, for a
    caller that scores many small batches with one loaded model.
    """
    from pipelines.common.modeling import score_ids

    ids, truncated, fmt = _encode(
        scorer, ScoringInput("batch", conversations, settings)
    )
    scores = score_ids(
        scorer.model,
        ids,
        pad_id=scorer.tok.pad_token_id,
        batch_size=scorer.cfg.batch_size,
        sort_by_length=True,
        device=scorer.device,
    )
    return Scored(scores=scores, truncated=truncated, chat_format=fmt)


def score_with_gold(
    model: str,
    conversations: Sequence[Sequence[Mapping[str, str]]],
    cfg: ScorerConfig,
    settings: InputSettings | None = None,
) -> Scored:
    """The gold RM's score of each conversation: one load, one pooled pass.

    Used where the gold scores what a stage just sampled (best-of-n
    candidates, the replies of gold-labelled pairs); the gold RM scores under
    its own chat format (its ``run_config.json``). Truncations are logged.
    """
    scorer = load_scorer(model, cfg)
    item = ScoringInput("gold", conversations, settings or InputSettings())
    gold = score_inputs(scorer, [item], what="gold")["gold"]
    if gold.n_truncated:
        logger.warning(
            "gold model %s: %d of %d conversations truncated",
            model,
            gold.n_truncated,
            len(conversations),
        )
    return gold


def candidate_conversations(line: Mapping) -> list[list[dict[str, str]]]:
    """One conversation per candidate of a gens line: its prompt, then the reply."""
    prompt = list(line["prompt"])
    return [
        [*prompt, {"role": "assistant", "content": cand["text"]}]
        for cand in line["candidates"]
    ]
