"""Gold labels of pairs: hard and Bradley-Terry labels, and label noise."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.common.gold_labels import bt_probability, label_pairs


def _scores(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=n), rng.normal(size=n)


def test_hard_labels_follow_the_higher_gold_without_noise():
    a, b = _scores(1000)
    out = label_pairs(a, b, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(out.a_wins, a > b)
    assert not out.flipped.any()


@pytest.mark.parametrize("noise", [0.1, 0.25, 0.5])
def test_the_flipped_share_is_the_knob_and_exactly_those_labels_disagree(noise):
    a, b = _scores(20000, seed=2)
    out = label_pairs(a, b, noise=noise, rng=np.random.default_rng(3))
    assert out.flipped.mean() == pytest.approx(noise, abs=1 / 20000)
    # a flipped label prefers the lower gold score, an unflipped one the higher
    np.testing.assert_array_equal(out.a_wins != (a > b), out.flipped)


def test_bt_labels_match_the_logistic_probability_on_a_large_sample():
    a, b = _scores(40000, seed=4)
    out = label_pairs(a, b, labels="bt", rng=np.random.default_rng(5))
    prob = 1 / (1 + np.exp(-(a - b)))  # numpy's own logistic
    np.testing.assert_allclose(out.prob_a, prob, rtol=1e-12)
    # binned calibration: the share of a-wins in each probability decile
    bins = np.digitize(prob, np.linspace(0, 1, 11)[1:-1])
    for k in range(10):
        inside = bins == k
        if inside.sum() > 500:
            share = out.a_wins[inside].mean()
            assert share == pytest.approx(prob[inside].mean(), abs=0.03)


def test_bt_probability_does_not_overflow():
    p = bt_probability(np.array([1000.0, -1000.0, 0.0]), np.zeros(3))
    np.testing.assert_array_equal(p, [1.0, 0.0, 0.5])


def test_hard_ties_and_bad_input_are_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unequal"):
        label_pairs(np.array([1.0, 2.0]), np.array([1.0, 3.0]), rng=rng)
    with pytest.raises(ValueError, match="noise"):
        label_pairs(np.array([1.0]), np.array([0.0]), noise=1.5, rng=rng)
    with pytest.raises(ValueError, match="labels"):
        label_pairs(np.array([1.0]), np.array([0.0]), labels="soft", rng=rng)
    with pytest.raises(ValueError, match="finite"):
        label_pairs(np.array([np.inf]), np.array([0.0]), rng=rng)
