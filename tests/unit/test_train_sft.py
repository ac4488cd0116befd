"""SFT stage: label mask, loss, saved folder, continuing from a base, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipelines.build_prefs import BuildPrefsConfig, build_prefs
from pipelines.common.chat_format import CHAT_TEMPLATE
from pipelines.common.io import read_jsonl
from pipelines.common.modeling import (
    EOS,
    load_tokenizer,
    pad_batch,
    train_tokenizer,
)
from pipelines.train_sft import (
    IGNORE,
    TrainSFTConfig,
    build_sft_examples,
    lm_loss_sum,
    train_sft,
    truncate_examples,
)

from .bos_tokenizers import save_bos_tokenizer

ROOT = Path(__file__).resolve().parents[2]

# ~120 examples, 4 epochs of batch 8: 60 steps, a few seconds on 2 cores
FAST = dict(epochs=4, batch_size=8, log_every=5, device="cpu")


@pytest.fixture(scope="session")
def sft_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sft_data")
    cfg = BuildPrefsConfig(sizes={"train": 4, "test": 2}, sft_size=120, workers=1)
    sft = root / "sft" / "general" / "train.jsonl"
    build_prefs(
        "general",
        [root / "general" / "train.jsonl", root / "general" / "test.jsonl"],
        sft,
        cfg=cfg,
    )
    return sft


@pytest.fixture(scope="session")
def tok_dir(sft_file, tmp_path_factory) -> Path:
    texts = [m["content"] for r in read_jsonl(sft_file) for m in r["messages"]]
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(texts, vocab_size=2048).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def scratch_run(sft_file, tok_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sft_models") / "scratch"
    metrics = train_sft(
        [sft_file],
        out,
        base=None,
        tokenizer=str(tok_dir),
        seed=0,
        cfg=TrainSFTConfig(**FAST),
    )
    return out, metrics


def _decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=False)


def test_label_mask_trains_only_the_last_reply(tok_dir):
    tok = load_tokenizer(tok_dir)
    conv = [
        {"role": "user", "content": "Reverse the word: stone"},
        {"role": "assistant", "content": "enots"},
        {"role": "user", "content": "Now sort: b a c"},
        {"role": "assistant", "content": "Answer: a b c"},
    ]
    (ex,) = build_sft_examples(tok, [conv])
    assert len(ex.ids) == len(ex.labels)
    trained = [t for t, lab in zip(ex.ids, ex.labels, strict=True) if lab != IGNORE]
    masked = [t for t, lab in zip(ex.ids, ex.labels, strict=True) if lab == IGNORE]
    # labels equal the ids where trained
    assert all(lab in (IGNORE, t) for t, lab in zip(ex.ids, ex.labels, strict=True))
    # the reply and its closing EOS are trained, nothing else
    assert _decode(tok, trained) == "Answer: a b c" + EOS
    assert _decode(tok, masked) == (
        "<|user|>Reverse the word: stone<|endoftext|><|assistant|>enots<|endoftext|>"
        "<|user|>Now sort: b a c<|endoftext|><|assistant|>"
    )
    # the trained part is one contiguous suffix
    first = ex.labels.index(trained[0])
    assert all(lab != IGNORE for lab in ex.labels[first:])


def test_label_mask_falls_back_to_offsets_when_bpe_merges(tok_dir):
    tok = load_tokenizer(tok_dir)
    # a plain-text template whose generation prompt ends in a space: BPE glues
    # that space to the reply's first word, so prompt tokens are not a prefix
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    conv = [
        {"role": "user", "content": "sort 3 1 2"},
        {"role": "assistant", "content": "sorted 1 2 3"},
    ]
    prompt_ids = tok("user: sort 3 1 2\nassistant: ")["input_ids"]
    full_ids = tok("user: sort 3 1 2\nassistant: sorted 1 2 3\n")["input_ids"]
    assert full_ids[: len(prompt_ids)] != prompt_ids  # the case under test
    (ex,) = build_sft_examples(tok, [conv])
    trained = [t for t, lab in zip(ex.ids, ex.labels, strict=True) if lab != IGNORE]
    assert _decode(tok, trained).strip() == "sorted 1 2 3"
    masked = [t for t, lab in zip(ex.ids, ex.labels, strict=True) if lab == IGNORE]
    assert _decode(tok, masked) == "user: sort 3 1 2\nassistant:"


def test_label_mask_errors_when_prompt_is_not_a_prefix(tok_dir):
    tok = load_tokenizer(tok_dir)
    tok.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '[[reply]]' }}{% endif %}"
    )
    conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    with pytest.raises(ValueError, match="not a prefix"):
        build_sft_examples(tok, [conv])
    with pytest.raises(ValueError, match="assistant"):
        build_sft_examples(tok, [conv[:1]])


def test_loss_matches_hf_masked_causal_lm_loss(tok_dir):
    from pipelines.common.modeling import init_tiny_causal_lm

    tok = load_tokenizer(tok_dir)
    model = init_tiny_causal_lm(tok, seed=0)
    convs = [
        [
            {"role": "user", "content": "hi there"},
            {"role": "assistant", "content": "x"},
        ],
        [
            {"role": "user", "content": "count the letters in apple"},
            {"role": "assistant", "content": "Answer: 5 letters in total"},
        ],
    ]
    exs = build_sft_examples(tok, convs)
    ids, mask = pad_batch([e.ids for e in exs], tok.pad_token_id)
    labels, _ = pad_batch([e.labels for e in exs], IGNORE)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    loss_sum, stats = lm_loss_sum(model, batch)
    n = sum(sum(lab != IGNORE for lab in e.labels[1:]) for e in exs)
    assert stats["tokens"].item() == n
    ref = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(loss_sum / n, ref, rtol=1e-5, atol=1e-6)


def test_loss_decreases_and_folder_loads_with_auto_classes(scratch_run, sft_file):
    out, metrics = scratch_run
    assert metrics["steps"] == 60
    assert metrics["n_examples"] == 120
    assert metrics["final_loss"] < 0.6 * metrics["first_loss"]
    saved = json.loads((out / "metrics.json").read_text())
    curve = [e["loss"] for e in saved["loss_curve"]]
    assert len(curve) == 12 and curve[-1] < curve[0]
    run = json.loads((out / "run_config.json").read_text())
    assert run["seed"] == 0 and run["base"] is None
    assert run["config"]["learning_rate"] == TrainSFTConfig().learning_rate
    assert "torch" in run["versions"]
    fmt = run["chat_format"]  # a tiny run: the tokenizer's template, no prompt
    assert fmt["chat_template"] == CHAT_TEMPLATE and fmt["system_prompt"] is None
    assert fmt["chat_template_source"] == "tokenizer"
    assert (out / "model.safetensors").is_file()
    assert not list(out.parent.glob(".scratch*"))  # no temp folder left
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.pad_token_id != tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id
    # the reloaded model fits the data better than a fresh init
    from pipelines.common.modeling import init_tiny_causal_lm

    convs = [r["messages"] for r in read_jsonl(sft_file)[:16]]
    exs = build_sft_examples(tok, convs)
    ids, mask = pad_batch([e.ids for e in exs], tok.pad_token_id)
    labels, _ = pad_batch([e.labels for e in exs], IGNORE)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    with torch.no_grad():
        trained, stats = lm_loss_sum(model.eval(), batch)
        fresh, _ = lm_loss_sum(init_tiny_causal_lm(tok, seed=0).eval(), batch)
    assert trained / stats["tokens"] < 0.5 * fresh / stats["tokens"]


def test_continue_from_base(scratch_run, sft_file, tmp_path):
    base, first = scratch_run
    out = tmp_path / "continued"
    (out).mkdir()
    (out / "stale.txt").write_text("from an earlier run")
    cfg = TrainSFTConfig(epochs=1, batch_size=8, learning_rate=1e-4, device="cpu")
    metrics = train_sft(
        [sft_file], out, base=str(base), tokenizer=None, seed=1, cfg=cfg
    )
    # it starts where the base ended, not from a fresh init
    assert metrics["first_loss"] < 0.5 * first["first_loss"]
    assert not (out / "stale.txt").exists()  # the folder was replaced whole
    a = AutoModelForCausalLM.from_pretrained(base).state_dict()
    b = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    run = json.loads((out / "run_config.json").read_text())
    assert run["base"] == str(base) and run["tokenizer"] == str(base)
    # the format is inherited from the base's run_config.json
    assert run["chat_format"]["chat_template_source"] == str(base / "run_config.json")


def test_system_prompt_is_a_masked_prompt_turn(tok_dir, sft_file):
    tok = load_tokenizer(tok_dir)
    convs = [r["messages"] for r in read_jsonl(sft_file)[:8]]
    plain = build_sft_examples(tok, convs)
    with_sp = build_sft_examples(tok, convs, system_prompt="Answer briefly.")
    for conv, a, b in zip(convs, plain, with_sp, strict=True):
        full = [{"role": "system", "content": "Answer briefly."}, *conv]
        assert b.ids == tok(tok.apply_chat_template(full, tokenize=False))["input_ids"]
        extra = len(b.ids) - len(a.ids)
        assert extra > 0 and b.labels[:extra] == [IGNORE] * extra
        assert b.labels[extra:] == a.labels  # the same reply tokens are trained
        assert "Answer briefly." in _decode(tok, b.ids)


def test_explicit_template_and_prompt_are_saved_and_inherited(
    sft_file, tok_dir, tmp_path
):
    template = tmp_path / "chat.jinja"
    text = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|endoftext|>"
    text += "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    template.write_text(text)
    first = tmp_path / "first"
    cfg = TrainSFTConfig(
        max_steps=1,
        batch_size=4,
        device="cpu",
        chat_template=str(template),
        system_prompt="Answer briefly.",
    )
    train_sft([sft_file], first, base=None, tokenizer=str(tok_dir), seed=0, cfg=cfg)
    assert AutoTokenizer.from_pretrained(first).chat_template == text
    fmt = json.loads((first / "run_config.json").read_text())["chat_format"]
    assert fmt["chat_template"] == text and fmt["system_prompt"] == "Answer briefly."
    assert fmt["chat_template_source"] == fmt["system_prompt_source"] == "config"
    assert fmt["chat_template_is_rmflow_default"] is False
    second = tmp_path / "second"
    cfg = TrainSFTConfig(max_steps=1, batch_size=4, device="cpu")
    train_sft([sft_file], second, base=str(first), tokenizer=None, seed=0, cfg=cfg)
    fmt = json.loads((second / "run_config.json").read_text())["chat_format"]
    assert fmt["chat_template"] == text and fmt["system_prompt"] == "Answer briefly."
    assert fmt["system_prompt_source"] == str(first / "run_config.json")


@pytest.mark.parametrize("side", ["left", "right"])
def test_truncation_keeps_bos_and_aligns_labels(sft_file, tmp_path, side):
    recs = read_jsonl(sft_file)[:12]
    texts = [m["content"] for r in recs for m in r["messages"]]
    tok = load_tokenizer(save_bos_tokenizer(texts, tmp_path / "tok"))
    convs = [r["messages"] for r in recs]
    examples = build_sft_examples(tok, convs)
    limit = sorted(len(e.ids) for e in examples)[3]
    cut = truncate_examples(tok, examples, max_length=limit, side=side)
    tok.truncation_side = side  # the HF tokenizer's own truncation
    strip = [
        tok.apply_chat_template(c, tokenize=False).removeprefix("<s>") for c in convs
    ]
    assert [e.ids for e in cut] == tok(strip, truncation=True, max_length=limit)[
        "input_ids"
    ]
    for ex, whole in zip(cut, examples, strict=True):
        assert ex.ids[0] == tok.bos_token_id and ex.labels[0] == IGNORE
        assert len(ex.labels) == len(ex.ids) == min(limit, len(whole.ids))
        assert all(
            lab in (IGNORE, tid) for lab, tid in zip(ex.labels, ex.ids, strict=True)
        )
        if side == "left" and len(whole.ids) > limit:
            assert ex.labels[-5:] == whole.labels[-5:]  # the reply's end is kept


def test_needs_base_or_tokenizer(sft_file, tmp_path):
    with pytest.raises(ValueError, match="tokenizer"):
        train_sft(
            [sft_file],
            tmp_path / "o",
            base=None,
            tokenizer=None,
            seed=0,
            cfg=TrainSFTConfig(),
        )


def test_cli_help():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-m", "pipelines.train_sft", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    for flag in ("--data", "--tokenizer", "--base", "--learning-rate", "--hidden-size"):
        assert flag in res.stdout
