import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_squared_error
from sklearn.model_selection import train_test_split

from pipelines.common.armo.embeddings import (
    EmbeddingFileError,
    EmbeddingSet,
    shard_range,
    write_shard,
)
from pipelines.common.armo.ridge import (
    DEFAULT_ALPHAS,
    EmptyAttributeError,
    RegressionFileError,
    fit_attributes,
    load_regression,
    ridge_path,
    train_test_indices,
)
from pipelines.common.cli import USER_ERROR_EXIT, UserError
from pipelines.fit_ridge import FitRidgeConfig, fit_ridge, main, make_parser

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMES = ["a-help", "a-correct", "b-overall", "c-safe", "c-score"]


def make_data(n, dim, seed=0, *, scale=1.0):
    """Rows from 3 sources: a labels 0-1, b labels 2, c labels 3-4; plus holes."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, dim)) * scale).astype(np.float32)
    w = rng.standard_normal((len(NAMES), dim)) / np.sqrt(dim)
    y = x.astype(np.float64) @ w.T + 0.3 * rng.standard_normal((n, len(NAMES)))
    source = rng.integers(0, 3, size=n)
    owns = {0: [0, 1], 1: [2], 2: [3, 4]}
    labels = np.full((n, len(NAMES)), np.nan)
    for s, cols in owns.items():
        labels[np.ix_(source == s, cols)] = y[np.ix_(source == s, cols)]
    # sporadic holes: attribute 1's mask differs from attribute 0's
    labels[rng.random(n) < 0.1, 1] = np.nan
    return x, labels.astype(np.float32)


def sklearn_reference(x, labels, alphas=DEFAULT_ALPHAS):
    """The original loop: train_test_split, per attribute per alpha a Ridge."""
    x = x.astype(np.float64)
    labels = labels.astype(np.float64)
    x_tr, x_va, y_tr, y_va = train_test_split(x, labels, test_size=0.2, random_state=42)
    coefs, chosen, losses = [], [], []
    for k in range(labels.shape[1]):
        mt, mv = ~np.isnan(y_tr[:, k]), ~np.isnan(y_va[:, k])
        loss = []
        for alpha in alphas:
            clf = Ridge(alpha=alpha, fit_intercept=False).fit(x_tr[mt], y_tr[mt, k])
            loss.append(mean_squared_error(y_va[mv, k], clf.predict(x_va[mv])))
        best = alphas[int(np.argmin(loss))]
        clf = Ridge(alpha=best, fit_intercept=False).fit(x_tr[mt], y_tr[mt, k])
        coefs.append(clf.coef_)
        chosen.append(best)
        losses.append(loss)
    return np.stack(coefs), chosen, np.array(losses)


def ours(x, labels, alphas=DEFAULT_ALPHAS):
    train, val = train_test_indices(len(x))
    return fit_attributes(x, labels, train, val, alphas, attributes=NAMES)


def rel_diff(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("n", [2, 5, 10, 11, 99, 100, 101, 1234])
def test_split_indices_equal_sklearn(n):
    train, val = train_test_indices(n)
    ref_train, ref_val = train_test_split(np.arange(n), test_size=0.2, random_state=42)
    np.testing.assert_array_equal(train, ref_train)
    np.testing.assert_array_equal(val, ref_val)


def test_split_other_fraction_and_seed():
    train, val = train_test_indices(57, test_size=0.33, seed=7)
    ref_train, ref_val = train_test_split(np.arange(57), test_size=0.33, random_state=7)
    np.testing.assert_array_equal(train, ref_train)
    np.testing.assert_array_equal(val, ref_val)


def test_split_refuses_empty_part():
    with pytest.raises(ValueError, match="empty split"):
        train_test_indices(1)


@pytest.mark.parametrize(
    "n, dim",
    [(400, 16), (60, 48)],  # every mask N > D; masks with N < D (kernel form)
    ids=["n>d", "n<d"],
)
def test_coefficients_and_alpha_match_sklearn(n, dim):
    x, labels = make_data(n, dim, seed=n)
    fit = ours(x, labels)
    ref_w, ref_alpha, ref_loss = sklearn_reference(x, labels)
    assert rel_diff(fit.weight, ref_w) < 1e-6
    for k in range(len(NAMES)):
        assert rel_diff(fit.weight[k], ref_w[k]) < 1e-6, NAMES[k]
    assert fit.alphas == ref_alpha
    np.testing.assert_allclose(fit.val_mse, ref_loss, rtol=1e-8)
    assert fit.n_groups == 4  # a-help, a-correct (holes), b, c


def test_counts_are_labelled_rows_per_split():
    x, labels = make_data(200, 8, seed=3)
    fit = ours(x, labels)
    train, val = train_test_split(labels, test_size=0.2, random_state=42)
    assert fit.n_train == [int(c) for c in (~np.isnan(train)).sum(axis=0)]
    assert fit.n_val == [int(c) for c in (~np.isnan(val)).sum(axis=0)]


def test_ridge_path_every_alpha_both_forms():
    rng = np.random.default_rng(1)
    for n, dim in ((50, 20), (20, 50), (30, 30)):
        x = rng.standard_normal((n, dim))
        y = rng.standard_normal((n, 2))
        path = ridge_path(x, y, DEFAULT_ALPHAS)
        for i, alpha in enumerate(DEFAULT_ALPHAS):
            ref = Ridge(alpha=alpha, fit_intercept=False).fit(x, y).coef_.T
            assert rel_diff(path[i], ref) < 1e-6, (n, dim, alpha)


def test_ill_conditioned_gram():
    # Near-collinear columns: X^T X has eigenvalues down to ~1e-12, so at
    # alpha=1e-4 the condition number of X^T X + alpha I is ~1e8 (n > d) and
    # the coefficients still agree to 1e-6.
    rng = np.random.default_rng(2)
    base = rng.standard_normal((300, 10))
    x = np.hstack([base, base + 1e-6 * rng.standard_normal((300, 10))])
    y = rng.standard_normal((300, 1))
    path = ridge_path(x, y, DEFAULT_ALPHAS)
    for i, alpha in enumerate(DEFAULT_ALPHAS):
        ref = Ridge(alpha=alpha, fit_intercept=False).fit(x, y[:, 0]).coef_
        assert rel_diff(path[i][:, 0], ref) < 1e-6, alpha


def _objective(x, y, w, alpha):
    return float(np.sum((y - x @ w) ** 2) + alpha * np.sum(w**2))


def test_numerically_singular_gram_matches_objective():
    # Columns scaled by 1e7: ||X^T X|| ~ 1e16, so X^T X + 1e-4 I is singular to
    # machine precision (condition ~1e20). The coefficients are then not
    # determined to any digit (sklearn's own Cholesky and SVD answers differ),
    # so compare the ridge objective and the predictions instead; ours takes
    # the SVD path here.
    rng = np.random.default_rng(4)
    base = rng.standard_normal((200, 5))
    x = 1e7 * np.hstack([base, base, rng.standard_normal((200, 3))])
    y = x[:, :1] * 1e-7 + 0.1 * rng.standard_normal((200, 1))
    alphas = (1e-4, 1.0)
    path = ridge_path(x, y, alphas)
    for i, alpha in enumerate(alphas):
        ref = Ridge(alpha=alpha, fit_intercept=False, solver="svd").fit(x, y[:, 0])
        ours_obj = _objective(x, y[:, 0], path[i][:, 0], alpha)
        ref_obj = _objective(x, y[:, 0], ref.coef_, alpha)
        assert ours_obj <= ref_obj * (1 + 1e-6)
        np.testing.assert_allclose(x @ path[i][:, 0], ref.predict(x), atol=1e-6)


def test_all_nan_attribute_is_a_named_error():
    x, labels = make_data(100, 4)
    labels[:, 2] = np.nan
    train, val = train_test_indices(len(x))
    with pytest.raises(EmptyAttributeError, match="b-overall.*no train label") as err:
        fit_attributes(
            x, labels, train, val, (1.0,), attributes=NAMES, source="f.safetensors"
        )
    assert isinstance(err.value, UserError)
    assert "f.safetensors" in str(err.value)


def test_attribute_without_val_label_is_a_named_error():
    x, labels = make_data(100, 4)
    train, val = train_test_indices(len(x))
    labels[val, 3] = np.nan
    with pytest.raises(EmptyAttributeError, match="c-safe.*no validation label"):
        fit_attributes(x, labels, train, val, (1.0,), attributes=NAMES)


def write_two_shards(tmp_path, x, labels):
    paths = []
    for shard in range(2):
        rows = shard_range(len(x), shard, 2)
        data = EmbeddingSet(
            kind="responses",
            embeddings=x[rows.start : rows.stop],
            labels=labels[rows.start : rows.stop],
            ids=[f"r{i}" for i in rows],
            attributes=NAMES,
            n_rows=len(rows),
            backbone="tiny",
        )
        path = tmp_path / f"emb-{shard:05d}-of-00002.safetensors"
        write_shard(path, data, shard=shard, n_shards=2)
        paths.append(path)
    return paths


def test_cli_end_to_end_two_shards(tmp_path):
    x, labels = make_data(150, 12, seed=5)
    paths = write_two_shards(tmp_path, x, labels)
    out, report = tmp_path / "armo" / "regression.safetensors", tmp_path / "r.json"
    argv = ["--embeddings", *map(str, paths), "--out", str(out)]
    argv += ["--report", str(report), "--alphas", "[0.01, 1, 100]"]
    assert main(argv) == 0
    weight, names, alphas = load_regression(out)
    assert names == NAMES
    assert weight.shape == (5, 12) and weight.dtype == np.float32
    ref_w, ref_alpha, _ = sklearn_reference(x, labels, alphas=(0.01, 1.0, 100.0))
    assert alphas == ref_alpha
    np.testing.assert_allclose(weight, ref_w, rtol=1e-5, atol=1e-6)
    rep = json.loads(report.read_text())
    assert rep["rows"] == 150 and rep["n_train_split"] == 120
    assert rep["n_val_split"] == 30 and rep["dim"] == 12
    assert rep["embedding_files"] == [str(p) for p in paths]
    assert [a["name"] for a in rep["attributes"]] == NAMES
    assert [a["alpha"] for a in rep["attributes"]] == ref_alpha
    assert list(rep["attributes"][0]["val_mse"]) == ["0.01", "1.0", "100.0"]


def test_cli_all_nan_attribute_exit_code(tmp_path, capsys):
    x, labels = make_data(60, 4)
    labels[:, 0] = np.nan
    paths = write_two_shards(tmp_path, x, labels)
    argv = ["--embeddings", *map(str, paths), "--out", str(tmp_path / "r.st")]
    argv += ["--report", str(tmp_path / "r.json")]
    assert main(argv) == USER_ERROR_EXIT
    err = capsys.readouterr().err
    assert "a-help" in err and str(paths[0]) in err
    assert not (tmp_path / "r.st").exists()


def test_pairs_set_is_refused(tmp_path):
    path = tmp_path / "pairs.safetensors"
    emb = np.zeros((3, 2, 4), dtype=np.float32)
    data = EmbeddingSet(
        kind="pairs", embeddings=emb, prompt_embeddings=emb, ids=["a", "b", "c"]
    )
    write_shard(path, data, shard=0, n_shards=1)
    with pytest.raises(EmbeddingFileError, match="need 'responses'"):
        fit_ridge([path], tmp_path / "o", tmp_path / "r", cfg=FitRidgeConfig())


def test_config_rejects_bad_values():
    with pytest.raises(UserError, match="alphas"):
        FitRidgeConfig(alphas=(1.0, -1.0))
    with pytest.raises(UserError, match="alphas"):
        FitRidgeConfig(alphas=())
    with pytest.raises(UserError, match="val_fraction"):
        FitRidgeConfig(val_fraction=1.0)
    with pytest.raises(UserError, match="split_seed"):
        FitRidgeConfig(split_seed=-1)
    cfg = FitRidgeConfig(alphas=(1, 2))
    assert cfg.alphas == (1.0, 2.0)


def test_parser_flags_and_defaults():
    args = make_parser().parse_args(
        ["--embeddings", "a", "b", "--out", "o", "--report", "r"]
    )
    assert args.alphas == DEFAULT_ALPHAS
    assert args.val_fraction == 0.2 and args.split_seed == 42


def test_load_regression_rejects_missing(tmp_path):
    with pytest.raises(RegressionFileError, match="no such"):
        load_regression(tmp_path / "none.safetensors")


def test_help_without_torch():
    code = (
        "import sys; from pipelines.fit_ridge import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "assert 'torch' not in sys.modules and 'sklearn' not in sys.modules\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert "--alphas" in proc.stdout and "--split-seed" in proc.stdout
