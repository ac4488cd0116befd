r"""ArmoRM stage 1: per-attribute ridge regression on frozen-backbone embeddings.

    python -m pipelines.fit_ridge \
        --embeddings results/armo/emb/multi-00000-of-00002.safetensors \
                     results/armo/emb/multi-00001-of-00002.safetensors \
        --out results/armo/regression.safetensors \
        --report results/armo/regression.json

    python -m pipelines.fit_ridge --embeddings E.safetensors \
        --alphas '[0.01, 1, 100]' --val-fraction 0.1 --split-seed 0 \
        --out R.safetensors --report R.json

Ports RLHFlow/RLHF-Reward-Modeling armo-rm/stage-1_train.py (ALGORITHMS.md
section 3): the shards of a ``responses`` embedding set
(:mod:`pipelines.common.armo.embeddings`) are concatenated, the rows split as
sklearn's ``train_test_split(val_fraction, random_state=split_seed)``, and
each attribute gets ``Ridge(alpha, fit_intercept=False)`` on its labelled train
rows, with the alpha of least validation MSE (:mod:`pipelines.common.armo.ridge`).

Outputs: ``--out`` (safetensors: tensor ``weight`` float32 ``[K, D]``; metadata
``attributes`` and ``alphas`` JSON lists, ``dim``) and ``--report`` (JSON, see
:func:`fit_ridge`). Torch-free.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.common.armo.embeddings import (
    EmbeddingFileError,
    EmbeddingSet,
    read_shards,
)
from pipelines.common.armo.ridge import (
    DEFAULT_ALPHAS,
    WEIGHT,
    RidgeFit,
    fit_attributes,
    train_test_indices,
)
from pipelines.common.cli import (
    UserError,
    add_dataclass_args,
    dataclass_from_args,
    field_help,
    handle_user_errors,
)
from pipelines.common.io import atomic_path, write_json
from pipelines.common.logs import log_run_header, setup_logging

logger = logging.getLogger(__name__)


class FitRidgeConfigError(UserError, ValueError):
    """A ``fit_ridge`` setting is out of range."""


@dataclass(frozen=True, kw_only=True)
class FitRidgeConfig:
    """Knobs of the ridge stage (YAML section ``armo.ridge``)."""

    # RLHFlow armo-rm/stage-1_train.py: 1e-4 ... 1e4, decades.
    alphas: tuple[float, ...] = field_help(
        "ridge penalties to try (JSON list); the least validation MSE wins,"
        " the first on ties",
        default=DEFAULT_ALPHAS,
    )
    # train_test_split(test_size=0.2, random_state=42) in stage-1_train.py.
    val_fraction: float = field_help(
        "fraction of rows held out to choose alpha", default=0.2
    )
    split_seed: int = field_help("random_state of the train/val split", default=42)

    def __post_init__(self) -> None:
        """Reject values the fit cannot honour."""
        alphas = tuple(self.alphas)
        if not alphas or any(
            isinstance(a, bool)
            or not isinstance(a, int | float)
            or not math.isfinite(a)
            or a <= 0
            for a in alphas
        ):
            raise FitRidgeConfigError(
                f"alphas must be a non-empty list of finite numbers > 0,"
                f" got {self.alphas!r}"
            )
        object.__setattr__(self, "alphas", tuple(float(a) for a in alphas))
        if not 0.0 < self.val_fraction < 1.0:
            raise FitRidgeConfigError(
                f"val_fraction must be in (0, 1), got {self.val_fraction}"
            )
        if not 0 <= self.split_seed < 2**32:  # numpy RandomState's range
            raise FitRidgeConfigError(
                f"split_seed must be in [0, 2**32), got {self.split_seed}"
            )


def fit_ridge(
    embeddings: Sequence[Path], out: Path, report: Path, *, cfg: FitRidgeConfig
) -> dict:
    """Fit the stage-1 regression ``W [K, D]`` and write it with its report.

    The report JSON (written atomically, like ``out``) holds ``attributes``
    (one object per attribute: ``name``, ``alpha`` chosen, ``val_mse``
    ``{alpha: MSE}``, ``n_train`` and ``n_val`` labelled rows), ``alphas``
    (tried), ``val_fraction``, ``split_seed``, ``rows`` (embedding rows),
    ``n_train_split`` and ``n_val_split`` (split sizes), ``dim``, ``n_groups``
    (distinct train label masks), ``backbone``, ``embedding_files``,
    ``regression`` (the weight file) and ``seconds`` (fit time).

    Args:
        embeddings: the shards of one ``responses`` embedding set, in order.
        out: the safetensors file to write.
        report: the JSON file to write.
        cfg: the stage config.

    Returns:
        The report object.

    Raises:
        EmbeddingFileError: on unreadable shards or a ``pairs`` set.
        EmptyAttributeError: if an attribute has no train or validation label.
    """
    files = [str(p) for p in embeddings]
    source = ", ".join(files)
    data = read_shards(embeddings)
    if data.kind != "responses" or data.labels is None:
        raise EmbeddingFileError(f"{source}: kind {data.kind!r}, need 'responses'")
    n_rows, dim = len(data), data.dim
    try:
        train, val = train_test_indices(
            n_rows, test_size=cfg.val_fraction, seed=cfg.split_seed
        )
    except ValueError as err:
        raise EmbeddingFileError(f"{source}: {err}") from err
    start = time.perf_counter()
    fit = fit_attributes(
        data.embeddings,
        data.labels,
        train,
        val,
        cfg.alphas,
        attributes=data.attributes,
        source=source,
    )
    seconds = time.perf_counter() - start
    _write_weight(out, fit, data.attributes)
    split = (len(train), len(val))
    result = _report(fit, data, cfg, split=split, files=files, out=out, seconds=seconds)
    write_json(report, result)
    for row in result["attributes"]:
        logger.info(
            "%s: alpha %g, val MSE %.4g (%d train, %d val)",
            row["name"],
            row["alpha"],
            row["val_mse"][repr(row["alpha"])],
            row["n_train"],
            row["n_val"],
        )
    logger.info(
        "W [%d, %d] from %d rows (%d label masks) in %.1f s -> %s",
        len(data.attributes),
        dim,
        n_rows,
        fit.n_groups,
        seconds,
        out,
    )
    return result


def _write_weight(out: Path, fit: RidgeFit, attributes: Sequence[str]) -> None:
    """Write ``W`` float32 with its metadata, atomically."""
    from safetensors.numpy import save_file

    meta = {
        "attributes": json.dumps(list(attributes)),
        "alphas": json.dumps(fit.alphas),
        "dim": str(fit.weight.shape[1]),
    }
    with atomic_path(out) as tmp:
        save_file({WEIGHT: fit.weight.astype(np.float32)}, str(tmp), metadata=meta)


def _report(
    fit: RidgeFit,
    data: EmbeddingSet,
    cfg: FitRidgeConfig,
    *,
    split: tuple[int, int],
    files: list[str],
    out: Path,
    seconds: float,
) -> dict:
    """The report object of :func:`fit_ridge`."""
    per_attribute = [
        {
            "name": name,
            "alpha": fit.alphas[k],
            "val_mse": {
                repr(a): float(m)
                for a, m in zip(cfg.alphas, fit.val_mse[k], strict=True)
            },
            "n_train": fit.n_train[k],
            "n_val": fit.n_val[k],
        }
        for k, name in enumerate(data.attributes)
    ]
    return {
        "attributes": per_attribute,
        "alphas": list(cfg.alphas),
        "val_fraction": cfg.val_fraction,
        "split_seed": cfg.split_seed,
        "rows": len(data),
        "n_train_split": split[0],
        "n_val_split": split[1],
        "dim": data.dim,
        "n_groups": fit.n_groups,
        "backbone": data.backbone,
        "embedding_files": files,
        "regression": str(out),
        "seconds": round(seconds, 3),
    }


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`fit_ridge`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.fit_ridge", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--embeddings",
        nargs="+",
        type=Path,
        required=True,
        help="the shards of one responses embedding set, in order",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="regression safetensors to write"
    )
    parser.add_argument("--report", type=Path, required=True, help="JSON to write")
    add_dataclass_args(parser, FitRidgeConfig)
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = make_parser().parse_args(argv)
    setup_logging()
    cfg = dataclass_from_args(FitRidgeConfig, args)
    log_run_header(
        logger,
        cfg,
        embeddings=[str(p) for p in args.embeddings],
        out=str(args.out),
        report=str(args.report),
    )
    fit_ridge(args.embeddings, args.out, args.report, cfg=cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
