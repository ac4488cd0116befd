"""The active-learning report: seed, mean and paired-difference rows, plot, errors."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.report_active import COLUMNS, main, report_active
from tests.unit.stage_probe import probe_stage

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PANE = (1366 - 400 - 24, 768 - 48)  # as tests/unit/test_report_figures.py

START = 0.60
# strategy -> seed -> accuracy at iteration 1 (100 pairs), 2 (200 pairs)
MATH = {
    "uncertainty": {0: [0.70, 0.78], 1: [0.74, 0.80]},
    "random": {0: [0.66, 0.70], 1: [0.68, 0.76], 2: [0.61]},  # seed 2: no pair
}


def eval_json(path, accuracy, n_pairs=50, **extra):
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "model_id": path.stem,
        "benchmark": {"name": "math-test", "kind": "standard"},
        "n_pairs": n_pairs,
        "accuracy": accuracy,
        "subsets": {},
        **extra,
    }
    path.write_text(json.dumps(result))
    return path


@pytest.fixture
def argv(tmp_path):
    """--start/--run flags of the hand-made study (math: 2-3 seeds; code: 1)."""
    args = ["--start", "math", str(eval_json(tmp_path / "start-math.json", START))]
    for strategy, seeds in MATH.items():
        for seed, accs in seeds.items():
            for it, acc in enumerate(accs, start=1):
                path = eval_json(tmp_path / f"math-{strategy}-{seed}-{it}.json", acc)
                args += ["--run", "math", strategy, str(seed), str(it), str(100 * it)]
                args.append(str(path))
    for strategy, acc in (("uncertainty", 0.50), ("random", 0.55)):
        path = eval_json(tmp_path / f"code-{strategy}.json", acc, n_pairs=20)
        args += ["--run", "code", strategy, "0", "1", "300", str(path)]
    return args


def outputs(tmp_path):
    return tmp_path / "report" / "active.csv", tmp_path / "report" / "active.png"


def run(argv, tmp_path):
    csv, png = outputs(tmp_path)
    assert main([*argv, "--out-csv", str(csv), "--out-png", str(png)]) == 0
    table = pd.read_csv(csv, dtype={"seed": str})
    return table, csv, png


def row(table, domain, strategy, seed, iteration):
    got = table[
        (table["domain"] == domain)
        & (table["strategy"] == strategy)
        & (table["seed"] == str(seed))
        & (table["iteration"] == iteration)
    ]
    assert len(got) == 1, (domain, strategy, seed, iteration, len(got))
    return got.iloc[0]


def test_seed_rows_start_rows_and_order(argv, tmp_path):
    table, _, _ = run(argv, tmp_path)
    assert list(table.columns) == list(COLUMNS)
    # math: seeds (2 + 3 curves) x iterations incl. 0, + means, + differences
    # code: no --start, one seed per strategy
    seeds_math = (2 * 3) + (2 * 3 + 2)  # uncertainty, random (seed 2: 0 and 1)
    means_math = 3 + 3
    diff_math = 2 * 3 + 3  # paired seeds 0, 1 at iterations 0-2, + means
    code = 2 * (1 + 1) + (1 + 1)
    assert len(table) == seeds_math + means_math + diff_math + code
    order = list(dict.fromkeys(zip(table["domain"], table["strategy"], strict=True)))
    assert order == [
        ("math", "uncertainty"),
        ("math", "random"),
        ("math", "uncertainty-random"),
        ("code", "uncertainty"),
        ("code", "random"),
        ("code", "uncertainty-random"),
    ]
    for strategy, seed in (("uncertainty", 0), ("random", 2)):
        start = row(table, "math", strategy, seed, 0)
        assert start["accuracy"] == START and start["n_labelled"] == 0
        assert start["eval_json"].endswith("start-math.json")
    r = row(table, "math", "uncertainty", 1, 2)
    assert (r["accuracy"], r["n_labelled"], r["n_seeds"]) == (0.80, 200, 1)
    assert r["n_pairs"] == 50 and r["benchmark"] == "math-test"
    assert (table.loc[table["domain"] == "code", "iteration"] > 0).all()


def test_means_std_min_max_over_seeds(argv, tmp_path):
    table, _, _ = run(argv, tmp_path)
    # by hand: uncertainty iteration 1: 0.70, 0.74
    r = row(table, "math", "uncertainty", "mean", 1)
    assert r["n_seeds"] == 2 and r["n_labelled"] == 100
    assert r["accuracy"] == pytest.approx(0.72, abs=1e-6)
    assert r["accuracy_std"] == pytest.approx(0.04 / math.sqrt(2), abs=1e-6)
    assert (r["accuracy_min"], r["accuracy_max"]) == (0.70, 0.74)
    # random iteration 1: 0.66, 0.68, 0.61 -> mean 0.65, SD (ddof 1) by numpy
    r = row(table, "math", "random", "mean", 1)
    assert r["n_seeds"] == 3 and r["accuracy"] == pytest.approx(0.65, abs=1e-6)
    want_sd = np.std([0.66, 0.68, 0.61], ddof=1)
    assert r["accuracy_std"] == pytest.approx(want_sd, abs=1e-6)
    # random iteration 2: 0.70, 0.76
    r = row(table, "math", "random", "mean", 2)
    assert r["accuracy"] == pytest.approx(0.73, abs=1e-6) and r["n_seeds"] == 2
    assert r["accuracy_std"] == pytest.approx(0.06 / math.sqrt(2), abs=1e-6)
    r = row(table, "math", "random", "mean", 0)  # the start, 3 seeds
    assert (r["accuracy"], r["accuracy_std"], r["n_seeds"]) == (START, 0.0, 3)
    r = row(table, "code", "uncertainty", "mean", 1)  # one seed: no SD
    assert r["accuracy"] == 0.50 and math.isnan(r["accuracy_std"])


def test_paired_difference_and_difference_of_means(argv, tmp_path):
    table, _, _ = run(argv, tmp_path)
    # per seed: uncertainty - random, same seed
    assert row(table, "math", "uncertainty-random", 0, 1)["accuracy"] == pytest.approx(
        0.04, abs=1e-6
    )
    assert row(table, "math", "uncertainty-random", 1, 2)["accuracy"] == pytest.approx(
        0.04, abs=1e-6
    )
    # iteration 1: paired over seeds 0, 1: 0.04, 0.06; means over all seeds:
    # 0.72 - 0.65 (random seed 2 unpaired)
    r = row(table, "math", "uncertainty-random", "mean", 1)
    assert r["n_seeds"] == 2 and r["n_labelled"] == 100
    assert r["accuracy"] == pytest.approx(0.05, abs=1e-6)
    assert r["accuracy_std"] == pytest.approx(0.02 / math.sqrt(2), abs=1e-6)
    assert (r["accuracy_min"], r["accuracy_max"]) == pytest.approx((0.04, 0.06))
    assert r["difference_of_means"] == pytest.approx(0.07, abs=1e-6)
    # iteration 2: 0.78 - 0.70 = 0.08, 0.80 - 0.76 = 0.04
    r = row(table, "math", "uncertainty-random", "mean", 2)
    assert r["accuracy"] == pytest.approx(0.06, abs=1e-6)
    assert r["accuracy_std"] == pytest.approx(0.04 / math.sqrt(2), abs=1e-6)
    assert r["difference_of_means"] == pytest.approx(0.79 - 0.73, abs=1e-6)
    r = row(table, "math", "uncertainty-random", "mean", 0)  # the shared start
    assert (r["accuracy"], r["difference_of_means"]) == (0.0, 0.0)
    r = row(table, "code", "uncertainty-random", "mean", 1)
    assert r["accuracy"] == pytest.approx(-0.05, abs=1e-6) and r["n_pairs"] == 20


def test_png_is_written_within_the_report_pane(argv, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg

    _, _, png = run(argv, tmp_path)
    assert png.read_bytes()[:8] == PNG_MAGIC
    height, width = mpimg.imread(png).shape[:2]
    assert width <= PANE[0] and height <= PANE[1], (width, height)


@pytest.mark.parametrize("key", ["accuracy", "n_pairs"])
def test_missing_key_names_the_file_and_key(argv, tmp_path, capsys, key):
    bad = Path(argv[argv.index("--run") + 6])
    result = json.loads(bad.read_text())
    del result[key]
    bad.write_text(json.dumps(result))
    csv, png = outputs(tmp_path)
    assert main([*argv, "--out-csv", str(csv), "--out-png", str(png)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"error: {bad}: {key}: missing"
    assert not csv.exists() and not png.exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda a: a + ["--run", *a[a.index("--run") + 1 : a.index("--run") + 7]],
            "both",
        ),
        (lambda a: a + ["--start", "math", a[2]], "--start math given twice"),
        (lambda a: a + ["--start", "general", a[2]], "no --run of general"),
        (lambda a: a + ["--run", "math", "random", "x", "1", "5", a[2]], "SEED"),
        (lambda a: a + ["--run", "math", "random", "3", "0", "5", a[2]], "ITER"),
        (lambda a: a + ["--run", "math", "random", "3", "1", "5", a[2]], "N_LABELLED"),
    ],
)
def test_inconsistent_arguments_are_one_line(argv, tmp_path, capsys, change, message):
    csv, png = outputs(tmp_path)
    assert main([*change(argv), "--out-csv", str(csv), "--out-png", str(png)]) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not csv.exists()


def test_report_active_function_returns_the_table(argv, tmp_path):
    runs = [argv[i + 1 : i + 7] for i, a in enumerate(argv) if a == "--run"]
    starts = [argv[i + 1 : i + 3] for i, a in enumerate(argv) if a == "--start"]
    csv, png = outputs(tmp_path)
    table = report_active(runs, starts, csv, png)
    assert len(table) == len(pd.read_csv(csv)) and png.is_file()


# python -m pipelines.report_active ARGS in a fresh interpreter; prints the exit
# code and which of the model stack ended up loaded
@pytest.mark.parametrize("mode", ["help", "real"])
def test_runs_without_the_model_stack(argv, tmp_path, mode):
    csv, png = outputs(tmp_path)
    args = ["--help"] if mode == "help" else argv
    if mode == "real":
        args = [*args, "--out-csv", str(csv), "--out-png", str(png)]
    report, stderr = probe_stage("pipelines.report_active", args)
    assert report == {"exit": 0, "loaded": []}, stderr
    if mode == "real":
        assert csv.is_file() and png.is_file()
