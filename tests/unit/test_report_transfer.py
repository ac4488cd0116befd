"""Transfer report: N_F and transferability by hand, CSV cells, plot, errors."""

import csv
import json
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402

from pipelines.common.cli import UserError  # noqa: E402
from pipelines.common.io import InputFileError, MissingInputError  # noqa: E402
from pipelines.common.transfer import pairs_to_match, transferability  # noqa: E402
from pipelines.report_transfer import (  # noqa: E402
    COLUMNS,
    TransferArgError,
    main,
    report_transfer,
)
from tests.unit.stage_probe import probe_stage

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PANE = (1366 - 400 - 24, 768 - 48)  # as tests/unit/test_report_figures.py

# ------------------------------------------------------------ N_F by hand

CURVE = ([0, 16, 64], [0.5, 0.6, 0.8])


@pytest.mark.parametrize(
    ("ns", "accs", "target", "expected"),
    [
        # between 16 (0.6) and 64 (0.8): 16 + (0.7 - 0.6) / 0.2 * 48 = 40
        (*CURVE, 0.7, 40.0),
        (*CURVE, 0.6, 16.0),  # exactly on a point
        (*CURVE, 0.8, 64.0),  # exactly on the last point
        (*CURVE, 0.5, 0.0),  # the zero-shot point reaches it
        (*CURVE, 0.3, 0.0),
        (*CURVE, 0.81, None),  # never reached
        # given out of order: sorted by n first; 16 + 0.05 / 0.2 * 48 = 28
        ([64, 0, 16], [0.8, 0.5, 0.6], 0.65, 28.0),
        # rises, dips, rises: the FIRST crossing, 0 + 0.2 / 0.25 * 10 = 8 (not
        # the one between 20 and 30)
        ([0, 10, 20, 30, 40], [0.5, 0.75, 0.6, 0.9, 0.95], 0.7, 8.0),
        # the dip falls below again, but the first crossing stands: 10
        ([0, 10, 20], [0.5, 0.7, 0.6], 0.7, 10.0),
        ([16, 64], [0.6, 0.8], 0.6, 16.0),  # no zero-shot: the least n
    ],
)
def test_pairs_to_match_hand_cases(ns, accs, target, expected):
    got = pairs_to_match(ns, accs, target)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    ("ns", "accs", "match"),
    [
        ([], [], "at least one point"),
        ([0, 16], [0.5], "2 n values but 1"),
        ([0, 16, 16], [0.5, 0.6, 0.7], "distinct"),
        ([-1, 16], [0.5, 0.6], ">= 0"),
        ([0, 16], [0.5, float("nan")], "non-finite"),
    ],
)
def test_pairs_to_match_refuses_bad_curves(ns, accs, match):
    with pytest.raises(ValueError, match=match):
        pairs_to_match(ns, accs, 0.7)


def test_transferability_is_one_minus_the_share():
    assert transferability(40.0, 160) == pytest.approx(0.75)
    assert transferability(0.0, 160) == 1.0
    assert transferability(200.0, 100) == pytest.approx(-1.0)
    assert transferability(None, 100) is None
    with pytest.raises(ValueError, match="N_T"):
        transferability(1.0, 0)


# ------------------------------------------------------------ the report

# general -> math: zero-shot 0.6; n 10: 0.70, 0.74 (mean 0.72, SD 0.02 * sqrt 2);
# n 40: 0.82, 0.86 (mean 0.84). Ground truth 0.80 on N_T 100: N_F = 10 + (0.80
# - 0.72) / (0.84 - 0.72) * 30 = 30, transferability 1 - 30 / 100 = 0.7.
# code -> math: zero-shot 0.5, n 10 seed 0: 0.6: never 0.80, not reached.
# math -> code: zero-shot 0.75 >= ground truth 0.7: N_F 0, transferability 1.
EVALS = {
    "gt-math": (0.80, 50),
    "gt-code": (0.70, 40),
    "zs-general-math": (0.60, 50),
    "general-math-10-0": (0.70, 50),
    "general-math-10-1": (0.74, 50),
    "general-math-40-0": (0.82, 50),
    "general-math-40-1": (0.86, 48),
    "zs-code-math": (0.50, 50),
    "code-math-10-0": (0.60, 50),
    "zs-math-code": (0.75, 40),
}


def write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def evals(tmp_path) -> dict[str, str]:
    return {
        name: str(
            write(
                tmp_path / "eval" / f"{name}.json",
                {"model_id": name, "accuracy": acc, "n_pairs": n, "subsets": {}},
            )
        )
        for name, (acc, n) in EVALS.items()
    }


def inputs(evals):
    runs = [
        ("general", "math", "10", "0", evals["general-math-10-0"]),
        ("general", "math", "40", "1", evals["general-math-40-1"]),
        ("general", "math", "10", "1", evals["general-math-10-1"]),
        ("general", "math", "40", "0", evals["general-math-40-0"]),
        ("code", "math", "10", "0", evals["code-math-10-0"]),
    ]
    zero_shot = [
        ("general", "math", evals["zs-general-math"]),
        ("code", "math", evals["zs-code-math"]),
        ("math", "code", evals["zs-math-code"]),
    ]
    ground_truth = [
        ("math", "100", evals["gt-math"]),
        ("code", "200", evals["gt-code"]),
    ]
    return runs, zero_shot, ground_truth


def outputs(tmp_path):
    return tmp_path / "report" / "transfer.csv", tmp_path / "report" / "transfer.png"


def argv(evals, tmp_path) -> list[str]:
    runs, zero_shot, ground_truth = inputs(evals)
    out = [a for r in runs for a in ("--run", *r)]
    out += [a for z in zero_shot for a in ("--zero-shot", *z)]
    out += [a for g in ground_truth for a in ("--ground-truth", *g)]
    csv_path, png = outputs(tmp_path)
    return [*out, "--out-csv", str(csv_path), "--out-png", str(png)]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_csv_rows_in_order_with_hand_computed_cells(evals, tmp_path):
    csv_path, png = outputs(tmp_path)
    report_transfer(*inputs(evals), csv_path, png)
    rows = read_csv(csv_path)
    assert list(rows[0]) == list(COLUMNS)
    keys = [(r["kind"], r["source"], r["target"], r["n"], r["seed"]) for r in rows]
    assert keys == [
        ("ground_truth", "", "code", "200", ""),
        ("zero_shot", "math", "code", "0", ""),
        ("summary", "math", "code", "", ""),
        ("ground_truth", "", "math", "100", ""),
        ("zero_shot", "code", "math", "0", ""),
        ("run", "code", "math", "10", "0"),
        ("mean", "code", "math", "10", ""),
        ("summary", "code", "math", "", ""),
        ("zero_shot", "general", "math", "0", ""),
        ("run", "general", "math", "10", "0"),
        ("run", "general", "math", "10", "1"),
        ("mean", "general", "math", "10", ""),
        ("run", "general", "math", "40", "0"),
        ("run", "general", "math", "40", "1"),
        ("mean", "general", "math", "40", ""),
        ("summary", "general", "math", "", ""),
    ]
    by = {k: r for k, r in zip(keys, rows, strict=True)}
    gt = by[("ground_truth", "", "math", "100", "")]
    assert (gt["accuracy"], gt["n_t"], gt["n_test_pairs"]) == ("0.800000", "100", "50")
    assert gt["eval_json"] == evals["gt-math"]
    run = by[("run", "general", "math", "40", "1")]
    assert (run["accuracy"], run["n_test_pairs"], run["n_seeds"]) == (
        "0.860000",
        "48",
        "1",
    )
    assert run["accuracy_std"] == "" and run["eval_json"] == evals["general-math-40-1"]
    mean10 = by[("mean", "general", "math", "10", "")]
    # SD of (0.70, 0.74), ddof 1: |0.74 - 0.70| / sqrt(2) = 0.028284
    assert (mean10["accuracy"], mean10["accuracy_std"], mean10["n_seeds"]) == (
        "0.720000",
        "0.028284",
        "2",
    )
    mean40 = by[("mean", "general", "math", "40", "")]
    assert (mean40["accuracy"], mean40["n_test_pairs"]) == ("0.840000", "48")
    one_seed = by[("mean", "code", "math", "10", "")]
    assert (one_seed["accuracy"], one_seed["accuracy_std"]) == ("0.600000", "")
    summary = by[("summary", "general", "math", "", "")]
    assert (summary["gt_accuracy"], summary["n_t"]) == ("0.800000", "100")
    assert (summary["n_f"], summary["transferability"]) == ("30.000000", "0.700000")
    assert summary["reached"] == "True" and summary["accuracy"] == ""
    at_zero = by[("summary", "math", "code", "", "")]
    assert (at_zero["n_f"], at_zero["transferability"]) == ("0.000000", "1.000000")
    assert at_zero["reached"] == "True" and at_zero["n_t"] == "200"


def test_not_reached_leaves_n_f_and_transferability_empty(evals, tmp_path):
    csv_path, png = outputs(tmp_path)
    table = report_transfer(*inputs(evals), csv_path, png)
    row = [r for r in read_csv(csv_path) if r["kind"] == "summary"]
    row = next(r for r in row if r["source"] == "code")
    assert (row["n_f"], row["transferability"], row["reached"]) == ("", "", "False")
    summary = table[(table["kind"] == "summary") & (table["source"] == "code")]
    assert not bool(summary["reached"].iloc[0])


def test_png_is_written_and_fits_the_report_pane(evals, tmp_path):
    csv_path, png = outputs(tmp_path)
    report_transfer(*inputs(evals), csv_path, png)
    assert png.read_bytes()[:8] == PNG_MAGIC
    height, width = mpimg.imread(png).shape[:2]
    assert width <= PANE[0] and height <= PANE[1]
    # one target, one source, zero-shot only: still a figure
    runs, zero_shot, ground_truth = inputs(evals)
    report_transfer([], zero_shot[2:], ground_truth[1:], csv_path, png)
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert [r["kind"] for r in read_csv(csv_path)] == [
        "ground_truth",
        "zero_shot",
        "summary",
    ]
    # no zero-shot: the curve starts at its least n: (10, 0.70), (40, 0.86),
    # N_F = 10 + (0.80 - 0.70) / (0.86 - 0.70) * 30 = 28.75
    report_transfer(runs[:2], [], ground_truth, csv_path, png)
    summary = [r for r in read_csv(csv_path) if r["kind"] == "summary"]
    assert [(r["source"], r["n_f"]) for r in summary] == [("general", "28.750000")]
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_missing_key_or_file_is_named(evals, tmp_path):
    csv_path, png = outputs(tmp_path)
    runs, zero_shot, ground_truth = inputs(evals)
    bad = write(tmp_path / "bad.json", {"model_id": "m", "n_pairs": 10})
    runs[0] = (*runs[0][:4], str(bad))
    with pytest.raises(InputFileError, match=f"^{bad}: key 'accuracy': missing"):
        report_transfer(runs, zero_shot, ground_truth, csv_path, png)
    write(bad, {"accuracy": 0.5})
    with pytest.raises(InputFileError, match=f"^{bad}: key 'n_pairs': missing"):
        report_transfer(runs, zero_shot, ground_truth, csv_path, png)
    write(bad, {"accuracy": 1.5, "n_pairs": 10})
    with pytest.raises(InputFileError, match="key 'accuracy': expected 0..1"):
        report_transfer(runs, zero_shot, ground_truth, csv_path, png)
    gone = tmp_path / "gone.json"
    runs[0] = (*runs[0][:4], str(gone))
    with pytest.raises(MissingInputError, match=f"^{gone}: file not found$"):
        report_transfer(runs, zero_shot, ground_truth, csv_path, png)
    assert issubclass(InputFileError, UserError)
    assert not csv_path.exists() and not png.exists()


def test_bad_arguments_are_named(evals, tmp_path):
    csv_path, png = outputs(tmp_path)
    runs, zero_shot, ground_truth = inputs(evals)
    bad_n = [("general", "math", "ten", "0", evals["general-math-10-0"])]
    with pytest.raises(TransferArgError, match=r"--run: N must be an integer >= 1"):
        report_transfer(bad_n, zero_shot, ground_truth, csv_path, png)
    zero_n = [("general", "math", "0", "0", evals["general-math-10-0"])]
    with pytest.raises(TransferArgError, match=">= 1: '0'"):
        report_transfer(zero_n, zero_shot, ground_truth, csv_path, png)
    with pytest.raises(TransferArgError, match="both are the run general math 10 0"):
        report_transfer([*runs, runs[0]], zero_shot, ground_truth, csv_path, png)
    with pytest.raises(TransferArgError, match="target 'math': no --ground-truth"):
        report_transfer(runs, zero_shot, ground_truth[1:], csv_path, png)
    with pytest.raises(TransferArgError, match="nothing to report"):
        report_transfer([], [], ground_truth, csv_path, png)
    assert issubclass(TransferArgError, UserError)


def test_cli_writes_both_and_names_errors(evals, tmp_path, capsys):
    args = argv(evals, tmp_path)
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "general -> math: N_F 30.0 of N_T 100, transferability 0.700" in err
    assert "code -> math: N_F not reached" in err
    csv_path, png = outputs(tmp_path)
    assert len(read_csv(csv_path)) == 16 and png.read_bytes()[:8] == PNG_MAGIC
    # N_T from the ground truth's train_rm metrics.json instead of a number
    metrics = tmp_path / "metrics.json"
    write(metrics, {"n_pairs": 100, "final_loss": 0.3})
    assert main([str(metrics) if a == "100" else a for a in args]) == 0
    assert "general -> math: N_F 30.0 of N_T 100" in capsys.readouterr().err
    write(metrics, {"n_pairs": 0})
    assert main([str(metrics) if a == "100" else a for a in args]) == 2
    assert "metrics.json: key 'n_pairs': expected >= 1" in capsys.readouterr().err
    write(Path(evals["gt-math"]), {"n_pairs": 50})
    assert main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        last
        == f"error: {evals['gt-math']}: key 'accuracy': missing (an eval_rm result?)"
    )


@pytest.mark.parametrize("run", ["help", "real"])
def test_runs_without_the_model_stack(evals, tmp_path, run):
    args = ["--help"] if run == "help" else argv(evals, tmp_path)
    report, stderr = probe_stage("pipelines.report_transfer", args)
    assert report == {"exit": 0, "loaded": []}, stderr
    if run == "real":
        csv_path, png = outputs(tmp_path)
        assert csv_path.is_file() and png.is_file()
