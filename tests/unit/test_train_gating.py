"""ArmoRM stage 2: debiasing math, the gating network, the train_gating CLI.

Expected values come from scipy, sklearn, plain numpy loops or hand-built
cases, never from the code under test.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from scipy.stats import rankdata, spearmanr
from sklearn.model_selection import train_test_split

from pipelines.common.armo import gating
from pipelines.common.armo.embeddings import EmbeddingSet, write_shard
from pipelines.common.armo.gating import (
    DEFAULT_GRID,
    GatingError,
    average_ranks,
    debias_transform,
    load_gating,
    spearman,
    spearman_with,
    split_indices,
    verbosity_lambdas,
)
from pipelines.common.cli import USER_ERROR_EXIT
from pipelines.train_gating import TrainGatingConfig, main, train_gating

ROOT = Path(__file__).resolve().parents[2]
ATTRS = ["a0", "a1", "helpsteer-verbosity"]
# small and fast: enough to learn the two-cluster task below
FAST = dict(hidden_size=32, layers=2, dropout=0.0, steps=300, batch_size=256)


# ------------------------------------------------------------------ spearman


def test_ranks_and_spearman_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 5, size=60).astype(float)  # many ties
        b = rng.integers(0, 7, size=60) + 0.1 * a
        np.testing.assert_array_equal(average_ranks(a), rankdata(a))
        assert spearman(a, b) == pytest.approx(spearmanr(a, b)[0], abs=1e-12)
    a, b = rng.normal(size=500), rng.normal(size=500)
    assert spearman(a, a + b) == pytest.approx(spearmanr(a, a + b)[0], abs=1e-12)
    cols = rng.integers(0, 4, size=(80, 3)).astype(float)
    t = rng.normal(size=80)
    expect = [spearmanr(cols[:, k], t)[0] for k in range(3)]
    np.testing.assert_allclose(spearman_with(cols, t), expect, atol=1e-12)


def test_spearman_of_constant_is_nan():
    assert math.isnan(spearman(np.ones(10), np.arange(10.0)))


# ------------------------------------------------------------------ debiasing


def test_default_grid_is_the_scripts():
    assert len(DEFAULT_GRID) == 24
    fine = [0, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15]
    coarse = [round(0.2 + 0.05 * i, 2) for i in range(16)]
    assert list(DEFAULT_GRID) == fine + coarse
    assert coarse[-1] == 0.95
    assert TrainGatingConfig().grid == DEFAULT_GRID


def _brute_force_lambda(vk, vv, grid, tau):
    """The spec's loop for one attribute, with scipy (independent of v's order)."""
    for p in grid:
        if spearmanr(vk - p * vv, vv)[0] <= tau:
            return p
    return 1.0


def test_lambdas_match_brute_force_scipy():
    rng = np.random.default_rng(1)
    n = 600
    vv = rng.normal(size=n)
    slopes = [0.0, 0.05, 0.2, 0.37, 0.6, 0.9, 1.5, -0.4]
    cols = [a * vv + rng.normal(scale=0.3, size=n) for a in slopes]
    v = 3
    V = np.column_stack(cols[:v] + [vv] + cols[v:])
    lam = verbosity_lambdas(V, v, grid=DEFAULT_GRID, tau=0.03)
    expect = [
        1.0 if k == v else _brute_force_lambda(V[:, k], vv, DEFAULT_GRID, 0.03)
        for k in range(V.shape[1])
    ]
    np.testing.assert_array_equal(lam, expect)
    assert len(set(expect)) >= 5  # the case covers several grid points


def test_lambdas_hand_built():
    rng = np.random.default_rng(2)
    vv = rng.normal(size=300)
    noise = 1e-4 * rng.normal(size=300)
    V = np.column_stack(
        [
            0.32 * vv + noise,  # (0.32 - p) vv: positive up to 0.3, negative at 0.35
            -vv,  # negative from the start: 0
            2.0 * vv + noise,  # never under tau on the grid: keeps 1.0
            vv,  # verbosity
            rng.normal(size=300) - 0.5 * vv,  # negative correlation at p = 0
        ]
    )
    lam = verbosity_lambdas(V, 3)
    np.testing.assert_array_equal(lam, [0.35, 0.0, 1.0, 1.0, 0.0])
    lam = verbosity_lambdas(V, 3, unassigned_lambda=0.5)
    np.testing.assert_array_equal(lam, [0.35, 0.0, 0.5, 1.0, 0.0])
    # a higher tau stops earlier: at p = 0.3, (0.02 vv) still ranks as +1
    assert verbosity_lambdas(V, 3, tau=0.99)[0] == 0.35
    assert verbosity_lambdas(V, 3, tau=1.0)[0] == 0.0


def test_lambdas_reject_bad_grid_and_constant_verbosity():
    V = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(GatingError, match="ascending"):
        verbosity_lambdas(V, 2, grid=[0.1, 0.05])
    V[:, 2] = 1.0
    with pytest.raises(GatingError, match="constant"):
        verbosity_lambdas(V, 2)


def test_transform_subtracts_lambda_times_verbosity():
    rng = np.random.default_rng(3)
    K, v = 5, 2
    lam = np.array([0.1, 0.35, 1.0, 0.0, 1.0])
    R = rng.normal(size=(40, K))
    T = debias_transform(lam, v)
    assert T.dtype == np.float32 and T.shape == (K, K)
    expect = R.copy()
    for k in range(K):
        expect[:, k] = R[:, k] - lam[k] * R[:, v]
    assert np.all(expect[:, v] == 0)
    np.testing.assert_allclose(R @ T.astype(np.float64), expect, atol=1e-6)


def test_split_matches_sklearn():
    for n in (7, 10, 11, 333, 2000):
        for seed in (0, 5):
            train, test = split_indices(n, test_fraction=0.2, seed=seed)
            tr, te = train_test_split(np.arange(n), test_size=0.2, random_state=seed)
            np.testing.assert_array_equal(train, tr)
            np.testing.assert_array_equal(test, te)


# ------------------------------------------------------------------ data


def _two_cluster_data(n=2000, dim=12, seed=0):
    """Pairs whose preference shows in attr 0 for cluster A, attr 1 for B.

    ``W = [I_3 | 0]``, so the rewards are the first 3 response coordinates;
    the prompt embedding's first coordinate tells the cluster. Verbosity is
    noise both attributes lean on (so their lambdas are not 0).
    """
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, 2, size=n)  # 0 = A, 1 = B
    h = rng.normal(size=(n, 2, dim)).astype(np.float32)
    good = np.where(cluster == 0, 0, 1)
    bad = 1 - good
    rows = np.arange(n)
    h[rows, 0, good] = rng.normal(size=n) + 2.0  # informative attribute
    h[rows, 1, good] = rng.normal(size=n)
    h[rows, 0, bad] = 3 * rng.normal(size=n)  # the other is loud noise
    h[rows, 1, bad] = 3 * rng.normal(size=n)
    h[:, :, :2] += 0.25 * h[:, :, 2:3]  # both attributes lean on verbosity
    prompt = rng.normal(size=(n, dim)).astype(np.float32)
    prompt[:, 0] = np.where(cluster == 0, 2.0, -2.0)
    prompts = np.stack([prompt, prompt], axis=1)
    weight = np.zeros((3, dim), dtype=np.float32)
    weight[:, :3] = np.eye(3)
    domains = ["math" if c == 0 else "code" for c in cluster]
    data = EmbeddingSet(
        kind="pairs",
        embeddings=h,
        prompt_embeddings=prompts,
        ids=[f"p{i}" for i in range(n)],
        domains=domains,
        n_rows=n,
        backbone="tiny",
    )
    return data, weight, cluster


def _write_regression(path, weight, attrs=ATTRS):
    save_file(
        {"weight": np.ascontiguousarray(weight)},
        str(path),
        metadata={"attributes": json.dumps(attrs)},
    )
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny nets run fastest on one thread (two spin-wait on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One CLI run on the two-cluster set (preference = reference)."""
    root = tmp_path_factory.mktemp("gating")
    data, weight, cluster = _two_cluster_data()
    n = len(data)
    half = n // 2
    shards = []
    for i, rows in enumerate((slice(0, half), slice(half, n))):
        part = EmbeddingSet(
            kind="pairs",
            embeddings=data.embeddings[rows],
            prompt_embeddings=data.prompt_embeddings[rows],
            ids=data.ids[rows],
            domains=data.domains[rows],
            n_rows=half,
            backbone="tiny",
        )
        write_shard(root / f"pref-{i}.safetensors", part, shard=i, n_shards=2)
        shards.append(root / f"pref-{i}.safetensors")
    reg = _write_regression(root / "regression.safetensors", weight)
    out, report = root / "gating.safetensors", root / "gating.json"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]
    argv = ["--regression", str(reg), "--preference", *map(str, shards)]
    argv += ["--out", str(out), "--report", str(report), "--log-every", "50", *flags]
    assert main(argv) == 0
    return {
        "data": data,
        "weight": weight,
        "cluster": cluster,
        "out": out,
        "report": json.loads(report.read_text()),
        "argv": argv,
        "root": root,
    }


# ------------------------------------------------------------------ training


def test_cli_writes_the_gating_file(trained):
    with safe_open(str(trained["out"]), framework="numpy") as fh:
        names = set(fh.keys())
        meta = json.loads(fh.metadata()["config"])
        T = fh.get_tensor("transform")
        lam = fh.get_tensor("lambdas")
    assert {"transform", "lambdas", "net.logit_scale"} <= names
    assert {"net.layers.0.weight", "net.layers.2.bias"} <= names  # 2 hidden + out
    assert meta["attributes"] == ATTRS
    assert meta["debias_attribute"] == "helpsteer-verbosity"  # suffix of "verbosity"
    assert (meta["hidden_size"], meta["layers"], meta["temperature"]) == (32, 2, 10.0)
    assert T.shape == (3, 3) and lam.shape == (3,) and lam[2] == 1.0
    np.testing.assert_array_equal(T, debias_transform(lam.astype(np.float64), 2))


def test_report_keys_and_debias_correlations(trained):
    rep = trained["report"]
    for key in (
        "attributes lambdas tau spearman_before spearman_after abs_spearman_after"
        " val train loss_curve n_pairs inputs logit_scale config"
    ).split():
        assert key in rep
    assert rep["n_pairs"] == {"train": 1600, "val": 400, "reference": 2000}
    # independent check of the correlations on the reference (= preference) set
    data, weight = trained["data"], trained["weight"]
    r = data.embeddings.astype(np.float32) @ weight.T
    V = np.concatenate([r[:, 0], r[:, 1]]).astype(np.float64)
    for k, a in enumerate(ATTRS):
        assert rep["spearman_before"][a] == pytest.approx(
            spearmanr(V[:, k], V[:, 2])[0]
        )
    lam = np.array([rep["lambdas"][a] for a in ATTRS])
    for k, a in enumerate(ATTRS[:2]):
        after = spearmanr(V[:, k] - lam[k] * V[:, 2], V[:, 2])[0]
        assert rep["spearman_after"][a] == pytest.approx(after, abs=1e-9)
        assert rep["abs_spearman_after"][a] == pytest.approx(abs(after), abs=1e-9)
    assert rep["spearman_after"]["helpsteer-verbosity"] is None  # zeroed column
    assert 0.1 <= lam[0] <= 0.3 and 0.1 <= lam[1] <= 0.3
    assert rep["spearman_before"]["a0"] > 0.03
    steps = [p["step"] for p in rep["loss_curve"]]
    assert steps == [50, 100, 150, 200, 250, 300]
    assert rep["loss_curve"][-1]["loss"] < rep["loss_curve"][0]["loss"]


def _val_view(trained):
    """Val rewards (r T), prompts and clusters, split with sklearn."""
    data, weight = trained["data"], trained["weight"]
    _, T, meta = load_gating(trained["out"])
    r = (data.embeddings.astype(np.float32) @ weight.T) @ T
    idx = np.arange(len(data))
    _, val = train_test_split(idx, test_size=0.2, random_state=0)
    return r[val], data.prompt_embeddings[val, 0], trained["cluster"][val]


def test_gated_model_beats_single_attributes_and_uniform(trained):
    net, _, _ = load_gating(trained["out"])
    r, x, _ = _val_view(trained)
    with torch.no_grad():
        g = net(torch.from_numpy(np.ascontiguousarray(x))).numpy().astype(np.float64)
    gated = np.mean((g * r[:, 0]).sum(-1) > (g * r[:, 1]).sum(-1))
    singles = [np.mean(r[:, 0, k] > r[:, 1, k]) for k in range(3)]
    uniform = np.mean(r[:, 0].mean(-1) > r[:, 1].mean(-1))
    assert gated > max(singles) + 0.1
    assert gated > uniform + 0.1
    rep = trained["report"]["val"]
    assert rep["accuracy"] == pytest.approx(gated)
    assert rep["uniform_accuracy"] == pytest.approx(uniform)
    assert [rep["single_attribute_accuracy"][a] for a in ATTRS] == pytest.approx(
        singles
    )
    assert set(rep["per_domain"]) == {"math", "code"}


def test_gates_follow_the_cluster_and_sum_to_logit_scale(trained):
    net, _, _ = load_gating(trained["out"])
    _, x, cluster = _val_view(trained)
    with torch.no_grad():
        g = net(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    scale = net.logit_scale.item()
    assert scale == pytest.approx(trained["report"]["logit_scale"])
    np.testing.assert_allclose(g.sum(-1), scale, rtol=1e-5)
    mean_a, mean_b = g[cluster == 0].mean(0), g[cluster == 1].mean(0)
    assert mean_a[0] > mean_a[1] + 0.1 * scale
    assert mean_b[1] > mean_b[0] + 0.1 * scale
    # regression test for the original's softmax over chosen/rejected: not uniform
    assert np.abs(g - scale / 3).max() > 0.1 * scale
    np.testing.assert_allclose(
        g.mean(0),
        [trained["report"]["val"]["mean_gate"][a] for a in ATTRS],
        rtol=1e-5,
    )


def test_training_is_deterministic(trained, tmp_path):
    argv = list(trained["argv"])
    out = tmp_path / "again.safetensors"
    argv[argv.index("--out") + 1] = str(out)
    argv[argv.index("--report") + 1] = str(tmp_path / "again.json")
    assert main(argv) == 0
    with safe_open(str(out), framework="numpy") as a:
        with safe_open(str(trained["out"]), framework="numpy") as b:
            assert set(a.keys()) == set(b.keys())
            for name in a.keys():
                np.testing.assert_array_equal(a.get_tensor(name), b.get_tensor(name))


def test_loaded_net_is_a_gating_network_in_eval_mode(trained):
    net, _, meta = load_gating(trained["out"])
    assert isinstance(net, gating.GatingNetwork)
    assert not net.training
    assert meta["lambdas"][2] == 1.0


def test_untransformed_training_saves_identity(trained, tmp_path):
    data, weight, _ = _two_cluster_data(n=200)
    write_shard(tmp_path / "p.safetensors", data, shard=0, n_shards=1)
    reg = _write_regression(tmp_path / "r.safetensors", weight)
    cfg = TrainGatingConfig(
        **{**FAST, "steps": 5}, train_on_debiased=False, debias_attribute="verbosity"
    )
    rep = train_gating(
        reg,
        [tmp_path / "p.safetensors"],
        tmp_path / "g.safetensors",
        tmp_path / "g.json",
        cfg=cfg,
        reference=[tmp_path / "p.safetensors"],
    )
    _, T, meta = load_gating(tmp_path / "g.safetensors")
    np.testing.assert_array_equal(T, np.eye(3, dtype=np.float32))
    assert meta["train_on_debiased"] is False
    assert rep["inputs"]["reference"] == [str(tmp_path / "p.safetensors")]


# ------------------------------------------------------------------ errors


def _small_inputs(tmp_path, weight_fn=None, attrs=ATTRS):
    data, weight, _ = _two_cluster_data(n=50)
    if weight_fn is not None:
        weight_fn(weight)
    write_shard(tmp_path / "p.safetensors", data, shard=0, n_shards=1)
    reg = _write_regression(tmp_path / "r.safetensors", weight, attrs)
    return reg, tmp_path / "p.safetensors"


def _run(tmp_path, reg, pref, *extra):
    argv = ["--regression", str(reg), "--preference", str(pref)]
    argv += ["--out", str(tmp_path / "g.safetensors")]
    argv += ["--report", str(tmp_path / "g.json"), "--steps", "2", *extra]
    return main(argv)


def test_missing_debias_attribute_is_a_user_error(tmp_path, capsys):
    reg, pref = _small_inputs(tmp_path, attrs=["a0", "a1", "a2"])
    assert _run(tmp_path, reg, pref) == USER_ERROR_EXIT
    err = capsys.readouterr().err
    assert "'verbosity'" in err and "a2" in err
    assert not (tmp_path / "g.safetensors").exists()
    reg, pref = _small_inputs(tmp_path, attrs=["x-verbosity", "y-verbosity", "a"])
    assert _run(tmp_path, reg, pref) == USER_ERROR_EXIT
    assert "several" in capsys.readouterr().err


def test_nan_in_weight_is_a_user_error(tmp_path, capsys):
    reg, pref = _small_inputs(
        tmp_path, weight_fn=lambda w: w.__setitem__((1, 0), np.nan)
    )
    assert _run(tmp_path, reg, pref) == USER_ERROR_EXIT
    err = capsys.readouterr().err
    assert "NaN" in err and "a1" in err and "regression" in err


def test_dimension_mismatch_is_a_user_error(tmp_path, capsys):
    reg, pref = _small_inputs(tmp_path)
    _write_regression(reg, np.zeros((3, 5), dtype=np.float32))
    assert _run(tmp_path, reg, pref) == USER_ERROR_EXIT
    assert "hidden size" in capsys.readouterr().err


def test_bad_config_is_a_user_error(tmp_path, capsys):
    reg, pref = _small_inputs(tmp_path)
    assert _run(tmp_path, reg, pref, "--temperature", "0") == USER_ERROR_EXIT
    assert "temperature" in capsys.readouterr().err


def test_help_loads_no_torch():
    code = (
        "import runpy, sys; sys.argv = ['x', '--help']\n"
        "try:\n    runpy.run_module('pipelines.train_gating', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch loaded'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "--debias-attribute" in proc.stdout
