"""Cheap processes (DESIGN.md principle 8, issue 11).

- ``python -m pipelines.<stage> --help`` of EVERY stage (found by listing
  ``pipelines/``, so a new stage is covered) loads none of the model stack;
- every shared module (``pipelines.common``, ``pipelines.domains``) imports
  without it;
- each torch-free stage, run for real on small inputs, loads no torch.

Each run is a fresh interpreter (``python -c PROBE``) that runs the module as
``python -m`` does and then writes which heavy libraries ended up in
``sys.modules``.
"""

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.common.score_store import file_sha256, write_store

from .test_eval_rewardbench import CORE, FAKE_MAIN, rb_rows

ROOT = Path(__file__).resolve().parents[2]
# the model stack: seconds of imports on 2 cores, never needed by --help
MODEL_STACK = ("torch", "transformers", "accelerate", "peft", "datasets", "deepspeed")
HEAVY = (*MODEL_STACK, "pandas", "matplotlib")

# Every stage is one of these two kinds; a new stage must be listed (test below).
# Torch-free stages: no model runs in their process (eval_rewardbench's model
# runs in the official package's own interpreter). Each gets a real run below.
TORCH_FREE = (
    "build_prefs",
    "train_tokenizer",  # transformers' tokenizer class (no torch) saves the folder
    "eval_rewardbench",
    "bon_estimate",
    "report_bon",
    "report_dogerm",
    "report_eval",
    "eval_rm",
    "report_summary",
    "report_ppo",
    "build_armo_data",
    "fit_ridge",
    "report_armo",
    "report_active",
    "report_transfer",
)
MODEL_STAGES = (
    "train_sft",
    "train_rm",
    "generate_candidates",
    "label_gold",
    "merge_dogerm",
    "score_model",
    "train_ppo",
    "extract_embeddings",
    "train_gating",
    "build_armo",
    "eval_armo",
    "select_active",  # loads torch only to score the pool (uncertainty)
)
# Stages whose --help still loads the model stack: other helpers' modules
# (issue 11's scoring rewrite) that import torch at the top. Remove an entry
# once its module imports torch lazily (strict: an unexpected pass fails).
HELP_LOADS_TORCH_YET: dict[str, str] = {}
# Torch-free stages whose real no-torch run lives beside their other tests (their
# inputs need a model to make: a score store, a finished study).
RUN_ELSEWHERE = {
    "eval_rm": "tests/unit/test_eval_rm.py::test_eval_runs_without_torch",
    "report_summary": "tests/unit/test_report_summary.py (its CLI run, no torch)",
    "report_armo": "tests/unit/test_report_armo.py::test_runs_without_the_model_stack",
}

# Writes {"exit": code, "loaded": [...]} to $PROBE_OUT after running argv[1] as
# ``python -m argv[1] argv[2:]``.
PROBE = f"""
import json, os, runpy, sys
mod, *args = sys.argv[1:]
sys.argv = [mod, *args]
code = 0
try:
    runpy.run_module(mod, run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
loaded = [m for m in {HEAVY!r} if m in sys.modules]
with open(os.environ["PROBE_OUT"], "w") as fh:
    json.dump({{"exit": code, "loaded": loaded}}, fh)
"""

# Imports every module named on argv in turn; writes which heavy libraries
# each one was the first to load.
IMPORT_ALL = f"""
import importlib, json, os, sys
first = {{}}
for name in sys.argv[1:]:
    before = {{m for m in {HEAVY!r} if m in sys.modules}}
    importlib.import_module(name)
    new = [m for m in {HEAVY!r} if m in sys.modules and m not in before]
    if new:
        first[name] = new
with open(os.environ["PROBE_OUT"], "w") as fh:
    json.dump(first, fh)
"""


def stages() -> list[str]:
    """Every stage module: ``pipelines/<name>.py`` but ``__init__``."""
    return sorted(
        p.stem for p in (ROOT / "pipelines").glob("*.py") if p.stem != "__init__"
    )


def shared_modules() -> list[str]:
    """Every module of the packages stages share (common, domains)."""
    names = []
    for package in ("common", "domains"):
        path = ROOT / "pipelines" / package
        names.append(f"pipelines.{package}")
        for info in pkgutil.walk_packages([str(path)], f"pipelines.{package}."):
            names.append(info.name)
    return sorted(names)


def probe(
    code: str, args: list[str], tmp: Path, extra_env: dict | None = None
) -> tuple[object, subprocess.CompletedProcess]:
    """Run ``python -c code args`` from the repo root; its report and the process."""
    out = tmp / f"probe-{len(list(tmp.glob('probe-*')))}.json"
    extra = dict(extra_env or {})
    path = os.pathsep.join([str(ROOT), *extra.pop("PYTHONPATH", [])])
    env = {
        **os.environ,
        **extra,
        "PYTHONPATH": path,
        "PROBE_OUT": str(out),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.exists(), f"probe wrote nothing: {proc.stderr[-3000:]}"
    return json.loads(out.read_text()), proc


def test_stage_lists_cover_every_stage():
    found = set(stages())
    assert {"train_rm", "build_prefs", "report_eval"} <= found  # discovery works
    listed = set(TORCH_FREE) | set(MODEL_STAGES)
    assert not set(TORCH_FREE) & set(MODEL_STAGES)
    assert found - listed == set(), "classify the new stage(s) in test_startup.py"
    assert listed - found == set(), "stage(s) listed here no longer exist"


@pytest.mark.parametrize(
    "stage",
    [
        pytest.param(
            s,
            marks=pytest.mark.xfail(strict=True, reason=HELP_LOADS_TORCH_YET[s]),
        )
        if s in HELP_LOADS_TORCH_YET
        else s
        for s in stages()
    ],
)
def test_help_loads_no_model_stack(stage, tmp_path):
    report, proc = probe(PROBE, [f"pipelines.{stage}", "--help"], tmp_path)
    assert report["exit"] == 0, proc.stderr[-3000:]
    assert "usage:" in proc.stdout
    loaded = [m for m in report["loaded"] if m in MODEL_STACK]
    assert loaded == [], f"--help of {stage} loads {loaded}"


def test_shared_modules_import_without_model_stack(tmp_path):
    names = shared_modules()
    assert "pipelines.common.cli" in names
    assert "pipelines.common.modeling" in names
    first, proc = probe(IMPORT_ALL, names, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stack = {n: [m for m in new if m in MODEL_STACK] for n, new in first.items()}
    assert {n: new for n, new in stack.items() if new} == {}


# ------------------------------------------------- torch-free stages, for real


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _gens_and_scores(root: Path) -> tuple[Path, dict[str, Path]]:
    """Two math prompts' candidates (gold) and the proxy scores of three models."""
    gold = {"m1": [1.0, 0.0, 0.0, 1.0], "m2": [0.0, 1.0, 1.0]}
    gens = _write_jsonl(
        root / "bon" / "gens" / "math.jsonl",
        [
            {
                "prompt_id": pid,
                "domain": "math",
                "prompt": [{"role": "user", "content": f"q {pid}"}],
                "candidates": [
                    {"text": f"{pid}-{k}", "gold": g, "source": "policy"}
                    for k, g in enumerate(golds)
                ],
            }
            for pid, golds in gold.items()
        ],
    )
    scores = {}
    for j, model in enumerate(("rm-math-seed0", "merged-math-w0", "merged-math-w0.5")):
        keys = [(p, k) for p, golds in gold.items() for k in range(len(golds))]
        columns = {
            "input": ["gens/math"] * len(keys),
            "row": [0] * len(keys),
            "id": [p for p, _ in keys],
            "side": ["candidate"] * len(keys),
            "cand_idx": [k for _, k in keys],
            "score": [float((k + j) % 3) for _, k in keys],
            "truncated": [False] * len(keys),
        }
        path = root / "scores" / f"{model}.parquet"
        files = {str(gens): file_sha256(gens)}
        inputs = {"gens/math": {"kind": "candidates", "files": files}}
        write_store(path, columns, {"model_id": model, "inputs": inputs})
        scores[model] = path
    return gens, scores


def _merged_evals(root: Path) -> list[Path]:
    paths = []
    for model, acc in (("merged-math-w0", 0.6), ("merged-math-w0.5", 0.7)):
        path = root / "eval" / model / "math-test.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "model_id": model,
                    "benchmark": {"name": "math-test"},
                    "accuracy": acc,
                    "n_pairs": 10,
                    "subsets": {},
                }
            )
        )
        paths.append(path)
    return paths


def _ppo_evals(root: Path) -> list[Path]:
    """Two PPO curves (eval.jsonl), three evaluations each."""
    paths = []
    for objective in ("single", "ensemble_mean"):
        lines = [
            {
                "objective": objective,
                "seed": 0,
                "step": step,
                "episodes": 8 * step,
                "kl": kl,
                "kl_k3": kl,
                "kl_original": kl / 2,
                "kl_coef": 0.1,
                "proxy": 0.5 * step,
                "gold": gold,
                "ensemble_variance": None if objective == "single" else 0.1,
                "rollout_reward": None if step == 0 else 0.4,
                "samples": [],
            }
            for step, kl, gold in ((0, 0.0, -1.0), (4, 2.0, -0.2), (8, 6.0, -0.6))
        ]
        paths.append(_write_jsonl(root / "ppo" / objective / "eval.jsonl", lines))
    return paths


def _armo_shard(root: Path) -> Path:
    """A responses embedding file (random embeddings, two attributes)."""
    from pipelines.common.armo.embeddings import EmbeddingSet, write_shard

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    labels = np.stack([x @ rng.normal(size=6), x[:, 0]], axis=1).astype(np.float32)
    data = EmbeddingSet(
        kind="responses",
        embeddings=x,
        labels=labels,
        ids=[f"r{i}" for i in range(40)],
        attributes=["a", "b"],
    )
    path = root / "armo" / "mo.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_shard(path, data, shard=0, n_shards=1)
    return path


def _real_runs(root: Path) -> dict[str, tuple[list[str], dict, list[Path]]]:
    """argv, extra environment and expected outputs of each torch-free stage.

    Later runs read earlier ones' outputs (build_prefs -> train_tokenizer,
    eval_rewardbench -> report_eval, bon_estimate -> report_bon), in the order
    of this dict.
    """
    data = root / "data" / "general"
    rb_pkg = root / "fakepkg"
    (rb_pkg / "rewardbench").mkdir(parents=True)
    (rb_pkg / "rewardbench" / "__init__.py").write_text("")
    (rb_pkg / "rewardbench" / "rewardbench.py").write_text(FAKE_MAIN)
    meta = rb_pkg / "rewardbench-9.9.9.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: rewardbench\n")
    model = root / "models" / "rm"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    rb_data = _write_jsonl(
        root / "rb.jsonl", rb_rows([i % 2 == 0 for i in range(len(CORE))])
    )
    rb_out = root / "eval" / "rm-general-seed0" / "rewardbench-official.json"
    gens, scores = _gens_and_scores(root)
    bon = root / "bon" / "ensemble_mean.json"
    report = root / "report"
    evals = _merged_evals(root)
    return {
        "build_prefs": (
            ["--domain", "general", "--sizes", '{"train": 8, "test": 4}']
            + [
                "--sft-size",
                "6",
                "--workers",
                "1",
                "--sft-out",
                str(data / "sft.jsonl"),
            ]
            + ["--pairs-out", str(data / "train.jsonl"), str(data / "test.jsonl")],
            {},
            [data / "train.jsonl", data / "test.jsonl", data / "sft.jsonl"],
        ),
        "build_armo_data": (
            ["--kind", "responses", "--records", str(data / "train.jsonl")]
            + ["--out", str(root / "armo" / "mo.jsonl")],
            {},
            [root / "armo" / "mo.jsonl"],
        ),
        "fit_ridge": (
            ["--embeddings", str(_armo_shard(root))]
            + ["--out", str(root / "armo" / "regression.safetensors")]
            + ["--report", str(root / "armo" / "regression.json")],
            {},
            [
                root / "armo" / "regression.safetensors",
                root / "armo" / "regression.json",
            ],
        ),
        "report_transfer": (
            ["--zero-shot", "general", "math", str(evals[0])]
            + ["--run", "general", "math", "16", "0", str(evals[1])]
            + ["--ground-truth", "math", "100", str(evals[1])]
            + ["--out-csv", str(report / "transfer.csv")]
            + ["--out-png", str(report / "transfer.png")],
            {},
            [report / "transfer.csv", report / "transfer.png"],
        ),
        "report_active": (
            ["--start", "math", str(evals[0])]
            + ["--run", "math", "uncertainty", "0", "1", "5", str(evals[1])]
            + ["--run", "math", "random", "0", "1", "5", str(evals[0])]
            + ["--out-csv", str(report / "active.csv")]
            + ["--out-png", str(report / "active.png")],
            {},
            [report / "active.csv", report / "active.png"],
        ),
        "train_tokenizer": (
            ["--data", str(data / "sft.jsonl"), str(data / "train.jsonl")]
            + ["--out", str(root / "tokenizer"), "--vocab-size", "300"],
            {},
            [root / "tokenizer" / "tokenizer.json"],
        ),
        "eval_rewardbench": (
            ["--model", str(model), "--model-id", "rm-general-seed0"]
            + ["--out", str(rb_out), "--dataset", str(rb_data)]
            + ["--python", sys.executable],
            {"PYTHONPATH": [str(rb_pkg)], "FAKE_RB_REPORT": str(root / "rb.report")},
            [rb_out],
        ),
        "report_eval": (
            ["--evals", str(rb_out), *map(str, _merged_evals(root))]
            + ["--out-csv", str(report / "eval.csv")]
            + ["--out-png", str(report / "eval.png")],
            {},
            [report / "eval.csv", report / "eval.png"],
        ),
        "bon_estimate": (
            ["--gens", str(gens), "--scores", str(scores["rm-math-seed0"])]
            + [str(scores["merged-math-w0"]), "--member-ids", "s0", "s1"]
            + ["--out", str(bon), "--aggregate", "mean", "--sample-ns", "[1, 2]"],
            {},
            [bon],
        ),
        "report_bon": (
            ["--results", str(bon), "--out-csv", str(report / "bon.csv")]
            + ["--out-png", str(report / "bon.png")],
            {},
            [report / "bon.csv", report / "bon.png"],
        ),
        "report_dogerm": (
            ["--evals", *map(str, _merged_evals(root)), "--gens", str(gens)]
            + ["--scores", str(scores["merged-math-w0"])]
            + [str(scores["merged-math-w0.5"]), "--ns", "[1, 2]"]
            + ["--out-csv", str(report / "dogerm.csv")]
            + ["--out-png", str(report / "dogerm.png")],
            {},
            [report / "dogerm.csv", report / "dogerm.png"],
        ),
        "report_ppo": (
            ["--evals", *map(str, _ppo_evals(root))]
            + ["--out-csv", str(report / "ppo.csv")]
            + ["--out-table", str(report / "ppo_summary.csv")]
            + ["--out-png", str(report / "ppo.png")],
            {},
            [report / "ppo.csv", report / "ppo_summary.csv", report / "ppo.png"],
        ),
    }


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory) -> dict[str, tuple[dict, str, list[Path]]]:
    """Each torch-free stage run for real: its probe report, stderr, outputs."""
    root = tmp_path_factory.mktemp("torch_free")
    runs = _real_runs(root)
    assert set(runs) == set(TORCH_FREE) - set(RUN_ELSEWHERE)
    done = {}
    for stage, (argv, env, outputs) in runs.items():
        report, proc = probe(PROBE, [f"pipelines.{stage}", *argv], root, env)
        done[stage] = (report, proc.stderr, outputs)
    return done


@pytest.mark.parametrize("stage", [s for s in TORCH_FREE if s not in RUN_ELSEWHERE])
def test_torch_free_stage_runs_without_torch(stage, real_runs):
    report, stderr, outputs = real_runs[stage]
    assert report["exit"] == 0, stderr[-3000:]
    assert [p for p in outputs if not p.is_file()] == []  # it did its work
    allowed = {"transformers"} if stage == "train_tokenizer" else set()
    loaded = [m for m in report["loaded"] if m in MODEL_STACK and m not in allowed]
    assert loaded == [], f"{stage} loads {loaded}"
