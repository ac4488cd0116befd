"""The report's figures: readable at report size, units, legends off the data,
seeds visible as spread (eval, best-of-n, DogeRM)."""

import json
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from pipelines.report_bon import bon_figure, report_bon  # noqa: E402
from pipelines.report_dogerm import dogerm_figure  # noqa: E402
from pipelines.report_eval import eval_figure, report_eval  # noqa: E402

# What the Snakemake report shows of a figure at natural size in a 1366 x 768
# window: measured in headless Chromium, its menu takes up to 400 px while it
# lists a category with our labels, the content pane pads 12 px a side; what
# is larger is cut at the top and left.
PANE = (1366 - 400 - 24, 768 - 48)


def eval_table(trainsets, benchmarks, seeds, *, features=True):
    """A report_eval table with accuracy = (seed+1)/(seed+3), one per cell."""
    rows = []
    for t in trainsets:
        for s in seeds:
            for b in benchmarks:
                acc = (s + 1) / (s + 3)
                base = {"model_id": f"rm-{t}-seed{s}", "trainset": t, "seed": s}
                rows.append(
                    {
                        **base,
                        "benchmark": b,
                        "level": "overall",
                        "subset": "ALL",
                        "n": 16,
                        "accuracy": acc,
                    }
                )
                if features:
                    for sub, n, a in (("clean", 10, acc / 2), ("spurious", 6, 1.0)):
                        rows.append(
                            {
                                **base,
                                "benchmark": b,
                                "level": "features",
                                "subset": sub,
                                "n": n,
                                "accuracy": a,
                            }
                        )
    table = pd.DataFrame(rows)
    table["seed"] = table["seed"].astype("Int64")
    return table


def bon_table(n_seeds, ensembles, ns=(1, 2, 4, 8)):
    rows = []
    names = [(f"seed{s}", "single", 0.1 * s) for s in range(n_seeds)]
    names += [(f"ensemble_{e}", e.split("-")[0], 0.05) for e in ensembles]
    for name, agg, off in names:
        for n in ns:
            rows.append(
                {
                    "name": name,
                    "aggregate": agg,
                    "n": n,
                    "kl_bon": math.log(n) - (n - 1) / n,
                    "proxy_score": off + math.log2(n),
                    "gold_score": off + 0.1 * math.log2(n),
                    "n_prompts": 8,
                }
            )
    return pd.DataFrame(rows)


def dogerm_table(lms, weights, benches, bon_domains, ns=(1, 2, 4)):
    rows = []
    for lm in lms:
        for w in weights:
            mid = f"merged-{lm}-w{w:g}"
            for b in benches:
                rows.append(
                    {
                        "model_id": mid,
                        "lm_domain": lm,
                        "weight": w,
                        "metric": "accuracy",
                        "benchmark": b,
                        "value": 0.6 + 0.3 * w * (1 - w),
                        "n": 16,
                    }
                )
            for d in bon_domains:
                for n in ns:
                    for metric, v in (("bon", 0.2 + 0.1 * w), ("pass", 0.5)):
                        rows.append(
                            {
                                "model_id": mid,
                                "lm_domain": lm,
                                "weight": w,
                                "metric": f"{metric}@{n}",
                                "benchmark": d,
                                "value": v,
                                "n": 4,
                            }
                        )
    return pd.DataFrame(rows)


WEIGHTS21 = [round(0.05 * i, 2) for i in range(21)]


def fake_eval_json(model_id, bench, acc):
    return {
        "model_id": model_id,
        "benchmark": {"name": bench, "kind": "standard", "spec": {}},
        "n_pairs": 16,
        "accuracy": acc,
        "spurious_split": {
            "clean": {"n": 10, "n_correct": 5.0, "n_ties": 0, "accuracy": acc / 2},
            "spurious": {"n": 6, "n_correct": 6.0, "n_ties": 0, "accuracy": 1.0},
        },
        "subsets": {"s": {"n": 16, "n_correct": 8.0, "n_ties": 0, "accuracy": acc}},
        "sections": {},
        "overall": {"pooled": acc},
    }


@pytest.mark.parametrize(
    "trainsets,benchmarks,seeds",
    [
        (["general-math"], ["code-test", "general-test", "math-test"], [0, 1]),
        # the cluster preset: 2 trainsets, 5 seeds, RewardBench besides ours
        (
            ["general", "general-math"],
            ["code-test", "general-test", "math-test", "rewardbench", "rb-official"],
            [0, 1, 2, 3, 4],
        ),
    ],
)
def test_eval_png_fits_the_report_pane_and_is_not_blank(
    tmp_path, trainsets, benchmarks, seeds
):
    files = []
    for t in trainsets:
        for s in seeds:
            for b in benchmarks:
                path = tmp_path / "e" / f"{t}-{s}-{b}.json"
                path.parent.mkdir(exist_ok=True)
                path.write_text(json.dumps(fake_eval_json(f"rm-{t}-seed{s}", b, 0.7)))
                files.append(path)
    png = tmp_path / "eval.png"
    report_eval(files, tmp_path / "eval.csv", png)
    image = mpimg.imread(png)
    assert image.shape[1] <= PANE[0] and image.shape[0] <= PANE[1], image.shape
    colours = np.unique(image.reshape(-1, image.shape[-1]).round(3), axis=0)
    assert len(colours) > 50  # text, bars, markers: not one flat colour


def test_bon_png_fits_the_report_pane(tmp_path):
    files = []
    table = bon_table(
        5,
        ["mean", "wco", "uwo", "uwo-0.1", "uwo-1"],
        ns=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    )
    for name, part in table.groupby("name"):
        rows = part.drop(columns=["name", "aggregate"]).to_dict("records")
        path = tmp_path / f"{name}.json"
        path.write_text(
            json.dumps({"results": rows, "aggregate": part["aggregate"].iloc[0]})
        )
        files.append(path)
    png = tmp_path / "bon.png"
    report_bon(files, tmp_path / "bon.csv", png)
    image = mpimg.imread(png)
    assert image.shape[1] <= PANE[0] and image.shape[0] <= PANE[1], image.shape


def test_dogerm_figure_fits_the_report_pane(tmp_path):
    table = dogerm_table(
        ["math", "code"],
        WEIGHTS21,
        ["code-test", "general-test", "math-test"],
        ["math", "code"],
    )
    fig = dogerm_figure(table)
    png = tmp_path / "d.png"
    fig.savefig(png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    image = mpimg.imread(png)
    assert image.shape[1] <= PANE[0] and image.shape[0] <= PANE[1], image.shape


def _data_axes(fig):
    return [ax for ax in fig.axes if ax.lines or ax.patches]


def test_axes_say_what_they_show_and_in_which_unit():
    figs = {
        "eval": eval_figure(eval_table(["a"], ["x-test", "y-test"], [0, 1])),
        "bon": bon_figure(bon_table(2, ["mean"])),
        "bon-rm": bon_figure(bon_table(2, ["mean"]), gold="results/models/gold"),
        "dogerm": dogerm_figure(
            dogerm_table(["math"], [0.0, 0.5, 1.0], ["math-test"], ["math"])
        ),
    }
    for name, fig in figs.items():
        assert fig.get_suptitle(), name
        for ax in _data_axes(fig):
            assert ax.get_title() and ax.get_ylabel(), name
            assert "(" in ax.get_ylabel(), (name, ax.get_ylabel())  # a unit
        assert _data_axes(fig)[-1].get_xlabel(), name  # stacked panels share it
    for ax in _data_axes(figs["eval"]):
        assert "fraction of pairs" in ax.get_ylabel()
    gold, proxy = _data_axes(figs["bon"])
    assert "(nats)" in gold.get_xlabel() and "(nats)" in proxy.get_xlabel()
    assert "fraction of prompts correct" in gold.get_ylabel()
    assert "logit" in proxy.get_ylabel()
    assert "gold RM results/models/gold" in _data_axes(figs["bon-rm"])[0].get_ylabel()
    acc, picked = _data_axes(figs["dogerm"])
    assert "fraction of pairs" in acc.get_ylabel()
    assert "fraction correct" in picked.get_ylabel()
    for fig in figs.values():
        plt.close(fig)


def _data_points(fig):
    """Display coordinates of every drawn data point (line vertices, bar tops)."""
    points = []
    for ax in _data_axes(fig):
        for line in ax.lines:
            x, y = line.get_xdata(), line.get_ydata()
            if len(x) == 2 and (x[0] == x[1] or y[0] == y[1]):
                continue  # reference lines (chance, w=0) span the axes
            xy = np.column_stack([np.asarray(x, float), np.asarray(y, float)])
            points.append(ax.transData.transform(xy))
        for bar in ax.patches:
            top = (bar.get_x() + bar.get_width() / 2, bar.get_y() + bar.get_height())
            points.append(ax.transData.transform([top]))
    return np.vstack(points)


def test_legends_stay_off_the_data():
    figs = [
        eval_figure(eval_table(["a", "b"], ["x-test", "y-test", "z-test"], [0, 1, 2])),
        bon_figure(bon_table(3, ["mean", "wco", "uwo"])),
        dogerm_figure(
            dogerm_table(
                ["math", "code"], [0.0, 0.5, 1.0], ["code-test", "math-test"], ["math"]
            )
        ),
    ]
    for fig in figs:
        fig.canvas.draw()
        legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes)]
        legends = [lg for lg in legends if lg is not None]
        assert legends
        points = _data_points(fig)
        for legend in legends:
            box = legend.get_window_extent()
            for ax in _data_axes(fig):  # outside every panel, not just its points
                assert not box.overlaps(ax.get_window_extent()), fig.get_suptitle()
            inside = (
                (points[:, 0] >= box.x0)
                & (points[:, 0] <= box.x1)
                & (points[:, 1] >= box.y0)
                & (points[:, 1] <= box.y1)
            )
            assert not inside.any()
        plt.close(fig)


def test_eval_seeds_show_as_spread_around_their_mean():
    # seeds 0, 1, 2: accuracy 1/3, 1/2, 3/5 on every benchmark
    table = eval_table(["a"], ["x-test", "y-test"], [0, 1, 2], features=False)
    fig = eval_figure(table)
    (ax,) = _data_axes(fig)
    markers = [ln for ln in ax.lines if ln.get_marker() not in (None, "None", "")]
    assert len(markers) == 3 * 2  # one per seed and benchmark
    by_bench = {}
    for ln in markers:
        x, y = float(ln.get_xdata()[0]), float(ln.get_ydata()[0])
        by_bench.setdefault(round(x), []).append((x, y))
    for points in by_bench.values():
        xs, ys = zip(*points, strict=True)
        assert len(set(xs)) == 3  # side by side: equal values stay visible
        assert sorted(ys) == pytest.approx([1 / 3, 1 / 2, 3 / 5])
    heights = sorted(round(b.get_height(), 9) for b in ax.patches)
    assert heights == pytest.approx([(1 / 3 + 1 / 2 + 3 / 5) / 3] * 2)
    plt.close(fig)


def test_bon_single_seeds_are_thin_lines_with_their_mean():
    table = bon_table(3, ["mean", "uwo"])
    fig = bon_figure(table)
    gold_ax = _data_axes(fig)[0]
    lines = [ln for ln in gold_ax.lines if isinstance(ln, Line2D)]
    seeds = [ln for ln in lines if "one line per seed" in ln.get_label()]
    (mean,) = [ln for ln in lines if "mean over 3 seeds" in ln.get_label()]
    assert len(seeds) == 3
    ns = np.array([1, 2, 4, 8])
    expected = np.mean([0.1 * s + 0.1 * np.log2(ns) for s in range(3)], axis=0)
    assert mean.get_ydata() == pytest.approx(expected)
    assert mean.get_xdata() == pytest.approx(np.log(ns) - (ns - 1) / ns)
    ensembles = [ln for ln in lines if ln.get_label().startswith("ensemble")]
    assert {ln.get_label() for ln in ensembles} == {"ensemble mean", "ensemble uwo"}
    assert min(ln.get_linewidth() for ln in ensembles) > max(
        ln.get_linewidth() for ln in seeds
    )
    texts = [t.get_text() for t in gold_ax.texts]
    assert not any("coincide" in t for t in texts)  # the curves differ here
    plt.close(fig)


def test_bon_says_when_every_gold_curve_coincides():
    table = bon_table(2, ["mean", "wco"])
    table["gold_score"] = table["n"] / 20.0  # every objective picks alike
    fig = bon_figure(table)
    gold_ax = _data_axes(fig)[0]
    assert any("all 4 curves coincide" in t.get_text() for t in gold_ax.texts)
    plt.close(fig)


def test_dogerm_marks_the_plain_rm_and_the_pass_ceiling():
    table = dogerm_table(["math"], [0.0, 0.5, 1.0], ["math-test"], ["math"])
    fig = dogerm_figure(table)
    acc, picked = _data_axes(fig)
    for ax in (acc, picked):
        assert any(ln.get_label() == "plain RM (w=0)" for ln in ax.lines)
    (ceiling,) = [ln for ln in picked.lines if "pass@4 (ceiling)" in ln.get_label()]
    assert list(ceiling.get_ydata()) == [0.5, 0.5, 0.5]
    (bon,) = [ln for ln in picked.lines if ln.get_label() == "math LM, math"]
    assert list(bon.get_ydata()) == pytest.approx([0.2, 0.25, 0.3])
    assert not picked.texts
    plt.close(fig)
    # no correct candidate at all: say why the panel is flat
    table.loc[table["metric"].str.contains("@"), "value"] = 0.0
    fig = dogerm_figure(table)
    assert any(
        "pass@4 = 0 at every weight" in t.get_text() for t in _data_axes(fig)[1].texts
    )
    plt.close(fig)
