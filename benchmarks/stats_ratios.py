"""Cost of uncertainty, measured side by side in one process (interleaved, best of N).

    python benchmarks/stats_ratios.py [--repeats 5] [--quick] [--data gaussian|resnet]

Prints (1) MinibatchCKA update time with ``groups=10`` over the plain accumulator,
(2) ``repsim.bootstrap`` (100 half-samples) and ``repsim.permutation_test`` (100
permutations) in units of one full-data ``cka_matrix`` of the same layers -- also with the
measure given as ``functools.partial(repsim.cka_matrix, ...)``, which must take the same
fast path (ratio ~1 to the plain call) -- and (3) ``permutation_test`` of a measure
without a gram path (``repsim.cca``, recomputed per permutation and layer pair) in units
of one call of the measure. ``--quick`` shrinks every size (a correctness run, not a
timing). ``--data resnet`` takes the accumulator's layers from a CIFAR ResNet-20's
post-ReLU, post-BN and residual-sum outputs (the ASV suite's real activations, large
column means) instead of Gaussian data.
"""

import argparse
import functools
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
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check that it runs")
    ap.add_argument("--data", choices=["gaussian", "resnet"], default="gaussian")
    args = ap.parse_args()
    n_layers, n, p = (4, 40, 16) if args.quick else (16, 400, 256)

    batch = _layers(4, 32, 16) if args.quick else _layers(32, 256, 512)
    if args.data == "resnet":
        from benchmarks.bench_core import _real_layers  # benchmarks/ is this script's directory

        batch = {k: v.numpy() for k, v in _real_layers("resnet", 32 if args.quick else 256).items()}

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
    print(f"MinibatchCKA {len(batch)} layers x 4 batches n={len(next(iter(batch.values())))}: plain updates {t['plain']*1e3:.1f} ms, "
          f"with groups=10 {t['groups10']*1e3:.1f} ms (ratio {t['groups10']/t['plain']:.3f}); "
          f"plus compute(uncertainty=True) {t['groups10+compute']*1e3:.1f} ms "
          f"(ratio {t['groups10+compute']/t['plain']:.3f})")

    layers = _layers(n_layers, n, p)
    for est in ("biased", "unbiased"):
        partial = functools.partial(repsim.cka_matrix, estimator=est)
        fns = {
            "cka_matrix": lambda: repsim.cka_matrix(layers, estimator=est),
            "bootstrap100": lambda: repsim.bootstrap(repsim.cka_matrix, data=(layers,),
                                                     measure_kwargs={"estimator": est},
                                                     n_resamples=100, progress=False),
            "bootstrap100_partial": lambda: repsim.bootstrap(partial, data=(layers,),
                                                             n_resamples=100, progress=False),
            "permutation100": lambda: repsim.permutation_test(layers, estimator=est,
                                                              n_permutations=100, progress=False),
        }
        t = _best(fns, max(2, args.repeats // 2))
        base = t["cka_matrix"]
        print(f"{n_layers} layers n={n} p={p} {est}: cka_matrix {base*1e3:.1f} ms; bootstrap x100 "
              f"{t['bootstrap100']/base:.1f}x (as a partial {t['bootstrap100_partial']/base:.1f}x); "
              f"permutations x100 {t['permutation100']/base:.1f}x")

    small = _layers(4, n, 16, seed=1)
    fns = {
        "cca": lambda: repsim.cca(small["layer0"], small["layer1"]),
        "perm20": lambda: repsim.permutation_test(small, measure=repsim.cca, n_permutations=20,
                                                  progress=False),
    }
    t = _best(fns, max(2, args.repeats // 2))
    print(f"permutation_test(measure=cca), 4x4 layer pairs n={n} p=16, 20 permutations: "
          f"{t['perm20']/t['cca']:.0f}x one cca call (16 pairs x 21 = 336 calls)")


if __name__ == "__main__":
    main()
