"""ArmoRM stage 1: one ridge regression per attribute (ALGORITHMS.md section 3).

For each attribute ``k`` the rows with a label (not NaN) give ``X_k, y_k``;
each penalty ``alpha`` gives ``w = argmin ||y_k - X_k w||^2 + alpha ||w||^2``
(scikit-learn's ``Ridge(alpha, fit_intercept=False)``), the alpha with the
least validation MSE is kept (the first on ties), and its coefficients, fitted
on the train split only, become row ``k`` of ``W [K, D]``. This ports
RLHFlow/RLHF-Reward-Modeling armo-rm/stage-1_train.py, which fits one sklearn
``Ridge`` per attribute and alpha, and once more with the best alpha.

Here the work is shared. Attributes labelled on the same train rows (hub data
mixes sources, each labelling its own attributes) form one group with one
matrix ``A``: the Gram ``X^T X`` (``D x D``) when the group has at least ``D``
rows, else the kernel ``X X^T`` (``n x n``, ``w = X^T (K + alpha I)^-1 y``),
the two forms sklearn's ``cholesky`` solver uses. Each alpha then costs one
solve of ``A + alpha I`` for all the group's attributes at once; the refit is
the same solve, so it is kept, not redone. A factorisation shared by every
alpha (an eigendecomposition of ``A``) would need one ``D x D`` eigh per
group, which on a 2-core machine at ``D = 4096`` takes ~37 s (its tridiagonal
reduction alone ~23 s) against ~2 s per LU solve: nine solves are cheaper.

Where ``A + alpha I`` is numerically singular (``alpha`` below ~1e3 machine
epsilons of ``||A||``, where sklearn's Cholesky may fail too) the group falls
back to the thin SVD of ``X``, sklearn's ``svd`` formula
``w = V diag(s / (s^2 + alpha)) U^T y``.

The train/validation split reproduces sklearn's
``train_test_split(test_size, random_state=seed)`` without importing it.
Torch-free; numpy only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.common.cli import UserError

# RLHFlow armo-rm/stage-1_train.py's alphas.
DEFAULT_ALPHAS = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4)
WEIGHT = "weight"
# Solve by SVD where alpha < SINGULAR_EPS * (top eigenvalue of A): the shifted
# matrix's condition number would exceed ~1/(1e3 eps), beyond an LU solve.
SINGULAR_EPS = 1e3 * np.finfo(np.float64).eps
POWER_STEPS = 20  # power iterations estimating the top eigenvalue


class EmptyAttributeError(UserError, ValueError):
    """An attribute has no label in the train or the validation split."""


class RegressionFileError(UserError, ValueError):
    """A regression file is missing, or lacks its tensor or metadata."""


def train_test_indices(
    n_rows: int, *, test_size: float = 0.2, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of sklearn's ``train_test_split(test_size, random_state=seed)``.

    sklearn (model_selection/_split.py, ``ShuffleSplit``): ``n_test =
    ceil(test_size * n)``, ``n_train = n - n_test``, ``perm =
    RandomState(seed).permutation(n)``, test ``perm[:n_test]``, train
    ``perm[n_test:]``.

    Args:
        n_rows: rows to split.
        test_size: fraction of rows held out, in (0, 1).
        seed: the ``random_state``.

    Returns:
        ``(train, test)`` index arrays, in sklearn's order.

    Raises:
        ValueError: when either part would be empty or ``test_size`` is out of
            range.
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    n_test = math.ceil(test_size * n_rows)
    n_train = n_rows - n_test
    if n_train <= 0 or n_test <= 0:
        raise ValueError(
            f"{n_rows} rows with test_size {test_size} leave an empty split"
            f" ({n_train} train, {n_test} test)"
        )
    perm = np.random.RandomState(seed).permutation(n_rows)
    return perm[n_test:], perm[:n_test]


def _shifted_solve(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    """``(a + alpha I)^-1 b`` by LU (``a`` is left as it was)."""
    shifted = a.copy()
    shifted.flat[:: len(a) + 1] += alpha
    return np.linalg.solve(shifted, b)


def _top_eigenvalue(a: np.ndarray) -> float:
    """Twice a power-iteration estimate of the top eigenvalue of PSD ``a``."""
    v = np.random.default_rng(0).standard_normal(len(a))
    value = 0.0
    for _ in range(POWER_STEPS):
        v = a @ v
        value = float(np.linalg.norm(v))
        if value == 0.0:
            return 0.0
        v /= value
    return 2.0 * value


def _svd_path(x: np.ndarray, y: np.ndarray, alphas: Sequence[float]) -> np.ndarray:
    """``[A, D, T]`` coefficients by sklearn's ``_solve_svd`` formula."""
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    uty = u.T @ y
    keep = s > 1e-15  # as sklearn: drop null singular values
    out = np.empty((len(alphas), x.shape[1], y.shape[1]))
    for i, alpha in enumerate(alphas):
        d = np.zeros_like(s)
        d[keep] = s[keep] / (s[keep] ** 2 + alpha)
        out[i] = vt.T @ (d[:, None] * uty)
    return out


def ridge_path(x: np.ndarray, y: np.ndarray, alphas: Sequence[float]) -> np.ndarray:
    """Coefficients of ``Ridge(alpha, fit_intercept=False)`` for every alpha.

    Args:
        x: ``[n, D]`` float64 rows (all labelled for every target).
        y: ``[n, T]`` float64 targets sharing those rows.
        alphas: penalties, each > 0.

    Returns:
        ``[len(alphas), D, T]`` float64 coefficients.
    """
    n, dim = x.shape
    kernel = dim > n  # sklearn's switch to the kernel form
    a = x @ x.T if kernel else x.T @ x
    rhs = y if kernel else x.T @ y
    if min(alphas) < SINGULAR_EPS * _top_eigenvalue(a):
        return _svd_path(x, y, alphas)
    out = np.empty((len(alphas), dim, y.shape[1]))
    for i, alpha in enumerate(alphas):
        sol = _shifted_solve(a, rhs, alpha)
        out[i] = x.T @ sol if kernel else sol
    return out


@dataclass
class RidgeFit:
    """Stage-1 regression of every attribute."""

    weight: np.ndarray  # [K, D] float64: coefficients at the chosen alpha
    alphas: list[float]  # chosen alpha per attribute
    val_mse: np.ndarray  # [K, A] validation MSE per attribute and alpha
    n_train: list[int]  # labelled train rows per attribute
    n_val: list[int]  # labelled validation rows per attribute
    n_groups: int  # distinct train label masks (one matrix and solve each)


def _check_labelled(
    train_ok: np.ndarray, val_ok: np.ndarray, attributes: Sequence[str], source: str
) -> None:
    """Raise :class:`EmptyAttributeError` for attributes a split leaves unlabelled."""
    problems = [
        f"{name!r} ({'no train label' if not t else 'no validation label'})"
        for name, t, v in zip(
            attributes, train_ok.any(axis=0), val_ok.any(axis=0), strict=True
        )
        if not (t and v)
    ]
    if problems:
        raise EmptyAttributeError(
            f"{source or 'the embeddings'}: attribute(s) {', '.join(problems)}"
            " after the train/validation split; drop them or add labelled rows"
        )


def fit_attributes(
    x: np.ndarray,
    labels: np.ndarray,
    train: np.ndarray,
    val: np.ndarray,
    alphas: Sequence[float],
    *,
    attributes: Sequence[str],
    source: str = "",
) -> RidgeFit:
    """Fit every attribute's ridge, choosing alpha by validation MSE.

    Args:
        x: ``[N, D]`` embeddings (any float dtype; computed in float64).
        labels: ``[N, K]`` labels, NaN where unknown.
        train: train row indices.
        val: validation row indices.
        alphas: penalties to try, in order (ties go to the first).
        attributes: the K attribute names (for messages).
        source: the input files, for messages.

    Returns:
        The :class:`RidgeFit`.

    Raises:
        EmptyAttributeError: if an attribute has no train or validation label.
    """
    y_train = np.asarray(labels[train], dtype=np.float64)
    y_val = np.asarray(labels[val], dtype=np.float64)
    train_ok, val_ok = ~np.isnan(y_train), ~np.isnan(y_val)
    _check_labelled(train_ok, val_ok, attributes, source)
    n_attr, dim = labels.shape[1], x.shape[1]
    path = np.empty((len(alphas), dim, n_attr))
    groups: dict[bytes, list[int]] = {}
    for k in range(n_attr):
        groups.setdefault(np.packbits(train_ok[:, k]).tobytes(), []).append(k)
    for ks in groups.values():
        rows = train[train_ok[:, ks[0]]]
        x_m = np.asarray(x[rows], dtype=np.float64)
        y_m = y_train[train_ok[:, ks[0]]][:, ks]
        path[:, :, ks] = ridge_path(x_m, y_m, alphas)
        del x_m
    pred = np.asarray(x[val], dtype=np.float64) @ path.transpose(1, 0, 2).reshape(
        dim, -1
    )
    pred = pred.reshape(len(val), len(alphas), n_attr)
    val_mse = np.empty((n_attr, len(alphas)))
    for k in range(n_attr):
        err = pred[val_ok[:, k], :, k] - y_val[val_ok[:, k], k][:, None]
        val_mse[k] = np.mean(err**2, axis=0)
    best = np.argmin(val_mse, axis=1)  # first minimum, as pandas idxmin
    return RidgeFit(
        weight=np.stack([path[best[k], :, k] for k in range(n_attr)]),
        alphas=[float(alphas[b]) for b in best],
        val_mse=val_mse,
        n_train=[int(c) for c in train_ok.sum(axis=0)],
        n_val=[int(c) for c in val_ok.sum(axis=0)],
        n_groups=len(groups),
    )


def load_regression(path: Path | str) -> tuple[np.ndarray, list[str], list[float]]:
    """Read a regression file written by ``fit_ridge``.

    Args:
        path: the ``regression.safetensors`` file.

    Returns:
        ``(W [K, D] float32, attribute names, chosen alpha per attribute)``.

    Raises:
        RegressionFileError: on a missing file, tensor or metadata, or
            mismatched sizes.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise RegressionFileError(f"{path}: no such regression file")
    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata() or {}
        if WEIGHT not in fh.keys():
            raise RegressionFileError(f"{path}: no tensor {WEIGHT!r}")
        weight = fh.get_tensor(WEIGHT)
    try:
        names = [str(a) for a in json.loads(meta["attributes"])]
        alphas = [float(a) for a in json.loads(meta["alphas"])]
    except (KeyError, TypeError, ValueError) as err:
        raise RegressionFileError(
            f"{path}: metadata 'attributes' and 'alphas' must be JSON lists ({err})"
        ) from err
    if weight.ndim != 2 or not len(names) == len(alphas) == len(weight):
        raise RegressionFileError(
            f"{path}: weight {weight.shape} does not fit {len(names)} attributes"
            f" and {len(alphas)} alphas"
        )
    return weight, names, alphas
