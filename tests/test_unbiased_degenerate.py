"""Unbiased CKA of a layer whose U-centred gram is zero is undefined (0/0), not 1.0 or a
rounding residue.

The unbiased HSIC (Song et al. 2012) of a layer with itself is ``<U(K), U(K)>/(n(n-3))``
with ``U(K)`` the U-centred gram; it is zero not only for constant layers but whenever the
off-diagonal of ``K`` is additive (``K_ij = a_i + a_j``): rows orthogonal with equal norms
(one-hot rows, the identity), or an RBF gram with one value between all pairs. Before, such
a layer gave ``cka(...)`` of about 1e-17 and 1.0 with itself in ``cka_matrix``.

References written here: ``U(K)`` from its definition in float64 (``_hsic_u`` of
test_store_stream), so that each planted layer's self-HSIC is shown to be zero, and a
near-one-hot layer (same rows plus noise) is shown *not* to be flagged and to equal the
definition.
"""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import repsim
from repsim import DegenerateRepresentationWarning
from test_store_stream import _hsic_u, ref_cka_unbiased


def orthogonal_rows(n, d, log2_scale=0, seed=0):
    """``n <= d`` rows of a random orthogonal matrix times ``2**log2_scale`` (exact):
    ``K = 4**log2_scale I`` up to rounding, so ``U(K) = 0``."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return np.ldexp(q[:n], log2_scale)


def one_hot(n, d, log2_scale=0, log2_offset=None, seed=0):
    """Permuted one-hot rows (``n <= d``) times ``2**log2_scale`` plus ``3 * 2**log2_offset``:
    every value exact, so the stored layer is exactly one-hot (an offset that rounded the
    rows would make them data, not a planted degenerate layer)."""
    x = np.eye(d)[np.random.default_rng(seed).permutation(d)[:n]]
    x = np.ldexp(x, log2_scale)
    return x if log2_offset is None else x + np.ldexp(3.0, log2_offset)


def caught(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    return out, [x for x in w if issubclass(x.category, DegenerateRepresentationWarning)]


def test_planted_layers_have_zero_unbiased_self_hsic():
    """The premise, from the definition: one-hot and orthogonal equal-norm rows give
    ``HSIC_u(K, K) = 0`` (to float64 rounding), a random layer does not."""
    for x in (np.eye(20), orthogonal_rows(20, 31)):
        k = x @ x.T
        assert abs(_hsic_u(k, k)) < 1e-15 * np.trace(k) ** 2
    y = np.random.default_rng(1).standard_normal((20, 5))
    assert _hsic_u(y @ y.T, y @ y.T) > 1e-3


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_one_hot_layer_is_nan_with_the_unbiased_reason(kernel):
    x = np.eye(24)[np.random.default_rng(0).permutation(24)]
    y = np.random.default_rng(1).standard_normal((24, 6))
    opts = {"sigma": 1.0} if kernel == "rbf" else {}
    value, w = caught(repsim.cka, x, y, kernel=kernel, estimator="unbiased", **opts)
    assert np.isnan(value)
    assert len(w) == 1 and "U-centred gram or distance matrix is zero" in str(w[0].message) and "'x'" in str(w[0].message)
    mat, w = caught(repsim.cka_matrix, {"onehot": x, "y": y}, kernel=kernel,
                    estimator="unbiased", **opts)
    v = np.asarray(mat)
    assert np.isnan(v[0]).all() and np.isnan(v[:, 0]).all()  # the self-value too (was 1.0)
    assert v[1, 1] == 1.0
    assert len(w) == 1 and "'onehot'" in str(w[0].message)
    # the biased estimator is defined there (tr(HKH) > 0) and stays finite, no warning
    value, w = caught(repsim.cka, x, y, kernel=kernel, estimator="biased", **opts)
    assert np.isfinite(value) and 0 < value < 1 and not w


@pytest.mark.parametrize("make", [
    lambda: orthogonal_rows(16, 16), lambda: orthogonal_rows(16, 20, -100),
    lambda: orthogonal_rows(16, 16, 130), lambda: one_hot(16, 16, -100, -98),
    lambda: one_hot(16, 19, 0, 14), lambda: one_hot(16, 16, 120, 125)])
def test_orthogonal_equal_norm_rows_at_any_scale_and_offset(make):
    x = make()
    y = np.random.default_rng(2).standard_normal((16, 4))
    value, w = caught(repsim.cka, x, y, estimator="unbiased")
    assert np.isnan(value) and len(w) == 1


def test_near_one_hot_layer_is_not_flagged_and_equals_the_definition():
    rng = np.random.default_rng(3)
    base = np.eye(30)
    y = rng.standard_normal((30, 6))
    for noise in (1e-2, 1e-4, 1e-6):
        x = base + noise * rng.standard_normal((30, 30))
        value, w = caught(repsim.cka, x, y, estimator="unbiased")
        assert not w
        np.testing.assert_allclose(value, ref_cka_unbiased(x, y), rtol=1e-7, atol=1e-9)


def test_minibatch_cka_one_hot_batches_are_nan_and_mixed_ones_are_not():
    rng = np.random.default_rng(4)
    acc = repsim.MinibatchCKA(estimator="unbiased")
    for _ in range(3):
        acc.update({"onehot": np.eye(10)[rng.permutation(10)], "y": rng.standard_normal((10, 3))})
    v, w = caught(acc.compute)
    v = np.asarray(v)
    assert np.isnan(v[0]).all() and v[1, 1] == 1.0 and len(w) == 1
    assert "U-centred gram or distance matrix is zero" in str(w[0].message)
    # one batch with structure makes the summed self-HSIC positive: defined again
    acc.update({"onehot": rng.standard_normal((10, 10)), "y": rng.standard_normal((10, 3))})
    v, w = caught(acc.compute)
    assert np.isfinite(np.asarray(v)).all() and not w


def test_streamed_store_flags_the_one_hot_layer(tmp_path):
    pytest.importorskip("zarr")
    from test_store_stream import write_store

    rng = np.random.default_rng(5)
    n = 40
    layers = {"onehot": np.eye(n)[rng.permutation(n)] + 7.0, "y": rng.standard_normal((n, 5))}
    store = write_store(tmp_path / "s.zarr", layers, chunk=16)
    mem, w_mem = caught(repsim.cka_matrix, layers, estimator="unbiased")
    for batch_size in (16, 40):
        sim, w = caught(repsim.similarity_matrix, store, estimator="unbiased",
                        batch_size=batch_size, progress=False)
        v = np.asarray(sim)
        assert np.isnan(v[0]).all() and v[1, 1] == 1.0 and len(w) == 1
        assert "U-centred gram or distance matrix is zero" in str(w[0].message)
    assert np.isnan(np.asarray(mem)[0]).all() and len(w_mem) == 1


@settings(max_examples=40, deadline=None)
@given(n=st.integers(5, 24), extra=st.integers(0, 10), log_scale=st.integers(-200, 200),
       log_offset=st.one_of(st.none(), st.integers(-200, 200)), seed=st.integers(0, 2**16),
       rotate=st.booleans(), f32=st.booleans())
def test_property_orthogonal_rows_flagged_random_rows_not(n, extra, log_scale, log_offset,
                                                          seed, rotate, f32):
    if rotate:
        x = orthogonal_rows(n, n + extra, log_scale, seed)
    else:
        x = one_hot(n, n + extra, log_scale, log_offset, seed)
    y = np.ldexp(np.random.default_rng(seed + 1).standard_normal((n, 1 + seed % 7)), log_scale)
    if f32 and abs(log_scale) < 60 and (log_offset is None or abs(log_offset - log_scale) < 20):
        x, y = x.astype(np.float32), y.astype(np.float32)
    mat, w = caught(repsim.cka_matrix, {"x": x, "y": y}, estimator="unbiased")
    v = np.asarray(mat)
    assert np.isnan(v[0]).all() and len(w) == 1 and "'x'" in str(w[0].message)
    assert v[1, 1] == 1.0  # a random layer is never flagged


@pytest.mark.parametrize("n,d,log2_offset", [(40, 40, None), (40, 55, 3), (30, 30, 10)])
def test_feature_moments_flag_the_one_hot_layer_and_keep_a_near_one(n, d, log2_offset):
    """The moment path's unbiased self-HSIC is a difference of four moment terms: the
    one-hot layer's is rounding (was CKA 1.0 with itself, 1.7e-8 with others); a layer 1e-4
    away from one-hot keeps the in-memory values."""
    rng = np.random.default_rng(n + d)
    x = one_hot(n, d, 0, log2_offset, seed=d)
    near = x + 1e-4 * rng.standard_normal(x.shape)
    y = rng.standard_normal((n, 5))
    fm = repsim.FeatureMoments()
    for start in range(0, n, 10):
        sl = slice(start, start + 10)
        fm.update({"onehot": x[sl], "y": y[sl], "near": near[sl]})
    got, w = caught(fm.compute, "cka", estimator="unbiased")
    v = np.asarray(got)
    assert np.isnan(v[0]).all() and np.isnan(v[:, 0]).all()
    assert len(w) == 1 and "'onehot'" in str(w[0].message) and "U-centred" in str(w[0].message)
    mem, _ = caught(repsim.cka_matrix, {"onehot": x, "y": y, "near": near}, estimator="unbiased")
    np.testing.assert_allclose(v[1:, 1:], np.asarray(mem)[1:, 1:], rtol=0, atol=1e-9)
    assert v[2, 1] == pytest.approx(ref_cka_unbiased(near, y), abs=1e-9)
    # the biased estimator is defined for the one-hot layer
    biased, w = caught(fm.compute, "cka")
    assert np.isfinite(np.asarray(biased)).all() and not w


def test_dcor_of_equidistant_examples_is_nan_and_a_near_layer_equals_the_definition(tmp_path):
    """Bias-corrected distance correlation U-centres the distance matrix: one-hot rows
    (every pair sqrt(2) apart) give U(A) = 0 (was dcor -0.0055 with others, 1.0 with
    itself), on every path; 1e-3 away they match the definition (the dcor package's
    u_distance_correlation_sqr, tests/test_rsa.py)."""
    pytest.importorskip("zarr")
    from test_store_rdm import ref_dcor
    from test_store_stream import write_store

    rng = np.random.default_rng(9)
    x = one_hot(32, 40, 0, 2, seed=9)
    near = x + 1e-3 * rng.standard_normal(x.shape)
    y = rng.standard_normal((32, 5))
    for a in (x, orthogonal_rows(32, 40, 5, seed=9)):
        value, w = caught(repsim.dcor, a, y)
        assert np.isnan(value) and len(w) == 1 and "distance matrix is zero" in str(w[0].message)
        value, w = caught(repsim.dcor, a, y, estimator="biased")
        assert np.isfinite(value) and not w
    assert repsim.dcor(near, y) == pytest.approx(ref_dcor(near, y), abs=1e-10)
    layers = {"onehot": x, "y": y, "near": near}
    mem, w = caught(repsim.similarity_matrix, layers, measure="dcor", progress=False)
    store = write_store(tmp_path / "d.zarr", layers, chunk=16)
    streamed, w2 = caught(repsim.similarity_matrix, store, measure="dcor", batch_size=16,
                          progress=False)
    for v, warned in ((np.asarray(mem), w), (np.asarray(streamed), w2)):
        assert np.isnan(v[0]).all() and np.isnan(v[:, 0]).all() and len(warned) == 1
        assert v[2, 1] == pytest.approx(ref_dcor(near, y), abs=1e-9)
