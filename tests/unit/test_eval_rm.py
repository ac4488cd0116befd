import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.build_prefs import BuildPrefsConfig, build_prefs
from pipelines.common import rewardbench as rb
from pipelines.common.benchmarks import autoj_category, load_benchmark
from pipelines.common.modeling import (
    TinyArch,
    encode_conversations,
    init_tiny_causal_lm,
    load_reward_model,
    load_tokenizer,
    score_ids,
    train_tokenizer,
)
from pipelines.common.records import RecordError, read_pairs
from pipelines.common.score_store import (
    StoreError,
    read_metadata,
    read_rows,
    write_store,
)
from pipelines.common.scoring import InputSettings, ScorerConfig
from pipelines.eval_rm import (
    SCORED_WITH,
    EvalConfig,
    eval_rm,
    main,
    make_parser,
    pair_outcomes,
)
from pipelines.score_model import score_model
from pipelines.train_rm import TrainRMConfig, train_rm

# ---------------------------------------------------------------- the oracle RM
# A real GPT-NeoX RM with hand-set weights: the blocks add nothing (their output
# projections are zero), so the pooled hidden state is LayerNorm(embedding of
# the last token). Embeddings are one-hot: "!" on dim 0, "?" on dim 1, every
# other token on dim 2; the head is +1 on dim 0 and -1 on dim 1. So a reply
# ending in "!" scores +c, one ending in "?" scores -c, anything else exactly 0.
# The chat template leaves the last reply open (no EOS after it), so the last
# token is the reply's own last character.
OPEN_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] }}"
    "{% if not loop.last %}{{ '<|endoftext|>' }}{% endif %}{% endfor %}"
)
WORDS = "alpha beta gamma delta answer question code math write story poem list"


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    corpus = [f"{WORDS} {i} {WORDS[::-1]}." for i in range(100)]  # no ! or ?
    tok = train_tokenizer(corpus, vocab_size=300)
    tok.chat_template = OPEN_TEMPLATE
    arch = TinyArch(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    lm = init_tiny_causal_lm(tok, seed=0, arch=arch)
    lm_dir = tmp_path_factory.mktemp("oracle_lm")
    lm.save_pretrained(lm_dir)
    tok.save_pretrained(lm_dir)
    rm = load_reward_model(lm_dir)
    good, bad = tok.convert_tokens_to_ids("!"), tok.convert_tokens_to_ids("?")
    with torch.no_grad():
        for layer in rm.gpt_neox.layers:
            for lin in (layer.attention.dense, layer.mlp.dense_4h_to_h):
                lin.weight.zero_()
                lin.bias.zero_()
        emb = rm.gpt_neox.embed_in.weight
        emb.zero_()
        emb[:, 2] = 1.0
        emb[good] = 0.0
        emb[good, 0] = 1.0
        emb[bad] = 0.0
        emb[bad, 1] = 1.0
        rm.score.weight.zero_()
        rm.score.weight[0, 0] = 1.0
        rm.score.weight[0, 1] = -1.0
    path = tmp_path_factory.mktemp("oracle_rm")
    rm.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def flat(subset, chosen, rejected, i):
    return {
        "id": f"{subset}-{i}",
        "subset": subset,
        "prompt": f"question {i} about math",
        "chosen": f"the answer is alpha {i}{chosen}",
        "rejected": f"the answer is beta {i}{rejected}",
    }


ROOT = Path(__file__).resolve().parents[2]
CFG = EvalConfig()
LOAD = ScorerConfig(batch_size=4, device="cpu")


def score(model, spec, tmp_path, cfg=CFG, name="bench", load=LOAD):
    """The model's score store holding ``spec`` as ``name`` (score_model's job)."""
    store = tmp_path / "scores" / f"{name}.parquet"
    settings = InputSettings(**{k: getattr(cfg, k) for k in SCORED_WITH})
    score_model(
        model,
        store,
        model_id="rm-x-seed0",
        cfg=load,
        benchmarks={name: spec},
        pair_settings=settings,
    )
    return store


def run(model, spec, tmp_path, cfg=CFG, name="bench", load=LOAD):
    """Score, then evaluate from the store, as the two rules do."""
    store = score(model, spec, tmp_path, cfg, name, load)
    out = tmp_path / "eval" / f"{name}.json"
    res = eval_rm(store, spec, out, cfg=cfg, benchmark_name=name)
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    return res, out


@pytest.fixture
def oracle_pairs(tmp_path):
    rows = [flat("right", "!", ".", i) for i in range(5)]
    rows += [flat("wrong", "?", "!", i) for i in range(3)]
    rows += [flat("tie", ".", " alpha", i) for i in range(4)]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def test_oracle_scores_accuracy_and_ties_by_hand(oracle, oracle_pairs, tmp_path):
    res, _ = run(oracle, {"kind": "standard", "path": str(oracle_pairs)}, tmp_path)
    assert res["n_pairs"] == 12 and res["n_ties"] == 4
    subs = res["subsets"]
    assert subs["right"] == {"n": 5, "n_correct": 5.0, "n_ties": 0, "accuracy": 1.0}
    assert subs["wrong"]["accuracy"] == 0.0
    assert subs["tie"] == {"n": 4, "n_correct": 0.0, "n_ties": 4, "accuracy": 0.0}
    assert res["accuracy"] == pytest.approx(5 / 12)
    assert res["overall"] == {"pooled": pytest.approx(5 / 12)}
    by_subset = {}
    for p in res["pairs"]:
        by_subset.setdefault(p["subset"], []).append((p["chosen"], p["rejected"]))
    c = by_subset["right"][0][0]
    assert c > 1.0
    assert all(x == (c, 0.0) for x in by_subset["right"])
    assert all(x == (-c, c) for x in by_subset["wrong"])
    assert all(x == (0.0, 0.0) for x in by_subset["tie"])
    assert [p["id"] for p in res["pairs"]][:2] == ["right-0", "right-1"]


def test_clean_and_spurious_pairs_are_scored_apart(oracle, tmp_path):
    # 5 "right" pairs carry an injected feature, 3 "wrong" and 4 "tie" are
    # clean: by hand, spurious 5/5 correct, clean 0/7 correct (4 ties).
    rows = []
    for subset, c, r, n, feats in (
        ("right", "!", ".", 5, {"politeness": True, "length_padding": False}),
        ("wrong", "?", "!", 3, {"politeness": False, "length_padding": False}),
        ("tie", ".", " alpha", 4, {"politeness": False, "length_padding": False}),
    ):
        for i in range(n):
            row = flat(subset, c, r, i)
            row["metadata"] = {"spurious": feats}
            rows.append(row)
    path = write_jsonl(tmp_path / "features.jsonl", rows)
    res, _ = run(oracle, {"kind": "standard", "path": str(path)}, tmp_path)
    assert res["spurious_split"] == {
        "spurious": {"n": 5, "n_correct": 5.0, "n_ties": 0, "accuracy": 1.0},
        "clean": {"n": 7, "n_correct": 0.0, "n_ties": 4, "accuracy": 0.0},
    }
    assert res["accuracy"] == pytest.approx(5 / 12)
    # one record that does not say which features it carries: no split at all
    del rows[0]["metadata"]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    res, _ = run(oracle, {"kind": "standard", "path": str(path)}, tmp_path, name="m")
    assert res["spurious_split"] is None


def test_generated_test_split_reports_clean_and_spurious(
    random_rm, domain_data, tmp_path
):
    path = domain_data["general"]
    res, _ = run(random_rm, {"kind": "standard", "path": str(path)}, tmp_path)
    recs = read_pairs(path)
    n_spurious = sum(any(r["metadata"]["spurious"].values()) for r in recs)
    split = res["spurious_split"]
    assert split["spurious"]["n"] == n_spurious
    assert split["clean"]["n"] == len(recs) - n_spurious
    credit = {p["id"]: float(p["chosen"] > p["rejected"]) for p in res["pairs"]}
    clean_ids = [r["id"] for r in recs if not any(r["metadata"]["spurious"].values())]
    want = sum(credit[i] for i in clean_ids) / len(clean_ids)
    assert split["clean"]["accuracy"] == pytest.approx(want)


def test_ties_half_policy(oracle, oracle_pairs, tmp_path):
    cfg = EvalConfig(ties="half")
    spec = {"kind": "standard", "path": str(oracle_pairs)}
    res, _ = run(oracle, spec, tmp_path, cfg, load=ScorerConfig(batch_size=3))
    assert res["subsets"]["tie"]["accuracy"] == 0.5
    assert res["subsets"]["right"]["accuracy"] == 1.0
    assert res["accuracy"] == pytest.approx((5 + 0.5 * 4) / 12)
    assert res["settings"]["ties"] == "half"


def test_pair_outcomes_strict():
    credit, tie = pair_outcomes(np.array([1.0, 0.0, 2.0]), np.array([0.0, 0.0, 3.0]))
    assert credit.tolist() == [1.0, 0.0, 0.0] and tie.tolist() == [False, True, False]
    credit, _ = pair_outcomes(np.array([0.0]), np.array([0.0]), ties="half")
    assert credit.tolist() == [0.5]
    with pytest.raises(ValueError):
        pair_outcomes(np.zeros(1), np.zeros(1), ties="drop")


def autoj_row(scenario, label, first, second, i):
    return {
        "prompt": f"write something {i}",
        "response 1": f"alpha answer {i}{first}",
        "response 2": f"beta answer {i}{second}",
        "label": label,
        "scenario": scenario,
    }


def test_autoj_ties_dropped_and_categories(oracle, tmp_path):
    rows = [
        autoj_row("math_reasoning", 0, "!", ".", 0),  # right (resp 1 better, +c)
        autoj_row("math_reasoning", 1, "!", ".", 1),  # wrong (resp 2 better, 0)
        autoj_row("solving_exam_question_with_math", 1, "?", "!", 2),  # right
        autoj_row("code_generation", 1, ".", "?", 3),  # wrong (-c < 0)
        autoj_row("code_generation", 2, "!", "?", 4),  # tie label: dropped
        autoj_row("writing_email", 0, ".", "?", 5),  # right (0 > -c)
        autoj_row("writing_email", 2, ".", ".", 6),  # dropped
        autoj_row("writing_email", 0, ".", ",", 7),  # exact score tie: wrong
    ]
    path = write_jsonl(tmp_path / "testdata_pairwise.jsonl", rows)
    res, _ = run(oracle, {"kind": "autoj", "path": str(path)}, tmp_path)
    assert res["load"]["ties_dropped"] == 2 and res["load"]["read"] == 8
    assert res["n_pairs"] == 6 and res["n_ties"] == 1
    assert set(res["subsets"]) == {
        "math_reasoning",
        "solving_exam_question_with_math",
        "code_generation",
        "writing_email",
    }
    assert res["sections"] == {
        "Math": {"n": 3, "accuracy": pytest.approx(2 / 3)},
        "Code": {"n": 1, "accuracy": 0.0},
        "Other": {"n": 2, "accuracy": 0.5},
    }
    assert res["accuracy"] == pytest.approx(3 / 6)
    # chosen is response 2 when label == 1; ids default to the file row
    pair = next(p for p in res["pairs"] if p["id"] == "autoj-4")
    assert pair["chosen"] < 0.0 and pair["rejected"] == 0.0
    assert autoj_category("explaining_code") == "Code"
    assert autoj_category("ranking") == "Other"


RB_ROWS = {
    # subset: (n right, n wrong) under the oracle
    "alpacaeval-easy": (3, 1),
    "llmbar-natural": (1, 1),
    "xstest-should-refuse": (2, 0),
    "xstest-should-respond": (1, 3),
    "donotanswer": (1, 0),
    "math-prm": (0, 2),
    "hep-python": (2, 0),
}


def rb_rows(table):
    rows, i = [], 0
    for subset, (right, wrong) in table.items():
        for k in range(right + wrong):
            ok = k < right
            rows.append(
                {
                    "id": i,
                    "subset": subset,
                    "prompt": f"question {i}",
                    "chosen": f"alpha {i}" + ("!" if ok else "?"),
                    "rejected": f"beta {i}" + ("." if ok else "!"),
                    "chosen_model": "m1",
                    "rejected_model": "m2",
                }
            )
            i += 1
    return rows


def hand_accuracies(table):
    return {s: r / (r + w) for s, (r, w) in table.items()}


def test_rewardbench_local_file_sections(oracle, tmp_path):
    path = write_jsonl(tmp_path / "rb.jsonl", rb_rows(RB_ROWS))
    spec = {"kind": "rewardbench", "path": str(path)}
    res, _ = run(oracle, spec, tmp_path)
    acc = hand_accuracies(RB_ROWS)
    for s, a in acc.items():
        assert res["subsets"][s]["accuracy"] == pytest.approx(a)
    chat = acc["alpacaeval-easy"]
    safety = (154 * 1.0 + 250 * 0.25 + 136 * 1.0) / (154 + 250 + 136)
    reasoning = (984 * 0.0 + 164 * 1.0) / (984 + 164)
    sec = res["sections"]
    assert sec["Chat"] == {"n": 4, "accuracy": pytest.approx(chat)}
    assert sec["Chat Hard"] == {"n": 2, "accuracy": pytest.approx(0.5)}
    assert sec["Safety"] == {"n": 7, "accuracy": pytest.approx(safety)}
    assert sec["Reasoning"] == {"n": 4, "accuracy": pytest.approx(reasoning)}
    assert sec["Prior Sets"] == {"n": 0, "accuracy": None}
    mean4 = (chat + 0.5 + safety + reasoning) / 4
    assert res["overall"]["sections_mean"] == pytest.approx(mean4)
    assert res["overall"]["leaderboard_2024"] == pytest.approx(mean4)  # masked
    assert res["settings"]["xstest_weights"] == "corrected"

    legacy = EvalConfig(xstest_weights="legacy")
    res2, _ = run(oracle, spec, tmp_path, legacy, name="legacy")
    legacy_safety = (250 * 1.0 + 154 * 0.25 + 136 * 1.0) / (250 + 154 + 136)
    assert res2["sections"]["Safety"]["accuracy"] == pytest.approx(legacy_safety)
    assert res2["sections"]["Chat"] == sec["Chat"]


def write_split_folder(root, split_rows):
    """A local dataset folder laid out as on the hub: data/{split}-00000-of-00001."""
    (root / "data").mkdir(parents=True)
    for split, rows in split_rows.items():
        write_jsonl(root / "data" / f"{split}-00000-of-00001.jsonl", rows)
    return root


def prior_rows(n_right, n_wrong, start):
    rows = []
    for k in range(n_right + n_wrong):
        ok = k < n_right
        i = start + k
        rows.append(
            {
                "prompt": [
                    {"role": "user", "content": f"hello {i}"},
                    {"role": "assistant", "content": "alpha beta"},
                    {"role": "user", "content": f"and then {i}"},
                ],
                "chosen": f"gamma {i}" + ("!" if ok else "."),
                "rejected": f"delta {i}" + ("?" if ok else "!"),
                "subset": "ignored-row-level-subset",
            }
        )
    return rows


def test_rewardbench_hub_folder_with_prior_sets(oracle, tmp_path):
    core = {s: (1, 0) for names in rb.SECTIONS.values() for s in names}
    core["math-prm"] = (0, 1)
    hub = write_split_folder(tmp_path / "rbhub", {"filtered": rb_rows(core)})
    prior = write_split_folder(
        tmp_path / "prior",
        {
            "anthropic_helpful": prior_rows(1, 1, 0),
            "shp": prior_rows(1, 0, 10),
            "anthropic_harmless": prior_rows(0, 2, 20),
            "pku_safer": prior_rows(0, 1, 30),  # skipped as upstream does
        },
    )
    spec = {"kind": "rewardbench", "hub": str(hub), "prior_sets": {"hub": str(prior)}}
    res, _ = run(oracle, spec, tmp_path)
    assert res["load"]["read"] == 23 + 2 + 1 + 2
    assert res["n_pairs"] == 28
    assert "pku_safer" not in res["subsets"]
    assert res["subsets"]["anthropic_harmless"]["accuracy"] == 0.0
    sec = res["sections"]
    assert sec["Chat"]["accuracy"] == 1.0
    assert sec["Reasoning"]["accuracy"] == pytest.approx(0.5)
    assert sec["Prior Sets"] == {"n": 3, "accuracy": pytest.approx(0.75)}
    assert res["overall"]["leaderboard_2024"] == pytest.approx((2 * 3.5 + 0.75) / 9)
    assert res["overall"]["sections_mean"] == pytest.approx(3.5 / 4)


@pytest.fixture(scope="module")
def domain_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    paths = {}
    for domain in ("general", "math"):
        out = root / domain / "test.jsonl"
        cfg = BuildPrefsConfig(sizes={"test": 10}, sft_size=1, workers=1)
        build_prefs(domain, [out], None, cfg=cfg)
        paths[domain] = out
    return paths


@pytest.fixture(scope="module")
def random_rm(tmp_path_factory, domain_data):
    recs = [r for p in domain_data.values() for r in read_pairs(p)]
    texts = [m["content"] for r in recs for m in r["chosen"] + r["rejected"]]
    tok = train_tokenizer(texts, vocab_size=400)
    lm = init_tiny_causal_lm(tok, seed=0, arch=TinyArch(num_hidden_layers=2))
    path = tmp_path_factory.mktemp("rm")
    lm.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_standard_benchmark_json_fields_and_settings(random_rm, domain_data, tmp_path):
    path = domain_data["math"]
    cfg = EvalConfig(max_length=64)
    load = ScorerConfig(batch_size=5, device="cpu", seed=7)
    spec = {"kind": "standard", "path": str(path)}
    res, out = run(random_rm, spec, tmp_path, cfg, load=load)
    assert res["model_id"] == "rm-x-seed0" and res["model"] == random_rm
    assert res["benchmark"] == {
        "name": "bench",
        "kind": "standard",
        "spec": {"kind": "standard", "path": str(path)},
    }
    recs = read_pairs(path)
    assert res["n_pairs"] == len(recs) == len(res["pairs"])
    assert set(res["subsets"]) == {r["subset"] for r in recs}
    assert res["sections"] == {"math": {"n": 10, "accuracy": res["accuracy"]}}
    # independent re-scoring: same seed -> same new head; scores in record order
    tok = load_tokenizer(random_rm)
    torch.manual_seed(7)
    model = load_reward_model(random_rm)
    enc_c = encode_conversations(tok, [r["chosen"] for r in recs], max_length=64)
    enc_r = encode_conversations(tok, [r["rejected"] for r in recs], max_length=64)
    c = score_ids(model, enc_c.ids, pad_id=tok.pad_token_id, batch_size=1)
    r = score_ids(model, enc_r.ids, pad_id=tok.pad_token_id, batch_size=1)
    np.testing.assert_allclose([p["chosen"] for p in res["pairs"]], c, atol=1e-5)
    np.testing.assert_allclose([p["rejected"] for p in res["pairs"]], r, atol=1e-5)
    assert [p["id"] for p in res["pairs"]] == [x["id"] for x in recs]
    assert res["accuracy"] == pytest.approx(float(np.mean(c > r)))
    full = encode_conversations(tok, [x["chosen"] for x in recs], max_length=10_000)
    assert res["n_truncated_chosen"] == sum(len(s) > 64 for s in full.ids) > 0
    assert res["n_truncated"] == enc_c.truncated + enc_r.truncated
    st = res["settings"]
    for key, value in {
        "batch_size": 5,
        "max_length": 64,
        "truncation_side": "left",
        "dtype": "float32",
        "ties": "wrong",
        "xstest_weights": "corrected",
        "device": "cpu",
        "seed": 7,
        "device_requested": "cpu",
        "sort_by_length": True,
        "pad_token_id": tok.pad_token_id,
        "new_score_head": True,
        "chat_template_is_rmflow_default": True,
    }.items():
        assert st[key] == value, key
    assert len(st["chat_template_sha256"]) == 64
    assert st["chat_format"]["system_prompt"] is None  # a folder without a record
    assert st["chat_format"]["chat_template_source"] == "tokenizer"
    assert {"torch", "transformers", "python"} <= set(st["versions"])
    assert st["pad_token_id"] != st["eos_token_id"]
    assert st["score_store"] == str(tmp_path / "scores" / "bench.parquet")
    assert st["scored_with"] == ["bench"]
    assert not list(out.parent.glob(".*.tmp"))


def test_truncation_side_moves_scores(random_rm, domain_data, tmp_path):
    spec = {"kind": "standard", "path": str(domain_data["general"])}
    left, _ = run(random_rm, spec, tmp_path, EvalConfig(max_length=48), "left")
    right, _ = run(
        random_rm,
        spec,
        tmp_path,
        EvalConfig(max_length=48, truncation_side="right"),
        "right",
    )
    assert left["n_truncated"] == right["n_truncated"] > 0
    assert [p["chosen"] for p in left["pairs"]] != [p["chosen"] for p in right["pairs"]]


@pytest.fixture(scope="module")
def terse_rm(random_rm, domain_data, tmp_path_factory):
    """An RM trained (two steps) with the system prompt "You are terse."."""
    out = tmp_path_factory.mktemp("terse") / "rm"
    cfg = TrainRMConfig(
        max_steps=2, batch_size=4, device="cpu", system_prompt="You are terse."
    )
    train_rm([domain_data["math"]], random_rm, out, seed=0, cfg=cfg)
    return str(out)


def _manual_scores(model_dir, recs, system_prompt):
    """Score with the system turn prepended by hand (independent of eval_rm)."""
    tok = load_tokenizer(model_dir)
    model = load_reward_model(model_dir)
    out = []
    for key in ("chosen", "rejected"):
        convs = [
            [{"role": "system", "content": system_prompt}, *r[key]]
            if system_prompt
            else r[key]
            for r in recs
        ]
        ids = encode_conversations(tok, convs, max_length=1024).ids
        out.append(score_ids(model, ids, pad_id=tok.pad_token_id, batch_size=1))
    return out


def test_rm_trained_with_system_prompt_is_scored_with_it(
    terse_rm, domain_data, tmp_path
):
    spec = {"kind": "standard", "path": str(domain_data["math"])}
    recs = read_pairs(domain_data["math"])

    def scores(**kw):
        res, _ = run(terse_rm, spec, tmp_path, EvalConfig(**kw), "x")
        chosen = [p["chosen"] for p in res["pairs"]]
        return res, np.array(chosen + [p["rejected"] for p in res["pairs"]])

    default, s_default = scores()
    _, s_explicit = scores(system_prompt="You are terse.")
    _, s_none = scores(system_prompt="")
    other, s_other = scores(system_prompt="Answer in French.")
    np.testing.assert_array_equal(s_default, s_explicit)
    assert not np.allclose(s_default, s_none, atol=1e-4)
    want = np.concatenate(_manual_scores(terse_rm, recs, "You are terse."))
    np.testing.assert_allclose(s_default, want, atol=1e-5)
    # an explicit setting wins over the model's run_config.json
    want = np.concatenate(_manual_scores(terse_rm, recs, "Answer in French."))
    np.testing.assert_allclose(s_other, want, atol=1e-5)
    np.testing.assert_allclose(
        s_none, np.concatenate(_manual_scores(terse_rm, recs, None)), atol=1e-5
    )
    fmt = default["settings"]["chat_format"]
    assert fmt["system_prompt"] == "You are terse."
    assert fmt["system_prompt_source"].endswith("run_config.json")
    assert fmt["chat_template_is_rmflow_default"] is True
    assert other["settings"]["chat_format"]["system_prompt_source"] == "config"


def test_cli_writes_json_from_spec_or_plain_path(random_rm, domain_data, tmp_path):
    out = tmp_path / "cli.json"
    spec = {"kind": "standard", "path": str(domain_data["general"])}
    store = score(random_rm, spec, tmp_path, name="general-test")
    argv = [
        "--scores", str(store), "--benchmark-name", "general-test",
        "--benchmark", json.dumps(spec), "--out", str(out), "--ties", "half",
    ]  # fmt: skip
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert res["benchmark"]["name"] == "general-test"
    assert res["settings"]["batch_size"] == 4 and res["settings"]["ties"] == "half"
    args = make_parser().parse_args(
        [*argv[:4], "--benchmark", str(domain_data["general"]), "--out", "x.json"]
    )
    assert args.benchmark == {"kind": "standard", "path": str(domain_data["general"])}
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0


def test_config_rejects_bad_values():
    for bad in (
        {"ties": "drop"},
        {"truncation_side": "middle"},
        {"xstest_weights": "new"},
        {"max_length": 0},
    ):
        with pytest.raises(ValueError):
            EvalConfig(**bad)


AJ = {"prompt": "q", "response 1": "a", "response 2": "b", "label": 0, "scenario": "s"}
RB = {"prompt": "q", "chosen": "a", "rejected": "b", "subset": "shp"}
GOOD = {
    "rewardbench": RB,
    "autoj": AJ,
    "standard": {k: RB[k] for k in RB if k != "subset"},
}
BAD_ROWS = [
    ("rewardbench", {k: v for k, v in RB.items() if k != "chosen"}, "chosen"),
    ("rewardbench", {k: v for k, v in RB.items() if k != "subset"}, "subset"),
    ("rewardbench", {**RB, "prompt": 3}, "prompt"),
    (
        "rewardbench",
        {**RB, "prompt": [{"role": "bot", "content": "x"}]},
        "prompt[0].role",
    ),
    ("autoj", {**AJ, "label": 5}, "label"),
    ("autoj", {**AJ, "label": True}, "label"),
    ("autoj", {k: v for k, v in AJ.items() if k != "scenario"}, "scenario"),
    ("autoj", {**AJ, "response 1": 1}, "response 1"),
    ("standard", {"prompt": "q", "chosen": "a", "rejected": "a"}, "rejected"),
]


@pytest.mark.parametrize(("kind", "row", "field"), BAD_ROWS)
def test_bad_rows_name_file_row_field_and_leave_no_output(
    oracle, tmp_path, kind, row, field
):
    good = GOOD[kind]
    path = write_jsonl(tmp_path / "bad.jsonl", [good, good, row])
    out = tmp_path / "eval" / "bad.json"
    with pytest.raises(RecordError) as exc:  # the benchmark is read first
        eval_rm(
            tmp_path / "no-store.parquet",
            {"kind": kind, "path": str(path)},
            out,
            cfg=CFG,
            benchmark_name="b",
        )
    assert exc.value.source == str(path)
    assert exc.value.row == 3
    assert exc.value.field == field
    assert f"bad.jsonl: row 3: field '{field}'" in str(exc.value)
    assert not out.exists()


def test_cli_bad_row_is_one_line_and_exit_2(oracle, tmp_path):
    good = GOOD["standard"]
    path = write_jsonl(tmp_path / "bad.jsonl", [good, {**good, "chosen": 5}])
    out = tmp_path / "eval" / "bad.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-m", "pipelines.eval_rm", "--scores", oracle]
        + ["--benchmark-name", "b", "--benchmark", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "bad.jsonl: row 2: field 'chosen'" in last
    assert "Traceback" not in res.stderr
    assert not out.exists()


def test_skip_invalid_rows_are_counted(tmp_path):
    rows = rb_rows({"shp": (2, 0)}) + [{"prompt": "q", "subset": "shp"}]
    path = write_jsonl(tmp_path / "rb.jsonl", rows)
    bench = load_benchmark(
        {"kind": "rewardbench", "path": str(path), "on_invalid": "skip"}
    )
    assert len(bench.records) == 2
    assert bench.counts()["skipped"] == 1 and bench.counts()["read"] == 3
    with pytest.raises(ValueError, match="unknown"):
        load_benchmark({"kind": "autoj", "path": str(path), "format": "flat"})
    with pytest.raises(ValueError, match="kind"):
        load_benchmark({"kind": "mystery", "path": str(path)})
    with pytest.raises(FileNotFoundError):
        load_benchmark({"kind": "autoj", "path": str(tmp_path / "none.jsonl")})


def test_failure_keeps_previous_output(oracle_pairs, tmp_path):
    out = tmp_path / "eval" / "keep.json"
    out.parent.mkdir(parents=True)
    out.write_text('{"old": true}\n')
    with pytest.raises(OSError):
        eval_rm(
            tmp_path / "no-such-store.parquet",
            {"kind": "standard", "path": str(oracle_pairs)},
            out,
            cfg=CFG,
            benchmark_name="b",
        )
    assert json.loads(out.read_text()) == {"old": True}
    assert sorted(p.name for p in out.parent.iterdir()) == ["keep.json"]


def test_float_scores_are_finite_json(oracle, oracle_pairs, tmp_path):
    _, out = run(oracle, {"kind": "standard", "path": str(oracle_pairs)}, tmp_path)
    data = json.loads(out.read_text())
    assert all(math.isfinite(p["chosen"]) for p in data["pairs"])


def test_store_must_hold_this_benchmark_as_it_is_now(oracle, oracle_pairs, tmp_path):
    """A store scored from another spec, other bytes, other settings or without
    the benchmark is refused, naming the store; nothing is written."""
    spec = {"kind": "standard", "path": str(oracle_pairs)}
    store = score(oracle, spec, tmp_path, name="pairs")
    out = tmp_path / "eval" / "x.json"

    def refused(match, *, name="pairs", spec=spec, cfg=CFG):
        with pytest.raises(StoreError, match=match) as err:
            eval_rm(store, spec, out, cfg=cfg, benchmark_name=name)
        assert str(store) in str(err.value)
        assert not out.exists()

    refused(r"no scores for 'other' \(it holds \['pairs'\]\); rerun", name="other")
    refused("scored from spec", spec={**spec, "on_invalid": "skip"})
    refused(
        r"other settings .*'max_length': \(1024, 512\)", cfg=EvalConfig(max_length=512)
    )
    refused("'system_prompt'", cfg=EvalConfig(system_prompt="Be brief."))
    # the same file with one more pair: its bytes changed since scoring
    rows = oracle_pairs.read_text()
    oracle_pairs.write_text(rows + rows.splitlines()[0].replace("right-0", "x") + "\n")
    refused("another version of .*pairs.jsonl")
    # ties and xstest weights are this stage's own: any value reads the store
    oracle_pairs.write_text(rows)
    res = eval_rm(store, spec, out, cfg=EvalConfig(ties="half"), benchmark_name="pairs")
    assert res["settings"]["ties"] == "half"


def test_ids_must_match_the_scored_pairs(oracle, tmp_path):
    """A hub-like benchmark (no file to hash) that changed under the store."""
    first = write_jsonl(tmp_path / "rb.jsonl", rb_rows({"shp": (2, 1)}))
    spec = {"kind": "rewardbench", "path": str(first)}
    store = score(oracle, spec, tmp_path, name="rb")
    meta = read_metadata(store)
    meta["inputs"]["rb"]["files"] = {}  # as for a hub dataset
    table = read_rows(store)
    table.loc[table["row"] == 1, "id"] = "renamed"
    write_store(store, {c: table[c].tolist() for c in table.columns}, meta)
    with pytest.raises(StoreError, match="not the 3 pairs of the benchmark"):
        eval_rm(store, spec, tmp_path / "o.json", cfg=CFG, benchmark_name="rb")


def test_eval_runs_without_torch(oracle, oracle_pairs, tmp_path):
    """The stage as its rule runs it imports neither torch nor transformers."""
    spec = {"kind": "standard", "path": str(oracle_pairs)}
    store = score(oracle, spec, tmp_path, name="pairs")
    out = tmp_path / "cli.json"
    argv = ["eval_rm", "--scores", str(store), "--benchmark-name", "pairs"]
    argv += ["--benchmark", str(oracle_pairs), "--out", str(out)]
    code = (
        "import runpy, sys\n"
        f"sys.argv = {argv!r}\n"
        "try:\n"
        "    runpy.run_module('pipelines.eval_rm', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "print('LOADED', sorted(m for m in ('torch', 'transformers')"
        " if m in sys.modules))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("LOADED []")
    assert json.loads(out.read_text())["accuracy"] == pytest.approx(5 / 12)
