import json

import numpy as np
import pandas as pd
import pytest

from pipelines.common.score_store import write_store
from pipelines.report_dogerm import (
    COLUMNS,
    first_n_bon,
    main,
    parse_model_id,
    report_dogerm,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_first_n_bon_ties_lowest_index_and_drops_large_n():
    scores = np.array([0.5, 0.9, 0.9, 0.1, 2.0])
    gold = np.array([0.0, 1.0, 0.0, 1.0, 0.0])
    out = first_n_bon(scores, gold, [1, 2, 4, 8, 3, 5])
    assert sorted(out) == [1, 2, 3, 4, 5]  # 8 > K = 5 dropped
    assert out[1] == (0.0, 0.0)
    assert out[2] == (1.0, 1.0)
    # candidates 1 and 2 tie at 0.9: index 1 (gold 1) wins
    assert out[3] == (1.0, 1.0)
    assert out[4] == (1.0, 1.0)
    assert out[5] == (0.0, 1.0)  # picks index 4 (wrong) though some are right


def test_first_n_bon_tie_picks_wrong_lower_index_and_pass():
    out = first_n_bon(np.array([1.0, 1.0, 1.0]), np.array([0.0, 1.0, 1.0]), [1, 2, 4])
    assert out == {1: (0.0, 0.0), 2: (0.0, 1.0)}


def test_first_n_bon_rejects_bad_input():
    with pytest.raises(ValueError, match="1-D"):
        first_n_bon(np.zeros(3), np.zeros(2), [1])
    with pytest.raises(ValueError, match=">= 1"):
        first_n_bon(np.zeros(3), np.zeros(3), [0])


def test_parse_model_id():
    assert parse_model_id("merged-math-w0.3") == ("math", 0.3)
    assert parse_model_id("merged-code-w0") == ("code", 0.0)
    assert parse_model_id("merged-multi-part-w1.0") == ("multi-part", 1.0)
    assert parse_model_id("rm-general-seed0") is None


MODELS = {"merged-math-w0": 0.0, "merged-math-w0.3": 0.3, "merged-math-w0.6": 0.6}
# two math prompts (4 and 2 candidates), one code prompt (4 candidates)
GENS = {
    "math": [("m1", [1, 0, 0, 1]), ("m2", [0, 1])],
    "code": [("c1", [0, 0, 1, 1])],
}


def _score(model_weight, pid, k):
    # w0: prefers candidate 0; w0.3: ties everywhere; w0.6: prefers the last
    if model_weight == 0.0:
        return -float(k)
    if model_weight == 0.3:
        return 1.0
    return float(k)


@pytest.fixture
def inputs(tmp_path):
    evals, scores, gens = [], [], []
    for model_id, w in MODELS.items():
        for bench, acc in (("rewardbench", 0.6 + w / 10), ("autoj", 0.5 + w / 5)):
            path = tmp_path / "eval" / model_id / f"{bench}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(
                json.dumps(
                    {
                        "model_id": model_id,
                        "benchmark": {"name": bench},
                        "accuracy": acc,
                        "n_pairs": 40,
                        "subsets": {},
                    }
                )
            )
            evals.append(path)
    other = tmp_path / "eval" / "rm-general-seed0" / "autoj.json"
    other.parent.mkdir(parents=True)
    other.write_text(
        json.dumps(
            {
                "model_id": "rm-general-seed0",
                "benchmark": {"name": "autoj"},
                "accuracy": 0.5,
                "n_pairs": 40,
            }
        )
    )
    evals.append(other)
    (tmp_path / "gens").mkdir()
    for domain, prompts in GENS.items():
        path = tmp_path / "gens" / f"{domain}.jsonl"
        lines = [
            json.dumps(
                {
                    "prompt_id": pid,
                    "domain": domain,
                    "prompt": "q",
                    "candidates": [
                        {"text": f"a{k}", "gold": g, "source": "policy"}
                        for k, g in enumerate(golds)
                    ],
                }
            )
            for pid, golds in prompts
        ]
        path.write_text("\n".join(lines) + "\n")
        gens.append(path)
    (tmp_path / "scores").mkdir()
    for model_id, w in MODELS.items():
        rows = [
            (f"gens/{d}", i, pid, k, _score(w, pid, k))
            for d, prompts in GENS.items()
            for i, (pid, golds) in enumerate(prompts)
            for k in range(len(golds))
        ]
        names = ("input", "row", "id", "cand_idx", "score")
        columns = {name: [r[j] for r in rows] for j, name in enumerate(names)}
        columns |= {"side": ["candidate"] * len(rows), "truncated": [False] * len(rows)}
        inputs = {f"gens/{d}": {"kind": "candidates"} for d in GENS}
        path = tmp_path / "scores" / f"{model_id}.parquet"
        write_store(path, columns, {"model_id": model_id, "inputs": inputs})
        scores.append(path)
    return evals, scores, gens


def _value(table, model_id, metric, bench):
    sel = table[
        (table["model_id"] == model_id)
        & (table["metric"] == metric)
        & (table["benchmark"] == bench)
    ]
    assert len(sel) == 1
    return sel.iloc[0]


def test_report_rows(inputs, tmp_path):
    evals, scores, gens = inputs
    csv, png = tmp_path / "out" / "d.csv", tmp_path / "out" / "d.png"
    table = report_dogerm(evals, scores, gens, csv, png, ns=[1, 2, 4, 8])
    back = pd.read_csv(csv)
    assert tuple(back.columns) == COLUMNS
    assert len(back) == len(table)
    assert "rm-general-seed0" not in set(back["model_id"])
    assert sorted(back["weight"].unique()) == [0.0, 0.3, 0.6]
    assert set(back["lm_domain"]) == {"math"}
    # per model: 2 evals + math (n=1,2,4) and code (n=1,2,4) x (bon, pass)
    assert back.groupby("model_id").size().tolist() == [2 + 12] * 3
    assert back["model_id"].drop_duplicates().tolist() == list(MODELS)
    first = back[back["model_id"] == "merged-math-w0"]["metric"].tolist()
    assert first[:2] == ["accuracy", "accuracy"]
    assert first[2:4] == ["bon@1", "bon@1"]
    assert first[-1] == "pass@4"

    acc = _value(back, "merged-math-w0.3", "accuracy", "autoj")
    assert acc["value"] == pytest.approx(0.56) and acc["n"] == 40
    # math bon@2: both prompts; bon@4: only m1 (m2 has 2 candidates)
    assert _value(back, "merged-math-w0", "bon@2", "math")["value"] == 0.5
    assert _value(back, "merged-math-w0", "bon@2", "math")["n"] == 2
    row = _value(back, "merged-math-w0.6", "bon@2", "math")  # picks index 1
    assert row["value"] == 0.5
    assert _value(back, "merged-math-w0.6", "bon@4", "math")["value"] == 1.0
    assert _value(back, "merged-math-w0.6", "bon@4", "math")["n"] == 1
    # all ties -> index 0
    assert _value(back, "merged-math-w0.3", "bon@4", "code")["value"] == 0.0
    assert _value(back, "merged-math-w0.3", "pass@4", "code")["value"] == 1.0
    assert _value(back, "merged-math-w0.3", "pass@2", "math")["value"] == 1.0
    assert _value(back, "merged-math-w0.3", "pass@1", "math")["value"] == 0.5
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_report_is_deterministic(inputs, tmp_path):
    evals, scores, gens = inputs
    a = tmp_path / "a"
    b = tmp_path / "b"
    report_dogerm(evals, scores, gens, a / "d.csv", a / "d.png")
    report_dogerm(
        list(reversed(evals)), list(reversed(scores)), gens, b / "d.csv", b / "d.png"
    )
    assert (a / "d.csv").read_bytes() == (b / "d.csv").read_bytes()
    assert (a / "d.png").read_bytes() == (b / "d.png").read_bytes()


def test_report_errors(inputs, tmp_path):
    evals, scores, gens = inputs
    with pytest.raises(ValueError, match="no merged"):
        report_dogerm(evals[-1:], [], [], tmp_path / "x.csv", tmp_path / "x.png")
    with pytest.raises(ValueError, match="no gens"):
        report_dogerm([], scores, [], tmp_path / "x.csv", tmp_path / "x.png")
    with pytest.raises(ValueError, match="both hold"):
        report_dogerm(evals[:1] * 2, [], [], tmp_path / "x.csv", tmp_path / "x.png")
    assert not (tmp_path / "x.csv").exists()


def test_cli(inputs, tmp_path, capsys):
    evals, scores, gens = inputs
    csv, png = tmp_path / "cli.csv", tmp_path / "cli.png"
    argv = ["--evals", *map(str, evals), "--scores", *map(str, scores)]
    argv += ["--gens", *map(str, gens), "--out-csv", str(csv), "--out-png", str(png)]
    assert main([*argv, "--ns", "[1,2]"]) == 0
    back = pd.read_csv(csv)
    assert set(back["metric"]) == {"accuracy", "bon@1", "bon@2", "pass@1", "pass@2"}
    assert png.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(SystemExit) as err:
        main(["--help"])
    assert err.value.code == 0
    assert "--ns" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*argv, "--ns", "[0]"])
