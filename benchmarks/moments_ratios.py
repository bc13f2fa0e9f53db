"""All layer pairs from streamed feature moments against each pair from full data.

Usage::

    python benchmarks/moments_ratios.py                 # 24 layers x 768 x 10,000, batches of 256
    python benchmarks/moments_ratios.py --quick         # 6 layers x 64 x 2,000: a smoke run
    python benchmarks/moments_ratios.py --device cuda   # torch tensors on the GPU
    python benchmarks/moments_ratios.py --json out.json # also write the figures

The workload of issue 14: ``L`` layers of ``d`` features (a chain ``h_{l+1} = tanh(h_l W_l
+ noise)``, float32, so neighbouring layers are related) over ``n`` examples in batches.

- **repsim**: :class:`repsim.FeatureMoments` fed batch by batch (one float64 product per
  batch over all layers), then ``compute(measure)`` for every pair, per measure.
- **per pair**: the full-data function (``repsim.cka``, ``repsim.nbs``, ...) with the
  measure's presets on the whole ``(n, d)`` arrays of each pair. The measures are every
  registered measure with an exact streaming form (``repsim.measure_names()``, read from
  the registry: nothing is listed here). Every pair of the workload costs the same, so it is timed
  on ``--baseline-pairs`` pairs (default: all pairs with ``--quick``, 12 otherwise) and
  scaled to all ``L (L + 1) / 2`` pairs (symmetric measures) or ``L²`` (asymmetric);
  the output says which.

It prints the accumulation time, per measure the compute time, the per-pair baseline
(measured and scaled) and their ratio, and the largest relative difference between the two
on the timed pairs (absolute where the value is ~0). They agree to ~1e-9 or better, except
unbiased CKA to ~1e-8: the full-data gram path forms float32 grams of float32 activations,
while the accumulator upcasts every batch to float64 before its product. Times are single runs (minimum over
``--repeats`` for the accumulation); run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np

import repsim
from repsim._registry import moment_params

def streamed_measures():
    """Every registered measure with an exact streaming form, from the registry: name ->
    (the measure, a callable ``(x, y)`` with its presets; whether it is symmetric). A
    measure whose presets have no streaming form (``cka_rbf``) is left out, as
    ``FeatureMoments.compute`` refuses it."""
    out = {}
    for name in repsim.measure_names():
        m = repsim.measure(name)
        if m.family.moments is None:
            continue
        try:
            moment_params(name, {})
        except ValueError:
            continue
        out[name] = (m, m.is_symmetric(m.bind({})))
    return out


MEASURES = streamed_measures()


def make_layers(layers, d, n, seed):
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((n, d)).astype(np.float32)
    out = []
    for _ in range(layers):
        w = (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)
        h = np.tanh(h @ w + 0.3 * rng.standard_normal((n, d)).astype(np.float32)) + 0.5
        out.append(h)
    return out


def synced(device):
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--features", type=int, default=768)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--quick", action="store_true",
                    help="6 layers x 64 features x 2,000 examples (overrides the sizes)")
    ap.add_argument("--measures", default=",".join(MEASURES),
                    help=f"comma-separated subset of {', '.join(MEASURES)}")
    ap.add_argument("--baseline-pairs", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu (numpy) or cuda[:N] (torch)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.quick:
        args.layers, args.features, args.n = 6, 64, 2000
    measures = [m.strip() for m in args.measures.split(",") if m.strip()]
    unknown = sorted(set(measures) - set(MEASURES))
    if unknown:
        ap.error(f"unknown measures {unknown}; choose from {list(MEASURES)}")

    host = make_layers(args.layers, args.features, args.n, args.seed)
    if args.device == "cpu":
        acts = host
    else:
        import torch

        acts = [torch.from_numpy(a).to(args.device) for a in host]
    names = [f"layer{i}" for i in range(args.layers)]
    bounds = list(range(0, args.n, args.batch)) + [args.n]

    acc = repsim.FeatureMoments(max_bytes=None)
    print(f"{args.layers} layers x {args.features} features x {args.n} examples, batches of "
          f"{args.batch} ({len(bounds) - 1} batches), {args.device}; states "
          f"{acc.required_bytes([args.features] * args.layers) / 2**30:.2f} GiB with workspace")
    accumulate = float("inf")
    for _ in range(args.repeats):
        acc.reset()
        synced(args.device)
        t0 = time.perf_counter()
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            acc.update({k: a[lo:hi] for k, a in zip(names, acts)})
        synced(args.device)
        accumulate = min(accumulate, time.perf_counter() - t0)
    print(f"accumulate: {accumulate:.3f} s")

    all_pairs_sym = list(itertools.combinations_with_replacement(range(args.layers), 2))
    all_pairs = list(itertools.product(range(args.layers), repeat=2))
    k = args.baseline_pairs or (len(all_pairs) if args.quick else 12)
    rng = np.random.default_rng(args.seed + 1)
    report = {"config": vars(args), "accumulate_s": accumulate, "measures": {}}
    print(f"{'measure':<15}{'compute s':>11}{'pairs':>7}{'timed':>7}{'per-pair s':>12}"
          f"{'all pairs s':>13}{'ratio':>9}{'max diff':>14}")
    for name in measures:
        fn, symmetric = MEASURES[name]
        pairs = all_pairs_sym if symmetric else all_pairs
        synced(args.device)
        t0 = time.perf_counter()
        result = acc.compute(fn.family.name, **fn.options).values
        synced(args.device)
        compute = time.perf_counter() - t0
        timed = [pairs[i] for i in sorted(rng.choice(len(pairs), min(k, len(pairs)),
                                                      replace=False))]
        diffs = []
        t0 = time.perf_counter()
        for i, j in timed:
            value = float(fn(acts[i], acts[j]))
            # relative; absolute where the value is ~0 (a distance of a layer to itself)
            diffs.append(abs(result[i, j] - value) / (abs(value) if abs(value) > 1e-6 else 1.0))
        synced(args.device)
        measured = time.perf_counter() - t0
        scaled = measured * len(pairs) / len(timed)
        total = accumulate + compute
        report["measures"][name] = dict(compute_s=compute, pairs=len(pairs), timed_pairs=len(timed),
                                        per_pair_timed_s=measured, per_pair_all_s=scaled,
                                        ratio=scaled / total, max_rel_diff=max(diffs))
        print(f"{name:<15}{compute:>11.3f}{len(pairs):>7}{len(timed):>7}{measured:>12.3f}"
              f"{scaled:>13.2f}{scaled / total:>8.1f}x{max(diffs):>14.2e}")
    print("ratio = (per-pair time scaled to all pairs) / (accumulate + compute of that measure)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=str)


if __name__ == "__main__":
    main()
