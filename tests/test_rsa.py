"""Distance correlation and RSA against the dcor package, scipy and written-out formulas."""

import itertools

import numpy as np
import pytest
import scipy.spatial.distance as sd
import scipy.stats as ss
from hypothesis import given, settings
from hypothesis import strategies as st

import repsim
from repsim import rdm as R

dcor_pkg = pytest.importorskip("dcor")

# the registry's declared choices of rsa (repsim.rdm declares them once)
RDMS = repsim.measure("rsa").family.constraints["rdm"].allowed
COMPARES = repsim.measure("rsa").family.constraints["compare"].allowed


def _allowed(option):
    """rsa's allowed values of ``option``, from its declared constraints."""
    from repsim._registry import families

    return families()["rsa"].constraints[option].allowed


def _pair(rng, n=40):
    x = rng.standard_normal((n, 4)) * [1, 3, 0.5, 2] + 7.0
    return x, np.tanh(x @ rng.standard_normal((4, 6))) + 0.3 * rng.standard_normal((n, 6))


def test_dcor_matches_the_dcor_package(rng):
    x, y = _pair(rng)
    assert abs(repsim.dcor(x, y) - dcor_pkg.u_distance_correlation_sqr(x, y)) < 1e-9
    assert abs(repsim.dcor(x, y, "biased") - dcor_pkg.distance_correlation_sqr(x, y)) < 1e-9


def test_dcor_is_cka_of_u_centred_distance_matrices(rng):
    x, y = _pair(rng, n=25)
    a, b = sd.squareform(sd.pdist(x)), sd.squareform(sd.pdist(y))
    ua, ub = repsim.ucentre_gram(a), repsim.ucentre_gram(b)
    ref = np.sum(ua * ub) / np.sqrt(np.sum(ua * ua) * np.sum(ub * ub))
    assert abs(repsim.dcor(x, y) - ref) < 1e-9


@pytest.mark.parametrize("rdm", ["euclidean", "sqeuclidean", "correlation"])
def test_rsa_matches_scipy(rng, rdm):
    x, y = _pair(rng)
    u, v = sd.pdist(x, rdm), sd.pdist(y, rdm)
    assert abs(repsim.rsa(x, y, rdm, "pearson") - ss.pearsonr(u, v)[0]) < 1e-9
    assert abs(repsim.rsa(x, y, rdm, "spearman") - ss.spearmanr(u, v)[0]) < 1e-9
    assert abs(repsim.rsa(x, y, rdm, "kendall") - ss.kendalltau(u, v)[0]) < 1e-9  # no ties: τ-a = τ-b


def test_kendall_tau_a_with_ties_matches_the_pair_count():
    rng = np.random.default_rng(5)
    a = rng.integers(0, 4, 60).astype(float)
    b = rng.integers(0, 3, 60).astype(float)
    s = sum(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]) for i, j in itertools.combinations(range(60), 2))
    assert abs(R.kendall_tau_a(a, b) - s / (60 * 59 / 2)) < 1e-12
    tau_b = ss.kendalltau(a, b)[0]
    assert abs(R.kendall_tau_a(a, b) - tau_b) > 1e-3  # with ties τ-a is not τ-b


def test_rsa_kendall_on_an_rdm_with_ties_is_tau_a():
    x = np.array([[0.0, 0], [1, 0], [0, 1], [1, 1], [2, 0]])  # many equal distances
    y = np.array([[0.0, 0], [1, 0], [0, 2], [1, 1], [2, 1]])
    u, v = sd.pdist(x), sd.pdist(y)
    pairs = itertools.combinations(range(len(u)), 2)
    s = sum(np.sign(u[i] - u[j]) * np.sign(v[i] - v[j]) for i, j in pairs)
    assert abs(repsim.rsa(x, y, compare="kendall") - s / (len(u) * (len(u) - 1) / 2)) < 1e-12


def test_centred_squared_euclidean_rsa_is_linear_cka_but_pearson_rsa_is_not(rng):
    x, y = _pair(rng, n=30)
    dx, dy = sd.squareform(sd.pdist(x, "sqeuclidean")), sd.squareform(sd.pdist(y, "sqeuclidean"))
    cx, cy = repsim.centre_gram(dx), repsim.centre_gram(dy)
    cos = np.sum(cx * cy) / np.sqrt(np.sum(cx * cx) * np.sum(cy * cy))
    assert abs(cos - repsim.cka(x, y)) < 1e-9
    ux, uy = repsim.ucentre_gram(dx), repsim.ucentre_gram(dy)
    cos_u = np.sum(ux * uy) / np.sqrt(np.sum(ux * ux) * np.sum(uy * uy))
    assert abs(cos_u - repsim.cka(x, y, estimator="unbiased")) < 1e-9
    assert abs(repsim.rsa(x, y, "sqeuclidean") - repsim.cka(x, y)) > 1e-3


def test_numpy_and_torch_agree(rng):
    torch = pytest.importorskip("torch")
    x, y = _pair(rng, n=20)
    tx, ty = torch.tensor(x), torch.tensor(y)
    for est in ("unbiased", "biased"):
        assert abs(float(repsim.dcor(tx, ty, est)) - repsim.dcor(x, y, est)) < 1e-12
    for rdm in _allowed("rdm"):
        for cmp in _allowed("compare"):
            t = repsim.rsa(tx, ty, rdm, cmp)
            assert isinstance(t, torch.Tensor)
            assert abs(float(t) - repsim.rsa(x, y, rdm, cmp)) < 1e-12


def test_bad_input(rng):
    x = rng.standard_normal((10, 3))
    with pytest.raises(ValueError, match="rdm must be one of"):
        repsim.rsa(x, x, rdm="cosine")
    with pytest.raises(ValueError, match="compare must be one of"):
        repsim.rsa(x, x, compare="tau")
    with pytest.raises(ValueError, match=r"needs at least 4 examples; got n=3"):
        repsim.dcor(x[:3], x[:3])
    z = x.copy()
    z[6] = 2.0
    with pytest.raises(ValueError, match=r"undefined for y: example 6 is constant across its features \(shape \(10, 3\)\)"):
        repsim.rsa(x, z, "correlation")
    with pytest.raises(ValueError, match="needs at least 2 features"):
        repsim.rsa(x, x[:, :1], "correlation")
    with pytest.warns(repsim.DegenerateRepresentationWarning, match="'x'"):
        assert np.isnan(repsim.dcor(np.ones((10, 2)), x))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(6, 25))
def test_ranges_and_invariances(seed, n):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((n, 3)), rng.standard_normal((n, 2))
    q = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    assert -1e-12 <= repsim.dcor(x, y, "biased") <= 1 + 1e-12
    assert repsim.dcor(x, y) <= 1 + 1e-12
    assert abs(repsim.dcor(x @ q * 4 - 2, y) - repsim.dcor(x, y)) < 1e-9
    for cmp in _allowed("compare"):
        assert -1 - 1e-12 <= repsim.rsa(x, y, compare=cmp) <= 1 + 1e-12


# ---------------------------------------------------------------- exact ties
def _expanded_reference(x, rdm, copies):
    """scipy's RDM of the distinct rows, with every example repeated ``copies`` times:
    distances between copies exactly 0 and every tie exact."""
    d = sd.squareform(sd.pdist(x, rdm))
    np.fill_diagonal(d, 0.0)
    idx = np.repeat(np.arange(len(x)), copies)
    return d[np.ix_(idx, idx)][np.triu_indices(len(idx), 1)]


def _tau_a_by_pairs(u, v):
    su = np.sign(u[:, None] - u[None, :])
    sv = np.sign(v[:, None] - v[None, :])
    return float(np.sum(np.triu(su * sv, 1))) / (len(u) * (len(u) - 1) / 2)


@pytest.mark.parametrize("rdm", RDMS)
def test_duplicated_examples_keep_exact_ties(rng, rdm):
    # before: rdm="correlation" put copies at ±2.2e-16 and gave τ-a 0.2103407 for 0.2103215
    x, y = _pair(rng, n=20)
    xd, yd = np.repeat(x, 2, axis=0), np.repeat(y, 2, axis=0)
    d = R.distance_matrix(xd, rdm)
    assert np.all(d[np.arange(0, 40, 2), np.arange(1, 40, 2)] == 0.0)
    assert np.array_equal(d[0], d[1][[1, 0] + list(range(2, 40))])  # copies: identical rows
    u, v = _expanded_reference(x, rdm, 2), _expanded_reference(y, rdm, 2)
    ref = _tau_a_by_pairs(u, v)
    m = len(u)
    n0 = m * (m - 1) / 2
    ties_u, ties_v = (sum(c * (c - 1) / 2 for c in np.unique(w, return_counts=True)[1]) for w in (u, v))
    via_scipy = ss.kendalltau(u, v).statistic * np.sqrt((n0 - ties_u) * (n0 - ties_v)) / n0
    assert abs(ref - via_scipy) < 1e-12
    assert abs(float(repsim.rsa(xd, yd, rdm, "kendall")) - ref) < 1e-12
    assert abs(float(repsim.rsa(xd, yd, rdm, "spearman")) - ss.spearmanr(u, v).statistic) < 1e-12
    assert abs(float(repsim.rsa(xd, yd, rdm, "pearson")) - ss.pearsonr(u, v).statistic) < 1e-12


def test_rank_helpers_are_scipys():
    rng = np.random.default_rng(3)
    for _ in range(5):
        a = rng.integers(0, 5, 200).astype(float)
        b = rng.integers(0, 4, 200).astype(float) + rng.integers(0, 2, 200) * 0.5
        assert np.array_equal(R.average_ranks(a), ss.rankdata(a))
        assert abs(R.kendall_tau_a(a, b) - _tau_a_by_pairs(a, b)) < 1e-12
    assert R.kendall_tau_a(np.ones(5), np.arange(5.0)) == 0.0  # no untied pair


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(4, 12), st.integers(2, 3),
       st.sampled_from(RDMS), st.sampled_from(COMPARES))
def test_property_duplicates_match_the_exact_tie_reference(seed, n, copies, rdm, compare):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((n, 3)), rng.standard_normal((n, 4))
    xd, yd = np.repeat(x, copies, axis=0), np.repeat(y, copies, axis=0)
    perm = rng.permutation(n * copies)  # copies anywhere in the order
    u = _expanded_reference(x, rdm, copies)
    v = _expanded_reference(y, rdm, copies)
    ref = {"pearson": lambda: ss.pearsonr(u, v).statistic,
           "spearman": lambda: ss.spearmanr(u, v).statistic,
           "kendall": lambda: _tau_a_by_pairs(u, v)}[compare]()
    # the permutation reorders the RDM entries; every measure is order-free over pairs
    assert abs(float(repsim.rsa(xd[perm], yd[perm], rdm, compare)) - ref) < 1e-12


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(4, 15), st.floats(-1e4, 1e4), st.integers(1, 3),
       st.sampled_from(COMPARES))
def test_property_constant_columns(seed, n, value, extra, compare):
    """Constant columns leave Euclidean RDMs exactly as they are (zero differences); a
    layer made only of them is NaN with a warning naming it."""
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((n, 3)), rng.standard_normal((n, 2))
    xc = np.hstack([x, np.full((n, extra), value)])
    for rdm in ("euclidean", "sqeuclidean"):
        assert float(repsim.rsa(xc, y, rdm, compare)) == float(repsim.rsa(x, y, rdm, compare))
        with pytest.warns(repsim.DegenerateRepresentationWarning, match="'y'"):
            assert np.isnan(float(repsim.rsa(x, np.full((n, extra), value), rdm, compare)))


def test_duplicates_torch_equals_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = np.repeat(rng.standard_normal((12, 4)), 2, axis=0)
    y = np.repeat(rng.standard_normal((12, 3)), 2, axis=0)
    for rdm in RDMS:
        d = R.distance_matrix(torch.tensor(x), rdm)
        assert isinstance(d, torch.Tensor) and bool((d[0, 1] == 0) & (d[0, 2:] == d[1, 2:]).all())
        for cmp in COMPARES:
            t = repsim.rsa(torch.tensor(x), torch.tensor(y), rdm, cmp)
            assert abs(float(t) - float(repsim.rsa(x, y, rdm, cmp))) < 1e-12


def test_dcor_matrix_forms_each_layers_distances_once(rng, monkeypatch):
    """similarity_matrix(measure="dcor") prepares every layer's centred distance matrix once
    (it had recomputed both sides for every pair) and equals the dcor package per pair; a
    constant layer is NaN with a warning naming it."""
    x, y = _pair(rng)
    layers = {"x": x, "y": y, "z": np.sin(x), "c": np.ones((len(x), 3))}
    calls = []
    real = R._centred_distances
    monkeypatch.setattr(R, "_centred_distances", lambda *a: calls.append(a[2]) or real(*a))
    with pytest.warns(repsim.DegenerateRepresentationWarning, match=r"dcor is undefined .*layers_a\['c'\]"):
        sim = repsim.similarity_matrix(layers, measure="dcor", progress=False)
    assert sorted(calls) == sorted(f"layers_a[{k!r}]" for k in layers)
    for estimator, ref in (("unbiased", dcor_pkg.u_distance_correlation_sqr),
                           ("biased", dcor_pkg.distance_correlation_sqr)):
        sim = repsim.similarity_matrix({k: layers[k] for k in "xyz"}, measure="dcor",
                                       estimator=estimator, progress=False)
        for a, b in itertools.product("xyz", repeat=2):
            assert abs(float(sim.sel(layer_a=a, layer_b=b)) - ref(layers[a], layers[b])) < 1e-9
            assert float(sim.sel(layer_a=a, layer_b=b)) == float(
                repsim.dcor(layers[a], layers[b], estimator))
    assert np.isnan(sim.values).sum() == 0
