"""Every measure of the registry under hostile input (issue 26, "Done when").

Hypothesis draws well-conditioned float64 data (n = 40..80 examples, 5..15 features a
side, some examples duplicated, some constant columns added) and transforms it as the
measure's *declared* invariances allow (:func:`repsim.measures`): offsets up to ``1e4``
standard deviations (translation), isotropic scales from ``1e-90`` to ``1e80``
(isotropic_scaling), both at once. The value on the transformed data must equal the
value on the untransformed data within ``1e-6`` -- or both are NaN, with a
:class:`repsim.DegenerateRepresentationWarning` naming the layer. The untransformed
values are themselves checked against independent numpy/scipy formulas written here
(linear CKA, distance correlation, RSA, mean CCA, mutual k-NN). A constant layer, at any
offset and scale, is NaN with a warning naming it for every translation-invariant measure.

No measure is named in a list here: the tests iterate the registry and read each
measure's invariances from it.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import pdist, squareform

import repsim
from repsim import _registry as R
from repsim.neighbours import neighbours

TOL = 1e-6
SETTINGS = settings(max_examples=25, deadline=None)
MEASURES = R.all_measures()


def _declares(m, invariance):
    return invariance in m.invariances


def _transforms(m):
    out = []
    if _declares(m, "translation"):
        out.append("offset")
    if _declares(m, "isotropic_scaling"):
        out.append("scale")
    if _declares(m, "translation") and _declares(m, "isotropic_scaling"):
        out.append("offset+scale")
    return out


def _param(m, *values):
    """One test case, named by its measure and transform."""
    return pytest.param(m, *values, id="-".join([m.name, *map(str, values)]))


def _cases():
    return [_param(m, t) for m in MEASURES for t in _transforms(m)]


def _each(case, measures=None):
    return [_param(m) for m in (MEASURES if measures is None else measures)]


_TRANSLATION = [m for m in MEASURES if _declares(m, "translation")]


# --------------------------------------------------------------------------- data


@st.composite
def base_data(draw, duplicates=True, constant_columns=True):
    """A well-conditioned pair ``(x, y)`` of float64 arrays of the same examples."""
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(40, 80))
    p, q = draw(st.integers(5, 15)), draw(st.integers(5, 15))
    dup = draw(st.integers(0, 8)) if duplicates else 0
    cx = draw(st.integers(0, 2)) if constant_columns else 0
    cy = draw(st.integers(0, 2)) if constant_columns else 0
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n - dup, p))
    y = 0.8 * x @ rng.standard_normal((p, q)) / math.sqrt(p) + 0.6 * rng.standard_normal((n - dup, q))
    rows = np.concatenate([np.arange(n - dup), rng.integers(0, n - dup, dup)])
    x, y = x[rows], y[rows]
    x = np.concatenate([x, np.broadcast_to(rng.uniform(-3, 3, cx), (n, cx))], axis=1)
    y = np.concatenate([y, np.broadcast_to(rng.uniform(-3, 3, cy), (n, cy))], axis=1)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def _offset(a, rng, log10):
    """``a`` plus a per-column offset of ``10**log10`` standard deviations (signs, factors
    in [0.5, 1] per column)."""
    c = rng.choice([-1.0, 1.0], a.shape[1]) * rng.uniform(0.5, 1.0, a.shape[1])
    return a + c * 10.0**log10 * float(np.std(a))


def _hostile(a, rng, transform, log10_offset, log10_scale):
    if "offset" in transform:
        a = _offset(a, rng, log10_offset)
    if "scale" in transform:
        a = a * 10.0**log10_scale
    assert np.all(np.isfinite(a))
    return a


def _call(m, x, y):
    """``(value, DegenerateRepresentationWarning messages)``; other warnings may occur
    (an underdetermined CCA) but must not replace a value."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(m(x, y))
    degenerate = [str(w.message) for w in caught
                  if issubclass(w.category, repsim.DegenerateRepresentationWarning)]
    return value, degenerate


def _assert_same(m, got, ref, label):
    value, warned = got
    expected, ref_warned = ref
    if math.isnan(expected):
        assert math.isnan(value), f"{m.name} {label}: {value!r}, reference NaN ({ref_warned})"
        assert warned and any(("'x'" in w or "'y'" in w) for w in warned), \
            f"{m.name} {label}: NaN without a warning naming the layer ({warned})"
        return
    assert not warned, f"{m.name} {label}: unexpected degeneracy warning {warned}"
    assert abs(value - expected) <= TOL * max(1.0, abs(expected)), \
        f"{m.name} {label}: {value!r} != reference {expected!r}"


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize(("m", "transform"), _cases())
@SETTINGS
@given(data=base_data(), seed=st.integers(0, 2**32 - 1),
       log10_offset=st.floats(0.0, 4.0), log10_sx=st.floats(-90.0, 80.0),
       log10_sy=st.floats(-90.0, 80.0))
@example(data=None, seed=0, log10_offset=4.0, log10_sx=-90.0, log10_sy=-90.0)
@example(data=None, seed=1, log10_offset=4.0, log10_sx=80.0, log10_sy=80.0)
@example(data=None, seed=2, log10_offset=4.0, log10_sx=-90.0, log10_sy=80.0)
def test_declared_invariances_hold_under_hostile_offsets_and_scales(
        m, transform, data, seed, log10_offset, log10_sx, log10_sy):
    x, y = data if data is not None else _fixed_data()
    rng = np.random.default_rng(seed)
    ref = _call(m, x, y)
    hx = _hostile(x, rng, transform, log10_offset, log10_sx)
    hy = _hostile(y, rng, transform, log10_offset, log10_sy)
    _assert_same(m, _call(m, hx, hy), ref, f"{transform} (offset 1e{log10_offset:.2f} std, "
                 f"scales 1e{log10_sx:.1f}, 1e{log10_sy:.1f})")


def _fixed_data():
    rng = np.random.default_rng(26)
    x = rng.standard_normal((60, 8))
    y = 0.8 * x[:, :6] + 0.6 * rng.standard_normal((60, 6))
    return x, y


@pytest.mark.parametrize("m", _each("constant columns", _TRANSLATION))
@SETTINGS
@given(data=base_data(constant_columns=False), seed=st.integers(0, 2**32 - 1),
       log10_offset=st.floats(0.0, 4.0), log10_scale=st.floats(-90.0, 80.0))
def test_constant_columns_change_no_translation_invariant_measure(m, data, seed, log10_offset,
                                                                  log10_scale):
    """A constant column is a zero column once centred: a translation-invariant measure
    that only sees centred data does not see it, at any offset (and, where the measure
    is scale invariant, scale)."""
    x, y = data
    rng = np.random.default_rng(seed)
    ref = _call(m, x, y)
    c = rng.uniform(-1, 1, 2) * 10.0**log10_offset * float(np.std(x))
    hx = np.concatenate([x[:, :2], np.broadcast_to(c, (len(x), 2)), x[:, 2:]], axis=1)
    hx = hx + (rng.uniform(-1, 1, hx.shape[1]) * 10.0**log10_offset * float(np.std(x)))
    if _declares(m, "isotropic_scaling"):
        hx = hx * 10.0**log10_scale
    _assert_same(m, _call(m, hx, y), ref, "constant columns")


@pytest.mark.parametrize("side", ["x", "y"])
@pytest.mark.parametrize("m", _each("constant layer"))
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), log10_offset=st.floats(-3.0, 4.0),
       log10_scale=st.floats(-90.0, 80.0))
@example(seed=0, log10_offset=4.0, log10_scale=-90.0)
@example(seed=0, log10_offset=4.0, log10_scale=80.0)
def test_a_constant_layer_is_nan_with_a_warning_naming_it(m, side, seed, log10_offset,
                                                          log10_scale):
    """Every row the same vector (an offset of any size, at any scale): undefined for every
    symmetric translation-invariant measure -- NaN and a warning naming the layer. Another
    measure may define it (R² of a constant predictor is 0; eigenspace overlap of the
    uncentred column space); then the value must not depend on the offset (where the
    measure declares translation) nor on the scale (where it declares isotropic scaling)."""
    x, y = _fixed_data()
    rng = np.random.default_rng(seed)
    row = rng.choice([-1.0, 1.0], x.shape[1]) * rng.uniform(0.5, 1.0, x.shape[1])
    const = np.broadcast_to(row * 10.0**log10_offset, x.shape).copy()
    hostile = const * 10.0**log10_scale if _declares(m, "isotropic_scaling") else const
    other = y[:, : x.shape[1]].copy()
    value, warned = _call(m, *((hostile, other) if side == "x" else (other, hostile)))
    if (_declares(m, "translation") and m.symmetric) or math.isnan(value):
        assert math.isnan(value), f"{m.name}: constant {side} gave {value!r}"
        assert any(f"'{side}'" in w for w in warned), f"{m.name}: warnings {warned}"
        return
    plain = np.ones_like(const) if _declares(m, "translation") else const
    ref = _call(m, *((plain, other) if side == "x" else (other, plain)))
    _assert_same(m, (value, warned), ref, f"constant layer {side}")


# --------------------------------------------------------------------------- references
# independent float64 formulas for a few measures (textbook definitions, scipy distances)


def _ucentre(d):
    n = len(d)
    d = d.copy()
    np.fill_diagonal(d, 0.0)
    r = d.sum(axis=1)
    u = d - r[:, None] / (n - 2) - r[None, :] / (n - 2) + d.sum() / ((n - 1) * (n - 2))
    np.fill_diagonal(u, 0.0)
    return u


def _ref_dcor(x, y):
    a, b = _ucentre(squareform(pdist(x))), _ucentre(squareform(pdist(y)))
    return np.sum(a * b) / math.sqrt(np.sum(a * a) * np.sum(b * b))


def _ref_rsa(x, y):
    return np.corrcoef(pdist(x), pdist(y))[0, 1]


def _ref_cka(x, y):
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def _ref_cca(x, y):
    def basis(a):
        u, s, _ = np.linalg.svd(a - a.mean(0), full_matrices=False)
        return u[:, s > s[0] * 1e-10]
    return np.mean(np.linalg.svd(basis(x).T @ basis(y), compute_uv=False))


def _ref_mutual_knn(x, y, k):
    def nbrs(a):
        u = a / np.linalg.norm(a, axis=1, keepdims=True)
        s = u @ u.T
        np.fill_diagonal(s, -np.inf)
        return np.argsort(-s, axis=1, kind="stable")[:, :k]
    na, nb = nbrs(x), nbrs(y)
    return np.mean([len(set(a) & set(b)) / k for a, b in zip(na, nb)])


@SETTINGS
@given(data=base_data(duplicates=True, constant_columns=True))
def test_the_references_are_independent_formulas(data):
    x, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("error", repsim.DegenerateRepresentationWarning)
        assert abs(float(repsim.dcor(x, y)) - _ref_dcor(x, y)) <= TOL
        assert abs(float(repsim.rsa(x, y)) - _ref_rsa(x, y)) <= TOL
        assert abs(float(repsim.cka(x, y)) - _ref_cka(x, y)) <= TOL
        assert abs(float(repsim.cca(x, y)) - _ref_cca(x, y)) <= TOL


@SETTINGS
@given(data=base_data(duplicates=False, constant_columns=True))
def test_mutual_knn_reference(data):
    x, y = data
    m = repsim.measure("mutual_knn")
    k = int(m.options["k"])
    assert abs(float(m(x, y)) - _ref_mutual_knn(x, y, k)) <= TOL


@pytest.mark.parametrize("m", _each("offset 1e7 std", _TRANSLATION))
def test_the_issues_offset_of_1e7_standard_deviations(m):
    """Issue 26's case, ``1e4 + 1e-3 x`` at n = 200 (an offset of 1e7 standard deviations,
    where ``n eps`` times the uncentred sum of squares exceeds the centred one: a
    "constant" test on uncentred data calls it constant). ``1e7 + x`` for a measure that
    is not scale invariant."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((200, 8))
    y = 0.8 * x[:, :6] + 0.6 * rng.standard_normal((200, 6))
    if _declares(m, "isotropic_scaling"):
        hx, hy = 1e4 + 1e-3 * x, 1e4 + 1e-3 * y
    else:
        hx, hy = 1e7 + x, 1e7 + y
    _assert_same(m, _call(m, hx, hy), _call(m, x, y), "offset of 1e7 std")


# --------------------------------------------------------------------------- regressions
# one focused test per fix (each failed on the code before it)


def _close(a, b, tol=1e-10):
    a, b = float(a), float(b)
    assert math.isfinite(a) and abs(a - b) <= tol * max(1.0, abs(b)), (a, b)


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
@pytest.mark.parametrize("scale", [1e-90, 1e80, 1e-200, 1e200])
def test_dcor_at_tiny_and_huge_scales(scale, estimator):
    """Was inf at 1e-90 and 0 at 1e80: the sums of squared U-centred distances under- and
    overflowed. Now centred and scaled by a power of two first."""
    x, y = _fixed_data()
    ref = repsim.dcor(x, y, estimator=estimator)
    _close(ref, _ref_dcor(x, y) if estimator == "unbiased" else ref)
    _close(repsim.dcor(scale * x, scale * y, estimator=estimator), ref)
    _close(repsim.dcor(scale * (1e4 + x), y, estimator=estimator), ref, 1e-8)


def test_dcor_of_data_far_from_the_origin_is_not_constant():
    """``1e4 + 1e-3 x`` (n = 200) was NaN with a false "constant" warning: degeneracy was
    taken against the uncentred sum of squares; now on the centred data."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 5))
    y = x[:, :3] + 0.5 * rng.standard_normal((200, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error", repsim.DegenerateRepresentationWarning)
        _close(repsim.dcor(1e4 + 1e-3 * x, 1e4 + 1e-3 * y), _ref_dcor(x, y), 1e-7)


@pytest.mark.parametrize("rdm", ["euclidean", "sqeuclidean", "correlation"])
@pytest.mark.parametrize("compare", ["pearson", "spearman", "kendall"])
@pytest.mark.parametrize("scale", [1e-90, 1e80, 1e-160, 1e160])
def test_rsa_at_tiny_and_huge_scales(rdm, compare, scale):
    """Pearson RSA was inf at 1e-90 and 0 at 1e80 (its sums of products of distances
    under/overflowed); at 1e-160 the squared distances fell into subnormals and the rank
    comparisons saw false ties. Now the data are scaled by a power of two first -- in
    the per-pair function and in the per-layer step of similarity_matrix."""
    x, y = _fixed_data()
    ref = repsim.rsa(x, y, rdm=rdm, compare=compare)
    if rdm == "euclidean" and compare == "pearson":
        _close(ref, _ref_rsa(x, y))
    _close(repsim.rsa(scale * x, scale * y, rdm=rdm, compare=compare), ref)
    sim = repsim.similarity_matrix({"a": scale * x}, {"b": y / scale}, measure="rsa", rdm=rdm,
                                   compare=compare, progress=False)
    _close(sim.values[0, 0], ref)


def test_rsa_scaling_keeps_exact_ties():
    """The power-of-two scaling is exact: duplicated examples still tie exactly (issue 26
    item 3), at 1e-120 as at 1."""
    x, y = _fixed_data()
    x2, y2 = np.repeat(x, 2, axis=0), np.repeat(y, 2, axis=0)
    ref = repsim.rsa(x2, y2, rdm="correlation", compare="kendall")
    assert float(repsim.rsa(1e-120 * x2, 1e-120 * y2, rdm="correlation", compare="kendall")) == ref


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_rbf_cka_of_a_constant_layer_is_nan_with_a_warning(estimator):
    """Was a ValueError from the bandwidth heuristic ("median squared distance is 0; pass
    sigma"), though no sigma defines CKA for a constant layer: NaN and a warning naming
    it, in cka and in cka_matrix (whose sigma for it is NaN)."""
    x, y = _fixed_data()
    const = np.full_like(x, 1e4)
    with pytest.warns(repsim.DegenerateRepresentationWarning, match="'x'"):
        assert math.isnan(float(repsim.cka(const, y, kernel="rbf", estimator=estimator)))
    with pytest.warns(repsim.DegenerateRepresentationWarning, match="'c'"):
        sim = repsim.cka_matrix({"c": const, "v": x}, kernel="rbf", estimator=estimator)
    assert np.isnan(sim.values[0]).all() and np.isfinite(sim.values[1, 1])
    assert math.isnan(sim.attrs["sigma_a"][0]) and sim.attrs["sigma_a"][1] > 0


@pytest.mark.parametrize("options", [{"estimator": "unbiased"}, {"kernel": "rbf"}])
def test_cka_gram_path_at_1e200(options):
    """The gram path's bookkeeping of the largest squared row norm, ``2^(2e)`` times the
    scaled one, raised OverflowError ("math range error") for data at 1e200."""
    x, y = _fixed_data()
    _close(repsim.cka(1e200 * x, 1e200 * y, **options), repsim.cka(x, y, **options))


@pytest.mark.parametrize("scale", [1e-200, 1e200])
def test_cca_family_beyond_1e150(scale):
    """At 1e-200 cca was NaN (a column's squared norm underflowed: "constant"), svcca a
    silent 0.18 (reference 0.84); with an offset at 1e150 the centring floor overflowed
    ("x overflows float64 when centred"). The SVD now sees the data scaled by a power of
    two, and the floor's norm is taken without overflow."""
    x, y = _fixed_data()
    xc = np.c_[x, np.full(len(x), 3.0)]  # a constant column too
    for name in sorted({m.function for m in MEASURES if m.function.endswith("cca")}):
        fn = getattr(repsim, name)
        ref = fn(x, y)
        _close(fn(scale * xc, scale * y), ref, 1e-9)
        _close(fn(scale * (xc + 1e4), scale * (y - 1e4)), ref, 1e-8)
    rho = repsim.canonical_correlations(scale * x, scale * y)
    np.testing.assert_allclose(rho, repsim.canonical_correlations(x, y), atol=1e-10)


@pytest.mark.parametrize("scale", [1e-200, 1e200])
def test_euclidean_neighbours_at_tiny_and_huge_scales(scale):
    """Squared distances of data at 1e-200 underflowed to 0 (every neighbourhood "tied":
    NaN) and overflowed at 1e200. Every k-NN measure with a ``metric`` option, from the
    registry; and the distances that ``repsim.neighbours`` reports stay in x's units."""
    x, y = _fixed_data()
    fams = [f for f in R.families().values() if "metric" in f.constraints]
    assert fams
    for fam in fams:
        ref = fam.function(x, y, metric="euclidean")
        _close(fam.function(scale * x, scale * (y + 1e3), metric="euclidean"), ref)
    nb = neighbours(2.0**-20 * x, 5, metric="euclidean")
    d = squareform(pdist(2.0**-20 * x, "sqeuclidean"))
    np.testing.assert_allclose(nb.value, np.take_along_axis(d, nb.index, axis=1), rtol=1e-12)
