"""CCA, SVCCA and PWCCA: reference values, an independent covariance formula, invariances,
rank deficiency, too few examples, numpy/torch agreement and bad inputs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import repsim
from repsim._validation import DegenerateRepresentationWarning, UnderdeterminedCCAWarning

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _pair(seed=0, n=120, p=7, q=5, shared=3, noise=1.0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, shared))
    x = z @ rng.standard_normal((shared, p)) + noise * rng.standard_normal((n, p))
    y = z @ rng.standard_normal((shared, q)) + noise * rng.standard_normal((n, q))
    return x + 3.0, y - 1.0  # non-zero means: centring matters


def _cov_formula(x, y, centre=True):
    """Canonical correlations from the textbook eigenproblem: rho^2 are the eigenvalues of
    Sxx^-1 Sxy Syy^-1 Syx (full-rank x, y with n > p + q)."""
    if centre:
        x = x - x.mean(0)
        y = y - y.mean(0)
    sxx, syy, sxy = x.T @ x, y.T @ y, x.T @ y
    m = np.linalg.solve(sxx, sxy) @ np.linalg.solve(syy, sxy.T)
    ev = np.sort(np.linalg.eigvals(m).real)[::-1][: min(x.shape[1], y.shape[1])]
    return np.sqrt(np.clip(ev, 0, None))


# --------------------------------------------------------------------------- reference


def test_reference_value_of_kornblith_demo():
    # Kornblith et al.'s public demo: legacy seed 1337, X = randn(100, 10), Y = X + randn
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = x + np.random.randn(100, 10)
    assert round(float(repsim.cca(x, y, summary="mean_squared", centre=False)), 5) == 0.54312
    assert round(float(repsim.cca(x, y, summary="mean_squared")), 5) == 0.54540
    # the demo's own formula: QR of the uncentred data
    qx, _ = np.linalg.qr(x)
    qy, _ = np.linalg.qr(y)
    demo = np.linalg.norm(qx.T @ qy) ** 2 / 10
    assert repsim.cca(x, y, summary="mean_squared", centre=False) == pytest.approx(demo, abs=1e-12)


@pytest.mark.parametrize("centre", [True, False])
@pytest.mark.parametrize("shape", [(60, 4, 4), (200, 9, 3), (50, 1, 6), (500, 20, 15)])
def test_canonical_correlations_match_covariance_eigenproblem(shape, centre):
    n, p, q = shape
    x, y = _pair(seed=n + p, n=n, p=p, q=q, shared=min(p, q))
    rho = repsim.canonical_correlations(x, y, centre=centre)
    assert isinstance(rho, np.ndarray) and rho.dtype == np.float64
    assert rho.shape == (min(p, q),)
    np.testing.assert_allclose(rho, _cov_formula(x, y, centre), atol=1e-8)
    assert np.all(np.diff(rho) <= 0)


def test_summaries_are_means_of_the_correlations():
    x, y = _pair()
    rho = repsim.canonical_correlations(x, y)
    assert repsim.cca(x, y) == pytest.approx(rho.mean(), abs=1e-14)
    assert repsim.cca(x, y, summary="mean_squared") == pytest.approx((rho ** 2).mean(), abs=1e-14)
    assert isinstance(repsim.cca(x, y), np.float64)


# --------------------------------------------------------------------------- invariances


def test_invariant_to_invertible_linear_maps_and_offsets():
    rng = np.random.default_rng(3)
    x, y = _pair(seed=3, n=150, p=6, q=8)
    a = rng.standard_normal((6, 6)) + 3 * np.eye(6)
    b = rng.standard_normal((8, 8)) + 3 * np.eye(8)
    rho = repsim.canonical_correlations(x, y)
    mapped = repsim.canonical_correlations(x @ a + rng.standard_normal(6), 1e3 * (y @ b) - 7.0)
    np.testing.assert_allclose(mapped, rho, atol=1e-9)
    assert repsim.cca(x @ a, y @ b) == pytest.approx(repsim.cca(x, y), abs=1e-10)
    assert repsim.svcca(x @ np.linalg.qr(a)[0], y, keep=1.0) == pytest.approx(
        repsim.svcca(x, y, keep=1.0), abs=1e-10)  # SVCCA: invariant to rotations and scale


def test_symmetric_in_x_and_y():
    x, y = _pair(seed=4)
    assert repsim.cca(x, y) == pytest.approx(repsim.cca(y, x), abs=1e-12)
    assert repsim.svcca(x, y) == pytest.approx(repsim.svcca(y, x), abs=1e-12)
    assert repsim.pwcca(x, y, side="y") == pytest.approx(repsim.pwcca(y, x, side="x"), abs=1e-12)


def test_identical_inputs_give_one():
    x, _ = _pair(seed=5, n=200, p=12)
    for f in (repsim.cca, repsim.svcca, repsim.pwcca):
        assert float(f(x, x)) == pytest.approx(1.0, abs=1e-10)
        assert float(f(x, x)) <= 1.0
    assert float(repsim.svcca(x, x, keep=3)) == pytest.approx(1.0, abs=1e-10)


def test_conv_maps_are_flattened():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((80, 2, 2, 2))
    y = rng.standard_normal((80, 3, 2))
    assert repsim.cca(x, y) == repsim.cca(x.reshape(80, -1), y.reshape(80, -1))


# --------------------------------------------------------------------------- SVCCA


def test_svcca_with_a_count_is_cca_of_the_top_singular_directions():
    x, y = _pair(seed=7, n=300, p=10, q=8)
    expected = []
    for keep_x, keep_y in [(3, 3), (5, 2), (10, 8)]:
        xc, yc = x - x.mean(0), y - y.mean(0)
        ux, sx, _ = np.linalg.svd(xc, full_matrices=False)
        uy, sy, _ = np.linalg.svd(yc, full_matrices=False)
        xr, yr = ux[:, :keep_x] * sx[:keep_x], uy[:, :keep_y] * sy[:keep_y]
        expected = _cov_formula(xr, yr).mean()
        assert repsim.svcca(x, y, keep=(keep_x, keep_y)) == pytest.approx(expected, abs=1e-9)
    assert repsim.svcca(x, y, keep=4) == pytest.approx(repsim.svcca(x, y, keep=(4, 4)))


def test_svcca_variance_fraction_picks_the_fewest_directions():
    rng = np.random.default_rng(8)
    n = 2000
    # variances 100, 10, 1, 0.01 (shares 0.9009, 0.0901, 0.0090, 0.0001)
    x = rng.standard_normal((n, 4)) * np.sqrt([100.0, 10.0, 1.0, 0.01])
    x = np.linalg.qr(x - x.mean(0))[0] * np.sqrt([100.0, 10.0, 1.0, 0.01]) * np.sqrt(n)
    y = x + 0.1 * rng.standard_normal((n, 4))
    # keep=0.95 -> 2 directions of x; keep=0.999 -> 3; keep=1.0 -> all 4
    ux = np.linalg.svd(x - x.mean(0), full_matrices=False)[0]
    uy = np.linalg.svd(y - y.mean(0), full_matrices=False)[0]
    for keep, k in [(0.5, 1), (0.95, 2), (0.999, 3), (1.0, 4)]:
        ref = np.linalg.svd(ux[:, :k].T @ uy[:, :k], compute_uv=False).mean()
        assert repsim.svcca(x, y, keep=keep) == pytest.approx(ref, abs=1e-9), keep


@pytest.mark.parametrize("keep", [0, -1, 0.0, 1.5, float("nan"), True, "all", (1, 2, 3), None])
def test_svcca_rejects_bad_keep(keep):
    x, y = _pair()
    with pytest.raises(ValueError, match="keep"):
        repsim.svcca(x, y, keep=keep)


def test_svcca_keep_count_is_capped_by_each_sides_rank():
    x, y = _pair(n=50, p=7, q=5)
    full = repsim.svcca(x, y, keep=1.0)
    assert repsim.svcca(x, y, keep=100) == pytest.approx(full, abs=1e-12)
    assert repsim.svcca(x, y, keep=(100, 5)) == pytest.approx(full, abs=1e-12)
    # duplicated columns: rank 7 of 14 features; keep=10 keeps the 7 real directions
    x2 = np.c_[x, x]
    assert repsim.svcca(x2, y, keep=10) == pytest.approx(repsim.svcca(x, y, keep=7), abs=1e-10)
    with pytest.raises(ValueError, match=r"keep\[1\]"):
        repsim.svcca(x, y, keep=(2, 0))


# --------------------------------------------------------------------------- PWCCA


def _pwcca_reference(x, y):
    """Morcos et al. (2018) from the covariance form: canonical weights Sxx^-1/2 A, the
    x-side canonical variates h_i (unit norm), alpha_i = sum_j |<h_i, x_j>|."""
    xc, yc = x - x.mean(0), y - y.mean(0)

    def inv_sqrt(s):
        w, v = np.linalg.eigh(s)
        return v @ np.diag(w ** -0.5) @ v.T

    sxx_h, syy_h = inv_sqrt(xc.T @ xc), inv_sqrt(yc.T @ yc)
    a, rho, _ = np.linalg.svd(sxx_h @ xc.T @ yc @ syy_h, full_matrices=False)
    m = min(x.shape[1], y.shape[1])
    h = xc @ sxx_h @ a[:, :m]
    h /= np.linalg.norm(h, axis=0)
    alpha = np.abs(h.T @ xc).sum(axis=1)
    alpha /= alpha.sum()
    return float(alpha @ rho[:m])


@pytest.mark.parametrize("shape", [(200, 5, 8), (300, 10, 4), (150, 6, 6)])
def test_pwcca_matches_the_covariance_form(shape):
    n, p, q = shape
    x, y = _pair(seed=p * q, n=n, p=p, q=q, shared=3)
    assert repsim.pwcca(x, y) == pytest.approx(_pwcca_reference(x, y), abs=1e-9)


def test_pwcca_sides():
    x, y = _pair(seed=9, n=200, p=9, q=4)
    assert repsim.pwcca(x, y, side="smaller") == repsim.pwcca(x, y, side="y")
    assert repsim.pwcca(y, x, side="smaller") == repsim.pwcca(y, x, side="x")
    assert repsim.pwcca(x, y, side="y") == pytest.approx(_pwcca_reference(y, x), abs=1e-9)


def test_pwcca_downweights_noise_directions():
    # a strong shared 3-d signal plus 20 weak independent noise neurons per side: plain mean
    # CCA counts the 20 noise correlations fully, PWCCA by their small share of the neurons
    rng = np.random.default_rng(10)
    n = 1000
    z = rng.standard_normal((n, 3))
    x = np.c_[z @ rng.standard_normal((3, 5)) * 10, 0.1 * rng.standard_normal((n, 20))]
    y = np.c_[z @ rng.standard_normal((3, 5)) * 10, 0.1 * rng.standard_normal((n, 20))]
    assert repsim.pwcca(x, y) > 0.9 > repsim.cca(x, y)


# --------------------------------------------------------------------------- rank, n, degenerate


def test_rank_deficient_inputs_are_reduced_to_their_rank():
    x, y = _pair(seed=11, n=100, p=5, q=4)
    x_dup = np.c_[x, x[:, :2] * 2.0, x[:, 0] - x[:, 1], np.ones(100)]  # 9 features, rank 5
    rho = repsim.canonical_correlations(x_dup, y)
    assert rho.shape == (4,)
    np.testing.assert_allclose(rho, repsim.canonical_correlations(x, y), atol=1e-9)
    assert repsim.cca(x_dup, y) == pytest.approx(repsim.cca(x, y), abs=1e-9)
    assert repsim.svcca(x_dup, y, keep=1.0) == pytest.approx(repsim.svcca(x, y, keep=1.0), abs=1e-9)
    # PWCCA weighs by the neurons, so duplicated neurons change the weights -- but the
    # result stays a weighted mean of the same 4 correlations
    assert rho.min() <= repsim.pwcca(x_dup, y) <= rho.max()


def test_float32_rank_uses_float32_precision():
    rng = np.random.default_rng(12)
    low64 = rng.standard_normal((300, 3)) @ rng.standard_normal((3, 40))
    low = low64.astype(np.float32)
    y = rng.standard_normal((300, 10))
    # rank 3 in exact arithmetic; float32 rounding must not add 37 noise directions --
    # and dropping directions that float64 resolves is said, not silent (issue 11)
    with pytest.warns(RuntimeWarning, match=r"x: 37 direction\(s\).*float32.*rtol"):
        assert repsim.canonical_correlations(low, y).shape == (3,)
    assert repsim.canonical_correlations(low64, y).shape == (3,)
    # the same rounded values declared float64 are taken at face value: full rank
    assert repsim.canonical_correlations(low.astype(np.float64), y).shape == (10,)
    # an explicit rtol=0 counts every non-zero singular value
    assert repsim.canonical_correlations(low, y, rtol=0.0).shape[0] > 3


def test_too_few_examples_warns_and_stays_in_range():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((30, 40))   # n <= features
    y = rng.standard_normal((30, 5))
    with pytest.warns(UnderdeterminedCCAWarning, match=r"at least 5 canonical correlation"):
        rho = repsim.canonical_correlations(x, y)
    np.testing.assert_allclose(rho, 1.0, atol=1e-10)
    assert np.all(rho <= 1.0)
    for f in (repsim.cca, repsim.pwcca):
        with pytest.warns(UnderdeterminedCCAWarning):
            v = float(f(x, y))
        assert 0 <= v <= 1 and not np.isnan(v)
    with pytest.warns(UnderdeterminedCCAWarning):
        repsim.svcca(x, y, keep=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        repsim.svcca(x, y, keep=(10, 5))  # 15 directions in 29 dimensions: fine
    # uncentred: the space has n dimensions
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        repsim.cca(rng.standard_normal((10, 5)), rng.standard_normal((10, 5)), centre=False)
    with pytest.warns(UnderdeterminedCCAWarning):
        repsim.cca(rng.standard_normal((10, 5)), rng.standard_normal((10, 5)))


def test_warning_points_at_the_caller():
    rng = np.random.default_rng(14)
    with pytest.warns(UnderdeterminedCCAWarning) as record:
        repsim.cca(rng.standard_normal((5, 5)), rng.standard_normal((5, 5)))
    assert record[0].filename == __file__


def test_constant_representation_gives_nan_with_warning():
    x, y = _pair()
    const = np.full((x.shape[0], 3), 2.5)
    for f in (repsim.cca, repsim.svcca, repsim.pwcca):
        with pytest.warns(DegenerateRepresentationWarning, match="'x'"):
            assert np.isnan(f(const, y))
        with pytest.warns(DegenerateRepresentationWarning, match="'y'"):
            assert np.isnan(f(x, const))
    with pytest.warns(DegenerateRepresentationWarning):
        assert repsim.canonical_correlations(const, y).shape == (0,)
    # a large constant offset is still constant (centring rounding is not a direction)
    with pytest.warns(DegenerateRepresentationWarning):
        repsim.cca(np.full((50, 2), 1e8) + 0.0, y[:50])


# --------------------------------------------------------------------------- properties


@st.composite
def _pairs(draw):
    n = draw(st.integers(3, 40))
    p = draw(st.integers(1, 12))
    q = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p)) * draw(st.sampled_from([1e-3, 1.0, 1e4]))
    y = rng.standard_normal((n, q))
    if draw(st.booleans()):  # shared structure
        k = min(p, q)
        y[:, :k] += x[:, :k] @ rng.standard_normal((k, k))
    if draw(st.booleans()) and p > 1:  # rank deficiency: a duplicated column
        x[:, -1] = x[:, 0]
    if draw(st.booleans()):  # large means
        x = x + 1e3 * rng.standard_normal(p)
    return x, y


@SETTINGS
@given(_pairs(), st.booleans())
def test_property_results_in_unit_interval(pair, centre):
    x, y = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnderdeterminedCCAWarning)
        rho = repsim.canonical_correlations(x, y, centre=centre)
        values = [repsim.cca(x, y, centre=centre),
                  repsim.cca(x, y, summary="mean_squared", centre=centre),
                  repsim.svcca(x, y), repsim.svcca(x, y, keep=1),
                  repsim.pwcca(x, y, centre=centre)]
    assert rho.shape[0] <= min(x.shape[1], y.shape[1])
    assert np.all((rho >= 0) & (rho <= 1))
    assert np.all(np.diff(rho) <= 1e-12)
    for v in values:
        assert 0.0 <= float(v) <= 1.0


@SETTINGS
@given(_pairs())
def test_property_identical_inputs(pair):
    x, _ = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnderdeterminedCCAWarning)
        for f in (repsim.cca, repsim.svcca, repsim.pwcca):
            assert float(f(x, x)) == pytest.approx(1.0, abs=1e-8)


# --------------------------------------------------------------------------- torch


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_torch_agreement(dtype):
    torch = pytest.importorskip("torch")
    x, y = _pair(seed=15, n=150, p=8, q=6)
    x, y = x.astype(dtype), y.astype(dtype)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    rho_t = repsim.canonical_correlations(tx, ty)
    assert isinstance(rho_t, torch.Tensor) and rho_t.dtype == torch.float64
    np.testing.assert_allclose(rho_t.numpy(), repsim.canonical_correlations(x, y), atol=1e-12)
    for f, kw in [(repsim.cca, {}), (repsim.cca, {"summary": "mean_squared", "centre": False}),
                  (repsim.svcca, {}), (repsim.svcca, {"keep": 3}), (repsim.pwcca, {})]:
        vt = f(tx, ty, **kw)
        assert isinstance(vt, torch.Tensor) and vt.ndim == 0 and vt.dtype == torch.float64
        assert float(vt) == pytest.approx(float(f(x, y, **kw)), abs=1e-12)


def test_torch_float32_matches_float64_closely():
    torch = pytest.importorskip("torch")
    x, y = _pair(seed=16, n=150, p=8, q=6)
    v32 = repsim.pwcca(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32)))
    assert float(v32) == pytest.approx(float(repsim.pwcca(x, y)), abs=1e-5)


# --------------------------------------------------------------------------- bad input


def test_bad_inputs():
    x, y = _pair()
    with pytest.raises(ValueError, match="same number of examples"):
        repsim.cca(x, y[:-1])
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        repsim.cca(x[:, 0], y)
    bad = x.copy()
    bad[3, 1] = np.nan
    for f in (repsim.cca, repsim.svcca, repsim.pwcca, repsim.canonical_correlations):
        with pytest.raises(ValueError, match="x contains NaN or Inf"):
            f(bad, y)
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="y contains NaN or Inf"):
        repsim.cca(x, bad)
    with pytest.raises(ValueError, match="summary"):
        repsim.cca(x, y, summary="median")
    with pytest.raises(ValueError, match="side"):
        repsim.pwcca(x, y, side="z")
    with pytest.raises(ValueError, match="centre"):
        repsim.cca(x, y, centre="yes")
    for rtol in (-1, 1.0, float("nan"), "1e-6"):
        with pytest.raises(ValueError, match="rtol"):
            repsim.cca(x, y, rtol=rtol)
    with pytest.raises(ValueError, match="at least 2 examples"):
        repsim.cca(x[:1], y[:1])
    with pytest.raises(ValueError, match="no features"):
        repsim.cca(x[:, :0], y)


def test_mixed_libraries_are_refused():
    torch = pytest.importorskip("torch")
    x, y = _pair()
    with pytest.raises(TypeError, match="one library"):
        repsim.cca(x, torch.from_numpy(y))


def test_docstring_examples_run():
    import doctest

    import repsim.cca_family as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------- hostile input (issue 11)


def _f32_pair(x, y):
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    return x32, y32, x32.astype(np.float64), y32.astype(np.float64)


@pytest.mark.parametrize("offset", [1e2, 1e4, 1e5])
def test_offsets_do_not_drop_directions(offset):
    # before: at a 1e4 offset the rank tolerance (scaled by the uncentred norm) kept 2 of
    # 10 canonical correlations and the mean was off by 0.14; pc_variance_fraction was NaN
    x, y = _pair(seed=21, n=300, p=10, q=12, shared=6)
    x32, y32, x64, y64 = _f32_pair(x + offset, y + offset)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rho = repsim.canonical_correlations(x32, y32)
        assert rho.shape == (10,)
        np.testing.assert_allclose(rho, repsim.canonical_correlations(x64, y64), atol=1e-9)
        assert repsim.cca(x32, y32) == pytest.approx(repsim.cca(x64, y64), abs=1e-9)
        assert repsim.svcca(x32, y32) == pytest.approx(repsim.svcca(x64, y64), abs=1e-9)
        assert repsim.pwcca(x32, y32) == pytest.approx(repsim.pwcca(x64, y64), abs=1e-9)
        assert repsim.pc_variance_fraction(x32, k=2) == pytest.approx(
            repsim.pc_variance_fraction(x64, k=2), abs=1e-9)


def test_column_scales_do_not_drop_directions():
    # before: columns scaled 1e-3 ... 1e3 kept 7 of 8 correlations (mean off by 0.063)
    rng = np.random.default_rng(22)
    scales = np.logspace(-3, 3, 8)
    z = rng.standard_normal((400, 8))
    x = z * scales
    y = np.tanh(z) + 0.3 * rng.standard_normal((400, 8))
    x32, y32, x64, y64 = _f32_pair(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rho = repsim.canonical_correlations(x32, y32)
    assert rho.shape == (8,)
    np.testing.assert_allclose(rho, _cov_formula(x64, y64), atol=1e-8)
    assert repsim.cca(x32, y32) == pytest.approx(repsim.cca(z.astype(np.float32), y32), abs=1e-6)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(offset=st.sampled_from([0.0, 1.0, 1e3, 1e4]), log_scale=st.integers(-15, 15),
       seed=st.integers(0, 2**16), dtype=st.sampled_from(["f4", "f8", ">f8"]))
def test_cca_property_offsets_scales_dtypes(offset, log_scale, seed, dtype):
    x, y = _pair(seed=seed, n=200, p=6, q=5, shared=3)
    scale = 10.0 ** log_scale
    xs, ys = ((x + offset) * scale).astype(dtype), ((y + offset) * scale).astype(dtype)
    x64, y64 = xs.astype(np.float64), ys.astype(np.float64)
    ref = _cov_formula(x64, y64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rho = repsim.canonical_correlations(xs, ys)
        assert rho.shape == (5,)
        np.testing.assert_allclose(rho, ref, atol=1e-7)
        assert repsim.pwcca(xs, ys) == pytest.approx(repsim.pwcca(x64, y64), abs=1e-9)


def test_constant_side_still_detected_at_large_offsets():
    _, y = _pair(seed=23)
    for value in (0.0, 1e4, 3.3e7, 1e15):
        with pytest.warns(DegenerateRepresentationWarning, match="'x'"):
            assert np.isnan(float(repsim.cca(np.full((120, 3), value), y)))
        with pytest.warns(DegenerateRepresentationWarning):
            assert np.isnan(float(repsim.pc_variance_fraction(np.full((120, 3), value))))


# --------------------------------------------------------------------------- conventions


def _google_pwcca_reference(acts1, acts2):
    """google/svcca's ``compute_pwcca`` (pwcca.py with cca_core.get_cca_similarity,
    epsilon=0), written out in float64 for the smaller side ``acts1`` (neurons, n)."""
    numx = acts1.shape[0]
    cov = np.cov(acts1, acts2)
    sxx, sxy, syy = cov[:numx, :numx], cov[:numx, numx:], cov[numx:, numx:]
    xmax, ymax = np.max(np.abs(sxx)), np.max(np.abs(syy))
    sxx, syy, sxy = sxx / xmax, syy / ymax, sxy / np.sqrt(xmax * ymax)

    def sqrtm(a):
        w, v = np.linalg.eigh(a)
        return v @ np.diag(np.sqrt(w)) @ v.T

    arr = sqrtm(np.linalg.pinv(sxx)) @ (sxy @ sqrtm(np.linalg.pinv(syy)))
    u, s, _ = np.linalg.svd(arr)
    means = acts1.mean(axis=1, keepdims=True)
    dirns = u.T @ (acts1 - means) + means  # no invsqrt_xx; means added back
    p_, _ = np.linalg.qr(dirns.T)
    weights = np.abs(p_.T @ acts1.T).sum(axis=1)  # against the uncentred activations
    weights /= weights.sum()
    return float(np.sum(weights * np.abs(s)))


@pytest.mark.parametrize("shape", [(300, 6, 9), (500, 10, 10), (200, 4, 12)])
def test_pwcca_svcca_convention_reproduces_the_reference_code(shape):
    n, p, q = shape
    x, y = _pair(seed=p + q, n=n, p=p, q=q, shared=3)
    ref = _google_pwcca_reference(x.T, y.T)
    assert repsim.pwcca(x, y, convention="svcca") == pytest.approx(ref, abs=1e-10)
    if p < q:  # the smaller side is found from either order
        assert repsim.pwcca(y, x, side="smaller", convention="svcca") == pytest.approx(ref, abs=1e-10)
    # ... and it is a different number from Morcos et al.'s definition
    assert abs(float(repsim.pwcca(x, y)) - ref) > 1e-3
    if p < q:
        with pytest.raises(ValueError, match="side='smaller'"):
            repsim.pwcca(y, x, convention="svcca")


def test_pwcca_svcca_convention_bad_input():
    x, y = _pair(seed=1, n=8, p=10, q=12)
    with pytest.raises(ValueError, match="more examples than features"):
        repsim.pwcca(x, y, convention="svcca")
    with pytest.raises(ValueError, match="convention must be one of 'morcos', 'svcca'"):
        repsim.pwcca(x, y, convention="google")


def test_pwcca_not_invariant_to_rotating_the_weighting_side():
    # docs/user_guide/choosing.rst states this measurement
    rng = np.random.default_rng(0)
    n = 500
    z = rng.standard_normal((n, 10))
    x = z @ rng.standard_normal((10, 10))
    y = np.tanh(z[:, :8] @ rng.standard_normal((8, 10))) + 0.5 * rng.standard_normal((n, 10))
    q = np.linalg.qr(rng.standard_normal((10, 10)))[0]
    base = float(repsim.pwcca(x, y))
    assert abs(float(repsim.pwcca(x @ q, y)) - base) == pytest.approx(5.8e-3, abs=5e-4)
    assert float(repsim.pwcca(x, y @ q)) == pytest.approx(base, abs=1e-12)  # other side: invariant
    assert float(repsim.pwcca(x, y @ rng.standard_normal((10, 10)))) == pytest.approx(base, abs=1e-9)


def test_svcca_keep_by_singular_values():
    rng = np.random.default_rng(24)
    x = rng.standard_normal((400, 6)) * [8.0, 4.0, 2.0, 1.0, 0.5, 0.25]
    y = x @ rng.standard_normal((6, 6)) + 0.5 * rng.standard_normal((400, 6))
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    share_sv = np.cumsum(s) / s.sum()
    share_var = np.cumsum(s ** 2) / np.sum(s ** 2)
    keep = 0.95
    k_sv = int(np.sum(share_sv < keep)) + 1
    k_var = int(np.sum(share_var < keep)) + 1
    assert k_sv > k_var  # counting singular values keeps more directions
    for keep_by, k in (("variance", k_var), ("singular_values", k_sv)):
        expected = repsim.svcca(x, y, keep=(k, 6))
        assert repsim.svcca(x, y, keep=(keep, 1.0), keep_by=keep_by) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="keep_by must be one of"):
        repsim.svcca(x, y, keep_by="sv")
