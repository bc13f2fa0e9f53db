"""Minibatch CKA: an accumulator of HSIC sums over batches, for every pair of layers.

References
----------
Nguyen, Raghu & Kornblith (2021), "Do wide and deep networks learn the same things?",
ICLR, section 3.1 (minibatch CKA with the unbiased HSIC estimator).
"""

from __future__ import annotations

import numpy as np

from . import _backend as B
from . import _validation as V
from .cka import _mask_degenerate, _normalise
from .hsic import centred_gram_stack
from .kernels import ESTIMATORS, KERNELS
from .results import similarity_array

#: state entries that are plain sums over batches: merging or all-reducing is exact
SUM_STATES = (
    "sum_ab",
    "sum_aa",
    "sum_bb",
    "centred_trace_a",
    "tolerance_a",
    "centred_trace_b",
    "tolerance_b",
    "n_batches",
    "n_examples",
)

#: per-group sums kept only with ``MinibatchCKA(groups=G)`` (for standard errors and
#: intervals): ``group_ab`` (G, L_a, L_b), ``group_aa`` (G, L_a), ``group_bb`` (G, L_b),
#: ``group_batches`` (G,). Batch ``t`` of a process goes to group ``t % G`` unless
#: :meth:`MinibatchCKA.set_group` pins one, so with the same ``G`` on every process the
#: groups are aligned and these are plain sums too: all-reduce them like
#: :data:`SUM_STATES` (group ``g`` then holds batch ``g, g+G, ...`` of every process).
GROUP_STATES = ("group_ab", "group_aa", "group_bb", "group_batches")


class MinibatchCKA:
    """Minibatch CKA between every pair of layers, accumulated batch by batch.

    For each batch the grams of all layers are centred (U-centred for the unbiased
    estimator), stacked into a ``(L, n^2)`` float64 matrix ``G`` and paired by one
    product ``G_a G_b^T`` that is added to a float64 ``(L_a, L_b)`` sum, together with
    the self terms. ``compute()`` divides once at the end::

        CKA_mb(a, b) = sum_t HSIC(K_a^t, K_b^t) / sqrt(sum_t HSIC(K_a^t, K_a^t) sum_t HSIC(K_b^t, K_b^t))

    This is a different estimator from full-data CKA (it converges to the population CKA
    as batches are added, without ever holding ``n x n`` grams of the whole data). All
    states are sums, so :meth:`merge` and a cross-process all-reduce are exact.

    Parameters
    ----------
    kernel : {"linear", "rbf"}
    estimator : {"unbiased", "biased"}, default "unbiased"
        HSIC estimator per batch; the unbiased one (Nguyen et al. 2021) makes the result
        independent of the batch size in expectation. Needs ``n >= 4`` per batch.
    sigma : float or dict name -> float, optional
        Fixed RBF bandwidth(s). When None with ``kernel="rbf"``, each layer's bandwidth is
        calibrated once on the first batch by the median heuristic and then kept fixed
        (it is never re-estimated per batch); the values are stored in the result's attrs.
    threshold : float, default 1.0
        Median-heuristic fraction for that calibration.
    transform : callable, optional
        Applied to each layer's flattened ``(n, features)`` batch before its gram, e.g.
        ``functools.partial(repsim.remove_top_pcs, k=1)`` for CKA after removing the first
        principal component.
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

    References
    ----------
    .. [1] Nguyen, Raghu & Kornblith (2021), "Do wide and deep networks learn the same
       things? Uncovering how neural network representations vary with width and depth",
       ICLR, section 3.1.

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

    def __init__(
        self,
        *,
        kernel="linear",
        estimator="unbiased",
        sigma=None,
        threshold=1.0,
        transform=None,
        engine="auto",
        groups=None,
    ):
        self.kernel = V.check_option(kernel, "kernel", KERNELS)
        self.groups = None if groups is None else V.check_int(groups, "groups", 2)
        self._pinned_group = None
        self.estimator = V.check_option(estimator, "estimator", ESTIMATORS)
        self.engine = V.check_option(engine, "engine", B.ENGINES)
        V.check_positive(threshold, "threshold")
        self.sigma = sigma
        self.threshold = threshold
        self.transform = transform
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self):
        """Forget all batches (and the layer names and calibrated bandwidths)."""
        self.names_a = None
        self.names_b = None
        self.symmetric = None
        self.sigmas_a = None
        self.sigmas_b = None
        self._sums = {}

    @property
    def n_batches(self) -> int:
        return int(self._sums.get("n_batches", 0))

    @property
    def n_examples(self) -> int:
        return int(self._sums.get("n_examples", 0))

    def _sigmas_for(self, names):
        if self.kernel != "rbf":
            return None
        if isinstance(self.sigma, dict):
            missing = [n for n in names if n not in self.sigma]
            if missing:
                raise ValueError(f"sigma has no bandwidth for layer(s) {missing}")
            return [float(self.sigma[n]) for n in names]
        return [None if self.sigma is None else float(self.sigma)] * len(names)

    def _start(self, names_a, names_b, symmetric, xp, device):
        self.names_a, self.names_b, self.symmetric = names_a, names_b, symmetric
        la, lb = len(names_a), len(names_b)
        f64 = xp.float64
        self._sums = {
            "sum_ab": xp.zeros((la, lb), dtype=f64, device=device),
            "sum_aa": xp.zeros((la,), dtype=f64, device=device),
            "sum_bb": xp.zeros((lb,), dtype=f64, device=device),
            "centred_trace_a": np.zeros(la),
            "tolerance_a": np.zeros(la),
            "centred_trace_b": np.zeros(lb),
            "tolerance_b": np.zeros(lb),
            "n_batches": 0,
            "n_examples": 0,
        }
        if self.groups:
            g = self.groups
            self._sums.update(
                group_ab=xp.zeros((g, la, lb), dtype=f64, device=device),
                group_aa=xp.zeros((g, la), dtype=f64, device=device),
                group_bb=xp.zeros((g, lb), dtype=f64, device=device),
                group_batches=np.zeros(g, dtype=np.int64),
            )

    def _state_keys(self):
        return SUM_STATES + GROUP_STATES if self.groups else SUM_STATES

    def set_group(self, group):
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
    def update(self, acts_a, acts_b=None):
        """Add one batch.

        Parameters
        ----------
        acts_a : sequence or dict name -> array, each of shape (n, ...)
            This batch's activations of every layer of model A (numpy or torch, one
            device). ``n`` may differ between batches (a ragged last batch is fine).
        acts_b : sequence or dict, optional
            The same examples through model B. None: within-model comparison, symmetric,
            each gram formed once.
        """
        self._update(acts_a, acts_b, grams=False)

    def update_grams(self, grams_a, grams_b=None):
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
            longer has), a gram is not square, the ``n`` differ, or a gram has NaN/Inf.
        """
        if self.transform is not None:
            raise ValueError(
                "update_grams cannot apply transform (it acts on features, before the gram); "
                "apply it before forming the grams, or call update() with the activations"
            )
        self._update(grams_a, grams_b, grams=True)

    def _update(self, a, b, grams):
        """One batch of activations (``grams=False``) or of linear grams (``grams=True``)."""
        label_a, label_b = ("grams_a", "grams_b") if grams else ("acts_a", "acts_b")
        names_a, arrays_a = V.layer_items(a, label_a)
        symmetric = b is None
        names_b, arrays_b = (names_a, None) if symmetric else V.layer_items(b, label_b)
        self._check_update(names_a, names_b, symmetric)
        opts = dict(
            kernel=self.kernel, estimator=self.estimator, threshold=self.threshold,
            engine=self.engine, transform=None if grams else self.transform, grams=grams,
        )
        sig_a = self.sigmas_a if self.sigmas_a is not None else self._sigmas_for(names_a)
        side_a = centred_gram_stack(arrays_a, names_a, sigmas=sig_a, side=label_a, **opts)
        n = int(B.asarray(arrays_a[0]).shape[0])
        side_b = None
        if not symmetric:
            shape_a, shape_b = B.asarray(arrays_a[0]).shape, B.asarray(arrays_b[0]).shape
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
            cross = B.pair_product(ga, ga, xp)
            self_a = self_b = xp.linalg.diagonal(cross)
            used_b = used_a
        else:
            gb, used_b, cen_b, tol_b = side_b
            B.namespace(ga, gb, names=["acts_a", "acts_b"])
            cross = B.pair_product(ga, gb, xp)
            self_a = xp.sum(ga * ga, axis=1)
            self_b = xp.sum(gb * gb, axis=1)
        if self.names_a is None:
            self._start(names_a, names_b, symmetric, xp, B.device(ga))
            if self.kernel == "rbf":
                self.sigmas_a, self.sigmas_b = list(used_a), list(used_b)
        s = self._sums
        s["sum_ab"] += cross
        s["sum_aa"] += self_a
        s["sum_bb"] += self_b
        s["centred_trace_a"] += cen_a
        s["tolerance_a"] += tol_a
        if not symmetric:
            s["centred_trace_b"] += cen_b
            s["tolerance_b"] += tol_b
        if self.groups:
            g = self._pinned_group if self._pinned_group is not None else s["n_batches"] % self.groups
            s["group_ab"][g] += cross
            s["group_aa"][g] += self_a
            s["group_bb"][g] += self_b
            s["group_batches"][g] += 1
        s["n_batches"] += 1
        s["n_examples"] += n

    # ------------------------------------------------------------------ results
    def compute(self, uncertainty=False, level=0.9):
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
            ``kernel``, ``n_examples``, ``n_batches`` (and the RBF bandwidths). Constant
            layers give NaN with a warning naming them.
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
        s = self._sums
        xp = B.namespace(s["sum_ab"])
        values = _normalise(s["sum_ab"], s["sum_aa"], s["sum_bb"], xp)
        deg_a = s["centred_trace_a"] <= s["tolerance_a"]
        deg_b = deg_a if self.symmetric else s["centred_trace_b"] <= s["tolerance_b"]
        values = _mask_degenerate(B.to_numpy(values), deg_a, deg_b, self.names_a, self.names_b)
        attrs = {
            "measure": "minibatch_cka",
            "estimator": self.estimator,
            "kernel": self.kernel,
            "n_examples": self.n_examples,
            "n_batches": self.n_batches,
            "symmetric": bool(self.symmetric),
        }
        if self.kernel == "rbf":
            attrs["sigma_a"] = list(self.sigmas_a)
            attrs["sigma_b"] = list(self.sigmas_b)
            attrs["threshold"] = self.threshold
        return similarity_array(values, self.names_a, self.names_b, attrs)

    # ------------------------------------------------------------------ combining
    def _compute_uncertainty(self, level):
        from .stats import _uncertainty_dataset, jackknife_ratio

        if not self.groups:
            raise ValueError(
                "compute(uncertainty=True) needs per-group sums: construct the accumulator "
                "with groups=G (G >= 2, e.g. 10)"
            )
        plain = self.compute()
        s = self._sums
        _, se, low, high, used, loo = jackknife_ratio(
            s["group_ab"], s["group_aa"], s["group_bb"], s["group_batches"], level, replicates=True
        )
        bad = np.isnan(plain.values)
        se, low, high = (np.where(bad, np.nan, v) for v in (se, low, high))
        loo = np.where(bad[None], np.nan, loo)
        attrs = dict(plain.attrs, method="delete-a-group jackknife", level=level, n_groups=used)
        ds = _uncertainty_dataset(plain.values, se, low, high, self.names_a, self.names_b, attrs)
        ds["jackknife"] = (("group", "layer_a", "layer_b"), loo)
        return ds

    def _config(self):
        return (self.kernel, self.estimator, self.names_a, self.names_b, self.symmetric, self.groups)

    def merge(self, other):
        """Add another accumulator's sums into this one (exact; same layers and options).

        Returns
        -------
        MinibatchCKA
            ``self``.
        """
        if not isinstance(other, MinibatchCKA):
            raise TypeError(f"other must be a MinibatchCKA; got {type(other).__name__}")
        if not other.n_batches:
            return self
        if not self.n_batches:
            self.load_state_dict(other.state_dict())
            return self
        if self._config() != other._config():
            raise ValueError(
                "cannot merge accumulators with different layers or options: "
                f"{self._config()} vs {other._config()}"
            )
        for key in self._state_keys():
            self._sums[key] = self._sums[key] + other._sums[key]
        return self

    def state_dict(self):
        """Everything needed to resume or merge: the sum states and the layer metadata.

        The array entries keep their library and device (torch tensors stay tensors, so
        they can be all-reduced across processes); the keys of :data:`SUM_STATES` are
        plain sums.
        """
        state = {
            "kernel": self.kernel,
            "estimator": self.estimator,
            "names_a": self.names_a,
            "names_b": self.names_b,
            "symmetric": self.symmetric,
            "sigmas_a": self.sigmas_a,
            "sigmas_b": self.sigmas_b,
            "groups": self.groups,
        }
        for key in self._state_keys():
            value = self._sums.get(key)
            state[key] = value.copy() if hasattr(value, "copy") else (
                value.clone() if hasattr(value, "clone") else value
            )
        return state

    def load_state_dict(self, state):
        """Restore a state produced by :meth:`state_dict` (options must match)."""
        for key in ("kernel", "estimator"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"state was accumulated with {key}={state[key]!r}; this accumulator "
                    f"has {key}={getattr(self, key)!r}"
                )
        self.names_a = list(state["names_a"]) if state["names_a"] is not None else None
        self.names_b = list(state["names_b"]) if state["names_b"] is not None else None
        self.symmetric = state["symmetric"]
        self.sigmas_a = state["sigmas_a"]
        self.sigmas_b = state["sigmas_b"]
        if state.get("groups") != self.groups:
            raise ValueError(
                f"state was accumulated with groups={state.get('groups')!r}; this "
                f"accumulator has groups={self.groups!r}"
            )
        self._sums = {}
        if self.names_a is None:
            return
        for key in self._state_keys():
            value = state[key]
            if key in ("n_batches", "n_examples"):
                value = int(value)
            elif key == "group_batches":
                value = np.array(B.to_numpy(value), dtype=np.int64)
            elif key.startswith(("centred_trace", "tolerance")):
                value = np.array(B.to_numpy(value), dtype=np.float64)
            else:
                value = value.copy() if hasattr(value, "copy") else value.clone()
            self._sums[key] = value

