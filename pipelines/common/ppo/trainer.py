"""One PPO run: rollouts, rewards, GAE, clipped updates, KL control, evaluation.

:class:`PPORun` holds the policy with its value head (prepared by accelerate:
one process or DDP), the frozen reference, the proxy reward, the gold, the
optimiser and schedule, and the loop position. :meth:`PPORun.train` runs the
loop to ``cfg.steps``; each step is

1. a batch of train prompts (a seeded permutation per pass, a pure function of
   the step, so a resumed run draws what an uninterrupted one draws);
2. one sampled response each, torch seeded from ``(seed, step, rank)``;
3. the proxy objective of each response, clipped, on its last generated token,
   and ``-beta (log pi - log pi_ref)`` on every response token;
4. GAE, whitened advantages, ``ppo_epochs`` passes of clipped policy and value
   updates in seeded minibatches, the cosine schedule stepped per update;
5. the adaptive KL controller updated with the batch's mean KL (k3).

Every ``eval_every`` steps (and after the last) the policy answers the
held-out prompts; the line appended to the live ``eval.jsonl`` holds the
proxy (objective and each member), the ensemble variance, the gold, and the KL
to the reference (see :func:`evaluate`). Dropout stays off throughout (the
policy is in eval mode), so the first minibatch's ratio is exactly 1.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipelines.common.io import dumps_record
from pipelines.common.ppo.config import PPOConfig
from pipelines.common.ppo.core import (
    AdaptiveKLController,
    cosine_annealing,
    gae,
    masked_whiten,
    ppo_loss,
    sequence_kl,
    token_rewards,
)
from pipelines.common.ppo.model import forward_logprobs
from pipelines.common.ppo.rewards import Gold, ProxyReward
from pipelines.common.ppo.rollout import RolloutBatch, generate_rollouts
from pipelines.common.seeding import derive_seed

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__package__)


@dataclass
class Prompts:
    """Prompts as messages, their token ids, and each one's (domain, task)."""

    messages: list[list[dict[str, str]]]
    ids: list[list[int]]
    tasks: list[tuple[str, Mapping | None]]

    def conversations(self, rows: Sequence[int], texts: Sequence[str]) -> list:
        """Each row's prompt followed by its response as an assistant turn."""
        return [
            [*self.messages[r], {"role": "assistant", "content": t}]
            for r, t in zip(rows, texts, strict=True)
        ]


def prompt_rows(
    n_prompts: int, batch: int, step: int, seed: int, rank: int
) -> list[int]:
    """Prompt indices of ``step``'s batch on process ``rank``.

    Prompts are consumed in passes, each a seeded permutation of all prompts;
    the batch of step ``s`` on rank ``k`` is items ``(s * world + k) * batch``
    onwards of the concatenated passes. A pure function: resume needs no state.
    """
    start = (step * _world() + rank) * batch
    rows = []
    for i in range(start, start + batch):
        epoch, pos = divmod(i, n_prompts)
        order = np.random.default_rng(derive_seed(seed, "prompts", str(epoch)))
        rows.append(int(order.permutation(n_prompts)[pos]))
    return rows


def _world() -> int:
    """Processes of this run (1 without a launcher)."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class StepStats:
    """What one PPO step logs."""

    reward: float  # mean proxy objective of the rollouts (before clipping)
    kl: float  # mean sequence k3 KL of the rollouts
    kl_coef: float
    response_length: float
    ended: float  # share of responses that stopped
    policy_loss: float
    value_loss: float
    clip_fraction: float
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class PPORun:
    """Everything one PPO run holds."""

    cfg: PPOConfig
    seed: int
    accelerator: Accelerator
    model: torch.nn.Module  # prepared PolicyWithValue
    ref: PreTrainedModel
    tok: PreTrainedTokenizerBase
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    proxy: ProxyReward
    gold: Gold
    train_prompts: Prompts
    eval_prompts: Prompts
    generate_kwargs: dict
    stops: list[int]
    kl_ctl: AdaptiveKLController
    step: int = 0
    episodes: int = 0
    reward_since_eval: list[float] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    last_eval: dict | None = None  # the latest evaluation line (every process)

    @property
    def policy(self) -> torch.nn.Module:
        """The unwrapped PolicyWithValue."""
        return self.accelerator.unwrap_model(self.model)

    def _time(self, name: str, start: float) -> float:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - start
        return now

    def rollout(self, rows: Sequence[int], prompts: Prompts, **kw) -> RolloutBatch:
        """Sample one response per row (the caller seeds torch)."""
        return generate_rollouts(
            self.policy.lm,
            self.tok,
            prompts.ids,
            rows,
            generate_kwargs={**self.generate_kwargs, **kw},
            stops=self.stops,
            device=self.accelerator.device,
            chunk=self.cfg.chunk,
        )

    def ppo_step(self) -> StepStats:
        """One rollout batch and its updates."""
        import torch

        cfg, rank = self.cfg, self.accelerator.process_index
        t0 = time.perf_counter()
        rows = prompt_rows(
            len(self.train_prompts.ids), cfg.batch_size, self.step, self.seed, rank
        )
        torch.manual_seed(derive_seed(self.seed, "rollout", str(self.step), str(rank)))
        batch = self.rollout(rows, self.train_prompts)
        t0 = self._time("generation", t0)
        convs = self.train_prompts.conversations(rows, batch.texts)
        scores = self.proxy.score(convs).objective
        t0 = self._time("scoring", t0)
        with torch.no_grad():
            old_lp, old_v = self.model(
                batch.input_ids, batch.attention_mask, start=batch.prompt_width
            )
            ref_lp, _ = forward_logprobs(
                self.ref,
                batch.input_ids,
                batch.attention_mask,
                start=batch.prompt_width,
            )
        mask = batch.response_mask
        kl_coef = self.kl_ctl.value
        rewards = token_rewards(
            torch.as_tensor(scores, dtype=torch.float32, device=mask.device),
            old_lp,
            ref_lp,
            mask,
            kl_coef=kl_coef,
            clip=cfg.reward_clip or None,
        )
        adv, returns = gae(rewards, old_v, mask, gamma=cfg.gamma, lam=cfg.lam)
        if cfg.whiten_advantages:
            adv = masked_whiten(adv, mask)
        t0 = self._time("reference and values", t0)
        losses = self.update(batch, old_lp, old_v, adv, returns)
        self._time("update", t0)
        _, k3 = sequence_kl(old_lp, ref_lp, mask)
        kl = float(self.accelerator.gather(k3).mean())
        self.kl_ctl.update(kl, n_steps=cfg.batch_size * self.accelerator.num_processes)
        self.step += 1
        self.episodes += cfg.batch_size * self.accelerator.num_processes
        reward = float(
            self.accelerator.gather(torch.as_tensor(scores, device=mask.device)).mean()
        )
        self.reward_since_eval.append(reward)
        return StepStats(
            reward=reward,
            kl=kl,
            kl_coef=kl_coef,
            response_length=float(mask.sum(1).mean()),
            ended=float(np.mean(batch.ended)),
            **losses,
        )

    def update(self, batch, old_lp, old_v, adv, returns) -> dict[str, float]:
        """``ppo_epochs`` passes of minibatch updates; mean loss terms."""
        import torch

        cfg = self.cfg
        gen = torch.Generator().manual_seed(
            derive_seed(self.seed, "minibatches", str(self.step))
        )
        terms: list = []
        width = batch.prompt_width
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(cfg.batch_size, generator=gen)
            for lo in range(0, cfg.batch_size, cfg.minibatch_size):
                mb = order[lo : lo + cfg.minibatch_size].to(old_lp.device)
                with self.accelerator.autocast():
                    lp, v = self.model(
                        batch.input_ids[mb], batch.attention_mask[mb], start=width
                    )
                t = ppo_loss(
                    lp,
                    old_lp[mb],
                    v,
                    old_v[mb],
                    adv[mb],
                    returns[mb],
                    batch.response_mask[mb],
                    cliprange=cfg.cliprange,
                    cliprange_value=cfg.cliprange_value,
                    vf_coef=cfg.vf_coef,
                )
                self.accelerator.backward(t.loss)
                if cfg.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_(
                        self.model.parameters(), cfg.max_grad_norm
                    )
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                terms.append(t)
        return {
            "policy_loss": float(np.mean([t.policy_loss for t in terms])),
            "value_loss": float(np.mean([t.value_loss for t in terms])),
            "clip_fraction": float(np.mean([t.clip_fraction for t in terms])),
        }


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: PPOConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """The original's ``CosineAnnealingLR(T_max, eta_min)``, as a LambdaLR."""
    import torch

    lr = cfg.learning_rate

    def factor(step: int) -> float:
        if lr == 0:
            return 0.0
        return (
            cosine_annealing(step, lr=lr, t_max=cfg.lr_t_max, eta_min=cfg.lr_eta_min)
            / lr
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def evaluate(run: PPORun) -> dict:
    """Score the policy on the held-out prompts; one ``eval.jsonl`` line.

    Eval responses use the eval sampling settings (the original's T 0.7, top_p
    0.9); the proxy members, the objective and the gold score them. KL to the
    reference is estimated on responses drawn from the policy itself
    (temperature 1, no nucleus cut: the distribution KL is defined on; the eval
    responses are reused when the eval settings are exactly that): ``kl`` is the
    mean sequence-level k1 over response tokens, ``kl_k3`` the k3 estimate, and
    ``kl_original`` the quantity the original logged (``sum_t 0.5 (log pi - log
    pi_ref)^2`` over every non-pad position, prompt tokens included). Sampling
    runs under a forked RNG seeded from ``(seed, "eval", step)``, so evaluating
    does not change the training run.
    """
    import torch

    cfg = run.cfg
    rows = list(range(len(run.eval_prompts.ids)))
    eval_kw = {
        "temperature": cfg.eval_temperature,
        "top_p": cfg.eval_top_p,
        "max_new_tokens": cfg.eval_max_new_tokens,
    }
    devices = [run.accelerator.device] if run.accelerator.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed(run.seed, "eval", str(run.step)))
        samples = run.rollout(rows, run.eval_prompts, **eval_kw)
        same = (
            (cfg.eval_temperature, cfg.eval_top_p, cfg.eval_max_new_tokens)
            == (
                1.0,
                1.0,
                cfg.max_new_tokens,
            )
            and cfg.temperature == 1.0
            and cfg.top_p == 1.0
        )
        kl_batch = (
            samples
            if same
            else run.rollout(rows, run.eval_prompts, temperature=1.0, top_p=1.0)
        )
    convs = run.eval_prompts.conversations(rows, samples.texts)
    proxy = run.proxy.score(convs)
    gold = run.gold.score(convs, [run.eval_prompts.tasks[r] for r in rows])
    kl = kl_estimates(run, kl_batch)
    since = run.reward_since_eval
    run.reward_since_eval = []
    objective = run.proxy.objective
    return {
        # the run's name in paths and reports: single, ensemble_mean, ...
        "objective": objective if objective == "single" else f"ensemble_{objective}",
        "seed": run.seed,
        "step": run.step,
        "episodes": run.episodes,
        **kl,
        "kl_coef": run.kl_ctl.value,
        "proxy": float(proxy.objective.mean()),
        "members": {
            m: float(s.mean())
            for m, s in zip(run.proxy.ids, proxy.members, strict=True)
        },
        "ensemble_variance": float(np.nanmean(proxy.variance))
        if len(run.proxy.ids) > 1
        else None,
        "gold": float(gold.mean()),
        "gold_kind": run.gold.kind,
        "rollout_reward": float(np.mean(since)) if since else None,
        "response_length": float(np.mean(samples.lengths)),
        "samples": _sample_records(run, rows, samples.texts, proxy, gold),
    }


def _sample_records(run: PPORun, rows, texts, proxy, gold) -> list[dict]:
    """Each eval reply with its prompt's last turn and every score."""
    return [
        {
            "prompt": run.eval_prompts.messages[r][-1]["content"],
            "response": text,
            "proxy": float(proxy.objective[i]),
            "gold": float(gold[i]),
            "members": [float(x) for x in proxy.members[:, i]],
            "variance": None
            if np.isnan(proxy.variance[i])
            else float(proxy.variance[i]),
        }
        for i, (r, text) in enumerate(zip(rows, texts, strict=True))
    ]


def kl_estimates(run: PPORun, batch: RolloutBatch) -> dict[str, float]:
    """``kl`` (k1), ``kl_k3`` and ``kl_original`` of a batch sampled from the policy.

    Forward passes take ``cfg.chunk`` rows at a time (an eval set can be
    larger than a batch a GPU holds).
    """
    import torch

    width, k1s, k3s, originals = batch.prompt_width, [], [], []
    for lo in range(0, len(batch.texts), run.cfg.chunk):
        ids = batch.input_ids[lo : lo + run.cfg.chunk]
        att = batch.attention_mask[lo : lo + run.cfg.chunk]
        with torch.no_grad():
            lp, _ = run.model(ids, att, start=1, with_values=False)
            ref_lp, _ = forward_logprobs(run.ref, ids, att, start=1)
        mask = batch.response_mask[lo : lo + run.cfg.chunk]
        k1, k3 = sequence_kl(lp[:, width - 1 :], ref_lp[:, width - 1 :], mask)
        every = att[:, 1:].float()
        originals.append((0.5 * ((lp - ref_lp) * every) ** 2).sum(dim=1))
        k1s.append(k1)
        k3s.append(k3)
    return {
        "kl": float(torch.cat(k1s).mean()),
        "kl_k3": float(torch.cat(k3s).mean()),
        "kl_original": float(torch.cat(originals).mean()),
        "kl_samples": len(batch.texts),
    }


class EvalLog:
    """The live ``eval.jsonl``: one line per evaluation, flushed as written.

    On resume it is cut back to the lines the checkpoint had seen, so lines of
    evaluations after the checkpoint are written once, by the resumed run.
    """

    def __init__(self, path: Path | None, keep: int = 0) -> None:
        """Open ``path`` keeping its first ``keep`` lines (None: memory only)."""
        self.path = path
        self.lines: list[str] = []
        if path is not None and path.exists():
            self.lines = path.read_text(encoding="utf-8").splitlines()[:keep]
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{x}\n" for x in self.lines), encoding="utf-8")

    def append(self, record: dict) -> None:
        """Add one line (and flush it to disk)."""
        line = dumps_record(record)
        self.lines.append(line)
        if self.path is not None:
            import os

            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())


def train(
    run: PPORun,
    log: EvalLog,
    *,
    should_stop: Callable[[], bool],
    save: Callable[[], None] | None,
) -> None:
    """Run to ``cfg.steps``: evaluate every ``eval_every`` steps and at the end.

    ``save`` writes a checkpoint (every ``checkpoint_every`` steps and when
    ``should_stop`` turns true, after which the loop returns early).
    """
    cfg = run.cfg
    start = time.perf_counter()
    while run.step < cfg.steps:
        if run.step % cfg.eval_every == 0:
            _log_eval(run, log, start)
        stats = run.ppo_step()
        if run.step % cfg.log_every == 0 or run.step == cfg.steps:
            logger.info(
                "step %d/%d: reward %.3f, kl %.3f, beta %.4f, length %.1f,"
                " ended %.2f, policy loss %.4f, value loss %.4f, clipped %.3f",
                run.step,
                cfg.steps,
                stats.reward,
                stats.kl,
                stats.kl_coef,
                stats.response_length,
                stats.ended,
                stats.policy_loss,
                stats.value_loss,
                stats.clip_fraction,
            )
        stop = should_stop()
        if save is not None and (
            stop or (cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0)
        ):
            save()
        if stop:
            return
    _log_eval(run, log, start)


def _log_eval(run: PPORun, log: EvalLog, start: float) -> None:
    t0 = time.perf_counter()
    line = evaluate(run)
    run._time("evaluation", t0)
    line["seconds"] = time.perf_counter() - start
    run.last_eval = line
    if run.accelerator.is_main_process:
        log.append(line)
    logger.info(
        "eval at step %d: proxy %.3f, gold %.3f, kl %.3f (k3 %.3f)",
        line["step"],
        line["proxy"],
        line["gold"],
        line["kl"],
        line["kl_k3"],
    )
