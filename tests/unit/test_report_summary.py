"""The report's opening page: facts and headline numbers from result files."""

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from docutils.core import publish_parts
from safetensors.numpy import save_file

from pipelines.common.headline import (
    HEADLINE_COLUMNS,
    bon_headline,
    dogerm_headline,
    eval_headline,
    ppo_headline,
)
from pipelines.common.provenance import (
    data_sizes,
    model_record,
    safetensors_parameters,
    versions_table,
)
from pipelines.report_bon import report_bon
from pipelines.report_dogerm import COLUMNS as DOGERM_COLUMNS
from pipelines.report_eval import report_eval
from pipelines.report_ppo import report_ppo
from pipelines.report_summary import main, report_summary

from ..conftest import ROOT

# the names the page links to; Snakemake defines them for every registered file
REPORT_FILES = (
    "eval.png eval.csv bon.png bon.csv dogerm.png dogerm.csv config.yaml headline.csv"
    " ppo.png ppo.csv ppo_summary.csv"
)


def render(rst: str) -> str:
    """HTML body of the page as the report renders it; any warning raises."""
    links = "\n".join(f".. _{name}: #{name}" for name in REPORT_FILES.split())
    parts = publish_parts(
        rst + "\n\n" + links + "\n",
        writer="html",
        settings_overrides={"halt_level": 2, "report_level": 2},
    )
    return parts["html_body"]


def text_of(html: str) -> str:
    """The page's text, words and cells separated by one space."""
    text = " ".join(re.sub(r"<[^>]+>", " ", html).split())
    return re.sub(r"\( ", "(", re.sub(r" ([.,;)])", r"\1", text))


def write_jsonl(path, n, blank=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps({"i": i}) + "\n" for i in range(n)) + "\n" * blank
    )


def write_model(folder, run_config, *, shapes, arch=True, metrics=None):
    folder.mkdir(parents=True)
    (folder / "run_config.json").write_text(json.dumps(run_config))
    if arch:
        cfg = {"model_type": "gpt_neox", "num_hidden_layers": 2, "hidden_size": 8}
        (folder / "config.json").write_text(json.dumps(cfg))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    tensors = {f"t{i}": np.zeros(s, dtype=np.float32) for i, s in enumerate(shapes)}
    save_file(tensors, str(folder / "model.safetensors"))


TRAIN_VERSIONS = {"python": "3.11.7", "torch": "2.13.0", "numpy": "2.4.6"}
SCORE_VERSIONS = {"python": "3.11.7", "torch": "2.12.0", "numpy": "2.4.6"}


def fake_eval(model_id, bench, acc, clean, spurious=1.0):
    return {
        "model_id": model_id,
        "benchmark": {"name": bench, "kind": "standard", "spec": {}},
        "n_pairs": 16,
        "accuracy": acc,
        "spurious_split": {
            "clean": {"n": 10, "n_correct": 0.0, "n_ties": 0, "accuracy": clean},
            "spurious": {"n": 6, "n_correct": 0.0, "n_ties": 0, "accuracy": spurious},
        },
        "subsets": {"s": {"n": 16, "n_correct": 0.0, "n_ties": 0, "accuracy": acc}},
        "sections": {},
        "overall": {"pooled": acc},
        "settings": {"versions": SCORE_VERSIONS},
    }


def bon_json(path, aggregate, golds, proxies):
    rows = [
        {
            "n": n,
            "kl_bon": float(np.log(n) - (n - 1) / n),
            "proxy_score": p,
            "gold_score": g,
            "n_prompts": 8,
        }
        for n, g, p in zip((1, 2, 4), golds, proxies, strict=True)
    ]
    path.write_text(json.dumps({"results": rows, "aggregate": aggregate}))
    return path


def ppo_jsonl(path, objective, seed, kl, proxy, gold):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (k, p, g) in enumerate(zip(kl, proxy, gold, strict=True)):
        rec = {"objective": objective, "seed": seed, "step": 10 * i, "episodes": i}
        rec |= {"kl": k, "kl_k3": k, "kl_original": k, "kl_coef": 0.1}
        rec |= {"proxy": p, "gold": g, "ensemble_variance": None}
        rec |= {"rollout_reward": None, "samples": [{}] * 5}
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def run(tmp_path):
    """A finished tiny run: data, models, evals, and the four study tables."""
    res = tmp_path / "results"
    for domain in ("general", "math"):
        write_jsonl(res / f"data/{domain}/train.jsonl", 3, blank=2)
        write_jsonl(res / f"data/{domain}/test.jsonl", 2)
    write_jsonl(res / "data/sft/general/train.jsonl", 4)
    data = sorted(res.glob("data/**/*.jsonl"))

    models = [res / "models/sft/general"]
    write_model(
        models[0],
        {
            "stage": "train_sft",
            "seed": 0,
            "base": None,
            "tokenizer": "tok",
            "config": {"epochs": 2},
            "versions": TRAIN_VERSIONS,
        },
        shapes=[(10, 8), (8,)],  # 88 parameters
        metrics={"n_examples": 4},
    )
    for seed in (0, 1, 2):
        models.append(res / f"models/rm/general-math/seed{seed}")
        write_model(
            models[-1],
            {
                "stage": "train_rm",
                "seed": seed,
                "base": "results/models/sft/general",
                "n_pairs_trained": 6,
                "config": {"epochs": 1},
                "versions": TRAIN_VERSIONS,
            },
            shapes=[(10, 8), (1, 8)],  # 88 parameters
        )
    for w in ("0", "0.5", "1"):
        models.append(res / f"models/merged/rm-general-math-seed0__sft-math/w{w}")
        merge = {
            "lm_weight": float(w),
            "rm": "results/models/rm/general-math/seed0",
            "lm": "results/models/sft/math",
        }
        write_model(models[-1], {"merge": merge, "chat_format": {}}, shapes=[(4, 4)])

    evals = []
    # math-test: all 0.5 / 0.75 / 1.0, clean 0.4 / 0.6 / 0.8 over seeds 0, 1, 2
    for seed, acc, clean in ((0, 0.5, 0.4), (1, 0.75, 0.6), (2, 1.0, 0.8)):
        for bench, a, c in (("math-test", acc, clean), ("code-test", 0.7, 0.5)):
            path = res / f"eval/rm-general-math-seed{seed}/{bench}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(
                json.dumps(fake_eval(f"rm-general-math-seed{seed}", bench, a, c))
            )
            evals.append(path)
    report = res / "report"
    report_eval(evals, report / "eval.csv", report / "eval.png")

    bon = res / "bon"
    bon.mkdir()
    files = [
        bon_json(bon / "seed0.json", "single", [0.1, 0.2, 0.3], [0.0, 0.5, 1.0]),
        bon_json(bon / "seed1.json", "single", [0.1, 0.3, 0.5], [0.2, 0.7, 1.2]),
        bon_json(bon / "ensemble_mean.json", "mean", [0.1, 0.3, 0.45], [0.1, 0.5, 0.9]),
        bon_json(bon / "ensemble_wco.json", "wco", [0.1, 0.2, 0.4], [0.0, 0.3, 0.6]),
    ]
    report_bon(files, report / "bon.csv", report / "bon.png")

    rows = []
    for w, math_acc, code_acc, bon4 in (
        (0.0, 0.6, 0.8, 0.25),
        (0.5, 0.7, 0.7, 0.25),
        (1.0, 0.7, 0.6, 0.0),
    ):
        mid = f"merged-math-w{w:g}"
        rows += [
            [mid, "math", w, "accuracy", "code-test", code_acc, 16],
            [mid, "math", w, "accuracy", "math-test", math_acc, 16],
            [mid, "math", w, "bon@2", "math", 0.1, 4],
            [mid, "math", w, "bon@4", "math", bon4, 4],
            [mid, "math", w, "pass@4", "math", 0.5, 4],
        ]
    pd.DataFrame(rows, columns=list(DOGERM_COLUMNS)).to_csv(
        report / "dogerm.csv", index=False
    )
    ppo = res / "ppo"
    ppo_files = [
        ppo_jsonl(ppo / "s0.jsonl", "single", 0, [0, 1, 4], [1, 2, 3], [0.1, 0.5, 0.3]),
        ppo_jsonl(
            ppo / "s1.jsonl", "single", 1, [0, 1, 2], [1, 2, 3.4], [0.3, 0.7, 0.5]
        ),
        ppo_jsonl(
            ppo / "m0.jsonl",
            "ensemble_mean",
            0,
            [0, 1, 3],
            [0.5, 1, 1.5],
            [0.2, 0.6, 0.9],
        ),
    ]
    report_ppo(
        ppo_files,
        report / "ppo.csv",
        report / "ppo_summary.csv",
        report / "ppo.png",
    )
    config = yaml.safe_load((ROOT / "tests/config/tiny.yaml").read_text())
    return {
        "config": config,
        "data": data,
        "models": models,
        "evals": evals,
        "eval_csv": report / "eval.csv",
        "bon_csv": report / "bon.csv",
        "dogerm_csv": report / "dogerm.csv",
        "ppo_table": report / "ppo_summary.csv",
        "out_rst": tmp_path / "out/summary.rst",
        "out_csv": tmp_path / "out/headline.csv",
        "out_config": tmp_path / "out/config.yaml",
    }


def test_safetensors_parameters_reads_shapes_from_headers(tmp_path):
    save_file(
        {"a": np.zeros((3, 4), np.float32), "b": np.zeros(5, np.float16)},
        str(tmp_path / "model-00001-of-00002.safetensors"),
    )
    save_file(
        {"c": np.zeros((2, 3, 4), np.float32), "d": np.zeros((), np.float32)},
        str(tmp_path / "model-00002-of-00002.safetensors"),
    )
    assert safetensors_parameters(tmp_path) == 12 + 5 + 24 + 1
    assert safetensors_parameters(tmp_path / "nothing-here") is None


def test_data_sizes_count_lines_per_domain_and_split(run):
    sizes = data_sizes(run["data"]).set_index(["domain", "split"])["n"].to_dict()
    assert sizes == {
        ("general", "test"): 2,
        ("general", "train"): 3,  # blank lines are not rows
        ("math", "test"): 2,
        ("math", "train"): 3,
        ("general", "sft"): 4,
    }


def test_model_records_by_role(run, tmp_path):
    sft, rm0 = model_record(run["models"][0]), model_record(run["models"][1])
    merged = model_record(run["models"][5])
    assert (sft["role"], rm0["role"], merged["role"]) == ("sft", "rm", "merged")
    assert sft["parameters"] == rm0["parameters"] == 88
    assert merged["parameters"] == 16
    assert sft["arch"] == "gpt_neox 2 layers x 8"
    assert sft["detail"] == "4 examples x 2 epochs" and sft["source"] == ["tok"]
    assert rm0["detail"] == "6 pairs x 1 epoch" and rm0["seed"] == 0
    assert rm0["group"].endswith("models/rm/general-math")
    assert merged["detail"] == "0.5" and merged["group"].endswith("sft-math")
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(ValueError, match=f"{bare}: no run_config.json"):
        model_record(bare)


def test_versions_name_where_they_differ(run):
    records = [model_record(m) for m in run["models"]]
    assert versions_table(records, run["evals"]) == [
        ("python", "3.11.7"),
        ("numpy", "2.4.6"),
        ("torch", "2.12.0 (scoring); 2.13.0 (training)"),
    ]


def test_eval_headline_is_mean_and_sample_sd_over_seeds(run):
    rows = {(r["item"], r["quantity"]): r for r in eval_headline(run["eval_csv"])}
    row = rows["math-test", "accuracy_all"]
    # 0.5, 0.75, 1.0: mean 0.75, deviations +-0.25 -> sample SD 0.25
    assert (row["value"], row["sd"], row["min"], row["max"]) == pytest.approx(
        (0.75, 0.25, 0.5, 1.0)
    )
    assert (row["n_seeds"], row["n"], row["group"]) == (3, 16, "general-math")
    assert rows["math-test", "accuracy_clean"]["value"] == pytest.approx(0.6)
    assert rows["math-test", "accuracy_clean"]["sd"] == pytest.approx(0.2)
    assert rows["code-test", "accuracy_all"]["sd"] == pytest.approx(0.0)
    assert rows["code-test", "accuracy_spurious"]["n"] == 6


def test_bon_headline_at_the_largest_n(run):
    rows = {(r["group"], r["quantity"]): r for r in bon_headline(run["bon_csv"])}
    single = rows["single RM", "gold"]
    # seeds: 0.3 and 0.5 at n=4 -> mean 0.4, sample SD 0.1 * sqrt(2)
    assert (single["value"], single["sd"]) == pytest.approx((0.4, 0.1 * 2**0.5))
    assert single["n_seeds"] == 2 and single["item"] == "n=4"
    assert rows["single RM", "proxy"]["value"] == pytest.approx(1.1)
    assert rows["ensemble_mean", "gold"]["value"] == pytest.approx(0.45)
    assert np.isnan(rows["ensemble_mean", "gold"]["sd"])  # one run: no spread
    assert rows["ensemble_wco", "gold_n1"]["value"] == pytest.approx(0.1)
    assert rows["ensemble_wco", "kl_bon"]["value"] == pytest.approx(np.log(4) - 3 / 4)


def test_dogerm_headline_best_weight_against_plain_rm(run):
    rows = {
        (r["item"], r["quantity"]): r["value"]
        for r in dogerm_headline(run["dogerm_csv"])
    }
    assert rows["accuracy math-test", "w0"] == pytest.approx(0.6)
    # 0.7 at w=0.5 and w=1: the tie goes to the smaller weight
    assert rows["accuracy math-test", "best_weight"] == 0.5
    assert rows["accuracy math-test", "best"] == pytest.approx(0.7)
    assert rows["accuracy code-test", "best_weight"] == 0.0
    assert rows["bon@4 math", "best_weight"] == 0.0  # only the largest n
    assert ("bon@2 math", "w0") not in rows


def test_dogerm_headline_without_a_plain_rm(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame(
        [["merged-math-w0.5", "math", 0.5, "accuracy", "math-test", 0.7, 16]],
        columns=list(DOGERM_COLUMNS),
    ).to_csv(path, index=False)
    rows = {r["quantity"]: r["value"] for r in dogerm_headline(path)}
    assert np.isnan(rows["w0"]) and rows["best_weight"] == 0.5


def test_ppo_headline_means_over_seeds_and_the_mean_curve(run):
    rows = {(r["group"], r["quantity"]): r for r in ppo_headline(run["ppo_table"])}
    gold = rows["single", "gold"]
    # seeds end at 0.3 and 0.5: mean 0.4, sample SD 0.1 * sqrt(2)
    assert (gold["value"], gold["sd"]) == pytest.approx((0.4, 0.1 * 2**0.5))
    assert (gold["n_seeds"], gold["item"], gold["n"]) == (2, "step=20", 5)
    assert rows["single", "kl"]["value"] == pytest.approx(3.0)
    assert rows["single", "proxy_rise"]["value"] == pytest.approx(2.2)
    # the mean curve 0.2, 0.6, 0.4 peaks at step 10; both seeds' curves fall
    assert rows["single", "gold_peak"]["value"] == pytest.approx(0.6)
    assert np.isnan(rows["single", "gold_peak"]["sd"])
    assert rows["single", "step_gold_peak"]["value"] == 10
    assert rows["single", "gold_falls"]["value"] == 1.0
    assert rows["single", "seeds_gold_falls"]["value"] == 2.0
    assert rows["ensemble_mean", "gold_falls"]["value"] == 0.0
    assert rows["ensemble_mean", "gold"]["n_seeds"] == 1


def test_summary_page_renders_and_states_the_numbers(run):
    table = report_summary(**run)
    html = render(run["out_rst"].read_text())
    text = text_of(html)
    assert "Preset tiny" in text
    # data, models, versions
    assert "general 3 2 4" in text
    assert "results/models/rm/general-math (3 models) gpt_neox 2 layers x 8 88" in text
    assert "6 pairs x 1 epoch from results/models/sft/general" in text
    assert "0, 1, 2" in text  # the RM seeds
    assert "LM weights 0, 0.5, 1 of" in text
    assert "torch 2.12.0 (scoring); 2.13.0 (training)" in text
    # evaluation: mean +- sample SD over three seeds
    assert "general-math math-test 0.750 ± 0.250 0.600 ± 0.200 1.000 ± 0.000" in text
    assert "16 / 10 / 6 3" in text
    # best-of-n at the largest n
    assert "single RM (2 seeds) 4 0.636 1.100 ± 0.141 0.400 ± 0.141 0.100 ± 0.000" in (
        text
    )
    assert "ensemble_mean 4 0.636 0.900 0.450 0.100" in text
    assert "Highest gold at the largest n: 0.450 (ensemble_mean)." in text
    # DogeRM: w=0 against the best weight
    assert "math accuracy math-test 0.600 0.5 0.700 0.100" in text
    assert "math accuracy code-test 0.800 0 0.800 0.000" in text
    assert "Merging beats the plain RM on 1 of 3 rows." in text
    for name in ("eval.png", "bon.png", "dogerm.png", "headline.csv"):
        assert f'href="#{name}"' in html  # links to the registered files
    # the headline CSV holds the same numbers at full precision
    back = pd.read_csv(run["out_csv"])
    assert tuple(back.columns) == HEADLINE_COLUMNS
    # PPO: KL, proxy, gold from step 0 to the end; the peak of the mean curve
    assert (
        "single (2 seeds) 20 0.000 → 3.000 ± 1.414 1.000 → 3.200 ± 0.283"
        " 0.200 → 0.600 (step 10) → 0.400 ± 0.141 yes (2 of 2 seeds)"
    ) in text
    assert (
        "ensemble_mean 20 0.000 → 3.000 0.500 → 1.500 0.200 → 0.900 (step 20)"
        " → 0.900 no"
    ) in text
    assert "Highest gold at the last step: 0.900 (ensemble_mean)." in text
    assert (
        "single : gold peaks at step 10 (KL 1.000, gold 0.600) and falls to 0.400"
        " at step 20 while the proxy ends higher than at that step"
    ) in text
    assert "for 2 of 2 seeds' own curves): over-optimisation; the fit peaks" in text
    assert (
        "ensemble_mean : gold is highest at the last step 20 (0.900); the fit never"
        " turns down (beta &lt;= 0), R² 1.000."  # the page's text, HTML-escaped
    ) in text
    # hand-worked fit of the single RM's mean curve (KL 0, 1, 3; gold 0.2, 0.6,
    # 0.4): alpha = 0.4 at d = 1; beta = (sqrt(3) 0.4 - 0.2) / (sqrt(3) log
    # sqrt(3)); the peak at KL exp(2 (alpha / beta - 1))
    beta = (3**0.5 * 0.4 - 0.2) / (3**0.5 * np.log(3**0.5))
    assert f"the fit peaks at KL {np.exp(2 * (0.4 / beta - 1)):.3f}, inside" in text
    assert (
        "each ensemble against the single RM's 0.400 ± 0.141 (mean ± SD over 2"
        " seeds): ensemble_mean 0.900 (above)."
    ) in text
    assert 'href="#ppo.png"' in html and 'href="#ppo_summary.csv"' in html
    assert (
        len(back) == len(table) == 2 * 3 + 3 * 9 + 3 * 3 + 2 * 16
    )  # benchmarks, objectives, items, PPO objectives
    row = back[(back["item"] == "math-test") & (back["quantity"] == "accuracy_all")]
    assert row[["value", "sd", "n_seeds"]].values.tolist() == [[0.75, 0.25, 3]]
    assert yaml.safe_load(run["out_config"].read_text()) == run["config"]


def test_ids_that_look_like_markup_stay_text(run, tmp_path):
    # names ending in "_" or wrapped in "*" would be rst links or emphasis
    evals = []
    for seed in (0, 1):
        path = tmp_path / f"odd{seed}.json"
        item = fake_eval(f"rm-odd_-seed{seed}", "*bench*_", 0.5, 0.5)
        path.write_text(json.dumps(item))
        evals.append(path)
    report_eval(evals, tmp_path / "eval.csv", tmp_path / "eval.png")
    run["eval_csv"] = tmp_path / "eval.csv"
    report_summary(**run)
    text = text_of(render(run["out_rst"].read_text()))
    assert "odd_ *bench*_ 0.500 ± 0.000" in text


def test_studies_left_out_and_bad_models_leave_no_output(run, tmp_path):
    run["bon_csv"] = run["dogerm_csv"] = run["ppo_table"] = None
    report_summary(**run)
    text = text_of(render(run["out_rst"].read_text()))
    assert "PPO from step 0 to the last step" not in text
    assert "Pairwise accuracy per training set and benchmark" in text
    assert "Best-of-n at the largest n" not in text
    assert "plain RM against the best merge weight" not in text
    for out in ("out_rst", "out_csv", "out_config"):
        run[out] = tmp_path / "bad" / run[out].name
    (run["models"][1] / "run_config.json").unlink()
    with pytest.raises(ValueError, match="seed0: no run_config.json"):
        report_summary(**run)
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_cli_without_torch(run):
    argv = ["--config-json", json.dumps(run["config"])]
    argv += ["--data", *map(str, run["data"]), "--models", *map(str, run["models"])]
    argv += ["--evals", *map(str, run["evals"])]
    for key in (
        "eval_csv",
        "bon_csv",
        "dogerm_csv",
        "ppo_table",
        "out_rst",
        "out_csv",
        "out_config",
    ):
        argv += [f"--{key.replace('_', '-')}", str(run[key])]
    code = (
        "import sys; from pipelines.report_summary import main;"
        " rc = main(sys.argv[1:]);"
        " bad = [m for m in ('torch', 'transformers') if m in sys.modules];"
        " sys.exit(rc or (3 if bad else 0))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert run["out_rst"].read_text().startswith("What was run")
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
