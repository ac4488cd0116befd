r"""Best-of-n estimator speed: grouped matrix products vs a naive per-prompt loop.

    python benchmarks/bon.py [--candidates 1000] [--prompts 200] [--repeats 5]

(a) Times ``pipelines.common.bon.estimate`` (prompts grouped by candidate
count, one ranking per group, one matrix product per group and draw size,
weights from log-space ratios) on N = 1000 candidates x 200 prompts x 16 draw
sizes (goal: under 1 s), against the named peer: a per-prompt, per-n Python
loop over exact ``math.comb`` weights, computed once per n as
tlc4418/llm_optimization src/bon/bon_sampling.py ``unbiased_sampler`` does,
on the same data in the same run; checks both agree to 1e-9.
(b) Throughput of the estimator (proxy and gold curves together) at the
tiny shape and at the tlc4418 shape (N = 12,600 with their draw sizes).
(c) Candidates scored per second by ``score_model``'s scorer
(``pipelines.common.scoring``, length-sorted batches) against naive fixed-order
batching, on a real gens file and RM when
given (``--gens results/bon/gens/math.jsonl --rm results/models/rm/general/seed0``)
or else on a freshly built tiny RM and generated replies.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from pipelines.common.bon import estimate, rank_order

NS_16 = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256, 512, 768, 1000)
# tlc4418/llm_optimization src/bon/run_bon_pipeline.py default sample_ns
NS_TLC = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 6144, 8192, 12500)


def make_data(prompts: int, candidates: int, seed: int) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    proxy = rng.normal(size=(prompts, candidates))
    proxy = np.round(proxy, 2)  # ties, as real RM scores in low precision have
    gold = 0.5 * proxy + rng.normal(size=(prompts, candidates))
    return list(proxy), list(gold)


def naive(proxy_rows: list, gold_rows: list, ns: tuple[int, ...]) -> list[dict]:
    """Per prompt and per n: sort, then exact-binomial weights, as tlc4418."""
    out = []
    for n in ns:
        sums, count = [0.0, 0.0], 0
        weights_of: dict[int, list[float]] = {}
        for proxy, gold in zip(proxy_rows, gold_rows, strict=True):
            N = len(proxy)
            if N < n:
                continue
            if N not in weights_of:
                total = math.comb(N, n)
                weights_of[N] = [
                    math.comb(i - 1, n - 1) / total for i in range(n, N + 1)
                ]
            weights = weights_of[N]
            order = rank_order(proxy)
            p_sorted, g_sorted = proxy[order][n - 1 :], gold[order][n - 1 :]
            sums[0] += sum(w * s for w, s in zip(weights, p_sorted, strict=True))
            sums[1] += sum(w * s for w, s in zip(weights, g_sorted, strict=True))
            count += 1
        if count:
            out.append(
                {
                    "n": n,
                    "proxy_score": sums[0] / count,
                    "gold_score": sums[1] / count,
                    "n_prompts": count,
                }
            )
    return out


def best_time(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def _tiny_rm_and_conversations(work: Path) -> tuple[str, list]:
    """A tiny GPT-NeoX RM (random head) and ~1000 candidate conversations."""
    import torch

    from pipelines.build_prefs import BuildPrefsConfig, build_prefs
    from pipelines.common import modeling
    from pipelines.train_tokenizer import corpus

    convs = []
    files = []
    for domain in ("general", "math", "code"):
        pairs = [work / domain / "test.jsonl"]
        cfg = BuildPrefsConfig(sizes={"test": 170}, sft_size=1, workers=2)
        build_prefs(domain, pairs, None, cfg=cfg)
        files += pairs
        for line in pairs[0].read_text().splitlines():
            rec = json.loads(line)
            convs += [rec["chosen"], rec["rejected"]]
    tok = modeling.train_tokenizer(list(corpus(files)), vocab_size=2048)
    model = modeling.init_tiny_causal_lm(tok, seed=0)
    folder = work / "lm"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    return str(folder), convs


def scoring_throughput(gens: Path | None, rm: str | None, batch_size: int) -> None:
    """(c): candidates/s, length-sorted vs fixed-order batches, same scores."""
    import torch

    from pipelines.common.modeling import encode_conversations, score_ids
    from pipelines.common.scoring import (
        ScorerConfig,
        candidate_conversations,
        load_scorer,
    )

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if gens is not None and rm is not None:
            lines = [json.loads(x) for x in gens.read_text().splitlines() if x]
            convs = [c for line in lines for c in candidate_conversations(line)]
        else:
            rm, convs = _tiny_rm_and_conversations(Path(tmp))
        scorer = load_scorer(rm, ScorerConfig(device="cpu"))
        enc = encode_conversations(scorer.tok, convs, max_length=1024)
        pad = scorer.tok.pad_token_id
        lengths = sorted(len(x) for x in enc.ids)
        print(
            f"(c) scoring {len(convs)} candidates, batch {batch_size}, 1 thread;"
            f" tokens min/median/max {lengths[0]}/{lengths[len(lengths) // 2]}"
            f"/{lengths[-1]}"
        )
        results = {}
        for label, sort in (("naive fixed-order", False), ("length-sorted", True)):
            start = time.perf_counter()
            scores = score_ids(
                scorer.model,
                enc.ids,
                pad_id=pad,
                batch_size=batch_size,
                sort_by_length=sort,
            )
            sec = time.perf_counter() - start
            results[label] = (sec, scores)
            print(f"  {label:18s} {len(convs) / sec:8.1f} candidates/s ({sec:.2f} s)")
        (naive_s, a), (sorted_s, b) = results.values()
        print(
            f"  speed-up {naive_s / sorted_s:.2f}x;"
            f" max |score difference| {float(np.max(np.abs(a - b))):.1e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gens", type=Path, default=None, help="a gens JSONL file")
    parser.add_argument("--rm", default=None, help="an RM folder for (c)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    N, P = args.candidates, args.prompts
    ns = tuple(n for n in NS_16 if n <= N)
    proxy, gold = make_data(P, N, seed=0)

    print(f"(a) estimator on N={N} candidates x {P} prompts x {len(ns)} sizes of n")
    fast_s, fast = best_time(lambda: estimate(proxy, gold, ns), args.repeats)
    peer_s, peer = best_time(lambda: naive(proxy, gold, ns), 1)
    worst = max(
        abs(a[key] - b[key])
        for a, b in zip(fast, peer, strict=True)
        for key in ("proxy_score", "gold_score")
    )
    assert [r["n"] for r in fast] == [r["n"] for r in peer]
    assert worst < 1e-9, worst
    print(f"  estimate (grouped matmul, log-ratio weights): {fast_s * 1e3:8.1f} ms")
    print(f"  peer: per-prompt per-n loop, exact math.comb: {peer_s * 1e3:8.1f} ms")
    print(f"  speed-up {peer_s / fast_s:.0f}x; max |difference| {worst:.2e}")
    print(f"  goal < 1 s: {'met' if fast_s < 1.0 else 'MISSED'}")

    print("(b) estimator throughput (proxy and gold curves together)")
    shapes = ((P, N, ns), (50, 12600, NS_TLC))
    mixed = make_data(P, N, seed=1)
    for prompts, cands, sizes in shapes:
        p_rows, g_rows = make_data(prompts, cands, seed=2)
        sec, _ = best_time(lambda p=p_rows, g=g_rows, s=sizes: estimate(p, g, s), 3)
        print(
            f"  N={cands:>6} x {prompts:>4} prompts x {len(sizes)} n:"
            f" {sec * 1e3:7.1f} ms = {prompts / sec:9.0f} prompts/s,"
            f" {prompts * cands * len(sizes) / sec / 1e6:7.1f} M weighted scores/s"
        )
    # candidate counts vary per prompt: 5 groups of N
    p_rows = [row[: N - 50 * (k % 5)] for k, row in enumerate(mixed[0])]
    g_rows = [row[: N - 50 * (k % 5)] for k, row in enumerate(mixed[1])]
    sec, _ = best_time(lambda: estimate(p_rows, g_rows, ns), 3)
    print(
        f"  N={N - 200}..{N} (5 groups) x {P} prompts x {len(ns)} n: "
        f"{sec * 1e3:7.1f} ms = {P / sec:9.0f} prompts/s"
    )
    scoring_throughput(args.gens, args.rm, args.batch_size)


if __name__ == "__main__":
    main()
