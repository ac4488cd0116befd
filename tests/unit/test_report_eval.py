import json

import pandas as pd
import pytest

from pipelines.report_eval import COLUMNS, main, parse_model_id, report_eval

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_eval(model_id, bench, acc, subsets, sections=None, overall=None):
    n = sum(v[0] for v in subsets.values())
    return {
        "model_id": model_id,
        "benchmark": {"name": bench, "kind": "standard", "spec": {}},
        "n_pairs": n,
        "accuracy": acc,
        "subsets": {
            s: {"n": k, "n_correct": a * k, "n_ties": 0, "accuracy": a}
            for s, (k, a) in subsets.items()
        },
        "sections": sections or {},
        "overall": {"pooled": acc, **(overall or {})},
    }


@pytest.fixture
def evals(tmp_path):
    files = []
    seed0 = {"ratio": (6, 0.5), "fraction": (4, 1.0)}
    seed1 = {"ratio": (6, 0.5), "fraction": (4, 0.75)}
    items = [
        fake_eval(
            "rm-math-seed0",
            "math-test",
            0.7,
            seed0,
            sections={"math": {"n": 10, "accuracy": 0.7}},
        ),
        fake_eval("rm-math-seed1", "math-test", 0.6, seed1),
        fake_eval(
            "armo-gate",
            "rewardbench",
            0.8,
            {"shp": (2, 0.5)},
            sections={"Chat": {"n": 0, "accuracy": None}},
            overall={"leaderboard_2024": None, "sections_mean": 0.81},
        ),
    ]
    for i, item in enumerate(items):
        path = tmp_path / "eval" / f"{i}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(item))
        files.append(path)
    return files


def test_parse_model_id():
    assert parse_model_id("rm-math-code-seed12") == ("math-code", 12)
    assert parse_model_id("merged-w0.3") == (None, None)
    assert parse_model_id("rm-math-seedX") == (None, None)


def test_csv_rows_and_png(evals, tmp_path):
    csv, png = tmp_path / "report" / "eval.csv", tmp_path / "report" / "eval.png"
    table = report_eval(evals[:2], csv, png)
    back = pd.read_csv(csv, keep_default_na=False)
    assert tuple(back.columns) == COLUMNS
    assert len(back) == 2 * (1 + 1 + 2) - 1  # seed1 has no sections
    assert len(table) == len(back)
    all_rows = back[back["subset"] == "ALL"]
    assert all_rows[
        ["model_id", "trainset", "seed", "benchmark", "n"]
    ].values.tolist() == [
        ["rm-math-seed0", "math", 0, "math-test", 10],
        ["rm-math-seed1", "math", 1, "math-test", 10],
    ]
    assert all_rows["accuracy"].tolist() == [0.7, 0.6]
    sub = back[(back["model_id"] == "rm-math-seed1") & (back["subset"] == "fraction")]
    assert sub[["level", "n", "accuracy"]].values.tolist() == [["subset", 4, 0.75]]
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000
    # deterministic: same inputs, same bytes
    report_eval(evals[:2], tmp_path / "b.csv", tmp_path / "b.png")
    assert (tmp_path / "b.png").read_bytes() == data
    assert (tmp_path / "b.csv").read_bytes() == csv.read_bytes()


def test_clean_and_spurious_rows_and_panels(evals, tmp_path):
    item = json.loads(evals[0].read_text())
    item["spurious_split"] = {
        "clean": {"n": 6, "n_correct": 3.0, "n_ties": 1, "accuracy": 0.5},
        "spurious": {"n": 4, "n_correct": 4.0, "n_ties": 0, "accuracy": 1.0},
    }
    evals[0].write_text(json.dumps(item))
    csv, png = tmp_path / "eval.csv", tmp_path / "eval.png"
    report_eval(evals[:2], csv, png)
    back = pd.read_csv(csv, keep_default_na=False)
    feats = back[back["level"] == "features"]
    assert feats[["model_id", "subset", "n", "accuracy"]].values.tolist() == [
        ["rm-math-seed0", "clean", 6, 0.5],
        ["rm-math-seed0", "spurious", 4, 1.0],
    ]
    # three panels (all, clean, spurious) make a taller figure than one
    report_eval(evals[1:2], tmp_path / "one.csv", tmp_path / "one.png")
    import matplotlib.image as mpimg

    tall, short = mpimg.imread(png), mpimg.imread(tmp_path / "one.png")
    assert tall.shape[0] > 2.0 * short.shape[0]


def test_unparsed_ids_missing_values_and_cli(evals, tmp_path):
    csv, png = tmp_path / "eval.csv", tmp_path / "eval.png"
    assert (
        main(
            ["--evals", *map(str, evals), "--out-csv", str(csv), "--out-png", str(png)]
        )
        == 0
    )
    back = pd.read_csv(csv, keep_default_na=False)
    armo = back[back["model_id"] == "armo-gate"]
    assert set(armo["trainset"]) == {""} and set(armo["seed"]) == {""}
    levels = dict(zip(armo["subset"], armo["level"], strict=True))
    assert levels == {
        "ALL": "overall",
        "leaderboard_2024": "overall",
        "sections_mean": "overall",
        "Chat": "section",
        "shp": "subset",
    }
    assert armo.set_index("subset").loc["Chat", "accuracy"] == ""  # None -> empty
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert not list(tmp_path.glob(".*.tmp"))


def test_duplicate_or_no_inputs_fail_without_output(evals, tmp_path):
    csv, png = tmp_path / "eval.csv", tmp_path / "eval.png"
    with pytest.raises(ValueError, match="both hold"):
        report_eval([evals[0], evals[0]], csv, png)
    with pytest.raises(ValueError):
        report_eval([], csv, png)
    assert not csv.exists() and not png.exists()
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
