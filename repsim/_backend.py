"""The one dispatch point: array namespace, dtype policy and engine choice.

Every measure in repsim runs one code path written against the array API standard
(through ``array-api-compat``), so numpy arrays and torch tensors (CPU or CUDA) take the
same route and results come back in the caller's array type and on its device. Steps that
are memory-bound on the numpy path can run in a fused numba kernel instead (see
:mod:`repsim._numba`); :func:`use_numba` decides.
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


def asarray(x):
    """Return ``x`` unchanged if it is a supported array, else as a numpy array."""
    if array_api_compat.is_array_api_obj(x):
        return x
    return np.asarray(x)


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
    if is_torch(a) and a.device.type == "cpu" and not a.requires_grad:
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
