import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.common import scoring
from pipelines.common.chat_format import CHAT_TEMPLATE
from pipelines.common.modeling import (
    TinyArch,
    chat_text,
    encode_conversations,
    init_tiny_causal_lm,
    load_reward_model,
    load_tokenizer,
    score_ids,
    train_tokenizer,
)
from pipelines.common.scoring import (
    InputSettings,
    ScorerConfig,
    ScoringInput,
    candidate_conversations,
    load_scorer,
    score_inputs,
)

ROOT = Path(__file__).resolve().parents[2]
ARCH = TinyArch(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
)
WORDS = "the answer is seven because two plus five makes seven def f return x"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def rm(tmp_path_factory):
    """A tiny RM saved as a sequence classifier (seeded head), with its tokenizer."""
    root = tmp_path_factory.mktemp("scoring")
    tok = train_tokenizer([f"{WORDS} {i}" for i in range(50)], vocab_size=300)
    init_tiny_causal_lm(tok, seed=0, arch=ARCH).save_pretrained(root / "lm")
    tok.save_pretrained(root / "lm")
    torch.manual_seed(3)
    model = load_reward_model(root / "lm")
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(root / "rm")
    tok.save_pretrained(root / "rm")
    return str(root / "rm")


def conv(user, reply):
    return [
        {"role": "user", "content": user},
        {"role": "assistant", "content": reply},
    ]


# three inputs whose lengths interleave, so that pooling mixes them in batches
A = [conv(f"what is {i} plus five", "seven " * (i % 7) + "x") for i in range(23)]
B = [conv("def f", "return x " * (2 * i % 9) + "f") for i in range(17)]
C = [conv("why " * (i % 4 + 1), "because two " * (i % 5)) for i in range(11)]


def one_by_one(rm_dir, convs, *, max_length=1024, side="left", system=None):
    """Reference: each conversation alone (no padding), cut and prompted by hand."""
    tok = load_tokenizer(rm_dir)
    model = load_reward_model(rm_dir).eval()
    out, cut = [], 0
    with torch.no_grad():
        for c in convs:
            if system:
                c = [{"role": "system", "content": system}, *c]
            ids = tok(chat_text(tok, c))["input_ids"]
            if len(ids) > max_length:
                cut += 1
                ids = ids[-max_length:] if side == "left" else ids[:max_length]
            out.append(model(input_ids=torch.tensor([ids])).logits[0, 0].item())
    return np.array(out), cut


def test_one_input_equals_score_ids_bit_for_bit(rm):
    """One input alone: the batches of score_ids(sort_by_length=True), exactly."""
    scorer = load_scorer(rm, ScorerConfig(batch_size=4, device="cpu"))
    got = score_inputs(scorer, [ScoringInput("a", A, InputSettings(max_length=12))])
    tok = load_tokenizer(rm)
    model = load_reward_model(rm)
    enc = encode_conversations(tok, A, max_length=12)
    want = score_ids(model, enc.ids, pad_id=tok.pad_token_id, batch_size=4)
    np.testing.assert_array_equal(got["a"].scores, want)
    assert got["a"].truncated.tolist() == enc.cut
    assert got["a"].n_truncated == enc.truncated > 0
    assert got["a"].scores.dtype == np.float64


def test_pooled_scores_do_not_depend_on_company(rm):
    """Pooling and sorting across inputs moves no score beyond 1e-6."""
    inputs = {n: ScoringInput(n, convs) for n, convs in (("a", A), ("b", B), ("c", C))}
    alone = {}
    for name, item in inputs.items():
        scorer = load_scorer(rm, ScorerConfig(batch_size=5, device="cpu"))
        alone[name] = score_inputs(scorer, [item])[name].scores
    tok = load_tokenizer(rm)
    lengths = {
        n: [len(tok(chat_text(tok, c))["input_ids"]) for c in it.conversations]
        for n, it in inputs.items()
    }
    # the inputs' lengths overlap, so pooled batches mix them
    assert max(lengths["c"]) > min(lengths["a"]) and max(lengths["a"]) > min(
        lengths["b"]
    )
    for order, size in ((("a", "b", "c"), 5), (("c", "a", "b"), 3), (("b", "a"), 16)):
        scorer = load_scorer(rm, ScorerConfig(batch_size=size, device="cpu"))
        pooled = score_inputs(scorer, [inputs[n] for n in order])
        assert list(pooled) == list(order)
        for name in order:
            np.testing.assert_allclose(pooled[name].scores, alone[name], atol=1e-6)
    for name, item in inputs.items():  # and each equals its unpadded reference
        ref, _ = one_by_one(rm, item.conversations)
        np.testing.assert_allclose(alone[name], ref, atol=1e-5)
    assert len({round(s, 5) for s in alone["a"]}) > 10  # the RM tells them apart


def test_each_input_is_encoded_its_own_way(rm, tmp_path):
    """Length, side and system prompt per input, in one pooled job."""
    scorer = load_scorer(rm, ScorerConfig(batch_size=4, device="cpu"))
    got = score_inputs(
        scorer,
        [
            ScoringInput("short-left", A, InputSettings(max_length=9)),
            ScoringInput(
                "short-right", A, InputSettings(max_length=9, truncation_side="right")
            ),
            ScoringInput("brief", B, InputSettings(system_prompt="Be brief.")),
            ScoringInput("plain", B),
        ],
    )
    for name, kw in (
        ("short-left", {"max_length": 9}),
        ("short-right", {"max_length": 9, "side": "right"}),
        ("brief", {"system": "Be brief."}),
        ("plain", {}),
    ):
        conversations = A if name.startswith("short") else B
        ref, cut = one_by_one(rm, conversations, **kw)
        np.testing.assert_allclose(got[name].scores, ref, atol=1e-5, err_msg=name)
        assert got[name].n_truncated == cut, name
    assert got["short-left"].n_truncated > 0
    assert not np.allclose(got["brief"].scores, got["plain"].scores, atol=1e-4)
    assert got["brief"].chat_format.system_prompt == "Be brief."
    assert got["brief"].chat_format.system_prompt_source == "config"
    assert got["plain"].chat_format.system_prompt is None


def test_recorded_chat_format_applies_unless_overridden(rm, tmp_path):
    folder = tmp_path / "rm"
    folder.mkdir()
    for f in Path(rm).iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    record = {"chat_template": CHAT_TEMPLATE, "system_prompt": "Be brief."}
    (folder / "run_config.json").write_text(json.dumps({"chat_format": record}))
    scorer = load_scorer(str(folder), ScorerConfig(device="cpu"))
    got = score_inputs(
        scorer,
        [
            ScoringInput("recorded", B),
            ScoringInput("none", B, InputSettings(system_prompt="")),
        ],
    )
    np.testing.assert_allclose(
        got["recorded"].scores, one_by_one(rm, B, system="Be brief.")[0], atol=1e-5
    )
    np.testing.assert_allclose(got["none"].scores, one_by_one(rm, B)[0], atol=1e-5)
    fmt = got["recorded"].chat_format
    assert fmt.system_prompt_source == str(folder / "run_config.json")


def test_chunked_encoding_changes_nothing(rm, monkeypatch):
    scorer = load_scorer(rm, ScorerConfig(batch_size=4, device="cpu"))
    whole = score_inputs(scorer, [ScoringInput("a", A, InputSettings(max_length=10))])
    monkeypatch.setattr(scoring, "ENCODE_CHUNK", 3)
    chunked = score_inputs(scorer, [ScoringInput("a", A, InputSettings(max_length=10))])
    np.testing.assert_array_equal(whole["a"].scores, chunked["a"].scores)
    np.testing.assert_array_equal(whole["a"].truncated, chunked["a"].truncated)


def test_progress_lines_count_sequences(rm, monkeypatch, caplog):
    scorer = load_scorer(rm, ScorerConfig(batch_size=8, device="cpu"))
    inputs = [ScoringInput("a", A), ScoringInput("c", C)]
    with caplog.at_level(logging.INFO, logger="pipelines.common.scoring"):
        score_inputs(scorer, inputs, what="m", every_s=0.0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("m:")]
    total = len(A) + len(C)
    assert any(f"8/{total} sequences" in line for line in lines), lines
    assert any("ETA" in line for line in lines)
    assert lines[-1].startswith(f"m: {total}/{total} sequences (100.0%)")
    assert lines[-1].endswith("(done)")


def test_pad_is_added_when_the_tokenizer_pads_with_eos(rm, tmp_path):
    """A tokenizer saved with pad = EOS is scored with its own pad: the chat
    template ends turns with EOS, so pooling at "the last non-pad" would
    otherwise read the wrong position."""
    folder = tmp_path / "eos-pad"
    tok = load_tokenizer(rm)
    model = load_reward_model(rm)
    tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    scorer = load_scorer(str(folder), ScorerConfig(device="cpu"))
    record = scorer.record()
    assert record["pad_token_id"] != record["eos_token_id"]
    assert record["pad_token"] == "<|pad|>"
    assert record["resized_embeddings"] is False  # <|pad|> is in the vocabulary
    got = score_inputs(scorer, [ScoringInput("a", A)])["a"]
    ref, _ = one_by_one(rm, A)
    np.testing.assert_allclose(got.scores, ref, atol=1e-5)  # pad rows never read


def test_names_must_be_unique_and_settings_valid(rm):
    scorer = load_scorer(rm, ScorerConfig(device="cpu"))
    with pytest.raises(ValueError, match="repeated"):
        score_inputs(scorer, [ScoringInput("a", A), ScoringInput("a", B)])
    for bad in ({"batch_size": 0}, {"dtype": "int8"}, {"seed": -1}):
        with pytest.raises(ValueError):
            ScorerConfig(**bad)
    for bad in ({"max_length": 0}, {"truncation_side": "middle"}):
        with pytest.raises(ValueError):
            InputSettings(**bad)
    with pytest.raises(ValueError, match=r"--x: unknown key\(s\) \['batch_size'\]"):
        InputSettings.from_mapping({"batch_size": 3}, "--x")
    with pytest.raises(ValueError, match="--x: max_length"):
        InputSettings.from_mapping({"max_length": 0}, "--x")


def test_candidate_conversations():
    line = {
        "prompt": [{"role": "user", "content": "q"}],
        "candidates": [{"text": "a"}, {"text": ""}],
    }
    assert candidate_conversations(line) == [
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}],
    ]


def test_modules_import_without_torch():
    code = (
        "import sys\n"
        "import pipelines.common.scoring, pipelines.common.score_store\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
