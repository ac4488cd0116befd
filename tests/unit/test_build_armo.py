import json

import numpy as np
import pytest
import torch
from transformers import AutoModel

from pipelines.build_armo import BuildArmoConfig, build_armo, main
from pipelines.common.armo.gating import load_gating
from pipelines.common.armo.model import ArmoModelError, is_armo_folder, load_armo
from pipelines.common.modeling import chat_text, encode_conversations, load_tokenizer
from pipelines.common.scoring import (
    InputSettings,
    ScorerConfig,
    ScoringInput,
    load_scorer,
    score_inputs,
)
from tests.unit.armo_fixtures import (
    conv,
    make_backbone,
    write_gating,
    write_regression,
)

NAMES = ["correctness", "verbosity", "format"]
CONVS = [
    conv("what is two plus five", "seven because two plus five"),
    conv("def f", "return x"),
    conv("why is the sky", "because " * 9 + "sky"),
    [
        {"role": "user", "content": "what is two"},
        {"role": "assistant", "content": "seven"},
        {"role": "user", "content": "and five"},
        {"role": "assistant", "content": "five plus two is seven"},
    ],
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("armo_model")
    backbone = make_backbone(root)
    weight = np.random.default_rng(0).normal(size=(3, 32)).astype(np.float32)
    regression = write_regression(root / "regression.safetensors", weight, NAMES)
    gating = write_gating(root / "gating.safetensors", 32, NAMES, v=1)
    folder = root / "armo"
    build_armo(str(backbone), regression, gating, folder)
    return {
        "backbone": str(backbone),
        "weight": weight,
        "gating": gating,
        "folder": folder,
    }


def by_hand(parts, messages):
    """Score, rewards, gates from the backbone's states, W, T and the gating net."""
    tok = load_tokenizer(parts["backbone"])
    ids = tok(chat_text(tok, messages), add_special_tokens=True)["input_ids"]
    model = AutoModel.from_pretrained(parts["backbone"]).eval()
    with torch.no_grad():
        states = model(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
    eos, asst = tok.convert_tokens_to_ids(["<|endoftext|>", "<|assistant|>"])
    at = max(i for i in range(len(ids) - 1) if ids[i : i + 2] == [eos, asst])
    rewards = parts["weight"].astype(np.float64) @ states[-1]
    net, transform, _ = load_gating(parts["gating"])
    with torch.no_grad():
        gates = net(torch.as_tensor(states[at])[None])[0].numpy()
    return float(gates @ (rewards @ transform)), rewards, gates


def test_folder_scores_as_the_formula_says(parts):
    armo = load_armo(parts["folder"])
    for messages in CONVS:
        got = armo.score(messages)
        score, rewards, gates = by_hand(parts, messages)
        assert got.score == pytest.approx(score, abs=1e-4)
        np.testing.assert_allclose(list(got.rewards.values()), rewards, atol=1e-4)
        np.testing.assert_allclose(list(got.gates.values()), gates, atol=1e-5)
        assert list(got.rewards) == NAMES
        assert sum(got.gates.values()) == pytest.approx(1.0, abs=1e-5)  # scale 1


def test_the_scorer_loads_it_like_any_rm(parts):
    assert is_armo_folder(parts["folder"])
    config = json.loads((parts["folder"] / "armo_config.json").read_text())
    assert config["attributes"] == NAMES and len(config["pattern"]) == 2
    scorer = load_scorer(str(parts["folder"]), ScorerConfig(batch_size=3))
    got = score_inputs(scorer, [ScoringInput("x", CONVS)])["x"].scores
    armo = load_armo(parts["folder"])
    expected = [armo.score(m).score for m in CONVS]  # one at a time
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_a_sequence_cut_before_its_reply_is_gated_at_its_first_token(parts):
    # max_length 6 cuts the user turn and the pattern away (left truncation)
    messages = CONVS[2]
    settings = InputSettings(max_length=6, truncation_side="left")
    scorer = load_scorer(str(parts["folder"]), ScorerConfig())
    got = score_inputs(scorer, [ScoringInput("cut", [messages], settings)])["cut"]
    assert got.truncated.tolist() == [True]
    assert scorer.model.n_without_prompt == 1
    tok = load_tokenizer(parts["backbone"])
    ids = encode_conversations(tok, [messages], max_length=6).ids[0]
    model = AutoModel.from_pretrained(parts["backbone"]).eval()
    with torch.no_grad():
        states = model(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
    rewards = parts["weight"].astype(np.float64) @ states[-1]
    net, transform, _ = load_gating(parts["gating"])
    with torch.no_grad():
        gates = net(torch.as_tensor(states[0])[None])[0].numpy()
    assert got.scores[0] == pytest.approx(
        float(gates @ (rewards @ transform)), abs=1e-4
    )


def test_mismatched_parts_are_refused(parts, tmp_path):
    other = write_regression(
        tmp_path / "r.safetensors", parts["weight"], ["a", "verbosity", "c"]
    )
    with pytest.raises(ArmoModelError, match="attributes"):
        build_armo(parts["backbone"], other, parts["gating"], tmp_path / "m")
    narrow = write_regression(tmp_path / "n.safetensors", parts["weight"][:, :8], NAMES)
    gating8 = write_gating(tmp_path / "g.safetensors", 8, NAMES)
    with pytest.raises(ArmoModelError, match="hidden size 32"):
        build_armo(parts["backbone"], narrow, gating8, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    with pytest.raises(ArmoModelError, match="not an ArmoRM folder"):
        load_armo(parts["backbone"])


def test_cli_writes_a_loadable_folder(parts, tmp_path):
    out = tmp_path / "cli"
    rc = main(
        [
            "--backbone",
            parts["backbone"],
            "--regression",
            str(parts["folder"] / "regression.safetensors"),
            "--gating",
            str(parts["gating"]),
            "--out",
            str(out),
            "--dtype",
            "float32",
        ]
    )
    assert rc == 0 and is_armo_folder(out)
    assert BuildArmoConfig().dtype == "float32"
    a = load_armo(out).score(CONVS[0]).score
    b = load_armo(parts["folder"]).score(CONVS[0]).score
    assert a == pytest.approx(b, abs=1e-6)
