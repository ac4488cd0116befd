"""Each study's headline numbers, computed from its report table.

One row per number (columns :data:`HEADLINE_COLUMNS`): ``study`` (eval, bon,
dogerm, ppo), ``group`` (RM training set, best-of-n or PPO objective, merged LM
domain), ``item`` (benchmark, ``n=...``, metric and benchmark, ``step=...``),
``quantity``, the value (a mean over seeds where there are several) with its
sample SD (empty for one seed), min, max, the number of seeds and ``n`` (pairs
or prompts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

HEADLINE_COLUMNS = (
    "study",
    "group",
    "item",
    "quantity",
    "value",
    "sd",
    "min",
    "max",
    "n_seeds",
    "n",
)
# (name, level, subset) of the eval table rows summarised per benchmark
PAIR_GROUPS = (
    ("all", "overall", "ALL"),
    ("clean", "features", "clean"),
    ("spurious", "features", "spurious"),
)


def mean_sd(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample SD (ddof=1; NaN for one value), min, max and count.

    Args:
        values: the numbers (NaN and inf are left out).

    Returns:
        ``{"value", "sd", "min", "max", "k"}``, all NaN (``k`` 0) when empty.
    """
    arr = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return {"value": np.nan, "sd": np.nan, "min": np.nan, "max": np.nan, "k": 0}
    sd = float(arr.std(ddof=1)) if arr.size > 1 else np.nan
    return {
        "value": float(arr.mean()),
        "sd": sd,
        "min": float(arr.min()),
        "max": float(arr.max()),
        "k": int(arr.size),
    }


def _read_table(path: Path, text: Sequence[str]) -> pd.DataFrame:
    """A report CSV with the ``text`` columns kept as strings ("" = missing)."""
    return pd.read_csv(path, keep_default_na=False, dtype={c: str for c in text})


def eval_headline(eval_csv: Path) -> list[dict]:
    """Accuracy over all/clean/spurious pairs per trainset and benchmark.

    Args:
        eval_csv: the table of :func:`pipelines.report_eval.report_eval`.

    Returns:
        Rows ``accuracy_{all,clean,spurious}`` per training set (the model id
        for models without one) and benchmark, pooled over seeds.
    """
    table = _read_table(eval_csv, ("model_id", "trainset", "benchmark", "subset"))
    table["group"] = table["trainset"].where(table["trainset"] != "", table["model_id"])
    rows = []
    for (group, bench), cell in table.groupby(["group", "benchmark"], sort=True):
        for name, level, subset in PAIR_GROUPS:
            part = cell[(cell["level"] == level) & (cell["subset"] == subset)]
            if part.empty:
                continue
            acc = pd.to_numeric(part["accuracy"], errors="coerce")
            stats = mean_sd(acc.tolist())
            rows.append(
                {
                    "study": "eval",
                    "group": group,
                    "item": bench,
                    "quantity": f"accuracy_{name}",
                    **_stats_fields(stats),
                    "n": int(part["n"].max()),
                }
            )
    return rows


def _stats_fields(stats: Mapping[str, float]) -> dict:
    return {
        "value": stats["value"],
        "sd": stats["sd"],
        "min": stats["min"],
        "max": stats["max"],
        "n_seeds": stats["k"],
    }


def bon_headline(bon_csv: Path) -> list[dict]:
    """Proxy, gold and KL at each objective's largest n, and gold at n=1.

    Args:
        bon_csv: the table of :func:`pipelines.report_bon.report_bon`.

    Returns:
        Rows ``n``, ``kl_bon``, ``proxy``, ``gold`` (at the largest n) and
        ``gold_n1`` per objective, then where the measured gold is highest
        (``gold_best`` and its ``n_gold_best``) and the Gao fit's ``fit_r2``
        and ``fit_peak_kl`` (seeds whose fit has no peak are left out of it;
        ``n_seeds`` counts the rest); the single RMs (``aggregate ==
        "single"``) are one objective, ``single RM``, pooled over seeds.
    """
    table = _read_table(bon_csv, ("name", "aggregate"))
    for column in ("fit_r2", "fit_peak_kl"):  # empty cells: no fit / no peak
        if column not in table:
            table[column] = np.nan
        table[column] = pd.to_numeric(table[column], errors="coerce")
    table["objective"] = table["name"].where(
        table["aggregate"] != "single", "single RM"
    )
    rows = []
    for objective in dict.fromkeys(table["objective"]):
        part = table[table["objective"] == objective]
        top = part.loc[part.groupby("name")["n"].idxmax()]
        first = part[part["n"] == part["n"].min()]
        best = part.loc[part.groupby("name")["gold_score"].idxmax()]
        quantities = (
            ("n", top["n"]),
            ("kl_bon", top["kl_bon"]),
            ("proxy", top["proxy_score"]),
            ("gold", top["gold_score"]),
            ("gold_n1", first["gold_score"]),
            ("gold_best", best["gold_score"]),
            ("n_gold_best", best["n"]),
            ("fit_r2", top["fit_r2"]),
            ("fit_peak_kl", top["fit_peak_kl"]),
        )
        for quantity, values in quantities:
            rows.append(
                {
                    "study": "bon",
                    "group": objective,
                    "item": f"n={int(top['n'].max())}",
                    "quantity": quantity,
                    **_stats_fields(mean_sd(values.astype(float).tolist())),
                    "n": int(top["n_prompts"].min()),
                }
            )
    return rows


def dogerm_headline(dogerm_csv: Path) -> list[dict]:
    """Per LM domain and benchmark: score at w=0 and at the best weight.

    Accuracy on each benchmark and best-of-n gold at the largest n per gens
    domain; the best weight is the smallest among ties.

    Args:
        dogerm_csv: the table of :func:`pipelines.report_dogerm.report_dogerm`.

    Returns:
        Rows ``w0`` (NaN without a w=0 model), ``best_weight`` and ``best``
        per LM domain and ``{metric} {benchmark}``.
    """
    table = _read_table(dogerm_csv, ("model_id", "lm_domain", "metric", "benchmark"))
    bon = table[table["metric"].str.startswith("bon@")]
    metrics = ["accuracy"]
    if len(bon):
        metrics.append(f"bon@{bon['metric'].str.split('@').str[1].astype(int).max()}")
    rows = []
    for metric in metrics:
        part = table[table["metric"] == metric]
        for (lm, bench), line in part.groupby(["lm_domain", "benchmark"], sort=True):
            line = line.sort_values("weight", kind="stable")
            base = line[line["weight"] == 0.0]["value"]
            best = line.loc[line["value"].idxmax()]  # first max: smallest weight
            common = {"study": "dogerm", "group": lm, "item": f"{metric} {bench}"}
            for quantity, value in (
                ("w0", float(base.iloc[0]) if len(base) else np.nan),
                ("best_weight", float(best["weight"])),
                ("best", float(best["value"])),
            ):
                rows.append(
                    {
                        **common,
                        "quantity": quantity,
                        **_stats_fields(mean_sd([value])),
                        "n": int(best["n"]),
                    }
                )
    return rows


# PPO quantities: (headline name, ppo_summary column) pooled over the seeds'
# own curves, then those read off the mean curve (the peak of a mean is not the
# mean of the seeds' peaks)
PPO_OVER_SEEDS = (
    ("kl_start", "kl_start"),
    ("kl", "kl_final"),
    ("proxy_start", "proxy_start"),
    ("proxy", "proxy_final"),
    ("proxy_rise", "proxy_rise"),
    ("gold_start", "gold_start"),
    ("gold", "gold_final"),
    ("gold_change", "gold_change"),
)
PPO_OF_MEAN = (
    ("gold_peak", "gold_peak"),
    ("step_gold_peak", "step_gold_peak"),
    ("kl_gold_peak", "kl_gold_peak"),
    ("gold_falls", "gold_falls_while_proxy_rises"),
    ("fit_beta", "fit_beta"),
    ("fit_r2", "fit_r2"),
    ("fit_peak_kl", "fit_peak_kl"),
)


def ppo_headline(ppo_table: Path) -> list[dict]:
    """Start, peak and end of each PPO objective's curve.

    Args:
        ppo_table: the summary of :func:`pipelines.report_ppo.report_ppo`.

    Returns:
        Per objective (item ``step=<last step>``): :data:`PPO_OVER_SEEDS` as
        mean, SD, min and max over the seeds' curves; :data:`PPO_OF_MEAN` of
        the curve of means (``sd`` empty; ``gold_falls`` 1 or 0, whether gold
        ends below its peak while the proxy ends above its value there); and
        ``seeds_gold_falls``, how many seeds' own curves do so.
    """
    table = _read_table(ppo_table, ("objective", "seed"))
    falls = table.pop("gold_falls_while_proxy_rises").astype(str).str.lower()
    for column in table.columns.drop(["objective", "seed"]):  # "" = NaN
        table[column] = pd.to_numeric(table[column], errors="coerce")
    table["gold_falls_while_proxy_rises"] = (falls == "true").astype(float)
    rows = []
    for objective in dict.fromkeys(table["objective"]):
        part = table[table["objective"] == objective]
        seeds, mean = part[part["seed"] != "mean"], part[part["seed"] == "mean"].iloc[0]
        common = {
            "study": "ppo",
            "group": objective,
            "item": f"step={int(mean['last_step'])}",
            "n": int(mean["n_samples"]),
        }
        for quantity, column in PPO_OVER_SEEDS:
            stats = mean_sd(seeds[column].astype(float).tolist())
            rows.append({**common, "quantity": quantity, **_stats_fields(stats)})
        for quantity, column in (
            *PPO_OF_MEAN,
            ("seeds_gold_falls", "gold_falls_while_proxy_rises"),
        ):
            value = float(
                seeds[column].sum() if quantity == "seeds_gold_falls" else mean[column]
            )
            stats = {**mean_sd([value]), "k": len(seeds)}
            rows.append({**common, "quantity": quantity, **_stats_fields(stats)})
    return rows
