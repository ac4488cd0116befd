r"""RM scoring: (a) length-sorted vs naive batching; (b) one job per model vs per input.

    python benchmarks/rm_score.py [--pairs-per-domain 167] [--batch-size 16] \
        [--threads 1] [--skip-jobs] [--old-tree DIR]

Generates preference pairs of the three tiny domains (general, math, code;
about 1,000 responses), trains the tiny tokenizer and builds the tiny GPT-NeoX
RM (untrained head, seeded).

(a) Scores every response twice with ``pipelines.common.modeling.score_ids``:
once in the collator's order (pairs shuffled with a fixed seed, chosen then
rejected, as RLHFlow's BT collator batches them) with ``sort_by_length=False``,
the named peer, and once length-sorted. Prints responses/s of each, the ratio,
the padding share of each batching, and checks that both give the same scores.

(b) Wall time of scoring that model on everything the tiny study needs from a
best-of-n member (the three test splits as benchmarks, 20 prompts x 16
candidates per domain, the tiny preset's shape): one ``python -m
pipelines.score_model`` process for all of it plus one torch-free ``python -m
pipelines.eval_rm`` per benchmark, against the named peer, one scoring process
per input (each paying interpreter start, ``import torch, transformers`` and a
model load, as the former ``eval_rm`` and ``score_candidates`` jobs did).
``--old-tree DIR`` (e.g. ``git worktree add DIR <rev>``) also times that
revision's own ``eval_rm`` and ``score_candidates`` CLIs on the same files and
prints how far their scores are from the new path's. Every process runs with
``OMP_NUM_THREADS=1``, as the tiny preset's rules do (``compute.*.cpus: 1``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.build_prefs import BuildPrefsConfig, build_prefs
from pipelines.common.modeling import (
    encode_conversations,
    ensure_pad_embeddings,
    init_tiny_causal_lm,
    load_reward_model,
    load_tokenizer,
    score_ids,
    train_tokenizer,
)
from pipelines.common.records import read_pairs

DOMAINS = ("general", "math", "code")
REPO = Path(__file__).resolve().parents[1]
N_PROMPTS, BIG_N = 20, 16  # the tiny preset's bon.generate shape


def padding_share(lengths: list[int], batch_size: int, sort: bool) -> float:
    """Share of pad positions in the padded batches of ``score_ids``."""
    order = sorted(lengths, reverse=True) if sort else list(lengths)
    padded = 0
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        padded += max(chunk) * len(chunk)
    return 1.0 - sum(lengths) / padded


def best_time(fn, repeats: int) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def write_gens(root: Path, by_domain: dict[str, list[dict]]) -> list[Path]:
    """Candidate files of the tiny BoN shape from the domains' real replies."""
    rng = random.Random(0)
    files = []
    for domain, recs in by_domain.items():
        replies = [
            r[side][-1]["content"] for r in recs for side in ("chosen", "rejected")
        ]
        lines = [
            {
                "prompt_id": f"{domain}-{i}",
                "domain": domain,
                "prompt": rec["prompt"],
                "candidates": [
                    {"text": rng.choice(replies), "gold": 0.0} for _ in range(BIG_N)
                ],
            }
            for i, rec in enumerate(recs[:N_PROMPTS])
        ]
        path = root / "gens" / f"{domain}.jsonl"
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(json.dumps(ln) + "\n" for ln in lines))
        files.append(path)
    return files


def timed(cmd: list[str], cwd: Path) -> float:
    """Wall seconds of one fresh process (fails loudly)."""
    env = {**os.environ, "PYTHONPATH": str(cwd), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    sec = time.perf_counter() - start
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed:\n{res.stderr[-3000:]}")
    return sec


def jobs_comparison(root: Path, by_domain: dict[str, list[dict]], args) -> bool:
    """(b): one scoring process per model vs one per input; same scores."""
    gens = write_gens(root, by_domain)
    rm = str(root / "rm")
    py = [sys.executable, "-m"]
    bench = {f"{d}-test": str(root / d / "test.jsonl") for d in DOMAINS}
    length = json.dumps({"max_length": args.max_length})
    settings = ["--pair-settings", length, "--candidate-settings", length]
    load = ["--batch-size", str(args.batch_size), "--device", "cpu"]
    out = root / "jobs"
    score = [*py, "pipelines.score_model", "--model", rm, "--model-id", "rm", *load]
    one = [*score, *settings, "--gens", *map(str, gens)]
    for name, path in bench.items():
        one += ["--benchmark", name, path]
    t_one = timed([*one, "--out", str(out / "all.parquet")], REPO)
    evals = [*py, "pipelines.eval_rm", "--scores", str(out / "all.parquet")]
    evals += ["--max-length", str(args.max_length)]
    t_evals = [
        timed(
            [*evals, "--benchmark-name", name, "--benchmark", path]
            + ["--out", str(out / f"{name}.json")],
            REPO,
        )
        for name, path in bench.items()
    ]
    peer = [
        timed(
            [*score, *settings, "--benchmark", name, path]
            + ["--out", str(out / f"only-{name}.parquet")],
            REPO,
        )
        for name, path in bench.items()
    ]
    peer.append(
        timed(
            [*score, *settings, "--gens", *map(str, gens)]
            + ["--out", str(out / "only-gens.parquet")],
            REPO,
        )
    )

    import pandas as pd

    pooled = pd.read_parquet(out / "all.parquet")
    worst = 0.0
    for name in [*bench, "gens"]:
        alone = pd.read_parquet(out / f"only-{name}.parquet")
        part = pooled[pooled["input"].isin(alone["input"].unique())]
        diff = np.abs(part["score"].to_numpy() - alone["score"].to_numpy())
        worst = max(worst, float(diff.max()))
    n_seq = len(pooled)
    print(
        f"(b) one model on {len(bench)} benchmarks + {len(gens)} candidate files"
        f" ({n_seq} sequences), OMP_NUM_THREADS=1:"
    )
    print(
        f"  one score_model job:               {t_one:6.2f} s"
        f" + {len(t_evals)} torch-free eval_rm {sum(t_evals):5.2f} s"
        f" = {t_one + sum(t_evals):6.2f} s"
    )
    print(
        f"  peer, one scoring job per input:   {sum(peer):6.2f} s"
        f" ({len(peer)} jobs: {', '.join(f'{t:.2f}' for t in peer)})"
    )
    print(
        f"  speed-up {sum(peer) / (t_one + sum(t_evals)):.2f}x;"
        f" max |pooled - per-input score| {worst:.1e}"
    )
    ok = worst <= 1e-6
    if args.old_tree is not None:
        ok &= old_tree_comparison(
            args.old_tree, rm, bench, gens, out, args, t_one + sum(t_evals)
        )
    return ok


def old_tree_comparison(tree, rm, bench, gens, out, args, t_new) -> bool:
    """The previous revision's own eval_rm and score_candidates CLIs."""
    py = [sys.executable, "-m"]
    common = ["--max-length", str(args.max_length), "--device", "cpu"]
    common += ["--batch-size", str(args.batch_size)]
    times, worst = [], 0.0
    for name, path in bench.items():
        old_json = out / f"old-{name}.json"
        times.append(
            timed(
                [*py, "pipelines.eval_rm", "--model", rm, "--model-id", "rm"]
                + ["--benchmark-name", name, "--benchmark", path, *common]
                + ["--out", str(old_json)],
                tree,
            )
        )
        old = json.loads(old_json.read_text())["pairs"]
        new = json.loads((out / f"{name}.json").read_text())["pairs"]
        for a, b in zip(old, new, strict=True):
            worst = max(
                worst,
                abs(a["chosen"] - b["chosen"]),
                abs(a["rejected"] - b["rejected"]),
            )
    candidates = [*py, "pipelines.score_candidates", "--model", rm, *common]
    candidates += ["--gens", *map(str, gens), "--out", str(out / "old-gens.parquet")]
    times.append(timed(candidates, tree))
    import pandas as pd

    old = pd.read_parquet(out / "old-gens.parquet")["score"].to_numpy()
    pooled = pd.read_parquet(out / "all.parquet")
    new = pooled[pooled["side"] == "candidate"]["score"].to_numpy()
    worst = max(worst, float(np.abs(old - new).max()))
    print(
        f"  old tree {tree}: {len(times) - 1} eval_rm + 1 score_candidates jobs"
        f" {sum(times):6.2f} s ({', '.join(f'{t:.2f}' for t in times)});"
        f" one job + evals / old {t_new / sum(times):.2f};"
        f" max |old - new score| {worst:.1e}"
    )
    return worst <= 1e-6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs-per-domain", type=int, default=167)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=1, help="best of N timings")
    parser.add_argument("--skip-jobs", action="store_true", help="only (a)")
    parser.add_argument(
        "--old-tree", type=Path, help="(b): also time this checkout's old CLIs"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0: torch's default); 1 keeps timings steady on a"
        " shared machine",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    tmp = tempfile.TemporaryDirectory()  # kept for (b), removed at the end
    root = Path(tmp.name)
    by_domain = {}
    for domain in DOMAINS:
        out = root / domain / "test.jsonl"
        cfg = BuildPrefsConfig(
            sizes={"test": args.pairs_per_domain}, sft_size=1, seed=0
        )
        build_prefs(domain, [out], None, cfg=cfg)
        by_domain[domain] = read_pairs(out)
    records = [r for recs in by_domain.values() for r in recs]
    texts = [m["content"] for r in records for m in r["chosen"] + r["rejected"]]
    tok = train_tokenizer(texts, vocab_size=2000)
    lm = init_tiny_causal_lm(tok, seed=0)
    lm.save_pretrained(root / "rm")
    tok.save_pretrained(root / "rm")
    tok = load_tokenizer(root / "rm")
    torch.manual_seed(0)
    model = load_reward_model(root / "rm").eval()
    ensure_pad_embeddings(model, tok)

    random.Random(0).shuffle(records)
    convs = [conv for r in records for conv in (r["chosen"], r["rejected"])]
    enc = encode_conversations(tok, convs, max_length=args.max_length)
    lengths = [len(s) for s in enc.ids]
    pad = tok.pad_token_id
    bs = args.batch_size

    score_ids(model, enc.ids[:bs], pad_id=pad, batch_size=bs)  # warm-up
    t_naive, naive = best_time(
        lambda: score_ids(
            model, enc.ids, pad_id=pad, batch_size=bs, sort_by_length=False
        ),
        args.repeats,
    )
    t_sorted, srt = best_time(
        lambda: score_ids(model, enc.ids, pad_id=pad, batch_size=bs), args.repeats
    )
    n = len(enc.ids)
    diff = float(np.max(np.abs(naive - srt)))
    print(
        f"{n} responses ({len(records)} pairs of {', '.join(DOMAINS)}), tokens per"
        f" response min/median/max {min(lengths)}/{int(np.median(lengths))}/"
        f"{max(lengths)}, {enc.truncated} truncated at {args.max_length};"
        f" tiny GPT-NeoX RM, batch {bs}, {torch.get_num_threads()} torch threads,"
        f" best of {args.repeats}"
    )
    print(
        f"naive fixed-order batching: {n / t_naive:8.1f} responses/s"
        f" ({t_naive:.2f} s, {padding_share(lengths, bs, False):.0%} padding)"
    )
    print(
        f"length-sorted batching:     {n / t_sorted:8.1f} responses/s"
        f" ({t_sorted:.2f} s, {padding_share(lengths, bs, True):.0%} padding)"
    )
    print(f"speed-up sorted / naive: {t_naive / t_sorted:.2f}x")
    print(
        f"max |score difference|: {diff:.2e} ({'agree' if diff < 1e-4 else 'DIFFER'})"
    )
    ok = diff < 1e-4
    if not args.skip_jobs:
        ok &= jobs_comparison(root, by_domain, args)
    tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
