"""The ``repsim`` command's checks: everything that is refused before any work.

Option names and (for CKA) values, layer selections, the plot format, the outputs (never
an input, never each other, in a writable folder), the layers' declared shapes, and the
values of each layer as it is read (finite). Each problem raises
:class:`repsim._readers.InputError` with one line naming the argument, file and layer.
"""

from __future__ import annotations

import ast
import inspect
import os
from typing import Any

import numpy as np

from ._readers import InputError, Source, display, q

__all__ = ["check_layers", "check_options", "check_outputs", "checked", "parse_options",
           "plot_format", "select"]


def parse_options(items) -> dict:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--option must be KEY=VALUE; got {q(item)}")
        try:
            out[key.strip()] = ast.literal_eval(raw)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            out[key.strip()] = raw
    return out


def check_options(measure: str, options: dict, measures: dict) -> None:
    """Unknown option names are refused before any file is read."""
    import repsim

    if measure == "minibatch_cka":
        try:
            repsim.MinibatchCKA(**options)
        except TypeError as err:
            raise InputError(f"--option: {err}") from None
        return
    fn = getattr(repsim, measures[measure].function)
    params = inspect.signature(fn).parameters
    known = [k for k, v in list(params.items())[2:] if v.kind == v.KEYWORD_ONLY
             or v.kind == v.POSITIONAL_OR_KEYWORD]
    unknown = [k for k in options if k not in known]
    if unknown and not any(v.kind == v.VAR_KEYWORD for v in params.values()):
        raise InputError(f"--option {q(unknown[0])} is not an option of {measure} "
                         f"(repsim.{fn.__name__}); its options: {', '.join(known) or 'none'}")
    if fn.__name__ == "cka":  # its options' values have one meaning: check them now
        from . import _validation as V

        try:
            V.check_params(**{k: v for k, v in options.items() if k in V.PARAMS})
        except (ValueError, TypeError) as err:
            raise InputError(f"--option: {err}") from None


def _split_names(spec: str) -> list[str]:
    """``a,b\\,c`` -> ``["a", "b,c"]`` (surrounding spaces dropped, empty names skipped)."""
    names, cur, i = [], [], 0
    while i < len(spec):
        ch = spec[i]
        if ch == "\\" and i + 1 < len(spec) and spec[i + 1] in ",\\":
            cur.append(spec[i + 1])
            i += 2
            continue
        if ch == ",":
            names.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
        i += 1
    names.append("".join(cur).strip())
    return [n for n in names if n]


def select(src: Source, spec: str | None, single: list[str] | None, side: str) -> list[str]:
    flag, flags = f"--layer-{side}", f"--layers-{side}"
    if spec is not None and single:
        raise InputError(f"use either {flags} or {flag} for model {side.upper()}, not both")
    if single:
        names, given = list(single), flag
    elif spec is not None:
        names, given = _split_names(spec), flags
        if not names:
            raise InputError(f"{flags} {q(spec)} names no layer; give layer names "
                             f"separated by commas, or leave {flags} out for all layers")
    else:
        return src.names
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"{given}: layer {q(dup[0])} is listed twice")
    missing = [n for n in names if n not in src.names]
    if missing:
        have = [display(n) for n in src.names]
        raise InputError(
            f"{given}: no layer {q(missing[0])} in {src.label}; it has "
            f"{', '.join(have[:20])}{', ...' if len(have) > 20 else ''}"
        )
    return names


def plot_format(path: str) -> str:
    fmt = os.path.splitext(path)[1][1:].lower()
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise InputError("--plot needs matplotlib (pip install 'repsim-cka[plot]')") from None
    supported = FigureCanvasBase.get_supported_filetypes()
    if fmt not in supported:
        raise InputError(f"--plot {q(path)}: unsupported image format {q(fmt)}; use one "
                         f"of {', '.join(sorted(supported))}")
    return fmt


def _same(path: str, other: str) -> bool:
    if os.path.realpath(path) == os.path.realpath(other):
        return True
    try:
        return os.path.samefile(path, other)
    except OSError:
        return False


def check_outputs(out: str, plot: str | None, sources: list[Source]) -> None:
    for flag, path in (("--out", out), ("--plot", plot)):
        if path is None:
            continue
        if os.path.isdir(path):
            raise InputError(f"{flag} {q(path)} is a folder; give a file name")
        for src in sources:
            if _same(path, src.path) or any(_same(path, f) for f in src.files):
                raise InputError(f"{flag} {q(path)} is the input {src.label}; "
                                 "refusing to write over an input")
        folder = os.path.dirname(os.path.abspath(path))
        probe = folder
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        if not os.access(probe, os.W_OK):
            raise InputError(f"{flag} {q(path)}: folder {q(probe)} is not writable")
    if plot is not None and _same(out, plot):
        raise InputError(f"--out and --plot are the same file ({q(out)})")


def check_layers(src: Source, names: list[str], n: int | None, first: tuple | None):
    """Same number of examples everywhere, at least one feature; returns (n, first)."""
    for name in names:
        shape = src.shape(name)
        where = src.where(name)
        if n is None or first is None:
            n, first = shape[0], (where, shape)
        elif shape[0] != n:
            raise InputError(
                f"every layer must have the same number of examples (first axis); got "
                f"{first[0]} with shape {first[1]} and {where} with shape {shape}"
            )
        if int(np.prod(shape[1:], dtype=object)) == 0:
            raise InputError(f"{where} has no features (shape {shape})")
    return n, first


def checked(x: np.ndarray, where: str, offset: int = 0) -> np.ndarray:
    """``x`` as (n, ...) with at least 2 axes; NaN/Inf refused naming the layer."""
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
        if bad.any():
            raise InputError(f"{where} contains NaN or Inf (first at example "
                             f"{offset + int(np.flatnonzero(bad)[0])}); every value must be finite")
    return x
