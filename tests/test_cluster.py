"""The cluster path without a cluster: the Slurm profile, the cluster preset,
per-rule resources and the multi-GPU launcher, checked through dry runs.

This machine has no conda (and reaches no conda channel), while the profile
asks for ``software-deployment-method: conda``; Snakemake runs ``conda info``
even for a dry run. The dry runs therefore add ``--sdm env-modules``: our rules
name no environment modules, so jobs and DAG are the ones the conda run builds.
The real Slurm run is tests/test_slurm.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, TINY_CONFIG, run_snakemake
from tests.test_workflow import _jobs

PROFILE = ROOT / "profiles" / "slurm"
NO_CONDA = ("--sdm", "env-modules")
GPU_RULES = {
    "train_ppo",
    "extract_embeddings",
    "train_gating",
    "train_sft",
    "train_rm",
    "train_gold",
    "score_model",
    "eval_rewardbench",
    "generate_candidates",
    "label_gold",
    "train_transfer",
    "train_active",
    "select_active",
}
# Torch-free and seconds long: run by Snakemake itself, never queued on Slurm.
LOCAL_RULES = ("all", "report_", "bon_", "eval_rm")


def _ok(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _job_blocks(out: str) -> list[tuple[str, str]]:
    """(rule, block text) of every job a dry run prints."""
    parts = re.split(r"\n(?=(?:local)?rule \w+:\n)", out)
    blocks = []
    for part in parts:
        match = re.match(r"(?:local)?rule (\w+):\n", part)
        if match:
            blocks.append((match.group(1), part))
    return blocks


def _resources(block: str) -> dict[str, str]:
    match = re.search(r"^\s+resources: (.*)$", block, re.MULTILINE)
    assert match, block
    return dict(item.split("=", 1) for item in match.group(1).split(", "))


def test_profile_sets_what_a_cluster_run_needs():
    cfg = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert cfg["executor"] == "slurm"
    assert cfg["software-deployment-method"] == "conda"
    assert cfg["retries"] >= 1 and cfg["rerun-incomplete"] is True
    assert cfg["latency-wait"] >= 30 and cfg["jobs"] >= 1
    assert {"slurm_partition", "mem_mb", "runtime"} <= set(cfg["default-resources"])
    # GPU partition for exactly the GPU-capable rules; no GPU counts here (they
    # come from the config's compute section)
    assert set(cfg["set-resources"]) == GPU_RULES
    for spec in cfg["set-resources"].values():
        assert "gpu" not in spec
    assert not (ROOT / "profiles" / "default").exists()  # applied silently


def in_repo(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m snakemake -n ...`` from the repo root, as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cluster_preset_dag_builds_offline_with_gpu_resources():
    """`snakemake --profile profiles/slurm -n all --config preset=cluster`."""
    out = _ok(
        in_repo(
            "--profile",
            "profiles/slurm",
            "all",
            "--config",
            "preset=cluster",
            *NO_CONDA,
        )
    )
    jobs = _jobs(out)
    preset = yaml.safe_load((ROOT / "presets" / "cluster.yaml").read_text())
    base = yaml.safe_load((ROOT / "workflow_config.yaml").read_text())
    n_seeds = len(preset["rm"]["seeds"])
    # transfer and active learning: the preset's sizes over the default
    # config's directions and strategies
    t = {**base["transfer"], **preset["transfer"]}
    a = {**base["active"], **preset["active"]}
    directions = sum(s != g for s in t["sources"] for g in t["targets"])
    transfer_runs = directions * len(t["sizes"]) * len(t["seeds"]) + len(t["targets"])
    assert jobs["train_transfer"] == transfer_runs == 4 * 5 + 2
    active_runs = (
        len(a["domains"]) * len(a["strategies"]) * len(a["seeds"]) * a["iterations"]
    )
    assert jobs["train_active"] == jobs["select_active"] == active_runs == 36
    # the default config's two trainsets, and the source RMs of the other
    # transfer sources (math, code: one seed each)
    sources = [s for s in t["sources"] if s not in base["rm"]["trainsets"]]
    assert jobs["train_rm"] == 2 * n_seeds + len(sources) == 12
    assert jobs["merge_dogerm"] == 2 * len(preset["merge"]["weights"]) == 42
    assert "train_tokenizer" not in jobs  # hub tokenizer, no tiny BPE
    # one GPU job scores a model on everything: every RM and every merge once
    # ... the ArmoRM and its backbone (the hub BT RM it is compared with), and
    # every transfer and active-learning model
    assert jobs["score_model"] == (
        jobs["train_rm"] + jobs["merge_dogerm"] + 2 + transfer_runs + active_runs
    )
    # 3 test splits and RewardBench each; the backbone on the test splits only;
    # transfer sources, transferred and active models on their target's split
    studied = 2 * n_seeds + jobs["merge_dogerm"] + 1
    assert jobs["eval_rm"] == (
        studied * 4 + 3 + len(sources) + transfer_runs + active_runs
    )
    # PPO: every objective of the default config for every seed of the preset
    assert jobs["train_ppo"] == 4 * len(preset["ppo"]["seeds"])
    # ArmoRM: every data set (multi-objective, preference, reference and the
    # three test splits) embedded in armo.shards parallel GPU jobs
    assert jobs["extract_embeddings"] == 6 * preset["armo"]["shards"] == 48
    assert "--backbone sfairXC/FsfairX-LLaMA3-RM-v0.1" in out
    assert "shard7-of-8.safetensors" in out
    seen = set()
    for rule, block in _job_blocks(out):
        res = _resources(block)
        seen.add(rule)
        if rule.startswith(LOCAL_RULES):
            continue  # the executor runs them in place (test below)
        if rule in GPU_RULES:
            assert res["slurm_partition"] == "gpu", (rule, res)
            assert int(res["gpu"]) >= 1, (rule, res)
        else:
            assert res["slurm_partition"] == "cpu", (rule, res)
            assert "gpu" not in res, (rule, res)
    assert {"train_rm", "train_sft", "build_prefs", "merge_dogerm"} <= seen
    # hub models reach the jobs as params, never as (missing) local inputs
    assert "--base EleutherAI/pythia-1.4b-deduped" in out
    # the 4-GPU SFT job is launched with one process per GPU
    assert (
        "accelerate launch --config_file accelerate/ddp.yaml --num_machines 1"
        " --num_processes 4 -m pipelines.train_sft" in out
    )


def test_torch_free_rules_are_local():
    """eval_rm reads a score store (no torch, no model): Snakemake runs it in
    place, with the report and best-of-n rules, instead of queueing 200+ jobs."""
    text = "\n".join(p.read_text() for p in sorted((ROOT / "rules").glob("*.smk")))
    blocks = dict(re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)+)", text, re.MULTILINE))
    local = {name for name, body in blocks.items() if "localrule: True" in body}
    assert {"eval_rm", "bon_single", "bon_ensemble", "report_eval"} <= local
    assert not local & GPU_RULES
    assert "score_model" in blocks and "score_candidates" not in blocks


def test_preset_is_layered_under_configfile_and_config(snakemake_workdir, tmp_path):
    """workflow_config.yaml < presets/<preset>.yaml < --configfile < --config."""
    user = _write(tmp_path / "user.yaml", {"rm": {"seeds": [0, 7]}})
    proc = run_snakemake(
        "-n",
        "-p",
        "all_eval",
        *NO_CONDA,
        "--config",
        "preset=cluster",
        workdir=snakemake_workdir,
        configfile=user,
    )
    out = _ok(proc)
    assert _jobs(out)["train_rm"] == 4  # the user's two seeds x two trainsets
    assert "results/models/rm/general/seed7" in out
    assert "--learning-rate 1e-05" in out  # the preset's RM learning rate


@pytest.mark.parametrize(
    ("gpus", "strategy", "expected"),
    [
        (0, "ddp", "OMP_NUM_THREADS=2 python -m pipelines.train_rm"),
        (1, "ddp", "OMP_NUM_THREADS=2 python -m pipelines.train_rm"),
        (
            2,
            "zero3",
            "accelerate launch --config_file accelerate/zero3.yaml"
            " --num_machines 1 --num_processes 2 -m pipelines.train_rm",
        ),
    ],
)
def test_training_launch_follows_gpus_and_strategy(
    snakemake_workdir, tmp_path, gpus, strategy, expected
):
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["compute"] = {"strategy": strategy, "train_rm": {"gpu": gpus}}
    proc = run_snakemake(
        "-n",
        "-p",
        "-c2",  # a dry run caps threads at --cores (default 1)
        "results/models/rm/general-math/seed0",
        workdir=snakemake_workdir,
        configfile=_write(tmp_path / "c.yaml", cfg),
    )
    out = _ok(proc)
    assert expected in out
    if gpus >= 2:
        assert (ROOT / f"accelerate/{strategy}.yaml").is_file()


def test_profile_set_resources_override_reaches_the_launcher(snakemake_workdir):
    """A site's --set-resources train_rm:gpu=4 launches 4 processes."""
    proc = run_snakemake(
        "-n",
        "-p",
        "results/models/rm/general-math/seed0",
        "--set-resources",
        "train_rm:gpu=4",
        workdir=snakemake_workdir,
    )
    assert "--num_processes 4 -m pipelines.train_rm" in _ok(proc)


def test_gpu_model_is_sent_only_with_gpus(snakemake_workdir, tmp_path):
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["compute"] = {
        "train_rm": {"gpu": 2, "gpu_model": "a100"},
        "score_model": {"gpu": 0, "gpu_model": "a100"},
    }
    proc = run_snakemake(
        "-n",
        "results/eval/rm-general-math-seed0/math-test.json",
        workdir=snakemake_workdir,
        configfile=_write(tmp_path / "c.yaml", cfg),
    )
    blocks = dict(_job_blocks(_ok(proc)))
    train = _resources(blocks["train_rm"])
    assert (train["gpu"], train["gpu_model"]) == ("2", "a100")
    scoring = _resources(blocks["score_model"])
    assert scoring["gpu"] == "0" and "gpu_model" not in scoring


def test_cpu_rules_cannot_ask_for_gpus(snakemake_workdir, tmp_path):
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["compute"] = {"build_prefs": {"gpu": 1}}
    proc = run_snakemake(
        "-n",
        workdir=snakemake_workdir,
        configfile=_write(tmp_path / "c.yaml", cfg),
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "'gpu' was unexpected" in out and "build_prefs" in out


def test_dogerm_llama2_pair_merges_hub_models(snakemake_workdir, tmp_path):
    """merge.rm_model / lm_models: hub ids reach merge_dogerm as --rm/--lm."""
    pair = {
        "preset": "cluster",
        "merge": {
            "rm_model": "miulab/llama2-7b-ultrafeedback-rm",
            "lm_models": {"code": "miulab/llama2-7b-magicoder-evol-instruct"},
            "domains": ["code"],
            "bon_domains": [],
            "weights": [0.0, 0.5],
        },
    }
    proc = run_snakemake(
        "-n",
        "-p",
        "all_dogerm",
        *NO_CONDA,
        workdir=snakemake_workdir,
        configfile=_write(tmp_path / "pair.yaml", pair),
    )
    out = _ok(proc)
    assert _jobs(out)["merge_dogerm"] == 2
    assert (
        "--rm miulab/llama2-7b-ultrafeedback-rm"
        " --lm miulab/llama2-7b-magicoder-evol-instruct" in out
    )
    assert (
        "results/models/merged/ext-miulab-llama2-7b-ultrafeedback-rm__"
        "ext-miulab-llama2-7b-magicoder-evol-instruct/w0.5" in out
    )


def test_profile_by_name_resolves_after_the_documented_link(tmp_path):
    """`snakemake --profile slurm all_dogerm`, from the repo root.

    Snakemake looks a profile name up in the working directory and the user's
    config directories ($XDG_CONFIG_HOME/snakemake, /etc/xdg/snakemake). The
    README's one-line step links profiles/slurm there; this runs the same
    command with a fresh config home, before and after the link.
    """
    config_home = tmp_path / "config"
    env = {"XDG_CONFIG_HOME": str(config_home), "HOME": str(tmp_path)}

    def run(*extra: str) -> subprocess.CompletedProcess:
        return in_repo("--profile", "slurm", "all_dogerm", *extra, env=env)

    before = run(*NO_CONDA)
    assert before.returncode != 0
    assert "profile" in (before.stdout + before.stderr).lower()

    link = config_home / "snakemake" / "slurm"
    link.parent.mkdir(parents=True)
    link.symlink_to(PROFILE)  # README: ln -sfn "$PWD/profiles/slurm" ...
    # As written: the profile is found and asks for conda, absent here.
    as_written = run()
    assert as_written.returncode != 0
    assert "conda" in (as_written.stdout + as_written.stderr)
    # The same with the deployment method swapped: the DAG resolves and every
    # GPU rule is routed to the profile's GPU partition.
    out = _ok(run(*NO_CONDA))
    jobs = _jobs(out)
    assert jobs["merge_dogerm"] >= 1 and jobs["report_dogerm"] == 1
    for rule, block in _job_blocks(out):
        if rule in GPU_RULES:
            assert _resources(block)["slurm_partition"] == "gpu"


def test_official_rewardbench_runs_only_when_enabled(snakemake_workdir, tmp_path):
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    off = _ok(run_snakemake("-n", "all", workdir=snakemake_workdir))
    assert "eval_rewardbench" not in _jobs(off)  # offline default: skipped

    cfg["eval_rewardbench"] = {"enabled": True, "models": ["rms"]}
    on = _ok(
        run_snakemake(
            "-n",
            "-p",
            "all_eval",
            workdir=snakemake_workdir,
            configfile=_write(tmp_path / "on.yaml", cfg),
        )
    )
    n_rms = len(cfg["rm"]["seeds"]) * len(cfg["rm"]["trainsets"])
    assert _jobs(on)["eval_rewardbench"] == n_rms
    assert "python -m pipelines.eval_rewardbench" in on
    assert "--out results/eval/rm-general-math-seed0/rewardbench-official.json" in on
    official = [ln for ln in on.splitlines() if "pipelines.eval_rewardbench" in ln]
    assert len(official) == n_rms
    assert all("--xstest-weights corrected" in ln for ln in official)

    cfg["eval"]["xstest_weights"] = "legacy"  # the official rule honours it too
    legacy = _ok(
        run_snakemake(
            "-n",
            "-p",
            "all_eval",
            workdir=snakemake_workdir,
            configfile=_write(tmp_path / "legacy.yaml", cfg),
        )
    )
    official = [ln for ln in legacy.splitlines() if "pipelines.eval_rewardbench" in ln]
    assert len(official) == n_rms
    assert all("--xstest-weights legacy" in ln for ln in official)

    cfg["eval"]["benchmarks"] = {
        "rewardbench-official": {"kind": "standard", "path": "x.jsonl"}
    }
    clash = run_snakemake(
        "-n", workdir=snakemake_workdir, configfile=_write(tmp_path / "c.yaml", cfg)
    )
    assert clash.returncode != 0
    assert "is taken by the eval_rewardbench rule" in clash.stdout + clash.stderr
