"""FeatureMoments: every layer pair's moment-based measures, exactly, in one pass.

Per batch, the activations of all layers are shifted, concatenated with each layer's
per-example squared norm into ``Z = [X_1 - s_1, ..., X_L - s_L, a_1, ..., a_L]``
(``n x (D + L)``, ``D = Σ d_l``, ``a_l = ||x_l - s_l||²`` row-wise) and one float64
product ``ZᵀZ`` is added to a sum, with ``Σ z`` and the example count. At the end the
centred scatter of any two layers is a block of ``ZᵀZ - Σz Σzᵀ / n``, from which the
``*_from_moments`` functions (:mod:`repsim._moments`, :mod:`repsim._moment_measures`)
give linear CKA, CCA / SVCCA / PWCCA, the shape distance, normalised Bures similarity,
(ridge) regression R² and GULP exactly as on the full data; the squared-norm columns give
the full-data unbiased linear CKA.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import _backend as B
from . import _moment_measures as MM
from . import _moments as M
from . import _validation as V
from ._accumulator import Accumulator, State, check_layer_names
from ._registry import families
from .results import similarity_array

#: Default memory budget (bytes) of :class:`FeatureMoments`.
DEFAULT_MAX_BYTES = 4 * 2**30


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


class FeatureMoments(Accumulator):
    """Exact full-data measures for every pair of layers from streamed feature moments.

    Each :meth:`update` adds one batch with one product over the concatenated layers (see
    the module docstring); :meth:`compute` then gives, for every pair ``(layer_a,
    layer_b)``, the value the full-data function gives on all examples at once:

    ========================  =================================================
    ``measure=``              equals
    ========================  =================================================
    ``"cka"``                 ``repsim.cka(x, y, estimator=...)`` (linear)
    ``"cca"``                 ``repsim.cca(x, y, summary)`` (``ridge=0``)
    ``"svcca"``               ``repsim.svcca(x, y, keep, summary)`` (``ridge=0``)
    ``"pwcca"``               ``repsim.pwcca(x, y, side=side)`` (``ridge=0``)
    ``"shape_distance"``      ``repsim.shape_distance(x, y, alpha, score)``
    ``"nbs"``                 ``repsim.nbs(x, y)``
    ``"ridge_r2"``            ``repsim.ridge_r2(x, y, ridge, direction=...)``
    ``"gulp"``                ``repsim.gulp(x, y, ridge, squared=...)``
    ========================  =================================================

    Unlike :class:`repsim.MinibatchCKA` (a different, minibatch estimator whose memory is
    ``O(L²)`` whatever the widths), this is the full-data estimator, and its memory is
    ``O((D + L)²)`` with ``D`` the total width of all layers: fine for pooled or
    transformer-width layers (24 layers x 768 features: 2.5 GiB), not for flattened conv
    maps. The budget is checked on the first batch, before anything is allocated.

    Parameters
    ----------
    max_bytes : int, default 4 GiB
        Largest memory the accumulator may use (:meth:`required_bytes`): the states,
        ``8 folds (D + L)²`` bytes, plus with ``folds`` one more ``8 (D + L)²`` for
        :meth:`compute`. A first batch whose layers need
        more is refused with a message pointing to :class:`repsim.MinibatchCKA` or to a
        pooling of the layers. ``None``: no limit.
    folds : int >= 2, optional
        Keep the sums per fold, for the out-of-fold regression R²
        (``compute("ridge_r2", out_of_fold=True)``); memory grows ``folds``-fold. Batch
        ``t`` of this accumulator goes to fold ``t mod folds`` unless :meth:`update` is
        given ``fold=``.

    Notes
    -----
    **Shift.** The first batch's float64 column means ``s`` are subtracted from every batch
    before the product (Welford-style stability: sums of uncentred float32 activations
    with a large common offset would cancel catastrophically at the end). All measures are
    translation invariant, the unbiased CKA estimator included, so the shift changes no
    value. :meth:`merge` and :meth:`sync` first re-express the other sums on a common
    shift (an exact affine change of the moments), then add them with the base's
    merge/all-reduce.

    **States** (declared on :class:`repsim._accumulator.Accumulator`, so ``reset``,
    ``state_dict`` / ``load_state_dict`` and the adapter's checkpoints come from the
    base): ``n`` (folds,) int64, ``n_batches`` () int64, ``sum_z`` (folds, D + L) and
    ``zz`` (folds, D + L, D + L) float64. Layout: ``names_a``, ``names_b``, ``widths``,
    ``symmetric``, ``shift``.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((300, 8))
    >>> acts = {"a": x, "b": x @ rng.standard_normal((8, 5)) + 1.0}
    >>> acc = repsim.FeatureMoments()
    >>> for start in range(0, 300, 64):
    ...     acc.update({k: v[start:start + 64] for k, v in acts.items()})
    >>> cka = acc.compute("cka")
    >>> bool(np.isclose(float(cka.sel(layer_a="a", layer_b="b")),
    ...                 float(repsim.cka(acts["a"], acts["b"])), rtol=1e-9))
    True
    """

    STATES = (
        State("n", ("folds",), "int64"),
        State("n_batches", (), "int64"),
        State("sum_z", ("folds", "z")),
        State("zz", ("folds", "z", "z")),
    )
    LAYOUT = ("names_a", "names_b", "widths", "symmetric", "shift")

    names_a: list[str]
    names_b: list[str]
    widths: list[int]
    symmetric: bool
    shift: Any
    #: what the PyTorch adapter feeds (:func:`repsim.compare_models`): activations.
    CONSUMES = "features"

    def __init__(self, *, max_bytes: int | None = DEFAULT_MAX_BYTES,
                 folds: int | None = None) -> None:
        if max_bytes is not None:
            max_bytes = V.check_int(max_bytes, "max_bytes", 1, what=" (bytes, or None)")
        self.max_bytes = max_bytes
        self.folds = None if folds is None else V.check_int(folds, "folds", 2)
        self.reset()

    # ------------------------------------------------------------------ declared table
    def _options(self) -> dict[str, Any]:
        return {"folds": self.folds or 1}

    def _dims(self, layout: dict[str, Any]) -> dict[str, int]:
        widths = layout["widths"]
        return {"folds": self.folds or 1, "z": sum(widths) + len(widths)}

    def _check_layout(self, layout: dict[str, Any]) -> None:
        widths, shift = layout["widths"], layout["shift"]
        check_layer_names(layout)
        count = len(layout["names_a"]) + (0 if layout["symmetric"] else len(layout["names_b"]))
        if not (isinstance(widths, (list, tuple)) and len(widths) == count
                and all(isinstance(w, int) and w > 0 for w in widths)):
            raise ValueError(f"state['widths'] must hold {count} positive ints (one per "
                             f"layer); got {widths!r}")
        if not (isinstance(shift, tuple) and len(shift) == sum(widths)
                and all(isinstance(v, float) and math.isfinite(v) for v in shift)):
            raise ValueError(f"state['shift'] must be a tuple of {sum(widths)} finite floats "
                             "(one per feature)")

    @property
    def n_batches(self) -> int:
        """Batches accumulated so far (over all merged or synced accumulators)."""
        return int(self._values["n_batches"]) if self._values else 0

    @property
    def n_examples(self) -> int:
        """Examples accumulated so far."""
        return int(B.to_numpy(self._values["n"]).sum()) if self._values else 0

    def required_bytes(self, widths: Sequence[int]) -> int:
        """Memory (bytes) this accumulator needs for layers of these widths: the states,
        ``8 folds (D + L)²``, and with ``folds`` one more ``(D + L)²`` for the summed
        folds in :meth:`compute`. Other workspaces are per batch (``n x (D + L)``), per
        layer, per pair, or row blocks of at most 64 MiB of the per-batch product."""
        z = sum(widths) + len(widths)
        k = self.folds or 1
        return 8 * (k + (1 if k > 1 else 0)) * (z * z + z)

    # ------------------------------------------------------------------ update
    def _side(self, acts, label):
        names, arrays = V.layer_items(acts, label)
        out = []
        for name, a in zip(names, arrays):
            where = f"{label}[{name!r}]"
            a = B.detached(B.asarray(a))
            self._check_like(a, where)
            xp = B.namespace(a)
            a = V.as_2d(a, xp, where)
            if not xp.isdtype(a.dtype, ("real floating", "integral")):
                raise TypeError(f"{where} must hold real numbers; got dtype {a.dtype}")
            a = xp.astype(a, xp.float64)
            V.check_finite_array(a, xp, where)
            out.append(a)
        return names, out

    def update(self, acts_a: Sequence[Any] | Mapping[str, Any],
               acts_b: Sequence[Any] | Mapping[str, Any] | None = None, *,
               fold: int | None = None) -> None:
        """Add one batch of activations.

        Parameters
        ----------
        acts_a : sequence or dict name -> array, each of shape (n, ...)
            This batch's activations of every layer of model A (numpy or torch, one
            library and device throughout; flattened to ``(n, d_l)``; any real dtype,
            upcast to float64). ``n`` may differ between batches. Tensors that require
            grad are detached.
        acts_b : sequence or dict, optional
            The same examples through model B. None: within-model comparison (each
            layer's moments formed once).
        fold : int, optional
            With ``folds=k``: the fold (0 .. k-1) of this batch's examples; default the
            batch count of this accumulator modulo ``k``.

        Raises
        ------
        ValueError
            For mismatched ``n`` between layers, NaN/Inf (naming the layer), other layers
            or widths than the first batch's, a bad ``fold``, or layers that need more
            memory than ``max_bytes`` (first batch); nothing is accumulated then.
        TypeError
            For non-real dtypes, or a batch from another library or device than the
            previous ones.
        """
        names_a, arrays_a = self._side(acts_a, "acts_a")
        symmetric = acts_b is None
        names_b, arrays_b = (names_a, []) if symmetric else self._side(acts_b, "acts_b")
        arrays = arrays_a + arrays_b
        labels = [f"acts_a[{k!r}]" for k in names_a] + [f"acts_b[{k!r}]" for k in names_b]
        n = int(arrays[0].shape[0])
        for a, label in zip(arrays[1:], labels[1:]):
            V.check_same_n(n, int(a.shape[0]), labels[0], label, arrays[0].shape, a.shape)
        widths = [int(a.shape[1]) for a in arrays]
        fold = self._fold(fold)
        if self.started:
            self._check_batch(names_a, names_b, symmetric, widths, labels)
        else:
            self._check_memory(widths, labels)
        xp = B.namespace(arrays[0])
        x = xp.concat(arrays, axis=1)
        if self.started:
            shift = self._shift_array(xp, B.device(x))
        else:
            shift = xp.mean(x, axis=0)
        z = MM.augment(x - shift, widths, xp)
        if not self.started:
            self._start(dict(names_a=list(names_a), names_b=list(names_b), widths=widths,
                             symmetric=symmetric,
                             shift=tuple(float(v) for v in B.to_numpy(shift))),
                        xp, B.device(x))
            self._shift_cache = shift
        s = self._values
        MM.add_cross_product(s["zz"][fold], z, xp)
        s["sum_z"][fold] += xp.sum(z, axis=0)
        s["n"][fold] += n
        s["n_batches"] += 1

    # convenience name for the adapter (features, not grams)
    update_features = update

    def _fold(self, fold):
        k = self.folds or 1
        if fold is None:
            return self.n_batches % k
        if self.folds is None:
            raise ValueError("fold= needs an accumulator built with folds=k (k >= 2)")
        return V.check_int(fold, "fold", 0, k - 1, what=f" (folds={k})")

    def _check_batch(self, names_a, names_b, symmetric, widths, labels):
        if symmetric != self.symmetric:
            raise ValueError(
                "acts_b must be given in every update or in none: this accumulator was "
                "started " + ("within one model (acts_b=None)" if self.symmetric
                              else "across two models")
            )
        for side, names, expected in (("acts_a", names_a, self.names_a),
                                      ("acts_b", names_b, self.names_b)):
            if list(names) != list(expected):
                raise ValueError(f"{side} must hold the same layers in every batch; expected "
                                 f"{expected}, got {list(names)}")
        for label, w, want in zip(labels, widths, self.widths):
            if w != want:
                raise ValueError(f"{label} must have {want} features (as in the first batch); "
                                 f"got {w}")

    def _check_memory(self, widths, labels):
        need = self.required_bytes(widths)
        if self.max_bytes is not None and need > self.max_bytes:
            widest = sorted(zip(widths, labels), reverse=True)[:3]
            raise ValueError(
                f"FeatureMoments needs {_gib(need)} for {len(widths)} layers of {sum(widths)} "
                f"features in all (widest: {', '.join(f'{lb} with {w}' for w, lb in widest)}), "
                f"more than max_bytes={self.max_bytes} ({_gib(self.max_bytes)}): its memory "
                "grows with the square of the total width. Pool the layers first (e.g. "
                "pooling='spatial_mean' in repsim.compare_models, or a global average over "
                "positions), compare fewer layers, raise max_bytes, or use "
                "repsim.MinibatchCKA (the gram path: memory independent of the widths)"
            )

    def _shift_array(self, xp, device):
        cached = getattr(self, "_shift_cache", None)
        if cached is None or B.namespace(cached) is not xp or B.device(cached) != device:
            cached = xp.asarray(np.asarray(self.shift, dtype=np.float64), device=device)
            self._shift_cache = cached
        return cached

    def _invalidate(self) -> None:
        self._shift_cache = None

    # ------------------------------------------------------------------ combining
    def _pre_merge(self, other: "FeatureMoments") -> "FeatureMoments":
        """``other``'s sums re-expressed on this accumulator's shift (exact; see
        :func:`repsim._moment_measures.reshift`), for the base's :meth:`merge` to add."""
        if (self.started and other.started and other.widths == self.widths
                and other.shift != self.shift):
            self._check_like(other._values["zz"], "other")
            moved = FeatureMoments(max_bytes=None, folds=other.folds)
            moved.load_state_dict(other.state_dict())
            moved._values = MM.reshift(self.widths, moved._values, moved.shift, self.shift)
            moved.shift = self.shift
            return moved
        return other

    def _pre_sync(self, all_reduce: Callable[[Any], Any], device: Any) -> None:
        """Agree on a common shift before the base's :meth:`sync` sums the states.

        One all-reduce of a small check vector makes every process raise the same error
        when some have no batches or other widths; a second gives the mean of the
        processes' shifts, on which each process re-expresses its sums (exact).
        """
        if self.started:
            ref = self._values["zz"]
            xp, dev = B.namespace(ref), B.device(ref)
        else:
            import torch

            xp = B.namespace(torch.zeros(0))
            dev = torch.device("cpu") if device is None else torch.device(device)
        width = float(sum(self.widths)) if self.started else 0.0
        check = xp.asarray([1.0, float(self.started), width, width * width],
                           dtype=xp.float64, device=dev)
        all_reduce(check)
        world, started, total, squares = (float(v) for v in B.to_numpy(check))
        if started != world:
            raise ValueError(f"{int(world - started)} of {int(world)} processes have no "
                             "batches to sum; use fewer processes or more batches")
        if world * squares != total * total:
            raise ValueError("processes accumulated layers of different widths; every "
                             f"process must hook the same layers (this one: {self.widths})")
        shift = self._shift_array(xp, dev)
        common = xp.asarray(shift, copy=True)
        all_reduce(common)
        common = tuple(float(v) / world for v in B.to_numpy(common))
        if common != self.shift:
            self._values = MM.reshift(self.widths, self._values, self.shift, common)
            self.shift = common
            self._shift_cache = None

    # ------------------------------------------------------------------ compute
    def _totals(self):
        s = self._values
        xp = B.namespace(s["zz"])
        n = int(B.to_numpy(s["n"]).sum())
        if s["zz"].shape[0] == 1:
            return n, s["sum_z"][0], s["zz"][0]
        return n, xp.sum(s["sum_z"], axis=0), xp.sum(s["zz"], axis=0)

    def _layer_slices(self):
        out, start = [], 0
        for w in self.widths:
            out.append(slice(start, start + w))
            start += w
        return out

    def _indices(self):
        """Indices (into the concatenated layers) of side a's and side b's layers."""
        la = len(self.names_a)
        ia = list(range(la))
        return ia, ia if self.symmetric else list(range(la, la + len(self.names_b)))

    def compute(self, measure: str = "cka", **params: Any) -> Any:
        """One measure for every pair of layers, as on the full data.

        Parameters
        ----------
        measure : str
            A function with an exact streaming form in the measure registry
            (:func:`repsim.measure_names`): ``"cka"``, ``"cca"``, ``"svcca"``, ``"pwcca"``,
            ``"shape_distance"``, ``"nbs"``, ``"ridge_r2"``, ``"gulp"``; or the name of one
            of their measures (``"procrustes_angular"``), whose preset options apply.
        **params
            The measure's parameters, named and defaulted as in its full-data function:
            ``estimator`` ("biased" or "unbiased") for CKA; ``summary`` and ``ridge`` for
            CCA; ``keep``, ``summary``, ``ridge`` for SVCCA; ``side`` ("x" is layer_a,
            "y" layer_b, "smaller") and ``ridge`` for PWCCA; ``alpha``, ``score`` for the
            shape distance; ``ridge``, ``direction`` ("x_to_y" predicts layer_b from
            layer_a) and ``out_of_fold`` (k-fold R² from the per-fold sums; needs
            ``folds=``) for the regression R²; ``ridge``, ``squared`` for GULP. For the
            CCA family ``ridge`` (default 0) is added once to each side's summed
            covariance ``Xcᵀ Xc / n`` before whitening (canonical ridge): 0 is exactly
            :func:`repsim.cca`.

        Returns
        -------
        xarray.DataArray, shape (L_a, L_b)
            dims ``("layer_a", "layer_b")``, named after the measure; attrs ``measure``,
            the parameters, ``n_examples``, ``n_batches``, ``estimator``
            ("full-data"), ``symmetric``, ``folds``. Constant layers give NaN with one
            warning naming them.

        Raises
        ------
        ValueError
            No batches yet, too few examples (2; 4 for unbiased CKA; every fold non-empty
            for ``out_of_fold``), an unknown measure or a bad parameter value.
        TypeError
            A parameter the measure does not take.
        """
        measure, p = MM.check_params(measure, params, self.folds)
        if not self.started:
            raise ValueError("no batches accumulated yet; call update() first")
        n, s1, s2 = self._totals()
        need = 4 if p.get("estimator") == "unbiased" else (3 if p.get("out_of_fold") else 2)
        if n < need:
            raise ValueError(f"{measure} needs at least {need} examples; got n={n}")
        if p.get("out_of_fold") and int(B.to_numpy(self._values["n"]).min()) == 0:
            raise ValueError(f"out_of_fold=True needs examples in every fold; got per-fold "
                             f"counts {B.to_numpy(self._values['n']).tolist()}")
        ia, ib = self._indices()
        deg = self._constant_layers(n, s1, s2)
        if measure == "cka":
            values = self._cka(n, s1, s2, p["estimator"], ia, ib)
        else:
            values = self._pairwise(measure, p, n, s1, s2, ia, ib, deg)
        from ._rules import mask_degenerate as _mask_degenerate

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            values = _mask_degenerate(values, deg[ia], deg[ib], self.names_a, self.names_b)
        for w in caught:
            warnings.warn(w.message, w.category, stacklevel=V.user_stacklevel())
        attrs = {"measure": measure, "estimator": "full-data", "n_examples": n,
                 "n_batches": self.n_batches, "symmetric": bool(self.symmetric),
                 "folds": self.folds or 1}
        attrs.update({k: (list(v) if isinstance(v, (list, tuple)) else v)
                      for k, v in p.items()})
        if "estimator" in p:
            attrs["estimator"] = f"full-data {p['estimator']}"
        return similarity_array(values, self.names_a, self.names_b, attrs, name=measure)

    def _constant_layers(self, n, s1, s2):
        """Zero centred variance up to rounding: ``tr(S_ll) <= n eps tr(raw shifted)``."""
        xp = B.namespace(s2)
        eps = float(np.finfo(np.float64).eps)
        out = []
        for sl in self._layer_slices():
            raw = B.item(xp.sum(xp.linalg.diagonal(s2[sl, sl])))
            centred = raw - B.item(xp.sum(s1[sl] * s1[sl])) / n
            out.append(not centred > n * eps * raw)
        return np.asarray(out, dtype=bool)

    def _cka(self, n, s1, s2, estimator, ia, ib):
        terms = B.to_numpy(MM.linear_cka_terms(s1, s2, n, self.widths, estimator))
        diag = np.diag(terms)
        with np.errstate(invalid="ignore", divide="ignore"):
            return terms[np.ix_(ia, ib)] / np.sqrt(np.outer(diag[ia], diag[ib]))

    def _cross(self, n, s1, s2, i, j):
        """Centred scatter ``Xc_iᵀ Xc_j`` of layers ``i`` and ``j`` from the shifted sums."""
        sl = self._layer_slices()
        a, b = sl[i], sl[j]
        return s2[a, b] - s1[a][:, None] * s1[b][None, :] / n

    def _pairwise(self, measure, p, n, s1, s2, ia, ib, deg):
        used = sorted(set(ia) | set(ib))
        scat = {i: self._cross(n, s1, s2, i, i) for i in used}
        whiten = {}
        if "ridge" in families()[measure].moment_options:  # the CCA family: whitened once
            whiten = {i: MM.whitening(scat[i], n, p["ridge"]) for i in used if not deg[i]}
        family = families()[measure]
        symmetric_measure = family.symmetric and (family.symmetric_when is None
                                                  or bool(family.symmetric_when(p)))
        values = np.full((len(ia), len(ib)), np.nan)
        for r, i in enumerate(ia):
            for c, j in enumerate(ib):
                if deg[i] or deg[j]:
                    continue
                if self.symmetric and symmetric_measure and c < r:
                    values[r, c] = values[c, r]
                    continue
                cross = self._cross(n, s1, s2, i, j)
                m = M.Moments(n, scat[i], scat[j], cross)
                values[r, c] = MM.pair_value(measure, p, m, whiten.get(i), whiten.get(j),
                                              (self.widths[i], self.widths[j]),
                                              lambda a, b: self._fold_sums(a, b), (i, j))
        return values

    def _fold_sums(self, a, b):
        """Per-fold raw (shifted) sums of layers ``a`` (predictor) and ``b`` (target)."""
        sl = self._layer_slices()
        s = self._values
        x, y = sl[a], sl[b]
        return [M.RawSums(int(B.to_numpy(s["n"][f])), s["sum_z"][f][x], s["sum_z"][f][y],
                          s["zz"][f][x, x], s["zz"][f][y, y], s["zz"][f][x, y])
                for f in range(s["zz"].shape[0])]

