"""Gao et al.'s best-of-n and RL over-optimisation forms, fitted by least squares.

Gao, Schulman and Hilton 2022, "Scaling Laws for Reward Model
Overoptimization", eq. 1: the gold score of best-of-n, as a function of
``d = sqrt(KL_bon)``, follows

    R_bon(d) = d (alpha - beta d)

where ``R`` is measured from the initial policy's score (``R(0) = 0``). We fit
the gold curve shifted by its ``n = 1`` value (the base policy's mean gold,
which the unbiased estimator gives exactly at ``KL = 0``). The model is linear
in ``(alpha, beta)`` (regressors ``d`` and ``-d^2``, no intercept), so least
squares has a closed form; ``R^2`` compares its residuals with the spread of
the shifted points around their mean. With ``beta > 0`` the curve peaks at
``d* = alpha / (2 beta)``, i.e. ``KL* = d*^2``, where it is worth
``alpha^2 / (4 beta)``; with ``beta <= 0`` it never turns down (no peak).

The same paper's RL form (section 1, "main results", beside the best-of-n
form; ``KL`` is then KL(pi || pi_init) of the policy trained by RL) is

    R_RL(d) = d (alpha - beta log d)

fitted the same way by :func:`fit_gao_rl` (regressors ``d`` and ``-d log d``,
with ``d log d := 0`` at ``d = 0``, its limit). Its derivative
``alpha - beta (log d + 1)`` vanishes at ``d* = exp(alpha / beta - 1)``, a
maximum when ``beta > 0`` (the second derivative is ``-beta / d``), where the
fitted gain is ``d* (alpha - beta log d*) = beta d*``; with ``beta <= 0`` it
never turns down. These are the curves tlc4418/llm_optimization plots for its
PPO runs, proxy and gold against KL and against steps (Coste et al. 2024).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class GaoFit:
    """Coefficients and quality of one fitted curve."""

    alpha: float
    beta: float
    r2: float  # NaN when the shifted points do not vary
    peak_kl: float  # KL where the fitted gold peaks; NaN when beta <= 0
    peak_gain: float  # fitted gold gain over n = 1 at the peak; NaN likewise
    offset: float  # the gold at KL = 0 the curve was shifted by
    n_points: int

    def record(self, prefix: str = "fit_") -> dict[str, float | int]:
        """The fit as flat columns (``fit_alpha``, ``fit_beta``...)."""
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}

    def predict(self, kl: np.ndarray | Sequence[float]) -> np.ndarray:
        """Fitted gold (offset added back) at the given KL values."""
        d = np.sqrt(np.asarray(kl, dtype=np.float64))
        return self.offset + d * (self.alpha - self.beta * d)


def _least_squares(design: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Coefficients of ``y ~ design`` (no intercept) and ``R^2`` about ``y``'s mean.

    ``R^2`` is NaN when ``y`` does not vary.
    """
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coef
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / total if total > 0 else math.nan
    return coef, r2


def _check_curve(kl: np.ndarray, gold: np.ndarray) -> None:
    """Refuse arrays of other shapes or with NaN/inf."""
    if kl.shape != gold.shape or kl.ndim != 1:
        raise ValueError(f"kl {kl.shape} and gold {gold.shape} must be 1-D, equal")
    if not (np.isfinite(kl).all() and np.isfinite(gold).all()):
        raise ValueError("kl and gold must be finite")


def fit_gao_bon(
    kl: Sequence[float] | np.ndarray, gold: Sequence[float] | np.ndarray
) -> GaoFit:
    """Least-squares fit of ``gold(d) - gold(0) = d (alpha - beta d)`` (best-of-n).

    Args:
        kl: the curve's KL values (nats, ``>= 0``); one must be 0 (``n = 1``),
            which sets the offset.
        gold: the gold scores at those KL values.

    Returns:
        The fit. Needs at least two points with ``KL > 0``.

    Raises:
        ValueError: mismatched or non-finite input, a negative KL, no ``KL = 0``
            point, or fewer than two points with ``KL > 0``.
    """
    kl = np.asarray(kl, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.float64)
    _check_curve(kl, gold)
    if (kl < 0).any():
        raise ValueError(f"KL must be >= 0, got {kl.min()}")
    at_zero = np.flatnonzero(kl == 0)
    if len(at_zero) == 0:
        raise ValueError("the curve needs its n = 1 point (KL = 0) as the offset")
    if (kl > 0).sum() < 2:
        raise ValueError("fitting alpha and beta needs two points with KL > 0")
    offset = float(gold[at_zero].mean())
    d = np.sqrt(kl)
    (alpha, beta), r2 = _least_squares(np.stack([d, -(d**2)], axis=1), gold - offset)
    if beta > 0:
        d_star = alpha / (2 * beta)
        peak_kl = float(d_star**2) if d_star > 0 else 0.0
        peak_gain = float(alpha**2 / (4 * beta)) if d_star > 0 else 0.0
    else:
        peak_kl = peak_gain = math.nan
    return GaoFit(
        alpha=float(alpha),
        beta=float(beta),
        r2=r2,
        peak_kl=peak_kl,
        peak_gain=peak_gain,
        offset=offset,
        n_points=int(len(kl)),
    )


@dataclass(frozen=True)
class GaoRLFit(GaoFit):
    """A fit of the RL form: :class:`GaoFit`'s fields and columns, its own curve."""

    def predict(self, kl: np.ndarray | Sequence[float]) -> np.ndarray:
        """Fitted gold ``offset + d (alpha - beta log d)`` at the given KL values.

        Negative KL estimates count as 0, as in :func:`fit_gao_rl`.
        """
        d = rl_distance(kl)
        return self.offset + self.alpha * d - self.beta * d_log_d(d)


def rl_distance(kl: np.ndarray | Sequence[float]) -> np.ndarray:
    """``d = sqrt(KL)``, a negative KL estimate (estimator noise) taken as 0."""
    return np.sqrt(np.clip(np.asarray(kl, dtype=np.float64), 0.0, None))


def d_log_d(d: np.ndarray) -> np.ndarray:
    """``d log d`` elementwise, with its limit 0 at ``d = 0``."""
    positive = d > 0
    return np.where(positive, d * np.log(np.where(positive, d, 1.0)), 0.0)


def fit_gao_rl(
    kl: Sequence[float] | np.ndarray, gold: Sequence[float] | np.ndarray
) -> GaoRLFit:
    """Least-squares fit of ``gold(d) - gold(0) = d (alpha - beta log d)`` (RL).

    Gao et al. 2022's form for RL (module docstring), with ``d = sqrt(KL)``.
    Negative KL values (unbiased estimators of a KL near 0 can come out
    slightly below it) are clipped to 0 before the square root.

    Args:
        kl: KL(policy || reference) at each evaluation (nats), in step order;
            the first point is the start (step 0, the policy is its reference,
            so its KL is 0 up to estimator noise).
        gold: the mean gold scores at those points; ``gold[0]`` is the offset.

    Returns:
        The fit; its peak (``peak_kl``, ``peak_gain``) is NaN when
        ``beta <= 0``. Needs at least two distinct KL values above 0.

    Raises:
        ValueError: mismatched, empty or non-finite input, or fewer than two
            distinct KL values above 0.
    """
    kl = np.asarray(kl, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.float64)
    _check_curve(kl, gold)
    d = rl_distance(kl)
    if len(np.unique(d[d > 0])) < 2:
        raise ValueError("fitting alpha and beta needs two distinct KL values > 0")
    offset = float(gold[0])
    design = np.stack([d, -d_log_d(d)], axis=1)
    (alpha, beta), r2 = _least_squares(design, gold - offset)
    if beta > 0:
        with np.errstate(over="ignore"):  # a peak far beyond any KL: inf
            d_star = np.exp(np.float64(alpha / beta - 1.0))
            peak_kl, peak_gain = float(d_star**2), float(beta * d_star)
    else:
        peak_kl = peak_gain = math.nan
    return GaoRLFit(
        alpha=float(alpha),
        beta=float(beta),
        r2=r2,
        peak_kl=peak_kl,
        peak_gain=peak_gain,
        offset=offset,
        n_points=int(len(kl)),
    )
