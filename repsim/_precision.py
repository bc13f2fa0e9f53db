"""The ``precision`` of gram products, and whether this machine has the units for it.

``"float32"`` (the default everywhere) forms each gram in the data's own float dtype,
float32 or wider: exact as documented in :func:`repsim.kernels.linear_gram`. The reduced
modes trade accuracy for speed where the hardware has matrix units for them:

``"bfloat16"``
    The features are centred first (float64 column means), rounded to bfloat16 (8
    significant bits, unit roundoff ``u = 2**-8``) and multiplied in bfloat16 over feature
    chunks of :data:`BF16_CHUNK`, each chunk's product accumulated in float32 -- a gram is
    never kept in bfloat16. Worst case per entry ``|dK_ij| <= (2u + u) |x_i| |x_j|``
    (rounding of the centred features, then of each chunk's product); rounding errors of
    many features average out, so CKA moves far less (measured in
    ``tests/test_precision.py`` and ``docs/user_guide/performance.rst``). CPU and CUDA.
    Measured on CKA (linear and RBF, both estimators, offsets to ``1e4`` standard
    deviations, scales ``1e-20 ... 1e20``, ``n = 48-64``): ``|dCKA| <= 9.4e-4`` for layers
    of fewer than 16 features, ``<= 4.4e-4`` from 16 on; the stated bounds are twice that
    and more (:func:`bf16_cka_bound`), tested by ``tests/test_precision.py`` (also at
    ``n = 256`` and ``1000``). They do not hold for the unbiased estimator of a handful of
    examples in very many dimensions (5.2e-3 at ``n = 8``, 300,000 features). On real
    activations at ``n = 256`` (ResNet post-ReLU/BN/residual layers, transformer hidden
    states) the error is 1e-6 to 4e-5.
``"tf32"``
    CUDA only: float32 data, products on TensorFloat-32 tensor cores (10-bit mantissa
    inputs, float32 accumulation); the features are centred first as well.

Whether a mode pays off depends on the hardware (:func:`precision_support`): bfloat16
products are several times faster than float32 on CPUs with ``avx512_bf16`` or AMX and on
GPUs of compute capability 8.0 or newer, and *slower* elsewhere; asking for a reduced
mode where it would be slower warns once (:class:`PrecisionWarning`) and computes as asked.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

from . import _backend as B
from . import _validation as V

PRECISIONS = ("float32", "bfloat16", "tf32")
V.register_params(precision=V.Options(*PRECISIONS))

#: Features per bfloat16 product whose float32 result is accumulated (bounds the rounding
#: of each partial product to ``u`` times one chunk's sum, not the whole gram's).
BF16_CHUNK = 2048

#: CPU flags of bfloat16 matrix instructions (x86: AVX-512 BF16 dot products, AMX tiles).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


class PrecisionWarning(RuntimeWarning):
    """A reduced ``precision`` was asked for on hardware where it is slower than float32."""


@functools.lru_cache(maxsize=1)
def _cpu_info() -> tuple[str, frozenset[str]]:
    model, flags = "unknown CPU", frozenset[str]()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key == "model name" and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
                elif key in ("flags", "Features") and not flags:
                    flags = frozenset(line.split(":", 1)[1].split())
    except OSError:  # not Linux: no flags known, reduced modes are not recommended
        pass
    return model, flags


def precision_support(device=None) -> dict:
    """Whether a device has the matrix units that make reduced-precision grams pay off.

    Parameters
    ----------
    device : None, str or torch.device
        ``None`` or ``"cpu"``: this machine's CPU (its ``/proc/cpuinfo`` flags). A CUDA
        device (``"cuda"``, ``"cuda:1"``): its compute capability (needs torch).

    Returns
    -------
    dict
        ``device`` (str), ``name`` (CPU model or GPU name), ``units`` (the flags or
        capability found), and for each of ``"float32"``, ``"bfloat16"``, ``"tf32"``
        whether the mode is available *and faster than float32* there (``"float32"`` is
        always True; ``"tf32"`` only on CUDA of capability 8.0 or newer).

    Examples
    --------
    >>> import repsim
    >>> info = repsim.precision_support()
    >>> info["float32"], info["tf32"]
    (True, False)
    """
    dev = "cpu" if device is None else str(device)
    if dev.startswith("cuda"):
        import torch

        major, minor = torch.cuda.get_device_capability(dev)
        fast = major >= 8
        return {"device": dev, "name": torch.cuda.get_device_name(dev),
                "units": [f"compute capability {major}.{minor}"], "float32": True,
                "bfloat16": fast, "tf32": fast}
    if dev != "cpu":
        raise ValueError(f"device must be None, 'cpu' or a CUDA device; got {device!r}")
    model, flags = _cpu_info()
    units = [f for f in BF16_CPU_FLAGS if f in flags]
    return {"device": "cpu", "name": model, "units": units, "float32": True,
            "bfloat16": bool(units), "tf32": False}


@functools.lru_cache(maxsize=None)
def _warn_once(key: str, message: str) -> None:
    warnings.warn(message, PrecisionWarning, stacklevel=4)


def check_device(x, precision: str) -> None:
    """Refuse a mode the array's device cannot run; warn once where it would be slower."""
    if precision == "float32":
        return
    on_cuda = B.is_torch(x) and x.device.type == "cuda"
    if precision == "tf32" and not on_cuda:
        raise ValueError(
            "precision='tf32' needs torch tensors on a CUDA device (TensorFloat-32 is a GPU "
            f"tensor-core mode); got a {'CPU tensor' if B.is_torch(x) else type(x).__name__}. "
            "Use precision='float32' (exact) or 'bfloat16'"
        )
    if precision == "bfloat16" and not B.is_torch(x):
        try:
            import torch  # noqa: F401
        except ImportError:
            raise ValueError("precision='bfloat16' forms the products with torch, which is "
                             "not installed; use precision='float32'") from None
    info = precision_support(str(x.device) if on_cuda else None)
    if not info[precision]:
        where = info["name"] + (" (no " + " or ".join(BF16_CPU_FLAGS) + ")"
                                if info["device"] == "cpu" else f" ({info['units'][0]})")
        _warn_once(f"{info['device']}:{precision}", (
            f"precision={precision!r} is slower than float32 on {where}: without bfloat16 "
            "matrix units the products are emulated (minibatch CKA measured 6-11x slower "
            "than float32 on an AMD EPYC without avx512_bf16, products 3.1x slower on an "
            "Intel Xeon without AMX); computing as asked. The default precision='float32' "
            "is faster and exact here (repsim.precision_support())"
        ))


def bf16_cka_bound(features: int) -> float:
    """The stated bound on ``|CKA(bfloat16) - CKA(float64)|`` for a pair whose narrower side
    has ``features`` features: 4e-3 below 16 features, 1e-3 from 16 on (measured maxima
    9.4e-4 and 4.4e-4 at ``n >= 48``; not for the unbiased estimator of very few
    examples, see the module docstring)."""
    return 4e-3 if features < 16 else 1e-3


def gram_eps(k, xp, precision: str) -> float:
    """Rounding unit of a gram formed in ``precision`` (the degeneracy tolerance's eps)."""
    if precision == "bfloat16":
        return 2.0 ** -7  # bfloat16's machine epsilon (8 significant bits)
    if precision == "tf32":
        return 2.0 ** -10  # TensorFloat-32's 10-bit mantissa
    return float(xp.finfo(k.dtype).eps)


def reduced_product(xc, xp, precision: str):
    """The gram ``xc @ xc.T`` of centred features in a reduced ``precision``, float32.

    numpy input is multiplied by torch on a zero-copy view and handed back as numpy.
    """
    import torch

    t = xc if B.is_torch(xc) else torch.from_numpy(np.ascontiguousarray(xc))
    if precision == "tf32":
        t = t.to(torch.float32)
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            k = t @ t.T
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
    else:
        t = t.to(torch.bfloat16)
        n, p = t.shape
        if t.device.type == "cuda":  # cuBLAS accumulates and returns float32 directly
            try:
                k = torch.mm(t, t.T, out_dtype=torch.float32)
                return k if B.is_torch(xc) else k.cpu().numpy()
            except (TypeError, RuntimeError, NotImplementedError):
                pass  # an older torch: the chunked path below
        k = torch.zeros((n, n), dtype=torch.float32, device=t.device)
        for start in range(0, p, BF16_CHUNK):  # CPU: no float32 output for bfloat16 inputs
            c = t[:, start:start + BF16_CHUNK]
            k += (c @ c.T).to(torch.float32)
    return k if B.is_torch(xc) else k.numpy()
