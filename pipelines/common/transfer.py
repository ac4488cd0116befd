"""Transferability of a reward model across domains (ALGORITHMS.md section 6.5).

eth-dl-rewards fine-tunes a source-domain RM on n pairs of a target domain for
several n and compares the target-test accuracy with that of a "ground truth"
RM: the target's SFT model with a new head trained on all N_T target pairs.
N_F is how many target pairs the fine-tuned source RM needs to match the ground
truth, read off its n-curve, and

    transferability = 1 - N_F / N_T

is 1 when the source RM matches the ground truth zero-shot, 0 when it needs as
many pairs as the ground truth had, and below 0 when it needs more. Plain
Python: no torch, no pandas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def pairs_to_match(
    ns: Sequence[float], accuracies: Sequence[float], target: float
) -> float | None:
    """The number of target pairs N_F at which an n-curve first reaches ``target``.

    The curve is the points ``(n, accuracy)`` sorted by n; give the zero-shot
    source RM as the point n = 0. N_F is the n of the first point at or above
    ``target`` when it is the curve's first point (0 for the zero-shot point),
    else the linear interpolation between that point and the one before it
    (below ``target`` by construction). On a curve that rises, dips and rises
    again this is the FIRST crossing.

    Args:
        ns: the numbers of target pairs, distinct, >= 0, in any order.
        accuracies: the accuracy at each n (finite).
        target: the accuracy to reach (the ground-truth RM's).

    Returns:
        N_F (a float: interpolated), or None when no point reaches ``target``.

    Raises:
        ValueError: no point, lengths differ, a repeated or negative n, or a
            non-finite accuracy or target.
    """
    if len(ns) != len(accuracies):
        raise ValueError(f"{len(ns)} n values but {len(accuracies)} accuracies")
    if not ns:
        raise ValueError("an n-curve needs at least one point")
    if len(set(ns)) != len(ns) or min(ns) < 0:
        raise ValueError(f"n values must be distinct and >= 0: {list(ns)}")
    if not all(math.isfinite(a) for a in [*accuracies, target]):
        raise ValueError(f"non-finite accuracy: {list(accuracies)}, target {target}")
    points = sorted(zip(ns, accuracies, strict=True))
    for i, (n, acc) in enumerate(points):
        if acc < target:
            continue
        if i == 0:
            return float(n)
        n0, acc0 = points[i - 1]
        return float(n0 + (target - acc0) / (acc - acc0) * (n - n0))
    return None


def transferability(n_f: float | None, n_t: float) -> float | None:
    """``1 - n_f / n_t`` (spec 6.5); None when the curve never reached the target.

    Args:
        n_f: target pairs the transferred RM needed (:func:`pairs_to_match`).
        n_t: target pairs the ground-truth RM trained on (> 0).

    Returns:
        The transferability, or None when ``n_f`` is None.

    Raises:
        ValueError: ``n_t`` is not positive.
    """
    if not n_t > 0:
        raise ValueError(f"N_T must be > 0, got {n_t}")
    if n_f is None:
        return None
    return 1.0 - n_f / n_t
