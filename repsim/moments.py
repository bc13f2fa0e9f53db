"""FeatureMoments: every layer pair's moment-based measures, exactly, in one pass.

**The line between the two moment modules.** Here: the accumulator, its states and layout
(shift and per-layer scale exponents, fixed by the first batch); the algebra only that
layout needs (a batch's rows ``z``, adding their product, re-expressing sums on another
shift and scale) is in :mod:`repsim._moment_layout`. Values come from
:mod:`repsim._moment_formulas`, like the full-data ones.

Per batch, ``Z = [X_1', ..., X_L', a_1, ..., a_L]`` with ``X_l' = (X_l - s_l) 2**-e_l``
and ``a_l = ||x_l'||²`` row-wise (``n x (D + L)``, ``D = Σ d_l``); one float64 product
``ZᵀZ`` is added to a sum, with ``Σ z`` and the count. A pair's centred scatter is a block
of ``ZᵀZ - Σz Σzᵀ / n``; the norm columns give the full-data unbiased linear CKA.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import _backend as B
from . import _moment_formulas as F
from . import _validation as V
from ._accumulator import Accumulator, State, check_layer_names
from ._registry import families, moment_params
from ._centring import zero_ucentred_sum
from ._moment_layout import add_cross_product, augment, reexpress, slices  # noqa: F401 (MM.*)
from ._rules import mask_degenerate
from .results import similarity_array

#: Default memory budget (bytes) of :class:`FeatureMoments`.
DEFAULT_MAX_BYTES = 4 * 2**30
#: Range of the per-layer scale exponents (``2**-e`` stays a normal float64).
MAX_EXPONENT = 1020


class FeatureMoments(Accumulator):
    """Exact full-data measures for every pair of layers from streamed feature moments.

    Each :meth:`update` adds one batch with one product over the concatenated layers;
    :meth:`compute` gives, for every pair ``(layer_a, layer_b)``, the full-data value of
    any function with an exact streaming form in the measure registry (linear CKA, CCA,
    SVCCA, PWCCA, shape distance, NBS, ridge R², GULP). Unlike :class:`repsim.MinibatchCKA`
    (a minibatch estimator, memory ``O(L²)``), its memory is ``O((D + L)²)`` for a total
    width ``D``: fine for pooled or transformer-width layers (24 x 768: 2.5 GiB), not for
    flattened conv maps.

    Parameters
    ----------
    max_bytes : int, default 4 GiB
        Largest memory the accumulator may hold (:meth:`required_bytes`), checked before
        the first batch, a :meth:`merge` or a :meth:`load_state_dict` allocates; ``None``:
        no limit.
    folds : int >= 2, optional
        Keep the sums per fold, for the out-of-fold regression R²
        (``compute("ridge_r2", out_of_fold=True)``); memory grows ``folds``-fold. Batch
        ``t`` goes to fold ``t mod folds`` unless :meth:`update` is given ``fold=``.

    Notes
    -----
    **Shift and scale.** The first batch's float64 column means ``s`` are subtracted
    before the product (uncentred sums of offset data cancel catastrophically), and each
    layer is scaled by ``2**-e_l``, the exponent of its largest centred entry in the first
    batch (exact; no sum under- or overflows). The measures are translation invariant and
    the formulas undo the scale where a value depends on it, so neither changes a value.
    :meth:`merge` and :meth:`sync` re-express the other sums on a common shift and scale
    (exact, :func:`reexpress`) before the base adds them.

    **States** (declared on :class:`repsim._accumulator.Accumulator`, whose ``reset``,
    ``merge``, ``sync`` and ``state_dict`` / ``load_state_dict`` are used unchanged):
    ``n`` (folds,), ``n_batches`` (), ``sum_z`` (folds, D + L), ``zz`` (folds, D + L,
    D + L). Layout: ``names_a``, ``names_b``, ``widths``, ``symmetric``, ``shift``,
    ``exponents``.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> x = np.random.default_rng(0).standard_normal((300, 8))
    >>> acts = {"a": x, "b": np.tanh(x[:, :5]) + 1.0}
    >>> acc = repsim.FeatureMoments()
    >>> for start in range(0, 300, 64):
    ...     acc.update({k: v[start:start + 64] for k, v in acts.items()})
    >>> cka = float(acc.compute("cka").sel(layer_a="a", layer_b="b"))
    >>> bool(np.isclose(cka, float(repsim.cka(acts["a"], acts["b"])), rtol=1e-9))
    True
    """

    STATES = (
        State("n", ("folds",), "int64"),
        State("n_batches", (), "int64"),
        State("sum_z", ("folds", "z")),
        State("zz", ("folds", "z", "z")),
    )
    LAYOUT = ("names_a", "names_b", "widths", "symmetric", "shift", "exponents")

    names_a: list[str]
    names_b: list[str]
    widths: list[int]
    symmetric: bool
    shift: Any
    exponents: Any
    CONSUMES = "features"  # what repsim.compare_models feeds it: activations
    AGREED = ("shift", "exponents")  # processes agree on them in sync (_pre_sync)

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
        """Refuse a malformed incoming layout, or one that needs more than ``max_bytes``."""
        widths, shift, exps = layout["widths"], layout["shift"], layout["exponents"]
        check_layer_names(layout)
        names = list(layout["names_a"]) + ([] if layout["symmetric"] else layout["names_b"])
        count = len(names)
        if not (isinstance(widths, (list, tuple)) and len(widths) == count
                and all(isinstance(w, int) and w > 0 for w in widths)):
            raise ValueError(f"state['widths'] must hold {count} positive ints (one per "
                             f"layer); got {widths!r}")
        if not (isinstance(shift, tuple) and len(shift) == sum(widths)
                and all(isinstance(v, float) and math.isfinite(v) for v in shift)):
            raise ValueError(f"state['shift'] must be a tuple of {sum(widths)} finite floats "
                             "(one per feature)")
        if not (isinstance(exps, tuple) and len(exps) == count and all(
                isinstance(e, int) and abs(e) <= MAX_EXPONENT for e in exps)):
            raise ValueError(f"state['exponents'] must be a tuple of {count} ints in "
                             f"[-{MAX_EXPONENT}, {MAX_EXPONENT}] (one per layer)")
        self._check_memory(list(widths), [repr(k) for k in names])

    @property
    def n_batches(self) -> int:
        """Batches accumulated so far (over all merged or synced accumulators)."""
        return int(self._values["n_batches"]) if self._values else 0

    @property
    def n_examples(self) -> int:
        """Examples accumulated so far."""
        return int(B.to_numpy(self._values["n"]).sum()) if self._values else 0

    def required_bytes(self, widths: Sequence[int]) -> int:
        """Memory (bytes) for layers of these widths: the states, ``8 folds (D + L)²``, and
        with ``folds`` one more ``(D + L)²`` for :meth:`compute`'s summed folds (other
        workspaces are per batch, layer or pair, or row blocks of at most 64 MiB)."""
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
            a = V.as_2d(a, xp := B.namespace(a), where)
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
            Every layer of model A (numpy or torch, one library and device throughout;
            flattened to ``(n, d_l)``, upcast to float64, detached). ``n`` may vary; the
            first batch's must be >= 1 (its means fix the shift).
        acts_b : sequence or dict, optional
            The same examples through model B; None: within one model.
        fold : int, optional
            With ``folds=k``: this batch's fold; default the batch count modulo ``k``.

        Raises
        ------
        ValueError
            Mismatched ``n``, an empty first batch, NaN/Inf (naming the layer), other
            layers or widths than the first batch's, a bad ``fold``, or more memory than
            ``max_bytes``; nothing is accumulated then.
        TypeError
            Non-real dtypes, or another library or device than the previous batches.
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
        elif n == 0:
            raise ValueError("the first batch has no examples (n=0): its column means fix "
                             "the accumulator's shift; start with a non-empty batch")
        else:
            self._check_memory(widths, labels)
        xp = B.namespace(arrays[0])
        x = xp.concat(arrays, axis=1)
        if not self.started:
            shift = xp.mean(x, axis=0)
            self._start(dict(names_a=list(names_a), names_b=list(names_b), widths=widths,
                             symmetric=symmetric,
                             shift=tuple(float(v) for v in B.to_numpy(shift)),
                             exponents=self._first_exponents(x, shift, widths, xp)),
                        xp, B.device(x))
        shift, mult = self._layout_arrays(xp, B.device(x))
        z = augment((x - shift) * mult, widths, xp)
        s = self._values
        add_cross_product(s["zz"][fold], z, xp)
        s["sum_z"][fold] += xp.sum(z, axis=0)
        s["n"][fold] += n
        s["n_batches"] += 1

    # convenience name for the adapter (features, not grams)
    update_features = update

    @staticmethod
    def _first_exponents(x, shift, widths, xp):
        """Per layer, the exponent of its largest centred entry (else of its largest
        entry: a one-example batch), within [-MAX_EXPONENT, MAX_EXPONENT]."""
        top = [B.to_numpy(xp.max(xp.abs(a), axis=0)) for a in (x - shift, x)]
        amax = [float(top[0][s].max()) or float(top[1][s].max()) for s in slices(widths)]
        return tuple(min(max(F.exponent(a), -MAX_EXPONENT), MAX_EXPONENT) for a in amax)

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
            widest = ", ".join(f"{lb} with {w}" for w, lb in sorted(zip(widths, labels))[::-1][:3])
            raise ValueError(
                f"FeatureMoments needs {need / 2**30:.2f} GiB for {len(widths)} layers of "
                f"{sum(widths)} features in all (widest: {widest}), more than max_bytes="
                f"{self.max_bytes} ({self.max_bytes / 2**30:.2f} GiB): its memory "
                "grows with the square of the total width. Pool the layers first (e.g. "
                "pooling='spatial_mean' in repsim.compare_models, or a global average over "
                "positions), compare fewer layers, raise max_bytes, or use "
                "repsim.MinibatchCKA (the gram path: memory independent of the widths)"
            )

    def _layout_arrays(self, xp, device):
        """The shift and the per-feature scale ``2**-e`` as arrays (cached)."""
        cached = getattr(self, "_cache", None)
        if cached is None or B.namespace(cached[0]) is not xp or B.device(cached[0]) != device:
            mult = np.repeat(np.ldexp(1.0, [-e for e in self.exponents]), self.widths)
            cached = tuple(xp.asarray(np.asarray(v, dtype=np.float64), device=device)
                           for v in (self.shift, mult))
            self._cache = cached
        return cached

    def _invalidate(self) -> None:
        self._cache = None  # the shift and scale arrays of _layout_arrays

    # ------------------------------------------------------------------ combining
    def _pre_merge(self, other: "FeatureMoments") -> "FeatureMoments":
        """``other``'s sums re-expressed on this accumulator's shift and scale (exact; see
        :func:`reexpress`), for the base's :meth:`merge` to add."""
        if (self.started and other.widths == self.widths
                and (other.shift, other.exponents) != (self.shift, self.exponents)):
            moved = FeatureMoments(max_bytes=None, folds=other.folds)
            moved.load_state_dict(other.state_dict())
            moved._values = reexpress(self.widths, moved._values, (moved.shift, moved.exponents),
                                      (self.shift, self.exponents))
            moved.shift, moved.exponents = self.shift, self.exponents
            return moved
        return other

    def _pre_sync(self, all_reduce: Callable[[Any], Any], world: int) -> None:
        """Agree on a common shift and scale (the mean of the processes' shifts and
        exponents, one all-reduce) and re-express this process's sums on it (exact)."""
        ref = self._values["zz"]
        mine = np.asarray(self.shift + self.exponents, dtype=np.float64)
        common = B.namespace(ref).asarray(mine, device=B.device(ref))
        all_reduce(common)
        common = B.to_numpy(common) / world
        d = len(self.shift)
        target = (tuple(float(v) for v in common[:d]), tuple(int(round(e)) for e in common[d:]))
        if target != (self.shift, self.exponents):
            self._values = reexpress(self.widths, self._values, (self.shift, self.exponents),
                                     target)
            self.shift, self.exponents = target
            self._cache = None

    # ------------------------------------------------------------------ compute
    def _totals(self):
        s = self._values
        xp = B.namespace(s["zz"])
        n = int(B.to_numpy(s["n"]).sum())
        if s["zz"].shape[0] == 1:
            return n, s["sum_z"][0], s["zz"][0]
        return n, xp.sum(s["sum_z"], axis=0), xp.sum(s["zz"], axis=0)

    def compute(self, measure: str = "cka", **params: Any) -> Any:
        """One measure for every pair of layers, as on the full data.

        Parameters
        ----------
        measure : str
            A function with an exact streaming form in the measure registry (``"cka"``,
            ``"cca"``, ``"svcca"``, ``"pwcca"``, ``"shape_distance"``, ``"nbs"``,
            ``"ridge_r2"``, ``"gulp"``), or one of their measures' names
            (``"procrustes_angular"``), whose presets apply (``"cka_rbf"``: refused).
        **params
            The function's streaming parameters, named and defaulted as there (CKA:
            ``estimator``, linear only), plus ``ridge`` (default 0) for the CCA family,
            added once to each side's covariance ``Xcᵀ Xc / n`` before whitening (canonical
            ridge), and ``out_of_fold`` (k-fold R²; needs ``folds=``) for ridge R².
            layer_a is ``x`` (``side="x"``, ``direction="x_to_y"``).

        Returns
        -------
        xarray.DataArray, shape (L_a, L_b)
            dims ``("layer_a", "layer_b")``, named after the measure; attrs ``measure``,
            the parameters, ``n_examples``, ``n_batches``, ``estimator`` ("full-data"),
            ``symmetric``, ``folds``. Constant layers: NaN with one warning naming them.

        Raises
        ------
        ValueError
            No batches yet, too few examples (2; 4 for unbiased CKA; every fold non-empty
            for ``out_of_fold``), an unknown measure or a bad value.
        TypeError
            A parameter the measure does not take.
        """
        measure, p = moment_params(measure, params)
        oof = p.get("out_of_fold")
        if oof and not self.folds:
            raise ValueError("out_of_fold=True needs an accumulator built with folds=k (k >= 2)")
        if not self.started:
            raise ValueError("no batches accumulated yet; call update() first")
        n, s1, s2 = self._totals()
        need = 4 if p.get("estimator") == "unbiased" else (3 if oof else 2)
        if n < need:
            raise ValueError(f"{measure} needs at least {need} examples; got n={n}")
        if oof and int(B.to_numpy(self._values["n"]).min()) == 0:
            raise ValueError(f"out_of_fold=True needs examples in every fold; got per-fold "
                             f"counts {B.to_numpy(self._values['n']).tolist()}")
        la = len(self.names_a)
        ia = list(range(la))
        ib = ia if self.symmetric else list(range(la, la + len(self.names_b)))
        deg = self._constant_layers(n, s1, s2)
        if measure == "cka":
            if p["estimator"] == "unbiased":
                terms, magnitude, offdiagonal = (B.to_numpy(t) for t in F.linear_cka_terms(
                    s1, s2, n, self.widths, "unbiased", scale=True))
                deg = deg | zero_ucentred_sum(np.diag(terms), magnitude, offdiagonal, n,
                                              float(np.finfo(np.float64).eps))
            else:
                terms = B.to_numpy(F.linear_cka_terms(s1, s2, n, self.widths, "biased"))
            diag = np.diag(terms)
            with np.errstate(invalid="ignore", divide="ignore"):
                values = terms[np.ix_(ia, ib)] / np.sqrt(np.outer(diag[ia], diag[ib]))
        else:
            values = self._pairwise(measure, p, n, s1, s2, ia, ib, deg)
        named = "CKA" if measure == "cka" else measure
        values = mask_degenerate(values, deg[ia], deg[ib], self.names_a, self.names_b, named,
                                 reason=V.degenerate_reason(p.get("estimator", "biased")))
        attrs = {"measure": measure, "n_examples": n, "n_batches": self.n_batches,
                 "symmetric": bool(self.symmetric), "folds": self.folds or 1,
                 **{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in p.items()}}
        attrs["estimator"] = f"full-data {p['estimator']}" if "estimator" in p else "full-data"
        return similarity_array(values, self.names_a, self.names_b, attrs, name=measure)

    def _constant_layers(self, n, s1, s2):
        """Zero centred variance up to rounding: ``tr(S_ll) <= n eps tr(raw shifted)``."""
        xp, eps, out = B.namespace(s2), float(np.finfo(np.float64).eps), []
        for sl in slices(self.widths):
            raw = B.item(xp.sum(xp.linalg.diagonal(s2[sl, sl])))
            centred = raw - B.item(xp.sum(s1[sl] * s1[sl])) / n
            out.append(not centred > n * eps * raw)
        return np.asarray(out, dtype=bool)

    def _pairwise(self, measure, p, n, s1, s2, ia, ib, deg):
        sl = slices(self.widths)

        def cross(i, j):  # centred scatter Xc_iᵀ Xc_j from the shifted sums
            return s2[sl[i], sl[j]] - s1[sl[i]][:, None] * s1[sl[j]][None, :] / n

        used = sorted(set(ia) | set(ib))
        scat = {i: cross(i, i) for i in used}
        e = self.exponents
        family = families()[measure]
        whiten = {}
        if "ridge" in family.moment_options:  # the CCA family: whitened once per layer
            whiten = {i: F.whitening(scat[i], n, p["ridge"], e[i]) for i in used if not deg[i]}
        symmetric = family.symmetric and (family.symmetric_when is None
                                          or bool(family.symmetric_when(p)))
        values = np.full((len(ia), len(ib)), np.nan)
        for r, i in enumerate(ia):
            for c, j in enumerate(ib):
                if deg[i] or deg[j]:
                    continue
                if self.symmetric and symmetric and c < r:
                    values[r, c] = values[c, r]
                    continue
                m = F.Moments(n, scat[i], scat[j], cross(i, j), e[i], e[j])
                folds = (lambda flip, i=i, j=j: self._fold_sums(*((j, i) if flip else (i, j))))
                values[r, c] = F.pair_value(measure, p, m, whiten.get(i), whiten.get(j),
                                            (self.widths[i], self.widths[j]), folds)
        return values

    def _fold_sums(self, a, b):
        """Per-fold raw (shifted, scaled) sums of layers ``a`` (predictor) and ``b``."""
        s, (x, y) = self._values, [slices(self.widths)[k] for k in (a, b)]
        return [F.RawSums(int(B.to_numpy(s["n"][f])), s["sum_z"][f][x], s["sum_z"][f][y],
                          s["zz"][f][x, x], s["zz"][f][y, y], s["zz"][f][x, y])
                for f in range(s["zz"].shape[0])]
