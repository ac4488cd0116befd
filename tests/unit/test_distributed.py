"""Multi-process RM training launched as the rules launch it, on 2 CPU processes.

Each 2-process run is ``accelerate launch --config_file accelerate/<s>.yaml
--num_machines 1 --num_processes 2 -m pipelines.train_rm ...`` (gloo on CPU)
and is compared with ``python -m pipelines.train_rm`` in one process with the
same global batch (2 x 4 pairs == 1 x 8 pairs, same seed). The DeepSpeed runs
(ZeRO-2, ZeRO-3) are skipped when ``deepspeed`` is not importable; on CPU it
runs on DeepSpeed's CPU accelerator (its first run JIT-compiles a small shared
memory op into ~/.cache/torch_extensions).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pipelines.build_prefs import BuildPrefsConfig, build_prefs
from pipelines.common.io import read_jsonl
from pipelines.common.modeling import (
    encode_conversations,
    init_tiny_causal_lm,
    init_tiny_reward_model,
    score_ids,
    train_tokenizer,
)
from pipelines.common.training import configure_deepspeed, latest_checkpoint

ROOT = Path(__file__).resolve().parents[2]
logger = logging.getLogger(__name__)

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
needs_deepspeed = pytest.mark.skipif(
    not HAS_DEEPSPEED,
    reason="deepspeed not installed (pip install deepspeed: runs on CPU too)",
)
STRATEGIES = [
    "ddp",
    pytest.param("zero2", marks=needs_deepspeed),
    pytest.param("zero3", marks=needs_deepspeed),
]
# (strategy, gradient accumulation steps) of the 2-process runs: 2 x 4 pairs,
# and 2 x 2 pairs x 2 micro-batches (the accumulation path: DDP's no_sync,
# DeepSpeed's boundary on the last micro-batch)
RUNS = [
    pytest.param(s, accumulation, marks=m, id=f"{s}-accum{accumulation}")
    for s, m in [("ddp", ()), ("zero2", needs_deepspeed), ("zero3", needs_deepspeed)]
    for accumulation in (1, 2)
]

N_TRAIN = 64  # pairs; a multiple of the global batch, so no top-up differs
GLOBAL_BATCH = 8
STEPS = N_TRAIN // GLOBAL_BATCH  # one epoch, lr 5e-4 (the stage default)
# The flags every run shares. adam_epsilon 1e-6 instead of 1e-8: an element
# whose gradient is ~0 (an embedding row of a token seen once) otherwise moves
# by ~lr * g / |g| per step, so float rounding alone can flip it by ~lr
# (measured up to 5.5e-4 with 1e-8); with 1e-6 such updates are ~lr * g / eps
# and rounding stays rounding. It also makes AdamW less scale-invariant, so a
# gradient scaled twice by the accumulation steps shows (below).
FLAGS = ["--seed", "3", "--epochs", "1", "--adam-epsilon", "1e-6"]
FLAGS += ["--device", "cpu", "--log-every", "1"]

# Tolerances of a 2-process run against the 1-process run with the same global
# batch. Only the order of float32 reductions differs (gloo averages the two
# processes' gradients where one process sums all 8 pairs at once; ZeRO also
# reduce-scatters flat buckets; accumulation adds micro-batch gradients):
# ~1e-7 relative per operation. Measured over seeds 0-4 x {ddp, zero2, zero3}
# x {1, 2 micro-batches} (30 runs of 8 steps): max |weight diff| 3e-6..7.8e-6;
# per tensor ||w1 - w2|| / ||w1 - w_base|| 7e-5..1.7e-4; max |score diff|
# 7e-6..6.7e-5 on held-out rewards whose spread (std) is 0.06..0.23. The
# bounds below leave 13x, 12x and 7x margin. Faults seen when injected on
# purpose: the DeepSpeed boundary on every micro-batch (two optimiser steps per
# step): per-tensor 1.2, scores 1.05; the loss divided again by the
# accumulation steps (scale_wrt_gas): per-tensor 0.087, scores 0.012, weights
# 1.8e-3; ZeRO-3 saved without the gather: empty tensors.
WEIGHT_ATOL = 1e-4
TENSOR_RTOL = 2e-3
SCORE_ATOL = 5e-4


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> SimpleNamespace:
    """64 train / 32 held-out general pairs, a tokenizer and a random base LM."""
    root = tmp_path_factory.mktemp("dist")
    train, test = root / "train.jsonl", root / "test.jsonl"
    build_prefs(
        "general",
        [train, test],
        None,
        cfg=BuildPrefsConfig(sizes={"train": N_TRAIN, "test": 32}, workers=1),
    )
    texts = [
        m["content"]
        for path in (train, test)
        for rec in read_jsonl(path)
        for key in ("chosen", "rejected")
        for m in rec[key]
    ]
    tok = train_tokenizer(texts, vocab_size=1024)
    base = root / "base"
    init_tiny_causal_lm(tok, seed=0).save_pretrained(base)
    tok.save_pretrained(base)
    return SimpleNamespace(root=root, train=train, test=test, base=base)


def _cmd(
    tiny: SimpleNamespace,
    strategy: str | None,
    out: Path,
    *extra: str,
    accumulation: int = 1,
) -> list[str]:
    """The command a rule runs: plain python (1 GPU) or accelerate launch (N)."""
    if strategy is None:
        launcher = [sys.executable, "-m", "pipelines.train_rm"]
        nproc = 1
    else:
        launcher = [sys.executable, "-m", "accelerate.commands.launch"]
        launcher += ["--config_file", f"accelerate/{strategy}.yaml"]
        launcher += ["--num_machines", "1", "--num_processes", "2"]
        launcher += ["-m", "pipelines.train_rm"]
        nproc = 2
    batch = GLOBAL_BATCH // (nproc * accumulation)
    args = ["--pairs", str(tiny.train), "--base", str(tiny.base), "--out", str(out)]
    args += ["--batch-size", str(batch)]
    args += ["--gradient-accumulation-steps", str(accumulation)]
    return [*launcher, *args, *FLAGS, *extra]


# A run takes ~30 s here (2 cores); a DeepSpeed run that has not finished in
# RUN_TIMEOUT_S is hung, not slow. The first DeepSpeed run JIT-compiles its
# shared-memory op (the ``deepspeed_op`` fixture does that alone, first).
RUN_TIMEOUT_S = 300
HUNG: list[str] = []  # the first run that hung; later DeepSpeed runs fail fast


def _stop_group(proc: subprocess.Popen) -> tuple[str, str]:
    """Stop a hung launch and every rank it started, with their tracebacks.

    The launch runs in its own session (process group): SIGABRT makes each
    Python process dump every thread's stack (PYTHONFAULTHANDLER), SIGKILL
    then ends whatever is left, so no orphaned rank holds a port, a
    shared-memory segment or the JIT build lock into the next test.
    """
    for sig, wait in ((signal.SIGABRT, 15), (signal.SIGKILL, 30)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            return proc.communicate(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.communicate()


def _run(cmd: list[str], timeout: float = RUN_TIMEOUT_S) -> str:
    """Run a launch to completion; a hang fails with every rank's stack."""
    deepspeed = any(f"accelerate/zero{k}.yaml" in cmd for k in (2, 3))
    if deepspeed and HUNG:
        pytest.fail(f"an earlier DeepSpeed run hung ({HUNG[0]}); see that failure")
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**_env(), "PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        out, err = _stop_group(proc)
        if deepspeed:
            HUNG.append(" ".join(cmd[-30:]))
        pytest.fail(
            f"no result in {timeout:.0f} s, stopped; the stacks of the processes"
            f" (faulthandler) and the end of the log follow\n{(out + err)[-20000:]}"
        )
    finally:
        if proc.poll() is None:
            _stop_group(proc)
    log = out + err
    assert proc.returncode == 0, log[-5000:]
    return log


@pytest.fixture(scope="module")
def deepspeed_op() -> None:
    """Build DeepSpeed's CPU shared-memory op once, alone, before any run.

    Every DeepSpeed process on the CPU loads it at startup (JIT, g++ and
    ninja, into ~/.cache/torch_extensions, under a lock file). Building it
    here first keeps the compile out of the runs' timeouts and reports a
    failed or stuck build as what it is.
    """
    if not HAS_DEEPSPEED:
        return
    code = "from deepspeed.comm.torch import build_shm_op; print(build_shm_op())"
    try:
        _run([sys.executable, "-c", code], timeout=900)
    except BaseException:
        HUNG.append("building the shared-memory op")
        raise


@pytest.fixture(scope="module")
def trained(tiny, deepspeed_op) -> Callable[..., Path]:
    """``get(strategy, accumulation)``: that run's output (None: one process)."""
    done: dict[tuple[str | None, int], Path] = {}

    def get(strategy: str | None, accumulation: int = 1) -> Path:
        key = (strategy, accumulation)
        if key not in done:
            out = tiny.root / f"rm-{strategy or 'single'}-accum{accumulation}"
            _run(_cmd(tiny, strategy, out, accumulation=accumulation))
            done[key] = out
        return done[key]

    return get


def _scores(out: Path, tiny: SimpleNamespace) -> np.ndarray:
    """Rewards of the held-out chosen then rejected sides."""
    model = AutoModelForSequenceClassification.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    recs = read_jsonl(tiny.test)
    seqs = []
    for key in ("chosen", "rejected"):
        seqs += encode_conversations(tok, [r[key] for r in recs], max_length=512).ids
    return score_ids(model, seqs, pad_id=tok.pad_token_id)


def _tensors(out: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}


# ------------------------------------------------------------ launcher configs


def test_launcher_configs_carry_what_the_code_relies_on():
    from accelerate.commands.config.config_args import ClusterConfig

    for name, kind in [
        ("ddp", "MULTI_GPU"),
        ("zero2", "DEEPSPEED"),
        ("zero3", "DEEPSPEED"),
    ]:
        path = ROOT / "accelerate" / f"{name}.yaml"
        cfg = ClusterConfig.from_yaml_file(str(path))  # accelerate's own parser
        raw = yaml.safe_load(path.read_text())
        assert cfg.distributed_type.value == kind
        assert cfg.num_machines == 1
        assert "num_processes" not in raw  # the rule passes one per GPU
        assert cfg.mixed_precision == "no"  # --dtype decides (see make_accelerator)
        assert cfg.main_process_port == 0  # a free port: jobs can share a node
        ds = raw.get("deepspeed_config", {})
        # the stage config's flags decide these (configure_deepspeed)
        assert not {"gradient_accumulation_steps", "gradient_clipping"} & set(ds)
        assert "deepspeed_config_file" not in ds
        if kind == "DEEPSPEED":
            assert ds["zero_stage"] == int(name[-1])
            assert ds["zero3_init_flag"] is False
    zero3 = yaml.safe_load((ROOT / "accelerate" / "zero3.yaml").read_text())
    assert zero3["deepspeed_config"]["zero3_save_16bit_model"] is True


def replace_ns(ns: SimpleNamespace, **changes: object) -> SimpleNamespace:
    return SimpleNamespace(**{**vars(ns), **changes})


def _fake_accelerator(plugin, nproc: int = 2) -> SimpleNamespace:
    return SimpleNamespace(
        state=SimpleNamespace(deepspeed_plugin=plugin),
        num_processes=nproc,
        gradient_accumulation_steps=1,
    )


def test_configure_deepspeed_takes_batch_accumulation_and_clipping_from_config(
    caplog,
):
    from accelerate.utils import DeepSpeedPlugin

    # as the launcher builds it from zero3.yaml (no DeepSpeed import needed)
    plugin = DeepSpeedPlugin(
        zero_stage=3, zero3_save_16bit_model=True, zero3_init_flag=False
    )
    assert plugin.deepspeed_config["gradient_clipping"] == "auto"  # -> 1.0 at prepare
    acc = _fake_accelerator(plugin)
    cfg = SimpleNamespace(batch_size=4, gradient_accumulation_steps=3, max_grad_norm=0)
    configure_deepspeed(acc, cfg)
    ds = plugin.deepspeed_config
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 4 * 3 * 2
    assert ds["gradient_clipping"] == 0.0  # off, as max_grad_norm 0 is in the loop
    assert acc.gradient_accumulation_steps == 3

    # a value the launcher did set is overridden, with a warning
    plugin = DeepSpeedPlugin(zero_stage=2, gradient_clipping=0.5)
    with caplog.at_level(logging.WARNING):
        configure_deepspeed(_fake_accelerator(plugin), replace_ns(cfg, max_grad_norm=1))
    assert plugin.deepspeed_config["gradient_clipping"] == 1.0
    assert "gradient_clipping=0.5" in caplog.text

    # ZeRO-3 that could not gather the weights on save is refused up front
    plugin = DeepSpeedPlugin(zero_stage=3, zero3_save_16bit_model=False)
    with pytest.raises(ValueError, match="zero3_save_16bit_model"):
        configure_deepspeed(_fake_accelerator(plugin), cfg)


def test_dtype_flag_wins_over_the_launcher_mixed_precision():
    # accelerate launch exports the file's mixed_precision as
    # ACCELERATE_MIXED_PRECISION; the Accelerator argument must win over it
    code = (
        "from accelerate.state import AcceleratorState\n"
        "from pipelines.common.training import make_accelerator\n"
        "print(make_accelerator('cpu', 'float32').mixed_precision)\n"
        "AcceleratorState._reset_state(True)\n"
        "print(make_accelerator('cpu', 'bfloat16').mixed_precision)\n"
    )
    env = {**_env(), "ACCELERATE_MIXED_PRECISION": "fp16"}
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["no", "bf16"]


# ------------------------------------------------------------ 2-process runs


@pytest.mark.parametrize(("strategy", "accumulation"), RUNS)
def test_two_processes_match_one_process(tiny, trained, strategy, accumulation):
    single, multi = trained(None), trained(strategy, accumulation)
    a, b = _tensors(single), _tensors(multi)
    # complete weights: every tensor whole (ZeRO-3 shards would be empty or
    # flat pieces), none missing or extra
    assert a.keys() == b.keys()
    for key in a:
        assert b[key].shape == a[key].shape and b[key].numel() > 0, key
        assert b[key].dtype == a[key].dtype, key
    base = _tensors(tiny.base)  # the LM: every tensor but the new score head
    weight_diff = max((a[k] - b[k]).abs().max().item() for k in a)
    tensor_diff = max(
        (
            (a[k] - b[k]).norm() / (a[k] - base.get(k, torch.zeros_like(a[k]))).norm()
        ).item()
        for k in a
    )
    s1, s2 = _scores(single, tiny), _scores(multi, tiny)
    score_diff = float(np.abs(s1 - s2).max())
    logger.warning(
        "%s, %d micro-batches vs 1 process: max |weight diff| %.3g, worst"
        " per-tensor relative diff %.3g, max |score diff| %.3g (score std %.3g)",
        strategy,
        accumulation,
        weight_diff,
        tensor_diff,
        score_diff,
        s1.std(),
    )
    assert weight_diff < WEIGHT_ATOL
    assert tensor_diff < TENSOR_RTOL
    assert score_diff < SCORE_ATOL
    # the same pairwise ordering, hence accuracy, except where a margin is
    # within rounding (|m1| <= the observed 2 x score diff; with this seed one
    # pair of 32 has a margin of 5e-7)
    n = len(s1) // 2
    m1, m2 = s1[:n] - s1[n:], s2[:n] - s2[n:]
    close = np.abs(m1) <= 2 * score_diff
    assert close.sum() <= 2, np.sort(np.abs(m1))[:4]
    np.testing.assert_array_equal(m1[~close] > 0, m2[~close] > 0)
    assert abs((m1 > 0).mean() - (m2 > 0).mean()) <= close.mean()

    run = json.loads((multi / "run_config.json").read_text())
    metrics = json.loads((multi / "metrics.json").read_text())
    assert run["num_processes"] == 2
    assert metrics["steps"] == STEPS
    ref = json.loads((single / "metrics.json").read_text())
    np.testing.assert_allclose(
        [e["loss"] for e in metrics["loss_curve"]],
        [e["loss"] for e in ref["loss_curve"]],
        rtol=1e-3,
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sigterm_then_resume_equals_uninterrupted(tiny, trained, strategy, tmp_path):
    reference = trained(strategy)
    if strategy != "ddp" and HUNG:
        pytest.fail(f"an earlier DeepSpeed run hung ({HUNG[0]}); see that failure")
    out, ckpt = tmp_path / "resumed", tmp_path / "ckpt"
    cmd = _cmd(tiny, strategy, out, "--checkpoint-dir", str(ckpt))
    cmd += ["--checkpoint-every", "2"]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**_env(), "PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            m = re.search(rf"step (\d+)/{STEPS} ", line)
            if m and int(m.group(1)) >= 3:
                # what Slurm or Snakemake sends the job: torchrun's agent
                # forwards it to the workers (and gives them 30 s)
                proc.send_signal(signal.SIGTERM)
                break
        rest = proc.communicate(timeout=RUN_TIMEOUT_S)[1]
    except subprocess.TimeoutExpired:
        rest = _stop_group(proc)[1]
        pytest.fail(
            f"no exit {RUN_TIMEOUT_S} s after SIGTERM; stacks:\n{rest[-20000:]}"
        )
    finally:
        if proc.poll() is None:
            _stop_group(proc)
    log = "".join(lines) + rest
    # the workers exit 143; the launcher reports the signal as a failure
    assert proc.returncode != 0, log[-5000:]
    assert log.count("SIGTERM received") == 2, log[-5000:]  # both workers
    assert not out.exists()
    found = latest_checkpoint(ckpt)
    assert found is not None and len(list(ckpt.iterdir())) == 1, list(ckpt.iterdir())
    stopped_at = int(found.name.split("-")[1])
    assert 3 <= stopped_at < STEPS
    if strategy != "ddp":  # DeepSpeed: accelerate save_state, shards per process
        assert json.loads((found / "state.json").read_text())["format"] == (
            "accelerate-deepspeed"
        )
        assert (found / "random_states_1.pkl").is_file()

    log = _run(cmd)
    assert f"resumed from {found}" in log
    assert not ckpt.exists()  # removed after success
    saved = json.loads((out / "metrics.json").read_text())
    ref = json.loads((reference / "metrics.json").read_text())
    assert saved["resumed_from_step"] == stopped_at
    assert [e["step"] for e in saved["loss_curve"]] == list(range(1, STEPS + 1))
    np.testing.assert_allclose(
        [e["loss"] for e in saved["loss_curve"]],
        [e["loss"] for e in ref["loss_curve"]],
        rtol=1e-5,
    )
    a, b = _tensors(reference), _tensors(out)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)


@needs_deepspeed
def test_zero3_lora_is_merged_from_whole_weights(tiny, deepspeed_op, tmp_path):
    # LoRA under ZeRO-3: the adapters and the frozen base are all shards until
    # gathered; merge_and_unload must run on the whole tensors. No dropout, so
    # the 1-process run is the reference (dropout masks depend on the count).
    lora = ["--lora", "true", "--lora-dropout", "0", "--keep-adapter", "true"]
    single, multi = tmp_path / "single", tmp_path / "zero3"
    _run(_cmd(tiny, None, single, *lora))
    _run(_cmd(tiny, "zero3", multi, *lora))
    a, b = _tensors(single), _tensors(multi)
    assert a.keys() == b.keys()
    assert not any("lora" in k for k in b)  # merged
    for key in a:
        assert b[key].shape == a[key].shape and b[key].numel() > 0, key
    base = _tensors(tiny.base)
    merged = [k for k in a if k in base and not torch.equal(a[k], base[k])]
    assert merged  # the adapters did change the base weights they sit on
    for key in merged:
        moved = (a[key] - base[key]).norm()
        assert (a[key] - b[key]).norm() < TENSOR_RTOL * moved, key
    s1, s2 = _scores(single, tiny), _scores(multi, tiny)
    assert np.abs(s1 - s2).max() < SCORE_ATOL
    with safe_open(str(multi / "adapter" / "adapter_model.safetensors"), "pt") as fh:
        assert all(fh.get_tensor(k).numel() > 0 for k in fh.keys())


def test_ppo_under_ddp_counts_every_process_rollouts(tiny, tmp_path):
    """PPO with accelerate/ddp.yaml: each of 2 processes draws its own rollouts
    (episodes count both), gradients are averaged, rank 0 alone writes."""
    tok = AutoTokenizer.from_pretrained(tiny.base)
    torch.manual_seed(1)
    rm = tmp_path / "rm"
    init_tiny_reward_model(tok).save_pretrained(rm)
    tok.save_pretrained(rm)
    out, ckpt = tmp_path / "ppo", tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    cmd += ["--config_file", "accelerate/ddp.yaml", "--num_machines", "1"]
    cmd += ["--num_processes", "2", "-m", "pipelines.train_ppo"]
    cmd += ["--policy", str(tiny.base), "--members", str(rm), str(rm)]
    cmd += ["--objective", "mean", "--gold-model", str(rm), "--seed", "0"]
    cmd += ["--train-prompts", str(tiny.train), "--eval-prompts", str(tiny.test)]
    cmd += ["--out", str(out), "--checkpoint-dir", str(ckpt), "--device", "cpu"]
    cmd += ["--steps", "3", "--batch-size", "2", "--minibatch-size", "1"]
    cmd += ["--ppo-epochs", "1", "--max-new-tokens", "6"]
    cmd += ["--eval-max-new-tokens", "6", "--eval-every", "2", "--eval-size", "4"]
    _run(cmd)
    lines = read_jsonl(out / "eval.jsonl")
    assert [line["step"] for line in lines] == [0, 2, 3]
    assert [line["episodes"] for line in lines] == [0, 8, 12]  # 2 rollouts x 2
    config = json.loads((out / "policy" / "run_config.json").read_text())
    assert config["num_processes"] == 2
    assert not ckpt.exists()
