r"""Tabulate and plot DogeRM merged reward models against their merge weight.

    python -m pipelines.report_dogerm \
        --evals results/eval/merged-math-w0.3/rewardbench.json ... \
        --scores results/scores/merged-math-w0.3.parquet ... \
        --gens results/bon/gens/math.jsonl results/bon/gens/code.jsonl \
        --out-csv results/report/dogerm.csv --out-png results/report/dogerm.png

Merged models are named ``merged-{lm_domain}-w{weight}``, the weight being the
share of the domain LM in the merge (``w0`` is the plain general RM). Other
model ids are skipped with a warning.

The CSV has the columns :data:`COLUMNS`, one row per measurement:

* ``metric="accuracy"``: an eval JSON's overall accuracy; ``benchmark`` is the
  benchmark name, ``n`` the number of pairs.
* ``metric="bon@{n}"``: best-of-n with the merged RM as proxy (ALGORITHMS.md
  4.3): per prompt, the argmax score over the FIRST n candidates in file order
  (ties to the lowest index) is picked and its gold value read; ``value`` is the
  mean over the prompts of one gens domain (``benchmark``), ``n`` the number of
  prompts with at least n candidates (the others are left out of that draw).
* ``metric="pass@{n}"``: the best gold among the first n candidates, averaged
  the same way (for 0/1 gold: any of the first n correct). It does not depend on
  the RM and is the ceiling of ``bon@{n}``.

The plot has two panels: eval accuracy against weight (a line per lm_domain and
benchmark: colour = benchmark, marker = LM; chance dashed) and bon@max_n gold
against weight with its pass@max_n ceiling dashed (a line per lm_domain and gens
domain); the weight 0 (the plain RM) is a dotted vertical line, legends sit
below the panels. The whole sweep merges one RM seed, so it has no seed spread.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipelines.common.cli import handle_user_errors
from pipelines.common.figures import pyplot, save_png
from pipelines.common.io import atomic_open
from pipelines.common.logs import setup_logging
from pipelines.common.score_store import load_candidates, load_member_scores

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

COLUMNS = ("model_id", "lm_domain", "weight", "metric", "benchmark", "value", "n")
DEFAULT_NS = (1, 2, 4, 8, 16)
ACCURACY = "accuracy"
VERIFIER = "verifier"
MODEL_ID = re.compile(r"^merged-(?P<domain>.+)-w(?P<weight>\d+(?:\.\d+)?)$")
MARKERS = ("o", "s", "^", "D", "v", "P", "*", "<", ">", "h")


def parse_model_id(model_id: str) -> tuple[str, float] | None:
    """Split a merged model id into its LM domain and merge weight.

    Args:
        model_id: e.g. ``merged-math-w0.3``.

    Returns:
        ``(lm_domain, weight)``, e.g. ``("math", 0.3)``, or ``None`` when the id
        is not of the form ``merged-{domain}-w{weight}``.
    """
    match = MODEL_ID.match(model_id)
    if match is None:
        return None
    return match["domain"], float(match["weight"])


def first_n_bon(
    scores: np.ndarray, gold: np.ndarray, ns: Sequence[int]
) -> dict[int, tuple[float, float]]:
    """Best-of-first-n selection for one prompt.

    Args:
        scores: proxy score of each of the prompt's K candidates, in file order.
        gold: gold value of each candidate (e.g. 1.0 correct, 0.0 wrong).
        ns: draw sizes; those above K are dropped.

    Returns:
        For each kept n, ``(picked_gold, pass_at_n)``: the gold of the candidate
        with the highest score among the first n (ties to the lowest index) and
        the best gold among the first n (for 0/1 gold, whether any is correct).

    Raises:
        ValueError: when the arrays are not 1-D of one length or an n is < 1.
    """
    scores = np.asarray(scores, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.float64)
    if scores.ndim != 1 or scores.shape != gold.shape:
        raise ValueError(
            f"scores and gold must be 1-D of one length, got {scores.shape}"
            f" and {gold.shape}"
        )
    out: dict[int, tuple[float, float]] = {}
    for n in ns:
        n = int(n)
        if n < 1:
            raise ValueError(f"draw size must be >= 1, got {n}")
        if n > len(scores):
            continue
        pick = int(np.argmax(scores[:n]))  # first maximum: lowest index wins ties
        out[n] = (float(gold[pick]), float(gold[:n].max()))
    return out


def _eval_rows(evals: Sequence[Path]) -> list[dict]:
    """One accuracy row per merged-model eval JSON."""
    rows: list[dict] = []
    seen: dict[tuple[str, str], Path] = {}
    for path in evals:
        with open(path, encoding="utf-8") as fh:
            result = json.load(fh)
        model_id = str(result["model_id"])
        parsed = parse_model_id(model_id)
        if parsed is None:
            logger.warning("%s: %r is not a merged model id; skipped", path, model_id)
            continue
        bench = str(result["benchmark"]["name"])
        if (model_id, bench) in seen:
            raise ValueError(
                f"{path} and {seen[model_id, bench]} both hold {model_id} on {bench}"
            )
        seen[model_id, bench] = Path(path)
        rows.append(
            {
                "model_id": model_id,
                "lm_domain": parsed[0],
                "weight": parsed[1],
                "metric": ACCURACY,
                "benchmark": bench,
                "value": float(result["accuracy"]),
                "n": int(result["n_pairs"]),
            }
        )
    return rows


def _bon_rows(
    scores: Sequence[Path], gens: Sequence[Path], ns: Sequence[int]
) -> list[dict]:
    """bon@n and pass@n rows per merged model (parquet stem) and gens domain."""
    if not scores:
        return []
    if not gens:
        raise ValueError("score files given but no gens files")
    # the first max(ns) candidates: all that first-n best-of-n reads, and all
    # that score_model scores for a merged model (max_candidates)
    cands = load_candidates(gens, limit=max(int(n) for n in ns))
    domains = sorted(set(cands.domains))
    rows: list[dict] = []
    seen: set[str] = set()
    for path in scores:
        model_id = Path(path).stem
        parsed = parse_model_id(model_id)
        if parsed is None:
            logger.warning("%s: %r is not a merged model id; skipped", path, model_id)
            continue
        if model_id in seen:
            raise ValueError(f"two score files for {model_id}")
        seen.add(model_id)
        flat = load_member_scores(Path(path), cands, model_id)
        # per domain and n: picked golds and best golds over prompts
        picked: dict[tuple[str, int], list[float]] = {}
        best: dict[tuple[str, int], list[float]] = {}
        for p, domain in enumerate(cands.domains):
            lo, hi = cands.offsets[p], cands.offsets[p + 1]
            for n, (g, top) in first_n_bon(flat[lo:hi], cands.gold[lo:hi], ns).items():
                picked.setdefault((domain, n), []).append(g)
                best.setdefault((domain, n), []).append(top)
        for domain in domains:
            for n in sorted({int(n) for n in ns}):
                if (domain, n) not in picked:
                    continue
                for metric, values in (("bon", picked), ("pass", best)):
                    vals = values[domain, n]
                    rows.append(
                        {
                            "model_id": model_id,
                            "lm_domain": parsed[0],
                            "weight": parsed[1],
                            "metric": f"{metric}@{n}",
                            "benchmark": domain,
                            "value": float(np.mean(vals)),
                            "n": len(vals),
                        }
                    )
    return rows


def _metric_key(metric: pd.Series) -> pd.Series:
    """Sort key of a metric: accuracy, then bon@n by n, then pass@n by n."""
    kind = metric.str.split("@").str[0].map({ACCURACY: 0, "bon": 1, "pass": 2})
    draw = pd.to_numeric(metric.str.split("@").str[1], errors="coerce").fillna(0)
    return kind * 1_000_000 + draw


def _weight_lines(
    ax, part: pd.DataFrame, colors, *, ls: str = "-", tag: str = ""
) -> None:
    """One line per (LM domain, benchmark): colour by benchmark, marker by LM."""
    benches = sorted(part["benchmark"].unique())
    lms = sorted(part["lm_domain"].unique())
    for (lm, bench), line in part.groupby(["lm_domain", "benchmark"], sort=True):
        line = line.sort_values("weight", kind="stable")
        ax.plot(
            line["weight"],
            line["value"],
            color=colors(benches.index(bench) % 10),
            marker=MARKERS[lms.index(lm) % len(MARKERS)],
            ls=ls,
            lw=1.6 if ls == "-" else 1.1,
            ms=6 if ls == "-" else 4,
            label=f"{lm} LM, {bench}{tag}",
        )


def _dress(ax, title: str, ylabel: str, empty: bool) -> None:
    """Axis labels, the w=0 line, and a legend outside the data."""
    ax.axvline(0.0, color="grey", ls=":", lw=1.2, label="plain RM (w=0)")
    ax.set_title(title, fontsize=9.5)
    ax.set_xlabel("LM merge weight w (0 = plain RM, 1 = LM only)")
    ax.set_ylabel(ylabel)
    ax.grid(True, lw=0.4, alpha=0.5)
    if empty:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    # below the axes: never over the data, and the figure stays report-wide
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.21), ncol=2)


def dogerm_figure(table: pd.DataFrame, gold: str = VERIFIER) -> Figure:
    """Eval accuracy and best-of-n gold at the largest n against the weight.

    Args:
        table: the table of :func:`report_dogerm`.
        gold: what scored gold (``verifier`` or the gold RM), for the label.

    Returns:
        The figure (sized for the report, see :mod:`pipelines.common.figures`).
    """
    plt = pyplot()

    # within figures.MAX_PX at its DPI, legend below the panels
    fig, axes = plt.subplots(1, 2, figsize=(9.2, 4.3))
    colors = plt.get_cmap("tab10")
    acc = table[table["metric"] == ACCURACY]
    _weight_lines(axes[0], acc, colors)
    axes[0].axhline(0.5, color="grey", lw=0.9, ls="--", label="chance (0.5)")
    axes[0].set_ylim(0.0, 1.05)
    _dress(
        axes[0],
        "Pairwise accuracy on each test split",
        "pairwise accuracy (fraction of pairs)",
        acc.empty,
    )
    bon = table[table["metric"].str.startswith("bon@")]
    max_n = (
        int(bon["metric"].str.split("@").str[1].astype(int).max()) if len(bon) else 0
    )
    picked = bon[bon["metric"] == f"bon@{max_n}"]
    _weight_lines(axes[1], picked, colors)
    ceiling = table[table["metric"] == f"pass@{max_n}"]
    _weight_lines(axes[1], ceiling, colors, ls="--", tag=f" pass@{max_n} (ceiling)")
    if gold == VERIFIER:
        axes[1].set_ylim(-0.03, 1.03)
        ylabel = "gold of the pick\n(verifier: fraction correct)"
        if len(ceiling) and float(ceiling["value"].max()) == 0.0:
            axes[1].text(
                0.5,
                0.5,
                f"pass@{max_n} = 0 at every weight: no candidate is correct,\n"
                "so no proxy can pick one (the lines coincide at 0)",
                ha="center",
                va="center",
                fontsize=9,
                transform=axes[1].transAxes,
                bbox={"facecolor": "white", "edgecolor": "grey", "alpha": 0.9},
            )
    else:
        ylabel = f"gold of the pick\n(gold RM {gold}: logit)"
    _dress(
        axes[1],
        f"Best-of-{max_n} gold, merged RM as proxy (mean over prompts)",
        ylabel,
        picked.empty,
    )
    fig.suptitle(
        "DogeRM: one RM (a single seed: no seed spread) merged with each domain LM",
        fontsize=10.5,
    )
    fig.tight_layout()
    # room between the panels for the right panel's two-part y label, which
    # tight_layout leaves over the left panel when the legends hang below
    fig.subplots_adjust(wspace=0.32)
    return fig


def report_dogerm(
    evals: Sequence[Path],
    scores: Sequence[Path],
    gens: Sequence[Path],
    out_csv: Path,
    out_png: Path,
    *,
    ns: Sequence[int] = DEFAULT_NS,
    gold: str = VERIFIER,
) -> pd.DataFrame:
    """Tabulate eval accuracy and best-of-n gold of merged RMs and plot them.

    Args:
        evals: eval JSONs (keys ``model_id``, ``benchmark.name``, ``accuracy``,
            ``n_pairs``).
        scores: the merged models' score stores, named ``{model_id}.parquet``
            (:mod:`pipelines.common.score_store`; their candidate rows).
        gens: candidate JSONL files; every candidate is used, in file order.
        out_csv: the table to write (atomically).
        out_png: the plot to write (atomically).
        ns: BoN draw sizes.
        gold: what scored the candidates' gold (``verifier`` or the gold RM),
            for the plot's label.

    Returns:
        The table (columns :data:`COLUMNS`), sorted by lm_domain, weight,
        model_id, metric (accuracy, bon@n, pass@n; ascending n) and benchmark.

    Raises:
        ValueError: when no merged model is found, a model/benchmark pair or a
            score file repeats, scores come without gens, or a score file
            misses candidates.
    """
    rows = _eval_rows(evals) + _bon_rows(scores, gens, ns)
    if not rows:
        raise ValueError("no merged-model results among the given files")
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    table = table.astype({"weight": "float64", "value": "float64", "n": "int64"})
    table["_m"] = _metric_key(table["metric"])
    table = table.sort_values(
        ["lm_domain", "weight", "model_id", "_m", "benchmark"], kind="stable"
    )
    table = table.drop(columns="_m").reset_index(drop=True)
    with atomic_open(out_csv) as fh:
        table.to_csv(fh, index=False, float_format="%.6f")
    save_png(dogerm_figure(table, gold), Path(out_png))
    logger.info(
        "%d models -> %d rows in %s and %s",
        table["model_id"].nunique(),
        len(table),
        out_csv,
        out_png,
    )
    return table


def _parse_ns(text: str) -> tuple[int, ...]:
    """A JSON list of draw sizes (ints >= 1)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {text!r}") from err
    if (
        not isinstance(value, list)
        or not value
        or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in value
        )
    ):
        raise argparse.ArgumentTypeError(f"need a JSON list of ints >= 1: {text!r}")
    return tuple(value)


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`report_dogerm`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.report_dogerm", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--evals", nargs="*", type=Path, default=[], help="eval JSON files"
    )
    parser.add_argument(
        "--scores", nargs="*", type=Path, default=[], help="score stores"
    )
    parser.add_argument(
        "--gens", nargs="*", type=Path, default=[], help="candidate JSONL files"
    )
    parser.add_argument("--out-csv", type=Path, required=True, help="CSV to write")
    parser.add_argument("--out-png", type=Path, required=True, help="PNG to write")
    parser.add_argument(
        "--ns",
        type=_parse_ns,
        default=DEFAULT_NS,
        help="BoN draw sizes as a JSON list (default: [1,2,4,8,16])",
    )
    parser.add_argument(
        "--gold",
        default=VERIFIER,
        help="what scored gold: 'verifier' or the gold RM (for the plot's label)",
    )
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = make_parser().parse_args(argv)
    setup_logging()
    report_dogerm(
        args.evals,
        args.scores,
        args.gens,
        args.out_csv,
        args.out_png,
        ns=args.ns,
        gold=args.gold,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
