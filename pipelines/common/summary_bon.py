"""The best-of-n section of the report's opening page, from headline rows.

States in numbers, never by hand: each objective's proxy and gold at its
largest n, whether its gold peaks within the sampled n (measured) and where
Gao et al.'s fitted form peaks, and whether each ensemble ends above the
single RMs' mean (the seeds' finding, Coste et al. 2024).
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


def _value(rows: Sequence[dict], objective: str, quantity: str) -> float:
    row = pick(rows, group=objective, quantity=quantity)
    return np.nan if row is None else row["value"]


def bon_shape(rows: Sequence[dict], objective: str) -> str:
    """Whether an objective's gold peaks inside the measured n, in numbers.

    Measured: the gold at the largest n against the highest gold over n (a
    drop is a peak). Fitted: the KL where Gao et al.'s form peaks, against
    the largest measured KL.
    """
    gold, best = _value(rows, objective, "gold"), _value(rows, objective, "gold_best")
    n_top, n_best = _value(rows, objective, "n"), _value(rows, objective, "n_gold_best")
    kl_top = _value(rows, objective, "kl_bon")
    peak = pick(rows, group=objective, quantity="fit_peak_kl")
    seeds = pick(rows, group=objective, quantity="gold")["n_seeds"]
    if best - gold > 1e-9:
        measured = (
            f"gold is highest at n={as_int(n_best)} ({fmt(best)}) and falls to"
            f" {fmt(gold)} at n={as_int(n_top)}"
        )
    else:
        measured = f"gold is highest at the largest n={as_int(n_top)} ({fmt(gold)})"
    if seeds > 1:
        measured += " (means over seeds)"
    if peak is None or peak["n_seeds"] == 0:
        fitted = "the fit never turns down (beta <= 0)"
    else:
        where = "inside" if peak["value"] <= kl_top else "beyond"
        some = "" if peak["n_seeds"] == seeds else f" for {peak['n_seeds']} seeds"
        fitted = (
            f"the fit peaks at KL {fmt(peak['value'])}{some}, {where} the"
            f" measured range (KL <= {fmt(kl_top)})"
        )
    r2 = _value(rows, objective, "fit_r2")
    return f"{lit(objective)}: {measured}; {fitted}, R² {fmt(r2)}."


def ensembles_vs_single(rows: Sequence[dict], objectives: Sequence[str]) -> str:
    """Each ensemble's gold at the largest n against the single RMs' mean ± SD."""
    single = pick(rows, group="single RM", quantity="gold")
    if single is None:
        return ""
    parts = []
    for objective in objectives:
        if objective == "single RM":
            continue
        gold = _value(rows, objective, "gold")
        side = "above" if gold > single["value"] else "not above"
        parts.append(f"{lit(objective)} {fmt(gold)} ({side})")
    if not parts:
        return ""
    spread = fmt_spread(as_stats(single))
    return (
        f"Gold at the largest n, ensembles against the single RMs' {spread}"
        f" (mean ± SD over {single['n_seeds']} seeds): {'; '.join(parts)}."
    )


def bon_section(rows: Sequence[dict]) -> str:
    """The best-of-n section of the opening page.

    Proxy and gold at the largest n per objective, against gold at n=1, then
    whether gold peaks (measured and fitted) and how the ensembles end.
    """
    table = []
    objectives = list(dict.fromkeys(r["group"] for r in rows))
    for objective in objectives:
        get = {
            q: pick(rows, group=objective, quantity=q)
            for q in ("n", "kl_bon", "proxy", "gold", "gold_n1", "fit_peak_kl")
        }
        seeds = get["gold"]["n_seeds"]
        label = lit(objective) + ("" if seeds == 1 else f" ({seeds} seeds)")
        table.append(
            [
                label,
                as_int(get["n"]["max"]),
                fmt(get["kl_bon"]["value"]),
                fmt_spread(as_stats(get["proxy"])),
                fmt_spread(as_stats(get["gold"])),
                fmt_spread(as_stats(get["gold_n1"])),
                fmt_spread(as_stats(get["fit_peak_kl"])),
            ]
        )
    golds = {o: _value(rows, o, "gold") for o in objectives}
    best = max(golds.values())
    winners = [o for o, g in golds.items() if np.isclose(g, best, rtol=0, atol=1e-9)]
    sentence = (
        f"Highest gold at the largest n: {fmt(best)} ({join(map(lit, winners))})."
        if len(winners) < len(golds)
        else f"Every objective reaches the same gold at the largest n: {fmt(best)}."
    )
    header = [
        "objective",
        "n",
        "KL_bon (nats)",
        "proxy score",
        "gold score",
        "gold at n=1",
        "fitted peak KL",
    ]
    shapes = "\n".join(f"* {bon_shape(rows, o)}" for o in objectives)
    return section(
        "Best-of-n",
        [
            "Expected proxy and gold score of the candidate best-of-n picks"
            " (unbiased estimator over the sampled candidates, mean over prompts)"
            " at each objective's largest n; single RMs as mean ± SD over seeds."
            " Gold rising with n is real improvement; proxy rising while gold"
            " stalls or falls is over-optimisation. " + sentence,
            list_table("Best-of-n at the largest n", header, table),
            "Does gold peak? Measured over the sampled n, and by the fit of Gao"
            " et al.'s form gold(d) - gold(0) = d (alpha - beta d), d = sqrt(KL):",
            shapes,
            ensembles_vs_single(rows, objectives),
            "Figure `bon.png`_, full table `bon.csv`_.",
        ],
    )
