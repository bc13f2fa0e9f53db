"""The ``repsim`` command: compare saved activations layer by layer with any measure.

For users of JAX, TensorFlow or anything else that can save arrays::

    repsim acts_a.npz [acts_b.npz] --measure procrustes_angular --out result.nc --plot map.png

Inputs (one layer per entry; the first axis of every layer is the examples, the same
examples in the same order in every layer and file):

* a ``.npz`` file (one array per layer, in the file's member order; stored members are
  memory-mapped, compressed ones decompressed once),
* a folder of ``.npy`` files or a single ``.npy`` file (memory-mapped),
* a ``.safetensors`` file (memory-mapped; read by repsim, the safetensors package is not
  needed),
* a netCDF-4 / HDF5 file (``.nc``, ``.h5``, ``.hdf5``): every dataset at the root that is
  not a netCDF dimension scale is a layer (sliced from disk by h5py),
* a ``.pt`` file holding a dict of layer name -> tensor (``torch.load(...,
  weights_only=True)``; torch is imported only for these),
* a store written by :func:`repsim.extract` (a Zarr folder or its ``.npz``), whose layers
  come in the captured order and whose ``example_id`` two inputs must agree on: a
  different set or order is refused, naming the first mismatch; ``--align ids`` compares
  the examples both hold, in A's order.

Layers keep the writer's order where the file stores one, else they are sorted naturally
(``layer2`` before ``layer10``) with a warning where that is a guess (see
:mod:`repsim._readers`). Every layer is read once. CKA measures go through the all-pairs
path (:func:`repsim.cka_matrix`: one matrix product for all pairs); other measures
compute each pair once from layers held in memory (half of the matrix where the measure
is symmetric and a file is compared with itself); the neighbourhood measures pair
precomputed k-NN lists (:func:`repsim.neighbour_matrix`). ``--measure minibatch_cka``
streams ``--batch-size`` examples at a time into :class:`repsim.MinibatchCKA` and never
holds a whole layer. The result (a layer x layer ``xarray.DataArray``, provenance in its
attrs) is written atomically to ``--out`` (netCDF) and drawn to ``--plot``, also
atomically; a short summary (diagonal, best match of every layer) goes to stdout.

Everything is checked before any work -- the arguments, the plot format, the outputs
(never an input, never each other), every file's headers and declared sizes -- and a
problem is reported as one line naming the file and the layer, with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np

from ._io import atomic_write, progress as _progress, remove_stale_temporaries
from ._cli_checks import (check_layers, check_options, check_outputs, checked, parse_options,
                          plot_format, select)
from ._readers import InputError, Source, available_memory, check_fits, display, q
from .store import RowSubset, match_examples, open_source

_EPILOG = """\
contract:
  Every layer's first axis is the examples: row i of every layer, in both files, must be
  the same input example (same examples, same order). Other axes are flattened into
  features. Layers keep the order stored in the file (.npz member order, netCDF/HDF5
  creation order, .pt dict order, safetensors metadata "layer_order"); without one
  (.npy folders, safetensors headers) they are sorted naturally, layer2 before layer10.

outputs:
  --out (default repsim_result.nc) and --plot are replaced if they exist, atomically:
  the new file is written beside the target and renamed over it when complete, so an
  interrupted run leaves the old file or none. An output that is one of the inputs, or
  --out equal to --plot, is refused. Temporary files an interrupted (killed) run of
  repsim left beside the outputs are removed on the next run.

examples:
  repsim acts.npz --measure cka_linear --out sim.nc --plot sim.png
  repsim a.safetensors b.safetensors --measure mutual_knn --option k=20
  repsim acts/ --layer-a "block1,conv" --layer-a fc --measure minibatch_cka --batch-size 512
"""


# ------------------------------------------------------------------ arguments and checks

def _measures():
    from .catalogue import MEASURES  # the registry's measures, in table order

    return {m.name: m for m in MEASURES}


def _canonical(name):
    """A measure name, alias or similarity-repository id -> its canonical name (argparse
    then checks the choices; an unknown name stays as given and is refused there)."""
    from .similarity import measure_names

    return measure_names(aliases=True).get(name, name)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    names = list(_measures()) + ["minibatch_cka"]
    p = argparse.ArgumentParser(
        prog="repsim",
        description="Compare saved activations layer by layer; write a netCDF result "
                    "(layer_a x layer_b), an optional heatmap, and a summary on stdout.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("a", help="activations of model A: .npz, .npy, folder of .npy, "
                             ".safetensors, .nc/.h5, .pt (dict of tensors)")
    p.add_argument("b", nargs="?", help="activations of model B (default: A against itself)")
    p.add_argument("--measure", default="cka_linear", choices=names, metavar="NAME",
                   type=_canonical,
                   help="a row of repsim.measures() (or an alias / similarity-repository id "
                        "of one) or minibatch_cka (default cka_linear); one of: "
                        + ", ".join(names))
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="keyword argument of the measure (repeatable), e.g. k=20 or ridge=0.1")
    p.add_argument("--layers-a", metavar="NAMES",
                   help="comma-separated layer names of A, in this order (default: all); "
                        "write a comma inside a name as \\,")
    p.add_argument("--layers-b", metavar="NAMES", help="the same for B")
    p.add_argument("--layer-a", action="append", metavar="NAME",
                   help="one layer of A, exactly as named (repeatable; any characters)")
    p.add_argument("--layer-b", action="append", metavar="NAME", help="the same for B")
    p.add_argument("--align", choices=("strict", "ids"), default="strict",
                   help="two stores with example ids: 'strict' (default) refuses a different "
                        "set or order; 'ids' compares the shared examples in A's order")
    p.add_argument("--batch-size", type=int, default=256,
                   help="examples per batch (minibatch_cka; default 256)")
    p.add_argument("--out", default="repsim_result.nc",
                   help="netCDF result, replaced atomically (default repsim_result.nc)")
    p.add_argument("--plot", help="heatmap image (.png, .pdf, .svg, ...); omitted: no plot")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.add_argument("--no-summary", action="store_true", help="no summary on stdout")
    p.add_argument("--version", action="version", version=f"repsim {__version__}")
    return p


# ------------------------------------------------------------------------- computation

def _read_layers(src: Source, names: list[str], enabled: bool) -> dict[str, np.ndarray]:
    """Every layer of ``names`` read once into memory (checked)."""
    out = {}
    for name in _progress(names, total=len(names), desc=f"reading {src.label}", enabled=enabled,
                          unit="layer"):
        out[display(name)] = checked(np.array(src.read(name)), src.where(name))
    return out


def _attrs(spec, options: dict) -> dict:
    attrs = {"measure": spec.name, "function": spec.function, "kind": spec.kind}
    attrs.update({f"option_{k}": v for k, v in options.items()})
    return attrs


def _similarity(layers_a: dict, layers_b: dict | None, measure: str, options: dict,
                progress: bool):
    """The ``layer_a x layer_b`` matrix of ``measure`` (a row of :func:`repsim.measures`),
    with the row's options overridden by ``options``; ``layers_b=None`` compares
    ``layers_a`` with itself. The one place the command computes a matrix.
    """
    import repsim

    spec = _measures()[measure]
    options = {**spec.options, **options}
    if spec.function == "cka" and "method" not in options:
        n = next(iter(layers_a.values())).shape[0]
        count = len(layers_a) + (len(layers_b) if layers_b is not None else 0)
        if 16 * n * n * count <= available_memory() // 2:  # packed float64 grams + work
            with _progress(total=1, desc=f"{measure} (all pairs)", enabled=progress) as bar:
                result = repsim.cka_matrix(layers_a, layers_b, **options)
                bar.update()
            result.name = measure
            result.attrs.update(_attrs(spec, options))
            return result
    if spec.function == "cka" and "method" not in options:  # grams beyond memory: pair by pair
        return _pair_by_pair(spec, layers_a, layers_b, measure, options, progress)
    try:  # every layer prepared once, half of a symmetric matrix (repsim.similarity_matrix)
        result = repsim.similarity_matrix(layers_a, layers_b, measure=measure,
                                          progress=progress, **options)
    except (ValueError, TypeError, ArithmeticError) as err:
        raise InputError(f"{measure}: {' '.join(str(err).split())}") from None
    result.attrs.update(_attrs(spec, options))
    return result


def _pair_by_pair(spec, layers_a, layers_b, measure, options, progress):
    """Each pair on its own (CKA whose packed grams would not fit in memory)."""
    from repsim.results import similarity_array

    fn = spec.family.function
    symmetric = layers_b is None and spec.symmetric
    names_a = list(layers_a)
    layers_b = layers_a if layers_b is None else layers_b
    names_b = list(layers_b)
    values = np.full((len(names_a), len(names_b)), np.nan)
    pairs = [(i, j) for i in range(len(names_a)) for j in range(len(names_b))
             if not symmetric or j >= i]
    for i, j in _progress(pairs, total=len(pairs), desc=f"{measure} (layer pairs)",
                          enabled=progress, unit="pair"):
        a, b = names_a[i], names_b[j]
        try:
            values[i, j] = float(fn(layers_a[a], layers_b[b], **options))
        except (ValueError, TypeError, ArithmeticError) as err:
            raise InputError(f"{measure} of layer {q(a)} against layer {q(b)}: "
                             f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") \
                from None
        if symmetric:
            values[j, i] = values[i, j]
    attrs = _attrs(spec, options)
    attrs["n"] = int(next(iter(layers_a.values())).shape[0])
    return similarity_array(values, names_a, names_b, attrs, name=measure)


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
    for start, stop in _progress(bounds, total=len(bounds), desc="minibatch_cka (batches)",
                                 enabled=progress, unit="batch"):
        def batch(src, names):
            return {display(k): checked(np.array(src.read(k, start, stop)), src.where(k), start)
                    for k in names}

        acts_a = batch(src_a, names_a)
        acts_b = None if src_b is None else batch(src_b, names_b)
        try:
            acc.update(acts_a, acts_b)
        except (ValueError, TypeError, ArithmeticError) as err:
            raise InputError(f"minibatch_cka, examples {start}..{stop - 1}: "
                             f"{str(err).splitlines()[0]}") from None
    result = acc.compute()
    result.name = "minibatch_cka"
    result.attrs["measure"] = "minibatch_cka"
    result.attrs["batch_size"] = batch_size
    return result


# --------------------------------------------------------------------------- outputs

def _write_plot(result, path: str, fmt: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plotting import plot_similarity

    vals = result.values[np.isfinite(result.values)]
    limits = {}
    if vals.size and (vals.min() < 0 or vals.max() > 1):  # distances, signed similarities
        limits = {"vmin": float(vals.min()), "vmax": float(vals.max())}
    ax = plot_similarity(result, title=title, **limits)
    try:
        atomic_write(path, lambda tmp: ax.figure.savefig(tmp, format=fmt, dpi=120,
                                                         bbox_inches="tight"))
    finally:
        plt.close(ax.figure)


def summary(result, kind: str = "similarity", itself: bool = False) -> str:
    """A few lines for the terminal: the diagonal (when both sides have as many layers)
    and, for every layer of A, the closest layer of B (itself excluded when a model is
    compared with itself)."""
    values = np.asarray(result.values, dtype=float)
    names_a = [str(v) for v in result.layer_a.values]
    names_b = [str(v) for v in result.layer_b.values]
    closer = "higher" if kind == "similarity" else "lower"
    lines = [f"{result.name}: {len(names_a)} x {len(names_b)} layers"
             + (f", n = {result.attrs['n']}" if "n" in result.attrs else "")
             + f" ({closer} is closer)"]
    square = len(names_a) == len(names_b)
    width = max(len("layer"), *(len(n) for n in names_a))
    lines.append(f"{'layer':<{width}}  " + ("diagonal  " if square else "") + "best match")
    for i, name in enumerate(names_a):
        row = values[i].copy()
        if itself:
            row[[j for j, b in enumerate(names_b) if b == name]] = np.nan
        ok = np.isfinite(row)
        if ok.any():
            j = int(np.nanargmax(row) if kind == "similarity" else np.nanargmin(row))
            best = f"{names_b[j]} ({row[j]:.4f})"
        else:
            best = "--"
        diag = f"{values[i, i]:<8.4f}  " if square else ""
        lines.append(f"{name:<{width}}  {diag}{best}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- run

def run(args):
    """Run the comparison described by parsed ``args``; returns the result DataArray."""
    progress = not args.no_progress
    options = parse_options(args.option)
    check_options(args.measure, options, _measures())
    if args.measure == "minibatch_cka" and args.batch_size < 4:
        raise InputError(f"--batch-size must be at least 4 for minibatch_cka; got {args.batch_size}")
    fmt = plot_format(args.plot) if args.plot else None
    sources = [open_source(args.a)]
    if args.b is not None:
        sources.append(open_source(args.b))
    check_outputs(args.out, args.plot, sources)
    sources, id_info = _match_ids(sources, args.align)
    src_a = sources[0]
    src_b = sources[1] if len(sources) > 1 else None
    names_a = select(src_a, args.layers_a, args.layer_a, "a")
    explicit_b = args.layers_b is not None or bool(args.layer_b)
    names_b = select(src_b or src_a, args.layers_b, args.layer_b, "b")
    n, first = check_layers(src_a, names_a, None, None)
    check_layers(src_b or src_a, names_b, n, first)
    if n == 0:
        raise InputError(f"{src_a.label} holds 0 examples (first axis of every layer)")
    if args.measure == "minibatch_cka" and n < 4:
        raise InputError(f"minibatch_cka needs at least 4 examples; {src_a.label} holds {n}")
    chosen_a = args.layers_a is not None or bool(args.layer_a)
    guessed = {  # a guessed order matters only on a side whose layers the user did not name
        src_a: not chosen_a or (src_b is None and not explicit_b),
        src_b: not explicit_b,
    }
    for src in sources:
        if src.order_warning and guessed[src]:
            warnings.warn(src.order_warning, stacklevel=2)
    for flag, path in (("--out", args.out), ("--plot", args.plot)):
        if path is not None:
            remove_stale_temporaries(path)
    if src_b is None and explicit_b:
        src_b = src_a
    if args.measure == "minibatch_cka":
        per_batch = sum(src_a.nbytes(k) for k in names_a) // n * min(args.batch_size, n) * 2
        check_fits(per_batch, f"one batch of {args.batch_size} examples")
        result = _stream_minibatch_cka(src_a, src_b, names_a, names_b if src_b else None, n,
                                       args.batch_size, options, progress)
    else:
        wanted = {(src_a.path, k) for k in names_a}
        wanted |= {((src_b or src_a).path, k) for k in names_b}
        by_path = {s.path: s for s in sources}
        check_fits(sum(by_path[p].nbytes(k) for p, k in wanted),
                   f"reading the {len(wanted)} selected layers of "
                   + " and ".join(s.label for s in sources))
        layers_a = _read_layers(src_a, names_a, progress)
        layers_b = None
        if src_b is not None:
            if src_b is src_a:
                layers_b = {display(k): layers_a.get(display(k)) for k in names_b}
                for k in names_b:
                    if layers_b[display(k)] is None:
                        layers_b[display(k)] = checked(np.array(src_a.read(k)), src_a.where(k))
            else:
                layers_b = _read_layers(src_b, names_b, progress)
        try:
            result = _similarity(layers_a, layers_b, args.measure, options, progress)
        except InputError as err:
            where = src_a.label + (f" and {src_b.label}" if src_b not in (None, src_a) else "")
            raise InputError(f"comparing {where}: {err}") from None
    result.attrs.update(id_info)
    result.attrs["source_a"] = display(os.path.abspath(args.a))
    result.attrs["source_b"] = display(os.path.abspath(args.b)) if args.b else "none"
    result.attrs["layer_order_a"] = src_a.order
    if args.b:
        result.attrs["layer_order_b"] = sources[1].order
    from .results import save_result

    save_result(result, args.out)
    if args.plot:
        _write_plot(result, args.plot, fmt, args.measure)
    for src in sources:
        src.close()
    return result


def _match_ids(sources, align):
    """Two inputs with example ids: checked (or matched, ``align="ids"``) by
    :func:`repsim.store.match_examples`; an input without ids passes as it is."""
    ids = [getattr(s, "example_ids", None) for s in sources]
    if len(sources) < 2 or ids[0] is None or ids[1] is None:
        if align == "ids":
            raise InputError("--align ids needs two inputs with example ids (stores written "
                             "by repsim.extract)")
        return sources, {}
    try:
        index_a, index_b, info = match_examples(*ids, align=align,
                                                labels=(sources[0].label, sources[1].label),
                                                hint="--align ids")
    except ValueError as err:
        raise InputError(str(err)) from None
    return [s if i is None else RowSubset(s, i) for s, i in zip(sources, (index_a, index_b))], info


def main(argv=None) -> int:
    """Entry point of the ``repsim`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            result = run(args)
    except KeyboardInterrupt:
        print("repsim: interrupted; no output was replaced by a partial file", file=sys.stderr)
        return 130
    except MemoryError:
        print("repsim: error: out of memory", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, KeyError) as err:
        text = " ".join(str(err).split()) or type(err).__name__
        print(f"repsim: error: {display(text)}", file=sys.stderr)
        return 2
    if not args.no_summary:
        kind = "similarity" if args.measure == "minibatch_cka" else _measures()[args.measure].kind
        itself = args.b is None
        print(summary(result, kind, itself))
    print(f"wrote {display(args.out)}" + (f" and {display(args.plot)}" if args.plot else ""),
          file=sys.stderr)
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"repsim: warning: {message}", file=sys.stderr)


if __name__ == "__main__":  # python -m repsim.cli
    sys.exit(main())
