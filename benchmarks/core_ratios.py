"""Side-by-side timings of the CKA core against the gram floor, in one process.

Usage::

    python benchmarks/core_ratios.py [--repeats 5] [--layers 64] [--batches 4] [--n 256] [--p 4096]

Prints, for the all-pairs minibatch CKA workload (float32), the time of repsim's numpy and
torch paths as a multiple of the gram floor (the float32 grams ``X X^T`` alone, same
library), the speed-up over a loop over layer pairs with an ``n x n x n`` product per pair
(what most peer libraries do), and the numba-vs-numpy figures of the fused steps. Runs
are interleaved and the minimum over repeats is kept, so a shared machine's noise hits
both sides alike.
"""

import argparse
import time

import numpy as np

import repsim
from repsim.kernels import centre_into, rbf_from_linear


def best_of(fns, repeats):
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def per_pair_loop(batch):
    """Unbiased HSIC pair by pair with n x n x n products (the peer-library pattern)."""
    import torch

    grams = [x @ x.T for x in batch]
    n = grams[0].shape[0]
    tilde = [g.double() - torch.diag(torch.diag(g.double())) for g in grams]
    one = torch.ones(n, dtype=torch.float64)

    def h(k, l):
        kl = k @ l
        return (torch.trace(kl) + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * (one @ kl @ one)) / (n * (n - 3))

    self_terms = [h(k, k) for k in tilde]
    out = torch.empty(len(tilde), len(tilde), dtype=torch.float64)
    for i, k in enumerate(tilde):
        for j, l in enumerate(tilde):
            out[i, j] = h(k, l) / torch.sqrt(self_terms[i] * self_terms[j])
    return out


def main():
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layers", type=int, default=64)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--p", type=int, default=4096)
    ap.add_argument("--pair-layers", type=int, default=16,
                    help="layers in the per-pair-loop comparison (it is slow)")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    batch_np = {f"layer{i}": rng.standard_normal((args.n, args.p), dtype=np.float32) for i in range(args.layers)}
    batch_t = {k: torch.from_numpy(v) for k, v in batch_np.items()}
    print(f"workload: {args.layers} layers x {args.batches} batches of n={args.n}, p={args.p}, float32; "
          f"torch threads={torch.get_num_threads()}; repeats={args.repeats} (min kept)")

    def floor(batch):
        def run():
            for _ in range(args.batches):
                for x in batch.values():
                    x @ x.T
        return run

    def minibatch(batch, **kw):
        def run():
            acc = repsim.MinibatchCKA(**kw)
            for _ in range(args.batches):
                acc.update(batch)
            return acc.compute()
        return run

    minibatch(batch_np)()  # compile the numba kernels once
    t = best_of({
        "floor numpy": floor(batch_np),
        "repsim numpy (numba engine)": minibatch(batch_np),
        "repsim numpy (numpy engine)": minibatch(batch_np, engine="numpy"),
        "floor torch": floor(batch_t),
        "repsim torch": minibatch(batch_t),
    }, args.repeats)
    print("\n| path | time (s) | x gram floor |\n|---|---|---|")
    for name in ("repsim numpy (numba engine)", "repsim numpy (numpy engine)"):
        print(f"| {name} | {t[name]:.3f} | {t[name] / t['floor numpy']:.3f} |")
    print(f"| gram floor numpy | {t['floor numpy']:.3f} | 1 |")
    print(f"| repsim torch | {t['repsim torch']:.3f} | {t['repsim torch'] / t['floor torch']:.3f} |")
    print(f"| gram floor torch | {t['floor torch']:.3f} | 1 |")

    # per-pair loop vs one packed product, on one batch of fewer layers (the loop is slow)
    sub = {k: batch_t[k] for k in list(batch_t)[: args.pair_layers]}
    one_batch = dict(args.__dict__)

    def packed():
        acc = repsim.MinibatchCKA()
        acc.update(sub)
        return acc.compute()

    tp = best_of({"per-pair loop": lambda: per_pair_loop(list(sub.values())), "repsim": packed},
                 max(1, args.repeats // 2))
    ref = per_pair_loop(list(sub.values())).numpy()
    dev = float(np.max(np.abs(packed().values - ref)))
    print(f"\nper-pair loop ({args.pair_layers} layers, 1 batch, torch): {tp['per-pair loop']:.3f} s; "
          f"repsim {tp['repsim']:.3f} s; speed-up {tp['per-pair loop'] / tp['repsim']:.1f}x; "
          f"max |difference| {dev:.2e}")
    del one_batch

    # the fused numba steps against their numpy equivalents (one layer's n x n gram)
    x = batch_np["layer0"]
    k = x @ x.T
    out = np.empty(args.n * args.n)
    steps = {
        "U-centre (numba)": lambda: centre_into(k, True, out, np, engine="numba"),
        "U-centre (numpy)": lambda: centre_into(k, True, out, np, engine="numpy"),
        "centre (numba)": lambda: centre_into(k, False, out, np, engine="numba"),
        "centre (numpy)": lambda: centre_into(k, False, out, np, engine="numpy"),
        "rbf from gram (numba)": lambda: rbf_from_linear(k, np, sigma=10.0, engine="numba"),
        "rbf from gram (numpy)": lambda: rbf_from_linear(k, np, sigma=10.0, engine="numpy"),
    }
    for f in steps.values():
        f()
    ts = best_of({name: (lambda f=f: [f() for _ in range(20)]) for name, f in steps.items()}, args.repeats)
    print("\n| step (n=%d) | numba (ms) | numpy (ms) | numpy / numba |\n|---|---|---|---|" % args.n)
    for step in ("U-centre", "centre", "rbf from gram"):
        a, b = ts[f"{step} (numba)"] / 20 * 1e3, ts[f"{step} (numpy)"] / 20 * 1e3
        print(f"| {step} | {a:.3f} | {b:.3f} | {b / a:.2f} |")


if __name__ == "__main__":
    main()
