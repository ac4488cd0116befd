"""Preference labels from a gold scorer, with optional label noise (pure numpy).

The synthetic over-optimisation setup of Gao et al. 2022 ("Scaling Laws for
Reward Model Overoptimization") and Coste et al. 2024 ("Reward Model
Ensembles Help Mitigate Overoptimization", seed README
llm-overoptimization-ensembles): two replies of the policy to one prompt are
scored by a gold RM and the preferred one becomes ``chosen``. Labels are

- ``hard``: the reply with the higher gold score wins (a tie is no
  preference: the caller drops it);
- ``bt``: the first reply wins with the Bradley-Terry probability
  ``sigmoid(g_a - g_b)``, drawn from the seeded generator.

Label noise (Coste et al.'s 25% setting) then flips exactly
``round(noise * n)`` labels chosen uniformly at random, so the flipped share
is the knob up to rounding on every sample size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LABELS = ("hard", "bt")


@dataclass(frozen=True)
class PairLabels:
    """Labels of ``n`` pairs ``(a, b)``."""

    a_wins: np.ndarray  # bool [n]: the label given, noise included
    prob_a: np.ndarray  # float [n]: BT probability that a is preferred
    flipped: np.ndarray  # bool [n]: the label was flipped by the noise


def bt_probability(score_a: np.ndarray, score_b: np.ndarray) -> np.ndarray:
    """``sigmoid(a - b)``, computed without overflow for large margins."""
    diff = np.asarray(score_a, dtype=np.float64) - np.asarray(score_b, np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * diff))


def label_pairs(
    score_a: np.ndarray,
    score_b: np.ndarray,
    *,
    labels: str = "hard",
    noise: float = 0.0,
    rng: np.random.Generator,
) -> PairLabels:
    """Which side of each pair the gold prefers, then the label noise.

    Args:
        score_a: gold scores of the first replies, ``[n]``.
        score_b: gold scores of the second replies, ``[n]``.
        labels: ``hard`` or ``bt`` (see the module docstring).
        noise: share of labels flipped, in ``[0, 1]``.
        rng: draws the BT labels and the flipped pairs.

    Returns:
        The labels.

    Raises:
        ValueError: mismatched or non-finite scores, a hard-label tie, an
            unknown ``labels`` or ``noise`` outside ``[0, 1]``.
    """
    a = np.asarray(score_a, dtype=np.float64)
    b = np.asarray(score_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"scores must be 1-D and equal: {a.shape} vs {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("gold scores must be finite")
    if labels not in LABELS:
        raise ValueError(f"labels must be one of {LABELS}, got {labels!r}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    prob = bt_probability(a, b)
    if labels == "hard":
        if (a == b).any():
            raise ValueError("a hard label needs unequal gold scores; drop ties first")
        wins = a > b
    else:
        wins = rng.random(len(a)) < prob
    flipped = np.zeros(len(a), dtype=bool)
    flipped[rng.choice(len(a), size=round(noise * len(a)), replace=False)] = True
    return PairLabels(a_wins=wins ^ flipped, prob_a=prob, flipped=flipped)
