import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.bon_estimate import (
    BonEstimateConfig,
    bon_estimate,
    load_candidates,
    main,
    make_parser,
)
from pipelines.common.bon import TIE_RULE, best_of_n, combine
from pipelines.common.score_store import StoreError, file_sha256, write_store

# Two domains; math prompts have 4 candidates, code prompts 3 and 5.
GOLD = {
    "m1": [0.0, 1.0, 2.0, 3.0],
    "m2": [5.0, -1.0, 0.5, 2.0],
    "c1": [1.0, 0.0, 1.0],
    "c2": [0.2, 0.4, 0.6, 0.8, 1.0],
}
DOMAIN = {"m1": "math", "m2": "math", "c1": "code", "c2": "code"}
# member scores per prompt; member a and b disagree on m1's favourite
MEMBERS = {
    "a": {
        "m1": [5.0, 1.0, 4.0, 0.0],
        "m2": [0.0, 1.0, 2.0, 3.0],
        "c1": [2.0, 2.0, 1.0],
        "c2": [0.1, 0.5, 0.3, 0.9, 0.2],
    },
    "b": {
        "m1": [0.0, 2.0, 4.0, 1.0],
        "m2": [3.0, 1.0, 2.0, 0.0],
        "c1": [0.0, 1.0, 3.0],
        "c2": [0.2, 0.2, 0.2, 0.2, 0.2],
    },
    "c": {
        "m1": [1.0, 1.0, 1.0, 1.0],
        "m2": [0.5, 0.4, 0.3, 0.2],
        "c1": [1.0, 2.0, 3.0],
        "c2": [1.0, 0.0, 1.0, 0.0, 1.0],
    },
}


def write_gens(tmp_path):
    files = []
    for domain in ("math", "code"):
        path = tmp_path / "gens" / f"{domain}.jsonl"
        path.parent.mkdir(exist_ok=True)
        with open(path, "w") as fh:
            for pid, gold in GOLD.items():
                if DOMAIN[pid] != domain:
                    continue
                rec = {
                    "prompt_id": pid,
                    "domain": domain,
                    "prompt": [{"role": "user", "content": f"q {pid}"}],
                    "candidates": [
                        {"text": f"{pid}-{i}", "gold": g, "source": "policy"}
                        for i, g in enumerate(gold)
                    ],
                }
                fh.write(json.dumps(rec) + "\n")
        files.append(path)
    return files


def write_scores(tmp_path, member, drop=None, extra=None, seed=0, gens=None):
    """A member's score store holding only candidate rows (as score_model
    writes them), in shuffled row order; ``gens`` files are recorded by hash."""
    rows = [
        {"prompt_id": pid, "cand_idx": i, "score": s}
        for pid, scores in MEMBERS[member].items()
        for i, s in enumerate(scores)
        if (pid, i) != drop
    ]
    rows += extra or []
    table = pd.DataFrame(rows).sample(frac=1.0, random_state=seed)  # row order moot
    names = ["gens/" + DOMAIN.get(pid, "other") for pid in table["prompt_id"]]
    columns = {
        "input": names,
        "row": [0] * len(table),
        "id": table["prompt_id"].tolist(),
        "side": ["candidate"] * len(table),
        "cand_idx": table["cand_idx"].astype("int64").tolist(),
        "score": table["score"].tolist(),
        "truncated": [False] * len(table),
    }
    files = {str(p): file_sha256(p) for p in gens or []}
    inputs = {name: {"kind": "candidates", "files": dict(files)} for name in set(names)}
    path = tmp_path / "scores" / f"{member}.parquet"
    write_store(path, columns, {"model_id": member, "inputs": inputs})
    return path


@pytest.fixture
def gens(tmp_path):
    return write_gens(tmp_path)


@pytest.fixture
def scores(tmp_path):
    return {m: write_scores(tmp_path, m, seed=k) for k, m in enumerate(MEMBERS)}


def expected_curve(proxy_of, ns, pids):
    out = []
    for n in sorted(ns):
        per = [
            best_of_n(np.array(proxy_of[p]), np.array(GOLD[p]), [n])[n]
            for p in pids
            if len(GOLD[p]) >= n
        ]
        if per:
            out.append(
                (
                    n,
                    np.mean([a for a, _ in per]),
                    np.mean([b for _, b in per]),
                    len(per),
                )
            )
    return out


def check_rows(rows, want):
    assert [r["n"] for r in rows] == [w[0] for w in want]
    for row, (n, proxy, gold, count) in zip(rows, want, strict=True):
        assert row["proxy_score"] == pytest.approx(proxy, abs=1e-12)
        assert row["gold_score"] == pytest.approx(gold, abs=1e-12)
        assert row["n_prompts"] == count
        assert row["kl_bon"] == pytest.approx(math.log(n) - (n - 1) / n)


def test_single_member_json(tmp_path, gens, scores):
    out = tmp_path / "bon" / "seed0.json"
    cfg = BonEstimateConfig(sample_ns=(1, 2, 4, 5, 64))
    report = bon_estimate(gens, [scores["a"]], out, cfg=cfg, member_ids=["seed0"])
    on_disk = json.loads(out.read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert set(on_disk) == {
        "results",
        "aggregate",
        "uwo_lambda",
        "uwo_ddof",
        "members",
        "score_files",
        "gens_files",
        "sample_ns",
        "n_prompts",
        "n_candidates",
        "candidates_per_prompt",
        "tie_rule",
        "gold_spread",
        "per_domain",
    }
    assert on_disk["aggregate"] == "single"
    assert on_disk["uwo_lambda"] is None and on_disk["uwo_ddof"] is None
    assert on_disk["members"] == ["seed0"]
    assert on_disk["score_files"] == [str(scores["a"])]
    assert on_disk["gens_files"] == [str(p) for p in gens]
    assert on_disk["sample_ns"] == [1, 2, 4, 5, 64]
    assert on_disk["n_prompts"] == 4
    assert on_disk["n_candidates"] == 16
    assert on_disk["candidates_per_prompt"] == {"min": 3, "max": 5}
    flat = np.concatenate([np.asarray(g, dtype=float) for g in GOLD.values()])
    spread = on_disk["gold_spread"]
    assert spread["std"] == pytest.approx(flat.std())
    assert (spread["min"], spread["max"]) == (flat.min(), flat.max())
    within = [np.std(g) for g in GOLD.values()]
    assert spread["within_prompt_std"] == pytest.approx(np.mean(within))
    assert spread["prompts_with_spread"] == sum(w > 0 for w in within)
    assert on_disk["tie_rule"] == TIE_RULE
    check_rows(on_disk["results"], expected_curve(MEMBERS["a"], cfg.sample_ns, GOLD))
    assert [r["n_prompts"] for r in on_disk["results"]] == [4, 4, 3, 1]  # 64 dropped
    assert set(on_disk["per_domain"]) == {"math", "code"}
    for domain, rows in on_disk["per_domain"].items():
        pids = [p for p in GOLD if DOMAIN[p] == domain]
        check_rows(rows, expected_curve(MEMBERS["a"], cfg.sample_ns, pids))
    # hand check at n = N = 4 on math: m1 picks candidate 0 (score 5, gold 0.0),
    # m2 candidate 3 (score 3, gold 2.0)
    math_top = on_disk["per_domain"]["math"][-1]
    assert (math_top["n"], math_top["proxy_score"], math_top["gold_score"]) == (
        4,
        4.0,
        1.0,
    )
    # only c2 has N = 5: its argmax is candidate 3 (gold 0.8)
    code_top = on_disk["per_domain"]["code"][-1]
    assert (code_top["n"], code_top["gold_score"]) == (5, 0.8)
    # c1 ties at 2.0 between candidates 0 and 1: the lower index (gold 1.0) wins
    c1_top = best_of_n(np.array(MEMBERS["a"]["c1"]), np.array(GOLD["c1"]), [3])[3]
    assert c1_top == (2.0, 1.0)


@pytest.mark.parametrize("how", ["mean", "wco", "uwo"])
def test_ensemble_matches_combined_scores(tmp_path, gens, scores, how):
    out = tmp_path / f"ensemble_{how}.json"
    cfg = BonEstimateConfig(aggregate=how, sample_ns=(1, 2, 3, 4), uwo_lambda=0.5)
    report = bon_estimate(
        gens,
        [scores["a"], scores["b"], scores["c"]],
        out,
        cfg=cfg,
        member_ids=["s0", "s1", "s2"],
    )
    combined = {
        pid: combine(
            np.array([MEMBERS[m][pid] for m in "abc"]),
            how,
            uwo_lambda=0.5 if how == "uwo" else None,
        )
        for pid in GOLD
    }
    check_rows(report["results"], expected_curve(combined, cfg.sample_ns, GOLD))
    assert report["members"] == ["s0", "s1", "s2"]
    assert report["uwo_lambda"] == (0.5 if how == "uwo" else None)
    assert report["uwo_ddof"] == (0 if how == "uwo" else None)


def test_ensemble_gold_is_gold_of_picked_candidate(tmp_path, gens, scores):
    # m1: member a's favourite is candidate 0 (gold 0.0); the mean of a and b
    # is [2.5, 1.5, 4.0, 0.5], whose favourite is candidate 2 (gold 2.0)
    out = tmp_path / "ens.json"
    cfg = BonEstimateConfig(aggregate="mean", sample_ns=(4,))
    report = bon_estimate(
        gens[:1], [scores["a"], scores["b"]], out, cfg=cfg, member_ids=["a", "b"]
    )
    # n = 4 = N for both math prompts: the gold of each prompt's pick
    m2_mean = np.mean([MEMBERS["a"]["m2"], MEMBERS["b"]["m2"]], axis=0)
    m2_pick = int(np.argmax(m2_mean))  # lowest index among the maxima
    want = (GOLD["m1"][2] + GOLD["m2"][m2_pick]) / 2
    assert report["results"][0]["gold_score"] == pytest.approx(want)
    buggy = (GOLD["m1"][0] + GOLD["m2"][int(np.argmax(MEMBERS["a"]["m2"]))]) / 2
    assert want != pytest.approx(buggy)


def test_uwo_lambda_zero_equals_mean(tmp_path, gens, scores):
    files, ids = [scores["a"], scores["b"]], ["a", "b"]
    uwo = bon_estimate(
        gens,
        files,
        tmp_path / "u.json",
        cfg=BonEstimateConfig(aggregate="uwo", uwo_lambda=0.0),
        member_ids=ids,
    )
    mean = bon_estimate(
        gens,
        files,
        tmp_path / "m.json",
        cfg=BonEstimateConfig(aggregate="mean"),
        member_ids=ids,
    )
    assert uwo["results"] == mean["results"]
    assert uwo["uwo_lambda"] == 0.0


def test_missing_candidate_is_named(tmp_path, gens, scores):
    holey = write_scores(tmp_path / "holey", "b", drop=("c2", 3))
    out = tmp_path / "ens.json"
    with pytest.raises(ValueError, match=r"'s1'.*prompt_id='c2' cand_idx=3"):
        bon_estimate(
            gens,
            [scores["a"], holey],
            out,
            cfg=BonEstimateConfig(aggregate="mean"),
            member_ids=["s0", "s1"],
        )
    assert not out.exists()


def test_score_rows_checked(tmp_path, gens):
    cfg = BonEstimateConfig()
    out = tmp_path / "x.json"
    outside = write_scores(
        tmp_path / "o", "a", extra=[{"prompt_id": "m1", "cand_idx": 4, "score": 0.0}]
    )
    with pytest.raises(ValueError, match="outside prompt 'm1'"):
        bon_estimate(gens, [outside], out, cfg=cfg, member_ids=["a"])
    dup = write_scores(
        tmp_path / "d", "a", extra=[{"prompt_id": "c1", "cand_idx": 2, "score": 0.0}]
    )
    with pytest.raises(ValueError, match="repeated score for prompt_id='c1'"):
        bon_estimate(gens, [dup], out, cfg=cfg, member_ids=["a"])
    # rows of prompts not in the given gens files are ignored
    other = write_scores(
        tmp_path / "e", "a", extra=[{"prompt_id": "zz", "cand_idx": 0, "score": 9.0}]
    )
    report = bon_estimate(gens, [other], out, cfg=cfg, member_ids=["a"])
    assert report["n_prompts"] == 4
    assert report["results"][0]["proxy_score"] == pytest.approx(
        np.mean([np.mean(v) for v in MEMBERS["a"].values()])
    )


def test_single_with_two_members_is_an_error(tmp_path, gens, scores):
    with pytest.raises(ValueError, match="exactly one"):
        bon_estimate(
            gens,
            [scores["a"], scores["b"]],
            tmp_path / "x.json",
            cfg=BonEstimateConfig(),
            member_ids=["a", "b"],
        )
    with pytest.raises(ValueError, match="member ids"):
        bon_estimate(
            gens,
            [scores["a"]],
            tmp_path / "x.json",
            cfg=BonEstimateConfig(),
            member_ids=["a", "b"],
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"aggregate": "median"},
        {"sample_ns": ()},
        {"sample_ns": (0, 2)},
        {"uwo_lambda": -1.0},
        {"uwo_ddof": 2},
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        BonEstimateConfig(**kwargs)


def test_duplicate_prompt_across_gens(tmp_path, gens):
    with pytest.raises(ValueError, match="prompt_id 'm1'"):
        load_candidates([gens[0], gens[0]])


def test_atomic_output_keeps_previous_on_error(tmp_path, gens, scores):
    out = tmp_path / "bon" / "seed0.json"
    out.parent.mkdir()
    out.write_text("previous")
    holey = write_scores(tmp_path / "h", "a", drop=("m1", 0))
    with pytest.raises(ValueError):
        bon_estimate(gens, [holey], out, cfg=BonEstimateConfig(), member_ids=["a"])
    assert out.read_text() == "previous"
    bon_estimate(gens, [scores["a"]], out, cfg=BonEstimateConfig(), member_ids=["a"])
    assert json.loads(out.read_text())["aggregate"] == "single"
    assert sorted(p.name for p in out.parent.iterdir()) == ["seed0.json"]  # no temps


def test_cli(tmp_path, gens, scores, capsys):
    out = tmp_path / "ensemble_uwo.json"
    argv = ["--gens", *map(str, gens), "--scores", str(scores["a"]), str(scores["b"])]
    argv += ["--member-ids", "s0", "s1", "--out", str(out), "--aggregate", "uwo"]
    argv += ["--sample-ns", "[1, 3]", "--uwo-lambda", "0.1", "--uwo-ddof", "1"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert [r["n"] for r in report["results"]] == [1, 3]
    assert (report["uwo_lambda"], report["uwo_ddof"]) == (0.1, 1)
    with pytest.raises(SystemExit) as exc:
        make_parser().parse_args(["--help"])
    assert exc.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--gens", "--member-ids", "--aggregate", "--sample-ns", "--uwo-ddof"):
        assert flag in help_text


def test_only_candidate_rows_of_a_store_are_read(tmp_path, gens):
    """A store also holding benchmark pairs; a store with no candidates."""
    path = write_scores(tmp_path, "a")
    table = pd.read_parquet(path)
    pairs = pd.DataFrame(
        {
            "input": "math-test",
            "row": [0, 0],
            "id": ["m1", "m1"],  # a pair id that is also a prompt id
            "side": ["chosen", "rejected"],
            "cand_idx": [-1, -1],
            "score": [99.0, -99.0],
            "truncated": [False, False],
        }
    )
    both = pd.concat([table, pairs])
    meta = {
        "model_id": "a",
        "inputs": {n: {"kind": "candidates"} for n in set(table["input"])},
    }
    meta["inputs"]["math-test"] = {"kind": "pairs"}
    write_store(path, {c: both[c].tolist() for c in both.columns}, meta)
    cfg = BonEstimateConfig(sample_ns=(1, 2))
    report = bon_estimate(gens, [path], tmp_path / "x.json", cfg=cfg, member_ids=["a"])
    check_rows(report["results"], expected_curve(MEMBERS["a"], (1, 2), GOLD))
    only_pairs = tmp_path / "pairs.parquet"
    write_store(
        only_pairs,
        {c: pairs[c].tolist() for c in pairs.columns},
        {"model_id": "a", "inputs": {"math-test": {"kind": "pairs"}}},
    )
    with pytest.raises(StoreError, match=r"pairs.parquet: holds no candidate scores"):
        bon_estimate(gens, [only_pairs], tmp_path / "y.json", cfg=cfg, member_ids=["a"])
    plain = tmp_path / "plain.parquet"
    table[["id", "cand_idx", "score"]].to_parquet(plain)
    with pytest.raises(StoreError, match="not a score store"):
        bon_estimate(gens, [plain], tmp_path / "z.json", cfg=cfg, member_ids=["a"])


def test_a_store_scored_from_other_gens_is_refused(tmp_path, gens):
    path = write_scores(tmp_path, "a", gens=gens)
    cfg = BonEstimateConfig(sample_ns=(1,))
    bon_estimate(gens, [path], tmp_path / "ok.json", cfg=cfg, member_ids=["a"])
    lines = gens[0].read_text().splitlines()
    gens[0].write_text("\n".join([lines[1], lines[0]]) + "\n")  # regenerated
    out = tmp_path / "x.json"
    with pytest.raises(StoreError, match="another version of .*math.jsonl"):
        bon_estimate(gens, [path], out, cfg=cfg, member_ids=["a"])
    assert not out.exists()


def test_runs_without_torch(tmp_path, gens, scores):
    """The stage as its rule runs it imports neither torch nor transformers."""
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "x.json"
    argv = ["bon_estimate", "--gens", *map(str, gens), "--scores", str(scores["a"])]
    argv += ["--member-ids", "a", "--out", str(out)]
    code = (
        "import runpy, sys\n"
        f"sys.argv = {argv!r}\n"
        "try:\n"
        "    runpy.run_module('pipelines.bon_estimate', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "print('LOADED', sorted(m for m in ('torch', 'transformers')"
        " if m in sys.modules))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
        cwd=root,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("LOADED []")
    assert json.loads(out.read_text())["members"] == ["a"]
