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

import math

import numpy as np

from . import _backend as B
from . import _centring, kernels
from . import _validation as V
from ._precision import gram_eps
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


def hsic(k, l, *, estimator: str = "biased"):
    """HSIC of two gram matrices of the same examples.

    Parameters
    ----------
    k, l : array, shape (n, n)
        Symmetric gram matrices (numpy arrays or torch tensors, not mixed); must be
        finite.
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

    Raises
    ------
    ValueError
        If a gram is not square, the ``n`` differ, ``n`` is too small for the estimator,
        or a gram contains NaN or Inf (checked before any arithmetic).

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
    V.check_params(estimator=estimator)
    k, l = B.asarray(k, "k"), B.asarray(l, "l")
    xp = B.namespace(k, l, names=["k", "l"])
    V.check_square(k, "k")
    V.check_square(l, "l")
    n = k.shape[0]
    V.check_same_n(n, l.shape[0], "k", "l", k.shape, l.shape)
    V.check_n(n, estimator, "k")
    k, l = B.as_float(k, xp), B.as_float(l, xp)
    V.check_finite_array(k, xp, "k")
    V.check_finite_array(l, xp, "l")
    unbiased = estimator == "unbiased"
    packed = xp.empty((2, n * n), dtype=B.accumulation_dtype(xp), device=B.device(k))
    for i, g in enumerate((k, l)):
        centre_into(g, unbiased, packed[i], xp)
    norm = n * (n - 3) if unbiased else (n - 1) ** 2
    return scalar(xp.sum(packed[0] * packed[1]) / norm, xp)


scalar = B.scalar


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
    normalise=False,
    precision="float32",
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
        The arrays are already linear grams of shape ``(n, n)`` (as formed by the PyTorch
        adapter's hooks through :func:`repsim.kernels.linear_gram`); ``transform`` then
        cannot apply.
    normalise : bool, default False
        Scale each layer's centred features by a power of two (exact) so that its gram
        and the pairing products stay inside float64's range. Only for results that are
        invariant to each layer's scale (CKA of one batch; not the sums of
        :class:`repsim.MinibatchCKA`, which are compared across batches). Without it,
        data whose pairing products under- or overflow float64 are refused.
    precision : {"float32", "bfloat16", "tf32"}, default "float32"
        How each gram's product is formed (:mod:`repsim._precision`); ignored for
        ``grams=True`` (formed already).

    Returns
    -------
    packed : array, shape (L, n*n), float64
        Row ``l`` is the flattened centred (biased) or U-centred (unbiased) gram of layer
        ``l``; all pairwise HSICs are ``packed @ packed.T`` up to a constant.
    sigmas_used : list of float or None
        RBF bandwidths in the data's own units.
    centred, tolerance : numpy arrays, shape (L,)
        ``tr(HKH)`` per layer (unbiased: the norm of the U-centred gram, see
        :func:`repsim._centring.unbiased_degeneracy_terms`) and its rounding tolerance; a
        layer is degenerate (its CKA undefined) where ``centred <= tolerance``. Both are
        sums over batches too. For the RBF kernel a layer is constant when its features
        are (then both are 0), or when its gram less a constant (see
        :func:`repsim.kernels.rbf_from_linear`, which keeps the digits of a gram near a
        constant) centres to 0 in float64.
        With ``normalise`` (the value of one batch) a constant layer needs no bandwidth:
        its ``sigmas_used`` entry is NaN; without it (the sums of
        :class:`repsim.MinibatchCKA`, whose bandwidth is fixed on the first batch) the
        median heuristic refuses a constant layer.
    """
    V.check_params(kernel=kernel, estimator=estimator, engine=engine, threshold=threshold,
                   precision=precision)
    arrays = [B.asarray(a, f"{side}[{nm!r}]") for nm, a in zip(names, arrays)]
    xp = B.namespace(*arrays, names=[f"{side}[{n!r}]" for n in names])
    n = arrays[0].shape[0]
    V.check_n(n, estimator, f"{side}[{names[0]!r}]")
    unbiased = estimator == "unbiased"
    acc = B.accumulation_dtype(xp)
    packed = xp.empty((len(arrays), n * n), dtype=acc, device=B.device(arrays[0]))
    stats, sigmas_used, eps, linear_stats = [], [], [], []
    norms: list = []  # unbiased: (||K~||_F, ||U(K)||_F) per layer
    same_distance: list = []  # unbiased RBF: whether the examples are equidistant
    stacked = []  # on an accelerator the grams are centred together (_centring.stacks_centring)
    deferred = []  # (index, features, label): range checks read back once, after the loop
    for i, (name, a) in enumerate(zip(names, arrays)):
        label = f"{side}[{name!r}]"
        if grams:
            V.check_square(a, label)
        else:
            a = V.as_2d(a, xp, label)
        V.check_same_n(n, a.shape[0], f"{side}[{names[0]!r}]", label, arrays[0].shape, a.shape)
        a = B.as_float(a, xp)
        e = 0
        if grams:
            V.check_finite_array(a, xp, label)
            k = a
        else:
            if transform is not None:
                a = transform(a)
            if normalise:
                k, e, _ = kernels.scaled_centred_gram(a, xp, label, kernels.NORMAL_RANGE,
                                                      precision=precision)
            elif kernel == "linear" and _centring.stacks_centring(packed):
                # no host sync per layer on an accelerator (it would serialise the launches)
                k = kernels.centred_gram_unchecked(a, xp, precision)
                deferred.append((i, a, label))
            else:  # centred below (centre_into): the uncentred product where it is safe
                k = linear_gram(a, xp, name=label, centred=False, precision=precision)
        eps.append(eps_of(k, xp) if grams else gram_eps(k, xp, precision))
        sigma = None
        if kernel == "rbf" and unbiased:  # equidistant examples: one RBF value (see below)
            same_distance.append(_centring.equidistant(k, n, eps[-1], xp))
        if kernel == "rbf":
            linear_stats.append((xp.sum(xp.linalg.diagonal(k), dtype=acc), xp.sum(k, dtype=acc)))
            fixed = None if sigmas is None or sigmas[i] is None else math.ldexp(float(sigmas[i]), -e)
            if fixed is None and normalise and _constant_linear(linear_stats[-1], n, eps[-1]):
                # one batch's CKA of a constant layer: no bandwidth to pick (every distance
                # is 0), the layer is reported constant below and its sigma is NaN
                k, sigma = rbf_from_linear(k, xp, sigma=1.0, engine=engine, name=label,
                                           centring=estimator)[0], math.nan
            else:
                tr_lin, sum_lin = (B.item(v) for v in linear_stats[-1])
                k, sigma = rbf_from_linear(k, xp, sigma=fixed, threshold=threshold, engine=engine,
                                           name=label, centring=estimator, scale_free=normalise,
                                           mean_d2=2.0 * (tr_lin / n - sum_lin / n ** 2))
                sigma = math.ldexp(sigma, e)
        sigmas_used.append(sigma)
        if _centring.stacks_centring(packed):  # all layers share packed's device
            stacked.append(k)
        else:
            tr, total, *more = centre_into(k, unbiased, packed[i], xp, engine=engine,
                                           norms=unbiased)
            stats.append((tr, total))
            norms.append(more)
    if deferred:  # one read-back for every layer's range; the checked path for outliers
        dmax = B.to_numpy(xp.stack([xp.max(xp.linalg.diagonal(stacked[i])) for i, _, _ in deferred]))
        for (i, a, label), d in zip(deferred, dmax):
            lo, hi = kernels.gram_range(stacked[i].dtype, xp)
            if not lo <= float(d) <= hi:  # rescaled (or refused with NaN/Inf) there
                stacked[i] = linear_gram(a, xp, name=label, precision=precision)
                eps[i] = gram_eps(stacked[i], xp, precision)
    if stacked:
        if unbiased:
            norms = [[_centring.offdiagonal_norm(k, xp), None] for k in stacked]
        stats = list(zip(*centre_stack_into(stacked, unbiased, packed, xp)))
    centred = np.empty(len(stats))
    tolerance = np.empty(len(stats))
    eps64 = float(np.finfo(B.accumulation_dtype(np)).eps)
    if unbiased:  # row by row (no (L, n^2) temporary), one read-back for every layer
        flat = []
        for i, (off, ucentred) in enumerate(norms):
            if ucentred is None:  # centred in a stack: from its packed row
                ucentred = xp.sqrt(B.sum_of_squares(packed[i], xp))
            flat += [v if B.is_array(v) else xp.asarray(v, dtype=acc) for v in (off, ucentred)]
        norms = B.to_numpy(xp.stack(flat)).reshape(-1, 2)
    for i, ((tr, total), e) in enumerate(zip(stats, eps)):
        if kernel == "rbf":
            if _constant_linear(linear_stats[i], n, e):
                centred[i] = tolerance[i] = 0.0
                continue
            e_rbf = eps64  # the RBF gram is formed in float64 (its distances are not)
        else:
            e_rbf = e
        centred[i], tolerance[i] = degeneracy_terms(B.item(tr), B.item(total), n, e_rbf)
        if kernel == "linear" and not normalise and not grams:
            _check_pairing_range(centred[i], n, f"{side}[{names[i]!r}]")
        if unbiased:  # U(K) = 0 also for additive off-diagonals (one-hot rows)
            centred[i], tolerance[i] = _centring.unbiased_degeneracy_terms(
                float(norms[i, 1]), float(norms[i, 0]), B.item(tr), n, e)
            if kernel == "rbf" and same_distance[i]:
                centred[i] = tolerance[i] = 0.0
    return packed, sigmas_used, centred, tolerance


def _constant_linear(stats, n, eps):
    """Whether a linear gram with these ``(trace, total)`` is a constant layer's."""
    c_lin, t_lin = degeneracy_terms(B.item(stats[0]), B.item(stats[1]), n, eps)
    return c_lin <= t_lin


def _check_pairing_range(centred, n, label):
    """Refuse a layer whose pairing products (``~ tr(HKH)^2``) under- or overflow float64."""
    lo, hi = kernels.gram_range(B.accumulation_dtype(np), np)
    sq = (centred / n) ** 2
    if centred > 0 and not (lo <= sq <= hi):
        raise ValueError(
            f"{label} has a total variance of {centred / n:.3g} per example, whose squares "
            "(the HSIC sums) leave float64's range; rescale it (similarities are scale invariant)"
        )


def pairing_terms(ga, gb=None):
    """The three terms of all-pairs CKA from packed centred grams, with one product.

    Parameters
    ----------
    ga : array, shape (L_a, n*n)
        Packed centred (or U-centred) grams of one side (:func:`centred_gram_stack`).
    gb : array, shape (L_b, n*n), optional
        The other side, same library and device. None pairs ``ga`` with itself.

    Returns
    -------
    cross : array, shape (L_a, L_b)
        ``<K_i, L_j>`` for every pair of layers (``ga @ gb.T``).
    self_a : array, shape (L_a,)
        ``<K_i, K_i>``; with ``gb`` None the product's diagonal, so that CKA of a layer
        with itself divides a number by itself and is exactly 1.
    self_b : array, shape (L_b,)
        ``<L_j, L_j>`` (``self_a`` itself when ``gb`` is None).

    Notes
    -----
    The one place the pairing terms are formed: :func:`repsim.cka_matrix`,
    :class:`repsim.MinibatchCKA` (per batch) and :mod:`repsim.stats` (per resample) all
    call it.
    """
    xp = B.namespace(ga)
    if gb is None:
        cross = B.pair_product(ga, ga, xp)
        self_a = self_b = xp.linalg.diagonal(cross)
    else:
        cross = B.pair_product(ga, gb, xp)
        self_a = xp.sum(ga * ga, axis=1)
        self_b = xp.sum(gb * gb, axis=1)
    return cross, self_a, self_b
