"""Compatibility only: the single-input scorer API, now :mod:`pipelines.common.scoring`.

Not a stage any more: no rule runs it and it has no CLI. Best-of-n candidates
are scored by ``score_model`` (one job per model, every input in one load;
``results/scores/{model_id}.parquet``). This module keeps the names that
``pipelines/generate_candidates.py`` (the gold RM) and
``tests/unit/test_merge_dogerm.py`` import, mapping them onto
:mod:`pipelines.common.scoring`; once they import that module, delete this one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipelines.common.chat_format import ChatFormat
from pipelines.common.scoring import (
    DTYPE_NAMES,
    InputSettings,
    Scorer,
    ScorerConfig,
    ScoringInput,
    candidate_conversations,
    score_inputs,
)
from pipelines.common.scoring import load_scorer as _load

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "LoadedScorer",
    "ScoreConfig",
    "candidate_conversations",
    "load_scorer",
    "score_conversations",
]

HEAD_SEED = 0  # seeds a score head that the checkpoint lacks (warned about)


@dataclass(frozen=True, kw_only=True)
class ScoreConfig:
    """The former ``bon.score`` knobs: load settings and encoding in one."""

    batch_size: int = 16
    max_length: int = 1024
    truncation_side: str = "left"
    dtype: str = "float32"
    device: str = "auto"
    tokenizer: str | None = None
    chat_template: str | None = None
    system_prompt: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        """Reject values the scorer cannot honour (as the split configs do)."""
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype must be one of {DTYPE_NAMES}, got {self.dtype!r}")
        self.scorer_config()
        self.input_settings()

    def scorer_config(self) -> ScorerConfig:
        """The load half (seed: :data:`HEAD_SEED`, as before)."""
        return ScorerConfig(
            batch_size=self.batch_size,
            dtype=self.dtype,
            device=self.device,
            tokenizer=self.tokenizer,
            trust_remote_code=self.trust_remote_code,
            seed=HEAD_SEED,
        )

    def input_settings(self) -> InputSettings:
        """The encoding half."""
        return InputSettings(
            max_length=self.max_length,
            truncation_side=self.truncation_side,
            chat_template=self.chat_template,
            system_prompt=self.system_prompt,
        )


@dataclass
class LoadedScorer:
    """A loaded model with the chat format of its ``ScoreConfig`` resolved."""

    scorer: Scorer
    chat_format: ChatFormat

    @property
    def model(self) -> PreTrainedModel:
        """The model."""
        return self.scorer.model

    @property
    def tok(self) -> PreTrainedTokenizerBase:
        """The tokenizer."""
        return self.scorer.tok

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return self.scorer.device

    @property
    def new_head(self) -> bool:
        """Whether the checkpoint lacked a trained score head."""
        return self.scorer.new_head


def load_scorer(model: str, cfg: ScoreConfig) -> LoadedScorer:
    """Load ``model`` once and resolve its chat format under ``cfg``."""
    scorer = _load(model, cfg.scorer_config())
    return LoadedScorer(scorer, scorer.chat_format(cfg.input_settings()))


def score_conversations(
    scorer: LoadedScorer,
    conversations: Sequence[Sequence[Mapping[str, str]]],
    *,
    cfg: ScoreConfig,
) -> tuple[np.ndarray, int]:
    """Reward of each conversation in input order, and how many were cut."""
    got = score_inputs(
        scorer.scorer,
        [ScoringInput("conversations", conversations, cfg.input_settings())],
    )["conversations"]
    return got.scores, got.n_truncated
