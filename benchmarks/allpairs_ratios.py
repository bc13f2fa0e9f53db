"""repsim.similarity_matrix (each layer prepared once, half of a symmetric matrix) against a
per-pair loop of the same public function, for the measures of issue 22's done-when
(all-pairs path >= 3x faster, values identical to <= 1e-12 in float64).

Usage (on a quiet machine: say what the printed load average was)::

    python benchmarks/allpairs_ratios.py [--layers 24] [--n 2000] [--features 128]
        [--repeats 3] [--measures cca,svcca,pwcca,rsa,mutual_knn,procrustes_angular]
        [--sample 12] [--full] [--check-layers 4]

Workload: ``--layers`` float32 layers of ``--n`` x ``--features`` (a chain of related
layers). Each name goes through the registry (``repsim.measure``: aliases and
similarity-repository ids work too); the loop calls the public function the registry
names (``repsim.<function>(x, y, **presets)``, e.g. ``repsim.shape_distance(x, y,
alpha=1.0)`` for ``procrustes_angular``). For each measure, interleaved ``--repeats``
times, the minimum kept, of wall time and of process CPU time (``time.process_time``: all
threads of this process):

* ``matrix``: ``repsim.similarity_matrix(layers, measure=name)``;
* ``loop``: the function on every ordered pair (``L²`` calls, what a loop over a pairwise
  function does). Without ``--full`` only ``--sample`` random pairs are timed and the
  per-pair time is scaled to ``L²`` pairs; ``loop/2`` is the same loop over the upper
  half only, for the symmetric measures (the fairest loop a user could write).

Values: the matrix of float64 copies of the first ``--check-layers`` layers (all of them
with ``--full``) against the function on every ordered pair of those; the largest absolute
difference is printed, and the exit status is 1 when one exceeds 1e-12.
"""

import argparse
import os
import sys
import time

import numpy as np

import repsim

DONE_WHEN = "cca,svcca,pwcca,rsa,mutual_knn,procrustes_angular"
TOLERANCE = 1e-12


def make_layers(layers, n, p, seed=0):
    """``layers`` related float32 layers of ``n`` x ``p``, in order."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, p))
    out = {}
    for i in range(layers):
        base = np.tanh(base @ rng.standard_normal((p, p)) / np.sqrt(p)) \
            + 0.1 * rng.standard_normal((n, p))
        out[f"layer{i:02d}"] = base.astype(np.float32)
    return out


def timed(fn):
    """``(wall s, cpu s)`` of one call of ``fn``."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def max_diff(m, function, layers):
    """Largest |similarity_matrix - per-pair function| over every ordered pair."""
    sim = repsim.similarity_matrix(layers, measure=m.name, progress=False).values
    arrays = list(layers.values())
    return max(abs(float(sim[i, j]) - float(function(a, b, **m.options)))
               for i, a in enumerate(arrays) for j, b in enumerate(arrays))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--features", "--p", dest="features", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs; minimum kept")
    ap.add_argument("--measures", default=DONE_WHEN, help="comma-separated measure names")
    ap.add_argument("--sample", type=int, default=12, help="pairs timed in the loop")
    ap.add_argument("--full", action="store_true", help="time and check every pair")
    ap.add_argument("--check-layers", type=int, default=4,
                    help="float64 layers whose every pair is checked against the function")
    args = ap.parse_args(argv)
    layers = make_layers(args.layers, args.n, args.features)
    names = list(layers)
    pairs = [(a, b) for a in names for b in names]
    rng = np.random.default_rng(1)
    timed_pairs = pairs if args.full else \
        [pairs[i] for i in rng.choice(len(pairs), min(args.sample, len(pairs)), replace=False)]
    check = names if args.full else names[: args.check_layers]
    wide = {k: layers[k].astype(np.float64) for k in check}
    print(f"{args.layers} float32 layers of {args.n} x {args.features}; loop timed on "
          f"{len(timed_pairs)} of {len(pairs)} ordered pairs, values checked on "
          f"{len(check)}² float64 pairs; best of {args.repeats}; load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"{'measure':<20}{'clock':>6}{'matrix s':>10}{'loop s':>10}{'loop/2 s':>10}"
          f"{'ratio':>8}{'ratio/2':>9}{'max |diff| f64':>16}")
    failed = []
    for name in args.measures.split(","):
        m = repsim.measure(name.strip())
        function = getattr(repsim, m.function)
        best = {"matrix": [np.inf, np.inf], "loop": [np.inf, np.inf]}
        warm = make_layers(2, 40, 6, seed=2)  # first-use imports and compilation, untimed
        repsim.similarity_matrix(warm, measure=m.name, progress=False)
        function(warm["layer00"], warm["layer01"], **m.options)

        def loop():
            for a, b in timed_pairs:
                float(function(layers[a], layers[b], **m.options))

        for _ in range(args.repeats):
            for key, fn in (("matrix", lambda: repsim.similarity_matrix(
                    layers, measure=m.name, progress=False)), ("loop", loop)):
                best[key] = [min(old, new) for old, new in zip(best[key], timed(fn))]
        diff = max_diff(m, function, wide)
        if not diff <= TOLERANCE:
            failed.append(m.name)
        half = len(names) * (len(names) + 1) // 2 if m.symmetric else len(pairs)
        for k, clock in enumerate(("wall", "cpu")):
            t_matrix = best["matrix"][k]
            t_loop = best["loop"][k] / len(timed_pairs) * len(pairs)
            t_half = t_loop * half / len(pairs)
            print(f"{m.name:<20}{clock:>6}{t_matrix:>10.2f}{t_loop:>10.2f}{t_half:>10.2f}"
                  f"{t_loop / t_matrix:>8.1f}{t_half / t_matrix:>9.1f}"
                  + (f"{diff:>16.1e}" if k == 0 else ""), flush=True)
    if failed:
        print(f"values differ by more than {TOLERANCE}: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
