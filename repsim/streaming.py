"""Minibatch CKA: an accumulator of HSIC sums over batches, for every pair of layers.

References
----------
Nguyen, Raghu & Kornblith (2021), "Do wide and deep networks learn the same things?",
ICLR, section 3.1 (minibatch CKA with the unbiased HSIC estimator).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping, Sequence

from . import _backend as B
from . import _validation as V
from ._accumulator import Accumulator, State, as_state_array, check_layer_names, callable_identity
from ._rules import mask_degenerate as _mask_degenerate
from .cka import _clip, _normalise
from .hsic import centred_gram_stack, pairing_terms
from .results import similarity_array

#: how a batch's terms enter the sums: ``"pairs"`` adds the raw (U-)centred inner
#: products, weighting batch ``t`` by ``n_t (n_t - 3)`` (unbiased) or ``(n_t - 1)^2``
#: (biased), as the official code does; ``"batches"`` adds each batch's HSIC, weighting
#: every batch equally (Nguyen et al. eq. 3)
WEIGHTINGS = ("pairs", "batches")
V.register_params(weighting=V.Options(*WEIGHTINGS))

_STATES = (
    State("sum_ab", ("layers_a", "layers_b")),
    State("sum_aa", ("layers_a",)),
    State("sum_bb", ("layers_b",)),
    State("centred_trace_a", ("layers_a",)),
    State("tolerance_a", ("layers_a",)),
    State("centred_trace_b", ("layers_b",)),
    State("tolerance_b", ("layers_b",)),
    State("n_batches", (), "int64"),
    State("n_examples", (), "int64"),
    State("group_ab", ("groups", "layers_a", "layers_b"), when="groups"),
    State("group_aa", ("groups", "layers_a"), when="groups"),
    State("group_bb", ("groups", "layers_b"), when="groups"),
    State("group_batches", ("groups",), "int64", when="groups"),
)

#: state entries that are plain sums over batches: merging or all-reducing is exact
SUM_STATES = tuple(st.name for st in _STATES if st.when is None)

#: per-group sums kept only with ``MinibatchCKA(groups=G)`` (for standard errors and
#: intervals): ``group_ab`` (G, L_a, L_b), ``group_aa`` (G, L_a), ``group_bb`` (G, L_b),
#: ``group_batches`` (G,). Batch ``t`` of a process goes to group ``t % G`` unless
#: :meth:`MinibatchCKA.set_group` pins one, so with the same ``G`` on every process the
#: groups are aligned and these are plain sums too: all-reduce them like
#: :data:`SUM_STATES` (group ``g`` then holds batch ``g, g+G, ...`` of every process).
GROUP_STATES = tuple(st.name for st in _STATES if st.when == "groups")


def _check_sigma(sigma: Any, kernel: str) -> Any:
    """A fixed RBF bandwidth: None, a number > 0, or a dict name -> number > 0."""
    if sigma is None:
        return None
    V.check_sigma_kernel(sigma, kernel)
    if isinstance(sigma, dict):
        return {str(k): V.Positive()(v, f"sigma[{k!r}]") for k, v in sigma.items()}
    return V.Positive()(sigma, "sigma")


def apply_transform(transform: Callable[[Any], Any], a: Any, where: str) -> Any:
    """``transform(a)`` for an ``(n, features)`` array, checked before any kernel sees it:
    the result must be an array of the same library with shape ``(n, features')``."""
    n = a.shape[0]
    t = transform(a)
    if not (B.is_numpy(t) or B.is_torch(t)) or B.namespace(t) is not B.namespace(a):
        raise TypeError(f"transform must return an array of the input's library "
                        f"({type(a).__name__}) for {where}; got {type(t).__name__}")
    shape = tuple(t.shape)
    if len(shape) != 2 or shape[0] != n or shape[1] < 1:
        raise ValueError(f"transform must return shape (n, features) with n={n} for {where} "
                         f"(input shape {tuple(a.shape)}); got shape {shape}")
    return t


class MinibatchCKA(Accumulator):
    """Minibatch CKA between every pair of layers, accumulated batch by batch.

    For each batch the grams of all layers are centred (U-centred for the unbiased
    estimator), stacked into a ``(L, n^2)`` float64 matrix ``G`` and paired by one
    product ``G_a G_b^T`` that is added to a float64 ``(L_a, L_b)`` sum, together with
    the self terms. ``compute()`` divides once at the end. With ``h_t(a, b) =
    <U(K_a^t), U(L_b^t)>``, the raw inner product of batch ``t``'s U-centred grams
    (``HSIC_t = h_t / (n_t (n_t - 3))``; biased: centred grams and ``(n_t - 1)^2``)::

        weighting="pairs"   (default, the official code):
            CKA_mb(a, b) = sum_t h_t(a, b) / sqrt(sum_t h_t(a, a) * sum_t h_t(b, b))
        weighting="batches" (Nguyen et al. eq. 3):
            CKA_mb(a, b) = sum_t HSIC_t(a, b) / sqrt(sum_t HSIC_t(a, a) * sum_t HSIC_t(b, b))

    so ``"pairs"`` weights batch ``t`` by ``n_t (n_t - 3)`` and ``"batches"`` weights
    every batch equally. They agree exactly when all batches have the same size and differ
    on ragged batches; the result's attrs record ``weighting``.

    This is a different estimator from full-data CKA (it converges to the population CKA
    as batches are added, without ever holding ``n x n`` grams of the whole data). All
    states are sums (declared in :data:`SUM_STATES` and :data:`GROUP_STATES` through
    :class:`repsim._accumulator.Accumulator`), so :meth:`merge`, :meth:`sync` (a
    cross-process all-reduce) and :meth:`state_dict` / :meth:`load_state_dict` are exact
    under either weighting. Similarities are not differentiable: tensors that require
    grad are detached on entry (the sums never join an autograd graph).

    Parameters
    ----------
    kernel : {"linear", "rbf"}
    estimator : {"unbiased", "biased"}, default "unbiased"
        HSIC estimator per batch; the unbiased one (Nguyen et al. 2021) makes the result
        independent of the batch size in expectation. Needs ``n >= 4`` per batch.
    sigma : float or dict name -> float, optional
        Fixed RBF bandwidth(s), each a finite number > 0 (``kernel="rbf"`` only). When
        None with ``kernel="rbf"``, each layer's bandwidth is calibrated once on the first
        batch by the median heuristic and then kept fixed (it is never re-estimated per
        batch); the values are stored in the result's attrs. The sums over batches cannot
        rescale a layer, so with the unbiased estimator a batch whose off-diagonal RBF
        values all lie below ``2**-300`` (a bandwidth far below the distances) is refused
        (:func:`repsim.kernels.rbf_from_linear`).
    threshold : float, default 1.0
        Median-heuristic fraction for that calibration.
    transform : callable, optional
        Applied to each layer's flattened ``(n, features)`` batch before its gram, e.g.
        ``functools.partial(repsim.remove_top_pcs, k=1)`` for CKA after removing the first
        principal component. It must return an ``(n, features')`` array of the same
        library with the same ``n`` (checked before any kernel runs). Identified by
        qualified name (and ``functools.partial`` contents) for :meth:`merge` and
        checkpoints.
    engine : {"auto", "numpy", "numba"}
        Implementation of the centring step on the numpy path.
    groups : int, optional
        Keep the sums of ``groups`` (>= 2) disjoint sets of batches as well (batch ``t``
        goes to group ``t % groups``, or to the group pinned by :meth:`set_group`, e.g.
        one per pass), at ``O(groups * L_a * L_b)`` memory, so that
        ``compute(uncertainty=True)`` can give a standard error and an interval for every
        entry (delete-a-group jackknife, :func:`repsim.stats.jackknife_ratio`). The extra
        cost per batch is one ``(L_a, L_b)`` addition; None (default) keeps only the
        plain sums. Ten groups or more give stable intervals.
    weighting : {"pairs", "batches"}, default "pairs"
        How batches of different sizes are weighted (see above).
    precision : {"float32", "bfloat16", "tf32"}, default "float32"
        How the grams of :meth:`update` are formed (as in :func:`repsim.cka`; grams given
        to :meth:`update_grams` were formed already). Recorded in the result's attrs;
        accumulators of different precisions do not merge.

    References
    ----------
    .. [1] Nguyen, Raghu & Kornblith (2021), "Do wide and deep networks learn the same
       things? Uncovering how neural network representations vary with width and depth",
       ICLR, section 3.1 and eq. (3); the official code's ``MinibatchCKA``
       (``efficient_CKA.py``) sums the raw U-centred inner products (``"pairs"``).

    Examples
    --------
    >>> import numpy as np, repsim
    >>> rng = np.random.default_rng(0)
    >>> acc = repsim.MinibatchCKA()
    >>> for _ in range(3):
    ...     x = rng.standard_normal((64, 20))
    ...     acc.update({"a": x, "b": x @ rng.standard_normal((20, 5)), "c": x[:, :2]})
    >>> acc.compute().sizes
    Frozen({'layer_a': 3, 'layer_b': 3})
    """

    STATES = _STATES
    LAYOUT = ("names_a", "names_b", "symmetric", "sigmas_a", "sigmas_b")

    names_a: list[str] | None
    names_b: list[str] | None
    symmetric: bool | None
    sigmas_a: list[Any] | None
    sigmas_b: list[Any] | None

    def __init__(
        self,
        *,
        kernel: str = "linear",
        estimator: str = "unbiased",
        sigma: float | Mapping[str, float] | None = None,
        threshold: float = 1.0,
        transform: Callable[[Any], Any] | None = None,
        engine: str = "auto",
        groups: int | None = None,
        weighting: str = "pairs",
        precision: str = "float32",
    ) -> None:
        V.check_params(kernel=kernel, estimator=estimator, engine=engine, weighting=weighting,
                       threshold=threshold, transform=transform, precision=precision)
        self.precision = precision
        self.kernel, self.estimator, self.engine = kernel, estimator, engine
        self.weighting = weighting
        self.groups = None if groups is None else V.check_int(groups, "groups", 2)
        self._pinned_group: int | None = None
        self.sigma = _check_sigma(sigma, self.kernel)
        self.threshold = threshold
        self.transform = transform
        self.reset()

    # ------------------------------------------------------------------ state
    def _options(self) -> dict[str, Any]:
        opts = {
            "kernel": self.kernel,
            "estimator": self.estimator,
            "weighting": self.weighting,
            "groups": self.groups,
            "transform": callable_identity(self.transform)[0],
        }
        if self.kernel == "rbf":
            opts.update(sigma=self.sigma, threshold=float(self.threshold))
        if self.precision != "float32":  # states saved before the option load unchanged
            opts["precision"] = self.precision
        return opts

    def _dims(self, layout: dict[str, Any]) -> dict[str, int]:
        return {"layers_a": len(layout["names_a"]), "layers_b": len(layout["names_b"]),
                "groups": self.groups or 0}

    def _check_layout(self, layout: dict[str, Any]) -> None:
        check_layer_names(layout)
        for side in ("a", "b"):
            names = layout[f"names_{side}"]
            sig = layout[f"sigmas_{side}"]
            want = self.kernel == "rbf"
            if want and not (isinstance(sig, (list, tuple)) and len(sig) == len(names)):
                raise ValueError(f"state['sigmas_{side}'] must hold one bandwidth per layer "
                                 f"({len(names)}); got {sig!r}")
            if not want and sig is not None:
                raise ValueError(f"state['sigmas_{side}'] must be None for kernel="
                                 f"{self.kernel!r}; got {sig!r}")

    @property
    def n_batches(self) -> int:
        """Batches accumulated so far (over all merged or synced accumulators)."""
        return int(self._values["n_batches"]) if self._values else 0

    @property
    def n_examples(self) -> int:
        """Examples accumulated so far."""
        return int(self._values["n_examples"]) if self._values else 0

    def _sigmas_for(self, names):
        if self.kernel != "rbf":
            return None
        if isinstance(self.sigma, dict):
            missing = [n for n in names if n not in self.sigma]
            if missing:
                raise ValueError(f"sigma has no bandwidth for layer(s) {missing}")
            return [self.sigma[n] for n in names]
        return [self.sigma] * len(names)

    def set_group(self, group: int | None) -> None:
        """Send the following batches to ``group`` (None: back to round-robin).

        For example one group per pass over the data: ``acc.set_group(epoch % acc.groups)``.
        """
        if not self.groups:
            raise ValueError("set_group needs an accumulator made with groups=G")
        if group is not None:
            V.check_int(group, "group", 0)
            if group >= self.groups:
                raise ValueError(f"group must be in [0, {self.groups - 1}]; got {group}")
        self._pinned_group = group

    def _check_names(self, names, expected, side):
        if names != expected:
            raise ValueError(
                f"{side} must hold the same layers in every batch; expected {expected}, "
                f"got {names}"
            )

    # ------------------------------------------------------------------ update
    def update(self, acts_a: Sequence[Any] | Mapping[str, Any],
               acts_b: Sequence[Any] | Mapping[str, Any] | None = None) -> None:
        """Add one batch.

        Parameters
        ----------
        acts_a : sequence or dict name -> array, each of shape (n, ...)
            This batch's activations of every layer of model A (numpy or torch, one
            library and device throughout). ``n`` may differ between batches (a ragged
            last batch is fine; see ``weighting``). Tensors that require grad are
            detached.
        acts_b : sequence or dict, optional
            The same examples through model B. None: within-model comparison, symmetric,
            each gram formed once.

        Raises
        ------
        ValueError
            For mismatched ``n``, ``n < 4`` (unbiased), NaN/Inf (naming the layer), other
            layers than the first batch's, or a transform that changes ``n`` or returns
            something other than an ``(n, features)`` array; nothing is accumulated then.
        TypeError
            For a batch from another library or device than the previous ones.
        """
        self._update(acts_a, acts_b, grams=False)

    def update_grams(self, grams_a: Sequence[Any] | Mapping[str, Any],
                     grams_b: Sequence[Any] | Mapping[str, Any] | None = None) -> None:
        """Add one batch given each layer's linear gram ``x x^T`` instead of its activations.

        This is the entry point of the PyTorch adapter (:func:`repsim.compare_models`),
        whose forward hooks form each gram as soon as the layer runs, so only ``n x n``
        matrices are held per batch. The result is the same as :meth:`update` on the
        activations the grams came from.

        Parameters
        ----------
        grams_a : sequence or dict name -> array, each of shape (n, n)
            Linear grams (float32 or float64, numpy or torch on one device) of every
            layer of model A for this batch. With ``kernel="rbf"`` the RBF gram is derived
            from the linear one (and the bandwidth calibrated on the first batch).
        grams_b : sequence or dict, optional
            Model B's grams of the same examples. None: within-model comparison.

        Raises
        ------
        ValueError
            If the accumulator has a ``transform`` (it acts on features, which a gram no
            longer has), a gram is not square, the ``n`` differ, or a gram has NaN/Inf
            anywhere (naming the layer; checked before any state is touched).
        """
        if self.transform is not None:
            raise ValueError(
                "update_grams cannot apply transform (it acts on features, before the gram); "
                "apply it before forming the grams, or call update() with the activations"
            )
        self._update(grams_a, grams_b, grams=True)

    def _side(self, acts, label, grams):
        """Names and arrays of one side, detached, checked against the states' library;
        a transform is applied (and its output checked) here, before any kernel runs."""
        names, arrays = V.layer_items(acts, label)
        arrays = [B.detached(B.asarray(a)) for a in arrays]
        out = []
        for name, a in zip(names, arrays):
            where = f"{label}[{name!r}]"
            self._check_like(a, where)
            xp = B.namespace(a)
            if grams:  # NaN/Inf: refused by centred_gram_stack, before any state is touched
                V.check_square(a, where)
            elif self.transform is not None:
                a = apply_transform(self.transform, B.as_float(V.as_2d(a, xp, where), xp), where)
            out.append(a)
        return names, out

    def _update(self, a, b, grams):
        """One batch of activations (``grams=False``) or of linear grams (``grams=True``)."""
        label_a, label_b = ("grams_a", "grams_b") if grams else ("acts_a", "acts_b")
        names_a, arrays_a = self._side(a, label_a, grams)
        symmetric = b is None
        names_b, arrays_b = (names_a, None) if symmetric else self._side(b, label_b, grams)
        self._check_update(names_a, names_b, symmetric)
        opts = dict(
            kernel=self.kernel, estimator=self.estimator, threshold=self.threshold,
            engine=self.engine, transform=None, grams=grams, precision=self.precision,
        )
        sig_a = self.sigmas_a if self.sigmas_a is not None else self._sigmas_for(names_a)
        side_a = centred_gram_stack(arrays_a, names_a, sigmas=sig_a, side=label_a, **opts)
        n = int(arrays_a[0].shape[0])
        side_b = None
        if not symmetric:
            shape_a, shape_b = arrays_a[0].shape, arrays_b[0].shape
            V.check_same_n(n, shape_b[0], label_a, label_b, shape_a, shape_b)
            sig_b = self.sigmas_b if self.sigmas_b is not None else self._sigmas_for(names_b)
            side_b = centred_gram_stack(arrays_b, names_b, sigmas=sig_b, side=label_b, **opts)
        self._accumulate(names_a, names_b, side_a, side_b, n)

    def _check_update(self, names_a, names_b, symmetric):
        if self.symmetric is not None and symmetric != self.symmetric:
            raise ValueError(
                "acts_b must be given in every update or in none: this accumulator was "
                f"started {'within one model (acts_b=None)' if self.symmetric else 'across two models'}"
            )
        if self.names_a is not None:
            self._check_names(names_a, self.names_a, "acts_a")
            self._check_names(names_b, self.names_b, "acts_b")

    def _accumulate(self, names_a, names_b, side_a, side_b, n):
        """Pair the packed centred grams of one batch (one product) and add to the sums."""
        symmetric = side_b is None
        ga, used_a, cen_a, tol_a = side_a
        xp = B.namespace(ga)
        if symmetric:
            gb, used_b = None, used_a
        else:
            gb, used_b, cen_b, tol_b = side_b
            B.namespace(ga, gb, names=["acts_a", "acts_b"])
        cross, self_a, self_b = pairing_terms(ga, gb)
        if self.weighting == "batches":  # each batch's HSIC itself (eq. 3)
            norm = float(n * (n - 3) if self.estimator == "unbiased" else (n - 1) ** 2)
            cross, self_a, self_b = cross / norm, self_a / norm, self_b / norm
        if not self.started:
            sig = (list(used_a), list(used_b)) if self.kernel == "rbf" else (None, None)
            self._start(dict(names_a=names_a, names_b=names_b, symmetric=symmetric,
                             sigmas_a=sig[0], sigmas_b=sig[1]), xp, B.device(ga))
        s = self._values
        s["sum_ab"] += cross
        s["sum_aa"] += self_a
        s["sum_bb"] += self_b
        like = s["sum_aa"]
        s["centred_trace_a"] += as_state_array(cen_a, like)
        s["tolerance_a"] += as_state_array(tol_a, like)
        if not symmetric:
            s["centred_trace_b"] += as_state_array(cen_b, like)
            s["tolerance_b"] += as_state_array(tol_b, like)
        if self.groups:
            g = (self._pinned_group if self._pinned_group is not None
                 else int(s["n_batches"]) % self.groups)
            s["group_ab"][g] += cross
            s["group_aa"][g] += self_a
            s["group_bb"][g] += self_b
            s["group_batches"][g] += 1
        s["n_batches"] += 1
        s["n_examples"] += n

    # ------------------------------------------------------------------ results
    def compute(self, uncertainty: bool = False, level: float = 0.9) -> Any:
        """CKA for every pair of layers from the batches seen so far.

        Parameters
        ----------
        uncertainty : bool, default False
            Also return a standard error and a ``level`` interval for every entry, from
            the per-group sums (needs ``groups=`` at construction): the delete-a-group
            jackknife of the ratio of sums, with a Student-t interval on ``G - 1``
            degrees of freedom (:func:`repsim.stats.jackknife_ratio`).
        level : float, default 0.9
            Confidence level of the interval.

        Returns
        -------
        xarray.DataArray, shape (L_a, L_b)
            dims ``("layer_a", "layer_b")``; attrs ``measure``, ``estimator``,
            ``kernel``, ``n_examples``, ``n_batches`` (and the RBF bandwidths). Values in
            ``[0, 1]`` (biased) or ``[-1, 1]`` (unbiased); rounding beyond is clipped. Constant
            layers give NaN with a warning naming them, and with the unbiased estimator
            so do layers whose U-centred gram is zero in every batch (one-hot rows; see
            :func:`repsim.cka`).
        xarray.Dataset
            With ``uncertainty=True``: variables ``cka`` (the same values), ``stderr``,
            ``ci_low``, ``ci_high``, dims ``(layer_a, layer_b)``, and ``jackknife``, dims
            ``(group, layer_a, layer_b)``: the leave-one-group-out matrices, from which
            :func:`repsim.jackknife_interval` gives an interval for any function of the
            matrix (a block's contrast, a mean over the diagonal); the same attrs plus
            ``method``, ``level``, ``n_groups``, ``estimate``.
        """
        if uncertainty:
            return self._compute_uncertainty(level)
        if not self.n_batches:
            raise ValueError("no batches accumulated yet; call update() first")
        s = self._values
        xp = B.namespace(s["sum_ab"])
        # the estimator's range, as repsim.cka: only rounding lies outside (a ratio of
        # sums obeys Cauchy-Schwarz like each batch)
        values = _clip(_normalise(s["sum_ab"], s["sum_aa"], s["sum_bb"], xp), self.estimator, xp)
        host = {k: B.to_numpy(s[k]) for k in ("centred_trace_a", "tolerance_a",
                                              "centred_trace_b", "tolerance_b")}
        deg_a = host["centred_trace_a"] <= host["tolerance_a"]
        deg_b = deg_a if self.symmetric else host["centred_trace_b"] <= host["tolerance_b"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            values = _mask_degenerate(B.to_numpy(values), deg_a, deg_b, self.names_a, self.names_b,
                                      reason=V.degenerate_reason(self.estimator))
        for w in caught:  # re-issued so that it points at the user's code
            warnings.warn(w.message, w.category, stacklevel=V.user_stacklevel())
        attrs = {
            "measure": "minibatch_cka",
            "estimator": self.estimator,
            "kernel": self.kernel,
            "weighting": self.weighting,
            "n_examples": self.n_examples,
            "n_batches": self.n_batches,
            "symmetric": bool(self.symmetric),
            "precision": self.precision,
        }
        if self.kernel == "rbf":
            attrs["sigma_a"] = list(self.sigmas_a or [])
            attrs["sigma_b"] = list(self.sigmas_b or [])
            attrs["threshold"] = self.threshold
        return similarity_array(values, self.names_a, self.names_b, attrs)

    # ------------------------------------------------------------------ combining
    def _compute_uncertainty(self, level):
        from .stats.jackknife import grouped_uncertainty

        if not self.groups:
            raise ValueError(
                "compute(uncertainty=True) needs per-group sums: construct the accumulator "
                "with groups=G (G >= 2, e.g. 10)"
            )
        return grouped_uncertainty(self.compute(), self._values, level, self.names_a,
                                   self.names_b)
