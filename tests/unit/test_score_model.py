import hashlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.bon_estimate import BonEstimateConfig, bon_estimate
from pipelines.build_prefs import BuildPrefsConfig, build_prefs
from pipelines.common.io import read_jsonl
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
    load_candidates,
    load_member_scores,
    read_metadata,
    read_rows,
)
from pipelines.common.scoring import InputSettings, ScorerConfig
from pipelines.eval_rm import EvalConfig, eval_rm
from pipelines.generate_candidates import GenerateConfig, generate_candidates
from pipelines.score_model import main, score_model

ROOT = Path(__file__).resolve().parents[2]
ARCH = TinyArch(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
)
# cut some sequences, not all: the pooled batches then mix lengths and inputs
PAIR_LEN, CAND_LEN, BATCH = 200, 170, 4
NS = [1, 2, 3, 4]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Real generated pairs and candidates, a tiny policy and two seeded RMs."""
    root = tmp_path_factory.mktemp("score_model")
    pairs = {}
    for domain in ("general", "math"):
        pairs[domain] = root / "data" / domain / "test.jsonl"
        cfg = BuildPrefsConfig(sizes={"test": 12}, sft_size=0, workers=1)
        build_prefs(domain, [pairs[domain]], None, cfg=cfg)
    texts = [
        m["content"]
        for path in pairs.values()
        for rec in read_pairs(path)
        for m in rec["chosen"] + rec["rejected"]
    ]
    tok = train_tokenizer(texts, vocab_size=400)
    policy = root / "policy"
    init_tiny_causal_lm(tok, seed=0, arch=ARCH).save_pretrained(policy)
    tok.save_pretrained(policy)
    rms = []
    for seed in (0, 1, 7):
        torch.manual_seed(seed)
        rm = load_reward_model(policy)
        rm.config.pad_token_id = tok.pad_token_id
        rm.save_pretrained(root / f"rm{seed}")
        tok.save_pretrained(root / f"rm{seed}")
        rms.append(str(root / f"rm{seed}"))
    gold = rms.pop()  # a tiny policy solves nothing: a gold RM grades instead
    gens = []
    gen_cfg = GenerateConfig(
        n_prompts=3,
        big_n=4,
        max_new_tokens=24,
        batch_size=6,
        workers=1,
        device="cpu",
        gold_model=gold,
    )
    for domain in ("general", "math"):
        out = root / "bon" / "gens" / f"{domain}.jsonl"
        generate_candidates(
            str(policy), pairs[domain], out, seed=0, cfg=gen_cfg, domain=domain
        )
        gens.append(out)
    benchmarks = {
        f"{d}-test": {"kind": "standard", "path": str(p)} for d, p in pairs.items()
    }
    return {"root": root, "pairs": pairs, "rms": rms, "gens": gens, "bench": benchmarks}


def new_store(world, rm, name, **kw):
    out = world["root"] / "scores" / f"{name}.parquet"
    args = {
        "benchmarks": world["bench"],
        "gens": world["gens"],
        "pair_settings": InputSettings(max_length=PAIR_LEN),
        "candidate_settings": InputSettings(max_length=CAND_LEN),
        **kw,
    }
    cfg = ScorerConfig(batch_size=BATCH, device="cpu")
    score_model(rm, out, model_id=name, cfg=cfg, **args)
    return out


@pytest.fixture(scope="module")
def stores(world):
    return [new_store(world, rm, f"rm-x-seed{k}") for k, rm in enumerate(world["rms"])]


def old_way(rm, convs_by_group, max_length):
    """How eval_rm and score_candidates scored before: a fresh load per job and
    one score_ids call (length-sorted, batch 4) over that job's sequences."""
    out = []
    for convs in convs_by_group:
        tok = load_tokenizer(rm)
        torch.manual_seed(0)
        model = load_reward_model(rm)
        enc = encode_conversations(tok, convs, max_length=max_length)
        out.append(score_ids(model, enc.ids, pad_id=tok.pad_token_id, batch_size=BATCH))
    return out


def brute_force_bon(proxy, gold, n):
    """Mean over all n-subsets of the gold/proxy of the argmax (ties: lowest)."""
    picks = []
    for subset in itertools.combinations(range(len(proxy)), n):
        best = max(subset, key=lambda k: (proxy[k], -k))
        picks.append((proxy[best], gold[best]))
    return np.mean([p for p, _ in picks]), np.mean([g for _, g in picks])


def test_eval_and_bon_numbers_equal_the_old_per_job_path(world, stores, tmp_path):
    """No result changes: eval JSONs and BoN curves from one pooled job per
    model equal an independent computation with the old per-job batches."""
    for rm, store in zip(world["rms"], stores, strict=True):
        for name, spec in world["bench"].items():
            recs = read_pairs(spec["path"])
            cfg = EvalConfig(max_length=PAIR_LEN)
            out = tmp_path / Path(store).stem / f"{name}.json"
            res = eval_rm(store, spec, out, cfg=cfg, benchmark_name=name)
            (scores,) = old_way(
                rm,
                [[r["chosen"] for r in recs] + [r["rejected"] for r in recs]],
                PAIR_LEN,
            )
            chosen, rejected = scores[: len(recs)], scores[len(recs) :]
            got_c = np.array([p["chosen"] for p in res["pairs"]])
            got_r = np.array([p["rejected"] for p in res["pairs"]])
            np.testing.assert_allclose(got_c, chosen, atol=1e-6, rtol=0)
            np.testing.assert_allclose(got_r, rejected, atol=1e-6, rtol=0)
            assert res["accuracy"] == np.mean(chosen > rejected)
            by_subset = {}
            for rec, c, r in zip(recs, chosen, rejected, strict=True):
                by_subset.setdefault(rec["subset"], []).append(c > r)
            assert {k: v["accuracy"] for k, v in res["subsets"].items()} == {
                k: np.mean(v) for k, v in by_subset.items()
            }
            if name == "math-test":  # PAIR_LEN cuts some, on both paths
                assert 0 < res["n_truncated"] < 2 * len(recs)
    # best-of-n: the old score_candidates job scored every candidate file at once
    lines = [ln for path in world["gens"] for ln in read_jsonl(path)]
    convs = [
        [*ln["prompt"], {"role": "assistant", "content": c["text"]}]
        for ln in lines
        for c in ln["candidates"]
    ]
    members = [old_way(rm, [convs], CAND_LEN)[0] for rm in world["rms"]]
    cuts = np.cumsum([len(ln["candidates"]) for ln in lines])[:-1]
    gold = [np.array([c["gold"] for c in ln["candidates"]]) for ln in lines]
    assert len({round(g, 4) for row in gold for g in row}) > 10  # gold varies
    var = np.var(np.stack(members), axis=0)  # UWO by hand: mean - 0.5 * var
    uwo = np.mean(np.stack(members), axis=0) - 0.5 * var
    for proxy, files, ids, agg in (
        (members[0], stores[:1], ["s0"], "single"),
        (uwo, stores, ["s0", "s1"], "uwo"),
    ):
        cfg = BonEstimateConfig(aggregate=agg, sample_ns=tuple(NS))
        out = tmp_path / f"bon_{agg}.json"
        report = bon_estimate(world["gens"], files, out, cfg=cfg, member_ids=ids)
        rows = np.split(proxy, cuts)
        for row in report["results"]:
            want = np.mean(
                [
                    brute_force_bon(p, g, row["n"])
                    for p, g in zip(rows, gold, strict=True)
                    if len(p) >= row["n"]
                ],
                axis=0,
            )
            assert row["proxy_score"] == pytest.approx(want[0], abs=1e-6)
            assert row["gold_score"] == pytest.approx(want[1], abs=1e-6)
        assert [r["n"] for r in report["results"]] == NS


def test_a_score_does_not_depend_on_the_other_inputs(world, stores):
    alone = new_store(
        world, world["rms"][0], "math-only", benchmarks={}, gens=world["gens"][1:]
    )
    bench_only = new_store(
        world,
        world["rms"][0],
        "bench-only",
        benchmarks={"math-test": world["bench"]["math-test"]},
        gens=[],
    )
    full = read_rows(stores[0])
    for store, name in ((alone, "gens/math"), (bench_only, "math-test")):
        part = read_rows(store, name)
        ref = full[full["input"] == name]
        assert len(part) == len(ref) > 0
        np.testing.assert_allclose(
            part["score"].to_numpy(), ref["score"].to_numpy(), atol=1e-6, rtol=0
        )
        assert part["truncated"].tolist() == ref["truncated"].tolist()


def test_store_rows_and_metadata(world, stores):
    store = stores[0]
    table = pq.read_table(store)
    assert table.schema.remove_metadata() == pa.schema(
        [
            ("input", pa.string()),
            ("row", pa.int64()),
            ("id", pa.string()),
            ("side", pa.string()),
            ("cand_idx", pa.int64()),
            ("score", pa.float64()),
            ("truncated", pa.bool_()),
        ]
    )
    rows = table.to_pylist()
    expected = []
    for name, spec in world["bench"].items():
        for i, rec in enumerate(read_pairs(spec["path"])):
            expected += [(name, i, rec["id"], s, -1) for s in ("chosen", "rejected")]
    for path in world["gens"]:
        for i, ln in enumerate(read_jsonl(path)):
            expected += [
                (f"gens/{path.stem}", i, ln["prompt_id"], "candidate", k)
                for k in range(len(ln["candidates"]))
            ]
    got = [(r["input"], r["row"], r["id"], r["side"], r["cand_idx"]) for r in rows]
    assert got == expected
    meta = read_metadata(store)
    assert meta["model_id"] == "rm-x-seed0" and meta["model"] == world["rms"][0]
    assert meta["load"]["batch_size"] == BATCH and meta["load"]["device"] == "cpu"
    assert meta["load"]["new_score_head"] is False
    assert {"torch", "transformers", "python"} <= set(meta["versions"])
    tok = load_tokenizer(world["rms"][0])
    for name, spec in world["bench"].items():
        info = meta["inputs"][name]
        digest = hashlib.sha256(Path(spec["path"]).read_bytes()).hexdigest()
        assert info["files"] == {spec["path"]: digest}
        assert info["kind"] == "pairs" and info["source"] == spec
        assert info["settings"] == {
            "max_length": PAIR_LEN,
            "truncation_side": "left",
            "chat_template": None,
            "system_prompt": None,
            "max_candidates": None,
        }
        recs = read_pairs(spec["path"])
        full = encode_conversations(tok, [r["chosen"] for r in recs], max_length=10_000)
        assert info["n_truncated_chosen"] == sum(len(s) > PAIR_LEN for s in full.ids)
        assert info["n_records"] == len(recs) and info["n_sequences"] == 2 * len(recs)
        assert info["load"]["kept"] == len(recs)
        part = [r for r in rows if r["input"] == name]
        assert info["n_truncated"] == sum(r["truncated"] for r in part)
    info = meta["inputs"]["gens/math"]
    assert info["kind"] == "candidates" and info["settings"]["max_length"] == CAND_LEN
    assert info["chat_format"]["chat_template_source"] == "tokenizer"


GOOD_LINE = {
    "prompt_id": "p0",
    "domain": "math",
    "prompt": [{"role": "user", "content": "q"}],
    "candidates": [{"text": "a", "gold": 1.0}],
}


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ({**GOOD_LINE, "candidates": []}, "candidates"),
        ({**GOOD_LINE, "candidates": [{"text": 3}]}, "candidates[0].text"),
        ({**GOOD_LINE, "prompt": "q"}, "prompt"),
        ({**GOOD_LINE, "prompt": [{"role": "bot", "content": "x"}]}, "prompt[0].role"),
        ({k: v for k, v in GOOD_LINE.items() if k != "prompt_id"}, "prompt_id"),
    ],
)
def test_bad_gens_line_names_file_row_field_before_any_load(tmp_path, line, field):
    gens = tmp_path / "math.jsonl"
    gens.write_text(json.dumps({**GOOD_LINE, "prompt_id": "ok"}) + "\n")
    gens.write_text(gens.read_text() + json.dumps(line) + "\n")
    out = tmp_path / "s.parquet"
    with pytest.raises(RecordError) as err:  # not the missing model's OSError
        score_model(
            str(tmp_path / "no-model"),
            out,
            model_id="m",
            cfg=ScorerConfig(),
            gens=[gens],
        )
    assert (err.value.source, err.value.row, err.value.field) == (str(gens), 2, field)
    assert not out.exists()


def test_bad_inputs_are_refused_before_any_load(world, tmp_path):
    def run(**kw):
        return score_model(
            str(tmp_path / "no-model"),
            tmp_path / "s.parquet",
            model_id="m",
            cfg=ScorerConfig(),
            **kw,
        )

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl: no candidates"):
        run(gens=[empty])
    twice = tmp_path / "twice.jsonl"
    twice.write_text((json.dumps(GOOD_LINE) + "\n") * 2)
    with pytest.raises(ValueError, match="prompt_id 'p0' repeats"):
        run(gens=[twice])
    other = tmp_path / "other"
    other.mkdir()
    (other / "empty.jsonl").write_text(json.dumps(GOOD_LINE) + "\n")
    (tmp_path / "empty.jsonl").write_text(json.dumps(GOOD_LINE) + "\n")
    with pytest.raises(ValueError, match="share names"):
        run(gens=[empty, other / "empty.jsonl"])
    with pytest.raises(ValueError, match="nothing to score"):
        run()
    with pytest.raises(ValueError, match="without '/'"):
        run(benchmarks={"a/b": world["bench"]["math-test"]})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "a", "rejected": 5}\n')
    with pytest.raises(RecordError, match="bad.jsonl: row 1: field 'rejected'"):
        run(benchmarks={"b": {"kind": "standard", "path": str(bad)}})
    assert not (tmp_path / "s.parquet").exists()


def test_failed_load_keeps_the_previous_store(world, tmp_path):
    out = tmp_path / "s.parquet"
    out.write_bytes(b"old")
    with pytest.raises(OSError):
        score_model(
            str(tmp_path / "no-model"),
            out,
            model_id="m",
            cfg=ScorerConfig(device="cpu"),
            gens=world["gens"],
        )
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.parquet"]


def test_cli_writes_the_store(world, tmp_path):
    out = tmp_path / "cli.parquet"
    spec = world["bench"]["math-test"]
    argv = [
        "--model", world["rms"][1], "--model-id", "rm-x-seed1", "--out", str(out),
        "--benchmark", "math-test", json.dumps(spec),
        "--benchmark", "general-test", world["bench"]["general-test"]["path"],
        "--gens", str(world["gens"][1]),
        "--pair-settings", json.dumps({"max_length": PAIR_LEN}),
        "--candidate-settings", json.dumps({"max_length": CAND_LEN}),
        "--batch-size", "3", "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    meta = read_metadata(out)
    assert sorted(meta["inputs"]) == ["general-test", "gens/math", "math-test"]
    assert meta["inputs"]["general-test"]["source"] == world["bench"]["general-test"]
    assert meta["load"]["batch_size"] == 3
    rows = read_rows(out, "math-test")
    ref = read_rows(new_store(world, world["rms"][1], "ref"), "math-test")
    np.testing.assert_allclose(rows["score"], ref["score"], atol=1e-6, rtol=0)
    with pytest.raises(SystemExit):  # a settings key of the load section
        main([*argv, "--pair-settings", '{"batch_size": 4}'])


def _run(*args, code=None):
    cmd = [sys.executable, *(["-c", code] if code else ["-m", "pipelines.score_model"])]
    return subprocess.run(
        [*cmd, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )


def test_help_does_not_import_torch():
    code = (
        "import runpy, sys\n"
        "sys.argv = ['score_model', '--help']\n"
        "try:\n"
        "    runpy.run_module('pipelines.score_model', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('LOADED', sorted(m for m in ('torch', 'transformers')"
        " if m in sys.modules))\n"
    )
    res = _run(code=code)
    assert res.returncode == 0, res.stderr
    assert "--candidate-settings" in res.stdout and "--batch-size" in res.stdout
    assert res.stdout.strip().endswith("LOADED []")


def test_cli_bad_line_is_one_line_and_exit_2(tmp_path):
    gens = tmp_path / "math.jsonl"
    gens.write_text(json.dumps({**GOOD_LINE, "candidates": "x"}) + "\n")
    out = tmp_path / "s.parquet"
    res = _run(
        "--model", "m", "--model-id", "m", "--gens", str(gens), "--out", str(out)
    )
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("error: ") and "math.jsonl: row 1: field 'candidates'" in last
    )
    assert "Traceback" not in res.stderr
    assert not out.exists()


def _store(world, rm, out, benchmarks, gens, *, pair_len=PAIR_LEN, reuse=True):
    return score_model(
        rm,
        out,
        model_id="m",
        cfg=ScorerConfig(batch_size=BATCH, device="cpu", reuse=reuse),
        benchmarks={k: world["bench"][k] for k in benchmarks},
        gens=gens,
        pair_settings=InputSettings(max_length=pair_len),
        candidate_settings=InputSettings(max_length=CAND_LEN),
    )


def test_adding_a_benchmark_scores_only_that_benchmark(world, tmp_path, monkeypatch):
    rm, gens = world["rms"][0], world["gens"][1:]
    out = tmp_path / "s.parquet"
    first = _store(world, rm, out, ["math-test"], gens)
    assert first["reused"] == [] and first["n_scored"] == first["n_sequences"]
    before = read_rows(out)
    added = _store(world, rm, out, ["math-test", "general-test"], gens)
    n_general = 2 * len(read_pairs(world["bench"]["general-test"]["path"]))
    assert added["reused"] == ["gens/math", "math-test"]
    assert added["n_scored"] == n_general
    after = read_rows(out)
    for name in ("math-test", "gens/math"):  # copied as they were
        assert (
            after[after["input"] == name]
            .reset_index(drop=True)
            .equals(before[before["input"] == name].reset_index(drop=True))
        )
    fresh = tmp_path / "fresh.parquet"
    _store(world, rm, fresh, ["math-test", "general-test"], gens, reuse=False)
    ref = read_rows(fresh)
    assert after[["input", "row", "id", "side", "cand_idx"]].equals(
        ref[["input", "row", "id", "side", "cand_idx"]]
    )
    np.testing.assert_allclose(after["score"], ref["score"], atol=1e-6, rtol=0)
    meta = read_metadata(out)
    assert meta["inputs"]["general-test"]["pool"] == ["general-test"]
    assert meta["inputs"]["math-test"]["pool"] == ["math-test", "gens/math"]
    assert len({meta["inputs"][n]["key"] for n in meta["inputs"]}) == 3

    # nothing changed: the model is not even loaded
    import pipelines.common.scoring as scoring

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded although every input is reused")

    monkeypatch.setattr(scoring, "load_scorer", no_load)
    again = _store(world, rm, out, ["math-test", "general-test"], gens)
    assert again["n_scored"] == 0
    assert read_rows(out).equals(after)
    assert read_metadata(out) == meta


def test_what_changes_a_key_is_scored_again(world, tmp_path):
    rm, gens = world["rms"][0], [Path(p) for p in world["gens"][1:]]
    out = tmp_path / "s.parquet"
    _store(world, rm, out, ["math-test"], gens)
    # another max_length for pairs: the benchmark is scored again, not the gens
    got = _store(world, rm, out, ["math-test"], gens, pair_len=PAIR_LEN - 30)
    assert got["reused"] == ["gens/math"]
    # other candidate bytes under the same path
    moved = tmp_path / "gens" / "math.jsonl"
    moved.parent.mkdir()
    lines = gens[0].read_text().splitlines()
    moved.write_text("\n".join(lines) + "\n")
    got = _store(world, rm, out, ["math-test"], [moved], pair_len=PAIR_LEN - 30)
    assert got["reused"] == ["math-test"]  # a new path is another file
    moved.write_text("\n".join(reversed(lines)) + "\n")
    got = _store(world, rm, out, ["math-test"], [moved], pair_len=PAIR_LEN - 30)
    assert got["reused"] == ["math-test"]
    # other model bytes (the score head moved): nothing is reused
    model = tmp_path / "rm"
    head = load_reward_model(rm)
    with torch.no_grad():
        head.score.weight.mul_(2.0)
    head.save_pretrained(model)
    load_tokenizer(rm).save_pretrained(model)
    before = read_rows(out)
    got = _store(world, str(model), out, ["math-test"], [moved], pair_len=170)
    assert got["reused"] == [] and got["n_scored"] == got["n_sequences"]
    assert not np.allclose(read_rows(out)["score"], before["score"])
    # asked not to reuse
    got = _store(
        world, str(model), out, ["math-test"], [moved], pair_len=170, reuse=False
    )
    assert got["reused"] == []


def test_hub_inputs_and_unreadable_stores_are_scored_afresh(world, tmp_path):
    rm = world["rms"][0]
    folder = tmp_path / "hub" / "data"
    folder.mkdir(parents=True)
    (folder / "test-00000-of-00001.jsonl").write_text(
        Path(world["bench"]["math-test"]["path"]).read_text()
    )
    hub = {"kind": "standard", "hub": str(tmp_path / "hub"), "hub_split": "test"}
    out = tmp_path / "s.parquet"
    cfg = ScorerConfig(batch_size=BATCH, device="cpu")
    for _ in range(2):  # a dataset read by name can change under the same spec
        got = score_model(rm, out, model_id="m", cfg=cfg, benchmarks={"h": hub})
        assert got["reused"] == []
    assert read_metadata(out)["inputs"]["h"]["key"] is None
    pinned = {**hub, "revision": "v1"}  # a pinned revision keys (and is reused)
    score_model(rm, out, model_id="m", cfg=cfg, benchmarks={"h": pinned})
    got = score_model(rm, out, model_id="m", cfg=cfg, benchmarks={"h": pinned})
    assert got["reused"] == ["h"]
    out.write_bytes(b"not parquet")
    got = score_model(rm, out, model_id="m", cfg=cfg, gens=world["gens"][1:])
    assert got["reused"] == [] and read_metadata(out)["model_id"] == "m"


def test_max_candidates_scores_the_first_k_of_each_prompt(world, stores):
    # a merged model of DogeRM scores only what first-n best-of-n reads
    first = new_store(
        world,
        world["rms"][0],
        "first-two",
        benchmarks={},
        candidate_settings=InputSettings(max_length=CAND_LEN, max_candidates=2),
    )
    part = read_rows(first)
    full = read_rows(stores[0])
    full = full[full["side"] == "candidate"]
    expect = full[full["cand_idx"] < 2]
    assert len(part) == len(expect) > 0 and part["cand_idx"].max() == 1
    key = ["input", "id", "cand_idx"]
    merged = part.merge(expect, on=key, suffixes=("", "_full"))
    assert len(merged) == len(part)
    np.testing.assert_allclose(merged["score"], merged["score_full"], atol=1e-6)
    # read back against the first 2 candidates of each prompt; a store with
    # more candidates reads the same through the limit
    cands = load_candidates(world["gens"], limit=2)
    assert (cands.sizes == 2).all()
    np.testing.assert_allclose(
        load_member_scores(first, cands, "first-two"),
        load_member_scores(stores[0], cands, "rm-x-seed0"),
        atol=1e-6,
    )
