"""Gao et al.'s forms, best-of-n d (alpha - beta d) and RL d (alpha - beta log d),
fitted to known curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.common.bon import kl_bon
from pipelines.common.gao_fit import GaoFit, fit_gao_bon, fit_gao_rl

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


# an RL curve: KL grows over training steps; the first point is step 0
RL_KL = np.array([0.0, 0.05, 0.2, 0.6, 1.5, 3.0, 6.0, 10.0, 16.0])


def rl_gold(kl, alpha, beta, offset):
    d = np.sqrt(kl)
    logd = np.log(np.where(d > 0, d, 1.0))  # d log d -> 0 at d = 0
    return offset + d * (alpha - beta * logd)


def test_rl_recovers_known_alpha_beta_and_the_closed_form_peak():
    alpha, beta, offset = 0.5, 0.2, -0.3
    gold = rl_gold(RL_KL, alpha, beta, offset)
    fit = fit_gao_rl(RL_KL, gold)
    assert isinstance(fit, GaoFit)  # same fields and record() as the BoN fit
    assert fit.alpha == pytest.approx(alpha, rel=1e-9)
    assert fit.beta == pytest.approx(beta, rel=1e-9)
    assert fit.offset == pytest.approx(offset)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.n_points == len(RL_KL)
    # hand-worked: d* = exp(0.5 / 0.2 - 1) = e^1.5, KL* = e^3, gain = 0.2 e^1.5
    assert fit.peak_kl == pytest.approx(math.exp(3.0))
    assert fit.peak_gain == pytest.approx(0.2 * math.exp(1.5))
    # numerically: the argmax of the true curve over a dense KL grid
    grid = np.linspace(0.0, 60.0, 600_001)
    curve = rl_gold(grid, alpha, beta, offset)
    assert grid[curve.argmax()] == pytest.approx(fit.peak_kl, abs=1e-3)
    assert curve.max() - offset == pytest.approx(fit.peak_gain, abs=1e-9)
    # predict() is the RL form (not the best-of-n one), at and off the points
    np.testing.assert_allclose(fit.predict(RL_KL), gold, atol=1e-12)
    np.testing.assert_allclose(fit.predict(grid[::1000]), curve[::1000], atol=1e-9)
    assert fit.record()["fit_beta"] == pytest.approx(beta)


def test_rl_noisy_points_match_numpy_least_squares():
    rng = np.random.default_rng(1)
    d = np.sqrt(RL_KL)
    gold = rl_gold(RL_KL, 0.4, 0.1, 0.2) + rng.normal(0, 0.03, len(d))
    fit = fit_gao_rl(RL_KL, gold)
    # independent: numpy lstsq of gold - gold[0] on [d, d log d] (no constant)
    dlogd = np.array([x * math.log(x) if x > 0 else 0.0 for x in d])
    design = np.column_stack([d, dlogd])
    y = gold - gold[0]
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    assert fit.alpha == pytest.approx(coef[0], rel=1e-8)
    assert fit.beta == pytest.approx(-coef[1], rel=1e-8)
    sse = float(((y - design @ coef) ** 2).sum())
    sst = float(((y - y.mean()) ** 2).sum())
    assert fit.r2 == pytest.approx(1 - sse / sst)


def test_rl_negative_kl_estimates_count_as_zero():
    kl = RL_KL.copy()
    gold = rl_gold(kl, 0.5, 0.2, 0.1)
    kl[0] = -0.004  # the estimator's noise at the start
    gold_late = np.append(gold, 0.1)  # a late point whose estimate dips below 0
    fit = fit_gao_rl(np.append(kl, -0.01), gold_late)
    assert fit.alpha == pytest.approx(0.5) and fit.beta == pytest.approx(0.2)
    assert fit.predict([-0.5, 0.0]) == pytest.approx([0.1, 0.1])


def test_rl_curve_that_never_turns_down_has_no_peak():
    gold = rl_gold(RL_KL, 0.3, -0.05, 0.0)
    fit = fit_gao_rl(RL_KL, gold)
    assert fit.beta == pytest.approx(-0.05)
    assert math.isnan(fit.peak_kl) and math.isnan(fit.peak_gain)


@pytest.mark.parametrize(
    ("kl", "gold", "match"),
    [
        ([0.0, 0.3], [0.0, 0.1], "two distinct KL values > 0"),
        ([0.0, 0.3, 0.3, -0.1], [0.0, 0.1, 0.2, 0.0], "two distinct KL values > 0"),
        ([], [], "two distinct KL values > 0"),
        ([0.0, 0.3, 0.5], [0.0, float("nan"), 0.2], "finite"),
        ([0.0, 0.3, 0.5], [0.0, 0.1], "1-D, equal"),
    ],
)
def test_rl_refuses_what_it_cannot_fit(kl, gold, match):
    with pytest.raises(ValueError, match=match):
        fit_gao_rl(kl, gold)
