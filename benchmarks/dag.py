r"""DAG build time of a large cluster study (``snakemake -n``), goal under 5 s.

    python benchmarks/dag.py [--seeds 10] [--weights 21] [--repeats 3]

Builds, without running anything, the DAG of ``all`` on the cluster preset
through the Slurm profile with a large grid: 10 RM seeds (x 2 trainsets) x 3
domains (data, SFT LMs, best-of-n, and each domain LM merged) x 21 DogeRM merge
weights x 4 ensemble objectives (mean, WCO, UWO and one more UWO lambda); every
RM and merged model is evaluated on each domain's test split and RewardBench
(rmflow's evaluator and the official package). Reports the median wall time of the whole
``snakemake -n`` command (interpreter start, parsing, config validation, DAG,
job table) over ``--repeats`` runs and the number of jobs, with
``--quiet rules`` (the figure) and without it (every job printed as well).

Named peer, same run: Snakemake itself on a one-rule workflow with the same
number of jobs (one wildcard, no input functions): the floor of what any
workflow of that size costs, so the difference is what rmflow's rules and
input functions add. Also shown: the tiny default study.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DOMAINS = ("general", "math", "code")


def grid_config(seeds: int, weights: int) -> dict:
    """The large-grid overrides layered over the cluster preset."""
    step = 1.0 / (weights - 1)
    return {
        "preset": "cluster",
        "rm": {"seeds": list(range(seeds))},
        "bon": {"uwo_weights": [0.1]},  # mean, wco, uwo, uwo-0.1
        "merge": {
            "domains": list(DOMAINS),  # every domain LM merged, 21 weights each
            "bon_domains": list(DOMAINS),
            "weights": [round(i * step, 6) for i in range(weights)],
        },
    }


def dry_run(args: list[str], cwd: Path, quiet: bool = True) -> tuple[float, int]:
    """Wall seconds of ``snakemake -n`` and its job count.

    ``quiet``: ``--quiet rules``, the job table without one block per job
    (printing a job evaluates its resources and formats it, which costs as
    much as building the DAG).
    """
    cmd = [sys.executable, "-m", "snakemake", "-n", *args]
    if quiet:
        cmd += ["--quiet", "rules"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    match = re.search(r"^total\s+(\d+)", proc.stdout + proc.stderr, re.MULTILINE)
    if match is None:
        raise SystemExit(f"no job count in the output of {' '.join(cmd)}")
    return seconds, int(match.group(1))


def median_run(
    args: list[str], cwd: Path, repeats: int, quiet: bool = True
) -> tuple[float, int]:
    runs = [dry_run(args, cwd, quiet) for _ in range(repeats)]
    return statistics.median(s for s, _ in runs), runs[0][1]


def peer_workflow(folder: Path, n_jobs: int) -> None:
    """A one-rule Snakefile whose target list has ``n_jobs`` jobs."""
    (folder / "Snakefile").write_text(
        f"""rule all:
    input:
        expand("out/{{i}}.txt", i=range({n_jobs - 1})),


rule make:
    output:
        "out/{{i}}.txt",
    shell:
        "touch {{output}}"
""",
        encoding="utf-8",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--weights", type=int, default=21)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        grid = tmp / "grid.yaml"
        grid.write_text(yaml.safe_dump(grid_config(args.seeds, args.weights)))
        # --sdm env-modules: the profile asks for conda, which a machine
        # without conda cannot query; our rules name no modules, so the DAG
        # is the one the conda run builds.
        study = ["all", "--profile", "profiles/slurm", "--sdm", "env-modules"]
        seconds, jobs = median_run(
            [*study, "--configfile", str(grid)], REPO, args.repeats
        )
        tiny_s, tiny_jobs = median_run(["all"], REPO, args.repeats)
        peer_dir = tmp / "peer"
        peer_dir.mkdir()
        peer_workflow(peer_dir, jobs)
        peer_s, peer_jobs = median_run([], peer_dir, args.repeats)
        loud_s, _ = median_run(
            [*study, "--configfile", str(grid)], REPO, args.repeats, quiet=False
        )
        peer_loud_s, _ = median_run([], peer_dir, args.repeats, quiet=False)

    print(
        f"grid: {args.seeds} seeds x 3 domains x {args.weights} merge weights"
        " x 4 ensembles, cluster preset, Slurm profile"
    )
    print(f"rmflow cluster study   : {jobs:5d} jobs, snakemake -n {seconds:.2f} s")
    print(f"peer: one-rule Snakefile: {peer_jobs:5d} jobs, snakemake -n {peer_s:.2f} s")
    print(f"rmflow tiny study      : {tiny_jobs:5d} jobs, snakemake -n {tiny_s:.2f} s")
    print(
        f"printing every job too : rmflow {loud_s:.2f} s, peer {peer_loud_s:.2f} s"
        " (snakemake -n without --quiet rules)"
    )
    print(
        f"rmflow over the peer: {seconds - peer_s:+.2f} s;"
        f" goal under 5 s: {'met' if seconds < 5 else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
