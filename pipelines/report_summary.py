r"""The report's opening page: what was run and each study's headline numbers.

    python -m pipelines.report_summary --config-json "$(cat used.json)" \
        --data results/data/math/train.jsonl ... \
        --models results/models/sft/general results/models/rm/math/seed0 ... \
        --evals results/eval/rm-math-seed0/math-test.json ... \
        --eval-csv results/report/eval.csv --bon-csv results/report/bon.csv \
        --dogerm-csv results/report/dogerm.csv \
        --ppo-table results/report/ppo_summary.csv \
        --out-rst results/report/summary.rst --out-csv results/report/headline.csv \
        --out-config results/report/config.yaml

Every number on the page is read or computed from result files, never typed:

* what was run: the preset and settings of the config actually used
  (``--config-json``, also written whole to ``--out-config``), the pairs per
  domain and split (lines of the data files), each model's architecture,
  parameter count (from the safetensors headers, no torch) and training
  record (its ``run_config.json``), the seeds, and the library versions
  recorded by training (``run_config.json``) and scoring (eval JSONs);
* evaluation: per RM training set and benchmark, pairwise accuracy over all,
  clean and spurious pairs as mean ± sample SD over the seeds;
* best-of-n: per objective, proxy and gold score at its largest n, against n=1
  (for the single RMs, mean ± SD over seeds);
* DogeRM: per merged LM domain and benchmark (accuracy) or gens domain
  (best-of-n gold at the largest n), the score at w=0 (the plain RM) and the
  best weight (ties to the smallest w);
* PPO: per objective, KL, proxy and gold from step 0 to the last step, gold's
  peak, whether gold falls while the proxy rises, and the ensembles' final
  gold against the single RM's (mean ± SD over seeds).

The same headline numbers go to ``--out-csv`` (one row each, full precision).
A study whose table is not given is left out.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipelines.common.cli import handle_user_errors
from pipelines.common.headline import (
    HEADLINE_COLUMNS,
    PAIR_GROUPS,
    bon_headline,
    dogerm_headline,
    eval_headline,
    ppo_headline,
)
from pipelines.common.io import atomic_open
from pipelines.common.logs import setup_logging
from pipelines.common.provenance import (
    NOT_SET,
    data_sizes,
    model_record,
    versions_table,
)
from pipelines.common.rst import (
    as_int,
    as_stats,
    fmt,
    fmt_spread,
    join,
    list_table,
    lit,
    pick,
    section,
)
from pipelines.common.summary_bon import bon_section
from pipelines.common.summary_ppo import ppo_section

logger = logging.getLogger(__name__)


def gold_phrase(gold: Mapping) -> str:
    """What the gold was, and how the gold-labelled pairs were made."""
    if gold.get("kind") == "verifier":
        return "the programmatic verifiers"
    label = gold.get("label", {})
    if gold.get("model"):
        what = f"the RM {lit(gold['model'])}"
    else:
        train = gold.get("train", {})
        what = (
            f"an RM trained here ({train.get('hidden_size')} wide,"
            f" {train.get('num_hidden_layers')} layers, on clean pairs)"
        )
    sizes = join(f"{k} {v}" for k, v in sorted(label.get("sizes", {}).items()))
    return (
        f"{what}, which also labelled {label.get('samples')} policy replies per"
        f" prompt ({sizes} prompts per domain, {label.get('labels')} labels,"
        f" noise {label.get('noise')}) for the gold-labelled RMs"
    )


def run_paragraph(config: Mapping) -> str:
    """What the config asked for, in one paragraph (values read from it)."""
    data, rm = config.get("data", {}), config.get("rm", {})
    bon, merge = config.get("bon", {}), config.get("merge", {})
    policy = config.get("models", {}).get("policy")
    sizes = join(f"{k} {v}" for k, v in sorted(data.get("sizes", {}).items()))
    parts = [
        f"Preset **{config.get('preset', NOT_SET)}**; policy"
        f" {lit(policy) if policy else 'a GPT-NeoX model trained here'}.",
        f"Domains {join(data.get('domains', []))} ({sizes} pairs asked per"
        f" domain, data seed {data.get('seed', NOT_SET)}).",
        f"Reward models trained on {join(rm.get('trainsets', []))} with seeds"
        f" {join(rm.get('seeds', []))}.",
    ]
    if bon:
        gen = bon.get("generate", {})
        parts.append(
            f"Best-of-n on {join(bon.get('domains', []))}: {gen.get('big_n')}"
            f" candidates for each of {gen.get('n_prompts')} prompts per domain,"
            f" n in {{{join(bon.get('sample_ns', []))}}}, ensembles of the"
            f" {bon.get('trainset')} RMs, gold {gold_phrase(config.get('gold', {}))}."
        )
    if merge.get("domains"):
        rm_name = (
            lit(merge["rm_model"])
            if merge.get("rm_model")
            else f"{merge.get('rm_trainset')} (seed {merge.get('rm_seed')})"
        )
        parts.append(
            f"DogeRM merges the {rm_name} RM with the"
            f" {join(merge['domains'])} LMs at LM weight w in"
            f" {{{join(merge.get('weights', []))}}}."
        )
    return " ".join(parts)


def data_table(sizes: pd.DataFrame) -> str:
    """Pairs per domain and split, and SFT examples per domain."""
    wide = sizes.pivot_table(index="domain", columns="split", values="n", aggfunc="sum")
    order = [c for c in ("train", "test", "sft") if c in wide.columns]
    order += sorted(c for c in wide.columns if c not in order)
    rows = [[d, *(as_int(wide.loc[d, c]) for c in order)] for d in wide.index]
    header = [
        "domain",
        *(f"{c} ({'examples' if c == 'sft' else 'pairs'})" for c in order),
    ]
    return list_table("Data as built (lines per file)", header, rows)


def models_table(models: Sequence[dict]) -> str:
    """One row per SFT model, per RM training set (its seeds), per merge pair."""
    groups: dict[str, list[dict]] = {}
    for rec in models:
        groups.setdefault(rec["group"], []).append(rec)
    rows = []
    for group, recs in groups.items():
        first = recs[0]
        params = sorted({r["parameters"] for r in recs if r["parameters"] is not None})
        details = list(dict.fromkeys(r["detail"] for r in recs))
        source = " + ".join(map(lit, first["source"]))
        if first["role"] == "merged":
            detail = f"LM weights {', '.join(details)} of {source}"
        else:
            detail = f"{'; '.join(details)} from {source}"
        seeds = sorted({r["seed"] for r in recs if r["seed"] is not None})
        rows.append(
            [
                first["role"],
                lit(group) + (f" ({len(recs)} models)" if len(recs) > 1 else ""),
                first["arch"] or NOT_SET,
                ", ".join(f"{p:,}" for p in params) or NOT_SET,
                detail,
                join(seeds) or NOT_SET,
            ]
        )
    header = [
        "role",
        "folder",
        "architecture",
        "parameters",
        "trained",
        "seeds",
    ]
    return list_table("Models", header, rows)


def eval_section(rows: Sequence[dict]) -> str:
    """Accuracy table and a sentence per training set."""
    keys = list(dict.fromkeys((r["group"], r["item"]) for r in rows))
    table, sentences = [], []
    for group, bench in keys:
        cells = {}
        for name, _, _ in PAIR_GROUPS:
            row = pick(rows, group=group, item=bench, quantity=f"accuracy_{name}")
            cells[name] = row
        seeds = max(r["n_seeds"] for r in cells.values() if r)
        table.append(
            [
                lit(group),
                lit(bench),
                *(fmt_spread(as_stats(cells[n])) for n, _, _ in PAIR_GROUPS),
                " / ".join(
                    str(cells[n]["n"]) if cells[n] else NOT_SET
                    for n, _, _ in PAIR_GROUPS
                ),
                seeds,
            ]
        )
    for group in dict.fromkeys(g for g, _ in keys):
        means = []
        for name, _, _ in PAIR_GROUPS:
            vals = [
                r["value"]
                for r in rows
                if r["group"] == group and r["quantity"] == f"accuracy_{name}"
            ]
            means.append(f"{name} {fmt(float(np.mean(vals)))}" if vals else None)
        sentences.append(
            f"**{group}**, averaged over benchmarks and seeds: "
            + ", ".join(m for m in means if m)
            + "."
        )
    header = [
        "RM training set",
        "benchmark",
        "all pairs",
        "clean pairs",
        "spurious pairs",
        "pairs (all / clean / spurious)",
        "seeds",
    ]
    return section(
        "Evaluation",
        [
            "Held-out pairwise accuracy (fraction of pairs where the RM scores the"
            " chosen reply above the rejected one; chance 0.5), mean ± sample SD"
            " over seeds. *Clean* pairs carry no injected spurious feature: that"
            " column is what the RM learned about the task. " + " ".join(sentences),
            list_table(
                "Pairwise accuracy per training set and benchmark", header, table
            ),
            "Figure `eval.png`_, full table `eval.csv`_.",
        ],
    )


def dogerm_section(rows: Sequence[dict]) -> str:
    """Score at w=0 and at the best weight per LM domain and benchmark."""
    table, better = [], 0
    items = list(dict.fromkeys((r["group"], r["item"]) for r in rows))
    for lm, item in items:
        get = {
            q: pick(rows, group=lm, item=item, quantity=q)["value"]
            for q in ("w0", "best_weight", "best")
        }
        gain = get["best"] - get["w0"]
        better += bool(get["best_weight"] > 0 and gain > 0)
        table.append(
            [
                lit(lm),
                lit(item),
                fmt(get["w0"]),
                f"{get['best_weight']:g}",
                fmt(get["best"]),
                fmt(gain),
            ]
        )
    header = [
        "LM domain",
        "metric and benchmark",
        "w=0 (plain RM)",
        "best w",
        "at best w",
        "gain",
    ]
    return section(
        "DogeRM",
        [
            "The general RM merged with each domain LM at LM weight w: accuracy"
            " on each test split and best-of-n gold (argmax over the first n"
            " candidates) at the largest n; the best w is the smallest among"
            f" ties. Merging beats the plain RM on {better} of {len(items)} rows.",
            list_table("DogeRM: plain RM against the best merge weight", header, table),
            "Figure `dogerm.png`_, full table `dogerm.csv`_.",
        ],
    )


def run_section(
    config: Mapping, sizes: pd.DataFrame, models: Sequence[dict], versions: list
) -> str:
    """What was run: design, data, models, library versions."""
    body = [run_paragraph(config)]
    if len(sizes):
        body.append(data_table(sizes))
    if models:
        body.append(models_table(models))
    if versions:
        body.append(list_table("Library versions", ["package", "version"], versions))
    body.append(
        "The whole configuration used (preset, workflow_config.yaml, command-line"
        " config and schema defaults, resolved): `config.yaml`_; every headline"
        " number below at full precision: `headline.csv`_."
    )
    return section("What was run", body)


def report_summary(
    *,
    config: Mapping,
    data: Sequence[Path],
    models: Sequence[Path],
    evals: Sequence[Path],
    eval_csv: Path | None,
    bon_csv: Path | None,
    dogerm_csv: Path | None,
    out_rst: Path,
    out_csv: Path,
    out_config: Path,
    ppo_table: Path | None = None,
) -> pd.DataFrame:
    """Write the opening page, its headline numbers and the config used.

    Args:
        config: the config the workflow ran with.
        data: preference-pair and SFT JSONL files (paths as in DESIGN.md).
        models: saved model folders (each with ``run_config.json``).
        evals: eval JSONs (their recorded library versions are listed).
        eval_csv: ``report_eval``'s table, or None to leave the study out.
        bon_csv: ``report_bon``'s table, or None.
        dogerm_csv: ``report_dogerm``'s table, or None.
        out_rst: the page (reStructuredText, included by report/workflow.rst).
        out_csv: the headline numbers (columns :data:`HEADLINE_COLUMNS`).
        out_config: ``config`` as YAML.
        ppo_table: ``report_ppo``'s summary table, or None.

    Returns:
        The headline table.

    Raises:
        ValueError: when a model folder has no ``run_config.json``.
    """
    sizes = data_sizes(data)
    records = [model_record(Path(m)) for m in models]
    parts = [run_section(config, sizes, records, versions_table(records, evals))]
    rows: list[dict] = []
    for path, headline, render in (
        (eval_csv, eval_headline, eval_section),
        (bon_csv, bon_headline, bon_section),
        (dogerm_csv, dogerm_headline, dogerm_section),
        (ppo_table, ppo_headline, ppo_section),
    ):
        if path is None:
            continue
        found = headline(Path(path))
        if found:
            parts.append(render(found))
            rows.extend(found)
    table = pd.DataFrame(rows, columns=list(HEADLINE_COLUMNS))
    with atomic_open(out_csv) as fh:
        table.to_csv(fh, index=False, float_format="%.6f")
    with atomic_open(out_config) as fh:
        yaml.safe_dump(dict(config), fh, sort_keys=True, allow_unicode=True)
    with atomic_open(out_rst) as fh:
        fh.write("\n\n".join(parts))
    logger.info(
        "%d data files, %d models, %d headline numbers -> %s, %s, %s",
        len(data),
        len(records),
        len(table),
        out_rst,
        out_csv,
        out_config,
    )
    return table


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`report_summary`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.report_summary", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--config-json", type=json.loads, required=True, help="the config as JSON"
    )
    for flag, what in (
        ("--data", "preference-pair and SFT JSONL files"),
        ("--models", "model folders with run_config.json"),
        ("--evals", "eval JSON files"),
    ):
        parser.add_argument(flag, nargs="*", type=Path, default=[], help=what)
    for flag in ("--eval-csv", "--bon-csv", "--dogerm-csv", "--ppo-table"):
        parser.add_argument(flag, type=Path, help="a study's report table")
    parser.add_argument("--out-rst", type=Path, required=True, help="page to write")
    parser.add_argument("--out-csv", type=Path, required=True, help="CSV to write")
    parser.add_argument(
        "--out-config", type=Path, required=True, help="config YAML to write"
    )
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = make_parser().parse_args(argv)
    setup_logging()
    report_summary(
        config=args.config_json,
        data=args.data,
        models=args.models,
        evals=args.evals,
        eval_csv=args.eval_csv,
        bon_csv=args.bon_csv,
        dogerm_csv=args.dogerm_csv,
        out_rst=args.out_rst,
        out_csv=args.out_csv,
        out_config=args.out_config,
        ppo_table=args.ppo_table,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
