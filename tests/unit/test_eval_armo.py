import functools
import json

import numpy as np
import pytest
import torch

from pipelines.common.armo.embeddings import EmbeddingSet, write_shard
from pipelines.common.armo.gating import load_gating
from pipelines.eval_armo import EvalArmoError, eval_armo, main
from tests.unit.armo_fixtures import write_gating, write_regression

NAMES = ["correctness", "verbosity", "politeness"]
D = 6


def pair_set(n, seed):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, 2, D)).astype(np.float32)
    prompt = rng.normal(size=(n, 1, D)).astype(np.float32).repeat(2, axis=1)
    return EmbeddingSet(
        kind="pairs",
        embeddings=emb,
        prompt_embeddings=prompt,
        ids=[f"p{seed}-{i}" for i in range(n)],
        domains=["x"] * n,
        dropped=["gone"] if seed == 1 else [],
        n_rows=n + (seed == 1),
    )


@pytest.fixture
def files(tmp_path):
    weight = np.random.default_rng(9).normal(size=(3, D)).astype(np.float32)
    sets = {"math": pair_set(40, 1), "code": pair_set(25, 2)}
    paths = {}
    for domain, data in sets.items():
        paths[domain] = [tmp_path / f"{domain}.safetensors"]
        write_shard(paths[domain][0], data, shard=0, n_shards=1)
    report = {
        "attributes": NAMES,
        "debias_attribute": "verbosity",
        "tau": 0.03,
        "lambdas": {"correctness": 0.1, "verbosity": 1.0, "politeness": 0.5},
        "spearman_before": {"correctness": 0.4, "verbosity": 1.0, "politeness": 0.2},
        "spearman_after": {"correctness": 0.01, "verbosity": None, "politeness": 0.0},
        "train_on_debiased": True,
    }
    (tmp_path / "gating.json").write_text(json.dumps(report))
    (tmp_path / "bt-math.json").write_text(json.dumps({"accuracy": 0.75}))
    (tmp_path / "bt-code.json").write_text(json.dumps({"accuracy": 0.5}))
    return {
        "weight": weight,
        "sets": sets,
        "tests": paths,
        "regression": write_regression(tmp_path / "r.safetensors", weight, NAMES),
        "gating": write_gating(tmp_path / "g.safetensors", D, NAMES, v=1),
        "report": tmp_path / "gating.json",
        "bt": {"math": tmp_path / "bt-math.json", "code": tmp_path / "bt-code.json"},
        "out": tmp_path / "eval.json",
    }


def expected(files, data):
    """Accuracies by numpy from W, T and the gating net, pair by pair."""
    net, transform, _ = load_gating(files["gating"])
    r = data.embeddings.astype(np.float64) @ files["weight"].T.astype(np.float64)
    with torch.no_grad():
        gates = np.stack(
            [
                net(torch.as_tensor(data.prompt_embeddings[:, s])).numpy()
                for s in (0, 1)
            ],
            axis=1,
        )
    debiased = r @ transform
    score = (gates * debiased).sum(-1)
    uniform = debiased.mean(-1)
    return {
        "armo": np.mean(score[:, 0] > score[:, 1]),
        "uniform": np.mean(uniform[:, 0] > uniform[:, 1]),
        "attributes": {
            k: np.mean(r[:, 0, i] > r[:, 1, i]) for i, k in enumerate(NAMES)
        },
        "gate": gates[:, 0].mean(0),
        "n": len(data),
    }


def test_accuracies_match_numpy(files):
    got = eval_armo(
        files["tests"],
        files["regression"],
        files["gating"],
        files["report"],
        files["out"],
        model_id="armo-x",
        backbone="b",
        bt=files["bt"],
        bt_model_id="rm-x",
    )
    assert json.loads(files["out"].read_text()) == json.loads(json.dumps(got))
    for domain, data in files["sets"].items():
        exp, entry = expected(files, data), got["domains"][domain]
        assert entry["n_pairs"] == exp["n"]
        assert entry["accuracy"]["armo"] == pytest.approx(exp["armo"])
        assert entry["accuracy"]["uniform"] == pytest.approx(exp["uniform"])
        for k in NAMES:
            assert entry["accuracy"]["attributes"][k] == pytest.approx(
                exp["attributes"][k]
            )
        np.testing.assert_allclose(list(entry["mean_gate"].values()), exp["gate"], 1e-5)
        assert entry["scored_accuracy"] is None
    assert got["domains"]["math"]["dropped"] == 1
    assert got["domains"]["math"]["accuracy"]["bt"] == 0.75
    # overall: pooled pairs, the BT accuracy weighted by pairs
    m, c = (expected(files, files["sets"][d]) for d in ("math", "code"))
    pooled = (m["armo"] * 40 + c["armo"] * 25) / 65
    assert got["overall"]["accuracy"]["armo"] == pytest.approx(pooled)
    assert got["overall"]["accuracy"]["bt"] == pytest.approx(
        (0.75 * 40 + 0.5 * 25) / 65
    )
    assert got["overall"]["n_pairs"] == 65 and got["overall"]["dropped"] == 1
    assert got["verbosity"]["attribute"] == "verbosity"
    assert got["verbosity"]["spearman_after"]["verbosity"] is None


def test_strict_accuracy_counts_ties_wrong(files, tmp_path):
    data = pair_set(10, 3)
    data.embeddings[:, 1] = data.embeddings[:, 0]  # every pair tied everywhere
    path = tmp_path / "tie.safetensors"
    write_shard(path, data, shard=0, n_shards=1)
    got = eval_armo(
        {"tie": [path]},
        files["regression"],
        files["gating"],
        files["report"],
        files["out"],
        model_id="a",
        backbone="b",
    )
    acc = got["domains"]["tie"]["accuracy"]
    assert acc["armo"] == 0.0 and acc["uniform"] == 0.0
    assert set(acc["attributes"].values()) == {0.0} and acc["bt"] is None


def test_missing_fields_are_named(files, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"attributes": NAMES, "tau": 0.03}))
    with pytest.raises(EvalArmoError, match="bad.json: no field"):
        eval_armo(
            files["tests"],
            files["regression"],
            files["gating"],
            bad,
            files["out"],
            model_id="a",
            backbone="b",
        )
    nobt = tmp_path / "nobt.json"
    nobt.write_text(json.dumps({"n": 3}))
    argv = ["--test", "math", str(files["tests"]["math"][0])]
    argv += ["--bt", "math", str(nobt), "--regression", str(files["regression"])]
    argv += ["--gating", str(files["gating"]), "--gating-report", str(files["report"])]
    argv += ["--model-id", "a", "--backbone", "b", "--out", str(files["out"])]
    assert main(argv) == 2  # "nobt.json: no field 'accuracy'", one line
    assert main([*argv[:3], *argv[6:]]) == 0


def test_scored_accuracy_counts_only_the_embedded_pairs(files, tmp_path):
    data = files["sets"]["code"]
    pairs = [{"id": i, "chosen": 1.0, "rejected": 0.0} for i in data.ids]
    pairs[0]["rejected"] = 1.0  # a tie: wrong
    pairs.append({"id": "dropped-at-extraction", "chosen": 0.0, "rejected": 5.0})
    scored = tmp_path / "scored.json"
    scored.write_text(json.dumps({"accuracy": 0.1, "pairs": pairs}))
    run = functools.partial(
        eval_armo,
        {"code": files["tests"]["code"]},
        files["regression"],
        files["gating"],
        files["report"],
        files["out"],
        model_id="a",
        backbone="b",
        scored={"code": scored},
    )
    got = run()
    n = len(data.ids)
    assert got["domains"]["code"]["scored_accuracy"] == pytest.approx((n - 1) / n)
    scored.write_text(json.dumps({"accuracy": 0.1, "pairs": pairs[2:]}))
    with pytest.raises(EvalArmoError, match=f"scores {n - 2} of the {n} pairs"):
        run()
