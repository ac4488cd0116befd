r"""Collect BoN curves of single RMs and ensembles into one table and plot.

    python -m pipelines.report_bon \
        --results results/bon/seed0.json results/bon/seed1.json \
            results/bon/ensemble_mean.json results/bon/ensemble_uwo.json \
        --out-csv results/report/bon.csv --out-png results/report/bon.png

The CSV has one row per result file and draw size (the overall curve of
:func:`pipelines.bon_estimate.bon_estimate`): ``name`` (the file stem, e.g.
``seed0``, ``ensemble_uwo``), ``aggregate``, ``n``, ``kl_bon``,
``proxy_score``, ``gold_score``, ``n_prompts``. The plot has four panels: gold
and proxy score against n (log2 axis), and against KL_bon; single RMs are thin
lines, ensembles thick ones. Overoptimisation shows as a gold curve that
peaks and falls while the proxy curve keeps rising.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipelines.common.cli import handle_user_errors
from pipelines.common.io import atomic_open, atomic_path
from pipelines.common.logs import setup_logging

logger = logging.getLogger(__name__)

COLUMNS = (
    "name",
    "aggregate",
    "n",
    "kl_bon",
    "proxy_score",
    "gold_score",
    "n_prompts",
)
SINGLE = "single"
THIN, THICK = 1.0, 2.6


def bon_rows(name: str, result: dict) -> list[dict]:
    """The table rows of one BoN JSON (its overall ``results``)."""
    return [
        {
            "name": name,
            "aggregate": result["aggregate"],
            "n": row["n"],
            "kl_bon": row["kl_bon"],
            "proxy_score": row["proxy_score"],
            "gold_score": row["gold_score"],
            "n_prompts": row["n_prompts"],
        }
        for row in result["results"]
    ]


def _plot(table: pd.DataFrame, out_png: Path) -> None:
    """Gold and proxy vs n (log2) and vs KL; thin single RMs, thick ensembles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(table["name"]))  # table order: singles first
    colors = plt.get_cmap("tab10")
    fig, axes = plt.subplots(2, 2, figsize=(10.0, 7.5), sharey="col")
    panels = (
        (axes[0, 0], "n", "gold_score"),
        (axes[0, 1], "n", "proxy_score"),
        (axes[1, 0], "kl_bon", "gold_score"),
        (axes[1, 1], "kl_bon", "proxy_score"),
    )
    for k, name in enumerate(names):
        curve = table[table["name"] == name]
        single = curve["aggregate"].iloc[0] == SINGLE
        style = {
            "color": colors(k % 10),
            "lw": THIN if single else THICK,
            "alpha": 0.7 if single else 1.0,
            "marker": "." if single else "o",
            "ms": 3 if single else 4,
            "label": name,
        }
        for ax, x, y in panels:
            ax.plot(curve[x], curve[y], **style)
    for ax, x, y in panels:
        if x == "n":
            ax.set_xscale("log", base=2)
            ax.set_xlabel("n (best-of-n)")
        else:
            ax.set_xlabel("KL_bon = log n - (n-1)/n (nats)")
        ax.set_ylabel(y.replace("_", " "))
        ax.grid(True, lw=0.4, alpha=0.5)
    axes[0, 0].set_title("gold score")
    axes[0, 1].set_title("proxy score")
    axes[0, 1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle("Best-of-n: single RMs (thin) and ensembles (thick)")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(
            tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None}
        )
    plt.close(fig)


def report_bon(results: Sequence[Path], out_csv: Path, out_png: Path) -> pd.DataFrame:
    """Tabulate BoN JSONs and plot their curves.

    Args:
        results: JSON files written by :func:`pipelines.bon_estimate.bon_estimate`.
        out_csv: the table to write (atomically).
        out_png: the plot to write (atomically).

    Returns:
        The table (columns :data:`COLUMNS`): single RMs first, then ensembles,
        each by name, then ascending ``n``.

    Raises:
        ValueError: when ``results`` is empty or two files share a stem.
    """
    if not results:
        raise ValueError("no BoN result files given")
    rows: list[dict] = []
    seen: dict[str, Path] = {}
    for path in results:
        name = Path(path).stem
        if name in seen:
            raise ValueError(f"{path} and {seen[name]} share the name {name!r}")
        seen[name] = Path(path)
        with open(path, encoding="utf-8") as fh:
            rows.extend(bon_rows(name, json.load(fh)))
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    table = table.astype(
        {
            "n": "int64",
            "n_prompts": "int64",
            "kl_bon": "float64",
            "proxy_score": "float64",
            "gold_score": "float64",
        }
    )
    table["_ensemble"] = table["aggregate"] != SINGLE
    table = table.sort_values(["_ensemble", "name", "n"], kind="stable")
    table = table.drop(columns="_ensemble").reset_index(drop=True)
    with atomic_open(out_csv) as fh:
        table.to_csv(fh, index=False, float_format="%.6f")
    _plot(table, Path(out_png))
    logger.info(
        "%d BoN files -> %d rows in %s and %s",
        len(results),
        len(table),
        out_csv,
        out_png,
    )
    return table


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`report_bon`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.report_bon", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--results", nargs="+", type=Path, required=True, help="BoN JSON files"
    )
    parser.add_argument("--out-csv", type=Path, required=True, help="CSV to write")
    parser.add_argument("--out-png", type=Path, required=True, help="PNG to write")
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = make_parser().parse_args(argv)
    setup_logging()
    report_bon(args.results, args.out_csv, args.out_png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
