"""repsim: representation similarity for neural networks.

Centered kernel alignment (linear and RBF, biased and unbiased HSIC, minibatch CKA),
the CCA family (CCA, SVCCA, PWCCA), principal-component analyses and block-structure
detection, on numpy arrays and torch tensors alike, plus a PyTorch adapter that hooks any
model and streams its layers into accumulators.

Public names are loaded lazily, so ``import repsim`` imports neither torch, numba nor
matplotlib behind the caller's back.
"""

from importlib import import_module as _import_module

__version__ = "0.1.0"

# public name -> submodule that defines it (the one table of the public API)
_EXPORTS = {
    # kernels and HSIC / CKA core
    "gram": "kernels",
    "centre_gram": "kernels",
    "ucentre_gram": "kernels",
    "median_sigma": "kernels",
    "hsic": "hsic",
    "cka": "cka",
    "cka_matrix": "cka",
    "MinibatchCKA": "streaming",
    # results
    "save_result": "results",
    "load_result": "results",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'repsim' has no attribute {name!r}") from None
    value = getattr(_import_module(f"repsim.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
