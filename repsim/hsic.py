"""Hilbert-Schmidt independence criterion, biased and unbiased, and the packed-gram
machinery that turns all layer pairs into one matrix product.

References
----------
Gretton et al. (2005), "Measuring statistical dependence with Hilbert-Schmidt norms".
Song et al. (2012), "Feature selection via dependence maximization", JMLR 13.
Nguyen, Raghu & Kornblith (2021), "Do wide and deep networks learn the same things?",
ICLR, eq. 3.
"""

from __future__ import annotations

import numpy as np

from . import _backend as B
from . import _validation as V
from . import kernels
from .kernels import (
    ESTIMATORS,
    KERNELS,
    centre_into,
    centre_stack_into,
    degeneracy_terms,
    eps_of,
    linear_gram,
    rbf_from_linear,
)


def hsic(k, l, estimator="biased"):
    """HSIC of two gram matrices of the same examples.

    Parameters
    ----------
    k, l : array, shape (n, n)
        Symmetric gram matrices (numpy arrays or torch tensors, not mixed).
    estimator : {"biased", "unbiased"}
        ``"biased"``: ``tr(K H L H) / (n-1)^2`` (Gretton et al. 2005).
        ``"unbiased"``: the estimator of Song et al. (2012), needs ``n >= 4``::

            [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))

        with ``K~, L~`` the grams with zeroed diagonals; computed as
        ``<U(K), U(L)> / (n(n-3))`` with U-centred grams.

    Returns
    -------
    scalar
        float64; a numpy scalar for numpy input, a 0-d tensor on the input's device for
        torch input.

    References
    ----------
    .. [1] Gretton et al. (2005), "Measuring statistical dependence with Hilbert-Schmidt
       norms", ALT.
    .. [2] Song et al. (2012), "Feature selection via dependence maximization", JMLR 13.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.standard_normal((50, 3)), rng.standard_normal((50, 3))
    >>> k, l = repsim.gram(x), repsim.gram(y)
    >>> bool(repsim.hsic(k, k) > repsim.hsic(k, l))
    True
    """
    V.check_option(estimator, "estimator", ESTIMATORS)
    k, l = B.asarray(k), B.asarray(l)
    xp = B.namespace(k, l, names=["k", "l"])
    V.check_square(k, "k")
    V.check_square(l, "l")
    n = k.shape[0]
    V.check_same_n(n, l.shape[0], "k", "l", k.shape, l.shape)
    V.check_n(n, estimator, "k")
    unbiased = estimator == "unbiased"
    packed = xp.empty((2, n * n), dtype=xp.float64, device=B.device(k))
    for i, g in enumerate((k, l)):
        centre_into(B.as_float(g, xp), unbiased, packed[i], xp)
    norm = n * (n - 3) if unbiased else (n - 1) ** 2
    return scalar(xp.sum(packed[0] * packed[1]) / norm, xp)


def scalar(value, xp):
    """A 0-d result in the caller's array type (numpy scalar or 0-d tensor)."""
    if xp.__name__.endswith("numpy"):
        import numpy as np

        return np.float64(value)
    return value


def centred_gram_stack(
    arrays,
    names,
    *,
    kernel="linear",
    estimator="biased",
    sigmas=None,
    threshold=1.0,
    engine="auto",
    transform=None,
    side="x",
    grams=False,
):
    """Centre (or U-centre) the gram of every representation into one packed matrix.

    Parameters
    ----------
    arrays : list of arrays, each shape (n, ...)
        Representations of the same ``n`` examples (one library, one device).
    names : list of str
        Layer names, for error messages.
    kernel, estimator : str
        As in :func:`repsim.cka`.
    sigmas : list of float or None, optional
        Fixed RBF bandwidths per layer; None entries use the median heuristic.
    transform : callable, optional
        Applied to each flattened ``(n, features)`` representation before its gram
        (for example ``functools.partial(repsim.remove_top_pcs, k=1)``).
    side : str
        Name of the argument, for error messages.
    grams : bool, default False
        The arrays are already linear grams ``x x^T`` of shape ``(n, n)`` (as formed by
        the PyTorch adapter's hooks); ``transform`` then cannot apply.

    Returns
    -------
    packed : array, shape (L, n*n), float64
        Row ``l`` is the flattened centred (biased) or U-centred (unbiased) gram of layer
        ``l``; all pairwise HSICs are ``packed @ packed.T`` up to a constant.
    sigmas_used : list of float or None
    centred, tolerance : numpy arrays, shape (L,)
        ``tr(HKH)`` per layer and its rounding tolerance; a layer is constant (its CKA
        undefined) where ``centred <= tolerance``. Both are sums over batches too.
    """
    V.check_option(kernel, "kernel", KERNELS)
    V.check_option(estimator, "estimator", ESTIMATORS)
    arrays = [B.asarray(a) for a in arrays]
    xp = B.namespace(*arrays, names=[f"{side}[{n!r}]" for n in names])
    n = arrays[0].shape[0]
    V.check_n(n, estimator, f"{side}[{names[0]!r}]")
    unbiased = estimator == "unbiased"
    packed = xp.empty((len(arrays), n * n), dtype=xp.float64, device=B.device(arrays[0]))
    raw_traces, stats, sigmas_used, eps = [], [], [], []
    stacked = []  # on an accelerator the grams are centred together (kernels.stacks_centring)
    for i, (name, a) in enumerate(zip(names, arrays)):
        label = f"{side}[{name!r}]"
        if grams:
            V.check_square(a, label)
        else:
            a = V.as_2d(a, xp, label)
        V.check_same_n(n, a.shape[0], f"{side}[{names[0]!r}]", label, arrays[0].shape, a.shape)
        a = B.as_float(a, xp)
        if grams:
            k = a
        else:
            if transform is not None:
                a = transform(a)
            k = linear_gram(a, xp)
        raw_traces.append(xp.sum(xp.linalg.diagonal(k)))
        eps.append(eps_of(k, xp))
        sigma = None
        if kernel == "rbf":
            fixed = None if sigmas is None else sigmas[i]
            k, sigma = rbf_from_linear(k, xp, sigma=fixed, threshold=threshold, engine=engine, name=label)
        sigmas_used.append(sigma)
        if kernels.stacks_centring(packed):  # all layers share packed's device
            stacked.append(k)
        else:
            stats.append(centre_into(k, unbiased, packed[i], xp, engine=engine))
    if stacked:
        stats = list(zip(*centre_stack_into(stacked, unbiased, packed, xp)))
    raw_traces = B.to_numpy(xp.stack(raw_traces)) if B.is_torch(packed) else [B.item(t) for t in raw_traces]
    for name, t in zip(names, raw_traces):
        V.check_finite(float(t), f"{side}[{name!r}]")
    centred = np.empty(len(stats))
    tolerance = np.empty(len(stats))
    for i, ((tr, total), e) in enumerate(zip(stats, eps)):
        centred[i], tolerance[i] = degeneracy_terms(B.item(tr), B.item(total), n, e)
    return packed, sigmas_used, centred, tolerance
