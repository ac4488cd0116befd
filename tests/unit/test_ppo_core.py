"""PPO arithmetic against hand-worked examples and independent numpy code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipelines.common.ppo.core import (
    AdaptiveKLController,
    cosine_annealing,
    gae,
    masked_whiten,
    ppo_loss,
    sequence_kl,
    token_rewards,
)
from pipelines.common.ppo.rollout import cut_at_stop

T = torch.tensor


def test_gae_matches_a_hand_worked_four_token_example():
    # row 0: 4 tokens; row 1: 2 tokens then padding (whose garbage must not leak)
    rewards = T([[0.1, -0.2, 0.0, 1.5], [0.3, 1.0, 9.0, 9.0]])
    values = T([[0.5, 0.4, 0.3, 0.2], [0.2, 0.6, 7.0, 7.0]])
    mask = T([[1.0, 1, 1, 1], [1, 1, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # by hand, gamma 1, lambda 0.95, V after the last token = 0:
    # d3 = 1.5 - 0.2 = 1.3; d2 = 0 + 0.2 - 0.3 = -0.1; d1 = -0.2 + 0.3 - 0.4 = -0.3;
    # d0 = 0.1 + 0.4 - 0.5 = 0; A3 = 1.3; A2 = -0.1 + 0.95 * 1.3 = 1.135;
    # A1 = -0.3 + 0.95 * 1.135 = 0.77825; A0 = 0.95 * 0.77825 = 0.7393375
    expected_adv = [[0.7393375, 0.77825, 1.135, 1.3], [1.08, 0.4, 0.0, 0.0]]
    expected_ret = [[1.2393375, 1.17825, 1.435, 1.5], [1.28, 1.0, 0.0, 0.0]]
    np.testing.assert_allclose(adv.numpy(), expected_adv, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ret.numpy(), expected_ret, rtol=1e-6, atol=1e-7)


def _numpy_gae(r, v, lengths, gamma, lam):
    """Textbook GAE per row: A_t = sum_k (gamma lam)^k delta_{t+k}."""
    adv = np.zeros_like(r)
    for i, n in enumerate(lengths):
        vv = np.append(v[i, :n], 0.0)
        delta = r[i, :n] + gamma * vv[1:] - vv[:-1]
        for t in range(n):
            adv[i, t] = sum((gamma * lam) ** k * delta[t + k] for k in range(n - t))
    return adv


def test_gae_matches_the_textbook_sum_on_random_rows():
    rng = np.random.default_rng(0)
    r, v = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    lengths = [7, 1, 3, 6, 2]
    mask = np.array([[1.0 if t < n else 0.0 for t in range(7)] for n in lengths])
    adv, ret = gae(T(r), T(v), T(mask), gamma=0.9, lam=0.8)
    expected = _numpy_gae(r, v, lengths, 0.9, 0.8)
    np.testing.assert_allclose(adv.numpy(), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ret.numpy(), (expected + v) * mask, atol=1e-12)


def test_kl_controller_follows_its_formula():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    # KL 9: error 9/6 - 1 = 0.5, clipped to 0.2; beta 0.1 (1 + 0.2 * 32 / 10000)
    assert ctl.update(9.0, n_steps=32) == pytest.approx(0.1 * 1.00064, rel=1e-12)
    # KL 5.4: error -0.1 (inside the clip)
    assert ctl.update(5.4, n_steps=32) == pytest.approx(
        0.1 * 1.00064 * (1 - 0.1 * 32 / 10000), rel=1e-12
    )
    # far below target: error clipped at -0.2
    before = ctl.value
    assert ctl.update(0.0, n_steps=100) == pytest.approx(before * (1 - 0.2 * 0.01))
    fixed = AdaptiveKLController(0.05, target=None, horizon=10000)
    assert fixed.update(100.0, n_steps=32) == 0.05
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=10)


def test_score_lands_on_the_last_generated_token():
    stop, pad = 2, 0
    # row 0 stops at column 1; row 1 never stops; row 2 stops at once (EOS only);
    # the tokens after a stop are whatever generate left there
    responses = T([[5, stop, 7, 7], [5, 6, 7, 8], [stop, 9, 9, 9]])
    ids, mask, ended = cut_at_stop(responses, [stop], pad)
    assert ended == [True, False, True]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert ids.tolist() == [[5, stop, pad, pad], [5, 6, 7, 8], [stop, pad, pad, pad]]
    logprobs = T([[-1.0, -2, -3, -4], [-1, -1, -1, -1], [-0.5, -9, -9, -9]])
    ref = T([[-1.5, -2, -9, -9], [-1, -2, -1, -1], [-0.25, 0, 0, 0]])
    scores = T([3.0, -20.0, 0.7])
    got = token_rewards(scores, logprobs, ref, mask, kl_coef=0.1, clip=10.0)
    expected = [
        [-0.1 * 0.5, 0.0 + 3.0, 0.0, 0.0],
        [0.0, -0.1 * 1.0, 0.0, -10.0],  # clipped to -10
        [-0.1 * -0.25 + 0.7, 0.0, 0.0, 0.0],
    ]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_ppo_loss_matches_numpy_and_clips():
    rng = np.random.default_rng(1)
    shape = (3, 5)
    lp, old = rng.normal(size=shape) * 0.3, rng.normal(size=shape) * 0.3
    v, old_v, adv, ret = (rng.normal(size=shape) for _ in range(4))
    mask = np.ones(shape)
    mask[1, 3:] = 0
    got = ppo_loss(
        *(T(x) for x in (lp, old, v, old_v, adv, ret, mask)),
        cliprange=0.2,
        cliprange_value=0.2,
        vf_coef=0.5,
    )
    ratio = np.exp(lp - old)
    pg = np.maximum(-adv * ratio, -adv * np.clip(ratio, 0.8, 1.2))
    vc = old_v + np.clip(v - old_v, -0.2, 0.2)
    vf = 0.5 * np.maximum((v - ret) ** 2, (vc - ret) ** 2)
    pg_mean, vf_mean = (pg * mask).sum() / mask.sum(), (vf * mask).sum() / mask.sum()
    assert float(got.loss) == pytest.approx(pg_mean + 0.5 * vf_mean, rel=1e-10)
    assert got.policy_loss == pytest.approx(pg_mean, rel=1e-10)
    # identical policies: ratio 1, nothing clipped, no KL
    same = ppo_loss(
        *(T(x) for x in (lp, lp, v, v, adv, ret, mask)),
        cliprange=0.2,
        cliprange_value=0.2,
        vf_coef=1.0,
    )
    assert same.clip_fraction == 0.0 and same.approx_kl == 0.0


def test_sequence_kl_estimators():
    lp = T([[-1.0, -2.0, -0.5], [-0.1, -3.0, -7.0]])
    ref = T([[-1.5, -1.0, -0.5], [-0.3, -3.0, -1.0]])
    mask = T([[1.0, 1, 1], [1, 0, 0]])
    k1, k3 = sequence_kl(lp, ref, mask)
    x = (lp - ref).numpy() * mask.numpy()
    np.testing.assert_allclose(k1.numpy(), x.sum(1), rtol=1e-6)
    np.testing.assert_allclose(
        k3.numpy(), ((np.exp(-x) - 1 + x) * mask.numpy()).sum(1), rtol=1e-6
    )
    assert (k3 >= 0).all()


def test_k1_estimates_the_kl_of_a_known_distribution():
    # pi = softmax(a), pi_ref = softmax(b) over 4 tokens: sample-mean k1 and k3
    # over 200k draws approach the exact KL(pi || pi_ref)
    torch.manual_seed(0)
    a, b = T([1.0, 0.0, -1.0, 0.5]), T([0.0, 0.0, 0.0, 0.0])
    p, q = torch.softmax(a, 0), torch.softmax(b, 0)
    exact = float((p * (p.log() - q.log())).sum())
    draws = torch.multinomial(p, 200_000, replacement=True)
    lp, ref = p.log()[draws][:, None], q.log()[draws][:, None]
    k1, k3 = sequence_kl(lp, ref, torch.ones_like(lp))
    assert float(k1.mean()) == pytest.approx(exact, abs=0.01)
    assert float(k3.mean()) == pytest.approx(exact, abs=0.01)


def test_whitening_and_cosine_schedule():
    x = T([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
    mask = T([[1.0, 1, 1], [1, 0, 0]])
    got = masked_whiten(x, mask)
    vals = np.array([1.0, 2, 3, 4])
    expected = (vals - vals.mean()) / math.sqrt(vals.var(ddof=1) + 1e-8)
    np.testing.assert_allclose(got[mask.bool()].numpy(), expected, rtol=1e-6)
    assert got[1, 1:].tolist() == [0.0, 0.0]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50, eta_min=1e-5)
    for step in range(1, 60):
        opt.step()
        sched.step()
        assert cosine_annealing(step, lr=1e-3, t_max=50, eta_min=1e-5) == pytest.approx(
            opt.param_groups[0]["lr"], rel=1e-9
        )
