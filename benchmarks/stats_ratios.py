"""Cost of uncertainty, measured side by side in one process (interleaved, best of N).

    python benchmarks/stats_ratios.py [--repeats 5]

Prints (1) MinibatchCKA update time with ``groups=10`` over the plain accumulator, and
(2) ``repsim.bootstrap`` (100 half-samples) and ``repsim.permutation_test`` (100
permutations) in units of one full-data ``cka_matrix`` of the same layers.
"""

import argparse
import time

import numpy as np

import repsim


def _layers(n_layers, n, p, seed=0):
    rng = np.random.default_rng(seed)
    return {f"layer{i}": rng.standard_normal((n, p), dtype=np.float32) for i in range(n_layers)}


def _best(fns, repeats):
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():  # interleaved: load drifts hit every variant alike
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    batch = _layers(32, 256, 512)

    def feed(groups, uncertainty=False):
        def run():
            acc = repsim.MinibatchCKA(groups=groups)
            for _ in range(4):
                acc.update(batch)
            if uncertainty:
                acc.compute(uncertainty=True)
        return run

    feed(None)(), feed(10, True)()  # warm up (numba compile, caches)
    t = _best({"plain": feed(None), "groups10": feed(10), "groups10+compute": feed(10, True)},
              args.repeats)
    print(f"MinibatchCKA 32 layers x 4 batches n=256 p=512: plain updates {t['plain']*1e3:.1f} ms, "
          f"with groups=10 {t['groups10']*1e3:.1f} ms (ratio {t['groups10']/t['plain']:.3f}); "
          f"plus compute(uncertainty=True) {t['groups10+compute']*1e3:.1f} ms "
          f"(ratio {t['groups10+compute']/t['plain']:.3f})")

    layers = _layers(16, 400, 256)
    for est in ("biased", "unbiased"):
        fns = {
            "cka_matrix": lambda: repsim.cka_matrix(layers, estimator=est),
            "bootstrap100": lambda: repsim.bootstrap(repsim.cka_matrix, layers, estimator=est,
                                                     n_resamples=100, progress=False),
            "permutation100": lambda: repsim.permutation_test(layers, estimator=est,
                                                              n_permutations=100, progress=False),
        }
        t = _best(fns, max(2, args.repeats // 2))
        base = t["cka_matrix"]
        print(f"16 layers n=400 p=256 {est}: cka_matrix {base*1e3:.1f} ms; bootstrap x100 "
              f"{t['bootstrap100']/base:.1f}x; permutations x100 {t['permutation100']/base:.1f}x")


if __name__ == "__main__":
    main()
