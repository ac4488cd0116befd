"""The PPO section of the report's opening page, from headline rows.

States in numbers, never by hand: per objective, proxy and KL from step 0 to
the last step, gold from step 0 to its peak to the last step, whether gold
falls while the proxy rises (over-optimisation, Gao et al. 2022), where Gao
et al.'s fitted RL form peaks, and whether each ensemble ends above the single
RM (the finding of Coste et al. 2024, tlc4418/llm_optimization).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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

SINGLE = "single"


def _get(rows: Sequence[dict], objective: str, quantity: str) -> dict:
    row = pick(rows, group=objective, quantity=quantity)
    if row is None:
        return {"value": np.nan, "sd": np.nan, "n_seeds": 0}
    return row


def _value(rows: Sequence[dict], objective: str, quantity: str) -> float:
    return _get(rows, objective, quantity)["value"]


def ppo_shape(rows: Sequence[dict], objective: str) -> str:
    """Whether gold falls while the proxy rises, and where the fit peaks."""
    v = {
        q: _value(rows, objective, q)
        for q in (
            "gold_start",
            "gold_peak",
            "step_gold_peak",
            "kl_gold_peak",
            "gold",
            "proxy_start",
            "proxy",
            "kl",
            "gold_falls",
            "seeds_gold_falls",
            "fit_beta",
            "fit_peak_kl",
            "fit_r2",
        )
    }
    seeds = _get(rows, objective, "gold")["n_seeds"]
    step = pick(rows, group=objective, quantity="gold")["item"].removeprefix("step=")
    if v["gold_falls"] == 1:
        measured = (
            f"gold peaks at step {as_int(v['step_gold_peak'])} (KL"
            f" {fmt(v['kl_gold_peak'])}, gold {fmt(v['gold_peak'])}) and falls to"
            f" {fmt(v['gold'])} at step {step} while the proxy ends higher than"
            " at that step"
        )
    elif v["gold"] < v["gold_peak"]:
        measured = (
            f"gold peaks at step {as_int(v['step_gold_peak'])}"
            f" ({fmt(v['gold_peak'])}) and ends at {fmt(v['gold'])}, but the proxy"
            " falls too"
        )
    else:
        measured = f"gold is highest at the last step {step} ({fmt(v['gold'])})"
    if seeds > 1:
        measured += (
            f" (mean curve over {seeds} seeds; gold falls while the proxy rises"
            f" for {as_int(v['seeds_gold_falls'])} of {seeds} seeds' own curves)"
        )
    if v["gold_falls"] == 1:
        measured += ": over-optimisation"
    if not np.isfinite(v["fit_beta"]):
        return f"{lit(objective)}: {measured}; no fit (too few KL values above 0)."
    if not np.isfinite(v["fit_peak_kl"]):
        fitted = "the fit never turns down (beta <= 0)"
    else:
        where = "inside" if v["fit_peak_kl"] <= v["kl"] else "beyond"
        fitted = (
            f"the fit peaks at KL {fmt(v['fit_peak_kl'])}, {where} the measured"
            f" range (KL <= {fmt(v['kl'])})"
        )
    return f"{lit(objective)}: {measured}; {fitted}, R² {fmt(v['fit_r2'])}."


def ensembles_vs_single(rows: Sequence[dict], objectives: Sequence[str]) -> str:
    """Each ensemble's final gold (mean ± SD) against the single RM's."""
    if pick(rows, group=SINGLE, quantity="gold") is None:
        return ""
    single = _get(rows, SINGLE, "gold")
    parts = []
    for objective in objectives:
        if objective == SINGLE:
            continue
        gold = _get(rows, objective, "gold")
        side = "above" if gold["value"] > single["value"] else "not above"
        parts.append(f"{lit(objective)} {fmt_spread(as_stats(gold))} ({side})")
    if not parts:
        return ""
    return (
        f"Gold at the last step, each ensemble against the single RM's"
        f" {fmt_spread(as_stats(single))} (mean ± SD over"
        f" {single['n_seeds']} seeds): {'; '.join(parts)}."
    )


def _row(rows: Sequence[dict], objective: str) -> list[str]:
    get = {
        q: _get(rows, objective, q)
        for q in (
            "kl_start",
            "kl",
            "proxy_start",
            "proxy",
            "gold_start",
            "gold_peak",
            "step_gold_peak",
            "gold",
            "gold_falls",
            "seeds_gold_falls",
        )
    }
    seeds = get["gold"]["n_seeds"]
    label = lit(objective) + ("" if seeds == 1 else f" ({seeds} seeds)")
    step = pick(rows, group=objective, quantity="gold")["item"].removeprefix("step=")
    falls = "yes" if get["gold_falls"]["value"] == 1 else "no"
    if seeds > 1:
        falls += f" ({as_int(get['seeds_gold_falls']['value'])} of {seeds} seeds)"
    return [
        label,
        step,
        f"{fmt(get['kl_start']['value'])} → {fmt_spread(as_stats(get['kl']))}",
        f"{fmt(get['proxy_start']['value'])} → {fmt_spread(as_stats(get['proxy']))}",
        f"{fmt(get['gold_start']['value'])} → {fmt(get['gold_peak']['value'])}"
        f" (step {as_int(get['step_gold_peak']['value'])}) →"
        f" {fmt_spread(as_stats(get['gold']))}",
        falls,
    ]


def ppo_section(rows: Sequence[dict]) -> str:
    """The PPO section of the opening page.

    Args:
        rows: the PPO headline rows (:func:`pipelines.common.headline.ppo_headline`).

    Returns:
        The section: a table per objective (KL, proxy and gold from step 0 to
        the last step, the gold peak), a sentence per objective on whether
        gold falls while the proxy rises, and the ensembles against the
        single RM.
    """
    objectives = list(dict.fromkeys(r["group"] for r in rows))
    golds = {o: _value(rows, o, "gold") for o in objectives}
    best = max(golds.values())
    winners = [o for o, g in golds.items() if np.isclose(g, best, rtol=0, atol=1e-9)]
    sentence = (
        f"Highest gold at the last step: {fmt(best)} ({join(map(lit, winners))})."
        if len(winners) < len(golds)
        else f"Every objective ends at the same gold: {fmt(best)}."
    )
    header = [
        "objective",
        "last step",
        "KL (nats): start → end",
        "proxy: start → end",
        "gold: start → peak (step) → end",
        "gold falls while proxy rises",
    ]
    shapes = "\n".join(f"* {ppo_shape(rows, o)}" for o in objectives)
    return section(
        "PPO",
        [
            "The policy trained by PPO against each objective, evaluated on"
            " held-out prompts: KL(policy || reference) in nats per reply, proxy"
            " score (the objective's own scale: not comparable across"
            " objectives) and gold score, at step 0 (the reference policy), where"
            " gold peaks, and at the last step; values over several seeds are"
            " the mean curve's, the last step's as mean ± SD over seeds. Gold"
            " rising is real improvement; proxy rising while gold falls is"
            " over-optimisation. " + sentence,
            list_table("PPO from step 0 to the last step", header, rows_table(rows)),
            "Does gold fall while the proxy rises? Measured over the evaluations,"
            " and by the fit of Gao et al.'s RL form gold(d) - gold(0) ="
            " d (alpha - beta log d), d = sqrt(KL):",
            shapes,
            ensembles_vs_single(rows, objectives),
            "Figure `ppo.png`_, full tables `ppo.csv`_ and `ppo_summary.csv`_.",
        ],
    )


def rows_table(rows: Sequence[dict]) -> list[list[str]]:
    """The table's rows, one per objective in the headline's order."""
    return [_row(rows, o) for o in dict.fromkeys(r["group"] for r in rows)]
