r"""Tabulate and plot the ArmoRM evaluation: gated mixture, BT RM, its attributes.

    python -m pipelines.report_armo --eval results/armo/eval.json \
        --out-csv results/report/armo.csv --out-png results/report/armo.png

``--eval`` is the JSON the ``eval_armo`` stage writes: per test domain (and
``overall``, all domains' pairs pooled) the strict pairwise accuracy
(``s_chosen > s_rejected``, ties wrong) of the gated ArmoRM, of the BT RM its
backbone was trained as (null when the backbone is none of ours), of uniform
gate weights and of each attribute's reward alone; the mean gate per attribute
on the domain's test prompts; and the verbosity debiasing (the ``lambda`` of
each attribute and the Spearman correlation of its reward with the verbosity
reward on the reference set, before and after).

``--out-csv`` has one row per domain and scorer (:data:`COLUMNS`): ``kind``
``gated``, ``bt``, ``uniform`` or ``attribute``; ``mean_gate``, ``lambda`` and
the Spearman columns only on attribute rows; ``best_attribute`` true on the
domain's attribute row of the highest accuracy. Numbers rounded to 4 decimals;
an empty cell is a value the eval did not compute.

``--out-png`` draws the accuracies per domain, the mean gates (heatmap) and the
correlations with verbosity before and after debiasing
(:func:`pipelines.common.figure_armo.armo_figure`).
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipelines.common.cli import handle_user_errors
from pipelines.common.figure_armo import armo_figure
from pipelines.common.figures import save_png
from pipelines.common.io import (
    InputFileError,
    atomic_open,
    field_path,
    read_json_object,
)
from pipelines.common.logs import setup_logging

logger = logging.getLogger(__name__)

OVERALL = "overall"
KINDS = ("gated", "bt", "uniform", "attribute")
GATED, UNIFORM = "ArmoRM (gated)", "uniform weights"
ATTRIBUTE_COLUMNS = (
    "mean_gate",
    "lambda",
    "spearman_verbosity_before",
    "spearman_verbosity_after",
)
COLUMNS = (
    "domain",
    "scorer",
    "kind",
    "accuracy",
    "n_pairs",
    *ATTRIBUTE_COLUMNS,
    "best_attribute",
)
DECIMALS = 4


def bt_label(bt_model_id: str) -> str:
    """The scorer name of the BT RM: ``BT RM (rm-general-seed0)``."""
    return f"BT RM ({bt_model_id})"


@dataclass(frozen=True)
class DomainEval:
    """One domain's numbers (NaN where the file has null)."""

    n_pairs: int
    accuracy: dict[str, float]  # gated, bt, uniform
    attributes: dict[str, float]  # attribute -> accuracy of its reward alone
    mean_gate: dict[str, float]
    scored_accuracy: float  # the same model scored end to end (eval_rm)


@dataclass(frozen=True)
class ArmoEval:
    """The parts of an ``eval_armo`` result the report reads."""

    model_id: str
    bt_model_id: str | None
    attributes: tuple[str, ...]
    train_on_debiased: bool | None
    domains: dict[str, DomainEval]  # the test domains in file order, then overall
    verbosity_attribute: str
    tau: float
    lambdas: dict[str, float]
    spearman_before: dict[str, float]
    spearman_after: dict[str, float]


class _Reader:
    """Typed look-ups in one JSON file; each error names the file and key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, where: str, problem: str) -> InputFileError:
        return InputFileError(f"{self.path}: {where}: {problem}")

    def get(self, obj: Mapping, key: str, where: str = "") -> tuple[object, str]:
        """``obj[key]`` and its field path; a missing key is an error."""
        name = field_path(where, key)
        if key not in obj:
            raise self.error(name, "missing")
        return obj[key], name

    def mapping(self, obj: Mapping, key: str, where: str = "") -> tuple[dict, str]:
        value, name = self.get(obj, key, where)
        if not isinstance(value, dict):
            raise self.error(name, f"expected a JSON object, got {value!r:.40}")
        return value, name

    def text(
        self, obj: Mapping, key: str, where: str = "", *, null: bool = False
    ) -> str | None:
        value, name = self.get(obj, key, where)
        if value is None and null:
            return None
        if not isinstance(value, str) or not value:
            raise self.error(name, f"expected a name, got {value!r:.40}")
        return value

    def number(
        self,
        obj: Mapping,
        key: str,
        where: str = "",
        *,
        lo: float = -math.inf,
        hi: float = math.inf,
    ) -> float:
        """A number in ``[lo, hi]``, or NaN for null."""
        value, name = self.get(obj, key, where)
        if value is None:
            return math.nan
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, f"expected a number or null, got {value!r:.40}")
        if not lo <= value <= hi:
            raise self.error(name, f"expected a number in [{lo}, {hi}], got {value}")
        return float(value)

    def per_attribute(
        self,
        obj: Mapping,
        key: str,
        where: str,
        attributes: tuple[str, ...],
        **bounds: float,
    ) -> dict[str, float]:
        """``{attribute: number or NaN}`` from the object ``obj[key]``."""
        values, name = self.mapping(obj, key, where)
        return {a: self.number(values, a, name, **bounds) for a in attributes}


def _read_domain(
    reader: _Reader, obj: Mapping, name: str, attributes: tuple[str, ...]
) -> DomainEval:
    """One entry of ``domains`` (or ``overall``), checked."""
    n_pairs, where = reader.get(obj, "n_pairs", name)
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or n_pairs < 0:
        raise reader.error(where, f"expected an integer >= 0, got {n_pairs!r:.40}")
    accuracy, where = reader.mapping(obj, "accuracy", name)
    acc = {
        kind: reader.number(accuracy, key, where, lo=0.0, hi=1.0)
        for kind, key in (("gated", "armo"), ("bt", "bt"), ("uniform", "uniform"))
    }
    return DomainEval(
        n_pairs=n_pairs,
        accuracy=acc,
        attributes=reader.per_attribute(
            accuracy, "attributes", where, attributes, lo=0.0, hi=1.0
        ),
        mean_gate=reader.per_attribute(obj, "mean_gate", name, attributes),
        scored_accuracy=reader.number(obj, "scored_accuracy", name, lo=0.0, hi=1.0),
    )


def _read_attributes(reader: _Reader, result: Mapping) -> tuple[str, ...]:
    value, name = reader.get(result, "attributes")
    ok = isinstance(value, list) and value and all(isinstance(a, str) for a in value)
    if not ok or len(set(value)) != len(value):
        raise reader.error(
            name, f"expected a list of distinct names, got {value!r:.60}"
        )
    return tuple(value)


def read_eval(path: Path) -> ArmoEval:
    """Read and check an ``eval_armo`` result.

    Args:
        path: the JSON file.

    Returns:
        Its numbers, nulls as NaN.

    Raises:
        MissingInputError: when ``path`` does not exist.
        InputFileError: naming the file and the key (``domains.math.accuracy.armo``)
            of the first problem: not JSON, a missing key, a mistyped value, an
            accuracy outside [0, 1], a Spearman outside [-1, 1].
    """
    path = Path(path)
    result = read_json_object(path)
    reader = _Reader(path)
    attributes = _read_attributes(reader, result)
    debiased, where = reader.get(result, "train_on_debiased")
    if debiased is not None and not isinstance(debiased, bool):
        raise reader.error(where, f"expected true, false or null, got {debiased!r:.40}")
    domains, where = reader.mapping(result, "domains")
    if not domains:
        raise reader.error(where, "no domain")
    if OVERALL in domains:
        raise reader.error(field_path(where, OVERALL), "belongs at the top level")
    parts = {name: reader.mapping(domains, name, where)[0] for name in domains}
    parts[OVERALL] = reader.mapping(result, OVERALL)[0]
    names = {name: field_path(where, name) for name in domains} | {OVERALL: OVERALL}
    verbosity, where = reader.mapping(result, "verbosity")
    rho = {"lo": -1.0, "hi": 1.0}
    return ArmoEval(
        model_id=reader.text(result, "model_id"),
        bt_model_id=reader.text(result, "bt_model_id", null=True),
        attributes=attributes,
        train_on_debiased=debiased,
        domains={
            d: _read_domain(reader, obj, names[d], attributes)
            for d, obj in parts.items()
        },
        verbosity_attribute=reader.text(verbosity, "attribute", where),
        tau=reader.number(verbosity, "tau", where, lo=0.0),
        lambdas=reader.per_attribute(verbosity, "lambdas", where, attributes),
        spearman_before=reader.per_attribute(
            verbosity, "spearman_before", where, attributes, **rho
        ),
        spearman_after=reader.per_attribute(
            verbosity, "spearman_after", where, attributes, **rho
        ),
    )


def _best_attribute(domain: DomainEval) -> str | None:
    """The attribute of the highest accuracy (the first of a tie); None if none."""
    scored = {a: acc for a, acc in domain.attributes.items() if not math.isnan(acc)}
    return max(scored, key=scored.get) if scored else None


def domain_rows(result: ArmoEval, name: str) -> list[dict]:
    """The table rows of one domain: gated, BT (if any), uniform, attributes."""
    domain = result.domains[name]
    base = {"domain": name, "n_pairs": domain.n_pairs, "best_attribute": False}
    rows = [{**base, "scorer": GATED, "kind": "gated"}]
    if result.bt_model_id is not None:
        rows.append({**base, "scorer": bt_label(result.bt_model_id), "kind": "bt"})
    rows.append({**base, "scorer": UNIFORM, "kind": "uniform"})
    for row in rows:
        row["accuracy"] = domain.accuracy[row["kind"]]
    best = _best_attribute(domain)
    for attribute in result.attributes:
        rows.append(
            {
                **base,
                "scorer": attribute,
                "kind": "attribute",
                "accuracy": domain.attributes[attribute],
                "mean_gate": domain.mean_gate[attribute],
                "lambda": result.lambdas[attribute],
                "spearman_verbosity_before": result.spearman_before[attribute],
                "spearman_verbosity_after": result.spearman_after[attribute],
                "best_attribute": attribute == best,
            }
        )
    return rows


def build_table(result: ArmoEval) -> pd.DataFrame:
    """Every domain's rows (:func:`domain_rows`), ``overall`` last.

    Returns:
        The table, columns :data:`COLUMNS`, numbers rounded to :data:`DECIMALS`.
    """
    rows = [row for name in result.domains for row in domain_rows(result, name)]
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    numbers = ["accuracy", *ATTRIBUTE_COLUMNS]
    table[numbers] = table[numbers].astype("float64").round(DECIMALS)
    return table.astype({"n_pairs": "int64", "best_attribute": "bool"})


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def log_summary(result: ArmoEval) -> None:
    """One line per domain: gated vs BT vs uniform vs the best attribute."""
    for name, domain in result.domains.items():
        best = _best_attribute(domain)
        best_acc = domain.attributes[best] if best else math.nan
        bt = ""
        if result.bt_model_id is not None:
            bt = f", {bt_label(result.bt_model_id)} {_fmt(domain.accuracy['bt'])}"
        logger.info(
            "%s (%d pairs): ArmoRM %s%s, uniform %s, best attribute %s %s",
            name,
            domain.n_pairs,
            _fmt(domain.accuracy["gated"]),
            bt,
            _fmt(domain.accuracy["uniform"]),
            best or "(none)",
            _fmt(best_acc),
        )
        gated, scored = domain.accuracy["gated"], domain.scored_accuracy
        # the same model scored end to end: should agree up to a tie or two
        if domain.n_pairs and abs(gated - scored) > 1.5 / domain.n_pairs:
            logger.warning(
                "%s: ArmoRM accuracy %s here but %s scored end to end (eval_rm)",
                name,
                _fmt(gated),
                _fmt(scored),
            )


def report_armo(eval_json: Path, out_csv: Path, out_png: Path) -> pd.DataFrame:
    """Tabulate and plot one ``eval_armo`` result.

    Args:
        eval_json: the ``eval_armo`` result (``results/armo/eval.json``).
        out_csv: the table to write (atomically).
        out_png: the figure to write (atomically).

    Returns:
        The table (:func:`build_table`).

    Raises:
        InputFileError: from :func:`read_eval`; nothing is written then.
    """
    result = read_eval(Path(eval_json))
    table = build_table(result)
    fig = armo_figure(
        table,
        model_id=result.model_id,
        verbosity_attribute=result.verbosity_attribute,
        tau=result.tau,
        train_on_debiased=result.train_on_debiased,
    )
    with atomic_open(out_csv) as fh:
        table.to_csv(fh, index=False)
    save_png(fig, Path(out_png))
    log_summary(result)
    logger.info("%s -> %d rows in %s and %s", eval_json, len(table), out_csv, out_png)
    return table


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`report_armo`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.report_armo", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--eval",
        dest="eval_json",
        type=Path,
        required=True,
        help="eval_armo result (results/armo/eval.json)",
    )
    parser.add_argument("--out-csv", type=Path, required=True, help="CSV to write")
    parser.add_argument("--out-png", type=Path, required=True, help="PNG to write")
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = make_parser().parse_args(argv)
    setup_logging()
    report_armo(args.eval_json, args.out_csv, args.out_png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
