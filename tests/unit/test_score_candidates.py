import hashlib
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
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
from pipelines.score_candidates import (
    ScoreConfig,
    candidate_conversations,
    load_scorer,
    main,
    score_candidates,
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


def test_parquet_schema_rows_and_scores(world):
    out = world["root"] / "scores.parquet"
    cfg = ScoreConfig(batch_size=3, max_length=24, device="cpu")
    summary = score_candidates(world["rm"], world["gens"], out, cfg=cfg)
    table = pq.read_table(out)
    assert table.schema == pa.schema(
        [
            ("prompt_id", pa.string()),
            ("domain", pa.string()),
            ("cand_idx", pa.int64()),
            ("score", pa.float64()),
        ]
    )
    rows = table.to_pylist()
    expected_keys = [
        (ln["prompt_id"], ln["domain"], i)
        for ln in world["lines"]
        for i in range(len(ln["candidates"]))
    ]
    assert [(r["prompt_id"], r["domain"], r["cand_idx"]) for r in rows] == expected_keys
    assert summary["n_rows"] == len(rows) == 8
    assert summary["n_prompts"] == 3
    ref, cut = one_by_one(world["rm"], world["lines"], 24)
    assert cut >= 2 and summary["n_truncated"] == cut  # long candidates were cut
    got = [r["score"] for r in rows]
    assert got == pytest.approx(ref, abs=1e-5)
    assert len({round(s, 6) for s in got}) > 4  # the RM tells candidates apart
    assert set(summary["mean_score"]) == {"math", "code"}
    assert summary["candidates_per_second"] > 0


def test_length_sorted_equals_input_order(world):
    cfg = ScoreConfig(batch_size=3, max_length=1024, device="cpu")
    scorer = load_scorer(world["rm"], cfg)
    convs = [c for ln in world["lines"] for c in candidate_conversations(ln)]
    lengths = [len(scorer.tok(chat_text(scorer.tok, c))["input_ids"]) for c in convs]
    assert lengths != sorted(lengths, reverse=True)  # sorting reorders the batches
    sorted_scores, cut = score_conversations(scorer, convs, cfg=cfg)
    plain, _ = score_conversations(scorer, convs, cfg=cfg, sort_by_length=False)
    single, _ = score_conversations(
        scorer, convs, cfg=ScoreConfig(batch_size=1, device="cpu"), sort_by_length=False
    )
    assert cut == 0
    assert sorted_scores == pytest.approx(plain, abs=1e-5)
    assert sorted_scores == pytest.approx(single, abs=1e-5)
    ref, _ = one_by_one(world["rm"], world["lines"], 1024)
    assert sorted_scores == pytest.approx(ref, abs=1e-5)


def test_rm_is_scored_with_its_recorded_system_prompt(world, tmp_path):
    rm = tmp_path / "rm"
    shutil.copytree(world["rm"], rm)
    record = {"chat_template": CHAT_TEMPLATE, "system_prompt": "Be brief."}
    (rm / "run_config.json").write_text(json.dumps({"chat_format": record}))

    def scores(name, **kw):
        out = tmp_path / f"{name}.parquet"
        cfg = ScoreConfig(batch_size=3, device="cpu", **kw)
        summary = score_candidates(str(rm), world["gens"], out, cfg=cfg)
        meta = json.loads(pq.read_schema(out).metadata[b"rmflow"])
        assert meta["chat_format"] == summary["settings"]["chat_format"]
        return [r["score"] for r in pq.read_table(out).to_pylist()], meta

    default, meta = scores("default")
    explicit, _ = scores("explicit", system_prompt="Be brief.")
    none, meta_none = scores("none", system_prompt="")
    assert default == explicit
    assert default == pytest.approx(
        one_by_one(world["rm"], world["lines"], 1024, "Be brief.")[0], abs=1e-5
    )
    assert none == pytest.approx(
        one_by_one(world["rm"], world["lines"], 1024)[0], abs=1e-5
    )
    assert none != pytest.approx(default, abs=1e-4)
    assert meta["model"] == str(rm)
    assert meta["chat_format"]["system_prompt"] == "Be brief."
    assert meta["chat_format"]["system_prompt_source"] == str(rm / "run_config.json")
    sha = hashlib.sha256(CHAT_TEMPLATE.encode()).hexdigest()
    assert meta["chat_format"]["chat_template_sha256"] == sha
    assert meta_none["chat_format"]["system_prompt"] is None


def test_cli_writes_parquet(world):
    out = world["root"] / "cli.parquet"
    rc = main(
        [
            "--model",
            world["rm"],
            "--gens",
            *map(str, world["gens"]),
            "--out",
            str(out),
            "--batch-size",
            "2",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    assert pq.read_table(out).num_rows == 8


def test_failure_leaves_no_output(world, tmp_path):
    out = tmp_path / "scores.parquet"
    with pytest.raises((OSError, ValueError)):
        score_candidates(str(tmp_path / "no-rm"), world["gens"], out, cfg=ScoreConfig())
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no candidates"):
        score_candidates(world["rm"], [empty], out, cfg=ScoreConfig())
    assert list(tmp_path.iterdir()) == [empty]


@pytest.mark.parametrize(
    "bad", [{"batch_size": 0}, {"truncation_side": "middle"}, {"dtype": "fp8"}]
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        ScoreConfig(**bad)


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--model",
        "--gens",
        "--out",
        "--batch-size",
        "--max-length",
        "--truncation-side",
        "--tokenizer",
        "--dtype",
        "--device",
    ):
        assert flag in text
