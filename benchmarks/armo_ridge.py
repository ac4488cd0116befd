r"""ArmoRM stage-1 ridge: shared per-mask solves vs the original per-fit sklearn loop.

    python benchmarks/armo_ridge.py              # tiny and big sizes
    python benchmarks/armo_ridge.py --quick      # tiny only
    python benchmarks/armo_ridge.py --sizes big --peer-attributes 4

Data: ``N`` rows of ``D``-dim float32 embeddings (Gaussian plus a shared
offset, as LLM hidden states share a common direction) from 4 sources; each
source labels only its own attributes (ArmoRM's hub data mixes HelpSteer,
UltraFeedback, ... each with its own columns), the rest are NaN.

Ours: ``pipelines.common.armo.ridge.fit_attributes`` (one Gram or kernel per
distinct label mask, one LU solve per mask and alpha for all its attributes).
Named peer: RLHFlow/RLHF-Reward-Modeling armo-rm/stage-1_train.py's loop, run
here on the same data in the same run: sklearn ``train_test_split``, then per
attribute one ``Ridge(alpha, fit_intercept=False)`` fit + validation predict
per alpha and a refit with the best (sklearn ``cholesky`` solver, float64 like
ours). It prints both times, the speed-up, whether the chosen alphas agree and
the max relative coefficient difference. Times are the best of ``--repeats``
runs (default 3 at tiny, where the first call pays BLAS warm-up, 1 at big).
``--peer-attributes M`` runs the peer on M attributes only (spread over the
sources; the big size defaults to 4, one per source, as its full loop takes
~20 minutes on 2 cores) and extrapolates its time by ``K / M``: each
attribute costs the peer the same 10 fits on similar row counts, and the
output says when the figure is extrapolated.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pipelines.common.armo.ridge import (
    DEFAULT_ALPHAS,
    fit_attributes,
    train_test_indices,
)

SIZES = {"tiny": (2000, 128, 5), "big": (50000, 4096, 19)}
# Row share of each source; attributes are dealt to sources in contiguous runs.
SOURCE_SHARES = (0.35, 0.30, 0.15, 0.20)


def attribute_sources(n_attr: int) -> np.ndarray:
    """Source of each attribute: contiguous runs, e.g. 5/5/4/5 for 19."""
    cuts = np.linspace(0, n_attr, len(SOURCE_SHARES) + 1).round().astype(int)
    return np.concatenate(
        [np.full(cuts[s + 1] - cuts[s], s) for s in range(len(SOURCE_SHARES))]
    )


def make_data(n: int, dim: int, n_attr: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x += rng.standard_normal(dim, dtype=np.float32)  # shared offset
    w = rng.standard_normal((n_attr, dim), dtype=np.float32) / np.float32(dim**0.5)
    y = x @ w.T + rng.standard_normal((n, n_attr), dtype=np.float32)
    row_source = rng.choice(len(SOURCE_SHARES), size=n, p=SOURCE_SHARES)
    attr_source = attribute_sources(n_attr)
    y[row_source[:, None] != attr_source[None, :]] = np.nan
    return x, y


def peer_loop(x, labels, attrs, alphas):
    """stage-1_train.py's loop on attributes ``attrs``: (W, chosen alphas)."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import mean_squared_error
    from sklearn.model_selection import train_test_split

    x_tr, x_va, y_tr, y_va = train_test_split(
        x.astype(np.float64), labels, test_size=0.2, random_state=42
    )
    coefs, chosen = [], []
    for k in attrs:
        mt, mv = ~np.isnan(y_tr[:, k]), ~np.isnan(y_va[:, k])
        xt, yt, xv, yv = x_tr[mt], y_tr[mt, k], x_va[mv], y_va[mv, k]
        losses = []
        for alpha in alphas:
            clf = Ridge(alpha=alpha, fit_intercept=False).fit(xt, yt)
            losses.append(mean_squared_error(yv, clf.predict(xv)))
        best = alphas[int(np.argmin(losses))]
        clf = Ridge(alpha=best, fit_intercept=False).fit(xt, yt)
        coefs.append(clf.coef_)
        chosen.append(best)
    return np.stack(coefs), chosen


def peer_subset(n_attr: int, m: int) -> list[int]:
    """``m`` attributes spread over the sources (round robin)."""
    sources = attribute_sources(n_attr)
    by_source = [list(np.flatnonzero(sources == s)) for s in range(sources.max() + 1)]
    picked: list[int] = []
    while len(picked) < m:
        for run in by_source:
            if run and len(picked) < m:
                picked.append(int(run.pop(0)))
    return sorted(picked)


def best_time(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def run_size(name: str, peer_attributes: int | None, repeats: int) -> None:
    n, dim, n_attr = SIZES[name]
    print(
        f"[{name}] N={n} D={dim} K={n_attr}, 4 sources,"
        f" {len(DEFAULT_ALPHAS)} alphas, best of {repeats}"
    )
    start = time.perf_counter()
    x, labels = make_data(n, dim, n_attr)
    print(f"  data made in {time.perf_counter() - start:.1f} s")
    names = [f"attr{k}" for k in range(n_attr)]

    def ours():
        train, val = train_test_indices(n)
        return fit_attributes(x, labels, train, val, DEFAULT_ALPHAS, attributes=names)

    ours_s, fit = best_time(ours, repeats)
    print(f"  ours (per-mask Gram/kernel, LU per alpha): {ours_s:9.3f} s")
    print(f"       {fit.n_groups} label masks, train rows per attribute {fit.n_train}")

    m = n_attr if peer_attributes is None else min(peer_attributes, n_attr)
    attrs = peer_subset(n_attr, m)
    measured, (ref_w, ref_alpha) = best_time(
        lambda: peer_loop(x, labels, attrs, DEFAULT_ALPHAS), repeats
    )
    peer_s = measured * n_attr / m
    if m < n_attr:
        print(
            f"  peer (sklearn Ridge loop, {len(DEFAULT_ALPHAS) + 1} fits/attribute):"
            f" measured {measured:.1f} s on {m} of {n_attr} attributes {attrs};"
            f" EXTRAPOLATED to all {n_attr}: {peer_s:.1f} s"
        )
    else:
        print(f"  peer (sklearn Ridge loop, all attributes):   {peer_s:9.3f} s")
    diff = max(
        float(np.abs(fit.weight[k] - ref_w[i]).max() / np.abs(ref_w[i]).max())
        for i, k in enumerate(attrs)
    )
    same = [fit.alphas[k] for k in attrs] == ref_alpha
    print(
        f"  speed-up {peer_s / ours_s:.1f}x"
        f"{' (vs extrapolated peer)' if m < n_attr else ''};"
        f" chosen alphas agree: {same}; max rel coef diff {diff:.1e}"
    )
    if name == "big":
        print(f"  goal 10x: {'met' if peer_s / ours_s >= 10 else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=None)
    parser.add_argument("--quick", action="store_true", help="tiny size only")
    parser.add_argument(
        "--peer-attributes",
        type=int,
        default=None,
        help="run the peer on this many attributes and extrapolate"
        " (default: all at tiny, 4 at big)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="best of this many runs of each (default: 3 at tiny, 1 at big)",
    )
    args = parser.parse_args()
    sizes = ["tiny"] if args.quick else (args.sizes or list(SIZES))
    for name in sizes:
        peer_m = args.peer_attributes
        if peer_m is None and name == "big":
            peer_m = 4
        repeats = args.repeats or (1 if name == "big" else 3)
        run_size(name, peer_m, repeats)


if __name__ == "__main__":
    main()
