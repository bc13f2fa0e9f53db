"""The one dispatch point: array namespace, dtype policy and engine choice.

Every measure in repsim runs one code path written against the array API standard
(through ``array-api-compat``), so numpy arrays and torch tensors (CPU or CUDA) take the
same route and results come back in the caller's array type and on its device. Steps that
are memory-bound on the numpy path can run in a fused numba kernel instead (see
:mod:`repsim._numba`); :func:`use_numba` decides.

numba is a hard dependency of repsim (``pyproject.toml`` requires it); it is imported
lazily, on the first call that runs a fused kernel, only to keep ``import repsim`` fast.
``REPSIM_DISABLE_NUMBA=1`` turns the kernels off (the array-API path gives the same
numbers), which is how the tests compare the two paths.

Input types (:func:`asarray`, the entry of every measure): numpy arrays, torch tensors and
anything ``numpy.asarray`` reads (lists, pandas objects) are accepted. Arrays of other
array-API libraries (JAX, CuPy, array-api-strict, ...) are read into host numpy arrays
(DLPack, zero-copy on the CPU) and never written to; their results are numpy -- the
in-place buffers of the numpy/torch paths are not available on immutable JAX arrays. Values are never
reinterpreted: non-native byte orders (``>f8`` from FITS/netCDF-3/HDF5) are converted to
the same dtype in native order; complex numbers, masked arrays (the mask has no value a
similarity could use, and filling it would be a silent repair), non-numeric dtypes and
torch ``meta`` tensors (no data) are refused with a message naming the argument.
"""

from __future__ import annotations

import os

import array_api_compat
import numpy as np

ENGINES = ("auto", "numpy", "numba")


def namespace(*arrays, names=None):
    """Return the array namespace shared by ``arrays``.

    Raises
    ------
    TypeError
        If the arrays come from different libraries (numpy and torch, say).
    """
    try:
        return array_api_compat.array_namespace(*arrays)
    except TypeError:
        names = names or [f"argument {i}" for i in range(len(arrays))]
        kinds = ", ".join(
            f"{n}: {type(a).__module__}.{type(a).__name__}" for n, a in zip(names, arrays)
        )
        raise TypeError(
            "all arrays must come from one library (all numpy or all torch); got " + kinds
        ) from None


def asarray(x, name="x"):
    """``x`` as a numpy array or torch tensor whose values repsim can read as they are.

    Parameters
    ----------
    x : array_like
        numpy array, torch tensor, or anything :func:`numpy.asarray` converts.
    name : str
        The argument's name, for error messages.

    Returns
    -------
    array
        ``x`` itself for a supported array in native byte order; a numpy array for other
        array-likes; a native-order copy of a non-native (big-endian) numpy array, with
        the same dtype and values; a C-contiguous copy of a non-contiguous numpy array
        (results do not depend on the memory layout).

    Raises
    ------
    TypeError
        For masked arrays, complex, non-numeric (strings, objects) or datetime dtypes, and
        torch tensors on the ``meta`` device.
    """
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(
            f"{name} must be a plain array; got a numpy masked array (shape {x.shape}): "
            "masked entries have no value to compare -- drop those examples or fill them "
            "(x.filled(value)) first"
        )
    if not array_api_compat.is_array_api_obj(x):
        x = np.asarray(x)
    elif not (is_torch(x) or is_numpy(x)):
        x = _foreign_to_numpy(x, name)
    if is_torch(x):
        if x.device.type == "meta":
            raise TypeError(
                f"{name} must hold data; got a torch tensor on the 'meta' device "
                f"(shape {tuple(x.shape)}), which has a shape but no values"
            )
        if x.is_complex():
            raise TypeError(f"{name} must be real; got complex dtype {x.dtype}")
        return x
    if is_numpy(x):
        kind = x.dtype.kind
        if kind == "c":
            raise TypeError(
                f"{name} must be real; got complex dtype {x.dtype} (shape {x.shape}): "
                "pass x.real, abs(x) or both parts as features"
            )
        if kind not in "biuf":
            raise TypeError(
                f"{name} must have a numeric (bool, integer or float) dtype; got {x.dtype} "
                f"(shape {x.shape})"
            )
        if not x.dtype.isnative:
            x = x.astype(x.dtype.newbyteorder("="))
        if x.ndim >= 2 and not x.flags.c_contiguous:
            # one memory layout, one result: a column-major array (pandas' DataFrame.values,
            # Fortran files) would otherwise take other BLAS paths and differ in the last bits
            x = np.ascontiguousarray(x)
    return x


def _foreign_to_numpy(x, name):
    """An array of another array-API library (JAX, CuPy, array-api-strict, ...) as a host
    numpy array: DLPack (zero-copy on the CPU), through ``to_device("cpu")`` for arrays on
    an accelerator, else ``numpy.asarray``. repsim's code paths write into buffers of the
    input's library (centring, packed grams, accumulator states), which immutable arrays
    (JAX) refuse and stricter namespaces index differently, so these inputs are computed
    with numpy -- never written to -- and results are numpy."""
    for attempt in (lambda: np.from_dlpack(x),
                    lambda: np.from_dlpack(x.to_device("cpu")),
                    lambda: np.asarray(x)):
        try:
            out = attempt()
        except Exception:  # noqa: BLE001 - the next way, or the message below
            continue
        if isinstance(out, np.ndarray) and out.dtype != object:
            return out
    raise TypeError(
        f"{name} is a {type(x).__module__}.{type(x).__name__} that repsim cannot read: it "
        "computes on numpy arrays and torch tensors, and reads other array-API arrays "
        "through DLPack or numpy.asarray, which both failed; convert it to numpy first"
    )


def is_array(x) -> bool:
    """Whether ``x`` is an array of a supported library (not a container of arrays)."""
    return array_api_compat.is_array_api_obj(x)


def is_numpy(x) -> bool:
    return array_api_compat.is_numpy_array(x)


def is_torch(x) -> bool:
    return array_api_compat.is_torch_array(x)


def device(x):
    return array_api_compat.device(x)


def to_numpy(x) -> np.ndarray:
    """Copy any supported array to a numpy array on the host."""
    if is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def item(value) -> float:
    """A 0-d array (numpy or torch, any device, with or without autograd) as a float."""
    if is_torch(value):
        return float(value.detach())
    return float(value)


def detached(x):
    """``x`` without autograd history (a torch tensor that requires grad is detached;
    anything else is returned as is). Similarities are not differentiable in repsim."""
    if is_torch(x) and x.requires_grad:
        return x.detach()
    return x


def float_dtype(x, xp):
    """dtype in which grams of ``x`` are formed.

    float32 and float64 are kept; float16 and bfloat16 are upcast to float32 (their
    products overflow or lose most digits); integers and booleans become float64.
    """
    dt = x.dtype
    if dt == xp.float64 or dt == xp.float32:
        return dt
    if xp.isdtype(dt, "real floating"):  # float16, bfloat16
        return xp.float32
    return xp.float64


def as_float(x, xp):
    """``x`` in the dtype its grams are formed in (see :func:`float_dtype`)."""
    dt = float_dtype(x, xp)
    return x if x.dtype == dt else xp.astype(x, dt)


def accumulation_dtype(xp):
    """Sums, centring and the pairing product are always float64."""
    return xp.float64


def is_numpy_namespace(xp) -> bool:
    """Whether ``xp`` is numpy's namespace (results then come back as numpy scalars)."""
    return array_api_compat.is_numpy_namespace(xp)


def tracks_grad(x) -> bool:
    """Whether ``x`` is a torch tensor that autograd records (``requires_grad``)."""
    return is_torch(x) and bool(x.requires_grad)


def on_accelerator(x) -> bool:
    """Whether ``x`` lives in accelerator memory (a torch tensor off the CPU)."""
    return is_torch(x) and x.device.type != "cpu"


def scalar(value, xp):
    """A 0-d result in the caller's array type: a numpy float64 scalar for numpy, the 0-d
    tensor itself (on its device, no host sync) for torch."""
    if is_numpy_namespace(xp):
        return np.float64(value)
    return value


def fill_diagonal(a, value, xp):
    """``a`` (square, one of repsim's own temporaries) with its diagonal set to ``value``:
    in place, or as a new array when ``a`` tracks gradients."""
    if is_numpy(a):
        np.fill_diagonal(a, value)
        return a
    if is_torch(a) and not tracks_grad(a):
        a.diagonal().fill_(value)
        return a
    eye = xp.eye(a.shape[0], dtype=xp.bool, device=device(a))
    return xp.where(eye, xp.asarray(value, dtype=a.dtype, device=device(a)), a)


def sum_of_squares(a, xp):
    """``sum(a**2)`` accumulated in float64, a 0-d array (not synchronised); on numpy
    without a temporary (BLAS ``dot`` for float64, a buffered ``einsum`` otherwise)."""
    if is_numpy(a):
        if a.dtype == np.float64 and a.flags.c_contiguous:
            flat = a.reshape(-1)
            return np.asarray(np.dot(flat, flat))
        letters = "abcdefgh"[: a.ndim]
        return np.asarray(np.einsum(f"{letters},{letters}->", a, a, dtype=np.float64))
    a64 = xp.astype(a, accumulation_dtype(xp))
    return xp.sum(a64 * a64)


def self_product(x, xp):
    """The linear gram ``x @ x.T`` in the input's own library.

    numpy hands the transposed self-product to BLAS ``syrk`` (one triangle, half the flops
    of ``gemm``). Routing CPU torch tensors through numpy's syrk as well was measured and
    rejected: OpenBLAS's and torch's OpenMP thread pools then alternate, and their
    spinning workers fight for the cores (4.3 s instead of 0.9 s for 16 layers x 2
    batches on 2 cores), so every library keeps its own BLAS.
    """
    return xp.matmul(x, x.T)


def pair_product(ga, gb, xp):
    """The pairing product ``ga @ gb.T`` of two packed ``(L, n^2)`` float64 matrices,
    in the input's own library (see :func:`self_product` for why not mixed)."""
    return xp.matmul(ga, gb.T)


def numba_view(a):
    """A numpy view of ``a`` for the numba kernels: numpy arrays as they are, CPU torch
    tensors without autograd as zero-copy views, anything else None."""
    if is_numpy(a):
        return a
    if is_torch(a) and not on_accelerator(a) and not a.requires_grad:
        return a.numpy()
    return None


def _numba_available() -> bool:
    if os.environ.get("REPSIM_DISABLE_NUMBA"):
        return False
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def use_numba(engine: str, *arrays) -> bool:
    """Whether to run the fused numba kernels for these arrays.

    ``engine="auto"`` picks numba for host memory (numpy arrays, CPU torch tensors
    without autograd, through zero-copy views) when numba is installed: the fused
    single-threaded kernels beat numpy's passes on the centring steps 2x
    (``benchmarks/core_ratios.py``) and, on CPU torch, also spare a few OpenMP parallel
    regions per layer. ``"numpy"`` forces the plain array-API path; ``"numba"`` requires
    numba and host inputs.
    """
    if engine == "numpy":
        return False
    on_host = all(numba_view(a) is not None for a in arrays)
    if engine == "numba":
        if not on_host:
            raise TypeError(
                "engine='numba' runs on numpy arrays and CPU torch tensors without autograd; "
                "use engine='auto'"
            )
        if not _numba_available():
            raise ImportError("engine='numba' needs numba installed (pip install numba)")
        return True
    return on_host and _numba_available()
