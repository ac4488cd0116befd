"""The ArmoRM report: table rows and cells, best attribute, BT absent, plot, errors."""

import copy
import json
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from pipelines.common.cli import UserError  # noqa: E402
from pipelines.common.io import InputFileError, MissingInputError  # noqa: E402
from pipelines.report_armo import (  # noqa: E402
    COLUMNS,
    build_table,
    main,
    read_eval,
    report_armo,
)
from tests.unit.stage_probe import probe_stage

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PANE = (1366 - 400 - 24, 768 - 48)  # as tests/unit/test_report_figures.py
ATTRS = ["correctness", "verbosity", "politeness"]


def domain(n, armo, uniform, bt, accs, gates, scored):
    return {
        "n_pairs": n,
        "dropped": 0,
        "accuracy": {
            "armo": armo,
            "uniform": uniform,
            "bt": bt,
            "attributes": dict(zip(ATTRS, accs, strict=True)),
        },
        "mean_gate": dict(zip(ATTRS, gates, strict=True)),
        "scored_accuracy": scored,
    }


# Hand-picked numbers. Best attribute by hand: math -> correctness (0.9);
# code -> verbosity (correctness null, verbosity and politeness tie at 0.6: the
# first in the attribute order wins); overall -> correctness (0.71234567).
EVAL = {
    "model_id": "armo-rm-general-seed0",
    "backbone": "results/models/rm/general/seed0",
    "bt_model_id": "rm-general-seed0",
    "attributes": ATTRS,
    "train_on_debiased": True,
    "domains": {
        "math": domain(10, 0.8, 0.6, 0.7, [0.9, 0.5, 0.4], [0.5, 0.1, 0.4], 0.8),
        "code": domain(20, 0.65, 0.55, 0.75, [None, 0.6, 0.6], [0.2, 0.3, 0.5], 0.65),
    },
    "overall": domain(
        30,
        0.7,
        17 / 30,
        22 / 30,
        [0.71234567, 17 / 30, 16 / 30],
        [0.3, 0.23333333, 0.46666667],
        0.7,
    ),
    "verbosity": {
        "attribute": "verbosity",
        "tau": 0.05,
        "lambdas": {"correctness": 0.123456, "verbosity": 1.0, "politeness": 0.0},
        "spearman_before": {"correctness": 0.4, "verbosity": 1.0, "politeness": -0.2},
        "spearman_after": {"correctness": 0.04, "verbosity": None, "politeness": -0.03},
    },
}


def write(path, result):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return path


@pytest.fixture
def eval_json(tmp_path):
    return write(tmp_path / "armo" / "eval.json", EVAL)


def outputs(tmp_path, sub="report"):
    return tmp_path / sub / "armo.csv", tmp_path / sub / "armo.png"


def cell(table, domain, scorer, column):
    rows = table[(table["domain"] == domain) & (table["scorer"] == scorer)]
    assert len(rows) == 1, (domain, scorer)
    return rows[column].iloc[0]


def test_table_rows_and_cells(eval_json, tmp_path):
    csv, png = outputs(tmp_path)
    table = report_armo(eval_json, csv, png)
    back = pd.read_csv(csv)
    assert tuple(back.columns) == COLUMNS
    assert len(back) == len(table) == 3 * (3 + 3)
    assert list(dict.fromkeys(back["domain"])) == ["math", "code", "overall"]
    bt = "BT RM (rm-general-seed0)"
    math_rows = back[back["domain"] == "math"]
    assert (
        math_rows["scorer"].tolist()
        == ["ArmoRM (gated)", bt, "uniform weights"] + ATTRS
    )
    assert math_rows["kind"].tolist() == ["gated", "bt", "uniform"] + ["attribute"] * 3
    assert cell(back, "math", "ArmoRM (gated)", "accuracy") == pytest.approx(0.8)
    assert cell(back, "code", bt, "accuracy") == pytest.approx(0.75)
    assert cell(back, "code", "uniform weights", "accuracy") == pytest.approx(0.55)
    assert cell(back, "math", "politeness", "accuracy") == pytest.approx(0.4)
    assert np.isnan(cell(back, "code", "correctness", "accuracy"))  # null
    # 4 decimals: 17/30 = 0.56666.. -> 0.5667, 0.71234567 -> 0.7123
    assert cell(back, "overall", "uniform weights", "accuracy") == 0.5667
    assert cell(back, "overall", bt, "accuracy") == 0.7333
    assert cell(back, "overall", "correctness", "accuracy") == 0.7123
    assert (back.groupby("domain")["n_pairs"].unique().map(list)).to_dict() == {
        "math": [10],
        "code": [20],
        "overall": [30],
    }
    # per-attribute columns: on attribute rows only
    assert cell(back, "code", "politeness", "mean_gate") == pytest.approx(0.5)
    assert cell(back, "overall", "verbosity", "mean_gate") == 0.2333
    assert cell(back, "math", "correctness", "lambda") == 0.1235
    assert cell(back, "code", "correctness", "lambda") == 0.1235  # global: repeated
    assert cell(back, "math", "politeness", "spearman_verbosity_before") == -0.2
    assert cell(back, "math", "politeness", "spearman_verbosity_after") == -0.03
    assert np.isnan(cell(back, "math", "verbosity", "spearman_verbosity_after"))
    others = back[back["kind"] != "attribute"]
    attribute_columns = [
        "mean_gate",
        "lambda",
        "spearman_verbosity_before",
        "spearman_verbosity_after",
    ]
    assert others[attribute_columns].isna().all().all()
    best = back[back["best_attribute"]]
    assert best[["domain", "scorer"]].values.tolist() == [
        ["math", "correctness"],
        ["code", "verbosity"],
        ["overall", "correctness"],
    ]
    assert back["best_attribute"].dtype == bool
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in csv.parent.iterdir()) == ["armo.csv", "armo.png"]


def test_bt_null_gives_no_bt_rows(tmp_path):
    result = copy.deepcopy(EVAL)
    result["bt_model_id"] = None
    for part in [*result["domains"].values(), result["overall"]]:
        part["accuracy"]["bt"] = None
    path = write(tmp_path / "eval.json", result)
    csv, png = outputs(tmp_path)
    report_armo(path, csv, png)
    back = pd.read_csv(csv)
    assert len(back) == 3 * (2 + 3)
    assert "bt" not in set(back["kind"])
    assert not back["scorer"].str.startswith("BT").any()
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_all_attributes_null_marks_no_best(tmp_path):
    result = copy.deepcopy(EVAL)
    result["domains"]["math"]["accuracy"]["attributes"] = dict.fromkeys(ATTRS)
    table = build_table(read_eval(write(tmp_path / "eval.json", result)))
    math_rows = table[table["domain"] == "math"]
    assert not math_rows["best_attribute"].any()
    assert table["best_attribute"].sum() == 2


def test_png_is_a_readable_three_panel_figure(eval_json, tmp_path):
    from pipelines.common.figure_armo import armo_figure

    csv, png = outputs(tmp_path)
    table = report_armo(eval_json, csv, png)
    image = mpimg.imread(png)
    height, width = image.shape[:2]
    assert 500 <= width <= PANE[0] and 400 <= height <= PANE[1], image.shape
    colours = np.unique(image.reshape(-1, image.shape[-1]).round(3), axis=0)
    assert len(colours) > 50  # text, bars, heatmap: not one flat colour
    fig = armo_figure(
        table,
        model_id="m",
        verbosity_attribute="verbosity",
        tau=0.05,
        train_on_debiased=True,
    )
    acc, gates, rho = fig.axes[:3]
    assert [ax.get_title()[:3] for ax in (acc, gates, rho)] == ["(a)", "(b)", "(c)"]
    for ax in (acc, gates, rho):
        assert ax.get_xlabel() and ax.get_ylabel()
    # (a): bar heights are the accuracies (4 bars a domain; code's best 0.6)
    heights = sorted(round(p.get_height(), 4) for p in acc.patches)
    expected = [0.8, 0.7, 0.6, 0.9, 0.65, 0.75, 0.55, 0.6, 0.7, 0.7333, 0.5667, 0.7123]
    assert heights == sorted(expected)
    chance = [ln for ln in acc.lines if list(ln.get_ydata()) == [0.5, 0.5]]
    assert chance and chance[0].get_linestyle() == "--"
    # (b): the mean gates written in the cells, attributes as rows
    texts = {t.get_text() for t in gates.texts}
    assert {"0.50", "0.10", "0.23", "0.47"} <= texts
    assert [t.get_text() for t in gates.get_yticklabels()] == ATTRS
    # (c): lambda in each label, the verbosity after-value marked removed
    labels = [t.get_text() for t in rho.get_yticklabels()]
    assert labels[0] == "correctness\nlambda = 0.123"
    assert "removed" in {t.get_text() for t in rho.texts}
    fig.canvas.draw()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 2
    for legend in legends:  # legends stay off the panels
        for ax in (acc, gates, rho):
            assert not legend.get_window_extent().overlaps(ax.get_window_extent())
    plt.close(fig)


def test_png_is_deterministic(eval_json, tmp_path):
    first, second = outputs(tmp_path, "a"), outputs(tmp_path, "b")
    report_armo(eval_json, *first)
    report_armo(eval_json, *second)
    assert first[1].read_bytes() == second[1].read_bytes()
    assert first[0].read_bytes() == second[0].read_bytes()


def _drop(result, dotted):
    *parents, last = dotted.split(".")
    for key in parents:
        result = result[key]
    del result[last]


def _put(result, dotted, value):
    *parents, last = dotted.split(".")
    for key in parents:
        result = result[key]
    result[last] = value


@pytest.mark.parametrize(
    ("dotted", "value", "match"),
    [
        ("domains.math.accuracy.armo", KeyError, "domains.math.accuracy.armo: missing"),
        ("overall", KeyError, "overall: missing"),
        ("domains.code.mean_gate.politeness", KeyError, "mean_gate.politeness: miss"),
        ("verbosity.lambdas.verbosity", KeyError, "verbosity.lambdas.verbosity: miss"),
        ("verbosity.tau", KeyError, "verbosity.tau: missing"),
        ("bt_model_id", KeyError, "bt_model_id: missing"),
        ("domains.math.n_pairs", -1, "domains.math.n_pairs: expected an integer"),
        ("domains.math.accuracy.bt", "high", "bt: expected a number or null, got 'hi"),
        ("overall.accuracy.uniform", 1.5, "uniform: expected a number in \\[0.0, 1.0"),
        ("domains.math.accuracy.armo", True, "armo: expected a number or null, got T"),
        ("domains.code.mean_gate", [0.1], "domains.code.mean_gate: expected a JSON"),
        ("verbosity.spearman_after.correctness", -2, "expected a number in \\[-1.0"),
        ("attributes", "correctness", "attributes: expected a list of distinct"),
        ("model_id", None, "model_id: expected a name"),
    ],
)
def test_malformed_input_names_file_and_key(tmp_path, dotted, value, match):
    result = copy.deepcopy(EVAL)
    if value is KeyError:
        _drop(result, dotted)
    else:
        _put(result, dotted, value)
    path = write(tmp_path / "eval.json", result)
    csv, png = outputs(tmp_path)
    with pytest.raises(InputFileError, match=f"^{path}: .*{match}"):
        report_armo(path, csv, png)
    assert not csv.parent.exists()  # nothing written


def test_unreadable_files_are_named(tmp_path):
    csv, png = outputs(tmp_path)
    path = tmp_path / "eval.json"
    with pytest.raises(MissingInputError, match=f"^{path}: file not found$"):
        report_armo(path, csv, png)
    path.write_text('{"model_id": "m",')
    with pytest.raises(InputFileError, match=f"^{path}: malformed JSON"):
        report_armo(path, csv, png)
    path.write_text("[1, 2]")
    with pytest.raises(InputFileError, match=f"^{path}: expected a JSON object$"):
        report_armo(path, csv, png)
    assert not csv.parent.exists()
    assert issubclass(InputFileError, UserError)


def test_cli_logs_a_summary_and_names_errors(eval_json, tmp_path, capsys):
    csv, png = outputs(tmp_path)
    argv = ["--eval", str(eval_json), "--out-csv", str(csv), "--out-png", str(png)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert (
        "math (10 pairs): ArmoRM 0.800, BT RM (rm-general-seed0) 0.700,"
        " uniform 0.600, best attribute correctness 0.900"
    ) in err
    assert "code (20 pairs): ArmoRM 0.650" in err and "best attribute verbosity" in err
    assert len(pd.read_csv(csv)) == 18 and png.read_bytes()[:8] == PNG_MAGIC
    result = copy.deepcopy(EVAL)
    _drop(result, "domains.math.accuracy.armo")
    write(eval_json, result)
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"error: {eval_json}: domains.math.accuracy.armo: missing"
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--out-png" in capsys.readouterr().out


# python -m pipelines.report_armo ARGS in a fresh interpreter; prints the exit
# code and which of the model stack ended up loaded
@pytest.mark.parametrize("run", ["help", "real"])
def test_runs_without_the_model_stack(eval_json, tmp_path, run):
    csv, png = outputs(tmp_path)
    args = ["--help"] if run == "help" else ["--eval", str(eval_json)]
    if run == "real":
        args += ["--out-csv", str(csv), "--out-png", str(png)]
    report, stderr = probe_stage("pipelines.report_armo", args)
    assert report == {"exit": 0, "loaded": []}, stderr
    if run == "real":
        assert csv.is_file() and png.is_file()
