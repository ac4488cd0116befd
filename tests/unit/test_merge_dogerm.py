"""DogeRM linear merge on tiny hand-built GPT-NeoX models."""

from __future__ import annotations

import copy
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pipelines.common.chat_format import CHAT_TEMPLATE
from pipelines.common.modeling import (
    TinyArch,
    encode_conversations,
    init_tiny_causal_lm,
    score_ids,
    train_tokenizer,
)
from pipelines.common.scoring import (
    InputSettings,
    ScorerConfig,
    ScoringInput,
    load_scorer,
    score_inputs,
)
from pipelines.merge_dogerm import MergeConfig, main, merge_dogerm

ARCH = TinyArch(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=128,
)
EXTRA = ("<|extra|>", "zzqxw")
CONVS = [
    [{"role": "user", "content": "what is two plus two"}],
    [
        {"role": "user", "content": "write a short poem"},
        {"role": "assistant", "content": "the cat sat on the mat"},
    ],
    [{"role": "user", "content": "hello there friend"}],
]


def _texts() -> list[str]:
    words = "the cat sat on a mat two plus four is six write poem hello friend".split()
    return [
        " ".join(words[(i * k) % len(words)] for k in range(1, 6)) for i in range(300)
    ]


def _save_lm(model: torch.nn.Module, tok, folder: Path, **kwargs: object) -> Path:
    model.save_pretrained(folder, **kwargs)
    tok.save_pretrained(folder)
    return folder


def _load_rm(folder: Path) -> torch.nn.Module:
    return AutoModelForSequenceClassification.from_pretrained(
        str(folder), num_labels=1
    ).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """RM, LM, LM with two extra tokens, sharded LM, and a wider LM."""
    root = tmp_path_factory.mktemp("merge")
    tok = train_tokenizer(_texts(), vocab_size=300, min_frequency=1)
    base = _save_lm(init_tiny_causal_lm(tok, seed=0, arch=ARCH), tok, root / "base")
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1)
    torch.nn.init.normal_(rm.score.weight, std=1.0)
    rm.config.pad_token_id = tok.pad_token_id
    out = {"tok": tok, "rm": _save_lm(rm, tok, root / "rm")}
    lm = init_tiny_causal_lm(tok, seed=1, arch=ARCH)
    out["lm"] = _save_lm(lm, tok, root / "lm")
    out["lm_sharded"] = _save_lm(lm, tok, root / "lm_sharded", max_shard_size="40KB")

    tok2 = copy.deepcopy(tok)
    tok2.add_special_tokens(
        {"additional_special_tokens": [EXTRA[0]]}, replace_extra_special_tokens=False
    )
    tok2.add_tokens([EXTRA[1]])
    ext = init_tiny_causal_lm(tok, seed=2, arch=ARCH)
    ext.resize_token_embeddings(len(tok2))
    with torch.no_grad():
        emb = ext.get_input_embeddings().weight
        emb[len(tok)] = 7.0
        emb[len(tok) + 1] = -3.0
    out["lm_ext"] = _save_lm(ext, tok2, root / "lm_ext")

    wide = init_tiny_causal_lm(
        tok, seed=3, arch=TinyArch(**{**ARCH.__dict__, "hidden_size": 64})
    )
    out["lm_wide"] = _save_lm(wide, tok, root / "lm_wide")
    return out


def _scores(folder: Path, tok) -> np.ndarray:
    model = _load_rm(folder)
    ids = encode_conversations(tok, CONVS, max_length=64).ids
    return score_ids(model, ids, pad_id=tok.pad_token_id)


def _state(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f))
    return state


def test_rm_weight_one_reproduces_rm_scores(models, tmp_path):
    out = tmp_path / "m"
    merge_dogerm(
        str(models["rm"]),
        str(models["lm"]),
        out,
        cfg=MergeConfig(rm_weight=1.0, lm_weight=0.0),
    )
    tok = AutoTokenizer.from_pretrained(str(out))
    expected = _scores(models["rm"], models["tok"])
    np.testing.assert_array_equal(_scores(out, tok), expected)


def test_lm_weight_one_takes_lm_body_and_rm_head(models, tmp_path):
    out = tmp_path / "m"
    summary = merge_dogerm(
        str(models["rm"]),
        str(models["lm"]),
        out,
        cfg=MergeConfig(rm_weight=0.0, lm_weight=1.0),
    )
    merged, rm, lm = _state(out), _state(models["rm"]), _state(models["lm"])
    assert "embed_out.weight" not in merged
    torch.testing.assert_close(
        merged["score.weight"], rm["score.weight"], rtol=0, atol=0
    )
    body = [n for n in merged if n.startswith("gpt_neox.") and "embed" not in n]
    assert any(".layers.1." in n for n in body)
    assert "gpt_neox.final_layer_norm.weight" in body
    for name in body:
        torch.testing.assert_close(merged[name], lm[name], rtol=0, atol=0)
    assert summary["tensors"]["merged"] == len(body)
    assert summary["tensors"]["copied_score"] == 1
    assert summary["tensors"]["dropped_lm_only"] == 1


@pytest.mark.parametrize("lm_key", ["lm", "lm_sharded"])
def test_linear_combination(models, tmp_path, lm_key):
    out = tmp_path / "m"
    summary = merge_dogerm(
        str(models["rm"]),
        str(models[lm_key]),
        out,
        cfg=MergeConfig(rm_weight=0.3, lm_weight=0.7, shard_size_mb=0.05),
    )
    assert summary["shards"] > 1
    assert (out / "model.safetensors.index.json").exists()
    merged, rm, lm = _state(out), _state(models["rm"]), _state(models["lm"])
    for name in (
        "gpt_neox.layers.0.attention.dense.weight",
        "gpt_neox.layers.1.mlp.dense_h_to_4h.bias",
        "gpt_neox.embed_in.weight",
    ):
        torch.testing.assert_close(merged[name], 0.3 * rm[name] + 0.7 * lm[name])
    assert _load_rm(out) is not None


def test_lm_only_tokens_appended(models, tmp_path):
    out = tmp_path / "m"
    summary = merge_dogerm(
        str(models["rm"]),
        str(models["lm_ext"]),
        out,
        cfg=MergeConfig(rm_weight=0.6, lm_weight=0.4),
    )
    n = len(models["tok"])
    assert (summary["rm_vocab"], summary["out_vocab"]) == (n, n + 2)
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.convert_tokens_to_ids(list(EXTRA)) == [n, n + 1]
    assert EXTRA[0] in tok.all_special_tokens
    emb = _state(out)["gpt_neox.embed_in.weight"]
    rm_emb = _state(models["rm"])["gpt_neox.embed_in.weight"]
    lm_emb = _state(models["lm_ext"])["gpt_neox.embed_in.weight"]
    assert emb.shape[0] == n + 2
    torch.testing.assert_close(emb[:n], 0.6 * rm_emb[:n] + 0.4 * lm_emb[:n])
    assert torch.all(emb[n] == 7.0) and torch.all(emb[n + 1] == -3.0)
    assert json.loads((out / "config.json").read_text())["vocab_size"] == n + 2
    model = _load_rm(out)
    ids = encode_conversations(tok, CONVS, max_length=64).ids
    ids[0] = [*ids[0], n, n + 1]
    assert np.isfinite(score_ids(model, ids, pad_id=tok.pad_token_id)).all()


def test_rm_only_token_refused(models, tmp_path):
    out = tmp_path / "m"
    with pytest.raises(ValueError, match="not in the LM vocabulary"):
        merge_dogerm(str(models["lm_ext"]), str(models["lm"]), out, cfg=MergeConfig())
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_different_hidden_size_refused(models, tmp_path):
    out = tmp_path / "m"
    with pytest.raises(ValueError, match="hidden_size") as err:
        merge_dogerm(str(models["rm"]), str(models["lm_wide"]), out, cfg=MergeConfig())
    assert "32" in str(err.value) and "64" in str(err.value)
    assert not out.exists()


def test_weights_not_summing_to_one_warn(models, tmp_path, caplog):
    out = tmp_path / "m"
    with caplog.at_level(logging.WARNING, logger="pipelines.merge_dogerm"):
        merge_dogerm(
            str(models["rm"]),
            str(models["lm"]),
            out,
            cfg=MergeConfig(rm_weight=0.8, lm_weight=0.8),
        )
    assert any("not 1" in r.getMessage() for r in caplog.records)
    merged, rm, lm = _state(out), _state(models["rm"]), _state(models["lm"])
    name = "gpt_neox.layers.0.attention.query_key_value.weight"
    torch.testing.assert_close(merged[name], 0.8 * rm[name] + 0.8 * lm[name])
    summary = json.loads((out / "merge_config.json").read_text())
    assert summary["rm_weight"] == 0.8 and summary["lm_weight"] == 0.8


def test_merge_logs_a_progress_line_per_tensor_at_cadence_zero(
    models, tmp_path, caplog
):
    n = len(_state(models["rm"]))  # the RM's tensors, read from its files
    with caplog.at_level(logging.INFO, logger="pipelines.merge_dogerm"):
        merge_dogerm(
            str(models["rm"]),
            str(models["lm"]),
            tmp_path / "m",
            cfg=MergeConfig(rm_weight=0.5, lm_weight=0.5),
            progress_every=0.0,
        )
    line = re.compile(r"^merge_dogerm: (\d+)/(\d+) tensors .*?( \(done\))?$")
    found = [line.match(r.getMessage()) for r in caplog.records]
    lines = [(int(m[1]), int(m[2]), bool(m[3])) for m in found if m]
    assert lines == [(k, n, False) for k in range(1, n + 1)] + [(n, n, True)]


def test_cli_merge(models, tmp_path):
    out = tmp_path / "cli"
    argv = ["merge", "--rm", str(models["rm"]), "--lm", str(models["lm"])]
    argv += ["--out", str(out), "--rm-weight", "0.7", "--lm-weight", "0.3"]
    assert main(argv) == 0
    summary = json.loads((out / "merge_config.json").read_text())
    assert (summary["rm_weight"], summary["lm_weight"]) == (0.7, 0.3)
    assert _scores(out, AutoTokenizer.from_pretrained(str(out))).shape == (3,)
    with pytest.raises(SystemExit) as exc:
        main(["merge", "--help"])
    assert exc.value.code == 0


def test_merge_inherits_the_rms_chat_format(models, tmp_path):
    """A merge is scored with the system prompt its RM was trained with, by
    default, whatever its folder is called (DogeRM chose by path text)."""
    rm = tmp_path / "rm-general-seed0"
    shutil.copytree(models["rm"], rm)
    record = {"chat_template": CHAT_TEMPLATE, "system_prompt": "Be helpful."}
    (rm / "run_config.json").write_text(json.dumps({"chat_format": record}))
    out = tmp_path / "merged" / "w0"
    summary = merge_dogerm(
        str(rm), str(models["lm"]), out, cfg=MergeConfig(rm_weight=1.0, lm_weight=0.0)
    )
    run = json.loads((out / "run_config.json").read_text())
    assert run["chat_format"]["system_prompt"] == "Be helpful."
    assert run["chat_format"]["chat_template"] == CHAT_TEMPLATE
    assert run["chat_format"]["system_prompt_source"] == str(rm / "run_config.json")
    assert summary["chat_format"]["system_prompt"] == "Be helpful."
    assert run["merge"]["rm"] == str(rm)

    def scores(model, **kw):
        scorer = load_scorer(str(model), ScorerConfig(device="cpu"))
        got = score_inputs(scorer, [ScoringInput("c", CONVS, InputSettings(**kw))])
        return got["c"].scores

    np.testing.assert_allclose(scores(out), scores(rm), atol=1e-5)  # w = 0
    np.testing.assert_allclose(
        scores(out), scores(models["rm"], system_prompt="Be helpful."), atol=1e-5
    )
    assert not np.allclose(scores(out), scores(out, system_prompt=""), atol=1e-4)
    # an RM without a record: the merge records none and scores like the RM
    plain = tmp_path / "plain"
    merge_dogerm(str(models["rm"]), str(models["lm"]), plain, cfg=MergeConfig())
    assert json.loads((plain / "run_config.json").read_text())["chat_format"] is None
    scorer = load_scorer(str(plain), ScorerConfig(device="cpu"))
    assert scorer.chat_format(InputSettings()).system_prompt is None


def _to_hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """Lay ``folder`` out as the hub cache holds a downloaded snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_hub_ids_merge_like_folders(models, tmp_path, monkeypatch):
    """--rm/--lm as hub ids (DogeRM's Llama-2 pair on a cluster) go through the
    hub cache; offline, a cached snapshot is used and gives the same merge."""
    cache = tmp_path / "hub"
    _to_hub_cache(cache, "org/tiny-rm", models["rm"])
    _to_hub_cache(cache, "org/tiny-lm", models["lm"])
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    cfg = MergeConfig(rm_weight=0.6, lm_weight=0.4)
    merge_dogerm("org/tiny-rm", "org/tiny-lm", tmp_path / "hub_out", cfg=cfg)
    merge_dogerm(str(models["rm"]), str(models["lm"]), tmp_path / "dir_out", cfg=cfg)
    a, b = _state(tmp_path / "hub_out"), _state(tmp_path / "dir_out")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="org/not-cached"):
        merge_dogerm("org/not-cached", str(models["lm"]), tmp_path / "x", cfg=cfg)
