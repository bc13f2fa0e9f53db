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
