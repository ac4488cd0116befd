import json
import math

import pandas as pd
import pytest

from pipelines.report_bon import COLUMNS, main, report_bon

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_result(aggregate, ns, offset):
    rows = [
        {
            "n": n,
            "proxy_score": offset + math.log2(n),
            "gold_score": offset + math.log2(n) - 0.1 * math.log2(n) ** 2,
            "kl_bon": math.log(n) - (n - 1) / n,
            "n_prompts": 10 if n < 8 else 7,
        }
        for n in ns
    ]
    return {"results": rows, "aggregate": aggregate, "per_domain": {"math": rows}}


@pytest.fixture
def results(tmp_path):
    items = {
        "ensemble_uwo": fake_result("uwo", [1, 2, 4, 8], 0.3),
        "seed1": fake_result("single", [1, 2, 4], 0.1),
        "seed0": fake_result("single", [1, 2, 4, 8], 0.0),
        "ensemble_mean": fake_result("mean", [1, 2, 4, 8], 0.2),
    }
    files = []
    for name, item in items.items():
        path = tmp_path / "bon" / f"{name}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(item))
        files.append(path)
    return files


def test_csv_rows_and_png(results, tmp_path):
    csv, png = tmp_path / "report" / "bon.csv", tmp_path / "report" / "bon.png"
    table = report_bon(results, csv, png)
    back = pd.read_csv(csv)
    assert tuple(back.columns) == COLUMNS
    assert len(back) == len(table) == 4 + 3 + 4 + 4
    # single RMs first, then ensembles; by name, then n
    order = back[["name", "n"]].drop_duplicates("name")["name"].tolist()
    assert order == ["seed0", "seed1", "ensemble_mean", "ensemble_uwo"]
    seed1 = back[back["name"] == "seed1"]
    assert seed1["aggregate"].unique().tolist() == ["single"]
    assert seed1["n"].tolist() == [1, 2, 4]
    assert seed1["n_prompts"].tolist() == [10, 10, 10]
    row = back[(back["name"] == "ensemble_uwo") & (back["n"] == 8)].iloc[0]
    assert row["aggregate"] == "uwo"
    assert row["kl_bon"] == pytest.approx(math.log(8) - 7 / 8, abs=1e-6)
    assert row["proxy_score"] == pytest.approx(3.3, abs=1e-6)
    assert row["gold_score"] == pytest.approx(3.3 - 0.9, abs=1e-6)
    assert row["n_prompts"] == 7
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in csv.parent.iterdir()) == ["bon.csv", "bon.png"]


def test_png_is_deterministic(results, tmp_path):
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    report_bon(results, tmp_path / "a.csv", first)
    report_bon(list(results), tmp_path / "b.csv", second)
    assert first.read_bytes() == second.read_bytes()


def test_errors(results, tmp_path):
    with pytest.raises(ValueError, match="no BoN"):
        report_bon([], tmp_path / "x.csv", tmp_path / "x.png")
    other = tmp_path / "other" / "seed0.json"
    other.parent.mkdir()
    other.write_text(results[2].read_text())
    with pytest.raises(ValueError, match="share the name 'seed0'"):
        report_bon([results[2], other], tmp_path / "x.csv", tmp_path / "x.png")
    assert not (tmp_path / "x.csv").exists()


def test_cli(results, tmp_path):
    csv, png = tmp_path / "bon.csv", tmp_path / "bon.png"
    argv = ["--results", *map(str, results), "--out-csv", str(csv)]
    assert main([*argv, "--out-png", str(png)]) == 0
    assert len(pd.read_csv(csv)) == 15
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_each_curve_carries_gao_fit_of_known_coefficients(tmp_path):
    # gold(n) = g0 + d (alpha - beta d), d = sqrt(KL_bon(n)): the fit must
    # give back alpha and beta, the peak at (alpha / 2 beta)^2, R^2 = 1
    ns = [1, 2, 4, 8, 16, 32, 64]
    curves = {"seed0": (0.8, 0.3, -0.5), "ensemble_wco": (0.6, -0.05, 0.1)}
    files = []
    for name, (alpha, beta, g0) in curves.items():
        rows = []
        for n in ns:
            kl = math.log(n) - (n - 1) / n
            d = math.sqrt(kl)
            gold = g0 + d * (alpha - beta * d)
            rows.append(
                {
                    "n": n,
                    "proxy_score": kl,
                    "gold_score": gold,
                    "kl_bon": kl,
                    "n_prompts": 5,
                }
            )
        agg = "single" if name.startswith("seed") else "wco"
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"results": rows, "aggregate": agg}))
        files.append(path)
    csv, png = tmp_path / "bon.csv", tmp_path / "bon.png"
    report_bon(files, csv, png)
    back = pd.read_csv(csv)
    seed = back[back["name"] == "seed0"]
    assert seed["fit_alpha"].unique() == pytest.approx([0.8], abs=1e-5)
    assert seed["fit_beta"].unique() == pytest.approx([0.3], abs=1e-5)
    assert seed["fit_r2"].unique() == pytest.approx([1.0], abs=1e-6)
    assert seed["fit_peak_kl"].unique() == pytest.approx([(0.8 / 0.6) ** 2], 1e-4)
    assert seed["fit_gold"].to_numpy() == pytest.approx(seed["gold_score"], abs=1e-5)
    wco = back[back["name"] == "ensemble_wco"]
    assert wco["fit_beta"].unique() == pytest.approx([-0.05], abs=1e-5)
    assert wco["fit_peak_kl"].isna().all()  # never turns down: no peak
    assert png.read_bytes().startswith(PNG_MAGIC)
