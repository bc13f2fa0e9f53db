"""The ``repsim`` command against the library call it wraps (issue 22's done-when).

Usage (on a quiet machine; note the load, the figures are meaningless under load)::

    python benchmarks/cli_ratios.py [--layers 24] [--n 2000] [--features 128] [--repeats 3] \
        [--measures cka_linear,cka_linear_unbiased]

Workload: ``--layers`` float32 layers of ``--n`` x ``--features`` in one ``.npz`` file.
For each CKA measure (any name of one: its estimator and kernel come from the registry)
it times

* ``library``: ``np.load`` of the file plus ``repsim.cka_matrix`` on its layers (what a
  user would write in Python), and ``cka_matrix`` alone;
* ``command``: ``repsim a.npz --measure ... --out r.nc`` as a subprocess (interpreter
  start, imports, reading, checking, computing, writing the netCDF result), and
  ``repsim.cli.main`` in this process (the same without start-up and imports),
* ``script``: the same work written as a Python script (``np.load``, ``cka_matrix``,
  ``save_result``) in a fresh interpreter: the like-for-like comparison of the command's
  start-up (imports of torch and xarray/dask, first-touch memory, numba's cache),

checks that the command's result equals ``cka_matrix`` (to 1e-12) and prints the ratios.
Runs are interleaved; the minimum over ``--repeats`` is kept, of the wall time and of the
CPU time (all threads, children included for the subprocess), which a shared or briefly
paused machine disturbs less.
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

import repsim
from repsim import cli


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--features", "--p", dest="p", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--measures", default="cka_linear,cka_linear_unbiased")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "a.npz")
    base = rng.standard_normal((args.n, args.p))
    layers = {}
    for i in range(args.layers):
        base = np.tanh(base @ rng.standard_normal((args.p, args.p)) / np.sqrt(args.p))
        layers[f"layer{i}"] = (base + 0.1 * rng.standard_normal(base.shape)).astype(np.float32)
    np.savez(path, **layers)
    out = os.path.join(folder, "r.nc")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    print(f"{args.layers} float32 layers x {args.n} x {args.p} in one .npz; "
          f"load: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    for measure in args.measures.split(","):
        spec = repsim.measure(measure)
        if spec.function != "cka":
            raise SystemExit(f"{measure}: not a CKA measure (this script compares the command "
                             "with repsim.cka_matrix); see benchmarks/allpairs_ratios.py")
        bound = spec.bind({})
        cka_options = {k: bound[k] for k in ("kernel", "estimator")}
        best = {k: float("inf") for k in ("library", "cka_matrix", "command", "main", "script")}
        cpu = dict(best)

        def timed(key, fn, child=False):
            who = resource.RUSAGE_CHILDREN if child else resource.RUSAGE_SELF
            r0, t0 = resource.getrusage(who), time.perf_counter()
            value = fn()
            r1, t1 = resource.getrusage(who), time.perf_counter()
            best[key] = min(best[key], t1 - t0)
            used = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
            cpu[key] = min(cpu[key], used)
            return value

        def library():
            with np.load(path) as f:
                loaded = {k: f[k] for k in f.files}
            return timed("cka_matrix", lambda: repsim.cka_matrix(loaded, **cka_options))

        command = [sys.executable, "-m", "repsim.cli", path, "--measure", measure, "--out", out,
                   "--no-progress", "--no-summary"]
        # the same work as a Python script in a fresh interpreter: what the command replaces
        script = [sys.executable, "-c", (
            "import sys, numpy as np, repsim\n"
            "with np.load(sys.argv[1]) as f:\n"
            "    layers = {k: f[k] for k in f.files}\n"
            f"repsim.save_result(repsim.cka_matrix(layers, **{cka_options!r}), sys.argv[2])\n"),
            path, out + ".script.nc"]
        for _ in range(args.repeats):
            ref = timed("library", library)
            timed("command", lambda: subprocess.run(command, check=True, env=env), child=True)
            timed("script", lambda: subprocess.run(script, check=True, env=env), child=True)
            assert timed("main", lambda: cli.main(command[3:])) == 0
            diff = float(np.max(np.abs(repsim.load_result(out).values - ref.values)))
            assert diff <= 1e-12, diff
        for what, t in (("wall", best), ("cpu", cpu)):
            print(f"{spec.name:20s} {what:4s} np.load + cka_matrix {t['library']:6.2f} s "
                  f"(cka_matrix {t['cka_matrix']:.2f} s) | command (subprocess) "
                  f"{t['command']:6.2f} s = {t['command'] / t['library']:.2f}x | "
                  f"cli.main {t['main']:6.2f} s = {t['main'] / t['library']:.2f}x | "
                  f"script (subprocess) {t['script']:6.2f} s: command/script = "
                  f"{t['command'] / t['script']:.2f}x")
        print(f"{spec.name:20s} max |command - cka_matrix| = {diff:.1e}; "
              f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
