"""label_gold: the policy's own replies, labelled by a gold RM, as pair files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pipelines.build_prefs import BuildPrefsConfig, build_prefs
from pipelines.common.cli import UserError
from pipelines.common.io import read_jsonl
from pipelines.common.modeling import (
    TinyArch,
    init_tiny_causal_lm,
    init_tiny_reward_model,
    train_tokenizer,
)
from pipelines.common.records import read_pairs
from pipelines.label_gold import LabelGoldConfig, label_gold

ROOT = Path(__file__).resolve().parents[2]
ARCH = TinyArch(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
)
SMALL = {
    "sizes": {"train": 6, "test": 2},
    "max_new_tokens": 12,
    "batch_size": 8,
    "device": "cpu",
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Math and general train/test pairs, a random policy and a random gold RM."""
    root = tmp_path_factory.mktemp("label")
    pairs, tests, texts = [], [], []
    for domain in ("general", "math"):
        train, test = root / domain / "train.jsonl", root / domain / "test.jsonl"
        cfg = BuildPrefsConfig(sizes={"train": 12, "test": 4}, sft_size=0, workers=1)
        build_prefs(domain, [train, test], None, cfg=cfg)
        pairs.append(train)
        tests.append(test)
        for path in (train, test):
            for rec in read_pairs(path):
                texts += [m["content"] for m in rec["chosen"] + rec["rejected"]]
    tok = train_tokenizer(texts, vocab_size=512)
    policy, gold = root / "policy", root / "gold"
    init_tiny_causal_lm(tok, seed=0, arch=ARCH).save_pretrained(policy)
    tok.save_pretrained(policy)
    torch.manual_seed(1)
    rm = init_tiny_reward_model(tok, arch=ARCH)
    with torch.no_grad():  # a head with spread, so gold scores differ clearly
        rm.score.weight.normal_(0, 1.0)
    rm.save_pretrained(gold)
    tok.save_pretrained(gold)
    return {
        "root": root,
        "pairs": pairs,
        "tests": tests,
        "policy": policy,
        "gold": gold,
    }


def _run(world, out_dir: Path, **cfg) -> tuple[dict, dict[str, list[dict]]]:
    outs = [out_dir / "train.jsonl", out_dir / "test.jsonl"]
    summary = label_gold(
        str(world["policy"]),
        world["pairs"],
        outs,
        seed=0,
        cfg=LabelGoldConfig(**{**SMALL, **cfg}),
        gold_model=str(world["gold"]),
        exclude=world["tests"],
    )
    return summary, {p.stem: read_jsonl(p) for p in outs}


def _gold_scores(gold: Path, convs: list[list[dict]]) -> np.ndarray:
    """The gold RM's scores by a plain transformers forward pass, one at a time."""
    tok = AutoTokenizer.from_pretrained(gold)
    model = AutoModelForSequenceClassification.from_pretrained(gold).eval()
    out = []
    with torch.no_grad():
        for conv in convs:
            text = tok.apply_chat_template(conv, tokenize=False)
            ids = tok(text, add_special_tokens=False, return_tensors="pt")
            out.append(model(**ids).logits[0, 0].item())
    return np.asarray(out)


def test_labels_agree_with_the_gold_rm_scored_independently(world, tmp_path):
    summary, splits = _run(world, tmp_path)
    records = splits["train"] + splits["test"]
    # 2 domains x (6 + 2) prompts, one pair each, less identical replies
    assert summary["pairs"] == {s: len(r) for s, r in splits.items()}
    assert len(records) == 16 - summary["empty"] - summary["identical"] - summary["tie"]
    assert len(splits["train"]) >= 10 and splits["test"]
    chosen = _gold_scores(world["gold"], [r["chosen"] for r in records])
    rejected = _gold_scores(world["gold"], [r["rejected"] for r in records])
    assert (chosen > rejected).all()  # noise 0: the gold's preferred side wins
    recorded = [r["metadata"]["gold"] for r in records]
    np.testing.assert_allclose([g["chosen_score"] for g in recorded], chosen, atol=1e-4)
    np.testing.assert_allclose(
        [g["prob_chosen"] for g in recorded], 1 / (1 + np.exp(rejected - chosen)), 1e-3
    )
    assert not any(g["flipped"] for g in recorded)
    assert {g["kind"] for g in recorded} == {f"model:{world['gold']}"}
    # the standard format, loadable as any trainset; prompts never a test prompt
    path = tmp_path / "train.jsonl"
    assert len(read_pairs(path)) == len(splits["train"])  # validates each row
    banned = {json.dumps(r["prompt"]) for t in world["tests"] for r in read_pairs(t)}
    assert not any(json.dumps(r["prompt"]) in banned for r in records)
    train_prompts = {json.dumps(r["prompt"]) for r in splits["train"]}
    assert not train_prompts & {json.dumps(r["prompt"]) for r in splits["test"]}
    assert {r["subset"] for r in records} == {"general", "math"}


def test_noise_flips_that_share_and_flipped_pairs_prefer_the_lower_gold(
    world, tmp_path
):
    summary, splits = _run(world, tmp_path, noise=0.5)
    records = splits["train"] + splits["test"]
    flipped = [r["metadata"]["gold"]["flipped"] for r in records]
    assert summary["flipped"] == sum(flipped) == round(0.5 * len(records))
    chosen = _gold_scores(world["gold"], [r["chosen"] for r in records])
    rejected = _gold_scores(world["gold"], [r["rejected"] for r in records])
    np.testing.assert_array_equal(chosen < rejected, flipped)


def test_too_few_prompts_outside_the_excluded_ones_is_a_clear_error(world, tmp_path):
    with pytest.raises(UserError, match=r"train\.jsonl: 12 prompts .* need 20"):
        _run(world, tmp_path, sizes={"train": 15, "test": 5})


def test_cli_writes_both_splits(world, tmp_path):
    out = [tmp_path / "train.jsonl", tmp_path / "test.jsonl"]
    cmd = [sys.executable, "-m", "pipelines.label_gold"]
    cmd += ["--policy", str(world["policy"]), "--gold-model", str(world["gold"])]
    cmd += [
        "--pairs",
        *map(str, world["pairs"]),
        "--exclude",
        *map(str, world["tests"]),
    ]
    cmd += ["--out", *map(str, out), "--seed", "0", "--device", "cpu"]
    cmd += ["--sizes", '{"train": 3, "test": 1}', "--max-new-tokens", "6"]
    res = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert all(p.is_file() and read_jsonl(p) for p in out)
