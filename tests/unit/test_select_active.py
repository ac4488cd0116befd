"""Active-learning selection: successive sampling, T limits, random, cap, CLI.

Expected values come from hand formulas in numpy (successive-sampling
probabilities, softmax) and from scoring the pairs independently with
``load_reward_model`` + ``score_ids``, never from the code under test.
"""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chisquare

from pipelines.common.active import (
    draw_rng,
    first_draw_probabilities,
    select,
    select_uniform,
)
from pipelines.common.seeding import derive_seed
from pipelines.select_active import (
    ActiveConfigError,
    SelectActiveConfig,
    main,
    select_active,
)
from tests.unit.stage_probe import probe_stage

ROOT = Path(__file__).resolve().parents[2]
MARGINS = np.array([0.1, 0.5, 1.0, 2.0])
N_DRAWS = 20000
WORDS = "the answer is seven because two plus five makes seven def f return x"


def successive(weights, sequence):
    """P(successive sampling draws ``sequence`` first, in order), by hand."""
    left, prob = weights.sum(), 1.0
    for item in sequence:
        prob *= weights[item] / left
        left -= weights[item]
    return prob


def draws(margins, k, temperature, n=N_DRAWS, seed=0):
    rng = np.random.default_rng(seed)
    return [
        tuple(select(margins, k, temperature=temperature, rng=rng).positions)
        for _ in range(n)
    ]


def chi2_p(counts, expected_prob):
    counts = np.asarray(counts, dtype=float)
    expected = np.asarray(expected_prob) * counts.sum()
    return chisquare(counts, expected).pvalue


def test_first_draw_probability_is_the_softmax_of_minus_margins():
    want = np.exp(-MARGINS) / np.exp(-MARGINS).sum()
    np.testing.assert_allclose(first_draw_probabilities(MARGINS, 1.0), want, 1e-12)
    # T = 2: exp(-m / 2); stable for margins far from 0
    shifted = MARGINS + 1e4
    want2 = np.exp(-MARGINS / 2) / np.exp(-MARGINS / 2).sum()
    np.testing.assert_allclose(first_draw_probabilities(shifted, 2.0), want2, 1e-9)
    got = select(MARGINS, 2, temperature=1.0, rng=np.random.default_rng(0))
    np.testing.assert_allclose(got.first_probability, want[got.positions], 1e-12)


def test_draws_follow_successive_sampling():
    """Ordered and unordered outcomes of k=2 of 4 against the hand formula."""
    w = np.exp(-MARGINS / 1.0)
    got = draws(MARGINS, 2, 1.0)
    assert all(len(set(d)) == 2 for d in got)  # without replacement
    ordered = list(itertools.permutations(range(4), 2))
    p_ordered = [successive(w, seq) for seq in ordered]
    assert abs(sum(p_ordered) - 1) < 1e-12
    counts = [got.count(seq) for seq in ordered]
    assert chi2_p(counts, p_ordered) > 1e-3
    sets = list(itertools.combinations(range(4), 2))
    p_sets = [successive(w, (i, j)) + successive(w, (j, i)) for i, j in sets]
    set_counts = [sum(1 for d in got if set(d) == {i, j}) for i, j in sets]
    assert chi2_p(set_counts, p_sets) > 1e-3
    # the first draw alone: exp(-m / T) / sum
    first = [sum(1 for d in got if d[0] == i) for i in range(4)]
    assert chi2_p(first, w / w.sum()) > 1e-3
    # and the legacy sampler the original called agrees with the same formula
    legacy = np.random.RandomState(42)
    old = [
        tuple(legacy.choice(4, 2, replace=False, p=w / w.sum())) for _ in range(5000)
    ]
    assert chi2_p([old.count(seq) for seq in ordered], p_ordered) > 1e-3


def test_temperature_zero_takes_the_smallest_margins_in_order():
    margins = np.array([0.5, 0.1, 0.3, 0.1, 2.0, 0.9])
    got = select(margins, 3, temperature=0.0, rng=np.random.default_rng(0))
    assert got.positions.tolist() == [1, 3, 2]  # the tie 0.1 by pool order
    assert got.first_probability.tolist() == [1.0, 0.0, 0.0]
    for seed in range(5):  # T -> 0: the same set whatever the seed
        tiny = select(margins, 3, temperature=1e-9, rng=np.random.default_rng(seed))
        assert sorted(tiny.positions.tolist()) == [1, 2, 3]
    # a T so small that -m / T overflows still ranks by margin
    tiny = select(margins, 4, temperature=1e-320, rng=np.random.default_rng(0))
    assert sorted(tiny.positions.tolist()[:3]) == [1, 2, 3]
    assert tiny.positions[3] == 0


@pytest.mark.parametrize("temperature", [1e9, float("inf")])
def test_huge_temperature_is_uniform(temperature):
    margins = np.array([0.0, 1.0, 3.0, 10.0, 30.0])
    got = draws(margins, 2, temperature, n=10000, seed=1)
    sets = list(itertools.combinations(range(5), 2))
    counts = [sum(1 for d in got if set(d) == set(s)) for s in sets]
    assert chi2_p(counts, [0.1] * 10) > 1e-3
    inclusion = [sum(1 for d in got if i in d) for i in range(5)]
    assert chi2_p(inclusion, [0.2] * 5) > 1e-3
    p = first_draw_probabilities(margins, temperature)
    np.testing.assert_allclose(p, 0.2, atol=1e-7)


def test_random_strategy_is_uniform_reproducible_and_seeded():
    rng = np.random.default_rng(3)
    got = [tuple(select_uniform(5, 2, rng=rng).positions) for _ in range(10000)]
    sets = list(itertools.combinations(range(5), 2))
    counts = [sum(1 for d in got if set(d) == set(s)) for s in sets]
    assert chi2_p(counts, [0.1] * 10) > 1e-3
    a = select_uniform(100, 10, rng=draw_rng(0, 1)).positions
    assert a.tolist() == select_uniform(100, 10, rng=draw_rng(0, 1)).positions.tolist()
    assert a.tolist() != select_uniform(100, 10, rng=draw_rng(1, 1)).positions.tolist()
    assert a.tolist() != select_uniform(100, 10, rng=draw_rng(0, 2)).positions.tolist()
    assert len(set(a.tolist())) == 10
    # one seed stream for both strategies: random = uncertainty at T = inf
    margins = np.linspace(0, 5, 100)
    unc = select(margins, 10, temperature=float("inf"), rng=draw_rng(0, 1))
    assert unc.positions.tolist() == a.tolist()


# ------------------------------------------------------------ stage and files


def conv(user, reply):
    return [
        {"role": "user", "content": user},
        {"role": "assistant", "content": reply},
    ]


def pair(i):
    user = f"what is {i} plus five"
    return {
        "id": f"p{i:02d}",
        "domain": "math",
        "prompt": [{"role": "user", "content": user}],
        "chosen": conv(user, "seven " * (i % 7 + 1) + f"because two {i}"),
        "rejected": conv(user, "def f return x " * (i % 4 + 1) + f"{i % 9}"),
    }


def write_pool(path, n):
    path.write_text("".join(json.dumps(pair(i)) + "\n" for i in range(n)))
    return path


def outputs(tmp_path):
    return tmp_path / "sel.jsonl", tmp_path / "rest.jsonl", tmp_path / "sel.json"


def ids(path):
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def run_random(tmp_path, pool, **cfg):
    sel, rest, rep = outputs(tmp_path)
    report = select_active(
        pool, sel, rest, rep, cfg=SelectActiveConfig(strategy="random", **cfg)
    )
    return ids(sel), ids(rest), report


def test_pool_is_shuffled_and_capped_with_the_seed(tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl", 30)
    sel, rest, report = run_random(tmp_path, pool, k=5, pool_cap=20, seed=7)
    # the documented shuffle: default_rng(derive_seed(seed, "active", iteration,
    # "shuffle")).permutation, first pool_cap
    seed = derive_seed(7, "active", "iteration1", "shuffle")
    capped = [f"p{i:02d}" for i in np.random.default_rng(seed).permutation(30)[:20]]
    assert len(sel) == 5 and len(rest) == 15
    assert not set(sel) & set(rest) and set(sel) | set(rest) == set(capped)
    assert rest == [i for i in capped if i not in sel]  # pool order
    assert [r["id"] for r in report["selected"]] == sel  # draw order
    assert [capped[r["capped_position"]] for r in report["selected"]] == sel
    assert [f"p{r['pool_index']:02d}" for r in report["selected"]] == sel
    dropped = set(f"p{i:02d}" for i in range(30)) - set(capped)
    assert len(dropped) == 10 and not dropped & (set(sel) | set(rest))
    assert report["pool"] == {
        "n_records": 30,
        "cap": 20,
        "n_capped": 20,
        "n_dropped": 10,
        "shuffle_seed": seed,
    }
    assert report["model"] is None and report["margins"] is None
    assert all(
        r["margin"] is None and r["p_first"] == 1 / 20 for r in report["selected"]
    )
    on_disk = json.loads(outputs(tmp_path)[2].read_text())
    assert on_disk["selected"] == report["selected"] and on_disk["k"] == 5
    # the records are written whole: what the pool held
    first = json.loads(outputs(tmp_path)[0].read_text().splitlines()[0])
    assert first["chosen"] == pair(int(sel[0][1:]))["chosen"]
    # reproducible for a seed, different for another seed or iteration
    again = run_random(tmp_path, pool, k=5, pool_cap=20, seed=7)
    assert again[:2] == (sel, rest)
    other = run_random(tmp_path, pool, k=5, pool_cap=20, seed=8)
    assert other[0] != sel and set(other[0] + other[1]) != set(capped)
    later = run_random(tmp_path, pool, k=5, pool_cap=20, seed=7, iteration=2)
    assert later[0] != sel


def test_k_above_the_pool_is_one_line_naming_both(tmp_path, capsys):
    pool = write_pool(tmp_path / "pool.jsonl", 12)
    sel, rest, rep = outputs(tmp_path)
    argv = ["--pool", str(pool), "--out-selected", str(sel), "--out-rest", str(rest)]
    argv += ["--out-report", str(rep), "--strategy", "random", "--pool-cap", "10"]
    assert main([*argv, "--k", "11"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        err.startswith("error: --k 11 exceeds the pool") and "10 after the cap" in err
    )
    assert "holds 12 pairs" in err
    assert not sel.exists() and not rest.exists() and not rep.exists()
    assert main([*argv, "--k", "10"]) == 0  # the whole capped pool: rest empty
    assert len(ids(sel)) == 10 and rest.read_text() == ""


def test_model_is_required_for_uncertainty_and_refused_for_random(tmp_path, capsys):
    pool = write_pool(tmp_path / "pool.jsonl", 5)
    sel, rest, rep = outputs(tmp_path)
    argv = ["--pool", str(pool), "--out-selected", str(sel), "--out-rest", str(rest)]
    argv += ["--out-report", str(rep), "--k", "2"]
    assert main([*argv, "--strategy", "uncertainty"]) == 2
    assert "give --model" in capsys.readouterr().err
    assert main([*argv, "--strategy", "random", "--model", "some/rm"]) == 2
    assert "uses no model" in capsys.readouterr().err
    assert main([*argv, "--strategy", "random", "--temperature", "-1"]) == 2
    assert "temperature must be >= 0" in capsys.readouterr().err
    assert not sel.exists()
    # T = inf (YAML .inf) parses, and the JSON holds "inf" (JSON has no infinity)
    assert main([*argv, "--strategy", "random", "--temperature", "inf"]) == 0
    assert json.loads(rep.read_text())["temperature"] == "inf"
    with pytest.raises(ActiveConfigError):
        SelectActiveConfig(iteration=0)


@pytest.mark.parametrize("run", ["help", "random"])
def test_help_and_random_load_no_torch(tmp_path, run):
    pool = write_pool(tmp_path / "pool.jsonl", 6)
    sel, rest, rep = outputs(tmp_path)
    args = ["--help"]
    if run == "random":
        args = ["--pool", str(pool), "--out-selected", str(sel), "--out-rest"]
        args += [str(rest), "--out-report", str(rep), "--strategy", "random"]
        args += ["--k", "3"]
    report, stderr = probe_stage("pipelines.select_active", args)
    assert report == {"exit": 0, "loaded": []}, stderr
    if run == "random":
        assert len(ids(sel)) == 3 and len(ids(rest)) == 3


# ------------------------------------------------ uncertainty on a tiny RM


@pytest.fixture(scope="module")
def torch_one_thread():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def rm(tmp_path_factory, torch_one_thread):
    """A tiny RM saved as a sequence classifier (seeded head), as test_scoring's."""
    from pipelines.common.modeling import (
        TinyArch,
        init_tiny_causal_lm,
        load_reward_model,
        train_tokenizer,
    )

    torch = torch_one_thread
    arch = TinyArch(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    root = tmp_path_factory.mktemp("active_rm")
    tok = train_tokenizer([f"{WORDS} {i}" for i in range(50)], vocab_size=300)
    init_tiny_causal_lm(tok, seed=0, arch=arch).save_pretrained(root / "lm")
    tok.save_pretrained(root / "lm")
    torch.manual_seed(3)
    model = load_reward_model(root / "lm")
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(root / "rm")
    tok.save_pretrained(root / "rm")
    return str(root / "rm")


def reference_margins(rm_dir, records, max_length):
    """|r(chosen) - r(rejected)| scored pair by pair, outside the stage."""
    from pipelines.common.modeling import (
        encode_conversations,
        load_reward_model,
        load_tokenizer,
        score_ids,
    )

    tok = load_tokenizer(rm_dir)
    model = load_reward_model(rm_dir).eval()
    out = {}
    for rec in records:
        enc = encode_conversations(
            tok, [rec["chosen"], rec["rejected"]], max_length=max_length
        )
        c, r = score_ids(model, enc.ids, pad_id=tok.pad_token_id, batch_size=1)
        out[rec["id"]] = abs(float(c) - float(r))
    return out


def test_uncertainty_end_to_end_margins_match_independent_scoring(rm, tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl", 20)
    sel, rest, rep = outputs(tmp_path)
    argv = ["--pool", str(pool), "--model", rm, "--out-selected", str(sel)]
    argv += ["--out-rest", str(rest), "--out-report", str(rep), "--k", "6"]
    argv += ["--seed", "1", "--max-length", "24", "--batch-size", "4"]
    argv += ["--temperature", "0.01"]
    argv += ["--device", "cpu"]
    assert main(argv) == 0
    report = json.loads(rep.read_text())
    want = reference_margins(rm, [pair(i) for i in range(20)], max_length=24)
    assert len(set(np.round(list(want.values()), 6))) == 20  # margins differ
    assert report["strategy"] == "uncertainty" and report["model"] == rm
    assert [r["id"] for r in report["selected"]] == ids(sel)
    assert len(ids(rest)) == 14 and not set(ids(rest)) & set(ids(sel))
    for row in report["selected"]:
        assert abs(row["margin"] - want[row["id"]]) < 1e-5
    m = np.array(list(want.values()))
    p = np.exp(-(m - m.min()) / 0.01) / np.exp(-(m - m.min()) / 0.01).sum()
    for row in report["selected"]:
        assert abs(row["p_first"] - p[int(row["id"][1:])]) < 1e-5
    assert abs(report["margins"]["pool"]["mean"] - m.mean()) < 1e-5
    assert abs(report["margins"]["pool"]["median"] - np.median(m)) < 1e-5
    chosen = np.array([want[i] for i in ids(sel)])
    assert abs(report["margins"]["selected"]["mean"] - chosen.mean()) < 1e-5
    assert report["scoring"]["settings"]["max_length"] == 24
    assert report["scoring"]["n_truncated_chosen"] > 0  # 24 tokens cut some
    assert report["scoring"]["n_truncated_rejected"] < 20  # and not all
    # T = 0 on the same pool: the 6 smallest independent margins
    assert main([*argv, "--temperature", "0"]) == 0
    smallest = sorted(want, key=lambda i: (want[i], i))[:6]
    assert set(ids(sel)) == set(smallest)
