"""ArmoRM stage 2: verbosity debiasing (numpy) and the gating network (torch).

ALGORITHMS.md section 3, "Stage-2 math"; a port of RLHFlow/RLHF-Reward-Modeling
armo-rm/stage-2_train.py (``find_proper_verbosity_penalties``,
``GatingNetwork``).

Debiasing: with ``V`` the attribute rewards of every response of the reference
set (``[M, K]``) and ``v`` the verbosity column, :func:`verbosity_lambdas` walks
the grid ``P`` in ascending order and gives attribute ``k`` the first ``p``
with ``Spearman(V_k - p V_v, V_v) <= tau`` (signed, as the original);
:func:`debias_transform` builds ``T = I; T[v, :] -= lambda`` so that
``(r T)_k = r_k - lambda_k r_v`` and ``(r T)_v = 0``.

Gating: ``GatingNetwork(x)`` maps a prompt embedding ``[B, D]`` to gates
``[B, K]`` = ``logit_scale * softmax(mlp(x) / temperature)`` over the
attribute axis, so each row sums to ``logit_scale``. The ArmoRM score is
``sum_k g_k(x) (r T)_k``.

The gating file (:func:`save_gating`, :func:`load_gating`), safetensors:

- ``net.<name>``: the network's state dict (``net.layers.<i>.weight``,
  ``net.layers.<i>.bias``, ``net.logit_scale`` ``[1]``), float32;
- ``transform`` float32 ``[K, K]``: the ``T`` the scores use (the identity when
  the gates were trained on untransformed rewards, ``train_on_debiased``
  false); ``lambdas`` float32 ``[K]``: the debiasing coefficients found;
- metadata ``config``: JSON with ``attributes``, ``in_features``,
  ``hidden_size``, ``layers``, ``dropout``, ``temperature``,
  ``debias_attribute``, ``tau``, ``train_on_debiased`` (and what else the
  writer adds).

Also here: :func:`split_indices` (sklearn's ``train_test_split`` rows) and
:func:`evaluate` (strict pairwise accuracy). Importing this module loads no
torch: the network class is built on first use (``gating.GatingNetwork`` or
:func:`network_class`).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipelines.common.cli import UserError
from pipelines.common.io import atomic_path

if TYPE_CHECKING:
    import torch

# armo-rm/stage-2_train.py `verbosity_penalties`: 8 fine steps up to 0.15, then
# 0.2 .. 0.95 by 0.05 (24 values); written out so no float steps accumulate.
DEFAULT_GRID: tuple[float, ...] = (
    0.0, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15,
    0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55,
    0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95,
)  # fmt: skip
NET_PREFIX = "net."
REQUIRED_META = ("attributes", "in_features", "hidden_size", "layers", "temperature")


class GatingError(UserError, ValueError):
    """Bad gating input: a missing attribute, non-finite rewards, a bad file."""


# ------------------------------------------------------------------ debiasing


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-D array, ties sharing their average rank.

    Same as ``scipy.stats.rankdata(x, method="average")``.
    """
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts_run = np.r_[True, xs[1:] != xs[:-1]]
    run = np.cumsum(starts_run) - 1
    starts = np.flatnonzero(starts_run)
    ends = np.r_[starts[1:], len(x)]  # one past each run's last position
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = ((starts + ends - 1) / 2.0 + 1.0)[run]
    return ranks


def _pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``a`` ``[n, k]`` with ``b`` ``[n]``.

    NaN where a column or ``b`` is constant (as scipy).
    """
    a = a - a.mean(axis=0)
    b = b - b.mean()
    num = b @ a
    den = np.sqrt((a * a).sum(axis=0) * (b @ b))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    return np.where(den > 0, np.clip(out, -1.0, 1.0), np.nan)


def spearman_with(values: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of ``values`` ``[n, k]`` with ``target``.

    Average ranks for ties; NaN for a constant column or target.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    ranks = np.stack([average_ranks(col) for col in values.T], axis=1)
    return _pearson_columns(ranks, average_ranks(np.asarray(target)))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of two 1-D arrays (``scipy.stats.spearmanr``'s rho)."""
    return float(spearman_with(np.asarray(a)[:, None], b)[0])


def verbosity_lambdas(
    rewards: np.ndarray,
    v: int,
    *,
    grid: Sequence[float] = DEFAULT_GRID,
    tau: float = 0.03,
    unassigned_lambda: float = 1.0,
) -> np.ndarray:
    """The verbosity penalty ``lambda_k`` of each attribute (spec section 3).

    Walk ``grid`` in order; at ``p``, every still-unassigned ``k != v`` with
    ``Spearman(V_k - p V_v, V_v) <= tau`` (signed) gets ``lambda_k = p``. An
    attribute never under ``tau`` keeps ``unassigned_lambda`` (1.0 in the
    original, although not on the grid); ``lambda_v = 1``.

    Args:
        rewards: ``V`` ``[M, K]``, the rewards of every reference response.
        v: the verbosity column.
        grid: candidate penalties, strictly ascending.
        tau: the correlation threshold.
        unassigned_lambda: the penalty of an attribute never under ``tau``.

    Returns:
        ``lambdas`` float64 ``[K]``.

    Raises:
        GatingError: on a bad grid or column, non-finite or constant rewards.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    n_attr = rewards.shape[1]
    grid = [float(p) for p in grid]
    if not grid or not all(math.isfinite(p) for p in grid):
        raise GatingError(f"the debias grid must be finite values, got {grid}")
    if any(b <= a for a, b in zip(grid, grid[1:], strict=False)):
        raise GatingError(f"the debias grid must be strictly ascending, got {grid}")
    if not 0 <= v < n_attr:
        raise GatingError(f"verbosity column {v} is not among {n_attr} attributes")
    if not np.isfinite(rewards).all():
        raise GatingError("the reference rewards hold NaN or infinite values")
    verb = rewards[:, v]
    if len(verb) < 2 or np.all(verb == verb[0]):
        raise GatingError(
            "the verbosity rewards are constant on the reference set: nothing"
            " to debias against"
        )
    lambdas = np.full(n_attr, float(unassigned_lambda))
    lambdas[v] = 1.0
    todo = [k for k in range(n_attr) if k != v]
    for p in grid:
        if not todo:
            break
        corr = spearman_with(rewards[:, todo] - p * verb[:, None], verb)
        done = [k for k, c in zip(todo, corr, strict=True) if c <= tau]
        lambdas[done] = p
        todo = [k for k in todo if k not in done]
    return lambdas


def debias_transform(lambdas: np.ndarray, v: int) -> np.ndarray:
    """``T = I; T[v, :] -= lambdas`` (float32 ``[K, K]``); needs ``lambdas[v] == 1``.

    Then ``(r @ T)_k = r_k - lambdas_k r_v`` and ``(r @ T)_v = 0``.
    """
    lambdas = np.asarray(lambdas, dtype=np.float64)
    if lambdas[v] != 1.0:
        raise ValueError(f"lambdas[{v}] must be 1 (zeroes the verbosity column)")
    transform = np.eye(len(lambdas))
    transform[v, :] -= lambdas
    return transform.astype(np.float32)


def split_indices(
    n: int, *, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices, as sklearn ``train_test_split`` picks them.

    ``n_test = ceil(test_fraction * n)``; the first ``n_test`` of
    ``RandomState(seed).permutation(n)`` are the test rows, the rest train.
    """
    if not 0 < test_fraction < 1:
        raise GatingError(f"the validation fraction must be in (0, 1): {test_fraction}")
    n_test = math.ceil(test_fraction * n)
    if n - n_test < 1 or n_test < 1:
        raise GatingError(
            f"{n} pairs cannot be split into train and validation"
            f" (fraction {test_fraction})"
        )
    perm = np.random.RandomState(seed).permutation(n)
    return perm[n_test:], perm[:n_test]


def resolve_attribute(attributes: Sequence[str], name: str) -> int:
    """Column of ``name``: an exact match, else the one ``'<source>-<name>'``.

    Raises:
        GatingError: naming the attribute when none or several match.
    """
    if name in attributes:
        return list(attributes).index(name)
    hits = [i for i, a in enumerate(attributes) if a.endswith("-" + name)]
    if len(hits) == 1:
        return hits[0]
    why = "several" if hits else "no"
    raise GatingError(
        f"debias attribute {name!r}: {why} regression attribute(s) match it"
        f" ({list(attributes)})"
    )


def pairwise_accuracy(gates: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """Per pair: 1.0 when ``s_c > s_r`` strictly (``rewards`` ``[N, 2, K]``)."""
    g = gates.astype(np.float64)
    s_c = (g * rewards[:, 0]).sum(axis=-1)
    s_r = (g * rewards[:, 1]).sum(axis=-1)
    return (s_c > s_r).astype(np.float64)


def evaluate(
    gates: np.ndarray,
    rewards: np.ndarray,
    domains: Sequence[str],
    attributes: Sequence[str],
) -> dict:
    """Strict pairwise accuracy of the gates, the uniform gate, each attribute.

    Ties score 0, so the zeroed verbosity column of ``r T`` scores 0 alone.

    Args:
        gates: ``[N, K]`` gates of the pairs' prompts.
        rewards: ``[N, 2, K]`` the (transformed) rewards, 0 = chosen.
        domains: one per pair, or empty.
        attributes: the K names.
    """
    n_attr = len(attributes)
    hits = pairwise_accuracy(gates, rewards)
    uniform = pairwise_accuracy(np.full_like(gates, 1.0 / n_attr), rewards)
    single = {
        name: float(np.mean(rewards[:, 0, k] > rewards[:, 1, k]))
        for k, name in enumerate(attributes)
    }
    per_domain = {}
    if len(domains) == len(hits):
        doms = np.asarray(domains)
        for dom in sorted(set(domains)):
            mask = doms == dom
            per_domain[dom] = {
                "accuracy": float(hits[mask].mean()),
                "uniform_accuracy": float(uniform[mask].mean()),
                "n": int(mask.sum()),
                "mean_gate": dict(
                    zip(attributes, gates[mask].mean(axis=0).tolist(), strict=True)
                ),
            }
    return {
        "accuracy": float(hits.mean()),
        "uniform_accuracy": float(uniform.mean()),
        "single_attribute_accuracy": single,
        "mean_gate": dict(zip(attributes, gates.mean(axis=0).tolist(), strict=True)),
        "per_domain": per_domain,
        "n": len(hits),
    }


# ------------------------------------------------------------------ the network


@functools.cache
def network_class() -> type:
    """The torch ``GatingNetwork`` class (built on first use, importing torch)."""
    import torch
    from torch import nn

    class GatingNetwork(nn.Module):
        """Prompt embedding ``[B, D]`` -> gates ``[B, K]`` summing to logit_scale.

        ``layers`` x [Linear, ReLU, Dropout], then Linear(hidden, K); softmax
        over the attribute axis of logits / temperature, times the trainable
        scalar ``logit_scale``. Parameter names follow the original
        (``layers.<i>``, ``logit_scale`` ``[1]``).
        """

        def __init__(
            self,
            in_features: int,
            out_features: int,
            *,
            hidden_size: int = 1024,
            layers: int = 3,
            dropout: float = 0.0,
            temperature: float = 10.0,
            logit_scale: float = 1.0,
        ) -> None:
            super().__init__()
            sizes = [in_features] + [hidden_size] * layers + [out_features]
            self.layers = nn.ModuleList(
                nn.Linear(a, b) for a, b in zip(sizes, sizes[1:], strict=False)
            )
            self.dropout = nn.Dropout(dropout)
            self.temperature = float(temperature)
            self.logit_scale = nn.Parameter(torch.full((1,), float(logit_scale)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """Gates ``[B, K]`` of prompt embeddings ``x`` ``[B, D]``."""
            for layer in self.layers[:-1]:
                x = self.dropout(torch.relu(layer(x)))
            logits = self.layers[-1](x)
            # dim=-1: over the attributes; the original's dim=1 on [B, 2, K]
            # ran over chosen/rejected and made every gate uniform (issue #54)
            return torch.softmax(logits / self.temperature, dim=-1) * self.logit_scale

    GatingNetwork.__module__ = __name__
    GatingNetwork.__qualname__ = "GatingNetwork"
    return GatingNetwork


def __getattr__(name: str) -> type:
    """``GatingNetwork`` on demand, so that importing this module stays torch-free."""
    if name == "GatingNetwork":
        return network_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def gates_of(net: torch.nn.Module, x: np.ndarray, *, batch: int = 4096) -> np.ndarray:
    """Eval-mode gates ``[N, K]`` (float32 numpy) of prompt embeddings ``x``."""
    import torch

    was_training = net.training
    net.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            chunk = torch.as_tensor(np.ascontiguousarray(x[start : start + batch]))
            out.append(net(chunk.float()).numpy())
    net.train(was_training)
    n_out = net.layers[-1].out_features
    return np.concatenate(out) if out else np.zeros((0, n_out), np.float32)


def save_gating(
    path: Path | str,
    net: torch.nn.Module,
    *,
    transform: np.ndarray,
    lambdas: np.ndarray,
    meta: Mapping[str, object],
) -> None:
    """Write the gating file (module docstring) atomically.

    Args:
        path: the safetensors file.
        net: the trained network.
        transform: ``T`` ``[K, K]`` the scores use.
        lambdas: the debiasing coefficients ``[K]``.
        meta: the JSON metadata ``config`` (needs :data:`REQUIRED_META`).
    """
    import torch
    from safetensors.torch import save_file

    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"gating metadata lacks {missing}")
    tensors = {
        NET_PREFIX + name: t.detach().to(torch.float32).contiguous().clone()
        for name, t in net.state_dict().items()
    }
    tensors["transform"] = torch.as_tensor(np.asarray(transform, dtype=np.float32))
    tensors["lambdas"] = torch.as_tensor(np.asarray(lambdas, dtype=np.float32))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"config": json.dumps(dict(meta))})


def load_gating(path: Path | str) -> tuple[torch.nn.Module, np.ndarray, dict]:
    """Rebuild the gating network of a file written by :func:`save_gating`.

    Args:
        path: the safetensors file.

    Returns:
        ``(net, transform, meta)``: the network in eval mode (``net(x)`` gives
        gates ``[B, K]``), ``T`` float32 ``[K, K]`` and the metadata ``config``
        with ``lambdas`` (a list) added.

    Raises:
        GatingError: when the file is missing or lacks a tensor or key.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise GatingError(f"{path}: no such gating file")
    with safe_open(str(path), framework="pt") as fh:
        raw = (fh.metadata() or {}).get("config")
        tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    if raw is None:
        raise GatingError(f"{path}: no 'config' metadata (not a gating file?)")
    meta = json.loads(raw)
    missing = [k for k in REQUIRED_META if k not in meta]
    missing += [t for t in ("transform", "lambdas") if t not in tensors]
    if missing:
        raise GatingError(f"{path}: missing {missing}")
    net = network_class()(
        int(meta["in_features"]),
        len(meta["attributes"]),
        hidden_size=int(meta["hidden_size"]),
        layers=int(meta["layers"]),
        dropout=float(meta.get("dropout", 0.0)),
        temperature=float(meta["temperature"]),
    )
    state = {
        k.removeprefix(NET_PREFIX): t
        for k, t in tensors.items()
        if k.startswith(NET_PREFIX)
    }
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise GatingError(f"{path}: network tensors do not fit: {err}") from err
    net.eval()
    meta["lambdas"] = tensors["lambdas"].tolist()
    return net, tensors["transform"].numpy().astype(np.float32), meta
