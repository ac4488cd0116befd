"""RM stage: BT training (full and LoRA), seeding, saving, truncation, resume."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pipelines.build_prefs import (
    PADDING_SENTENCES,
    POLITE_OPENERS,
    BuildPrefsConfig,
    build_prefs,
)
from pipelines.common.chat_format import CHAT_TEMPLATE
from pipelines.common.cli import UserError, dataclass_from_args
from pipelines.common.io import read_jsonl, write_jsonl
from pipelines.common.modeling import (
    EOS,
    encode_conversations,
    load_reward_model,
    load_tokenizer,
    score_ids,
    train_tokenizer,
)
from pipelines.common.rm_data import (
    SubsetSizeError,
    subset_indices,
    without_spurious,
)
from pipelines.common.seeding import seed_everything
from pipelines.common.training import (
    cosine_with_warmup,
    epoch_order,
    latest_checkpoint,
    micro_batches,
)
from pipelines.train_rm import (
    TrainRMConfig,
    bt_loss_sum,
    fit_reward_model,
    load_pair_data,
    make_parser,
    save_reward_model,
    train_rm,
)
from pipelines.train_sft import TrainSFTConfig, train_sft

from .bos_tokenizers import save_bos_tokenizer

ROOT = Path(__file__).resolve().parents[2]
logger = logging.getLogger(__name__)

# a few steps of 4 pairs: enough to move every weight, seconds on 2 cores
QUICK = TrainRMConfig(max_steps=3, batch_size=4, log_every=1, device="cpu")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """general + math pairs (train 300 / test 100 each) and general SFT data."""
    root = tmp_path_factory.mktemp("rm_data")
    for domain in ("general", "math"):
        cfg = BuildPrefsConfig(
            sizes={"train": 300, "test": 100},
            sft_size=300,
            politeness_rate=0.3,  # the workflow's default spurious features
            length_padding_rate=0.3,
            workers=1,
        )
        build_prefs(
            domain,
            [root / domain / "train.jsonl", root / domain / "test.jsonl"],
            root / "sft" / domain / "train.jsonl" if domain == "general" else None,
            cfg=cfg,
        )
    # a small mixed file for the quick tests (12 general + 12 math)
    small = read_jsonl(root / "general" / "train.jsonl")[:12]
    small += read_jsonl(root / "math" / "train.jsonl")[:12]
    write_jsonl(root / "small.jsonl", small)
    return root


@pytest.fixture(scope="session")
def sft_base(data_dir, tmp_path_factory) -> Path:
    """A tiny GPT-NeoX SFT'd on the general domain (the RM base)."""
    texts = []
    for path in data_dir.rglob("train.jsonl"):
        for rec in read_jsonl(path):
            for key in ("messages", "chosen", "rejected"):
                texts += [m["content"] for m in rec.get(key, [])]
    work = tmp_path_factory.mktemp("rm_models")
    train_tokenizer(texts, vocab_size=4096).save_pretrained(work / "tokenizer")
    out = work / "sft_general"
    train_sft(
        [data_dir / "sft" / "general" / "train.jsonl"],
        out,
        base=None,
        tokenizer=str(work / "tokenizer"),
        seed=0,
        cfg=TrainSFTConfig(epochs=4, log_every=20, device="cpu"),
    )
    return out


def _pair_ids(tok, path: Path, max_length: int = 512):
    recs = read_jsonl(path)
    chosen = encode_conversations(
        tok, [r["chosen"] for r in recs], max_length=max_length
    )
    rejected = encode_conversations(
        tok, [r["rejected"] for r in recs], max_length=max_length
    )
    return chosen.ids, rejected.ids


def _accuracy(model, tok, path: Path) -> float:
    chosen, rejected = _pair_ids(tok, path)
    scores = score_ids(model, chosen + rejected, pad_id=tok.pad_token_id, batch_size=32)
    n = len(chosen)
    return float(np.mean(scores[:n] > scores[n:]))


def _scores(model, tok, path: Path) -> np.ndarray:
    chosen, rejected = _pair_ids(tok, path)
    return score_ids(model, chosen + rejected, pad_id=tok.pad_token_id)


# ---------------------------------------------------------------- loop pieces


def test_epoch_order_is_a_seeded_function_of_seed_and_epoch():
    a = epoch_order(50, 0, 0)
    assert sorted(a) == list(range(50))
    assert a == epoch_order(50, 0, 0)
    assert a != epoch_order(50, 0, 1) and a != epoch_order(50, 1, 0)
    lengths = [i % 7 * 10 + i for i in range(50)]
    g = epoch_order(50, 3, 2, lengths=lengths, global_batch=4, megabatch=3)
    assert sorted(g) == list(range(50))
    assert g == epoch_order(50, 3, 2, lengths=lengths, global_batch=4, megabatch=3)
    # each full batch comes from one sorted megabatch: spread of lengths in a
    # batch is far below the spread of a random batch
    spread = np.mean(
        [np.ptp([lengths[i] for i in g[s : s + 4]]) for s in range(0, 48, 4)]
    )
    rand = np.mean(
        [np.ptp([lengths[i] for i in a[s : s + 4]]) for s in range(0, 48, 4)]
    )
    assert spread < rand


def test_micro_batches_shard_and_top_up():
    order = list(range(10))
    assert micro_batches(
        order, 0, global_batch=8, batch_size=2, process_index=0, num_processes=1
    ) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert micro_batches(
        order, 1, global_batch=8, batch_size=2, process_index=0, num_processes=1
    ) == [[8, 9]]
    # two processes: contiguous halves; a short last batch is topped up
    assert micro_batches(
        order, 0, global_batch=4, batch_size=2, process_index=1, num_processes=2
    ) == [[2, 3]]
    last = [
        micro_batches(
            list(range(9)),
            2,
            global_batch=4,
            batch_size=2,
            process_index=p,
            num_processes=2,
        )
        for p in (0, 1)
    ]
    assert last == [[[8]], [[0]]]


def test_cosine_schedule_with_warmup():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = cosine_with_warmup(opt, total_steps=10, warmup_steps=2, min_lr_ratio=0.1)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(1.0)
    assert all(x >= y for x, y in zip(lrs[2:], lrs[3:], strict=False))
    assert lrs[-1] > 0.1 and opt.param_groups[0]["lr"] == pytest.approx(0.1)


# ---------------------------------------------------------------- training


def test_bt_loss_formula_and_interleaving():
    class Stub(torch.nn.Module):
        def forward(self, input_ids, attention_mask, use_cache):
            return SimpleNamespace(logits=input_ids[:, :1].float())

    # rows [c1, r1, c2, r2, c3, r3]; the first token stands in for the reward
    rewards = torch.tensor([2.0, 1.0, -1.0, 0.5, 3.0, 3.0])
    batch = {"input_ids": rewards[:, None], "attention_mask": torch.ones(6, 1)}
    for l2 in (0.0, 0.001):
        loss, stats = bt_loss_sum(Stub(), batch, l2_coef=l2)
        rc, rr = rewards.numpy()[0::2], rewards.numpy()[1::2]
        ref = np.log1p(np.exp(-(rc - rr))) + l2 * 0.5 * (rc**2 + rr**2)
        assert loss.item() == pytest.approx(ref.sum(), rel=1e-6)
        assert stats["accuracy"].item() == 1  # strict: the tie counts as wrong
        assert stats["margin"].item() == pytest.approx((rc - rr).sum())


def test_full_finetuning_changes_every_trainable_parameter(data_dir, sft_base):
    pairs = [data_dir / "small.jsonl"]
    seed_everything(0)  # the same head init as inside the runs
    before = dict(load_reward_model(sft_base).named_parameters())
    # With the OA regulariser every parameter gets a gradient.
    fit = fit_reward_model(
        pairs, str(sft_base), seed=0, cfg=replace(QUICK, l2_coef=1e-3)
    )
    after = dict(fit.model.named_parameters())
    assert after.keys() == before.keys()
    trainable = [n for n, p in after.items() if p.requires_grad]
    assert len(trainable) == len(after) and "score.weight" in trainable
    unchanged = [n for n in trainable if torch.equal(after[n], before[n].detach())]
    assert not unchanged
    assert fit.metrics["steps"] == 3 and fit.metrics["n_pairs"] == 24
    # Pure BT depends on r_c - r_r only, and the final norm's bias adds the
    # same w.b to both rewards: it alone gets no gradient (and no decay).
    fit = fit_reward_model(pairs, str(sft_base), seed=0, cfg=QUICK)
    after = dict(fit.model.named_parameters())
    unchanged = [n for n in trainable if torch.equal(after[n], before[n].detach())]
    assert unchanged == ["gpt_neox.final_layer_norm.bias"]


def test_lora_trains_only_adapters_and_head(data_dir, sft_base):
    cfg = replace(QUICK, lora=True, learning_rate=1e-3)
    fit = fit_reward_model([data_dir / "small.jsonl"], str(sft_base), seed=0, cfg=cfg)
    seed_everything(0)
    base = dict(load_reward_model(sft_base).named_parameters())
    params = dict(fit.model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    # every linear layer of every block carries an adapter
    for layer in range(4):
        for mod in ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"):
            assert any(
                f"layers.{layer}." in n and f"{mod}.lora_B" in n for n in trainable
            )
    for name in trainable:
        if "lora_B" in name:
            assert params[name].abs().sum() > 0, name  # initialised at zero
    head = params["base_model.model.score.modules_to_save.default.weight"]
    original = params["base_model.model.score.original_module.weight"]
    assert not original.requires_grad and not torch.equal(head, original)
    # frozen weights equal the base model's
    for name, value in params.items():
        if name in trainable or "original_module" in name:
            continue
        key = name.removeprefix("base_model.model.").replace(".base_layer", "")
        assert torch.equal(value, base[key]), name


def test_lora_saved_folder_reloads_with_head(data_dir, sft_base, tmp_path):
    cfg = replace(QUICK, lora=True, learning_rate=1e-3)
    fit = fit_reward_model([data_dir / "small.jsonl"], str(sft_base), seed=0, cfg=cfg)
    tok = fit.tokenizer
    probe = data_dir / "general" / "test.jsonl"
    before = _scores(fit.model, tok, probe)
    out = tmp_path / "rm"
    save_reward_model(fit, out, keep_adapter=True)
    reloaded, info = AutoModelForSequenceClassification.from_pretrained(
        out, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert reloaded.config.num_labels == 1
    assert reloaded.config.pad_token_id == tok.pad_token_id != tok.eos_token_id
    after = _scores(reloaded, AutoTokenizer.from_pretrained(out), probe)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5)
    # a fresh head would score differently: the trained head is in the folder
    seed_everything(123)
    fresh = _scores(load_reward_model(sft_base), tok, probe)
    assert not np.allclose(fresh, after, atol=1e-3)
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert not (out / "adapter_config.json").exists()  # the top level is merged


def test_same_seed_same_model_other_seed_differs(data_dir, sft_base, tmp_path):
    pairs = [data_dir / "small.jsonl"]
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train_rm(pairs, str(sft_base), tmp_path / name, seed=seed, cfg=QUICK)
        runs[name] = AutoModelForSequenceClassification.from_pretrained(tmp_path / name)
    sa, sb, sc = (runs[k].state_dict() for k in "abc")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["score.weight"], sc["score.weight"])
    tok = load_tokenizer(tmp_path / "a")
    probe = data_dir / "math" / "test.jsonl"
    np.testing.assert_array_equal(
        _scores(runs["a"], tok, probe), _scores(runs["b"], tok, probe)
    )
    assert not np.allclose(
        _scores(runs["a"], tok, probe), _scores(runs["c"], tok, probe)
    )


def test_over_length_pairs_are_counted_truncated_and_kept(
    data_dir, sft_base, tmp_path, caplog
):
    tok = load_tokenizer(sft_base)
    path = data_dir / "small.jsonl"
    full_c, full_r = _pair_ids(tok, path, max_length=10**6)
    limit = 60
    expected = sum(
        len(c) > limit or len(r) > limit for c, r in zip(full_c, full_r, strict=True)
    )
    assert 0 < expected < len(full_c)  # the test needs both kinds
    data = load_pair_data([path], tok, max_length=limit, truncation_side="left")
    assert data.n_truncated == expected and len(data.chosen) == len(full_c)
    for ids, full in zip(data.chosen, full_c, strict=True):
        assert len(ids) == min(len(full), limit) and ids == full[-len(ids) :]
    assert tok.decode(data.chosen[0][-1:]) == EOS  # left cut keeps the reply's end
    right = load_pair_data([path], tok, max_length=limit, truncation_side="right")
    assert all(
        ids == full[: len(ids)] for ids, full in zip(right.chosen, full_c, strict=True)
    )

    out = tmp_path / "rm"
    with caplog.at_level(logging.WARNING):
        metrics = train_rm(
            [path], str(sft_base), out, seed=0, cfg=replace(QUICK, max_length=limit)
        )
    assert metrics["n_truncated"] == expected and metrics["n_pairs"] == len(full_c)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["n_truncated"] == expected
    assert saved["truncation_side"] == "left" and saved["max_length"] == limit
    assert re.search(
        rf"{expected} of {len(full_c)} pairs exceed max_length", caplog.text
    )


def _hf_ids(tok, conv) -> list[int]:
    """Ids straight from the HF tokenizer (template text, BOS string removed)."""
    text = tok.apply_chat_template(conv, tokenize=False)
    if tok.bos_token != tok.eos_token:
        text = text.removeprefix(tok.bos_token)
    return tok(text)["input_ids"]


LONG = {0: ("chosen",), 3: ("chosen",), 5: ("rejected",), 7: ("chosen", "rejected")}


def _long_pairs(data_dir: Path, tmp_path: Path) -> tuple[Path, list[dict]]:
    """small.jsonl with replies lengthened on the sides named in LONG."""
    recs = read_jsonl(data_dir / "small.jsonl")
    for i, sides in LONG.items():
        for side in sides:
            recs[i][side][-1]["content"] += " and then some more words" * 30
    path = tmp_path / "long.jsonl"
    write_jsonl(path, recs)
    return path, recs


def test_over_length_drop_removes_long_pairs(data_dir, sft_base, tmp_path, caplog):
    tok = load_tokenizer(sft_base)
    path, recs = _long_pairs(data_dir, tmp_path)
    lengths = [(len(_hf_ids(tok, r["chosen"])), len(_hf_ids(tok, r["rejected"])))
               for r in recs]  # fmt: skip
    limit = max(max(n) for i, n in enumerate(lengths) if i not in LONG) + 3
    over = {i for i, n in enumerate(lengths) if max(n) > limit}
    assert over == set(LONG)  # the hand-made long pairs, and only they
    data = load_pair_data(
        [path], tok, max_length=limit, truncation_side="left", over_length="drop"
    )
    kept = [i for i in range(len(recs)) if i not in over]
    assert data.n_dropped == len(over) and data.n_truncated == 0
    assert data.chosen == [_hf_ids(tok, recs[i]["chosen"]) for i in kept]
    assert data.rejected == [_hf_ids(tok, recs[i]["rejected"]) for i in kept]
    cut = load_pair_data([path], tok, max_length=limit, truncation_side="left")
    assert (cut.n_dropped, cut.n_truncated, len(cut.chosen)) == (0, 4, len(recs))
    assert (cut.n_truncated_chosen, cut.n_truncated_rejected) == (3, 2)

    out = tmp_path / "rm"
    cfg = replace(QUICK, max_length=limit, over_length="drop")
    with caplog.at_level(logging.WARNING):
        metrics = train_rm([path], str(sft_base), out, seed=0, cfg=cfg)
    assert metrics["n_pairs"] == len(kept) and metrics["n_truncated"] == 0
    assert metrics["n_dropped_over_length"] == len(over)
    run = json.loads((out / "run_config.json").read_text())
    assert run["n_dropped_over_length"] == len(over)
    assert (
        run["n_pairs_trained"] == len(kept) and run["config"]["over_length"] == "drop"
    )
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["n_dropped_over_length"] == len(over)
    assert f"{len(over)} of {len(recs)} pairs have a side over max_length" in (
        caplog.text
    )


def test_over_length_drop_of_every_pair_fails_clearly(data_dir, sft_base):
    tok = load_tokenizer(sft_base)
    path = data_dir / "small.jsonl"
    with pytest.raises(ValueError, match=r"removed all 24 pairs .* max_length 5 "):
        load_pair_data(
            [path], tok, max_length=5, truncation_side="left", over_length="drop"
        )
    with pytest.raises(ValueError, match="over_length"):
        load_pair_data(
            [path], tok, max_length=5, truncation_side="left", over_length="cut"
        )
    with pytest.raises(ValueError, match="over_length"):
        fit_reward_model(
            [path], str(sft_base), seed=0, cfg=replace(QUICK, over_length="cut")
        )


@pytest.mark.parametrize("side", ["left", "right"])
def test_pair_truncation_keeps_bos(data_dir, tmp_path, side):
    recs = read_jsonl(data_dir / "small.jsonl")
    texts = [m["content"] for r in recs for m in r["chosen"] + r["rejected"]]
    tok = load_tokenizer(save_bos_tokenizer(texts, tmp_path / "tok"))
    bos = tok.bos_token_id
    data = load_pair_data(
        [data_dir / "small.jsonl"], tok, max_length=24, truncation_side=side
    )
    assert data.n_truncated > 0
    tok.truncation_side = side  # the HF tokenizer's own truncation
    for key, got in (("chosen", data.chosen), ("rejected", data.rejected)):
        strip = [
            tok.apply_chat_template(r[key], tokenize=False).removeprefix("<s>")
            for r in recs
        ]
        assert got == tok(strip, truncation=True, max_length=24)["input_ids"]
    assert all(ids[0] == bos and ids.count(bos) == 1 for ids in data.chosen)


def test_system_prompt_inherited_from_the_base_or_configured(
    data_dir, sft_base, tmp_path
):
    """A base whose run_config.json records a system prompt trains with it by
    default: the same weights as configuring it, others than configuring none."""
    base = tmp_path / "base"
    shutil.copytree(sft_base, base)
    run = json.loads((base / "run_config.json").read_text())
    run["chat_format"] = {"chat_template": CHAT_TEMPLATE, "system_prompt": "Be terse."}
    (base / "run_config.json").write_text(json.dumps(run))
    pairs = [data_dir / "small.jsonl"]
    fits = {
        "inherited": fit_reward_model(pairs, str(base), seed=0, cfg=QUICK),
        "explicit": fit_reward_model(
            pairs, str(sft_base), seed=0, cfg=replace(QUICK, system_prompt="Be terse.")
        ),
        "none": fit_reward_model(
            pairs, str(base), seed=0, cfg=replace(QUICK, system_prompt="")
        ),
    }
    w = {k: f.model.score.weight.detach() for k, f in fits.items()}
    assert torch.equal(w["inherited"], w["explicit"])
    assert not torch.equal(w["inherited"], w["none"])
    fmt = fits["inherited"].run_config["chat_format"]
    assert fmt["system_prompt"] == "Be terse."
    assert fmt["system_prompt_source"] == str(base / "run_config.json")
    assert fmt["chat_template"] == CHAT_TEMPLATE
    assert fits["explicit"].run_config["chat_format"]["system_prompt_source"] == (
        "config"
    )
    assert fits["none"].run_config["chat_format"]["system_prompt"] is None
    # the saved RM records the format its scorers will inherit
    out = tmp_path / "rm"
    save_reward_model(fits["inherited"], out)
    saved = json.loads((out / "run_config.json").read_text())["chat_format"]
    assert saved["system_prompt"] == "Be terse."
    assert AutoTokenizer.from_pretrained(out).chat_template == CHAT_TEMPLATE


def test_checkpoint_dir_inside_out_is_refused(data_dir, sft_base, tmp_path):
    with pytest.raises(ValueError, match="must not be inside"):
        train_rm(
            [data_dir / "small.jsonl"],
            str(sft_base),
            tmp_path / "out",
            seed=0,
            cfg=QUICK,
            checkpoint_dir=tmp_path / "out" / "ckpt",
        )


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sigterm_then_resume_equals_uninterrupted(data_dir, sft_base, tmp_path, lora):
    pairs = (data_dir / "small.jsonl").resolve()
    # 24 pairs, batch 4, 2 epochs: 12 steps; LoRA adds dropout, so the RNG
    # states must be restored too
    # adam_epsilon 1e-6 and one torch thread in both processes: with 1e-8 an
    # embedding row whose gradient is ~0 moves by ~lr on float rounding alone
    # (tests/unit/test_distributed.py), and a thread count that differs between
    # this process and the CLI's changes the rounding; the suite saw embed_in
    # differ after ~200 other tests had run in this process
    cfg = TrainRMConfig(
        epochs=2,
        batch_size=4,
        lora=lora,
        learning_rate=1e-3 if lora else 2e-4,
        adam_epsilon=1e-6,
        log_every=1,
        checkpoint_every=2,
        device="cpu",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _sigterm_then_resume(pairs, sft_base, tmp_path, cfg, lora)
    finally:
        torch.set_num_threads(threads)


def _sigterm_then_resume(pairs, sft_base, tmp_path, cfg, lora):
    ref_out = tmp_path / "uninterrupted"
    train_rm([pairs], str(sft_base), ref_out, seed=5, cfg=cfg)

    out, ckpt = tmp_path / "resumed", tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "pipelines.train_rm", "--pairs", str(pairs)]
    cmd += ["--base", str(sft_base), "--out", str(out), "--seed", "5"]
    cmd += ["--checkpoint-dir", str(ckpt), "--epochs", "2", "--batch-size", "4"]
    cmd += ["--lora", str(lora).lower(), "--learning-rate", str(cfg.learning_rate)]
    cmd += ["--log-every", "1", "--checkpoint-every", "2", "--device", "cpu"]
    cmd += ["--adam-epsilon", "1e-6"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r"step (\d+)/12 ", line)
            if m and int(m.group(1)) >= 3:
                proc.send_signal(signal.SIGTERM)
                break
        rest = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    log = "".join(lines) + rest
    assert proc.returncode == 143, log
    assert "SIGTERM received" in log
    assert not out.exists()
    found = latest_checkpoint(ckpt)
    assert found is not None and len(list(ckpt.iterdir())) == 1, list(ckpt.iterdir())
    stopped_at = int(found.name.split("-")[1])
    assert 3 <= stopped_at < 12

    metrics = train_rm(
        [pairs], str(sft_base), out, seed=5, cfg=cfg, checkpoint_dir=ckpt
    )
    assert metrics["steps"] == 12
    assert not ckpt.exists()  # removed after success
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["resumed_from_step"] == stopped_at
    ref = json.loads((ref_out / "metrics.json").read_text())
    assert [e["step"] for e in saved["loss_curve"]] == list(range(1, 13))
    np.testing.assert_allclose(
        [e["loss"] for e in saved["loss_curve"]],
        [e["loss"] for e in ref["loss_curve"]],
        rtol=1e-5,
    )
    a = AutoModelForSequenceClassification.from_pretrained(ref_out).state_dict()
    b = AutoModelForSequenceClassification.from_pretrained(out).state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)


PROGRESS = re.compile(
    r"train_rm: (\d+)/3 steps \((\S+)%\), (\S+) steps/s, elapsed \S+"
    r"(?:, ETA \S+)?( \(done\))?$"
)


def test_training_logs_a_final_progress_line_with_a_rate(
    data_dir, sft_base, tmp_path, caplog
):
    with caplog.at_level(logging.INFO, logger="pipelines.common.training"):
        train_rm(
            [data_dir / "small.jsonl"],
            str(sft_base),
            tmp_path / "rm",
            seed=0,
            cfg=QUICK,  # 3 steps: far under the 30 s cadence
        )
    found = [PROGRESS.search(r.getMessage()) for r in caplog.records]
    lines = [m.groups() for m in found if m]
    assert lines[-1][0] == "3" and lines[-1][1] == "100.0" and lines[-1][3]
    assert float(lines[-1][2]) > 0  # steps per second


def test_cli_progress_every_sets_the_cadence(data_dir, sft_base, tmp_path):
    cmd = [sys.executable, "-m", "pipelines.train_rm", "--pairs"]
    cmd += [str(data_dir / "small.jsonl"), "--base", str(sft_base)]
    cmd += ["--out", str(tmp_path / "rm"), "--seed", "0", "--max-steps", "3"]
    cmd += ["--batch-size", "4", "--device", "cpu", "--progress-every", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(
        cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [m.groups() for m in map(PROGRESS.search, res.stderr.splitlines()) if m]
    # cadence 0: a line after every step, then the final one
    assert [(d, done) for d, _, _, done in lines] == [
        ("1", None),
        ("2", None),
        ("3", None),
        ("3", " (done)"),
    ]
    assert [share for _, share, _, _ in lines] == ["33.3", "66.7", "100.0", "100.0"]


def test_cli_help():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-m", "pipelines.train_rm", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    for flag in ("--pairs", "--base", "--checkpoint-dir", "--lora", "--l2-coef"):
        assert flag in res.stdout


def _shortcut_credit(path: Path) -> dict[str, np.ndarray]:
    """Per-pair credit of scorers that read only a surface feature of the reply.

    ``features`` counts the injected politeness openers and padding sentences;
    ``length`` is the reply's word count. A tie scores 0.5 (a coin flip).
    """
    recs = read_jsonl(path)

    def features(text: str) -> int:
        return sum(text.startswith(o) for o in POLITE_OPENERS) + sum(
            s in text for s in PADDING_SENTENCES
        )

    def length(text: str) -> int:
        return len(text.split())

    out = {}
    for name, fn in (("features", features), ("length", length)):
        c = np.array([fn(r["chosen"][-1]["content"]) for r in recs])
        x = np.array([fn(r["rejected"][-1]["content"]) for r in recs])
        out[name] = (c > x) + 0.5 * (c == x)
    return out


def _clean_mask(path: Path) -> np.ndarray:
    return np.array(
        [not any(r["metadata"]["spurious"].values()) for r in read_jsonl(path)]
    )


@pytest.mark.slow
def test_tiny_rm_learns_the_task_not_the_injected_features(
    data_dir, sft_base, tmp_path
):
    """Accuracy on clean pairs (no injected feature) beats every shortcut.

    A scorer that reads only the injected features gets about 0.72-0.76 over
    all pairs (above the 0.65 bar this test used to set on all pairs) but a
    coin flip on the clean ones, so the bar is set on the clean pairs, above
    what each shortcut scorer reaches there.
    """
    out = tmp_path / "rm"
    metrics = train_rm(
        [data_dir / "general" / "train.jsonl", data_dir / "math" / "train.jsonl"],
        str(sft_base),
        out,
        seed=0,
        cfg=TrainRMConfig(device="cpu"),  # the tiny preset's defaults
    )
    assert metrics["n_pairs"] == 600
    model = AutoModelForSequenceClassification.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    report = {}
    for domain in ("general", "math"):
        path = data_dir / domain / "test.jsonl"
        scores = _scores(model, tok, path)
        n = len(scores) // 2
        credit = (scores[:n] > scores[n:]).astype(float)
        clean = _clean_mask(path)
        shortcuts = {
            k: float(v[clean].mean()) for k, v in _shortcut_credit(path).items()
        }
        shortcut_all = float(_shortcut_credit(path)["features"].mean())
        report[domain] = {
            "rm_clean": float(credit[clean].mean()),
            "rm_all": float(credit.mean()),
            "n_clean": int(clean.sum()),
            "shortcut_clean": shortcuts,
            "features_only_all": shortcut_all,
        }
    logger.warning("held-out accuracy %s, train metrics %s", report, metrics)
    for domain, r in report.items():
        # the old bar on all pairs is within a shortcut's reach ...
        assert r["features_only_all"] > 0.65, (domain, r)
        # ... the new one, on the clean pairs, is not
        bar = max(0.65, max(r["shortcut_clean"].values()) + 0.05)
        assert r["rm_clean"] > bar, (domain, bar, r)


# ------------------------------------------------ the gold RM: from scratch


def test_from_scratch_rm_has_the_asked_shape_and_learns(data_dir, sft_base, tmp_path):
    # the gold RM of the tiny preset: no base, a GPT-NeoX of its own size on
    # the tokenizer, trained on clean chosen replies
    tokenizer = str(sft_base.parent / "tokenizer")
    cfg = replace(
        QUICK,
        max_steps=0,
        epochs=2,
        batch_size=16,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=128,
        clean_chosen=True,
    )
    pairs = [data_dir / "math" / "train.jsonl"]
    out = tmp_path / "gold"
    train_rm(pairs, None, out, seed=0, cfg=cfg, tokenizer=tokenizer)
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 3
    assert model.config.num_labels == 1
    run = json.loads((out / "run_config.json").read_text())
    assert run["base"] == f"scratch:{tokenizer}"
    assert run["config"]["clean_chosen"] is True
    tok = AutoTokenizer.from_pretrained(out)
    # learned from scratch: far above chance on held-out math pairs
    assert _accuracy(model, tok, data_dir / "math" / "test.jsonl") > 0.75


def test_clean_chosen_restores_the_reply_before_spurious_features(data_dir):
    recs = read_jsonl(data_dir / "general" / "train.jsonl")
    injected = [r for r in recs if "clean_chosen" in r["metadata"]["spurious"]]
    plain = [r for r in recs if "clean_chosen" not in r["metadata"]["spurious"]]
    assert injected and plain  # rates 0.3: both kinds are there
    for rec in injected:
        flags = rec["metadata"]["spurious"]
        assert flags["politeness"] or flags["length_padding"]
        clean = without_spurious(rec)
        text, reply = clean["chosen"][-1]["content"], rec["chosen"][-1]["content"]
        assert text == flags["clean_chosen"] and text != reply
        assert text in reply  # build_prefs only adds an opener and padding
        assert clean["rejected"] == rec["rejected"]
        assert clean["chosen"][:-1] == rec["chosen"][:-1]
    for rec in plain:
        assert without_spurious(rec) == rec
        assert not any(v is True for v in rec["metadata"]["spurious"].values())


# ------------------------------------------------------- seeded subsets (n-curves)


def _expected_draw(n_available: int, n: int, seed: int) -> list[int]:
    """The draw recomputed from its definition: sha256 seed, shuffle, first n."""
    key = f"{seed}/subset".encode()
    rng = random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1)
    order = list(range(n_available))
    rng.shuffle(order)
    return sorted(order[:n])


def test_subset_draw_is_reproducible_nested_and_seeded():
    draws = {n: subset_indices(200, n, 7) for n in (1, 16, 64, 200)}
    assert draws[16] == subset_indices(200, 16, 7)  # reproducible
    assert all(d == sorted(set(d)) and len(d) == n for n, d in draws.items())
    assert set(draws[1]) <= set(draws[16]) <= set(draws[64]) <= set(draws[200])
    assert draws[200] == list(range(200))
    assert subset_indices(200, 0, 7) == list(range(200))  # 0 = all
    others = [subset_indices(200, 16, s) for s in (0, 1, 2)]
    assert len({tuple(d) for d in [draws[16], *others]}) == 4  # seeds differ


@pytest.mark.parametrize(("n_available", "n", "seed"), [(200, 16, 7), (24, 5, 0)])
def test_subset_draw_equals_an_independent_computation(n_available, n, seed):
    assert subset_indices(n_available, n, seed) == _expected_draw(n_available, n, seed)


def test_subset_larger_than_the_pairs_fails_naming_both(data_dir, sft_base):
    tok = load_tokenizer(sft_base)
    path = data_dir / "small.jsonl"  # 24 pairs
    with pytest.raises(SubsetSizeError) as err:
        load_pair_data(
            [path], tok, max_length=512, truncation_side="left", max_pairs=25
        )
    assert isinstance(err.value, UserError)
    message = str(err.value)
    assert "max_pairs 25" in message and "24 pairs available" in message
    assert "small.jsonl" in message
    with pytest.raises(SubsetSizeError, match="must be >= 0"):
        subset_indices(24, -1, 0)


def test_max_pairs_trains_on_the_draw_and_records_it(data_dir, sft_base, tmp_path):
    path = data_dir / "small.jsonl"
    ids = [r["id"] for r in read_jsonl(path)]
    cfg = replace(QUICK, max_pairs=8, subset_seed=3)
    out = tmp_path / "rm"
    metrics = train_rm([path], str(sft_base), out, seed=0, cfg=cfg)
    assert metrics["n_pairs"] == 8
    saved = json.loads((out / "metrics.json").read_text())
    drawn = [ids[i] for i in _expected_draw(24, 8, 3)]
    assert saved["n_pairs_available"] == 24 and saved["n_pairs"] == 8
    assert saved["max_pairs"] == 8 and saved["subset_seed"] == 3
    assert saved["subset_ids"] == drawn
    digest = hashlib.sha256("\n".join(drawn).encode()).hexdigest()
    assert saved["subset_ids_sha256"] == digest
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["config"]["max_pairs"] == 8
    assert run_config["n_pairs_trained"] == 8
    full = load_pair_data(
        [path], load_tokenizer(sft_base), max_length=512, truncation_side="left"
    )
    assert full.n_available == 24 and full.drawn_ids is None


def test_cli_flags_of_the_draw():
    base = ["--pairs", "p.jsonl", "--base", "b", "--out", "o", "--seed", "0"]
    args = make_parser().parse_args([*base, "--max-pairs", "16", "--subset-seed", "2"])
    cfg = dataclass_from_args(TrainRMConfig, args)
    assert (cfg.max_pairs, cfg.subset_seed) == (16, 2)
    default = dataclass_from_args(TrainRMConfig, make_parser().parse_args(base))
    assert (default.max_pairs, default.subset_seed) == (0, 0)
