"""PPO throughput: rmflow's PPO step vs TRL's ``PPOTrainer``, same models and sizes.

    pip install --no-deps --target /tmp/trl-ppo "trl==1.12.0"   # once
    python benchmarks/ppo.py [--steps 12] [--repeats 2] [--trl-path /tmp/trl-ppo]

TRL removed ``PPOTrainer`` in 1.16 (huggingface/trl#7020); the last releases
with it keep it at ``trl.experimental.ppo``. ``--trl-path`` names a folder
holding such a TRL (installed with ``--no-deps`` beside the project's own),
put first on ``sys.path`` for this process only; TRL is never a runtime
dependency of rmflow.

Both sides get, in one run on the same hardware: the same tiny GPT-NeoX policy
(a seeded init, saved once) and its frozen copy as the reference, the same
tiny reward model, the same prompts (general-domain prompts through the same
chat template, left-padded), 8 rollouts per step generated 8 at a time, 32 new
tokens at temperature 1, 2 PPO epochs of 2 minibatches of 4, float32. What
differs is each design's own choice: TRL's value model is a separate copy of
the reward model (its recipe), rmflow's a head on the policy's trunk; TRL
scores token ids directly (policy and RM must share a tokenizer), rmflow
decodes and re-encodes through each RM's chat format (members may differ).
TRL runs at its fastest fair setting: no sample generations during training,
no checkpoints, no logging integrations, gradient checkpointing off.

Figure: PPO steps per second (rollout + scoring + update), best of
``--repeats`` interleaved runs, each excluding model loading; and where the
time goes for each (rmflow's own timers; TRL's ``batch_generation`` and
``get_reward`` calls (the rollout's reward and value passes) and its
``forward`` calls (the reference at rollout, policy and value in every update)
timed by wrapping them; the rest, backward passes and optimiser steps included,
counted as update).
Goal (issue 13): rmflow >= 1.5x TRL.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BATCH, MINIBATCH, EPOCHS, NEW_TOKENS = 8, 4, 2, 32


def make_inputs(work: Path) -> dict:
    """Prompts, a tokenizer, a seeded tiny policy and reward model, saved once."""
    import torch

    from pipelines.build_prefs import BuildPrefsConfig, build_prefs
    from pipelines.common.io import read_jsonl
    from pipelines.common.modeling import (
        init_tiny_causal_lm,
        init_tiny_reward_model,
        load_tokenizer,
        train_tokenizer,
    )

    pairs, held_out = work / "general" / "train.jsonl", work / "general" / "test.jsonl"
    build_prefs(
        "general",
        [pairs, held_out],
        None,
        cfg=BuildPrefsConfig(sizes={"train": 200, "test": 8}, sft_size=1, workers=1),
    )
    texts = [m["content"] for r in read_jsonl(pairs) for m in r["chosen"]]
    train_tokenizer(texts, vocab_size=4096).save_pretrained(work / "tok")
    tok = load_tokenizer(str(work / "tok"))
    policy = init_tiny_causal_lm(tok, seed=0)
    policy.save_pretrained(work / "policy")
    tok.save_pretrained(work / "policy")
    torch.manual_seed(1)
    rm = init_tiny_reward_model(tok)
    rm.config.pad_token_id = tok.pad_token_id
    rm.save_pretrained(work / "rm")
    tok.save_pretrained(work / "rm")
    return {
        "pairs": pairs,
        "held_out": held_out,
        "policy": work / "policy",
        "rm": work / "rm",
    }


def run_rmflow(inputs: dict, steps: int, out: Path) -> tuple[float, dict]:
    """Seconds for ``steps`` PPO steps of rmflow and its time split."""
    from pipelines.common.ppo.config import PPOConfig
    from pipelines.train_ppo import build_run

    cfg = PPOConfig(
        steps=steps,
        batch_size=BATCH,
        minibatch_size=MINIBATCH,
        ppo_epochs=EPOCHS,
        generation_batch_size=BATCH,
        max_new_tokens=NEW_TOKENS,
        kl_target=0.0,  # TRL's coefficient is fixed
        device="cpu",
    )
    run, _ = build_run(
        str(inputs["policy"]),
        [str(inputs["rm"])],
        ["rm"],
        objective="single",
        gold_model=str(inputs["rm"]),
        train_files=[inputs["pairs"]],
        eval_files=[inputs["held_out"]],
        seed=0,
        cfg=cfg,
    )
    start = time.perf_counter()
    for _ in range(steps):
        run.ppo_step()
    return time.perf_counter() - start, dict(run.timings)


def run_trl(inputs: dict, steps: int, out: Path) -> tuple[float, dict]:
    """Seconds for ``steps`` PPO steps of TRL's PPOTrainer and its time split."""
    import datasets
    import trl.experimental.ppo.ppo_trainer as trl_ppo
    from transformers import AutoModelForSequenceClassification

    from pipelines.common.chat_format import setup_chat_format
    from pipelines.common.modeling import load_tokenizer
    from pipelines.common.sampling import encode_prompts
    from pipelines.train_ppo import read_prompts

    tok = load_tokenizer(str(inputs["policy"]))
    setup_chat_format(
        tok, str(inputs["policy"]), chat_template=None, system_prompt=None
    )
    tok.padding_side = "left"
    msgs, _, _ = read_prompts([inputs["pairs"]])
    ids, _ = encode_prompts(tok, msgs, max_length=256)
    data = datasets.Dataset.from_dict({"input_ids": ids})
    timings = {"generation": 0.0, "scoring": 0.0, "values": 0.0, "forward passes": 0.0}

    def timed(fn, key_of):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timings[key_of(args)] += time.perf_counter() - t0

        return wrapper

    rm = AutoModelForSequenceClassification.from_pretrained(inputs["rm"], num_labels=1)
    names = ("batch_generation", "forward", "get_reward")
    originals = {name: getattr(trl_ppo, name) for name in names}
    trl_ppo.batch_generation = timed(trl_ppo.batch_generation, lambda a: "generation")
    trl_ppo.forward = timed(trl_ppo.forward, lambda a: "forward passes")
    trl_ppo.get_reward = timed(
        trl_ppo.get_reward, lambda a: "scoring" if a[0] is rm else "values"
    )
    try:
        return _train_trl(inputs, steps, out, tok, data, rm, timings)
    finally:  # the next run wraps the originals again, not these wrappers
        for name, fn in originals.items():
            setattr(trl_ppo, name, fn)


def _train_trl(inputs, steps, out, tok, data, rm, timings):
    """Build TRL's trainer on the shared inputs and time ``train()``."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    args = PPOConfig(
        output_dir=str(out),
        # TRL: rollouts per step = per_device_train_batch_size * accumulation,
        # split into num_mini_batches, one optimiser step each (as rmflow)
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1,
        num_mini_batches=BATCH // MINIBATCH,
        num_ppo_epochs=EPOCHS,
        local_rollout_forward_batch_size=BATCH,
        total_episodes=steps * BATCH,
        response_length=NEW_TOKENS,
        temperature=1.0,
        stop_token="eos",
        num_sample_generations=0,
        save_strategy="no",
        report_to=[],
        logging_steps=10**6,
        gradient_checkpointing=False,
        use_cpu=True,
        bf16=False,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = PPOTrainer(
        args=args,
        processing_class=tok,
        model=AutoModelForCausalLM.from_pretrained(inputs["policy"]),
        ref_model=AutoModelForCausalLM.from_pretrained(inputs["policy"]),
        reward_model=rm,
        value_model=AutoModelForSequenceClassification.from_pretrained(
            inputs["rm"], num_labels=1
        ),
        train_dataset=data,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    timings["update and the rest"] = seconds - sum(timings.values())
    return seconds, timings


def _split(timings: dict, total: float) -> str:
    return ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(timings.items()))


def main() -> None:
    """Run both, interleaved, and print steps/s, the ratio and the time split."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--trl-path", type=Path, default=Path("/tmp/trl-ppo"))
    args = parser.parse_args()
    if args.trl_path.is_dir():
        sys.path.insert(0, str(args.trl_path))
    try:
        import trl.experimental.ppo  # noqa: F401
    except ImportError as err:
        raise SystemExit(
            f"no trl.experimental.ppo ({err}): install a TRL that has it, e.g."
            f" pip install --no-deps --target {args.trl_path} 'trl==1.12.0'"
        ) from err
    import torch
    import trl

    logging.basicConfig(level=logging.WARNING)
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads; trl {trl.__version__}")
    best = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inputs = make_inputs(work)
        for rep in range(args.repeats):
            for name, fn in (("rmflow", run_rmflow), ("trl", run_trl)):
                seconds, split = fn(inputs, args.steps, work / f"{name}{rep}")
                print(f"{name} run {rep}: {args.steps / seconds:.3f} steps/s")
                if name not in best or seconds < best[name][0]:
                    best[name] = (seconds, split)
    for name, (seconds, split) in best.items():
        print(
            f"{name}: {args.steps / seconds:.3f} steps/s"
            f" ({BATCH} rollouts x {NEW_TOKENS} tokens per step);"
            f" time: {_split(split, seconds)}"
        )
    ratio = best["trl"][0] / best["rmflow"][0]
    print(f"rmflow / TRL PPOTrainer: {ratio:.2f}x steps/s (goal >= 1.5x)")


if __name__ == "__main__":
    main()
