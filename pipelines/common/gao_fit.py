"""Gao et al.'s best-of-n over-optimisation form, fitted by least squares.

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


def fit_gao_bon(
    kl: Sequence[float] | np.ndarray, gold: Sequence[float] | np.ndarray
) -> GaoFit:
    """Least-squares fit of ``gold(d) - gold(0) = d (alpha - beta d)``.

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
    if kl.shape != gold.shape or kl.ndim != 1:
        raise ValueError(f"kl {kl.shape} and gold {gold.shape} must be 1-D, equal")
    if not (np.isfinite(kl).all() and np.isfinite(gold).all()):
        raise ValueError("kl and gold must be finite")
    if (kl < 0).any():
        raise ValueError(f"KL must be >= 0, got {kl.min()}")
    at_zero = np.flatnonzero(kl == 0)
    if len(at_zero) == 0:
        raise ValueError("the curve needs its n = 1 point (KL = 0) as the offset")
    if (kl > 0).sum() < 2:
        raise ValueError("fitting alpha and beta needs two points with KL > 0")
    offset = float(gold[at_zero].mean())
    d = np.sqrt(kl)
    y = gold - offset
    design = np.stack([d, -(d**2)], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ np.array([alpha, beta])
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / total if total > 0 else math.nan
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
