"""repsim.similarity_matrix (each layer prepared once, half of a symmetric matrix) against a
per-pair loop of the same function, for the measures of issue 22's done-when.

Times are process CPU seconds (``time.process_time``: all threads of this process), so a
shared machine's other work and pauses do not inflate one side; they are still coarse
under load (say what ``uptime`` showed). Usage::

    python benchmarks/similarity_matrix_ratios.py [--layers 24] [--n 2000] [--p 128]
        [--measures cca,svcca,pwcca,rsa,mutual_knn,procrustes_angular] [--sample 24] [--full]

Workload: ``--layers`` float32 layers of ``--n`` x ``--p`` (a chain of related layers).
For each measure:

* ``matrix``: ``repsim.similarity_matrix(layers, measure=name)``, timed once;
* ``loop``: ``repsim.measure(name)(x, y)`` on every ordered pair of layers (``L²`` calls, what
  a loop over a pairwise function -- and the ``repsim`` command before the registry --
  does). Without ``--full`` only ``--sample`` random pairs are timed and the per-pair
  time is scaled to ``L²`` pairs (``loop/2`` is the same loop over the upper half only,
  for the symmetric measures: the fairest loop a user could write).

Values: the matrix of the float64 copy of the first ``--check-layers`` layers (all of them
with ``--full``) against the function on every pair of those; the largest absolute
difference is printed and must be <= 1e-12.
"""

import argparse
import os
import time

import numpy as np

import repsim

DONE_WHEN = "cca,svcca,pwcca,rsa,mutual_knn,procrustes_angular"


def make_layers(layers, n, p, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, p))
    out = {}
    for i in range(layers):
        base = np.tanh(base @ rng.standard_normal((p, p)) / np.sqrt(p)) \
            + 0.1 * rng.standard_normal((n, p))
        out[f"layer{i:02d}"] = base.astype(np.float32)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--p", type=int, default=128)
    ap.add_argument("--measures", default=DONE_WHEN)
    ap.add_argument("--sample", type=int, default=12, help="pairs timed in the loop")
    ap.add_argument("--full", action="store_true", help="time every pair of the loop")
    ap.add_argument("--check-layers", type=int, default=4,
                    help="float64 layers whose every pair is checked against the function")
    args = ap.parse_args(argv)
    layers = make_layers(args.layers, args.n, args.p)
    check = list(layers) if args.full else list(layers)[: args.check_layers]
    wide = {k: layers[k].astype(np.float64) for k in check}
    names = list(layers)
    pairs = [(a, b) for a in names for b in names]
    rng = np.random.default_rng(1)
    timed = pairs if args.full else [pairs[i] for i in rng.choice(len(pairs), args.sample,
                                                                     replace=False)]
    print(f"{args.layers} float32 layers of {args.n} x {args.p}; loop timed on "
          f"{len(timed)} of {len(pairs)} ordered pairs; load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'measure (CPU s)':<20}{'matrix s':>10}{'loop s':>10}{'loop/2 s':>10}{'ratio':>8}"
          f"{'ratio/2':>9}{'max |diff| f64':>16}")
    for name in args.measures.split(","):
        m = repsim.measure(name)
        t0 = time.process_time()
        repsim.similarity_matrix(layers, measure=name, progress=False)
        t_matrix = time.process_time() - t0
        t0 = time.process_time()
        for a, b in timed:
            float(m(layers[a], layers[b]))
        per_pair = (time.process_time() - t0) / len(timed)
        t_loop = per_pair * len(pairs)
        half = len(names) * (len(names) + 1) // 2 if m.symmetric else len(pairs)
        t_half = per_pair * half
        exact = repsim.similarity_matrix(wide, measure=name, progress=False)
        diff = max(abs(float(exact.sel(layer_a=a, layer_b=b)) - float(m(wide[a], wide[b])))
                   for a in wide for b in wide)
        print(f"{m.name:<20}{t_matrix:>10.2f}{t_loop:>10.2f}{t_half:>10.2f}"
              f"{t_loop / t_matrix:>8.1f}{t_half / t_matrix:>9.1f}{diff:>16.1e}", flush=True)


if __name__ == "__main__":
    main()
