r"""Math checker throughput: the deadline-safe checker vs the old in-process path.

Two workloads, each checked twice in the same run:

* ``domain``: chosen and rejected responses of the generated math domain
  (what build_prefs re-verifies); they end in the fast exact paths;
* ``sympy``: answers only sympy can compare (``\sqrt{4k^2}`` vs ``2k``,
  ``\frac{\sqrt{2}}{2}`` forms...), all distinct so no cache helps.

The checker (``is_equiv``/``check_response``) sends sympy comparisons to its
server's compute children; the peer is the same checker with that step run in
this process (``worker.compare_in_process``, the path before the server: a
SIGALRM deadline that C code ignores). ``--hostile`` also times the hostile
answers of tests/unit/test_math_check.py through the checker.

Usage: ``python benchmarks/math_check.py [--pairs 2000] [--sympy 300]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from unittest import mock

from pipelines.common import math_check
from pipelines.common.math_check import check_response, is_equiv, worker
from pipelines.domains import math as math_domain


def domain_items(pairs: int) -> list[tuple[str, str, bool]]:
    """``(response, reference, expected)`` from the generated math domain."""
    splits, _ = math_domain.generate({"train": pairs}, 0, seed=0)
    items = []
    for d in splits["train"]:
        items.append((d.chosen, d.task["reference"], True))
        items.append((d.rejected, d.task["reference"], False))
    return items


def sympy_items(n: int) -> list[tuple[str, str, bool]]:
    """Distinct answer pairs that need sympy, half of them equal."""
    out = []
    for k in range(2, n // 4 + 2):
        out.append((rf"\sqrt{{{4 * k * k}}}", f"{2 * k}", True))
        out.append((rf"\sqrt{{{4 * k * k}}}", f"{2 * k + 1}", False))
        out.append(
            (rf"\frac{{\sqrt{{2}}}}{{{k}}}", rf"\frac{{1}}{{{k}\sqrt{{2}}}}", False)
        )
        out.append((rf"\frac{{{k}\sqrt{{8}}}}{{2}}", rf"{k}\sqrt{{2}}", True))
    return out


def bench(
    items: list[tuple[str, str, bool]], check: Callable[[str, str], bool]
) -> tuple[float, int]:
    """Seconds to check all items, and how many verdicts were as expected."""
    start = time.perf_counter()
    right = sum(check(a, b) == expected for a, b, expected in items)
    return time.perf_counter() - start, right


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000, help="domain pairs")
    parser.add_argument("--sympy", type=int, default=300, help="sympy answer pairs")
    parser.add_argument("--hostile", action="store_true", help="time hostile inputs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    start = time.perf_counter()
    assert is_equiv(r"\sqrt{8}", r"2\sqrt{2}", timeout_s=60)
    print(
        f"sympy server start-up (once per process): {time.perf_counter() - start:.2f} s"
    )
    in_process = mock.patch.object(worker, "compare", worker.compare_in_process)
    workloads = {
        "domain": (domain_items(args.pairs), check_response),
        "sympy": (sympy_items(args.sympy), is_equiv),
    }
    print(f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    for name, (items, check) in workloads.items():
        check(*items[0][:2])  # warm the parsers on both paths
        with in_process:
            check(*items[0][:2])
        server_s, server_ok = bench(items, check)
        with in_process:
            peer_s, peer_ok = bench(items, check)
        for label, seconds, ok in (
            ("checker (sympy server)", server_s, server_ok),
            ("peer: in-process sympy (old path)", peer_s, peer_ok),
        ):
            print(
                f"{name:<7} {label:<34} {len(items) / seconds:10.0f} checks/s"
                f"  {seconds:7.3f} s  right {ok}/{len(items)}"
            )
        print(f"{name:<7} time ratio checker / peer: {server_s / peer_s:.2f}x")

    if args.hostile:
        sys.path.insert(0, "tests/unit")
        from test_math_check_deadline import HOSTILE

        total = 0.0
        for kind, answer, reference, expected in HOSTILE:
            start = time.perf_counter()
            if kind == "equiv":
                verdict = is_equiv(answer, reference, timeout_s=1.0)
            else:
                mode = "regex" if kind == "response-regex" else "balanced"
                verdict = check_response(answer, reference, mode=mode)
            seconds = time.perf_counter() - start
            total += seconds
            label = repr(answer[:28]) + (f" ({len(answer)} chars)" * (len(answer) > 28))
            print(f"hostile {label:<50} {seconds:8.4f} s  right {verdict == expected}")
        print(f"hostile total {total:.2f} s for {len(HOSTILE)} inputs")
    print("checker events:", math_check.check_stats())


if __name__ == "__main__":
    main()
