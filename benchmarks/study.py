r"""Study budget: the tiny ``all`` from a clean tree, its wall time and where it goes.

    python benchmarks/study.py [--rev HEAD] [--cores 2] [--target all] [--keep DIR]

Copies the tree (the working tree's tracked and untracked-not-ignored files, or
``git archive <rev>`` with ``--rev``) into a fresh folder, runs
``python -m snakemake --cores 2 <target>`` there as a new user would (the
default config, tiny preset), and prints:

- wall time of the whole run and the number of jobs per rule (Snakemake's own
  job table);
- peak RSS: of the largest single process (``getrusage(RUSAGE_CHILDREN)``,
  which covers every job) and of the whole process tree at once (sampled every
  0.2 s: two concurrent jobs on 2 cores count together);
- the summed time of the Python jobs and how it splits into **startup**
  (interpreter start and imports up to the stage's first
  ``ArgumentParser.parse_args``, the imports made after it, e.g. a lazy
  ``import torch``, and every ``from_pretrained`` model load) and **work** (the
  rest), per rule and in total.

The split comes from a ``sitecustomize`` placed first on ``PYTHONPATH`` for the
run only; it patches nothing in the project: it wraps ``parse_args`` and
``PreTrainedModel.from_pretrained`` to take timestamps and appends one JSON
line per ``python -m pipelines.<stage>`` process to a trace file at exit
(it also times each outermost module import made after ``parse_args``). It
therefore measures old and new revisions the same way (``--rev``), which is
how the before/after figures of a change are taken in one sitting.

Goal (issue 11): ``all`` <= 10 minutes on 2 cores, peak RSS <= 4 GiB.
The named peer is the same measurement of another revision (``--rev``), run
in the same sitting.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL_WALL_S = 600.0
GOAL_RSS_GIB = 4.0

SITECUSTOMIZE = r'''
import atexit, json, os, sys, time

_TRACE = os.environ.get("RMFLOW_STUDY_TRACE")


def _proc_start() -> float:
    """Epoch seconds at which this process started (from /proc)."""
    with open("/proc/self/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/uptime") as fh:
        uptime = float(fh.read().split()[0])
    return time.time() - uptime + int(fields[19]) / ticks


def _module():
    argv = getattr(sys, "orig_argv", sys.argv)
    if "-m" in argv:
        i = argv.index("-m")
        if i + 1 < len(argv) and argv[i + 1].startswith("pipelines."):
            return argv[i + 1]
    return None


if _TRACE and _module():
    _state = {"module": _module(), "start": _proc_start(), "site": time.time(),
              "parse_args": None, "load_s": 0.0, "loads": 0}
    import argparse as _argparse

    _orig_parse = _argparse.ArgumentParser.parse_args

    def _parse_args(self, *a, **k):
        if _state["parse_args"] is None:
            _state["parse_args"] = time.time()
        return _orig_parse(self, *a, **k)

    _argparse.ArgumentParser.parse_args = _parse_args

    # Time in imports made after parse_args (lazy imports of torch and the
    # like) and in from_pretrained; an import inside a load counts as load.
    _state.update(import_s=0.0, imports=0, busy=False)

    def _patch(mod):
        base = mod.PreTrainedModel
        orig = base.from_pretrained.__func__

        def from_pretrained(cls, *a, **k):
            if _state["busy"]:
                return orig(cls, *a, **k)
            _state["busy"] = True
            t = time.time()
            try:
                return orig(cls, *a, **k)
            finally:
                _state["busy"] = False
                _state["load_s"] += time.time() - t
                _state["loads"] += 1

        base.from_pretrained = classmethod(from_pretrained)

    class _LoadHook:
        """Times outermost imports after parse_args; patches from_pretrained."""

        def find_spec(self, name, path=None, target=None):
            if _state["parse_args"] is None and name != "transformers.modeling_utils":
                return None
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None)
                if finder is self or find is None:
                    continue
                spec = find(name, path, target)
                if spec is not None:
                    break
            else:
                return None
            loader = spec.loader
            if loader is None or isinstance(loader, type):
                return spec
            exec_module = getattr(loader, "exec_module", None)
            if exec_module is None:
                return spec

            def timed(module):
                if _state["busy"] or _state["parse_args"] is None:
                    exec_module(module)
                else:
                    _state["busy"] = True
                    t = time.time()
                    try:
                        exec_module(module)
                    finally:
                        _state["busy"] = False
                        _state["import_s"] += time.time() - t
                        _state["imports"] += 1
                if name == "transformers.modeling_utils":
                    _patch(module)

            loader.exec_module = timed
            return spec

    sys.meta_path.insert(0, _LoadHook())

    @atexit.register
    def _write():
        _state["end"] = time.time()
        _state.pop("busy", None)
        _state["argv"] = list(getattr(sys, "orig_argv", sys.argv))
        with open(_TRACE, "a") as fh:
            fh.write(json.dumps(_state) + "\n")
'''


def copy_tree(dest: Path, rev: str | None) -> str:
    """Put a clean copy of the project in ``dest``; return what was copied."""
    dest.mkdir(parents=True)
    if rev is not None:
        sha = subprocess.run(
            ["git", "rev-parse", rev], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        archive = subprocess.run(
            ["git", "archive", "--format=tar", sha],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
        tar_path = dest.parent / "tree.tar"
        tar_path.write_bytes(archive)
        with tarfile.open(tar_path) as tar:
            tar.extractall(dest, filter="data")
        tar_path.unlink()
        return f"git archive {sha[:12]}"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO / name.decode()
        if src.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())
    head = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return f"working tree at {head}" + (" (with uncommitted changes)" if dirty else "")


class TreeRss:
    """Samples the summed RSS of a process and all its descendants."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        self.pid = pid
        self.every_s = every_s
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak_kib = max(self.peak_kib, self._sample())

    def _sample(self) -> int:
        children: dict[int, list[int]] = collections.defaultdict(list)
        rss: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/status") as fh:
                    fields = dict(line.split(":", 1) for line in fh if ":" in line)
            except OSError:
                continue
            pid = int(entry)
            children[int(fields["PPid"])].append(pid)
            rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0])
        total, todo = 0, [self.pid]
        while todo:
            pid = todo.pop()
            total += rss.get(pid, 0)
            todo.extend(children.get(pid, []))
        return total


def job_counts(log: str) -> dict[str, int]:
    """Snakemake's ``Job stats`` table: jobs per rule (the target rule included)."""
    counts: dict[str, int] = {}
    match = re.search(r"Job stats:\n(.*?)\n\n", log, re.DOTALL)
    if match is None:
        return counts
    for line in match.group(1).splitlines()[2:]:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


def split_times(trace: Path) -> dict[str, dict[str, float]]:
    """Per stage module: processes, summed seconds, startup and work."""
    out: dict[str, dict[str, float]] = collections.defaultdict(
        lambda: {"procs": 0, "total_s": 0.0, "startup_s": 0.0, "loads": 0}
    )
    if not trace.exists():
        return out
    for line in trace.read_text().splitlines():
        rec = json.loads(line)
        if "--help" in rec["argv"]:
            continue
        total = rec["end"] - rec["start"]
        first = rec["parse_args"] or rec["end"]
        startup = (first - rec["start"]) + rec["load_s"] + rec.get("import_s", 0.0)
        row = out[rec["module"].removeprefix("pipelines.")]
        row["procs"] += 1
        row["total_s"] += total
        row["startup_s"] += min(startup, total)
        row["loads"] += rec["loads"]
    return out


def main() -> int:
    """Run the study once and print the budget."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rev", help="git revision to copy (default: working tree)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--target", default="all")
    parser.add_argument("--keep", type=Path, help="run in DIR and keep it")
    parser.add_argument(
        "--snakemake-args", default="", help="extra Snakemake arguments"
    )
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="rmflow-study-"))
    tree = root / "tree"
    what = copy_tree(tree, args.rev)
    site = root / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    trace = root / "trace.jsonl"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(site), str(tree), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    env["RMFLOW_STUDY_TRACE"] = str(trace)
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(args.cores)]
    cmd += [*args.snakemake_args.split(), args.target]
    print(f"tree: {what} -> {tree}")
    print(f"command: {' '.join(cmd[2:])}  (cwd {tree})", flush=True)
    t0 = time.monotonic()
    with open(root / "snakemake.log", "w") as log_fh:
        proc = subprocess.Popen(
            cmd, cwd=tree, env=env, stdout=log_fh, stderr=subprocess.STDOUT
        )
        with TreeRss(proc.pid) as sampler:
            rc = proc.wait()
    wall = time.monotonic() - t0
    log = (root / "snakemake.log").read_text()
    if rc != 0:
        print(log[-4000:])
        print(f"snakemake exited {rc} after {wall:.0f} s; log: {root}/snakemake.log")
        return 1
    max_rss_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    tree_gib = sampler.peak_kib / 2**20
    counts = job_counts(log)
    times = split_times(trace)

    print(f"\nwall time: {wall:.1f} s ({wall / 60:.2f} min; goal <= 10 min)")
    print(f"jobs: {sum(v for k, v in counts.items() if not k.startswith('all'))}")
    print(f"peak RSS, largest process: {max_rss_gib:.2f} GiB (goal <= 4 GiB)")
    print(f"peak RSS, whole tree at once: {tree_gib:.2f} GiB")
    print(
        "\n| rule | jobs | summed s | startup s | work s | startup % | s/job |"
        " model loads |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    tot = {"procs": 0, "total_s": 0.0, "startup_s": 0.0, "loads": 0}
    for rule in sorted(set(counts) | set(times)):
        if rule.startswith("all"):
            continue
        t = times.get(rule, {"procs": 0, "total_s": 0.0, "startup_s": 0.0, "loads": 0})
        for k in tot:
            tot[k] += t[k]
        n = counts.get(rule, t["procs"])
        share = 100 * t["startup_s"] / t["total_s"] if t["total_s"] else 0.0
        print(
            f"| {rule} | {n} | {t['total_s']:.1f} | {t['startup_s']:.1f} |"
            f" {t['total_s'] - t['startup_s']:.1f} | {share:.0f}% |"
            f" {t['total_s'] / max(t['procs'], 1):.1f} | {t['loads']} |"
        )
    share = 100 * tot["startup_s"] / tot["total_s"] if tot["total_s"] else 0.0
    print(
        f"| **total** | {sum(v for k, v in counts.items() if not k.startswith('all'))}"
        f" | {tot['total_s']:.1f} | {tot['startup_s']:.1f} |"
        f" {tot['total_s'] - tot['startup_s']:.1f} | {share:.0f}% | | {tot['loads']} |"
    )
    ok = wall <= GOAL_WALL_S and max_rss_gib <= GOAL_RSS_GIB
    print(f"\nbudget {'met' if ok else 'NOT met'}; outputs in {tree}")
    if args.keep is None:
        shutil.rmtree(tree / ".snakemake", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
