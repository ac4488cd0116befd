r"""ArmoRM stage 2: debias the attribute rewards for verbosity, train the gates.

    python -m pipelines.train_gating --regression results/armo/regression.safetensors \
        --preference results/armo/emb/pref-00000-of-00002.safetensors \
            results/armo/emb/pref-00001-of-00002.safetensors \
        --reference results/armo/emb/ref-00000-of-00001.safetensors \
        --out results/armo/gating.safetensors --report results/armo/gating.json

    python -m pipelines.train_gating --regression R.safetensors \
        --preference P.safetensors --steps 500 --batch-size 256 --hidden-size 64 \
        --out gating.safetensors --report gating.json

ALGORITHMS.md section 3 ("Stage-2 math"), after RLHFlow/RLHF-Reward-Modeling
armo-rm/stage-2_train.py. Inputs: the stage-1 regression file (tensor
``weight`` float32 ``[K, D]``, metadata ``attributes``: JSON list of K names)
and pair embedding shards (:mod:`pipelines.common.armo.embeddings`, kind
``pairs``); without ``--reference`` the preference set is the debiasing
reference. Rewards are ``r = W h_last``; the verbosity penalties ``lambda``
and ``T`` come from the reference set
(:func:`pipelines.common.armo.gating.verbosity_lambdas`); the gating network
is trained on the preference train split with the Bradley-Terry loss on
``s = sum_k g_k(x) (r T)_k``, ``x`` the prompt embedding. Two spec
recommendations differ from the script: the softmax runs over the attributes
([BUG], issue #54) and, by default, training and evaluation use ``r T``
([DIFF], ``--train-on-debiased false`` uses ``r``).

Outputs: the gating file (:mod:`pipelines.common.armo.gating`, read back with
``load_gating``) and a JSON report (see :func:`train_gating`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.common.armo.embeddings import EmbeddingSet, read_shards
from pipelines.common.armo.gating import (
    DEFAULT_GRID,
    GatingError,
    debias_transform,
    evaluate,
    gates_of,
    network_class,
    resolve_attribute,
    save_gating,
    spearman_with,
    split_indices,
    verbosity_lambdas,
)
from pipelines.common.cli import (
    add_dataclass_args,
    dataclass_from_args,
    field_help,
    handle_user_errors,
)
from pipelines.common.io import write_json
from pipelines.common.logs import library_versions, log_run_header, setup_logging

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrainGatingConfig:
    """Knobs of stage 2 (YAML ``armo.debias.*`` and ``armo.gating.*``)."""

    # ---- armo.debias: armo-rm/stage-2_train.py's CLI values
    debias_attribute: str = field_help(
        "attribute to debias against: its exact name, or the one attribute"
        " named '<source>-<this>' (e.g. helpsteer-verbosity)",
        default="verbosity",
    )
    # the script's CLI default; its function's own default is 0.028
    tau: float = field_help(
        "Spearman threshold: lambda_k is the first grid value with"
        " Spearman(r_k - p r_v, r_v) <= tau (signed)",
        default=0.03,
    )
    grid: tuple[float, ...] = field_help(
        "verbosity penalties tried, strictly ascending (JSON list)",
        default=DEFAULT_GRID,
    )
    unassigned_lambda: float = field_help(
        "lambda of an attribute never under tau (1.0 in the original)",
        default=1.0,
    )
    # ---- armo.gating: the script's CLI values
    hidden_size: int = field_help("width of the gating MLP", default=1024)
    layers: int = field_help("hidden layers of the gating MLP", default=3)
    dropout: float = field_help("dropout after each hidden layer", default=0.2)
    temperature: float = field_help("softmax temperature of the gates", default=10.0)
    learning_rate: float = field_help("AdamW learning rate", default=1e-3)
    weight_decay: float = field_help("AdamW weight decay", default=0.0)
    steps: int = field_help("optimizer steps (cosine schedule length)", default=2000)
    batch_size: int = field_help(
        "pairs per step, drawn uniformly with replacement", default=1024
    )
    val_fraction: float = field_help(
        "share of preference pairs held out for validation", default=0.2
    )
    split_seed: int = field_help(
        "seed of the train/validation split (sklearn random_state)", default=0
    )
    seed: int = field_help("seed of the network init, dropout and batches", default=0)
    train_on_debiased: bool = field_help(
        "train and evaluate on debiased rewards r T (false: on r, as the script)",
        default=True,
    )
    log_every: int = field_help("steps per point of the loss curve", default=100)

    def __post_init__(self) -> None:
        """Reject values training cannot honour."""
        object.__setattr__(self, "grid", tuple(float(p) for p in self.grid))
        checks = {
            "tau": math.isfinite(self.tau),
            "unassigned_lambda": math.isfinite(self.unassigned_lambda),
            "hidden_size": self.hidden_size >= 1,
            "layers": self.layers >= 0,
            "dropout": 0 <= self.dropout < 1,
            "temperature": self.temperature > 0,
            "learning_rate": self.learning_rate > 0,
            "weight_decay": self.weight_decay >= 0,
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 1,
            "val_fraction": 0 < self.val_fraction < 1,
            "log_every": self.log_every >= 1,
            "grid": len(self.grid) >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise GatingError(
                "bad gating config: "
                + ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            )


# ------------------------------------------------------------------ inputs


def _read_regression(path: Path) -> tuple[np.ndarray, list[str]]:
    """``W`` float32 ``[K, D]`` and the attribute names of a regression file."""
    from safetensors import safe_open

    if not path.is_file():
        raise GatingError(f"{path}: no such regression file")
    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata() or {}
        if "weight" not in fh.keys():
            raise GatingError(f"{path}: no tensor 'weight'")
        weight = fh.get_tensor("weight").astype(np.float32)
    attributes = json.loads(meta.get("attributes", "null"))
    if weight.ndim != 2:
        raise GatingError(f"{path}: 'weight' must be [K, D], got {weight.shape}")
    if not isinstance(attributes, list) or len(attributes) != len(weight):
        raise GatingError(
            f"{path}: metadata 'attributes' must list {len(weight)} names,"
            f" got {attributes!r}"
        )
    bad = [
        a
        for a, row in zip(attributes, weight, strict=True)
        if not np.all(np.isfinite(row))
    ]
    if bad:
        raise GatingError(f"{path}: 'weight' holds NaN or infinite values for {bad}")
    return weight, [str(a) for a in attributes]


def _pairs(paths: Sequence[Path], dim: int, what: str) -> EmbeddingSet:
    """Read a pair set and check it fits ``W``."""
    data = read_shards(paths)
    where = f"{what} embeddings ({', '.join(str(p) for p in paths)})"
    if data.kind != "pairs" or data.prompt_embeddings is None:
        raise GatingError(f"{where}: kind {data.kind!r}, need 'pairs'")
    if len(data) == 0:
        raise GatingError(f"{where}: no pairs")
    if data.embeddings.shape[1:] != (2, dim) or data.prompt_embeddings.shape[1:] != (
        2,
        dim,
    ):
        raise GatingError(
            f"{where}: embeddings {data.embeddings.shape} and prompt embeddings"
            f" {data.prompt_embeddings.shape} do not fit [N, 2, {dim}] (the"
            " regression's hidden size)"
        )
    return data


def _rewards(data: EmbeddingSet, weight: np.ndarray, what: str) -> np.ndarray:
    """``r = W h`` ``[N, 2, K]`` float32, refusing non-finite values."""
    rewards = data.embeddings.astype(np.float32) @ weight.T
    if not np.isfinite(rewards).all():
        rows = np.flatnonzero(~np.isfinite(rewards).all(axis=(1, 2)))
        raise GatingError(
            f"{what} embeddings give non-finite rewards at pair(s)"
            f" {[data.ids[i] for i in rows[:5]]}"
        )
    return rewards


# ------------------------------------------------------------------ stages


def debias(
    reference: np.ndarray, attributes: Sequence[str], cfg: TrainGatingConfig
) -> dict:
    """Verbosity penalties, ``T`` and correlations on the reference rewards.

    Args:
        reference: ``V`` ``[M, K]``, every reference response's rewards.
        attributes: the K names.
        cfg: the stage config.

    Returns:
        ``{v, lambdas, transform, before, after}`` (arrays; ``before`` and
        ``after`` the signed Spearman with ``V_v`` of ``V`` and ``V T``).
    """
    v = resolve_attribute(attributes, cfg.debias_attribute)
    lambdas = verbosity_lambdas(
        reference,
        v,
        grid=cfg.grid,
        tau=cfg.tau,
        unassigned_lambda=cfg.unassigned_lambda,
    )
    transform = debias_transform(lambdas, v)
    verb = reference[:, v]
    before = spearman_with(reference, verb)
    after = spearman_with(reference.astype(np.float64) @ transform, verb)
    for k, name in enumerate(attributes):
        if k != v and np.isfinite(after[k]) and abs(after[k]) > cfg.tau:
            logger.warning(
                "%s: |Spearman| with %s is %.4f > tau %.4f after debiasing"
                " (lambda %.3f)",
                name,
                attributes[v],
                abs(after[k]),
                cfg.tau,
                lambdas[k],
            )
    return {
        "v": v,
        "lambdas": lambdas,
        "transform": transform,
        "before": before,
        "after": after,
    }


def fit_gating(
    x: np.ndarray, diff: np.ndarray, cfg: TrainGatingConfig
) -> tuple[object, list[dict]]:
    """Train the gates on prompt embeddings ``x`` ``[N, D]``.

    The loss is ``-log sigmoid(s_c - s_r)`` with ``s_c - s_r = g(x) . diff``,
    ``diff`` ``[N, K]`` the chosen minus rejected (transformed) rewards: both
    sides share the prompt, so one gate vector serves both (the chosen side's
    prompt embedding, as the original).

    Returns:
        The network (eval mode) and the loss curve ``[{step, loss, lr}]``
        (mean loss over the steps since the previous point).
    """
    import torch
    import torch.nn.functional as F

    from pipelines.common.seeding import seed_everything

    seed_everything(cfg.seed)
    net = network_class()(
        x.shape[1],
        diff.shape[1],
        hidden_size=cfg.hidden_size,
        layers=cfg.layers,
        dropout=cfg.dropout,
        temperature=cfg.temperature,
    )
    opt = torch.optim.AdamW(
        net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    xs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    ds = torch.from_numpy(np.ascontiguousarray(diff, dtype=np.float32))
    ones = torch.ones(cfg.batch_size)
    curve: list[dict] = []
    window: list[float] = []
    net.train()
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(0, len(xs), (cfg.batch_size,), generator=gen)
        margin = (net(xs[idx]) * ds[idx]).sum(dim=-1)
        loss = F.binary_cross_entropy_with_logits(margin, ones)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr = sched.get_last_lr()[0]
        sched.step()
        window.append(loss.item())
        if step % cfg.log_every == 0 or step == cfg.steps:
            curve.append({"step": step, "loss": float(np.mean(window)), "lr": lr})
            window = []
            logger.info(
                "step %d/%d loss %.4f lr %.2e", step, cfg.steps, curve[-1]["loss"], lr
            )
    net.eval()
    return net, curve


def _per_attribute(attributes: Sequence[str], values: np.ndarray) -> dict:
    return {a: float(x) for a, x in zip(attributes, values, strict=True)}


def train_gating(
    regression: Path,
    preference: Sequence[Path],
    out: Path,
    report: Path,
    *,
    cfg: TrainGatingConfig,
    reference: Sequence[Path] | None = None,
) -> dict:
    """Debias, train the gating network, write the gating file and a report.

    The report JSON holds ``attributes``, ``debias_attribute`` (the resolved
    name), ``lambdas``, ``spearman_before``, ``spearman_after`` and
    ``abs_spearman_after`` (``{attribute: rho}`` with the debias attribute's
    rewards, on the reference set; null for the zeroed column),
    ``above_tau_after`` (names), ``tau``; ``val`` and ``train`` (``accuracy``,
    ``uniform_accuracy``, ``single_attribute_accuracy``, ``mean_gate``,
    ``per_domain``, ``n``), ``logit_scale``, ``loss_curve``
    (``[{step, loss, lr}]``), ``n_pairs`` (``train``, ``val``, ``reference``),
    ``train_on_debiased``, ``inputs``, ``out``, ``config``, ``seconds``.

    Args:
        regression: the stage-1 regression file.
        preference: the preference set's pair shards, in order.
        out: the gating safetensors to write.
        report: the JSON report to write.
        cfg: the stage config.
        reference: the debiasing reference set's shards (default: preference).

    Returns:
        The report.

    Raises:
        GatingError: on a bad file, attribute or config.
    """
    start = time.monotonic()
    weight, attributes = _read_regression(Path(regression))
    dim = weight.shape[1]
    pref = _pairs(preference, dim, "preference")
    pref_r = _rewards(pref, weight, "preference")
    if reference:
        ref_r = _rewards(_pairs(reference, dim, "reference"), weight, "reference")
    else:
        ref_r = pref_r
    deb = debias(np.concatenate([ref_r[:, 0], ref_r[:, 1]]), attributes, cfg)
    transform = (
        deb["transform"]
        if cfg.train_on_debiased
        else np.eye(len(attributes), dtype=np.float32)
    )
    rewards = pref_r @ transform
    train, val = split_indices(
        len(pref), test_fraction=cfg.val_fraction, seed=cfg.split_seed
    )
    x = pref.prompt_embeddings[:, 0]  # chosen side's: the prompt is shared
    net, curve = fit_gating(x[train], rewards[train, 0] - rewards[train, 1], cfg)
    doms = pref.domains if len(pref.domains) == len(pref) else []
    results = {}
    for name, idx in (("train", train), ("val", val)):
        results[name] = evaluate(
            gates_of(net, x[idx]),
            rewards[idx],
            [doms[i] for i in idx] if doms else [],
            attributes,
        )
    v_name = attributes[deb["v"]]
    meta = {
        "attributes": attributes,
        "in_features": dim,
        "hidden_size": cfg.hidden_size,
        "layers": cfg.layers,
        "dropout": cfg.dropout,
        "temperature": cfg.temperature,
        "debias_attribute": v_name,
        "tau": cfg.tau,
        "train_on_debiased": cfg.train_on_debiased,
    }
    save_gating(out, net, transform=transform, lambdas=deb["lambdas"], meta=meta)
    result = {
        "attributes": attributes,
        "debias_attribute": v_name,
        "lambdas": _per_attribute(attributes, deb["lambdas"]),
        "tau": cfg.tau,
        "spearman_before": _per_attribute(attributes, deb["before"]),
        "spearman_after": _per_attribute(attributes, deb["after"]),
        "abs_spearman_after": _per_attribute(attributes, np.abs(deb["after"])),
        "above_tau_after": [
            a
            for k, a in enumerate(attributes)
            if k != deb["v"] and abs(deb["after"][k]) > cfg.tau
        ],
        "train_on_debiased": cfg.train_on_debiased,
        "val": results["val"],
        "train": results["train"],
        "logit_scale": float(net.logit_scale.detach()[0]),
        "loss_curve": curve,
        "n_pairs": {"train": len(train), "val": len(val), "reference": len(ref_r)},
        "inputs": {
            "regression": str(regression),
            "preference": [str(p) for p in preference],
            "reference": [str(p) for p in reference] if reference else None,
        },
        "out": str(out),
        "config": dataclasses.asdict(cfg),
        "seconds": round(time.monotonic() - start, 3),
    }
    write_json(report, result)
    logger.info(
        "val accuracy %.4f (uniform gate %.4f) over %d pairs -> %s",
        results["val"]["accuracy"],
        results["val"]["uniform_accuracy"],
        len(val),
        out,
    )
    return result


# ------------------------------------------------------------------ CLI


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`train_gating`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.train_gating", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--regression", type=Path, required=True, help="stage-1 regression safetensors"
    )
    parser.add_argument(
        "--preference",
        nargs="+",
        type=Path,
        required=True,
        help="preference pair embedding shards, in order",
    )
    parser.add_argument(
        "--reference",
        nargs="+",
        type=Path,
        default=None,
        help="debiasing reference pair shards (default: the preference set)",
    )
    parser.add_argument("--out", type=Path, required=True, help="gating safetensors")
    parser.add_argument("--report", type=Path, required=True, help="JSON report")
    add_dataclass_args(parser, TrainGatingConfig)
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = make_parser().parse_args(argv)
    setup_logging()
    cfg = dataclass_from_args(TrainGatingConfig, args)
    log_run_header(
        logger,
        cfg,
        regression=str(args.regression),
        preference=[str(p) for p in args.preference],
        reference=[str(p) for p in args.reference] if args.reference else None,
        out=str(args.out),
        report=str(args.report),
        device="cpu",
        versions=library_versions(("torch", "numpy", "safetensors")),
    )
    train_gating(
        args.regression,
        args.preference,
        args.out,
        args.report,
        cfg=cfg,
        reference=args.reference,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
