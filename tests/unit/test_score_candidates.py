"""pipelines.score_candidates: the compatibility names over common.scoring."""

import json
import shutil

import numpy as np
import pytest
import torch

from pipelines.common.chat_format import CHAT_TEMPLATE
from pipelines.common.modeling import (
    TinyArch,
    chat_text,
    init_tiny_causal_lm,
    load_reward_model,
    load_tokenizer,
    train_tokenizer,
)
from pipelines.common.scoring import (
    InputSettings,
    ScorerConfig,
    ScoringInput,
    score_inputs,
)
from pipelines.score_candidates import (
    ScoreConfig,
    candidate_conversations,
    load_scorer,
    score_conversations,
)

ARCH = TinyArch(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
)
WORDS = "the answer is seven because two plus five makes seven def f return x"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread beats two on a shared box
    yield
    torch.set_num_threads(before)


def gens_line(pid, domain, prompt, texts):
    return {
        "prompt_id": pid,
        "domain": domain,
        "prompt": [{"role": "user", "content": prompt}],
        "candidates": [
            {"text": t, "gold": float(i % 2), "source": "policy"}
            for i, t in enumerate(texts)
        ],
        "task": None,
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    tok = train_tokenizer([f"{WORDS} {i}" for i in range(50)], vocab_size=300)
    lm_dir = root / "lm"
    init_tiny_causal_lm(tok, seed=0, arch=ARCH).save_pretrained(lm_dir)
    tok.save_pretrained(lm_dir)
    torch.manual_seed(1)
    rm = load_reward_model(lm_dir)
    rm.config.pad_token_id = tok.pad_token_id
    rm.save_pretrained(root / "rm")
    tok.save_pretrained(root / "rm")
    math_lines = [
        gens_line(
            "m-0", "math", "What is 2+5?", ["seven", "7 " * 30, "", "the answer"]
        ),
        gens_line("m-1", "math", "What is 1+1?", ["two", "2"]),
    ]
    code_lines = [
        gens_line("c-0", "code", "def f(x):", ["return x", "def f return x " * 12]),
    ]
    gens = []
    for name, lines in (("math", math_lines), ("code", code_lines)):
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps(ln) + "\n" for ln in lines))
        gens.append(path)
    return {
        "root": root,
        "rm": str(root / "rm"),
        "gens": gens,
        "lines": math_lines + code_lines,
    }


def one_by_one(rm_dir, lines, max_length, system_prompt=None):
    """Reference scores: each conversation alone, no padding, cut on the left."""
    tok = load_tokenizer(rm_dir)
    rm = load_reward_model(rm_dir).eval()
    out, cut = [], 0
    with torch.no_grad():
        for ln in lines:
            for conv in candidate_conversations(ln):
                if system_prompt:
                    conv = [{"role": "system", "content": system_prompt}, *conv]
                ids = tok(chat_text(tok, conv))["input_ids"]
                if len(ids) > max_length:
                    cut += 1
                    ids = ids[-max_length:]
                logits = rm(input_ids=torch.tensor([ids])).logits
                out.append(logits[0, 0].item())
    return out, cut


def convs_of(lines):
    return [c for ln in lines for c in candidate_conversations(ln)]


def test_scores_equal_one_by_one_with_truncation(world):
    cfg = ScoreConfig(batch_size=3, max_length=24, device="cpu")
    scores, cut = score_conversations(
        load_scorer(world["rm"], cfg), convs_of(world["lines"]), cfg=cfg
    )
    ref, ref_cut = one_by_one(world["rm"], world["lines"], 24)
    assert cut == ref_cut >= 2  # long candidates were cut
    assert scores.tolist() == pytest.approx(ref, abs=1e-5)
    assert len({round(s, 6) for s in scores}) > 4  # the RM tells candidates apart


def test_same_as_the_scorer_it_wraps(world):
    cfg = ScoreConfig(batch_size=2, max_length=30, device="cpu", system_prompt="Hi.")
    old, _ = score_conversations(
        load_scorer(world["rm"], cfg), convs_of(world["lines"]), cfg=cfg
    )
    from pipelines.common.scoring import load_scorer as load

    scorer = load(world["rm"], ScorerConfig(batch_size=2, device="cpu"))
    settings = InputSettings(max_length=30, system_prompt="Hi.")
    new = score_inputs(scorer, [ScoringInput("c", convs_of(world["lines"]), settings)])
    np.testing.assert_array_equal(old, new["c"].scores)


def test_rm_is_scored_with_its_recorded_system_prompt(world, tmp_path):
    rm = tmp_path / "rm"
    shutil.copytree(world["rm"], rm)
    record = {"chat_template": CHAT_TEMPLATE, "system_prompt": "Be brief."}
    (rm / "run_config.json").write_text(json.dumps({"chat_format": record}))

    def scores(**kw):
        cfg = ScoreConfig(batch_size=3, device="cpu", **kw)
        scorer = load_scorer(str(rm), cfg)
        return score_conversations(scorer, convs_of(world["lines"]), cfg=cfg)[
            0
        ].tolist(), scorer.chat_format

    default, fmt = scores()
    explicit, _ = scores(system_prompt="Be brief.")
    none, fmt_none = scores(system_prompt="")
    assert default == explicit
    assert default == pytest.approx(
        one_by_one(world["rm"], world["lines"], 1024, "Be brief.")[0], abs=1e-5
    )
    assert none == pytest.approx(
        one_by_one(world["rm"], world["lines"], 1024)[0], abs=1e-5
    )
    assert fmt.system_prompt == "Be brief."
    assert fmt.system_prompt_source == str(rm / "run_config.json")
    assert fmt_none.system_prompt is None


def test_loaded_scorer_exposes_the_model(world):
    scorer = load_scorer(world["rm"], ScoreConfig(device="cpu"))
    assert scorer.device.type == "cpu" and scorer.new_head is False
    assert scorer.model.config.pad_token_id == scorer.tok.pad_token_id


@pytest.mark.parametrize(
    "bad",
    [{"batch_size": 0}, {"truncation_side": "middle"}, {"dtype": "fp8"}],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        ScoreConfig(**bad)
