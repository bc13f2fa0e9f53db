"""What the measures streamed from pairs of example blocks cost -- RBF CKA (bandwidth given
or the exact median) and mutual k-NN (both metrics) -- against linear CKA in blocks, and
each read whole (issue 23 item 2: the measures that read a store larger than memory).

Run: ``python benchmarks/store_block_cost.py [--n 4096 --layers 6 --width 512 --batch 1024]``.
A float32 store of ``layers`` layers (ReLU of random projections of one shared signal, so
the values are not trivial) is written to a temporary directory; each path runs
``--repeats`` times and the best time is reported, with the ratio to linear CKA in blocks.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

import numpy as np
import xarray as xr

import repsim
from repsim.store import FORMAT, FORMAT_KEY


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    signal = rng.standard_normal((args.n, 32))
    layers = {f"l{i}": np.maximum(signal @ rng.standard_normal((32, args.width)) + i, 0)
              .astype(np.float32) for i in range(args.layers)}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s.zarr")
        xr.Dataset({k: (("example", f"{k}_feature"), v) for k, v in layers.items()},
                   coords={"example_id": ("example", np.arange(args.n))},
                   attrs={FORMAT_KEY: FORMAT, "complete": True, "layers": list(layers)}
                   ).chunk({"example": args.batch}).to_zarr(path, consolidated=False)
        ds = repsim.open_activations(path)
        runs = {
            "linear, in blocks": dict(measure="cka_linear", batch_size=args.batch),
            "rbf sigma given, in blocks": dict(measure="cka_rbf", sigma=30.0, batch_size=args.batch),
            "rbf median, in blocks": dict(measure="cka_rbf", batch_size=args.batch),
            "mutual_knn cosine, in blocks": dict(measure="mutual_knn", batch_size=args.batch),
            "mutual_knn euclid, in blocks": dict(measure="mutual_knn", metric="euclidean",
                                                 batch_size=args.batch),
            "linear, read whole": dict(measure="cka_linear"),
            "rbf median, read whole": dict(measure="cka_rbf"),
            "mutual_knn cosine, read whole": dict(measure="mutual_knn"),
            "mutual_knn euclid, read whole": dict(measure="mutual_knn", metric="euclidean"),
        }
        best, values = {}, {}
        for _ in range(args.repeats):
            for name, kw in runs.items():
                t = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    sim = repsim.similarity_matrix(ds, progress=False, **kw)
                best[name] = min(best.get(name, np.inf), time.perf_counter() - t)
                values[name] = sim
    print(f"# n={args.n}, {args.layers} layers x {args.width} float32 features, blocks of "
          f"{args.batch} ({-(-args.n // args.batch)} blocks), best of {args.repeats}")
    base = best["linear, in blocks"]
    for name, t in best.items():
        extra = ""
        if "bandwidth_passes" in values[name].attrs:
            extra = f", bandwidth passes {values[name].attrs['bandwidth_passes']}"
        print(f"{name:30s} {t:7.2f} s   {t / base:5.2f}x linear in blocks{extra}")
    for a, b in (("rbf median, in blocks", "rbf median, read whole"),
                 ("linear, in blocks", "linear, read whole"),
                 ("mutual_knn cosine, in blocks", "mutual_knn cosine, read whole"),
                 ("mutual_knn euclid, in blocks", "mutual_knn euclid, read whole")):
        d = np.abs(values[a].values - values[b].values).max()
        print(f"max |{a} - {b}| = {d:.2e}")


if __name__ == "__main__":
    main()
