r"""PPO of the SFT policy against one proxy RM or an ensemble, gold and KL tracked.

    python -m pipelines.train_ppo --policy results/models/sft/general \
        --members results/models/rm/gold-labelled/seed0 \
        results/models/rm/gold-labelled/seed1 --objective mean \
        --gold-model results/models/gold \
        --train-prompts results/data/math/train.jsonl \
        --eval-prompts results/data/math/test.jsonl --seed 0 \
        --out results/ppo/ensemble_mean/seed0 \
        --checkpoint-dir results/checkpoints/ppo/ensemble_mean/seed0

The algorithm is :mod:`pipelines.common.ppo` (trlx's PPO as
tlc4418/llm_optimization ran it, ALGORITHMS.md 5.4, our own code on
accelerate). ``--objective single`` takes one ``--members`` RM; ``mean``,
``wco`` and ``uwo`` combine two or more. Training prompts are the records'
prompts of ``--train-prompts`` minus any that also appear in
``--eval-prompts`` (counted and logged); evaluation uses the first
``eval_size`` of ``--eval-prompts`` (spread over the files in turn). The
gold is ``--gold-model`` (an RM) or, without it, each eval prompt's domain
verifier (re-run from ``metadata.task``; the domain is the record's
``metadata.domain``, else the file's folder name).

``--out`` receives ``policy/`` (a causal LM folder with its tokenizer and a
``run_config.json`` carrying the chat format), ``eval.jsonl`` (one line per
evaluation) and ``metrics.json``, each written whole. While training, the
evaluation lines go to ``<checkpoint-dir>/eval.jsonl`` as they are made, so a
killed run still shows its curve. With ``--checkpoint-dir`` the run
checkpoints every ``checkpoint_every`` steps and on SIGTERM (exit 143),
resumes from a checkpoint there to the same policy an uninterrupted run
reaches, and deletes the checkpoints after success. Under ``accelerate
launch`` (DDP) each process draws ``batch_size`` rollouts per step and the
gradients are averaged; DeepSpeed is refused (generation under ZeRO-3 would
gather the weights every token). ``--help`` loads no torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.common.chat_format import ChatFormat
from pipelines.common.cli import (
    add_dataclass_args,
    dataclass_from_args,
    handle_user_errors,
)
from pipelines.common.io import atomic_dir, write_json
from pipelines.common.logs import (
    library_versions,
    log_run_header,
    setup_logging,
)
from pipelines.common.ppo.config import OPERATIONAL_FIELDS, PPOConfig
from pipelines.common.ppo.rewards import OBJECTIVES
from pipelines.common.ppo.setup import read_prompts

__all__ = ["build_run", "main", "read_prompts", "train_ppo"]

if TYPE_CHECKING:
    from pipelines.common.ppo.trainer import PPORun

logger = logging.getLogger(__name__)


def build_run(
    policy: str,
    members: Sequence[str],
    member_ids: Sequence[str],
    *,
    objective: str,
    gold_model: str | None,
    train_files: Sequence[Path],
    eval_files: Sequence[Path],
    seed: int,
    cfg: PPOConfig,
    verifier: object | None = None,
) -> tuple[PPORun, ChatFormat]:
    """Load every model, encode the prompts and set up the optimiser.

    Returns:
        The run at step 0 and the policy's chat format.
    """
    from pipelines.common.ppo.core import AdaptiveKLController
    from pipelines.common.ppo.rewards import load_gold, load_proxy
    from pipelines.common.ppo.setup import (
        generate_kwargs,
        load_policy_parts,
        load_prompt_sets,
    )
    from pipelines.common.ppo.trainer import PPORun
    from pipelines.common.sampling import stop_token_ids
    from pipelines.common.scoring import InputSettings, ScorerConfig

    parts = load_policy_parts(policy, cfg, seed)
    train_prompts, eval_prompts = load_prompt_sets(
        parts.loaded, train_files, eval_files, cfg
    )
    scorer_cfg = ScorerConfig(
        batch_size=cfg.score_batch_size,
        dtype=cfg.rm_dtype,
        device=str(parts.accelerator.device),
        trust_remote_code=cfg.trust_remote_code,
    )
    settings = InputSettings(max_length=cfg.score_max_length)
    tok, lm = parts.loaded.tok, parts.loaded.model
    run = PPORun(
        cfg=cfg,
        seed=seed,
        accelerator=parts.accelerator,
        model=parts.model,
        ref=parts.ref,
        tok=tok,
        optimizer=parts.optimizer,
        scheduler=parts.scheduler,
        proxy=load_proxy(
            members,
            member_ids,
            objective=objective,
            cfg=scorer_cfg,
            settings=settings,
            uwo_lambda=cfg.uwo_lambda,
            uwo_ddof=cfg.uwo_ddof,
        ),
        gold=load_gold(
            gold_model,
            cfg=scorer_cfg,
            settings=settings,
            verifier=verifier,
            workers=cfg.workers,
        ),
        train_prompts=train_prompts,
        eval_prompts=eval_prompts,
        generate_kwargs=generate_kwargs(cfg, tok, parts.loaded.new_pad_row),
        stops=stop_token_ids(lm, tok),
        kl_ctl=AdaptiveKLController(
            cfg.init_kl_coef, cfg.kl_target or None, cfg.kl_horizon
        ),
    )
    return run, parts.loaded.fmt


def _resume(run: PPORun, checkpoint_dir: Path | None, fingerprint: str) -> int:
    """Restore the newest checkpoint of this run; the eval lines it had seen."""
    from pipelines.common.training import latest_checkpoint, load_checkpoint

    path = latest_checkpoint(checkpoint_dir)
    if path is None:
        return 0
    saved = json.loads((path / "state.json").read_text(encoding="utf-8"))["loop"]
    if saved.get("fingerprint") != fingerprint:
        logger.warning(
            "ignoring checkpoint %s: it belongs to another run (fingerprint %s, this"
            " run %s)",
            path,
            saved.get("fingerprint"),
            fingerprint,
        )
        return 0
    loop = load_checkpoint(
        path, model=run.policy, optimizer=run.optimizer, scheduler=run.scheduler
    )
    run.step, run.episodes = int(loop["step"]), int(loop["episodes"])
    run.kl_ctl.value = float(loop["kl_coef"])
    run.reward_since_eval = [float(x) for x in loop["reward_since_eval"]]
    run.timings = {k: float(v) for k, v in loop["timings"].items()}
    logger.info("resumed from %s at step %d", path, run.step)
    return int(loop["eval_lines"])


def _saver(run: PPORun, log, checkpoint_dir: Path, fingerprint: str):
    from pipelines.common.training import save_checkpoint

    def save() -> None:
        run.accelerator.wait_for_everyone()
        if not run.accelerator.is_main_process:
            return
        path = save_checkpoint(
            checkpoint_dir,
            model=run.policy,
            optimizer=run.optimizer,
            scheduler=run.scheduler,
            loop_state={
                "step": run.step,
                "episodes": run.episodes,
                "kl_coef": run.kl_ctl.value,
                "eval_lines": len(log.lines),
                "reward_since_eval": run.reward_since_eval,
                "timings": run.timings,
                "fingerprint": fingerprint,
            },
        )
        logger.info("checkpoint %s", path)

    return save


def _any_process(run: PPORun, flag: bool) -> bool:
    """Whether any process got SIGTERM: every process must stop at one step."""
    if run.accelerator.num_processes == 1:
        return flag
    import torch

    got = torch.tensor(float(flag), device=run.accelerator.device)
    return bool(run.accelerator.reduce(got, "sum").item() > 0)


def _fingerprint(cfg: PPOConfig, **parts: object) -> str:
    from pipelines.common.training import run_fingerprint

    science = {k: v for k, v in asdict(cfg).items() if k not in OPERATIONAL_FIELDS}
    return run_fingerprint(cfg=science, **parts)


def _write_outputs(run: PPORun, fmt: ChatFormat, log, out: Path, record: dict) -> None:
    """``out/policy/``, ``out/metrics.json``, ``out/eval.jsonl``, each whole."""
    lm = run.policy.lm
    with atomic_dir(out / "policy") as tmp:
        lm.save_pretrained(tmp)
        run.tok.save_pretrained(tmp)
        write_json(tmp / "run_config.json", {**record, "chat_format": fmt.record()})
    write_json(out / "metrics.json", record["metrics"])
    from pipelines.common.io import atomic_open

    with atomic_open(out / "eval.jsonl") as fh:
        fh.write("".join(f"{line}\n" for line in log.lines))


def train_ppo(
    policy: str,
    members: Sequence[str],
    out: Path,
    *,
    objective: str,
    seed: int,
    cfg: PPOConfig,
    train_files: Sequence[Path],
    eval_files: Sequence[Path],
    member_ids: Sequence[str] | None = None,
    gold_model: str | None = None,
    checkpoint_dir: Path | None = None,
    verifier: object | None = None,
) -> dict:
    """Run PPO and write ``out``; return the metrics.

    Raises:
        Interrupted: on SIGTERM, after the checkpoint is saved (exit 143).
    """
    from pipelines.common.ppo.trainer import EvalLog, train
    from pipelines.common.training import (
        Interrupted,
        StopFlag,
        check_checkpoint_dir,
        file_digest,
        remove_checkpoints,
    )

    check_checkpoint_dir(out, checkpoint_dir)
    member_ids = list(member_ids or [Path(m).name for m in members])
    run, fmt = build_run(
        policy,
        members,
        member_ids,
        objective=objective,
        gold_model=gold_model,
        train_files=train_files,
        eval_files=eval_files,
        seed=seed,
        cfg=cfg,
        verifier=verifier,
    )
    fingerprint = _fingerprint(
        cfg,
        seed=seed,
        policy=str(policy),
        members=[str(m) for m in members],
        objective=objective,
        gold=gold_model,
        digests=[file_digest(p) for p in [*train_files, *eval_files]],
        processes=run.accelerator.num_processes,
    )
    keep = _resume(run, checkpoint_dir, fingerprint)
    # the main process alone writes the live curve (every process evaluates)
    live = checkpoint_dir / "eval.jsonl" if checkpoint_dir else None
    log = EvalLog(live if run.accelerator.is_main_process else None, keep)
    start = time.perf_counter()
    with StopFlag() as stop:
        save = _saver(run, log, checkpoint_dir, fingerprint) if checkpoint_dir else None
        train(run, log, should_stop=lambda: _any_process(run, stop.raised), save=save)
        if run.step < cfg.steps:  # the loop returned early: SIGTERM
            raise Interrupted(
                f"stopped by SIGTERM at step {run.step}; checkpoint saved"
            )
    seconds = time.perf_counter() - start
    last = run.last_eval
    metrics = {
        "steps": run.step,
        "episodes": run.episodes,
        "seconds": seconds,
        "steps_per_second": cfg.steps / seconds if seconds else None,
        "time_by_part": run.timings,
        "final": {k: last[k] for k in ("proxy", "gold", "kl", "kl_k3", "kl_coef")},
    }
    record = {
        "config": asdict(cfg),
        "seed": seed,
        "policy": str(policy),
        "objective": objective,
        "members": dict(zip(member_ids, map(str, members), strict=True)),
        "gold": run.gold.kind,
        "fingerprint": fingerprint,
        "num_processes": run.accelerator.num_processes,
        "metrics": metrics,
    }
    if run.accelerator.is_main_process:
        _write_outputs(run, fmt, log, out, record)
    remove_checkpoints(checkpoint_dir, run.accelerator)
    return metrics


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`train_ppo`."""
    from pipelines.domains import add_sandbox_arg

    parser = argparse.ArgumentParser(
        prog="python -m pipelines.train_ppo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--policy", required=True, help="SFT policy folder or hub id")
    parser.add_argument(
        "--members", nargs="+", required=True, help="proxy RM folders or hub ids"
    )
    parser.add_argument(
        "--member-ids", nargs="+", default=None, help="names of the members in outputs"
    )
    parser.add_argument("--objective", required=True, choices=OBJECTIVES)
    parser.add_argument(
        "--gold-model", default=None, help="gold RM; absent: the domain verifiers"
    )
    parser.add_argument("--train-prompts", nargs="+", type=Path, required=True)
    parser.add_argument("--eval-prompts", nargs="+", type=Path, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="checkpoints and the live eval.jsonl, outside --out",
    )
    parser.add_argument(
        "--math-extraction", default="balanced", help="math verifier (gold verifier)"
    )
    add_sandbox_arg(parser)
    add_dataclass_args(parser, PPOConfig)
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI; exit code 143 after a SIGTERM checkpoint."""
    from pipelines.common.training import Interrupted, quiet_logging

    args = make_parser().parse_args(argv)
    setup_logging()
    quiet_logging()
    cfg = dataclass_from_args(PPOConfig, args)
    log_run_header(
        logger,
        cfg,
        seed=args.seed,
        policy=args.policy,
        members=args.members,
        objective=args.objective,
        gold_model=args.gold_model,
        out=args.out,
        versions=library_versions(),
    )
    from pipelines.domains import VerifierOptions

    verifier = VerifierOptions(
        math_extraction=args.math_extraction, sandbox_backend=args.sandbox_backend
    )
    try:
        metrics = train_ppo(
            args.policy,
            args.members,
            args.out,
            objective=args.objective,
            seed=args.seed,
            cfg=cfg,
            train_files=args.train_prompts,
            eval_files=args.eval_prompts,
            member_ids=args.member_ids,
            gold_model=args.gold_model,
            checkpoint_dir=args.checkpoint_dir,
            verifier=verifier,
        )
    except Interrupted as err:
        logger.warning("%s", err)
        return err.exit_code
    logger.info("done: %s", {k: v for k, v in metrics.items() if k != "time_by_part"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
