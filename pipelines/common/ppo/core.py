"""PPO's arithmetic on response tokens: rewards, KL, GAE, losses, KL control.

Every tensor here is ``[B, T]`` over the *response* tokens of a batch: row
``i`` holds response ``i`` from its first generated token (column 0) to its
last (column ``L_i - 1``: the stop token if it stopped, else the last token the
length limit allowed); ``mask`` is 1 on those columns and 0 on the padding
after them. The settings and formulas are trlx's PPO as tlc4418/llm_optimization
configured it (ALGORITHMS.md section 5.4; trlx ``trlx/models/modeling_ppo.py``
and ``trlx/trainer/accelerate_ppo_trainer.py``), written from the formulas.

torch is imported by the functions that need it, not at import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (a 0-d tensor)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / sqrt(var + 1e-8)`` over the masked positions; 0 elsewhere.

    The variance is the unbiased one (trlx ``whiten``); with one position the
    values are only centred.
    """
    n = mask.sum()
    mean = masked_mean(x, mask)
    centred = (x - mean) * mask
    var = (centred**2).sum() / (n - 1).clamp(min=1)
    return centred * (var + 1e-8).rsqrt() if n > 1 else centred


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Column of each row's last response token (``L_i - 1``); rows need ``L_i >= 1``.

    Raises:
        ValueError: when a row has no response token.
    """
    lengths = mask.sum(dim=1).long()
    if bool((lengths < 1).any()):
        raise ValueError("every response needs at least one token")
    return lengths - 1


def token_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_coef: float,
    clip: float | None,
) -> torch.Tensor:
    """Per-token rewards: ``-kl_coef * (log pi - log pi_ref)``, plus the score last.

    The sequence score, clipped to ``[-clip, clip]``, is added on each row's
    last *generated* token (``mask``'s last 1), never on a padding column
    after an early stop; padding columns get 0.

    Args:
        scores: ``[B]`` the objective's score of each response.
        logprobs: ``[B, T]`` the rollout policy's log-probabilities.
        ref_logprobs: ``[B, T]`` the reference's.
        mask: ``[B, T]`` 1 on response tokens.
        kl_coef: the KL coefficient beta.
        clip: the score clip (trlx ``cliprange_reward``); None: no clip.

    Returns:
        ``[B, T]`` rewards.
    """
    import torch

    if clip is not None:
        scores = scores.clamp(-clip, clip)
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last_index(mask)] += scores.to(rewards.dtype)
    return rewards


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns (Schulman et al. 2016).

    ``delta_t = r_t + gamma V_{t+1} - V_t`` and ``A_t = delta_t + gamma lam
    A_{t+1}``, where the value and advantage after a row's last token are 0
    (the episode ends there). Returns are ``A_t + V_t``.

    Args:
        rewards: ``[B, T]`` per-token rewards (0 on padding).
        values: ``[B, T]`` the value model's estimates at the rollout.
        mask: ``[B, T]`` 1 on response tokens.
        gamma: discount (trlx / the original: 1).
        lam: GAE lambda (0.95).

    Returns:
        ``(advantages, returns)``, both ``[B, T]``, 0 on padding.
    """
    import torch

    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = (delta + gamma * lam * next_adv) * m
        advantages[:, t] = adv
        next_value, next_adv = values[:, t], adv
    return advantages, (advantages + values) * mask


@dataclass(frozen=True)
class LossTerms:
    """One minibatch's PPO loss and what the logs show of it."""

    loss: torch.Tensor
    policy_loss: float
    value_loss: float
    clip_fraction: float
    approx_kl: float  # mean of k3 between the rollout policy and the current one


def ppo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    cliprange: float,
    cliprange_value: float,
    vf_coef: float,
) -> LossTerms:
    """Clipped surrogate policy loss plus ``vf_coef`` times the clipped value loss.

    Policy: ``max(-A r, -A clip(r, 1 - eps, 1 + eps))`` with ``r = exp(log pi -
    log pi_old)``; value: ``0.5 max((V - R)^2, (V_clip - R)^2)`` with ``V_clip =
    V_old + clip(V - V_old, +-eps_v)``; both averaged over response tokens.
    """
    import torch

    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    policy_loss = masked_mean(torch.max(pg1, pg2), mask)
    v_clipped = old_values + (values - old_values).clamp(
        -cliprange_value, cliprange_value
    )
    vf1 = (values - returns) ** 2
    vf2 = (v_clipped - returns) ** 2
    value_loss = 0.5 * masked_mean(torch.max(vf1, vf2), mask)
    with torch.no_grad():
        clipped = masked_mean((pg2 > pg1).float(), mask)
        approx_kl = masked_mean(ratio - 1 - log_ratio, mask)
    return LossTerms(
        loss=policy_loss + vf_coef * value_loss,
        policy_loss=float(policy_loss.detach()),
        value_loss=float(value_loss.detach()),
        clip_fraction=float(clipped),
        approx_kl=float(approx_kl),
    )


def sequence_kl(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-response KL estimates to the reference, summed over response tokens.

    With responses sampled from ``pi`` (temperature 1, no nucleus cut), ``k1 =
    sum_t (log pi - log pi_ref)`` is unbiased for the sequence-level
    ``KL(pi || pi_ref)``; ``k3 = sum_t (e^x - 1 - x)`` with ``x = log pi_ref -
    log pi`` is too, per token, and never negative (Schulman, "Approximating
    KL divergence", 2020). trlx's controller uses ``e^x - 1 - x`` with ``x =
    log pi - log pi_ref`` (ALGORITHMS.md 5.4), which is not an estimate of this
    KL; we feed the controller ``k3`` as above.

    Returns:
        ``(k1, k3)``, each ``[B]``.
    """
    import torch

    x = (logprobs - ref_logprobs) * mask
    k1 = x.sum(dim=1)
    k3 = ((torch.exp(-x) - 1 + x) * mask).sum(dim=1)
    return k1, k3


class AdaptiveKLController:
    """The KL coefficient beta, driven towards a KL target (Ziegler et al. 2019).

    After each rollout batch with mean sequence KL ``kl`` over ``n`` samples:
    ``e = clip(kl / target - 1, -0.2, 0.2)`` and ``beta <- beta (1 + e n /
    horizon)``. With ``target`` None the coefficient stays fixed. The original
    ran init 0.1, target 6, horizon 10000 and ``n`` = its batch size 32.
    """

    def __init__(self, init: float, target: float | None, horizon: int) -> None:
        """Start at ``init``; ``target`` None keeps it there."""
        if init < 0 or horizon < 1:
            raise ValueError(f"need init >= 0 and horizon >= 1, got {init}, {horizon}")
        if target is not None and target <= 0:
            raise ValueError(f"target must be > 0, got {target}")
        self.value = float(init)
        self.target = target
        self.horizon = int(horizon)

    def update(self, kl: float, n_steps: int) -> float:
        """Move beta after a batch of ``n_steps`` samples with mean KL ``kl``."""
        if self.target is None or not math.isfinite(kl):
            return self.value
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


def cosine_annealing(step: int, *, lr: float, t_max: int, eta_min: float) -> float:
    """The original's schedule, torch's ``CosineAnnealingLR``, in closed form.

    ``eta_min + (lr - eta_min) (1 + cos(pi step / t_max)) / 2``; past
    ``t_max`` the closed form keeps following the cosine, as torch's does.
    """
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * step / t_max)) / 2
