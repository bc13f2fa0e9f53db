"""Shape metrics, NBS, ridge R² and GULP against their defining formulas (float64)."""

import warnings

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

import repsim
from repsim import _moment_formulas as M

TOL = 1e-9


def _centre(a):
    return a - a.mean(axis=0)


def _pad(a, width):
    return np.hstack([a, np.zeros((a.shape[0], width - a.shape[1]))])


def _procrustes_ref(x, y):
    """min over orthogonal Q of ||Xc Q - Yc||_F, by scipy's orthogonal Procrustes."""
    w = max(x.shape[1], y.shape[1])
    xc, yc = _pad(_centre(x), w), _pad(_centre(y), w)
    q, _ = scipy.linalg.orthogonal_procrustes(xc, yc)
    return xc, yc, q


def _data(rng, n=60, p=5, q=7, noise=1.0):
    x = rng.standard_normal((n, p)) * rng.uniform(0.5, 3, p) + 4.0
    y = x @ rng.standard_normal((p, q)) + noise * rng.standard_normal((n, q)) - 2.0
    return x, y


def test_procrustes_euclidean_and_angular_match_the_aligned_residual(rng):
    x, y = _data(rng)
    xc, yc, q = _procrustes_ref(x, y)
    euclid = np.linalg.norm(xc @ q - yc)
    angular = np.arccos(np.sum((xc @ q) * yc) / (np.linalg.norm(xc) * np.linalg.norm(yc)))
    assert abs(repsim.shape_distance(x, y, score="euclidean") - euclid) < TOL
    assert abs(repsim.shape_distance(x, y) - angular) < TOL


def test_nbs_is_the_bures_fidelity_of_the_centred_grams(rng):
    x, y = _data(rng, n=30)
    k, l = _centre(x) @ _centre(x).T, _centre(y) @ _centre(y).T

    def root(a):  # PSD square root; eigenvalues at rounding level (rank deficit) are zero
        w, v = np.linalg.eigh(a)
        w = np.where(w > 1e-10 * w.max(), w, 0.0)
        return (v * np.sqrt(w)) @ v.T

    kh = root(k)
    fid = np.trace(root(kh @ l @ kh))
    ref = fid / np.sqrt(np.trace(k) * np.trace(l))
    assert abs(repsim.nbs(x, y) - ref) < TOL
    assert abs(np.cos(repsim.shape_distance(x, y)) - repsim.nbs(x, y)) < TOL


def test_alpha_zero_is_the_cca_angle(rng):
    x, y = _data(rng, n=80, p=4, q=6)
    rho = repsim.canonical_correlations(x, y)
    ref = np.arccos(np.sum(rho) / np.sqrt(4 * 6))
    assert abs(repsim.shape_distance(x, y, alpha=0.0) - ref) < TOL


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.8])
def test_partial_whitening_matches_netreps_algorithm_written_out(rng, alpha):
    """netrep's LinearMetric: whiten with alpha + (1 - alpha) lambda^-1/2 on XcᵀXc,
    rescale to the original total variance, align by orthogonal Procrustes."""
    x, y = _data(rng, n=70, p=3, q=5)

    def whiten(a):
        ac = _centre(a)
        lam, v = np.linalg.eigh(ac.T @ ac)
        d = alpha + (1 - alpha) * lam ** -0.5
        new_var = np.sum(alpha ** 2 * lam + 2 * alpha * (1 - alpha) * lam ** 0.5 + (1 - alpha) ** 2)
        d *= np.sqrt(np.sum(lam) / new_var)
        return ac @ (v * d) @ v.T

    xa, ya = _pad(whiten(x), 5), whiten(y)
    u, _, vt = np.linalg.svd(xa.T @ ya)
    xt, yt = xa @ u, ya @ vt.T
    ang = np.arccos(np.sum(xt * yt) / (np.linalg.norm(xt) * np.linalg.norm(yt)))
    euc = np.linalg.norm(xt - yt)
    assert abs(repsim.shape_distance(x, y, alpha=alpha) - ang) < TOL
    assert abs(repsim.shape_distance(x, y, alpha=alpha, score="euclidean") - euc) < TOL


def test_procrustes_euclidean_is_the_bures_distance_of_the_centred_grams(rng):
    x, y = _data(rng, n=30)
    k, l = _centre(x) @ _centre(x).T, _centre(y) @ _centre(y).T
    nuc = np.linalg.svd(_centre(x).T @ _centre(y), compute_uv=False).sum()
    bures = np.sqrt(np.trace(k) + np.trace(l) - 2 * nuc)
    assert abs(repsim.shape_distance(x, y, score="euclidean") - bures) < TOL


def test_more_features_than_examples_takes_the_reduced_path_with_the_same_value(rng):
    x, y = _data(rng, n=12, p=30, q=25)
    xc, yc, q = _procrustes_ref(x, y)
    ref = np.arccos(np.sum((xc @ q) * yc) / (np.linalg.norm(xc) * np.linalg.norm(yc)))
    assert abs(repsim.shape_distance(x, y) - ref) < TOL
    m_direct = M.Moments(12, _centre(x).T @ _centre(x), _centre(y).T @ _centre(y),
                         _centre(x).T @ _centre(y))
    assert abs(M.nbs_from_moments(m_direct) - repsim.nbs(x, y)) < TOL
    assert abs(M.gulp_from_moments(m_direct, 0.1) - repsim.gulp(x, y, 0.1, squared=True)) < TOL


def test_gulp_matches_its_formula_and_reduces_to_cca_at_zero_ridge(rng):
    x, y = _data(rng, n=90, p=4, q=6)
    n, lam = 90, 0.25
    xc, yc = _centre(x), _centre(y)
    sx, sy, sxy = xc.T @ xc / n, yc.T @ yc / n, xc.T @ yc / n
    rx, ry = np.linalg.inv(sx + lam * np.eye(4)), np.linalg.inv(sy + lam * np.eye(6))
    d2 = (np.trace(rx @ sx @ rx @ sx) + np.trace(ry @ sy @ ry @ sy)
          - 2 * np.trace(rx @ sxy @ ry @ sxy.T))
    assert abs(repsim.gulp(x, y, lam, squared=True) - d2) < TOL
    assert abs(repsim.gulp(x, y, lam) - np.sqrt(d2)) < TOL
    rho = repsim.canonical_correlations(x, y)
    assert abs(repsim.gulp(x, y, 0.0, squared=True) - (4 + 6 - 2 * np.sum(rho ** 2))) < 1e-8


def test_ridge_r2_matches_scikit_learn_pooled_r2(rng):
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    x, y = _data(rng, n=80, p=6, q=4)
    for lam in (0.0, 0.3):
        fit = Ridge(alpha=80 * lam, solver="svd").fit(x, y)
        ref = r2_score(y, fit.predict(x), multioutput="variance_weighted")
        assert abs(repsim.ridge_r2(x, y, lam) - ref) < TOL
    fit = Ridge(alpha=0.0, solver="svd").fit(y, x)
    ref = r2_score(x, fit.predict(y), multioutput="variance_weighted")
    assert abs(repsim.ridge_r2(x, y, direction="y_to_x") - ref) < TOL
    both = (repsim.ridge_r2(x, y) + repsim.ridge_r2(y, x)) / 2
    assert abs(repsim.ridge_r2(x, y, direction="mean") - both) < TOL


def test_k_fold_r2_matches_a_loop_over_folds(rng):
    from sklearn.linear_model import Ridge

    x, y = _data(rng, n=53, p=5, q=3, noise=2.0)
    lam, folds = 0.1, 4
    res = tot = 0.0
    for idx in np.array_split(np.arange(53), folds):
        train = np.setdiff1d(np.arange(53), idx)
        fit = Ridge(alpha=len(train) * lam, solver="svd").fit(x[train], y[train])
        res += np.sum((y[idx] - fit.predict(x[idx])) ** 2)
        tot += np.sum((y[idx] - y[train].mean(axis=0)) ** 2)
    assert abs(repsim.ridge_r2(x, y, lam, folds=folds) - (1 - res / tot)) < TOL


def test_moments_summed_over_ragged_shifted_batches_give_the_full_data_values(rng):
    """What the coming accumulator does: sum raw moments of shifted batches, then call the
    same moments -> value functions as the full-data path."""
    x, y = _data(rng, n=103, p=5, q=7)
    x, y = x + 1e3, y - 1e3
    shift_x, shift_y = x[:8].mean(axis=0), y[:8].mean(axis=0)  # from the first batch
    total = None
    for a, b in [(0, 8), (8, 50), (50, 51), (51, 103)]:
        part = M.raw_sums(x[a:b] - shift_x, y[a:b] - shift_y, np)
        total = part if total is None else M.add_sums(total, part)
    m = M.moments_from_sums(total)
    pairs = [
        (M.nbs_from_moments(m), repsim.nbs(x, y)),
        (M.shape_distance_from_moments(m, 1.0, "angular"), repsim.shape_distance(x, y)),
        (M.shape_distance_from_moments(m, 0.3, "euclidean"), repsim.shape_distance(x, y, 0.3, "euclidean")),
        (M.r2_from_moments(m, 0.1), repsim.ridge_r2(x, y, 0.1)),
        (M.gulp_from_moments(m, 0.01), repsim.gulp(x, y, 0.01, squared=True)),
        (M.linear_cka_from_moments(m), repsim.cka(x, y)),
    ]
    for streamed, full in pairs:
        assert abs(streamed - full) <= 1e-9 * max(1.0, abs(full))


def test_numpy_and_torch_agree():
    torch = pytest.importorskip("torch")
    x, y = _data(np.random.default_rng(3), n=40, p=5, q=8)
    tx, ty = torch.tensor(x), torch.tensor(y)
    for fn, kw in [(repsim.shape_distance, {}), (repsim.shape_distance, {"alpha": 0.5}),
                   (repsim.shape_distance, {"score": "euclidean"}), (repsim.nbs, {}),
                   (repsim.ridge_r2, {"ridge": 0.1}), (repsim.ridge_r2, {"folds": 3}),
                   (repsim.gulp, {"ridge": 0.1})]:
        a, b = fn(x, y, **kw), fn(tx, ty, **kw)
        assert isinstance(b, torch.Tensor) and b.dtype == torch.float64
        assert abs(float(a) - float(b)) < TOL


def test_float32_and_offsets_are_accumulated_in_float64(rng):
    x, y = _data(rng, n=100, p=4, q=4)
    ref = repsim.nbs(x, y)
    assert abs(repsim.nbs(x + 1e6, y - 1e6) - ref) < 1e-6
    assert abs(repsim.nbs(x.astype(np.float32), y.astype(np.float32)) - ref) < 1e-6


def test_bad_input_is_refused_with_named_arguments(rng):
    x = rng.standard_normal((10, 3))
    with pytest.raises(ValueError, match=r"x and y must have the same number of examples"):
        repsim.nbs(x, x[:9])
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\]; got 1.5"):
        repsim.shape_distance(x, x, alpha=1.5)
    with pytest.raises(ValueError, match="score must be one of"):
        repsim.shape_distance(x, x, score="cosine")
    with pytest.raises(ValueError, match="ridge must be a finite number >= 0"):
        repsim.ridge_r2(x, x, -1.0)
    with pytest.raises(ValueError, match="folds must be an integer"):
        repsim.ridge_r2(x, x, folds=1)
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="y contains NaN or Inf"):
        repsim.gulp(x, bad)
    with pytest.raises(ValueError, match=r"x must have shape \(n, features\)"):
        repsim.nbs(np.ones(5), np.ones(5))


def test_constant_representation_gives_nan_and_a_warning(rng):
    x = rng.standard_normal((10, 3))
    for fn in (repsim.nbs, repsim.shape_distance, repsim.gulp, repsim.ridge_r2):
        with pytest.warns(repsim.DegenerateRepresentationWarning, match="'y'"):
            assert np.isnan(fn(x, np.full((10, 2), 3.0)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(repsim.ridge_r2(np.full((10, 2), 3.0), x))  # constant predictor: R²=0


arrays = st.integers(0, 2**31 - 1).map(lambda s: np.random.default_rng(s))


@settings(max_examples=30, deadline=None)
@given(arrays, st.integers(0, 12), st.integers(1, 6), st.floats(0.0, 1.0))
def test_shape_distance_is_a_metric(rng, extra, p, alpha):
    # n well above p: an angle near 0 is ill-conditioned (arccos(1 - d) ~ sqrt(2 d))
    n = 3 * p + 6 + extra
    a, b, c = (rng.standard_normal((n, p)) for _ in range(3))
    for score in ("angular", "euclidean"):
        dab = float(repsim.shape_distance(a, b, alpha, score))
        dba = float(repsim.shape_distance(b, a, alpha, score))
        dac = float(repsim.shape_distance(a, c, alpha, score))
        dcb = float(repsim.shape_distance(c, b, alpha, score))
        assert abs(dab - dba) < 1e-9
        assert dab <= dac + dcb + 1e-9
        assert dab >= 0 and (score == "euclidean" or dab <= np.pi / 2 + 1e-12)


@settings(max_examples=30, deadline=None)
@given(arrays, st.integers(5, 20), st.integers(1, 5), st.integers(1, 5))
def test_nbs_and_r2_lie_in_unit_interval(rng, n, p, q):
    x, y = rng.standard_normal((n, p)), rng.standard_normal((n, q))
    assert -1e-12 <= repsim.nbs(x, y) <= 1 + 1e-12
    assert -1e-12 <= repsim.ridge_r2(x, y, 0.1) <= 1 + 1e-12
    assert repsim.gulp(x, y, 0.1) >= 0
