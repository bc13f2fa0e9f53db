"""Principal-component analyses of a representation: variance in the top components, their
removal, and the few examples that dominate the first one.

Nguyen, Raghu & Kornblith (2021) found that the "block structure" of wide or deep
networks -- many consecutive layers with near-identical representations -- coincides with
a dominant first principal component shared by those layers, and that it dissolves once
that component is removed (:func:`remove_top_pcs`). Their follow-up (2022) traced the
dominant component to a small set of examples with huge activation norms along it
(:func:`dominant_examples`).

All functions take numpy arrays or torch tensors of shape ``(n, ...)`` (flattened to
``(n, features)``), centre the columns, and run one array-API code path in float64.

References
----------
Nguyen, Raghu & Kornblith (2021), "Do wide and deep networks learn the same things?
Uncovering how neural network representations vary with width and depth", ICLR.
Nguyen, Raghu & Kornblith (2022), "On the origins of the block structure phenomenon in
neural network representations", TMLR.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from . import _backend as B
from . import _validation as V
from ._linalg import TopComponents, top_eigh

scalar = B.scalar


def _check_k(k, rep, allow_zero):
    limit = min(rep.n, rep.p)
    return V.check_int(k, "k", 0 if allow_zero else 1, limit,
                       what=f" (at most min(n, features) = {limit} for shape {rep.shape})")


def pc_variance_fraction(x, *, k: int = 1):
    """Share of the variance of ``x`` in its top-``k`` principal components.

    ``sum_{i<=k} s_i^2 / sum_i s_i^2`` with ``s`` the singular values of the
    column-centred ``(n, features)`` data.

    Parameters
    ----------
    x : array, shape (n, ...)
        numpy array or torch tensor; flattened to ``(n, features)``.
    k : int, default 1
        Number of leading components, ``1 <= k <= min(n, features)``.

    Returns
    -------
    scalar
        float64 in [0, 1]; NaN with a
        :class:`repsim.DegenerateRepresentationWarning` for a constant
        ``x``. A numpy scalar for numpy input, a 0-d tensor for torch.

    References
    ----------
    Nguyen, Raghu & Kornblith (2021), "Do wide and deep networks learn the same things?",
    ICLR (section 4: the block structure and the first principal component).

    Examples
    --------
    >>> import numpy as np, repsim
    >>> x = np.diag([3.0, 1.0, 0.0])  # centred: variances 6, 2/3 and 0 along 3 directions
    >>> round(float(repsim.pc_variance_fraction(np.r_[x, -x], k=1)), 3)
    0.9
    """
    rep = TopComponents(x, "x")
    rep.decompose(_check_k(k, rep, allow_zero=False))
    xp = rep.xp
    if rep.constant:
        warnings.warn(
            "the variance fraction is undefined (set to NaN) for a constant representation "
            "'x': zero variance after centring",
            V.DegenerateRepresentationWarning,
            stacklevel=V.user_stacklevel(),
        )
        return scalar(xp.asarray(float("nan"), dtype=B.accumulation_dtype(xp), device=B.device(rep.data)), xp)
    return scalar(xp.sum(rep.variances) / rep.total, xp)


def remove_top_pcs(x, *, k: int = 1):
    """Centre ``x`` and subtract its projection on the top-``k`` principal components.

    ``x_c - U_k S_k V_k^T = x_c (I - V_k V_k^T)`` with ``x_c = U S V^T`` the thin SVD of
    the column-centred data. Usable as a per-layer transform of
    :class:`repsim.MinibatchCKA`, so "CKA after removing the first principal component"
    (Nguyen et al. 2021, Fig. 6) is one accumulator::

        repsim.MinibatchCKA(transform=functools.partial(repsim.remove_top_pcs, k=1))

    (there the components are those of each minibatch, as in the paper's experiments).

    The top components come from the float64 eigendecomposition of the smaller of
    ``x_c x_c^T`` and ``x_c^T x_c`` (``n^2 p + n^3`` flops, 5-10x faster than a full SVD
    for a minibatch of wide activations); the leading components agree with the SVD's to
    float64 rounding.

    Parameters
    ----------
    x : array, shape (n, ...)
        numpy array or torch tensor.
    k : int, default 1
        Number of components removed, ``0 <= k <= min(n, features)`` (``0`` only centres).

    Returns
    -------
    array, same shape as ``x``
        Same library and device; the float dtype of ``x`` (float16/bfloat16 become
        float32, integers float64) -- computed in float64 and cast back.

    References
    ----------
    Nguyen, Raghu & Kornblith (2021), "Do wide and deep networks learn the same things?",
    ICLR.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((100, 5)) * [10.0, 1, 1, 1, 1]
    >>> r = repsim.remove_top_pcs(x, k=1)
    >>> r.shape, round(float(repsim.pc_variance_fraction(x)), 2) > 0.9
    ((100, 5), True)
    >>> bool(np.allclose(r.mean(axis=0), 0))
    True
    """
    rep = TopComponents(x, "x")
    rep.decompose(_check_k(k, rep, allow_zero=True))
    xp = rep.xp
    out = xp.astype(rep.residual(), rep.dtype)
    return xp.reshape(out, rep.shape)


def pc_removed_grams(gram, ks):
    """Linear grams with the top ``k`` principal components removed, for several ``k`` from
    one eigendecomposition.

    ``G_k = G_c - U_k Λ_k U_kᵀ``, where ``G_c = H G H`` is the centred gram and
    ``G_c = U Λ Uᵀ`` its eigendecomposition (eigenvalues descending, rounding below zero
    clipped). For ``G = x xᵀ`` this is the gram of :func:`remove_top_pcs` ``(x, k=k)``
    (``x_c = U S Vᵀ`` gives ``x_c x_cᵀ = U S² Uᵀ``) without the features: "CKA after
    removing the top ``k`` components" (Nguyen et al. 2021, Fig. 6) for every ``k`` of
    ``ks`` costs one ``n x n`` eigendecomposition per layer and minibatch, the grams go to
    :meth:`repsim.MinibatchCKA.update_grams`. ``k = 0`` gives ``G_c``; a ``k`` at or
    beyond the gram's rank removes everything (a zero gram).

    Parameters
    ----------
    gram : array, shape (n, n)
        Linear gram ``x xᵀ`` (numpy array or torch tensor; centred here, so ``x`` need
        not be).
    ks : iterable of int
        Numbers of components, each ``>= 0``.

    Returns
    -------
    dict
        ``{k: G_k}`` in the order of ``ks``, each ``(n, n)`` float64 of ``gram``'s library
        and device.

    References
    ----------
    Nguyen, Raghu & Kornblith (2021), "Do wide and deep networks learn the same things?",
    ICLR.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> x = np.random.default_rng(0).standard_normal((20, 6)) * [5.0, 2, 1, 1, 1, 1]
    >>> grams = repsim.pc_removed_grams(x @ x.T, [0, 1, 3])
    >>> r = repsim.remove_top_pcs(x, k=3)
    >>> bool(np.allclose(grams[3], r @ r.T)), sorted(grams)
    (True, [0, 1, 3])
    """
    gram = B.asarray(gram, "gram")
    V.check_square(gram, "gram")
    ks = [V.check_int(k, "k", 0, None) for k in ks]
    xp = B.namespace(gram)
    g = xp.astype(gram, B.accumulation_dtype(xp))
    g = g - xp.mean(g, axis=0, keepdims=True)
    g = g - xp.mean(g, axis=1, keepdims=True)
    V.check_finite(float(xp.sum(xp.abs(xp.linalg.diagonal(g)))), "gram")
    n = g.shape[0]
    top = min(max(ks, default=0), n)
    lam, vecs = top_eigh(g, top, xp)
    out = {}
    for k in ks:
        j = min(k, top)
        out[k] = g if j == 0 else \
            g - xp.matmul(vecs[:, :j] * lam[None, :j], xp.matrix_transpose(vecs[:, :j]))
    return out


@dataclass(frozen=True, eq=False)
class DominantExamples:
    """The examples that dominate a representation's first principal component.

    Returned by :func:`dominant_examples` (not usually built by hand); every parameter is
    kept as an attribute of the same name, all numpy (host) values.

    Parameters
    ----------
    indices : numpy.ndarray of int64, shape (top,)
        Examples with the largest ``|projection|`` on PC1, largest first.
    share : float
        Their share of PC1's variance: ``sum_{i in indices} t_i^2 / sum_i t_i^2`` with
        ``t`` the PC1 scores. Compare with ``top / n``, the share of typical examples.
    pc1_fraction : float
        PC1's share of the total variance (:func:`pc_variance_fraction` with ``k=1``).
    scores : numpy.ndarray of float64, shape (n,)
        Every example's projection on PC1 (the sign of a principal component is
        arbitrary).
    keep : numpy.ndarray of bool, shape (n,)
        False at ``indices``: the mask that leaves the dominant examples out.

    Attributes
    ----------
    n : int
        Number of examples analysed.
    """

    indices: np.ndarray
    share: float
    pc1_fraction: float
    scores: np.ndarray
    keep: np.ndarray

    def __repr__(self):
        shown = ", ".join(str(i) for i in self.indices[:10].tolist())
        more = ", ..." if self.indices.size > 10 else ""
        return (f"DominantExamples(indices=[{shown}{more}], share={self.share:.4g}, "
                f"pc1_fraction={self.pc1_fraction:.4g}, n={self.n})")

    @property
    def n(self) -> int:
        """Number of examples analysed."""
        return int(self.keep.shape[0])

    def exclude(self, acts):
        """The same examples without the dominant ones, to recompute similarities.

        Parameters
        ----------
        acts : array of shape (n, ...), or a sequence or dict of them
            Any representation(s) of the *same* ``n`` examples in the same order -- other
            layers, another model -- as numpy arrays or torch tensors.

        Returns
        -------
        same container type
            Each array with the rows at :attr:`indices` removed (order kept), in its own
            library and on its own device; ready for :func:`repsim.cka_matrix` or
            :func:`repsim.cka`.
        """
        if V.is_mapping(acts):
            return {name: self._drop(a, repr(name)) for name, a in acts.items()}
        if V.is_layer_sequence(acts):
            return type(acts)(self._drop(a, f"acts[{i}]") for i, a in enumerate(acts))
        return self._drop(acts, "acts")

    def _drop(self, a, name):
        a = B.asarray(a)
        xp = B.namespace(a)
        if len(a.shape) < 1 or a.shape[0] != self.n:
            raise ValueError(
                f"{name} must hold the same n={self.n} examples (first axis) as the "
                f"representation analysed; got shape {tuple(a.shape)}"
            )
        rows = np.flatnonzero(self.keep)
        return xp.take(a, xp.asarray(rows, device=B.device(a)), axis=0)


def dominant_examples(x, *, top: int = 10) -> DominantExamples:
    """The examples with the largest projections on the first principal component.

    Nguyen, Raghu & Kornblith (2022) traced the block structure to a handful of examples
    whose activations have huge norms along the dominant PC1 shared by the layers of a
    block. This returns those examples for one layer (pick a layer inside the block), how
    much of PC1 they carry, and the means to recompute similarities without them::

        dom = repsim.dominant_examples(acts["stage2.block3"], top=20)
        repsim.cka_matrix(dom.exclude(acts))   # the heatmap without those 20 examples

    Parameters
    ----------
    x : array, shape (n, ...)
        numpy array or torch tensor; flattened to ``(n, features)`` and centred.
    top : int, default 10
        Number of examples returned, ``1 <= top < n``.

    Returns
    -------
    DominantExamples
        ``indices`` (largest ``|projection|`` first), ``share`` of PC1's variance they
        carry, ``pc1_fraction``, all ``scores``, the ``keep`` mask and the
        :meth:`~DominantExamples.exclude` helper.

    Raises
    ------
    ValueError
        For a constant ``x`` (no principal component), or a bad ``top``.

    References
    ----------
    Nguyen, Raghu & Kornblith (2022), "On the origins of the block structure phenomenon
    in neural network representations", TMLR.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((200, 8))
    >>> x[[3, 50]] += 40.0  # two examples far out along one direction
    >>> dom = repsim.dominant_examples(x, top=2)
    >>> sorted(dom.indices.tolist()), dom.share > 0.9
    ([3, 50], True)
    >>> dom.exclude(x).shape
    (198, 8)
    """
    rep = TopComponents(x, "x")
    top = V.check_int(top, "top", 1, rep.n - 1, what=f" (fewer than the n={rep.n} examples)")
    rep.decompose(1)
    if rep.constant:
        raise ValueError(
            "x is constant (zero variance after centring): it has no principal component"
        )
    scores = B.to_numpy(rep.scores[:, 0]).astype(np.float64)
    power = scores * scores
    order = np.argsort(-np.abs(scores), kind="stable")
    indices = order[:top].astype(np.int64)
    keep = np.ones(rep.n, dtype=np.bool_)
    keep[indices] = False
    return DominantExamples(
        indices=indices,
        share=float(power[indices].sum() / power.sum()),
        pc1_fraction=float(rep.variances[0]) / rep.total,
        scores=scores,
        keep=keep,
    )
