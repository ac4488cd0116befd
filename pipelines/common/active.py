"""Active-learning selection math (ALGORITHMS.md section 6.4), torch-free.

    order = shuffle_and_cap(len(records), cap=40000, seed=0, iteration=1)
    margins = np.abs(r_chosen - r_rejected)          # of the capped pool
    drawn = draw_successive(selection_logits(margins, 1.0), k=2500,
                            rng=draw_rng(0, 1), margins=margins)

The original (eth-dl-rewards ``active_data_selection.py``) shuffles the pool
with seed 42, keeps the first 40,000 pairs, scores them with the current RM,
and draws k pairs without replacement with ``P(i) ∝ exp(-m_i / T)``, ``m_i =
|r(chosen) - r(rejected)|`` (a small margin: an uncertain RM), through
``np.random.seed(42); np.random.choice(n, k, replace=False, p=p)``. That
legacy sampler is *successive sampling*: each draw picks one of the items
not yet drawn with probability proportional to its weight, renormalised over
them (its batch loop draws with replacement and keeps first occurrences,
which is the same process in distribution).

Here every random choice of iteration ``i`` at seed ``s`` comes from
:func:`pipelines.common.seeding.derive_seed` of ``(s, i)``: the pool shuffle
and the draw (:func:`draw_rng`). The random strategy uses the very same draw
with all weights equal, so at one seed and iteration both strategies use one
stream of random numbers: the random strategy is the uncertainty strategy at
``T = inf``, draw for draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipelines.common.seeding import derive_seed

STREAM = "active"  # the first name of every seed stream of this module


def pool_seed(seed: int, iteration: int) -> int:
    """The seed of the pool shuffle of ``iteration`` at run seed ``seed``."""
    return derive_seed(seed, STREAM, f"iteration{iteration}", "shuffle")


def draw_seed(seed: int, iteration: int) -> int:
    """The seed of the draw of ``iteration`` at run seed ``seed``."""
    return derive_seed(seed, STREAM, f"iteration{iteration}", "draw")


def draw_rng(seed: int, iteration: int) -> np.random.Generator:
    """The generator of the draw (``numpy.random.default_rng(draw_seed(...))``)."""
    return np.random.default_rng(draw_seed(seed, iteration))


def shuffle_and_cap(n: int, *, cap: int, seed: int, iteration: int) -> np.ndarray:
    """Pool positions in shuffled order, the first ``cap`` of them.

    The original's ``shuffle(42)`` then ``select(range(40000))``: pairs beyond
    the cap are dropped (neither selected nor in the rest).

    Args:
        n: records in the pool file.
        cap: the most pairs kept (>= 1).
        seed: the run seed.
        iteration: the active-learning iteration (>= 1).

    Returns:
        int64 indices into the pool file, ``min(n, cap)`` of them.
    """
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    rng = np.random.default_rng(pool_seed(seed, iteration))
    return rng.permutation(n)[:cap].astype(np.int64)


def pair_margins(chosen: np.ndarray, rejected: np.ndarray) -> np.ndarray:
    """``|r(chosen) - r(rejected)|`` per pair, float64.

    Raises:
        ValueError: when the lengths differ or a score is not finite.
    """
    chosen = np.asarray(chosen, dtype=np.float64)
    rejected = np.asarray(rejected, dtype=np.float64)
    if chosen.shape != rejected.shape:
        raise ValueError(f"{chosen.shape} chosen scores, {rejected.shape} rejected")
    bad = ~(np.isfinite(chosen) & np.isfinite(rejected))
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} pairs have a score that is not finite (first at"
            f" pool position {int(np.flatnonzero(bad)[0])})"
        )
    return np.abs(chosen - rejected)


def selection_logits(margins: np.ndarray, temperature: float) -> np.ndarray:
    """Log-weights ``-m / T`` shifted so that their maximum is 0 (stable exp).

    ``T = inf`` gives all zeros (uniform). ``T = 0`` has no logits (the draw
    is deterministic, see :func:`draw_successive`); it is refused here.

    Raises:
        ValueError: for ``T <= 0``, a NaN ``T`` or an empty margin array.
    """
    margins = np.asarray(margins, dtype=np.float64)
    if not temperature > 0:  # also NaN
        raise ValueError(f"temperature must be > 0 here, got {temperature}")
    if margins.size == 0:
        raise ValueError("no margins")
    if math.isinf(temperature):
        return np.zeros_like(margins)
    # shifted before the division, so the largest logit is exactly 0 (weight
    # exp(0) = 1) and a T so small that a quotient overflows gives -inf, not NaN
    with np.errstate(over="ignore"):
        return -(margins - margins.min()) / temperature


def first_draw_probabilities(margins: np.ndarray, temperature: float) -> np.ndarray:
    """``exp(-m_i / T) / sum_j exp(-m_j / T)``: each pair's chance to be drawn first.

    ``T = 0``: 1 for the pair the deterministic rule takes first (the
    smallest margin, ties by pool order), 0 for the others.
    """
    margins = np.asarray(margins, dtype=np.float64)
    if temperature == 0:
        p = np.zeros_like(margins)
        p[int(np.argmin(margins))] = 1.0  # argmin: the first of tied minima
        return p
    weights = np.exp(selection_logits(margins, temperature))
    return weights / weights.sum()


def draw_successive(
    logits: np.ndarray | None,
    k: int,
    rng: np.random.Generator,
    *,
    margins: np.ndarray | None = None,
) -> np.ndarray:
    """Draw ``k`` of ``n`` items without replacement by successive sampling.

    Successive sampling: draw one item with probability ``w_i / sum(w)``,
    remove it, renormalise the weights of the rest, repeat (the process of
    numpy's legacy ``RandomState.choice(replace=False, p=...)``, which the
    original called; ``Generator.choice`` does not promise that process).

    Implemented by the Gumbel-top-k trick: with ``G_i`` independent standard
    Gumbel variables, the items ordered by ``log w_i + G_i`` (largest first)
    are distributed exactly as the ordered draws of successive sampling. The
    ranking of such keys follows the Plackett-Luce model with weights ``w``
    (Yellott 1977): the top item is ``i`` with probability ``w_i / sum(w)``
    (the Gumbel-max trick) and, given the items above, the next one is ``j``
    with probability ``w_j`` over the sum of the weights not yet ranked, which
    is successive sampling's rule (Vieira 2014; Kool et al. 2019, "Stochastic
    Beams and Where to Find Them", section 2). One vectorised sort instead of
    k passes over the pool; the tests check the ordered outcomes against the
    product formula.

    Ties between keys (probability 0 for finite logits; items whose weight
    underflows to 0 at a tiny ``T``) fall to the smaller margin, then the
    earlier position: the limit of successive sampling as ``T -> 0``.

    Args:
        logits: ``log w`` per item (any shift), or None for the deterministic
            ``T = 0`` draw: the k smallest ``margins``, ties by position.
        k: items to draw, ``1 <= k <= n``.
        rng: the generator (one ``rng.gumbel(size=n)`` call is made; none
            when ``logits`` is None).
        margins: per item, for the tie order (required when ``logits`` is
            None).

    Returns:
        int64 positions of the drawn items, in draw order.

    Raises:
        ValueError: ``k`` out of range, or neither logits nor margins.
    """
    if logits is None:
        if margins is None:
            raise ValueError("the deterministic draw (T = 0) needs the margins")
        keys = np.zeros(len(margins))
    else:
        logits = np.asarray(logits, dtype=np.float64)
        keys = logits + rng.gumbel(size=logits.shape)
    n = len(keys)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    tie = np.zeros(n) if margins is None else np.asarray(margins, dtype=np.float64)
    # lexsort: the last key is the primary one
    order = np.lexsort((np.arange(n), tie, -keys))
    return order[:k].astype(np.int64)


@dataclass(frozen=True)
class Draw:
    """One selection: positions in the capped pool and what the report needs."""

    positions: np.ndarray  # int64, in draw order
    first_probability: np.ndarray  # float64 per drawn item (probability at draw 1)


def select(
    margins: np.ndarray,
    k: int,
    *,
    temperature: float,
    rng: np.random.Generator,
) -> Draw:
    """Draw ``k`` pairs by uncertainty: ``P(i) ∝ exp(-m_i / T)``, successively.

    Args:
        margins: per pair of the capped pool.
        k: pairs to draw.
        temperature: T of ``exp(-m / T)``; 0: the k smallest margins; inf:
            uniform.
        rng: from :func:`draw_rng`.

    Returns:
        The draw.
    """
    margins = np.asarray(margins, dtype=np.float64)
    if temperature == 0:
        positions = draw_successive(None, k, rng, margins=margins)
    else:
        logits = selection_logits(margins, temperature)
        positions = draw_successive(logits, k, rng, margins=margins)
    p = first_draw_probabilities(margins, temperature)
    return Draw(positions=positions, first_probability=p[positions])


def select_uniform(n: int, k: int, *, rng: np.random.Generator) -> Draw:
    """Draw ``k`` of ``n`` pairs uniformly without replacement.

    The same draw as :func:`select` at ``T = inf`` (equal weights), with the
    same random numbers: both strategies share a seed stream.
    """
    positions = draw_successive(np.zeros(n), k, rng)
    return Draw(positions=positions, first_probability=np.full(k, 1.0 / n))


def margin_stats(values: np.ndarray) -> dict[str, float]:
    """Mean and median of margins (float)."""
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "median": float(np.median(values))}
