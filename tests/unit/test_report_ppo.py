"""The PPO report: curves, means over seeds, Gao RL fits, summary, plot, errors."""

import json
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from pipelines.common.cli import UserError  # noqa: E402
from pipelines.common.figure_ppo import ppo_figure  # noqa: E402
from pipelines.common.io import InputFileError  # noqa: E402
from pipelines.report_ppo import (  # noqa: E402
    COLUMNS,
    SUMMARY_COLUMNS,
    main,
    report_ppo,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PANE = (1366 - 400 - 24, 768 - 48)  # as tests/unit/test_report_figures.py

# objective -> seed -> (kl, proxy, gold) per step 0, 10, 20, 30
SINGLE = {
    0: ([0.0, 1.0, 2.0, 4.0], [1.0, 1.5, 2.0, 2.5], [0.0, 0.5, 0.7, 0.6]),
    1: ([0.0, 1.2, 2.2, 3.8], [1.2, 1.6, 2.2, 2.9], [0.2, 0.5, 0.9, 0.8]),
}
# gold exactly on Gao et al.'s RL form: offset + d (0.5 - 0.2 log d), d = sqrt(KL)
UWO_KL = [0.0, 1.0, 4.0, 9.0]


def rl_gold(kl, alpha, beta, offset):
    return [
        offset + (math.sqrt(k) * (alpha - beta * math.log(math.sqrt(k))) if k else 0)
        for k in kl
    ]


UWO = {
    0: (UWO_KL, [0.5, 1.0, 1.5, 2.0], rl_gold(UWO_KL, 0.5, 0.2, 0.1)),
    1: (UWO_KL, [0.7, 1.0, 1.5, 2.2], rl_gold(UWO_KL, 0.5, 0.2, 0.3)),
}
# one seed: gold falls after its peak, but so does the proxy
WCO = {3: ([0.0, 1.0, 2.0], [1.0, 2.0, 1.5], [0.0, 0.5, 0.3])}


def record(objective, seed, step, kl, proxy, gold, **extra):
    return {
        "objective": objective,
        "seed": seed,
        "step": step,
        "episodes": step * 8,
        "kl": kl,
        "kl_k3": kl / 2,
        "kl_original": 3 * kl,
        "kl_coef": 0.1 + step / 1000,
        "proxy": proxy,
        "members": {"gold-labelled/seed0": proxy},
        "ensemble_variance": None if objective == "single" else 0.05,
        "gold": gold,
        "gold_kind": "model:results/models/gold",
        "rollout_reward": None if step == 0 else proxy - 0.1,
        "seconds": 1.5,
        "samples": [{"prompt": "p", "response": "r", "proxy": proxy, "gold": gold}] * 3,
        **extra,
    }


def write_run(root, objective, seed, curve, steps=None):
    kl, proxy, gold = curve
    steps = steps or [10 * i for i in range(len(kl))]
    path = root / objective / f"seed{seed}" / "eval.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps(record(objective, seed, s, k, p, g))
        for s, k, p, g in zip(steps, kl, proxy, gold, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def evals(tmp_path):
    root = tmp_path / "ppo"
    files = []
    for objective, curves in (
        ("ensemble_uwo", UWO),
        ("single", SINGLE),
        ("ensemble_wco", WCO),
    ):
        for seed, curve in curves.items():
            files.append(write_run(root, objective, seed, curve))
    return files


def outputs(tmp_path, sub="report"):
    out = tmp_path / sub
    return out / "ppo.csv", out / "ppo_summary.csv", out / "ppo.png"


def test_curves_table_rows_means_and_sd(evals, tmp_path):
    csv, summary_csv, png = outputs(tmp_path)
    table, _ = report_ppo(evals, csv, summary_csv, png)
    back = pd.read_csv(csv, dtype={"seed": str})
    assert tuple(back.columns) == COLUMNS
    assert len(back) == len(table) == (4 + 4 + 4) + (3 + 3) + (4 + 4 + 4)
    curves = back[["objective", "seed"]].drop_duplicates().values.tolist()
    assert curves == [
        ["single", "0"],
        ["single", "1"],
        ["single", "mean"],
        ["ensemble_wco", "3"],
        ["ensemble_wco", "mean"],
        ["ensemble_uwo", "0"],
        ["ensemble_uwo", "1"],
        ["ensemble_uwo", "mean"],
    ]
    seed1 = back[(back["objective"] == "single") & (back["seed"] == "1")]
    assert seed1["step"].tolist() == [0, 10, 20, 30]
    assert seed1["episodes"].tolist() == [0, 80, 160, 240]
    assert seed1["kl"].tolist() == pytest.approx([0.0, 1.2, 2.2, 3.8])
    assert seed1["kl_k3"].tolist() == pytest.approx([0.0, 0.6, 1.1, 1.9])
    assert seed1["kl_original"].tolist() == pytest.approx([0.0, 3.6, 6.6, 11.4])
    assert seed1["kl_coef"].tolist() == pytest.approx([0.1, 0.11, 0.12, 0.13])
    assert seed1["ensemble_variance"].isna().all()  # null: a single RM
    assert np.isnan(seed1["rollout_reward"].iloc[0])  # null at step 0
    assert seed1["rollout_reward"].iloc[1] == pytest.approx(1.5)
    assert (seed1["n_seeds"] == 1).all() and (seed1["n_samples"] == 3).all()
    assert seed1["gold_sd"].isna().all()
    mean = back[(back["objective"] == "single") & (back["seed"] == "mean")]
    # hand-worked means of seeds 0 and 1, and sample SDs (ddof 1)
    assert mean["kl"].tolist() == pytest.approx([0.0, 1.1, 2.1, 3.9])
    assert mean["proxy"].tolist() == pytest.approx([1.1, 1.55, 2.1, 2.7])
    assert mean["gold"].tolist() == pytest.approx([0.1, 0.5, 0.8, 0.7])
    assert mean["gold_sd"].tolist() == pytest.approx(
        [0.2 / 2**0.5, 0.0, 0.2 / 2**0.5, 0.2 / 2**0.5], abs=1e-6
    )
    assert mean["kl_sd"].tolist() == pytest.approx(
        [0.0, 0.2 / 2**0.5, 0.2 / 2**0.5, 0.2 / 2**0.5], abs=1e-6
    )
    assert (mean["n_seeds"] == 2).all() and mean["ensemble_variance"].isna().all()
    uwo = back[(back["objective"] == "ensemble_uwo") & (back["seed"] == "mean")]
    assert uwo["ensemble_variance"].tolist() == pytest.approx([0.05] * 4)
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in csv.parent.iterdir()) == [
        "ppo.csv",
        "ppo.png",
        "ppo_summary.csv",
    ]


def test_each_curve_carries_its_gao_rl_fit(evals, tmp_path):
    csv, summary_csv, png = outputs(tmp_path)
    report_ppo(evals, csv, summary_csv, png)
    back = pd.read_csv(csv, dtype={"seed": str})
    # exact RL-form points: alpha, beta back; peak at d* = e^(0.5/0.2 - 1)
    for seed in ("0", "1", "mean"):
        uwo = back[(back["objective"] == "ensemble_uwo") & (back["seed"] == seed)]
        assert uwo["fit_alpha"].unique() == pytest.approx([0.5], abs=1e-6)
        assert uwo["fit_beta"].unique() == pytest.approx([0.2], abs=1e-6)
        assert uwo["fit_r2"].unique() == pytest.approx([1.0], abs=1e-6)
        assert uwo["fit_peak_kl"].unique() == pytest.approx([math.exp(3)], rel=1e-5)
        assert uwo["fit_gold"].to_numpy() == pytest.approx(uwo["gold"], abs=1e-5)
    # noisy mean curve: numpy least squares on [d, -d log d], no intercept
    mean = back[(back["objective"] == "single") & (back["seed"] == "mean")]
    d = np.sqrt([0.0, 1.1, 2.1, 3.9])
    design = np.column_stack([d, -np.array([x * np.log(x) if x else 0 for x in d])])
    y = np.array([0.1, 0.5, 0.8, 0.7]) - 0.1
    (alpha, beta), *_ = np.linalg.lstsq(design, y, rcond=None)
    assert mean["fit_alpha"].iloc[0] == pytest.approx(alpha, abs=1e-5)
    assert mean["fit_beta"].iloc[0] == pytest.approx(beta, abs=1e-5)
    assert beta > 0
    assert mean["fit_peak_kl"].iloc[0] == pytest.approx(
        np.exp(2 * (alpha / beta - 1)), rel=1e-4
    )
    assert mean["fit_gold"].to_numpy() == pytest.approx(
        0.1 + design @ [alpha, beta], abs=1e-5
    )


def test_summary_start_peak_end_and_over_optimisation(evals, tmp_path):
    csv, summary_csv, png = outputs(tmp_path)
    _, summary = report_ppo(evals, csv, summary_csv, png)
    back = pd.read_csv(summary_csv, dtype={"seed": str})
    assert tuple(back.columns) == SUMMARY_COLUMNS
    assert len(back) == len(summary) == 8
    rows = {(r["objective"], r["seed"]): r for r in back.to_dict("records")}
    mean = rows["single", "mean"]
    # mean gold 0.1, 0.5, 0.8, 0.7: peaks at step 20 (KL 2.1, proxy 2.1) and
    # ends lower while the proxy ends higher (2.7)
    assert mean["n_seeds"] == 2 and mean["last_step"] == 30
    assert mean["n_samples"] == 3
    assert mean["gold_start"] == pytest.approx(0.1)
    assert mean["gold_peak"] == pytest.approx(0.8)
    assert mean["step_gold_peak"] == 20
    assert mean["kl_gold_peak"] == pytest.approx(2.1)
    assert mean["proxy_at_gold_peak"] == pytest.approx(2.1)
    assert mean["gold_final"] == pytest.approx(0.7)
    assert mean["gold_change"] == pytest.approx(0.6)
    assert mean["proxy_start"] == pytest.approx(1.1)
    assert mean["proxy_final"] == pytest.approx(2.7)
    assert mean["proxy_rise"] == pytest.approx(1.6)
    assert mean["kl_start"] == pytest.approx(0.0)
    assert mean["kl_final"] == pytest.approx(3.9)
    assert mean["gold_falls_while_proxy_rises"]
    assert rows["single", "0"]["gold_falls_while_proxy_rises"]
    assert rows["single", "0"]["gold_peak"] == pytest.approx(0.7)
    # the RL-form curves rise to the last step: the peak is the end
    uwo = rows["ensemble_uwo", "mean"]
    assert uwo["step_gold_peak"] == 30 and not uwo["gold_falls_while_proxy_rises"]
    assert uwo["gold_final"] == pytest.approx(0.2 + 3 * (0.5 - 0.2 * math.log(3)))
    # gold falls after its peak, but the proxy falls as well: not counted
    wco = rows["ensemble_wco", "3"]
    assert wco["gold_peak"] == pytest.approx(0.5) and wco["gold_final"] < 0.5
    assert not wco["gold_falls_while_proxy_rises"]
    assert rows["ensemble_wco", "mean"]["n_seeds"] == 1


def test_negative_kl_estimates_and_steps_that_differ_between_seeds(tmp_path):
    root = tmp_path / "ppo"
    files = [
        write_run(root, "single", 0, ([-0.01, 1.0, 4.0], [0, 1, 2], [0, 0.4, 0.5])),
        write_run(
            root,
            "single",
            1,
            ([0.0, 1.0, 2.0, 4.0], [0, 1, 1.5, 2], [0.2, 0.6, 0.6, 0.7]),
            steps=[0, 10, 15, 20],
        ),
    ]
    csv, summary_csv, png = outputs(tmp_path)
    table, _ = report_ppo(files, csv, summary_csv, png)
    mean = table[table["seed"] == "mean"]
    assert mean["step"].tolist() == [0, 10, 20]  # the steps both seeds have
    assert mean["kl"].tolist() == pytest.approx([-0.005, 1.0, 4.0])
    seed0 = table[table["seed"] == "0"]
    # KL -0.01 counts as 0: the fit through (0, 0), (1, 0.4), (2, 0.5) is exact
    d = np.array([0.0, 1.0, 2.0])
    design = np.column_stack([d, -np.array([0, 0, 2 * np.log(2)])])
    coef = np.linalg.solve(design[1:], [0.4, 0.5])
    assert seed0["fit_alpha"].iloc[0] == pytest.approx(coef[0])
    assert seed0["fit_beta"].iloc[0] == pytest.approx(coef[1])
    assert seed0["fit_r2"].iloc[0] == pytest.approx(1.0)


def test_png_fits_the_report_pane_with_seeds_thin_and_means_thick(evals, tmp_path):
    csv, summary_csv, png = outputs(tmp_path)
    table, _ = report_ppo(evals, csv, summary_csv, png)
    image = mpimg.imread(png)
    assert image.shape[1] <= PANE[0] and image.shape[0] <= PANE[1], image.shape
    fig = ppo_figure(table, gold="results/models/gold")
    gold_kl, proxy_kl, gold_step, proxy_step = fig.axes[:4]
    assert "(nats" in gold_kl.get_xlabel() and gold_step.get_xlabel() == "PPO step"
    assert "gold RM results/models/gold" in gold_kl.get_ylabel()
    (mean,) = [ln for ln in gold_step.lines if ln.get_label().startswith("single RM")]
    assert mean.get_label() == "single RM (mean of 2 seeds)"
    assert list(mean.get_ydata()) == pytest.approx([0.1, 0.5, 0.8, 0.7])
    thin = [ln for ln in gold_step.lines if ln.get_linewidth() < 1]
    assert len(thin) == 2 + 2  # the seeds of single and uwo; wco has one seed
    assert min(ln.get_linewidth() for ln in gold_step.lines) < mean.get_linewidth()
    dashed = [
        ln for ln in gold_kl.lines if ln.get_linestyle() == "--" and len(ln.get_xdata())
    ]
    assert len(dashed) == 3  # one fit per objective's mean curve (and a legend key)
    assert not [ln for ln in gold_step.lines if ln.get_linestyle() == "--"]
    fig.canvas.draw()
    (legend,) = fig.legends
    for ax in (gold_kl, proxy_kl, gold_step, proxy_step):
        assert not legend.get_window_extent().overlaps(ax.get_window_extent())
    plt.close(fig)


def test_png_is_deterministic(evals, tmp_path):
    first, second = outputs(tmp_path, "a"), outputs(tmp_path, "b")
    report_ppo(evals, *first)
    report_ppo(list(reversed(evals)), *second)
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()


def _edit(path, line, **change):
    lines = path.read_text().splitlines()
    rec = json.loads(lines[line - 1])
    for key, value in change.items():
        if value is KeyError:
            del rec[key]
        else:
            rec[key] = value
    lines[line - 1] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"kl": KeyError}, "line 2: kl: missing"),
        ({"samples": KeyError}, "line 2: samples: missing"),
        ({"gold": "high"}, "line 2: gold: expected a number or null, got 'high'"),
        ({"proxy": True}, "line 2: proxy: expected a number or null, got True"),
        ({"step": 1.5}, "line 2: step: expected an integer >= 0, got 1.5"),
        ({"seed": -1}, "line 2: seed: expected an integer >= 0, got -1"),
        ({"seed": 7}, "line 2: seed: 7, but line 1 has 0 \\(one run per file\\)"),
        ({"objective": "ensemble_mean"}, "line 2: objective: 'ensemble_mean', but"),
        ({"step": 30}, "line 3: step: 20 after 30 \\(steps must increase\\)"),
    ],
)
def test_bad_lines_are_named_by_file_line_and_field(evals, tmp_path, edit, match):
    path = evals[0]  # ensemble_uwo seed 0
    _edit(path, 2, **edit)
    csv, summary_csv, png = outputs(tmp_path)
    with pytest.raises(InputFileError, match=f"^{path}: {match}"):
        report_ppo(evals, csv, summary_csv, png)
    assert not csv.parent.exists()


def test_bad_files_are_named(evals, tmp_path):
    out = outputs(tmp_path)
    path = evals[0]
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "", lines[1][:-3]]) + "\n")
    with pytest.raises(InputFileError, match=f"^{path}: line 3: <json>: malformed"):
        report_ppo(evals, *out)
    path.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(InputFileError, match="line 1: step: the first evaluation"):
        report_ppo(evals, *out)
    path.write_text("\n\n")
    with pytest.raises(InputFileError, match=f"^{path}: no evaluations"):
        report_ppo(evals, *out)
    path.write_text("[1, 2]\n")
    with pytest.raises(InputFileError, match="line 1: expected a JSON object"):
        report_ppo(evals, *out)
    path.unlink()
    with pytest.raises(InputFileError, match=f"^{path}: file not found"):
        report_ppo(evals, *out)
    with pytest.raises(InputFileError, match="no PPO eval files"):
        report_ppo([], *out)
    twin = tmp_path / "copy" / "eval.jsonl"
    twin.parent.mkdir()
    twin.write_text(evals[2].read_text())  # single seed 0 again
    with pytest.raises(
        InputFileError,
        match=f"^{twin} and {evals[2]}: both hold objective 'single' seed 0$",
    ):
        report_ppo(evals[1:] + [twin], *out)
    assert not out[0].parent.exists()
    assert issubclass(InputFileError, UserError)


def test_cli(evals, tmp_path, capsys):
    csv, summary_csv, png = outputs(tmp_path)
    argv = ["--evals", *map(str, evals), "--gold", "verifier"]
    argv += ["--out-csv", str(csv), "--out-table", str(summary_csv)]
    assert main([*argv, "--out-png", str(png)]) == 0
    assert len(pd.read_csv(csv)) == 30 and len(pd.read_csv(summary_csv)) == 8
    assert png.read_bytes()[:8] == PNG_MAGIC
    _edit(evals[1], 2, kl=KeyError)
    assert main([*argv, "--out-png", str(png)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: {evals[1]}: line 2: kl: missing"
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--out-table" in capsys.readouterr().out
