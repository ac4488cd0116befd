"""A training job preempted the way Slurm preempts (SIGTERM to every process
of the job, SIGKILL after a grace period) is rerun by Snakemake, resumes from
its checkpoint and ends with the model an uninterrupted run of the same seed
gives. Runs the workflow for real (local executor, tiny preset).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import ROOT, TINY_CONFIG, run_snakemake
from tests.test_workflow import only_domain

RM = "results/models/rm/general/seed0"
CKPT = "results/checkpoints/train_rm/general/seed0"
LOG = "logs/train_rm/general/seed0.log"
GRACE_S = 5  # Slurm's KillWait is 30 s by default; the checkpoint takes < 1 s


def _config(tmp_path: Path) -> Path:
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    only_domain(cfg, "general")
    cfg["data"]["domains"] = ["general"]  # no code sandbox, one SFT model
    cfg["data"]["sizes"] = {"train": 160, "test": 16}
    # 160 pairs / batch 4 x 2 epochs = 80 steps; a checkpoint every 5 steps
    cfg["rm"].update(seeds=[0], epochs=2, batch_size=4, log_every=1, checkpoint_every=5)
    path = tmp_path / "preempt.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_preempted_training_job_resumes_to_the_same_model(snakemake_workdir, tmp_path):
    work, config = snakemake_workdir, _config(tmp_path)

    def smk(*args: str) -> subprocess.CompletedProcess:
        proc = run_snakemake("--cores", "2", *args, workdir=work, configfile=config)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        return proc

    # Uninterrupted reference run (also builds data, tokenizer and SFT once).
    smk(RM)
    reference = tmp_path / "reference"
    shutil.copytree(work / RM, reference)
    assert not (work / CKPT).exists()  # deleted after success

    # Rerun the training job and preempt it once a checkpoint is on disk.
    # the target first: --forcerun and --configfile take every name after them
    cmd = [sys.executable, "-m", "snakemake", RM, "-s", str(ROOT / "Snakefile")]
    cmd += ["--directory", str(work), "--cores", "2", "--forcerun", "train_rm"]
    cmd += ["--configfile", str(config)]
    job = subprocess.Popen(
        cmd,
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, like a Slurm job
    )
    try:
        deadline = time.monotonic() + 300
        while not list((work / CKPT).glob("step-*")):
            assert job.poll() is None, job.stdout.read()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
        os.killpg(job.pid, signal.SIGTERM)  # Slurm: SIGTERM to every process
        try:
            job.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            pass
    finally:
        try:
            os.killpg(job.pid, signal.SIGKILL)  # ... then SIGKILL after KillWait
        except ProcessLookupError:
            pass
        job.wait()
    interrupted_log = (work / LOG).read_text()
    assert "SIGTERM received" in interrupted_log, interrupted_log[-3000:]
    assert not (work / RM).exists()  # no half-written model
    steps = sorted((work / CKPT).glob("step-*"))
    assert len(steps) == 1, steps
    stopped_at = int(steps[0].name.split("-")[1])
    assert 0 < stopped_at < 80

    # Snakemake reruns it (the profiles set rerun-incomplete; on Slurm the
    # retry does the same); the job resumes from the checkpoint.
    smk("--rerun-incomplete", RM)
    log = (work / LOG).read_text()
    assert re.search(
        rf"resumed from \S+step-0*{stopped_at}: step {stopped_at}/80", log
    ), log[-3000:]
    assert not (work / CKPT).exists()

    ours, ref = _weights(work / RM), _weights(reference)
    assert ours.keys() == ref.keys()
    for name in ref:
        # same machine, same threads, same data order and RNG states: the
        # resumed run repeats the reference's arithmetic step for step
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-5, atol=1e-6)
