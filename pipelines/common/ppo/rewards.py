"""The proxy reward PPO optimises (one RM or an ensemble) and the gold it is judged by.

Ensemble objectives are best-of-n's (:func:`pipelines.common.bon.combine`,
ALGORITHMS.md 5.3) over the members' raw scores: ``mean``, ``wco`` (minimum),
``uwo`` (mean minus lambda times the variance with ``ddof``; the original's
PPO used ``torch.var``, ddof 1, and lambda 0.1). Each member scores the
conversation (prompt, then the response as an assistant turn) under its own
chat format, so members need not share the policy's tokenizer.

The gold is a gold RM (``model:<id>``) or each prompt's domain verifier
(``verifier``: 1.0 correct, 0.0 not), re-run from the record's task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.common.bon import combine
from pipelines.common.scoring import (
    InputSettings,
    Scorer,
    ScorerConfig,
    load_scorer,
    score_conversations,
)

OBJECTIVES = ("single", "mean", "wco", "uwo")

Conversation = Sequence[Mapping[str, str]]


@dataclass(frozen=True)
class ProxyScores:
    """Member scores of a batch and what the objective makes of them."""

    members: np.ndarray  # [M, B] raw member scores
    objective: np.ndarray  # [B]
    variance: np.ndarray  # [B] across members (ddof of the objective); NaN for one RM


@dataclass
class ProxyReward:
    """Loaded member RMs and the objective over them."""

    ids: list[str]
    scorers: list[Scorer]
    objective: str
    settings: InputSettings
    uwo_lambda: float
    uwo_ddof: int

    def score(self, conversations: Sequence[Conversation]) -> ProxyScores:
        """Every member's score of each conversation and the objective's."""
        members = np.stack(
            [
                score_conversations(s, conversations, self.settings).scores
                for s in self.scorers
            ]
        )
        if self.objective == "single":
            objective = members[0]
        else:
            objective = combine(
                members, self.objective, uwo_lambda=self.uwo_lambda, ddof=self.uwo_ddof
            )
        if len(self.scorers) > self.uwo_ddof:
            variance = members.var(axis=0, ddof=self.uwo_ddof)
        else:  # one RM: no spread to speak of (the original wrote garbage here)
            variance = np.full(members.shape[1], np.nan)
        return ProxyScores(members=members, objective=objective, variance=variance)


def load_proxy(
    models: Sequence[str],
    ids: Sequence[str],
    *,
    objective: str,
    cfg: ScorerConfig,
    settings: InputSettings,
    uwo_lambda: float,
    uwo_ddof: int,
) -> ProxyReward:
    """Load the members once.

    Raises:
        ValueError: an unknown objective, ``single`` with other than one
            member, an ensemble objective with one, or ids not matching models.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if len(ids) != len(models):
        raise ValueError(f"{len(ids)} member ids for {len(models)} member models")
    if (objective == "single") != (len(models) == 1):
        need = "one member" if objective == "single" else "two or more members"
        raise ValueError(f"objective {objective!r} needs {need}, got {len(models)}")
    if objective == "uwo" and len(models) <= uwo_ddof:
        raise ValueError(f"uwo with ddof {uwo_ddof} needs more than {uwo_ddof} members")
    return ProxyReward(
        ids=list(ids),
        scorers=[load_scorer(m, cfg) for m in models],
        objective=objective,
        settings=settings,
        uwo_lambda=uwo_lambda,
        uwo_ddof=uwo_ddof,
    )


@dataclass
class Gold:
    """The gold scorer: an RM, or the prompts' domain verifiers."""

    kind: str  # "model:<id>" or "verifier"
    scorer: Scorer | None
    settings: InputSettings
    verifier: object | None = None  # pipelines.domains.VerifierOptions
    workers: int = 1

    def score(
        self,
        conversations: Sequence[Conversation],
        tasks: Sequence[tuple[str, Mapping | None]],
    ) -> np.ndarray:
        """Gold of each conversation; ``tasks[i]`` = (domain, task) of its prompt."""
        if self.scorer is not None:
            return score_conversations(self.scorer, conversations, self.settings).scores
        from pipelines.domains import domain_module

        self.verifier.apply()
        out = np.empty(len(conversations))
        by_domain: dict[str, list[int]] = {}
        for i, (domain, _) in enumerate(tasks):
            by_domain.setdefault(domain, []).append(i)
        for domain, rows in by_domain.items():
            items = [(tasks[i][1], conversations[i][-1]["content"]) for i in rows]
            verdicts = domain_module(domain).verify_many(
                items, workers=self.workers, **self.verifier.kwargs(domain)
            )
            out[rows] = [1.0 if ok else 0.0 for ok in verdicts]
        return out


def load_gold(
    model: str | None,
    *,
    cfg: ScorerConfig,
    settings: InputSettings,
    verifier: object | None = None,
    workers: int = 1,
) -> Gold:
    """A gold RM (``model``), or the verifiers when ``model`` is None."""
    if model is None:
        from pipelines.domains import VerifierOptions

        return Gold(
            kind="verifier",
            scorer=None,
            settings=settings,
            verifier=verifier or VerifierOptions(),
            workers=workers,
        )
    return Gold(
        kind=f"model:{model}", scorer=load_scorer(model, cfg), settings=settings
    )
