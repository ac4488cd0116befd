"""PPO stage: log-probabilities, objectives, learning, SIGTERM + resume, outputs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from pipelines.build_prefs import BuildPrefsConfig, build_prefs
from pipelines.common.io import read_jsonl
from pipelines.common.modeling import (
    TinyArch,
    init_tiny_reward_model,
    load_tokenizer,
    train_tokenizer,
)
from pipelines.common.ppo.config import PPOConfig
from pipelines.common.ppo.model import forward_logprobs
from pipelines.common.ppo.rewards import ProxyScores, load_proxy
from pipelines.common.ppo.rollout import generate_rollouts
from pipelines.common.sampling import encode_prompts, load_policy
from pipelines.common.scoring import InputSettings, ScorerConfig, load_scorer
from pipelines.train_ppo import build_run, main, read_prompts, train_ppo
from pipelines.train_sft import TrainSFTConfig, train_sft

ROOT = Path(__file__).resolve().parents[2]
ARCH = TinyArch(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
)
QUICK = PPOConfig(
    steps=4,
    batch_size=4,
    minibatch_size=2,
    ppo_epochs=2,
    max_new_tokens=8,
    eval_max_new_tokens=8,
    eval_every=2,
    eval_size=4,
    checkpoint_every=0,
    log_every=1,
    device="cpu",
)


@pytest.fixture(scope="session")
def ppo_world(tmp_path_factory) -> dict:
    """Math pairs, a tiny SFT policy, two tiny RMs and a gold RM."""
    root = tmp_path_factory.mktemp("ppo")
    data = root / "data" / "math"
    build_prefs(
        "math",
        [data / "train.jsonl", data / "test.jsonl"],
        root / "sft.jsonl",
        cfg=BuildPrefsConfig(sizes={"train": 40, "test": 12}, sft_size=40, workers=1),
    )
    texts = [
        m["content"] for r in read_jsonl(data / "train.jsonl") for m in r["chosen"]
    ]
    train_tokenizer(texts, vocab_size=512).save_pretrained(root / "tok")
    policy = root / "policy"
    train_sft(
        [root / "sft.jsonl"],
        policy,
        base=None,
        tokenizer=str(root / "tok"),
        seed=0,
        cfg=TrainSFTConfig(
            epochs=1,
            device="cpu",
            log_every=50,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        ),
    )
    tok = load_tokenizer(str(policy))
    rms = []
    for seed in range(3):
        torch.manual_seed(seed)
        rm = init_tiny_reward_model(tok, arch=ARCH)
        rm.save_pretrained(root / f"rm{seed}")
        tok.save_pretrained(root / f"rm{seed}")
        rms.append(root / f"rm{seed}")
    return {
        "root": root,
        "train": data / "train.jsonl",
        "test": data / "test.jsonl",
        "policy": policy,
        "rms": rms,
    }


def test_forward_logprobs_match_what_generate_sampled_from(ppo_world):
    loaded = load_policy(
        str(ppo_world["policy"]),
        device="cpu",
        dtype="float32",
        trust_remote_code=False,
        chat_template=None,
        system_prompt=None,
    )
    msgs, _, _ = read_prompts([ppo_world["test"]], limit=4)
    ids, _ = encode_prompts(loaded.tok, msgs, max_length=None)
    ids[1] = ids[1][:3]  # very different prompt lengths: real left padding
    torch.manual_seed(0)
    batch = generate_rollouts(
        loaded.model,
        loaded.tok,
        ids,
        [0, 1, 2, 3],
        generate_kwargs={"do_sample": True, "top_k": 0, "max_new_tokens": 10},
        stops=[loaded.tok.eos_token_id],
        device=torch.device("cpu"),
        chunk=4,
    )
    assert batch.attention_mask[1, : batch.prompt_width - 3].sum() == 0
    # recompute by hand, one unpadded sequence at a time (no padding at all)
    lp, _ = forward_logprobs(
        loaded.model, batch.input_ids, batch.attention_mask, start=batch.prompt_width
    )
    for row in range(4):
        n = batch.lengths[row]
        seq = ids[row] + batch.input_ids[row, batch.prompt_width :][:n].tolist()
        with torch.no_grad():
            logits = loaded.model(torch.tensor([seq])).logits[0]
        logp = torch.log_softmax(logits, -1)
        p = len(ids[row])
        expected = [float(logp[p - 1 + j, seq[p + j]]) for j in range(n)]
        np.testing.assert_allclose(
            lp[row, :n].detach().numpy(), expected, rtol=1e-4, atol=1e-4
        )


def test_objectives_are_the_members_min_mean_and_uwo_with_its_ddof(ppo_world):
    convs = [
        [
            {"role": "user", "content": f"What is {i} + {i}?"},
            {"role": "assistant", "content": f"It is \\boxed{{{2 * i}}}." * (i + 1)},
        ]
        for i in range(5)
    ]
    cfg = ScorerConfig(device="cpu")
    settings = InputSettings(max_length=256)
    rms = [str(p) for p in ppo_world["rms"]]
    from pipelines.common.scoring import ScoringInput, score_inputs

    each = np.stack(
        [
            score_inputs(load_scorer(m, cfg), [ScoringInput("x", convs, settings)])[
                "x"
            ].scores
            for m in rms
        ]
    )
    assert np.ptp(each, axis=0).min() > 0  # the members disagree
    got = {}
    for objective, ddof in (("mean", 1), ("wco", 1), ("uwo", 1), ("uwo", 0)):
        proxy = load_proxy(
            rms,
            ["a", "b", "c"],
            objective=objective,
            cfg=cfg,
            settings=settings,
            uwo_lambda=0.3,
            uwo_ddof=ddof,
        )
        got[objective, ddof] = proxy.score(convs)
    np.testing.assert_allclose(got["wco", 1].objective, each.min(axis=0), rtol=1e-9)
    mean = each.sum(axis=0) / 3
    np.testing.assert_allclose(got["mean", 1].objective, mean, rtol=1e-9)
    for ddof in (0, 1):
        var = ((each - mean) ** 2).sum(axis=0) / (3 - ddof)
        np.testing.assert_allclose(
            got["uwo", ddof].objective, mean - 0.3 * var, rtol=1e-9
        )
        np.testing.assert_allclose(got["uwo", ddof].variance, var, rtol=1e-9)
    single = load_proxy(
        rms[:1],
        ["a"],
        objective="single",
        cfg=cfg,
        settings=settings,
        uwo_lambda=0.3,
        uwo_ddof=1,
    ).score(convs)
    np.testing.assert_allclose(single.objective, each[0], rtol=1e-9)
    assert np.isnan(single.variance).all()
    with pytest.raises(ValueError, match="two or more"):
        load_proxy(
            rms[:1],
            ["a"],
            objective="wco",
            cfg=cfg,
            settings=settings,
            uwo_lambda=0.1,
            uwo_ddof=1,
        )


class CountToken:
    """A toy reward: +1 per occurrence of ``word`` in the response."""

    def __init__(self, word: str) -> None:
        self.word, self.ids, self.objective = word, ["toy"], "single"

    def score(self, convs) -> ProxyScores:
        r = np.array([float(c[-1]["content"].count(self.word)) for c in convs])
        return ProxyScores(
            members=r[None], objective=r, variance=np.full(len(r), np.nan)
        )


def test_policy_learns_a_toy_reward_and_drifts_from_the_reference(ppo_world):
    cfg = replace(
        QUICK,
        steps=30,
        batch_size=16,
        minibatch_size=8,
        ppo_epochs=4,
        max_new_tokens=12,
        learning_rate=3e-3,
        init_kl_coef=0.01,
        kl_target=0.0,
    )
    run, _ = build_run(
        str(ppo_world["policy"]),
        [str(ppo_world["rms"][0])],
        ["rm0"],
        objective="single",
        gold_model=str(ppo_world["rms"][1]),
        train_files=[ppo_world["train"]],
        eval_files=[ppo_world["test"]],
        seed=0,
        cfg=cfg,
    )
    run.proxy = CountToken("=")
    stats = [run.ppo_step() for _ in range(cfg.steps)]
    first = np.mean([s.reward for s in stats[:5]])
    last = np.mean([s.reward for s in stats[-5:]])
    assert last > first + 1.0, [round(s.reward, 2) for s in stats]
    assert stats[0].kl == pytest.approx(0.0, abs=1e-5)  # the policy is the reference
    assert np.mean([s.kl for s in stats[-5:]]) > 0.5


def _cli(world, out, ckpt, objective="mean", extra=()):
    members = [str(p) for p in world["rms"][: 1 if objective == "single" else 2]]
    cmd = [
        sys.executable,
        "-m",
        "pipelines.train_ppo",
        "--policy",
        str(world["policy"]),
    ]
    cmd += ["--members", *members, "--objective", objective]
    cmd += ["--gold-model", str(world["rms"][2])]
    cmd += [
        "--train-prompts",
        str(world["train"]),
        "--eval-prompts",
        str(world["test"]),
    ]
    cmd += ["--seed", "3", "--out", str(out), "--checkpoint-dir", str(ckpt)]
    cmd += ["--steps", "8", "--batch-size", "4", "--minibatch-size", "2"]
    cmd += ["--ppo-epochs", "2", "--max-new-tokens", "8", "--eval-max-new-tokens", "8"]
    cmd += ["--eval-every", "3", "--eval-size", "4", "--log-every", "1"]
    cmd += ["--learning-rate", "1e-3", "--device", "cpu", *extra]
    return cmd


def _env():
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


def test_sigterm_then_rerun_gives_the_uninterrupted_policy(ppo_world, tmp_path):
    ref_out = tmp_path / "whole"
    done = subprocess.run(
        _cli(ppo_world, ref_out, tmp_path / "c0"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out, ckpt = tmp_path / "resumed", tmp_path / "c1"
    proc = subprocess.Popen(
        _cli(ppo_world, out, ckpt),
        env=_env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r"step (\d+)/8:", line)
            if m and int(m.group(1)) >= 4:
                proc.send_signal(signal.SIGTERM)
                break
        rest = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    log = "".join(lines) + rest
    assert proc.returncode == 143, log[-3000:]
    assert not out.exists()
    live = read_jsonl(ckpt / "eval.jsonl")  # the curve so far survives the kill
    assert [e["step"] for e in live] == [0, 3]
    again = subprocess.run(
        _cli(ppo_world, out, ckpt),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stderr
    assert not ckpt.exists()
    a = AutoModelForCausalLM.from_pretrained(ref_out / "policy").state_dict()
    b = AutoModelForCausalLM.from_pretrained(out / "policy").state_dict()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
    whole, resumed = read_jsonl(ref_out / "eval.jsonl"), read_jsonl(out / "eval.jsonl")
    assert [e["step"] for e in resumed] == [0, 3, 6, 8]
    for x, y in zip(whole, resumed, strict=True):
        for key in ("proxy", "gold", "kl", "kl_coef"):
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-6), key


def test_eval_lines_hold_every_quantity(ppo_world, tmp_path):
    out = tmp_path / "run"
    for objective in ("single", "wco"):
        metrics = train_ppo(
            str(ppo_world["policy"]),
            [str(p) for p in ppo_world["rms"][: 1 if objective == "single" else 2]],
            out / objective,
            objective=objective,
            seed=0,
            cfg=QUICK,
            train_files=[ppo_world["train"]],
            eval_files=[ppo_world["test"]],
            gold_model=str(ppo_world["rms"][2]),
        )
        lines = read_jsonl(out / objective / "eval.jsonl")
        assert [e["step"] for e in lines] == [0, 2, 4]
        first, last = lines[0], lines[-1]
        assert first["kl"] == pytest.approx(0.0, abs=1e-5)
        assert first["kl_original"] == pytest.approx(0.0, abs=1e-8)
        assert last["kl_k3"] > 0 and last["kl_original"] > 0
        assert len(first["samples"]) == 4
        sample = first["samples"][0]
        assert set(sample) >= {"prompt", "response", "proxy", "gold", "members"}
        if objective == "single":
            assert first["ensemble_variance"] is None
            assert sample["proxy"] == sample["members"][0]
        else:
            assert first["ensemble_variance"] >= 0
            assert sample["proxy"] == pytest.approx(min(sample["members"]))
        assert metrics["steps"] == 4 and metrics["final"]["gold"] == last["gold"]
        assert (out / objective / "policy" / "run_config.json").is_file()
    # gold verifier: held-out math answers re-checked from each record's task
    verified = train_ppo(
        str(ppo_world["policy"]),
        [str(ppo_world["rms"][0])],
        out / "verifier",
        objective="single",
        seed=0,
        cfg=replace(QUICK, steps=1),
        train_files=[ppo_world["train"]],
        eval_files=[ppo_world["test"]],
    )
    line = read_jsonl(out / "verifier" / "eval.jsonl")[-1]
    assert line["gold_kind"] == "verifier"
    assert {s["gold"] for s in line["samples"]} <= {0.0, 1.0}
    assert verified["steps"] == 1


def test_eval_prompts_never_train(ppo_world, tmp_path):
    both = [ppo_world["train"], ppo_world["test"]]
    msgs, _, excluded = read_prompts(
        both,
        exclude={
            json.dumps([[m["role"], m["content"]] for m in r["prompt"]])
            for r in read_jsonl(ppo_world["test"])
        },
    )
    assert excluded == 12 and len(msgs) == 40


def test_cli_help_and_bad_input(ppo_world, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": 3}\n')
    rc = main(
        [
            "--policy",
            str(ppo_world["policy"]),
            "--members",
            str(ppo_world["rms"][0]),
            "--objective",
            "single",
            "--train-prompts",
            str(bad),
            "--eval-prompts",
            str(ppo_world["test"]),
            "--seed",
            "0",
            "--out",
            str(tmp_path / "x"),
            "--device",
            "cpu",
            "--steps",
            "1",
        ]
    )
    assert rc == 2
    assert "bad.jsonl" in capsys.readouterr().err


def test_reference_and_rms_load_in_a_lower_precision(ppo_world):
    """GPU memory: a bf16 reference and bf16 RMs beside the float32 policy."""
    cfg = replace(QUICK, ref_dtype="bfloat16", rm_dtype="bfloat16", steps=1)
    run, _ = build_run(
        str(ppo_world["policy"]),
        [str(p) for p in ppo_world["rms"][:2]],
        ["a", "b"],
        objective="mean",
        gold_model=str(ppo_world["rms"][2]),
        train_files=[ppo_world["train"]],
        eval_files=[ppo_world["test"]],
        seed=0,
        cfg=cfg,
    )
    assert run.ref.dtype == torch.bfloat16
    assert {s.model.dtype for s in run.proxy.scorers} == {torch.bfloat16}
    assert run.gold.scorer.model.dtype == torch.bfloat16
    assert next(run.policy.parameters()).dtype == torch.float32
    stats = run.ppo_step()
    # the bf16 reference differs from the float32 policy by rounding only
    assert 0 <= stats.kl < 0.5 and np.isfinite(stats.reward)
