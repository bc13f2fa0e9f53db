"""CKA: invariances, symmetry, paths, numpy/torch agreement, cka_matrix."""

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ortho_group

import repsim

CASES = [
    dict(kernel="linear", estimator="biased"),
    dict(kernel="linear", estimator="unbiased"),
    dict(kernel="rbf", estimator="biased"),
    dict(kernel="rbf", estimator="unbiased"),
]


def data(seed, n=40, p=6, q=9, noise=1.0):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, p))
    y = np.tanh(x @ r.standard_normal((p, q))) + noise * r.standard_normal((n, q))
    return x, y


@pytest.mark.parametrize("opts", CASES)
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.01, 100))
def test_invariant_to_orthogonal_maps_and_isotropic_scaling(opts, seed, scale):
    x, y = data(seed)
    q = ortho_group.rvs(x.shape[1], random_state=seed % 2**32)
    base = repsim.cka(x, y, **opts)
    assert repsim.cka(scale * x @ q, y, **opts) == pytest.approx(base, abs=1e-9)
    assert repsim.cka(x, y * scale + 0.0, **opts) == pytest.approx(base, abs=1e-9)


@pytest.mark.parametrize("opts", CASES)
def test_invariant_to_feature_permutation_and_translation(opts, rng):
    x, y = data(3)
    perm = rng.permutation(x.shape[1])
    base = repsim.cka(x, y, **opts)
    assert repsim.cka(x[:, perm], y, **opts) == pytest.approx(base, abs=1e-10)
    assert repsim.cka(x + 5.0, y - 2.0, **opts) == pytest.approx(base, abs=1e-9)


def test_linear_cka_not_invariant_to_general_invertible_maps():
    x, y = data(4)
    a = np.diag([1.0, 10.0, 0.1, 1.0, 3.0, 0.5])  # invertible, not orthogonal
    assert abs(repsim.cka(x @ a, y) - repsim.cka(x, y)) > 0.05


@pytest.mark.parametrize("opts", CASES)
def test_symmetric_and_self_similarity_one(opts):
    x, y = data(5)
    assert repsim.cka(x, y, **opts) == pytest.approx(repsim.cka(y, x, **opts), abs=1e-12)
    assert repsim.cka(x, x, **opts) == pytest.approx(1.0, abs=1e-12)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(3, 60), p=st.integers(1, 30), q=st.integers(1, 30))
def test_gram_path_equals_feature_path(seed, n, p, q):
    r = np.random.default_rng(seed)
    x, y = r.standard_normal((n, p)), r.standard_normal((n, q))
    assert repsim.cka(x, y, method="gram") == pytest.approx(repsim.cka(x, y, method="features"), abs=1e-10)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_biased_cka_in_unit_interval(seed):
    x, y = data(seed, n=12, p=30, q=3)
    for kernel in ("linear", "rbf"):
        assert 0.0 <= repsim.cka(x, y, kernel=kernel) <= 1.0 + 1e-12


@pytest.mark.parametrize("opts", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numpy_and_torch_agree(opts, dtype):
    x, y = data(6, n=50, p=20, q=30)
    expected = repsim.cka(x, y, **opts)
    value = repsim.cka(torch.tensor(x, dtype=dtype), torch.tensor(y, dtype=dtype), **opts)
    assert isinstance(value, torch.Tensor) and value.dtype == torch.float64
    assert float(value) == pytest.approx(expected, abs=1e-5 if dtype == torch.float32 else 1e-12)


def test_result_types():
    x, y = data(7)
    assert isinstance(repsim.cka(x, y), np.float64)
    assert isinstance(repsim.cka(x.tolist(), y.tolist()), np.float64)


def test_half_precision_is_upcast():
    x, y = data(8, n=30, p=8, q=8)
    x16, y16 = torch.tensor(x, dtype=torch.float16), torch.tensor(y, dtype=torch.float16)
    ref = repsim.cka(x16.float(), y16.float(), method="gram")
    assert float(repsim.cka(x16, y16, method="gram")) == pytest.approx(float(ref), abs=1e-12)
    b16 = torch.tensor(x, dtype=torch.bfloat16)
    assert float(repsim.cka(b16, b16, estimator="unbiased")) == pytest.approx(1.0, abs=1e-9)
    assert repsim.gram(x.astype(np.float16)).dtype == np.float32


def test_conv_maps_are_flattened(rng):
    x = rng.standard_normal((20, 3, 4, 4))
    y = rng.standard_normal((20, 5))
    assert repsim.cka(x, y) == pytest.approx(repsim.cka(x.reshape(20, -1), y), abs=1e-12)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_cka_matrix_matches_pairwise_cka(estimator, kernel, rng):
    layers = {f"l{i}": rng.standard_normal((30, 4 + i)) for i in range(4)}
    layers["l2"] = layers["l1"] @ rng.standard_normal((5, 6))
    sim = repsim.cka_matrix(layers, kernel=kernel, estimator=estimator)
    assert isinstance(sim, xr.DataArray) and sim.dims == ("layer_a", "layer_b")
    assert list(sim.layer_a.values) == list(layers)
    assert sim.attrs["estimator"] == estimator and sim.attrs["kernel"] == kernel and sim.attrs["n"] == 30
    for a, xa in layers.items():
        for b, xb in layers.items():
            expected = repsim.cka(xa, xb, kernel=kernel, estimator=estimator)
            assert float(sim.sel(layer_a=a, layer_b=b)) == pytest.approx(expected, abs=1e-10)


def test_cka_matrix_across_models_is_block_of_within(rng):
    xs = [rng.standard_normal((25, 3)) for _ in range(3)]
    ys = [xs[0] @ rng.standard_normal((3, 4)), rng.standard_normal((25, 7))]
    across = repsim.cka_matrix(xs, ys, estimator="unbiased")
    within = repsim.cka_matrix(xs + ys, estimator="unbiased")
    np.testing.assert_allclose(across.values, within.values[:3, 3:], atol=1e-12)


def test_cka_matrix_torch(rng):
    xs = [rng.standard_normal((25, 3 + i)) for i in range(3)]
    a = repsim.cka_matrix(xs)
    b = repsim.cka_matrix([torch.tensor(x, dtype=torch.float32) for x in xs])
    np.testing.assert_allclose(a.values, b.values, atol=1e-5)
