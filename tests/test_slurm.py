"""The workflow through profiles/slurm: a dry run, and a real one-node Slurm.

The real run starts Slurm on this host with tests/slurm/local_slurm.sh (root;
it apt-installs slurm-wlm and munge when missing) and stops it afterwards.
This machine has no conda and no slurmdbd, so the profile is used as written
plus the overrides in ``SLURM_OVERRIDES``.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from pipelines.common.records import read_pairs

from .conftest import ROOT, TINY_CONFIG, run_snakemake
from .test_cluster import NO_CONDA, PROFILE, _job_blocks, _resources
from .test_workflow import _jobs, only_domain

SCRIPT = ROOT / "tests" / "slurm" / "local_slurm.sh"
TARGET = "results/eval/rm-general-seed0/general-test.json"
# rule -> (Slurm partition the profile sends it to, its log). The RM is a
# best-of-n ensemble member, so its one scoring job also scores candidates.
RULES = {
    "build_prefs": ("cpu", "logs/build_prefs/general.log"),
    "train_tokenizer": ("cpu", "logs/train_tokenizer/train_tokenizer.log"),
    "train_sft": ("gpu", "logs/train_sft/general.log"),
    "train_rm": ("gpu", "logs/train_rm/general/seed0.log"),
    "generate_candidates": ("gpu", "logs/generate_candidates/general.log"),
    "score_model": ("gpu", "logs/score_model/rm-general-seed0.log"),
}
# rule -> its log: seconds-long torch-free rules run on the submitting node
LOCAL_RULES = {"eval_rm": "logs/eval_rm/rm-general-seed0/general-test.log"}
SLURM_OVERRIDES = (
    # no conda here: our rules name no env modules, so every job runs in this
    # venv (without --sdm, the profile's conda needs `conda` even for -n)
    *NO_CONDA,
    # no slurmdbd, so no sacct; MinJobAge=3600 keeps finished jobs in squeue
    "--slurm-status-command",
    "squeue",
    # no accounts without slurmdbd (a no-op in plugin 2.8.0, which then fails
    # to guess one with sacct and submits without -A)
    "--slurm-no-account",
    # the first status check after 2 s, not 40 s: 5 jobs in a row
    "--slurm-init-seconds-before-status-checks",
    "2",
    # keep each job's Slurm log to check what ran inside it
    "--slurm-keep-successful-logs",
)
SUBMITTED = re.compile(
    r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\."
)


def one_rm_config(path: Path) -> Path:
    """The tiny config cut down to general data, one RM seed and one SFT epoch."""
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["data"]["domains"] = ["general"]
    only_domain(cfg, "general")
    cfg["rm"]["seeds"] = [0]
    cfg["sft"]["epochs"] = 1
    # the verifier as gold: the candidates the RM scores need no gold RM (the
    # gold chain is tested in tests/test_workflow.py)
    cfg["gold"]["kind"] = "verifier"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_slurm_profile_dry_run_resolves(snakemake_workdir, tmp_path):
    """Needs no Slurm: the profile parses and sends each rule to its partition."""
    res = run_snakemake(
        "--profile",
        str(PROFILE),
        *NO_CONDA,
        "-n",
        TARGET,
        workdir=snakemake_workdir,
        configfile=one_rm_config(tmp_path / "c.yaml"),
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert _jobs(res.stdout) == {rule: 1 for rule in [*RULES, *LOCAL_RULES]}
    blocks = dict(_job_blocks(res.stdout))
    for rule, (partition, log) in RULES.items():
        assert _resources(blocks[rule])["slurm_partition"] == partition, rule
        assert f"log: {log}" in blocks[rule]
    for rule, log in LOCAL_RULES.items():  # local rules: in the DAG, no partition
        assert f"log: {log}" in blocks[rule]


@pytest.fixture(scope="module")
def local_slurm(tmp_path_factory):
    """A one-node Slurm for this module; stopped at teardown whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("local Slurm: needs root (apt-get, daemons as SlurmUser=root)")
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        pytest.skip("local Slurm: sbatch not installed and no apt-get to install it")
    start = subprocess.run(
        ["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=900
    )
    try:
        if start.returncode in (3, 4):  # another Slurm runs; cannot install
            pytest.skip(f"local Slurm: {start.stderr.strip()}")
        if start.returncode != 0:
            pytest.skip(f"local Slurm did not start: {start.stderr.strip()[-1500:]}")
        conf = start.stdout.strip().rpartition("SLURM_CONF=")[2]
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SLURM_CONF", conf)
            # `python` in the rules' shell commands is this interpreter
            path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
            mp.setenv("PATH", path)
            yield conf
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], timeout=120, check=False)


def _squeue(run_id: str) -> dict[str, tuple[str, str, str]]:
    """Slurm job id -> (state, partition, comment) of one Snakemake run's jobs."""
    out = subprocess.run(
        ["squeue", "--states=all", "-h", "--name", run_id, "-o", "%i|%T|%P|%k"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split("|", 3) for line in out.splitlines() if line]
    return {jobid: (state, part, comment) for jobid, state, part, comment in rows}


@pytest.mark.slow
def test_one_rm_and_its_eval_through_slurm(
    local_slurm, snakemake_workdir, tmp_path, capsys
):
    work = snakemake_workdir
    res = run_snakemake(
        "--profile",
        str(PROFILE),
        *SLURM_OVERRIDES,
        TARGET,
        workdir=work,
        configfile=one_rm_config(tmp_path / "c.yaml"),
        timeout=600,
    )
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-6000:]

    result = json.loads((work / TARGET).read_text())
    assert result["model_id"] == "rm-general-seed0"
    assert result["n_pairs"] == len(
        read_pairs(work / "results/data/general/test.jsonl")
    )
    assert 0.0 <= result["accuracy"] <= 1.0

    # every job went through sbatch, once, and none ran locally
    submitted = {}
    for _, slurm_id, slurm_log in SUBMITTED.findall(log):
        rule = re.search(r"/rule_(\w+?)(?:/|$)", slurm_log).group(1)
        assert rule not in submitted, f"{rule} submitted twice:\n{log[-6000:]}"
        submitted[rule] = (slurm_id, work / slurm_log)
    assert set(submitted) == set(RULES), log[-6000:]
    local = set(re.findall(r"^localrule (\w+):", log, re.M))
    assert local == set(LOCAL_RULES), local
    for rule_log in LOCAL_RULES.values():
        assert (work / rule_log).stat().st_size > 0, rule_log
    with capsys.disabled():  # so the CI log shows the jobs going through sbatch
        lines = [m.group(0) for m in SUBMITTED.finditer(log)]
        sys.stdout.write("\n" + "\n".join(lines) + "\n")

    # Slurm's own record: each job completed, in the profile's partition
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    jobs = _squeue(run_id)
    for rule, (partition, rule_log) in RULES.items():
        slurm_id, slurm_log = submitted[rule]
        state, part, comment = jobs[slurm_id]
        assert (state, part) == ("COMPLETED", partition), (rule, jobs[slurm_id])
        assert comment.startswith(f"rule_{rule}"), comment
        # the job ran the rule inside Slurm (the jobstep's Snakemake logs there)
        inner = slurm_log.read_text()
        assert f"rule {rule}:" in inner, inner[-3000:]
        assert (work / rule_log).stat().st_size > 0, rule_log


def _wait_for(predicate, timeout: float, what: str, proc=None) -> None:
    """Poll ``predicate`` every 0.5 s; fail after ``timeout`` or if ``proc`` ends."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"Snakemake exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.5)


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.mark.slow
def test_requeued_train_rm_resumes_from_its_checkpoint(
    local_slurm, snakemake_workdir, tmp_path
):
    """Slurm preempts train_rm (scontrol requeue: SIGTERM, then the job reruns).

    The rerun resumes from the checkpoint the SIGTERM wrote and ends with the
    weights of an uninterrupted run of the same seed.
    """
    work = snakemake_workdir
    cfg = yaml.safe_load(one_rm_config(tmp_path / "c.yaml").read_text())
    # 10 steps, a checkpoint every 2: time to preempt after the first one
    cfg["rm"].update(epochs=2, checkpoint_every=2, log_every=1)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    model = "results/models/rm/general/seed0"
    # ancestors and the uninterrupted reference, locally
    res = run_snakemake("--cores", "2", model, workdir=work, configfile=cfg_path)
    assert res.returncode == 0, res.stderr[-3000:]
    reference = tmp_path / "reference"
    shutil.move(work / model, reference)
    rule_log = work / RULES["train_rm"][1]
    rule_log.unlink()

    out_path = tmp_path / "snakemake.log"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
    cmd += ["--directory", str(work), "--profile", str(PROFILE), *SLURM_OVERRIDES]
    cmd += [model, "--configfile", str(cfg_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with out_path.open("w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env, cwd=work
        )
    try:
        _wait_for(
            lambda: "INFO pipelines.common.training: checkpoint " in _text(rule_log),
            timeout=240,
            what="a checkpoint in the Slurm job",
            proc=proc,
        )
        slurm_id = SUBMITTED.search(out_path.read_text()).group(2)
        subprocess.run(["scontrol", "requeue", slurm_id], check=True)
        # the requeued job waits cred_expire (20 s) before it reruns
        _wait_for(
            lambda: "stopped by SIGTERM" in _text(rule_log),
            timeout=60,
            what="the SIGTERM checkpoint",
        )
        first_run = rule_log.read_text()
        proc.wait(timeout=420)
    finally:
        if proc.poll() is None:
            proc.terminate()  # Snakemake cancels its Slurm jobs
            proc.wait(timeout=60)
    log = out_path.read_text()
    assert proc.returncode == 0, log[-6000:]

    assert "checkpoint in results/checkpoints/train_rm/general/seed0" in first_run
    rerun = rule_log.read_text()
    assert "resumed from results/checkpoints/train_rm/general/seed0/step-" in rerun
    # Slurm reran the same job; Snakemake submitted it once
    assert [m[1] for m in SUBMITTED.findall(log)] == [slurm_id], log[-6000:]
    job = subprocess.run(
        ["scontrol", "show", "job", slurm_id], capture_output=True, text=True
    ).stdout
    assert "Restarts=1" in job and "JobState=COMPLETED" in job, job
    assert not (work / "results/checkpoints/train_rm/general/seed0").exists()

    done = load_file(work / model / "model.safetensors")
    expected = load_file(reference / "model.safetensors")
    assert done.keys() == expected.keys()
    for name, tensor in expected.items():
        diff = (done[name] - tensor).abs().max().item()
        assert diff <= 1e-6, (name, diff)
