"""All-pairs cost of the measures beyond CKA, against computing each pair from scratch.

Usage (on a quiet machine; the figures are meaningless under load)::

    python benchmarks/measures_ratios.py [--layers 24] [--n 2000] [--p 256] [--k 10] [--repeats 3]
    python benchmarks/measures_ratios.py --device cuda [...]

Workload: mutual k-NN between every pair of ``--layers`` layers of ``--n`` examples
(``--p`` features each). ``repsim.neighbour_matrix`` finds each layer's neighbours once
(blocked GEMM + sort) and pairs their ``(n, k)`` lists; the baseline calls
``repsim.mutual_knn`` on every unordered pair, i.e. repeats both neighbour searches per pair (what a
per-pair loop over a pairwise function does). Both give the same matrix (checked), so the
ratio is the cost of recomputation. Runs are interleaved and the minimum over
``--repeats`` is kept.

The feature-moment accumulator (issue 14, item 1) gets its section here once it exists:
24 layers x 768 features x 10,000 examples in batches of 256 against each pair from full
data.
"""

import argparse
import time

import numpy as np

import repsim


def best_of(fns, repeats):
    best = {name: float("inf") for name in fns}
    out = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best, out


def make_layers(layers, n, p, seed, device=None):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, p))
    out = {}
    for i in range(layers):
        base = np.tanh(base @ rng.standard_normal((p, p)) / np.sqrt(p)) + 0.1 * rng.standard_normal((n, p))
        out[f"layer{i:02d}"] = base
    if device is not None:
        import torch

        out = {k: torch.tensor(v, device=device) for k, v in out.items()}
    return out


def per_pair(layers, k):
    names = list(layers)
    vals = np.empty((len(names), len(names)))
    for i, a in enumerate(names):
        for j in range(i, len(names)):  # symmetric: each unordered pair once
            vals[i, j] = vals[j, i] = float(repsim.mutual_knn(layers[a], layers[names[j]], k))
    return vals


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--p", type=int, default=256)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None, help="torch device (cpu, cuda, ...); default numpy")
    args = ap.parse_args(argv)
    layers = make_layers(args.layers, args.n, args.p, 0, args.device)
    sync = (lambda: None)
    if args.device and args.device.startswith("cuda"):
        import torch

        sync = torch.cuda.synchronize

    def all_pairs():
        v = repsim.neighbour_matrix(layers, measure="mutual_knn", k=args.k).values
        sync()
        return v

    def loop():
        v = per_pair(layers, args.k)
        sync()
        return v

    all_pairs()  # warm-up (numba/BLAS/CUDA initialisation)
    best, out = best_of({"neighbour_matrix": all_pairs, "per-pair loop": loop}, args.repeats)
    assert np.array_equal(out["neighbour_matrix"], out["per-pair loop"]), "results differ"
    lib = args.device or "numpy"
    print(f"mutual k-NN, {args.layers} layers x {args.n} examples x {args.p} features, k={args.k}, {lib}")
    for name, t in best.items():
        print(f"  {name:<18} {t:9.3f} s")
    print(f"  speed-up of neighbour_matrix over the loop: {best['per-pair loop'] / best['neighbour_matrix']:.1f}x")


if __name__ == "__main__":
    main()
