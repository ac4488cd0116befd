"""Gao et al.'s best-of-n form d (alpha - beta d), fitted to known curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.common.bon import kl_bon
from pipelines.common.gao_fit import fit_gao_bon

NS = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256])


def test_recovers_known_alpha_beta_and_the_peak():
    kl = kl_bon(NS)
    d = np.sqrt(kl)
    alpha, beta, offset = 0.9, 0.35, -1.7
    gold = offset + d * (alpha - beta * d)
    fit = fit_gao_bon(kl, gold)
    assert fit.alpha == pytest.approx(alpha, rel=1e-9)
    assert fit.beta == pytest.approx(beta, rel=1e-9)
    assert fit.offset == pytest.approx(offset)
    assert fit.r2 == pytest.approx(1.0)
    # hand-worked: the peak of d (a - b d) is at d = a / 2b, worth a^2 / 4b
    assert fit.peak_kl == pytest.approx((0.9 / 0.7) ** 2)
    assert fit.peak_gain == pytest.approx(0.81 / 1.4)
    np.testing.assert_allclose(fit.predict(kl), gold)


def test_noisy_points_match_numpy_least_squares_and_r2():
    rng = np.random.default_rng(0)
    kl = kl_bon(NS)
    d = np.sqrt(kl)
    gold = 0.2 + d * (0.5 - 0.1 * d) + rng.normal(0, 0.02, len(d))
    gold[0] = 0.2  # n = 1 is the offset
    fit = fit_gao_bon(kl, gold)
    # independent: numpy polyfit of (gold - gold0) on d with no constant term
    # (the design [d, d^2]), then R^2 = 1 - SSE / SST by hand
    design = np.vstack([d, d**2]).T
    coef = np.linalg.pinv(design) @ (gold - 0.2)
    assert fit.alpha == pytest.approx(coef[0], rel=1e-8)
    assert fit.beta == pytest.approx(-coef[1], rel=1e-8)
    y = gold - 0.2
    sse = float(((y - design @ coef) ** 2).sum())
    sst = float(((y - y.mean()) ** 2).sum())
    assert fit.r2 == pytest.approx(1 - sse / sst)
    assert 0.9 < fit.r2 < 1.0


def test_a_curve_that_never_turns_down_has_no_peak():
    kl = kl_bon(NS)
    gold = 1.0 + 0.3 * np.sqrt(kl) + 0.05 * kl  # beta = -0.05
    fit = fit_gao_bon(kl, gold)
    assert fit.beta == pytest.approx(-0.05)
    assert math.isnan(fit.peak_kl) and math.isnan(fit.peak_gain)


def test_a_flat_curve_has_zero_coefficients_and_undefined_r2():
    kl = kl_bon(NS)
    fit = fit_gao_bon(kl, np.full(len(kl), 0.25))
    assert fit.alpha == pytest.approx(0) and fit.beta == pytest.approx(0)
    assert math.isnan(fit.r2)


@pytest.mark.parametrize(
    ("kl", "gold", "match"),
    [
        ([0.0, 0.3], [0.0, 0.1], "two points with KL > 0"),
        ([0.2, 0.3, 0.5], [0.0, 0.1, 0.2], "KL = 0"),
        ([0.0, -0.3, 0.5], [0.0, 0.1, 0.2], "KL must be >= 0"),
        ([0.0, 0.3, 0.5], [0.0, float("nan"), 0.2], "finite"),
        ([0.0, 0.3, 0.5], [0.0, 0.1], "1-D, equal"),
    ],
)
def test_refuses_what_it_cannot_fit(kl, gold, match):
    with pytest.raises(ValueError, match=match):
        fit_gao_bon(kl, gold)
