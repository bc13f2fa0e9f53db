"""The ``repsim`` command: compare saved activations layer by layer with any measure.

For users of JAX, TensorFlow or anything else that can save arrays::

    repsim acts_a.npz [acts_b.npz] --measure procrustes_angular --out result.nc --plot map.png

Inputs (one layer per entry, first axis = examples, the same examples in the same order
in every layer and file):

* a ``.npz`` file (one array per layer; read one layer at a time),
* a folder of ``.npy`` files or a single ``.npy`` file (memory-mapped: batches are read
  from disk),
* a ``.safetensors`` file (read lazily, slice by slice),
* a netCDF-4 / HDF5 file (``.nc``, ``.h5``, ``.hdf5``): every dataset at the root that is
  not a netCDF dimension scale is a layer (sliced from disk by h5py).

``--measure`` is any row of :func:`repsim.measures` (with that row's options, which
``--option key=value`` overrides) or ``minibatch_cka``, which streams ``--batch-size``
examples at a time from disk into :class:`repsim.MinibatchCKA` and never holds a whole
layer (a last batch of fewer than 4 examples joins the one before it). The other measures need whole layers and read one pair of layers at a time; the
neighbourhood measures read every layer once and pair them from their k-NN lists
(:func:`repsim.neighbour_matrix`). The result (a layer x layer ``xarray.DataArray``,
provenance in its attrs) is written atomically to ``--out`` (netCDF, via
:func:`repsim.save_result`) and drawn by :func:`repsim.plot_similarity` to ``--plot``.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys

import numpy as np


class Source:
    """Layers of one saved-activations file or folder, read lazily."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._open()

    def _open(self):
        p = self.path
        low = p.lower()
        if os.path.isdir(p):
            files = sorted(f for f in os.listdir(p) if f.endswith(".npy"))
            if not files:
                raise ValueError(f"folder {p!r} holds no .npy files")
            self._arrays = {f[:-4]: np.load(os.path.join(p, f), mmap_mode="r") for f in files}
            self.kind = "npy"
        elif low.endswith(".npy"):
            self._arrays = {os.path.basename(p)[:-4]: np.load(p, mmap_mode="r")}
            self.kind = "npy"
        elif low.endswith(".npz"):
            self._npz = np.load(p)
            self._arrays = {k: None for k in self._npz.files}
            self.kind = "npz"
        elif low.endswith(".safetensors"):
            from safetensors import safe_open

            self._st = safe_open(p, framework="numpy")
            self._arrays = {k: None for k in self._st.keys()}
            self.kind = "safetensors"
        elif low.endswith((".nc", ".h5", ".hdf5", ".nc4")):
            import h5py

            self._h5 = h5py.File(p, "r")
            self._arrays = {
                k: v for k, v in self._h5.items()
                if isinstance(v, h5py.Dataset) and v.attrs.get("CLASS") != b"DIMENSION_SCALE"
            }
            self.kind = "hdf5"
        else:
            raise ValueError(
                f"cannot read {p!r}: expected a .npz, .npy, .safetensors, .nc/.h5/.hdf5 file "
                "or a folder of .npy files"
            )
        if not self._arrays:
            raise ValueError(f"{p!r} holds no layers")

    @property
    def names(self):
        return list(self._arrays)

    def shape(self, name):
        if self.kind == "npz":
            return self.read(name).shape
        if self.kind == "safetensors":
            return tuple(self._st.get_slice(name).get_shape())
        return tuple(self._arrays[name].shape)

    def read(self, name, start=None, stop=None):
        """Examples ``start:stop`` of layer ``name`` as a numpy array (whole layer by default)."""
        sl = slice(start, stop)
        if self.kind == "npz":
            if self._arrays[name] is None:
                self._arrays = {k: None for k in self._arrays}  # keep one layer in memory
                self._arrays[name] = self._npz[name]
            return np.asarray(self._arrays[name][sl])
        if self.kind == "safetensors":
            return np.asarray(self._st.get_slice(name)[sl])
        return np.asarray(self._arrays[name][sl])


def _parse_options(items):
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--option must be key=value; got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def _progress(iterable, total, enabled, desc):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr)


def _check_examples(src_a, src_b, names_a, names_b):
    n = src_a.shape(names_a[0])[0]
    for src, names in ((src_a, names_a), (src_b, names_b)):
        for name in names:
            shape = src.shape(name)
            if shape[0] != n:
                raise ValueError(
                    f"every layer must have the same number of examples (first axis); got "
                    f"{src_a.path}:{names_a[0]!r} with shape {src_a.shape(names_a[0])} and "
                    f"{src.path}:{name!r} with shape {shape}"
                )
    return n


def batch_bounds(n, batch_size, smallest=4):
    """``(start, stop)`` of consecutive batches; a last batch smaller than ``smallest``
    (the unbiased estimator needs 4 examples) joins the one before it."""
    bounds = [(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < smallest:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _stream_minibatch_cka(src_a, src_b, names_a, names_b, n, batch_size, options, progress):
    import repsim

    acc = repsim.MinibatchCKA(**options)
    bounds = batch_bounds(n, batch_size)
    for start, stop in _progress(bounds, len(bounds), progress, "batches"):
        acts_a = {k: src_a.read(k, start, stop) for k in names_a}
        acts_b = None if src_b is None else {k: src_b.read(k, start, stop) for k in names_b}
        acc.update(acts_a, acts_b)
    result = acc.compute()
    result.attrs["batch_size"] = batch_size
    return result


def _all_pairs(spec, options, src_a, src_b, names_a, names_b, progress):
    """Every layer read once, then :func:`repsim.similarity_matrix` (each layer prepared
    once, half of a symmetric matrix computed)."""
    import repsim

    layers_a = {k: src_a.read(k) for k in names_a}
    layers_b = None if src_b is None else {k: src_b.read(k) for k in names_b}
    return repsim.similarity_matrix(layers_a, layers_b, measure=spec.name, progress=progress,
                                    **options)


def build_parser():
    from .similarity import measure_names

    names = measure_names() + ["minibatch_cka"]
    p = argparse.ArgumentParser(
        prog="repsim",
        description="Compare saved activations layer by layer; write a netCDF result and a heatmap.",
    )
    p.add_argument("a", help="activations of model A: .npz, .npy, folder of .npy, .safetensors, .nc/.h5")
    p.add_argument("b", nargs="?", help="activations of model B (default: A against itself)")
    p.add_argument("--measure", default="cka_linear", choices=names, metavar="NAME",
                   type=_canonical,
                   help="a row of repsim.measures() (or an alias / similarity-repository id "
                        "of one) or minibatch_cka (default cka_linear); one of: "
                        + ", ".join(names))
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="keyword argument of the measure (repeatable), e.g. k=20 or ridge=0.1")
    p.add_argument("--layers-a", help="comma-separated layer names of A (default: all)")
    p.add_argument("--layers-b", help="comma-separated layer names of B (default: all)")
    p.add_argument("--batch-size", type=int, default=256, help="examples per batch (minibatch_cka)")
    p.add_argument("--out", default="repsim_result.nc", help="netCDF result (default repsim_result.nc)")
    p.add_argument("--plot", help="heatmap image (png, pdf, ...); omitted: no plot")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _canonical(name):
    """A measure name, alias or similarity-repository id -> its canonical name (argparse
    then checks the choices; an unknown name stays as given and is refused there)."""
    from .similarity import measure_names

    return measure_names(aliases=True).get(name, name)


def _select(src, spec, label):
    if spec is None:
        return src.names
    names = [s.strip() for s in spec.split(",") if s.strip()]
    missing = [s for s in names if s not in src.names]
    if missing:
        raise ValueError(f"{label}: no layer(s) {missing} in {src.path!r}; it has {src.names}")
    return names


def run(args):
    """Run the comparison described by parsed ``args``; returns the result DataArray."""
    src_a = Source(args.a)
    src_b = None if args.b is None else Source(args.b)
    names_a = _select(src_a, args.layers_a, "--layers-a")
    names_b = _select(src_b or src_a, args.layers_b, "--layers-b")
    n = _check_examples(src_a, src_b or src_a, names_a, names_b)
    options = _parse_options(args.option)
    progress = not args.no_progress
    if args.measure == "minibatch_cka":
        if args.batch_size < 4:
            raise ValueError(f"--batch-size must be at least 4 for minibatch_cka; got {args.batch_size}")
        if src_b is None and args.layers_b is not None:
            src_b = src_a
        result = _stream_minibatch_cka(src_a, src_b, names_a, names_b if src_b else None, n,
                                       args.batch_size, options, progress)
    else:
        from .similarity import measure

        spec = measure(args.measure)
        if src_b is None and args.layers_b is not None:
            src_b = src_a
        result = _all_pairs(spec, options, src_a, src_b, names_a, names_b, progress)
    result.attrs["source_a"] = os.path.abspath(args.a)
    result.attrs["source_b"] = os.path.abspath(args.b) if args.b else "none"
    from .results import save_result

    save_result(result, args.out)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from .plotting import plot_similarity

        vals = result.values[np.isfinite(result.values)]
        limits = {}
        if vals.size and (vals.min() < 0 or vals.max() > 1):  # distances, signed similarities
            limits = {"vmin": float(vals.min()), "vmax": float(vals.max())}
        ax = plot_similarity(result, title=args.measure, **limits)
        ax.figure.savefig(args.plot, dpi=120, bbox_inches="tight")
        plt.close(ax.figure)
    return result


def main(argv=None):
    """Entry point of the ``repsim`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run(args)
    except (ValueError, TypeError, OSError, KeyError) as err:
        print(f"repsim: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":  # python -m repsim.cli
    sys.exit(main())
