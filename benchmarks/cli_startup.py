r"""Startup of every stage's CLI: ``python -m pipelines.<stage> --help``.

    python benchmarks/cli_startup.py [--repeats 5] [--repo DIR ...]

For each stage module in ``pipelines/`` (found by listing the folder, so a new
stage is measured too) this prints the median wall time of ``python -m
pipelines.<stage> --help`` over ``--repeats`` runs, and which heavy libraries
that command left in ``sys.modules`` (one more run, through a wrapper that
runs the module as ``-m`` does and then lists them).

Named peers, measured in the same run and the same way: ``python -c pass``
(the interpreter alone, the floor) and ``python -c "import torch,
transformers"`` (what a stage that imports the model stack at the top pays
before it can even print its help).

``--repo`` may be given several times (e.g. a checkout of main and this
tree) to compare them in one sitting: every command runs from that folder
with it first on ``PYTHONPATH``; runs are interleaved across folders so a
change in machine load affects each alike. The load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = (
    "torch",
    "transformers",
    "accelerate",
    "peft",
    "datasets",
    "deepspeed",
    "pandas",
    "matplotlib",
)
# Runs one module as ``python -m`` does, then prints the heavy modules loaded.
WRAPPER = (
    "import json, runpy, sys\n"
    "mod = sys.argv[1]\n"
    "sys.argv = [mod, '--help']\n"
    "try:\n"
    "    runpy.run_module(mod, run_name='__main__', alter_sys=True)\n"
    "except SystemExit:\n"
    "    pass\n"
    f"heavy = {HEAVY!r}\n"
    "print('HEAVY=' + json.dumps([m for m in heavy if m in sys.modules]))\n"
)


def stages(repo: Path) -> list[str]:
    """Stage modules of ``repo``: every ``pipelines/<name>.py`` but ``__init__``."""
    return sorted(
        p.stem for p in (repo / "pipelines").glob("*.py") if p.stem != "__init__"
    )


def _env(repo: Path) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}


def timed(cmd: list[str], repo: Path) -> float:
    """Wall seconds of one command run from ``repo``; it must succeed."""
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=repo, env=_env(repo), capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} (in {repo}) failed:\n{proc.stderr}")
    return seconds


def heavy_imports(stage: str, repo: Path) -> list[str]:
    """Heavy libraries left in ``sys.modules`` by ``--help`` of ``stage``."""
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, f"pipelines.{stage}"],
        cwd=repo,
        env=_env(repo),
        capture_output=True,
        text=True,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("HEAVY="):
            return json.loads(line[len("HEAVY=") :])
    raise SystemExit(f"--help of {stage} (in {repo}) failed:\n{proc.stderr}")


def measure(repos: list[Path], repeats: int) -> dict[str, dict[Path, list[float]]]:
    """Wall times per command and repo; the runs are interleaved across repos."""
    commands: dict[str, list[str]] = {
        "peer: python -c pass": [sys.executable, "-c", "pass"],
        "peer: import torch, transformers": [
            sys.executable,
            "-c",
            "import torch, transformers",
        ],
    }
    names = sorted({s for repo in repos for s in stages(repo)})
    for stage in names:
        commands[stage] = [sys.executable, "-m", f"pipelines.{stage}", "--help"]
    times: dict[str, dict[Path, list[float]]] = {c: {} for c in commands}
    for _ in range(repeats):
        for label, cmd in commands.items():
            for repo in repos:
                if label.startswith("peer") or label in stages(repo):
                    times[label].setdefault(repo, []).append(timed(cmd, repo))
    return times


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per command")
    parser.add_argument(
        "--repo",
        type=Path,
        action="append",
        default=None,
        help="checkout to measure (repeatable; default: this one)",
    )
    args = parser.parse_args(argv)
    repos = [p.resolve() for p in (args.repo or [REPO])]
    load_before = os.getloadavg()
    times = measure(repos, args.repeats)
    load_after = os.getloadavg()
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load average"
        f" {load_before[0]:.1f} before / {load_after[0]:.1f} after;"
        f" median of {args.repeats} runs, seconds"
    )
    for i, repo in enumerate(repos):
        print(f"[{i}] {repo}")
    header = f"{'command':38s}" + "".join(
        f" | [{i}] median  heavy imports" for i in range(len(repos))
    )
    print(header)
    print("-" * len(header))
    for label, per_repo in times.items():
        row = f"{label:38s}"
        for repo in repos:
            runs = per_repo.get(repo)
            if runs is None:
                row += f" | {'-':>10s}  {'':14s}"
                continue
            if label.startswith("peer"):
                heavy = ""
            else:
                heavy = ",".join(heavy_imports(label, repo)) or "none"
            row += f" | {statistics.median(runs):10.2f}  {heavy}"
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
