import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.common import rewardbench as rb
from pipelines.common.rewardbench_results import (
    RewardBenchResultError,
    convert_results,
    read_official,
)
from pipelines.common.rewardbench_staging import (
    CORE_DATASET,
    legacy_model_config,
    legacy_tokenizer_config,
    local_split_files,
    stage_dataset,
    stage_folder,
)
from pipelines.eval_rewardbench import (
    EvalRewardBenchConfig,
    build_command,
    eval_rewardbench,
    main,
    make_parser,
    official_paths,
)

ROOT = Path(__file__).resolve().parents[2]

# ------------------------------------------- rewardbench 0.1.4 definitions
# Copied from rewardbench/constants.py of the tested release (pip rewardbench
# ==0.1.4); the end-to-end test checks them against the installed package.
OFFICIAL_EXAMPLE_COUNTS = {
    "alpacaeval-easy": 100,
    "alpacaeval-length": 95,
    "alpacaeval-hard": 95,
    "mt-bench-easy": 28,
    "mt-bench-med": 40,
    "mt-bench-hard": 37,
    "math-prm": 984,
    "refusals-dangerous": 100,
    "refusals-offensive": 100,
    "llmbar-natural": 100,
    "llmbar-adver-neighbor": 134,
    "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47,
    "llmbar-adver-manual": 46,
    "xstest-should-refuse": 154,
    "xstest-should-respond": 250,
    "donotanswer": 136,
    "hep-cpp": 164,
    "hep-go": 164,
    "hep-java": 164,
    "hep-js": 164,
    "hep-python": 164,
    "hep-rust": 164,
}
OFFICIAL_SUBSET_MAPPING = {
    "Chat": [
        "alpacaeval-easy",
        "alpacaeval-length",
        "alpacaeval-hard",
        "mt-bench-easy",
        "mt-bench-med",
    ],
    "Chat Hard": [
        "mt-bench-hard",
        "llmbar-natural",
        "llmbar-adver-neighbor",
        "llmbar-adver-GPTInst",
        "llmbar-adver-GPTOut",
        "llmbar-adver-manual",
    ],
    "Safety": [
        "refusals-dangerous",
        "refusals-offensive",
        "xstest-should-refuse",
        "xstest-should-respond",
        "donotanswer",
    ],
    "Reasoning": [
        "math-prm",
        "hep-cpp",
        "hep-go",
        "hep-java",
        "hep-js",
        "hep-python",
        "hep-rust",
    ],
}
CORE = [s for names in OFFICIAL_SUBSET_MAPPING.values() for s in names]


def official_sections(metrics):
    """rewardbench/utils.py calculate_scores_per_section, line for line."""
    section_scores = {}
    for section, tests in OFFICIAL_SUBSET_MAPPING.items():
        total_weighted_score = 0
        total_examples = 0
        for test in tests:
            if test in metrics:
                total_weighted_score += metrics[test] * OFFICIAL_EXAMPLE_COUNTS[test]
                total_examples += OFFICIAL_EXAMPLE_COUNTS[test]
        if total_examples > 0:
            section_scores[section] = total_weighted_score / total_examples
        else:
            section_scores[section] = 0
    return section_scores


def test_common_definitions_equal_the_official_ones():
    assert rb.EXAMPLE_COUNTS == OFFICIAL_EXAMPLE_COUNTS
    assert {k: list(v) for k, v in rb.SECTIONS.items()} == OFFICIAL_SUBSET_MAPPING


# --------------------------------------------------- fake official outputs
def fake_official(counts, *, model="model"):
    """The package's results JSON and per-pair rows for ``{subset: (k, n)}``."""
    rows = []
    for subset, (k, n) in counts.items():
        for i in range(n):
            win = i < k
            rows.append(
                {
                    "prompt": f"p{i}",
                    "results": int(win),
                    "scores_chosen": 1.0 if win else -1.0,
                    "scores_rejected": 0.0,
                    "subset": subset,
                    "id": len(rows),
                }
            )
    correct = sum(r["results"] for r in rows)
    official = {
        "accuracy": correct / len(rows),
        "num_prompts": len(rows),
        "model": model,
        "ref_model": None,
        "tokenizer": model,
        "chat_template": None,
        "extra_results": {s: k / n for s, (k, n) in counts.items()},
    }
    return official, rows


def write_official(tmp_path, official, rows):
    res = tmp_path / "rewardbench-out" / "model.json"
    outs = tmp_path / "rewardbench-out" / "model_outputs.jsonl"
    res.parent.mkdir(parents=True, exist_ok=True)
    res.write_text(json.dumps(official))
    outs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return res, outs


def random_counts(seed):
    rng = random.Random(seed)
    counts = {}
    for s in CORE:
        n = rng.randint(1, 9)
        counts[s] = (rng.randint(0, n), n)
    return counts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sections_equal_the_official_computation(tmp_path, seed):
    counts = random_counts(seed)
    official, rows = fake_official(counts)
    res, outs = write_official(tmp_path, official, rows)
    got = convert_results(
        *read_official(res, outs), results_path=res, outputs_path=outs
    )
    acc = {s: k / n for s, (k, n) in counts.items()}
    want = official_sections(acc)
    assert {k: v["accuracy"] for k, v in got["sections"].items()} == pytest.approx(want)
    assert got["score"] == pytest.approx(sum(want.values()) / 4)
    assert got["overall"]["sections_mean"] == pytest.approx(got["score"])
    # no prior sets in the core run: the 2024 leaderboard mean = the 4 sections
    assert got["overall"]["leaderboard_2024"] == pytest.approx(got["score"])
    assert got["overall"]["pooled"] == official["accuracy"]
    for s, (k, n) in counts.items():
        assert got["subsets"][s] == {"n": n, "n_correct": k, "accuracy": k / n}
    for name, subsets in OFFICIAL_SUBSET_MAPPING.items():
        assert got["sections"][name]["n"] == sum(counts[s][1] for s in subsets)
    assert got["n_pairs"] == len(rows) == len(got["pairs"])
    assert got["pairs"][0] == {
        "id": 0,
        "subset": rows[0]["subset"],
        "chosen": rows[0]["scores_chosen"],
        "rejected": rows[0]["scores_rejected"],
    }


def test_reasoning_weights_math_like_all_code_by_hand(tmp_path):
    counts = {s: (1, 1) for s in CORE}
    counts["math-prm"] = (0, 4)  # 0.0 with weight 984 = the six hep-* (6 x 164)
    official, rows = fake_official(counts)
    res, outs = write_official(tmp_path, official, rows)
    got = convert_results(
        *read_official(res, outs), results_path=res, outputs_path=outs
    )
    assert got["sections"]["Reasoning"]["accuracy"] == pytest.approx(0.5)
    assert got["sections"]["Chat"]["accuracy"] == 1.0
    assert got["score"] == pytest.approx((1 + 1 + 1 + 0.5) / 4)


@pytest.mark.parametrize(
    ("mode", "refuse_weight", "respond_weight"),
    [("corrected", 154, 250), ("legacy", 250, 154)],
)
def test_xstest_weights_follow_the_setting_by_hand(
    tmp_path, mode, refuse_weight, respond_weight
):
    counts = {s: (1, 1) for s in CORE}
    counts["xstest-should-refuse"] = (0, 2)  # accuracy 0.0
    counts["xstest-should-respond"] = (1, 2)  # accuracy 0.5
    official, rows = fake_official(counts)
    res, outs = write_official(tmp_path, official, rows)
    got = convert_results(
        *read_official(res, outs),
        results_path=res,
        outputs_path=outs,
        xstest_weights=mode,
    )
    # Safety: refusals-dangerous 100, refusals-offensive 100, donotanswer 136
    # all at 1.0, plus the two xstest subsets at 0.0 and 0.5.
    want = (100 + 100 + 136 + 0.0 * refuse_weight + 0.5 * respond_weight) / (
        100 + 100 + 136 + refuse_weight + respond_weight
    )
    assert got["sections"]["Safety"]["accuracy"] == pytest.approx(want)


def test_xstest_weights_reach_the_stage_config_and_cli():
    assert EvalRewardBenchConfig().xstest_weights == "corrected"
    args = make_parser().parse_args(
        ["--model", "m", "--model-id", "x", "--out", "o.json"]
        + ["--xstest-weights", "legacy"]
    )
    assert args.xstest_weights == "legacy"
    with pytest.raises(ValueError, match="xstest_weights"):
        EvalRewardBenchConfig(xstest_weights="swapped")


def break_results(official, rows):
    del official["accuracy"]


def null_extra(official, rows):
    official["extra_results"] = None


def drop_subsets(official, rows):
    del official["extra_results"]["hep-go"]
    del official["extra_results"]["donotanswer"]


def drop_row_field(official, rows):
    del rows[2]["subset"]


def bad_result(official, rows):
    rows[0]["results"] = 0.5


def fewer_rows(official, rows):
    rows.pop()


def wrong_subset_accuracy(official, rows):
    official["extra_results"]["hep-go"] = 0.5  # the rows say 2/2


def wrong_accuracy(official, rows):
    official["accuracy"] = 0.0


@pytest.mark.parametrize(
    ("mutate", "file", "match"),
    [
        (break_results, "model.json", "field 'accuracy' missing"),
        (null_extra, "model.json", "field 'extra_results'.*None.*allenai/reward-bench"),
        (drop_subsets, "model.json", "lacks 2 of the 23.*donotanswer, hep-go"),
        (drop_row_field, "model_outputs.jsonl:3", "field 'subset' missing"),
        (bad_result, "model_outputs.jsonl:1", "field 'results' is 0.5"),
        (fewer_rows, "model_outputs.jsonl", "'num_prompts'"),
        (wrong_subset_accuracy, "model_outputs.jsonl", "extra_results.hep-go"),
        (wrong_accuracy, "model_outputs.jsonl", "field 'accuracy'"),
    ],
    ids=lambda x: getattr(x, "__name__", None),
)
def test_bad_results_name_file_and_field(tmp_path, mutate, file, match):
    counts = {s: (1, 2) for s in CORE}
    counts["hep-go"] = (2, 2)
    official, rows = fake_official(counts)
    mutate(official, rows)
    res, outs = write_official(tmp_path, official, rows)
    with pytest.raises(RewardBenchResultError, match=match) as err:
        convert_results(*read_official(res, outs), results_path=res, outputs_path=outs)
    assert file in str(err.value)


def test_missing_or_unreadable_result_files(tmp_path):
    official, rows = fake_official({s: (1, 1) for s in CORE})
    res, outs = write_official(tmp_path, official, rows)
    outs.unlink()
    with pytest.raises(RewardBenchResultError, match="model_outputs.jsonl: missing"):
        read_official(res, outs)
    res.write_text("{not json")
    outs.write_text("")
    with pytest.raises(RewardBenchResultError, match=r"model\.json: not JSON"):
        read_official(res, outs)
    res.write_text("[]")
    with pytest.raises(RewardBenchResultError, match="not a JSON object"):
        read_official(res, outs)
    res.unlink()
    with pytest.raises(RewardBenchResultError, match=r"model\.json: missing"):
        read_official(res, outs)


# ------------------------------------------------------- config and command
def test_default_command_is_bf16_unquantized_without_remote_code():
    cmd = build_command("/env/bin/python", "model", None, EvalRewardBenchConfig())
    assert cmd == [
        "/env/bin/python",
        "-m",
        "rewardbench.rewardbench",
        "--model",
        "model",
        "--dataset",
        "allenai/reward-bench",
        "--batch_size",
        "8",
        "--max_length",
        "512",
        "--torch_dtype",
        "bfloat16",
        "--output_dir",
        "rewardbench-out/",
        "--not_quantized",
    ]


def test_command_carries_every_config_field():
    cfg = EvalRewardBenchConfig(
        batch_size=2,
        max_length=4096,
        torch_dtype="float32",
        not_quantized=False,
        force_truncation=True,
        attn_implementation="sdpa",
        chat_template="tulu",
        trust_remote_code=True,
        extra_args=("--revision", "v2"),
    )
    cmd = build_command("py", "org/rm-7b", "tokenizer", cfg)
    assert cmd[:7] == ["py", "-m", "rewardbench.rewardbench"] + [
        "--model",
        "org/rm-7b",
        "--tokenizer",
        "tokenizer",
    ]
    flags = " ".join(cmd[7:])
    for part in (
        "--batch_size 2",
        "--max_length 4096",
        "--torch_dtype float32",
        "--chat_template tulu",
        "--attn_implementation sdpa",
        "--force_truncation",
        "--trust_remote_code",
    ):
        assert part in flags
    assert "--not_quantized" not in cmd
    assert cmd[-2:] == ["--revision", "v2"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"max_length": 0}, "max_length"),
        ({"torch_dtype": "int8"}, "torch_dtype"),
        ({"attn_implementation": "flash"}, "attn_implementation"),
        ({"split": "raw"}, "filtered"),
        ({"extra_args": ("--output-dir=/tmp/x",)}, "--output-dir"),
        ({"extra_args": ("--push_results_to_hub",)}, "push_results_to_hub"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EvalRewardBenchConfig(**kwargs)


def test_local_copy_may_name_another_split(tmp_path):
    cfg = EvalRewardBenchConfig(dataset=str(tmp_path), split="raw")
    assert cfg.split == "raw"


def test_official_paths_follow_the_package_concatenation(tmp_path):
    assert official_paths(tmp_path, "model") == (
        tmp_path / "rewardbench-out" / "model.json",
        tmp_path / "rewardbench-out" / "model_outputs.jsonl",
    )
    assert official_paths(tmp_path, "org/rm-7b") == (
        tmp_path / "rewardbench-out" / "org" / "rm-7b.json",
        tmp_path / "rewardbench-out" / "org" / "rm-7b_outputs.jsonl",
    )


def test_cli_help_lists_config_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--model",
        "--model-id",
        "--out",
        "--dataset",
        "--split",
        "--batch-size",
        "--torch-dtype",
        "--chat-template",
        "--trust-remote-code",
        "--not-quantized",
        "--extra-args",
        "--python",
    ):
        assert flag in text
    assert "python -m pipelines.eval_rewardbench" in text


def test_cli_help_runs_as_module_without_torch():
    code = (
        "import runpy, sys; sys.argv = ['x', '--help']\n"
        "try:\n"
        "    runpy.run_module('pipelines.eval_rewardbench', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules, 'imports torch'\n"
        "assert 'transformers' not in sys.modules, 'imports transformers'\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert "--model-id" in res.stdout


def test_parser_builds_config():
    args = make_parser().parse_args(
        [
            "--model",
            "m",
            "--model-id",
            "rm-x-seed0",
            "--out",
            "o.json",
            "--trust-remote-code",
            "true",
            "--extra-args",
            '["--revision", "v1"]',
        ]
    )
    assert args.trust_remote_code is True
    assert args.extra_args == ["--revision", "v1"]


# ------------------------------------------------------------ staging
def test_model_config_gets_legacy_rope_keys():
    conf = {
        "model_type": "gpt_neox",
        "dtype": "float32",
        "rope_parameters": {
            "partial_rotary_factor": 0.5,
            "rope_theta": 50.0,
            "rope_type": "default",
        },
    }
    new, added = legacy_model_config(conf)
    assert new["rotary_pct"] == 0.5 and new["rotary_emb_base"] == 50.0
    assert new["rope_theta"] == 50.0 and new["torch_dtype"] == "float32"
    assert "rope_scaling" not in new
    assert set(added) == {
        "torch_dtype",
        "rope_theta",
        "partial_rotary_factor",
        "rotary_pct",
        "rotary_emb_base",
    }
    assert conf["model_type"] == "gpt_neox" and "rotary_pct" not in conf


def test_model_config_llama3_scaling_and_untouched_legacy():
    rope = {
        "rope_theta": 500000.0,
        "rope_type": "llama3",
        "factor": 8.0,
        "original_max_position_embeddings": 8192,
    }
    new, _ = legacy_model_config({"model_type": "llama", "rope_parameters": rope})
    assert new["rope_theta"] == 500000.0
    assert new["rope_scaling"] == {
        "rope_type": "llama3",
        "factor": 8.0,
        "original_max_position_embeddings": 8192,
    }
    assert "rotary_pct" not in new
    legacy = {"model_type": "llama", "rope_theta": 1e4, "torch_dtype": "bfloat16"}
    assert legacy_model_config(legacy) == (legacy, [])
    with pytest.raises(ValueError, match="per layer type"):
        legacy_model_config(
            {"rope_parameters": {"full_attention": {"rope_theta": 1e6}}}
        )


def test_tokenizer_config_from_transformers5():
    conf = {
        "backend": "tokenizers",
        "tokenizer_class": "TokenizersBackend",
        "extra_special_tokens": ["<|user|>", "<|assistant|>"],
        "pad_token": "<|pad|>",
    }
    new, changed = legacy_tokenizer_config(conf)
    assert new == {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_input_names": ["input_ids", "attention_mask"],
        "additional_special_tokens": ["<|user|>", "<|assistant|>"],
        "pad_token": "<|pad|>",
    }
    assert changed
    legacy = {"tokenizer_class": "LlamaTokenizerFast", "extra_special_tokens": {}}
    assert legacy_tokenizer_config(legacy) == (legacy, [])


def test_stage_folder_links_files_and_rewrites_configs(tmp_path):
    src = tmp_path / "rm"
    src.mkdir()
    (src / "model.safetensors").write_bytes(b"weights")
    (src / "config.json").write_text(json.dumps({"dtype": "float32"}))
    (src / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "LlamaTokenizerFast"})
    )
    changes = stage_folder(src, tmp_path / "run" / "model")
    dst = tmp_path / "run" / "model"
    assert changes == {"config.json": ["torch_dtype"]}
    assert (dst / "model.safetensors").is_symlink()
    assert (dst / "tokenizer_config.json").is_symlink()
    assert not (dst / "config.json").is_symlink()
    assert json.loads((dst / "config.json").read_text())["torch_dtype"] == "float32"
    assert json.loads((src / "config.json").read_text()) == {"dtype": "float32"}


def test_local_dataset_layouts(tmp_path):
    hub = tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    for name in ("filtered-00000-of-00002.parquet", "filtered-00001-of-00002.parquet"):
        (hub / "data" / name).write_bytes(b"")
    (hub / "data" / "raw-00000-of-00001.parquet").write_bytes(b"")
    assert [p.name for p in local_split_files(hub, "filtered")] == [
        "filtered-00000-of-00002.parquet",
        "filtered-00001-of-00002.parquet",
    ]
    assert len(local_split_files(hub, "raw")) == 1
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "test.jsonl").write_text("")
    assert local_split_files(flat, "test") == [flat / "test.jsonl"]
    single = tmp_path / "pairs.json"
    single.write_text("[]")
    assert local_split_files(single, "ignored") == [single]
    with pytest.raises(FileNotFoundError, match="no data/dev-"):
        local_split_files(hub, "dev")
    (flat / "mixed.jsonl").write_text("")
    (flat / "data").mkdir()
    (flat / "data" / "mixed-00000-of-00002.jsonl").write_text("")
    (flat / "data" / "mixed-00001-of-00002.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="share one"):
        local_split_files(flat, "mixed")

    run = tmp_path / "run"
    links = stage_dataset(hub, "raw", run)
    link = run / CORE_DATASET / "data" / "filtered-00000-of-00001.parquet"
    assert link.is_symlink()
    assert link.resolve() == (hub / "data" / "raw-00000-of-00001.parquet").resolve()
    assert links == {
        f"{CORE_DATASET}/data/filtered-00000-of-00001.parquet": str(link.resolve())
    }


# --------------------------------------- orchestration with a fake package
# A stand-in for `python -m rewardbench.rewardbench`: reads the staged files,
# scores a pair by the lengths of its replies and writes what 0.1.4 writes.
FAKE_MAIN = r"""
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
opt = lambda k: args[args.index(k) + 1] if k in args else None
model, out = opt("--model"), opt("--output_dir")
if os.environ.get("FAKE_RB_FAIL"):
    print("AssertionError: Torch not compiled with CUDA enabled", flush=True)
    sys.exit(3)
files = sorted(Path("allenai/reward-bench/data").glob("filtered-*"))
rows = [json.loads(x) for f in files for x in f.read_text().splitlines() if x]
Path(os.environ["FAKE_RB_REPORT"]).write_text(json.dumps({
    "argv": args,
    "cwd_has_model": Path(model).is_dir(),
    "config": json.loads((Path(model) / "config.json").read_text()),
    "data_files": [f.name for f in files],
    "offline": [os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")],
}))
out_rows, grouped = [], {}
for r in rows:
    c, x = float(len(r["chosen"])), float(len(r["rejected"]))
    out_rows.append({"prompt": r["prompt"], "results": int(c > x),
                     "scores_chosen": c, "scores_rejected": x,
                     "subset": r["subset"], "id": r["id"]})
    grouped.setdefault(r["subset"], []).append(int(c > x))
os.makedirs(os.path.dirname(os.path.join(out, model + "_outputs.jsonl")),
            exist_ok=True)
with open(os.path.join(out, f"{model}_outputs.jsonl"), "w") as fh:
    fh.writelines(json.dumps(r) + "\n" for r in out_rows)
print("RM inference step 1/1", flush=True)
res = [r["results"] for r in out_rows]
with open(out + model + ".json", "w") as fh:
    json.dump({"accuracy": sum(res) / len(res), "num_prompts": len(res),
               "model": model, "ref_model": None, "tokenizer": model,
               "chat_template": None,
               "extra_results": {k: sum(v) / len(v) for k, v in grouped.items()}},
              fh)
"""


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    root = tmp_path / "fakepkg"
    (root / "rewardbench").mkdir(parents=True)
    (root / "rewardbench" / "__init__.py").write_text("")
    (root / "rewardbench" / "rewardbench.py").write_text(FAKE_MAIN)
    meta = root / "rewardbench-9.9.9.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: rewardbench\nVersion: 9.9.9\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(root))
    monkeypatch.setenv("FAKE_RB_REPORT", str(tmp_path / "report.json"))
    return tmp_path / "report.json"


def rb_rows(chosen_wins):
    """One pair per core subset; the chosen reply is longer where it should win."""
    return [
        {
            "prompt": f"question {i}",
            "chosen": "a longer good reply" if win else "no",
            "rejected": "meh",
            "subset": s,
            "id": i,
        }
        for i, (s, win) in enumerate(zip(CORE, chosen_wins, strict=True))
    ]


@pytest.fixture
def fake_model(tmp_path):
    model = tmp_path / "models" / "rm"
    model.mkdir(parents=True)
    (model / "config.json").write_text(
        json.dumps({"model_type": "gpt_neox", "rope_parameters": {"rope_theta": 5.0}})
    )
    return model


def test_stage_runs_the_package_in_a_staged_folder(fake_package, fake_model, tmp_path):
    wins = [i % 3 != 0 for i in range(len(CORE))]
    data = tmp_path / "rb.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rb_rows(wins)))
    out = tmp_path / "eval" / "rm-x-seed0" / "rewardbench-official.json"
    cfg = EvalRewardBenchConfig(dataset=str(data), python=sys.executable)
    before = sorted(p.name for p in fake_model.parent.iterdir())
    res = eval_rewardbench(str(fake_model), out, model_id="rm-x-seed0", cfg=cfg)

    report = json.loads(fake_package.read_text())
    assert report["argv"][:2] == ["--model", "model"]
    assert report["cwd_has_model"]
    assert report["config"]["rope_theta"] == 5.0  # staged with legacy keys
    assert report["config"]["rotary_emb_base"] == 5.0
    assert report["data_files"] == ["filtered-00000-of-00001.jsonl"]
    assert report["offline"] == ["1", "1"]  # all local: nothing may be fetched

    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # run dir gone
    assert sorted(p.name for p in fake_model.parent.iterdir()) == before
    assert res["package_version"] == "9.9.9"
    assert res["command"][:3] == [sys.executable, "-m", "rewardbench.rewardbench"]
    assert res["staged"]["model"]["source"] == str(fake_model.resolve())
    assert res["staged"]["model"]["rewritten"]["config.json"]
    assert res["benchmark"]["name"] == "rewardbench-official"
    assert res["model_id"] == "rm-x-seed0" and res["dataset"] == str(data)
    acc = {s: float(w) for s, w in zip(CORE, wins, strict=True)}
    assert res["subsets"] == {
        s: {"n": 1, "n_correct": int(w), "accuracy": float(w)}
        for s, w in zip(CORE, wins, strict=True)
    }
    want = official_sections(acc)
    assert {k: v["accuracy"] for k, v in res["sections"].items()} == pytest.approx(want)
    assert res["score"] == pytest.approx(sum(want.values()) / 4)


def test_stage_output_feeds_report_eval(fake_package, fake_model, tmp_path):
    from pipelines.report_eval import eval_rows

    data = tmp_path / "rb.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rb_rows([True] * 23)))
    out = tmp_path / "o.json"
    cfg = EvalRewardBenchConfig(dataset=str(data), python=sys.executable)
    res = eval_rewardbench(str(fake_model), out, model_id="rm-x-seed0", cfg=cfg)
    rows = eval_rows(res)
    assert {r["level"] for r in rows} == {"overall", "section", "subset"}
    assert all(r["benchmark"] == "rewardbench-official" for r in rows)
    assert {r["subset"] for r in rows if r["level"] == "overall"} == {
        "ALL",
        "leaderboard_2024",
        "sections_mean",
    }


def test_failed_run_raises_with_its_log_and_writes_nothing(
    fake_package, fake_model, tmp_path, monkeypatch
):
    data = tmp_path / "rb.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rb_rows([True] * 23)))
    out = tmp_path / "eval" / "o.json"
    monkeypatch.setenv("FAKE_RB_FAIL", "1")
    cfg = EvalRewardBenchConfig(dataset=str(data), python=sys.executable)
    with pytest.raises(RuntimeError, match="exited with code 3") as err:
        eval_rewardbench(str(fake_model), out, model_id="x", cfg=cfg)
    assert "Torch not compiled with CUDA" in str(err.value)
    assert "needs a GPU" in str(err.value)
    assert list(out.parent.iterdir()) == []


def test_missing_package_or_dataset_is_a_clear_error(fake_model, tmp_path):
    cfg = EvalRewardBenchConfig(dataset=str(tmp_path), python=sys.executable)
    with pytest.raises(RuntimeError, match="has no rewardbench package"):
        eval_rewardbench(str(fake_model), tmp_path / "o.json", model_id="x", cfg=cfg)
    cfg = EvalRewardBenchConfig(dataset="someone/other-set", python=sys.executable)
    with pytest.raises(ValueError, match="neither allenai/reward-bench"):
        eval_rewardbench(str(fake_model), tmp_path / "o.json", model_id="x", cfg=cfg)


# ------------------------------------------- the real package, end to end
# Needs an interpreter with the official package, kept apart from this venv:
#   python3 -m venv /tmp/rbvenv
#   /tmp/rbvenv/bin/pip install torch==2.13.0 rewardbench==0.1.4 "setuptools<81"
#   RMFLOW_REWARDBENCH_PYTHON=/tmp/rbvenv/bin/python pytest ...
RB_PYTHON = os.environ.get("RMFLOW_REWARDBENCH_PYTHON", "")
# rewardbench/models/pipeline.py sends inputs to "cuda" unconditionally; on a
# CPU-only machine this test (only) redirects that call to the CPU.
CPU_SHIM = """
import torch
if not torch.cuda.is_available():
    from transformers import tokenization_utils_base as _t
    _to = _t.BatchEncoding.to
    def _cpu_to(self, device, *args, **kwargs):
        if str(device).startswith("cuda"):
            device = "cpu"
        return _to(self, device, *args, **kwargs)
    _t.BatchEncoding.to = _cpu_to
"""


@pytest.fixture(scope="module")
def rb_python():
    if not RB_PYTHON:
        pytest.skip(
            "official rewardbench not available: set RMFLOW_REWARDBENCH_PYTHON to"
            " a python with rewardbench==0.1.4 (see the comment above this test)"
        )
    probe = subprocess.run(
        [
            RB_PYTHON,
            "-c",
            "import importlib.metadata as m; print(m.version('rewardbench'))",
        ],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"{RB_PYTHON} cannot import rewardbench: {probe.stderr[-300:]}")
    return RB_PYTHON


def run_official(python, code, payload):
    res = subprocess.run(
        [python, "-c", code],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def real_rm(rb_python, tmp_path_factory):
    """A random GPT-NeoX RM with non-default RoPE, saved by transformers 5."""
    torch = pytest.importorskip("torch")
    from pipelines.common.modeling import (
        TinyArch,
        init_tiny_causal_lm,
        load_reward_model,
        train_tokenizer,
    )

    words = "alpha beta gamma delta answer question code math write story poem list"
    tok = train_tokenizer(
        [f"{words} {i} {words[::-1]}." for i in range(100)], vocab_size=300
    )
    arch = TinyArch(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        rotary_pct=0.5,
    )
    lm = init_tiny_causal_lm(tok, seed=0, arch=arch)
    lm.config.rope_parameters["rope_theta"] = 50.0  # 4.51 would default to 1e4
    with torch.no_grad():  # make attention (and so RoPE) move the scores
        for layer in lm.gpt_neox.layers:
            layer.attention.query_key_value.weight.mul_(30)
    lm_dir = tmp_path_factory.mktemp("real_lm")
    lm.save_pretrained(lm_dir)
    tok.save_pretrained(lm_dir)
    torch.manual_seed(0)
    rm = load_reward_model(lm_dir)
    with torch.no_grad():
        rm.score.weight.mul_(50)
    path = tmp_path_factory.mktemp("real_rm")
    rm.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_real_package_end_to_end_offline(rb_python, real_rm, tmp_path, monkeypatch):
    python = rb_python
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(CPU_SHIM)
    monkeypatch.setenv("PYTHONPATH", str(shim))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    rows = []
    for s in CORE:
        for j in range(2):
            i = len(rows)
            rows.append(
                {
                    "prompt": f"question {i} about {s.split('-')[0]}",
                    "chosen": f"the answer is alpha {i} gamma{'!' if j else '.'}",
                    "rejected": f"beta {i} delta",
                    "subset": s,
                    "id": i,
                }
            )
    data = tmp_path / "data" / "filtered-00000-of-00001.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval" / "rm-real-seed0" / "rewardbench-official.json"
    cfg = EvalRewardBenchConfig(
        dataset=str(tmp_path), python=python, torch_dtype="float32", batch_size=4
    )
    res = eval_rewardbench(str(real_rm), out, model_id="rm-real-seed0", cfg=cfg)

    assert res["package_version"] == "0.1.4"
    assert res["versions"]["transformers"] == "4.51.0"
    assert res["offline"] is True
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
    assert not list(real_rm.parent.glob("*_outputs.jsonl"))

    # per-pair scores: the official pipeline agrees with our own scorer, which
    # it only does when the staged config carries the real RoPE settings
    from pipelines.common.scoring import ScorerConfig
    from pipelines.eval_rm import EvalConfig, eval_rm
    from pipelines.score_model import score_model

    spec = {"kind": "standard", "path": str(data)}
    store = tmp_path / "scores.parquet"
    score_model(
        str(real_rm),
        store,
        model_id="rm-real-seed0",
        cfg=ScorerConfig(batch_size=4, device="cpu"),
        benchmarks={"rb": spec},
    )
    ours = eval_rm(
        store, spec, tmp_path / "ours.json", cfg=EvalConfig(), benchmark_name="rb"
    )
    theirs = {str(p["id"]): (p["chosen"], p["rejected"]) for p in res["pairs"]}
    assert len(theirs) == len(rows)
    for p in ours["pairs"]:
        assert theirs[p["id"]] == pytest.approx(
            (p["chosen"], p["rejected"]), rel=1e-4, abs=1e-4
        )

    # subsets: plain Python over the official per-pair scores
    by_subset = {}
    for p in res["pairs"]:
        by_subset.setdefault(p["subset"], []).append(p["chosen"] > p["rejected"])
    acc = {s: sum(v) / len(v) for s, v in by_subset.items()}
    assert {s: v["accuracy"] for s, v in res["subsets"].items()} == acc
    assert 0.0 < res["accuracy"] < 1.0  # a mix of right and wrong pairs

    # sections: the copy above, and the installed package's own functions
    assert {k: v["accuracy"] for k, v in res["sections"].items()} == pytest.approx(
        official_sections(acc)
    )
    installed = run_official(
        python,
        "import json, sys\n"
        "from rewardbench.constants import EXAMPLE_COUNTS, SUBSET_MAPPING\n"
        "from rewardbench.utils import calculate_scores_per_section\n"
        "acc = json.load(sys.stdin)\n"
        "print(json.dumps({'counts': EXAMPLE_COUNTS, 'mapping': SUBSET_MAPPING,"
        " 'sections': calculate_scores_per_section(EXAMPLE_COUNTS,"
        " SUBSET_MAPPING, acc)}))",
        acc,
    )
    assert installed["counts"] == OFFICIAL_EXAMPLE_COUNTS
    assert installed["mapping"] == OFFICIAL_SUBSET_MAPPING
    assert {k: v["accuracy"] for k, v in res["sections"].items()} == pytest.approx(
        installed["sections"]
    )
