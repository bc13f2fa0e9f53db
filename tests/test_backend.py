"""repsim._backend, the one dispatch point: namespaces, input types, dtype policy, engines."""

import numpy as np
import pytest
import torch

from repsim import _backend as B
from repsim import _validation as V


def test_namespace_and_mixing(rng):
    x = rng.standard_normal((3, 2))
    assert B.is_numpy_namespace(B.namespace(x))
    assert not B.is_numpy_namespace(B.namespace(torch.tensor(x)))
    with pytest.raises(TypeError, match=r"one library.*a: numpy.ndarray, b: torch.Tensor"):
        B.namespace(x, torch.tensor(x), names=["a", "b"])


def test_asarray_keeps_supported_arrays_and_converts_array_likes(rng):
    x = rng.standard_normal((3, 2))
    t = torch.tensor(x)
    assert B.asarray(x) is x and B.asarray(t) is t
    assert isinstance(B.asarray([[1, 2], [3, 4]]), np.ndarray)


@pytest.mark.parametrize("dtype", [">f8", ">f4", ">i4", "<f8", ">f2"])
def test_asarray_native_byte_order_same_values(dtype, rng):
    x = (rng.standard_normal((4, 3)) * 10).astype(dtype)
    a = B.asarray(x)
    assert a.dtype.isnative and a.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(a, x)
    xp = B.namespace(a)
    assert B.float_dtype(a, xp) == {"f8": np.float64, "f4": np.float32, "i4": np.float64,
                                     "f2": np.float32}[dtype[1:]]


def test_asarray_refusals_name_the_argument(rng):
    x = rng.standard_normal((3, 2))
    with pytest.raises(TypeError, match="^acts must be real; got complex dtype complex128"):
        B.asarray(x + 0j, "acts")
    with pytest.raises(TypeError, match="^acts must be real; got complex"):
        B.asarray(torch.tensor(x + 0j), "acts")
    with pytest.raises(TypeError, match="^acts must be a plain array; got a numpy masked array"):
        B.asarray(np.ma.masked_array(x), "acts")
    with pytest.raises(TypeError, match="^acts must have a numeric"):
        B.asarray(np.array([["a", "b"]]), "acts")
    with pytest.raises(TypeError, match="^acts must have a numeric"):
        B.asarray(np.array([[np.datetime64("2020-01-01")]]), "acts")
    with pytest.raises(TypeError, match=r"^acts must hold data; got a torch tensor on the 'meta' device \(shape \(3, 2\)\)"):
        B.asarray(torch.empty((3, 2), device="meta"), "acts")


def test_dtype_policy():
    xp = B.namespace(np.zeros(1))
    for dt, want in [(np.float64, np.float64), (np.float32, np.float32), (np.float16, np.float32),
                     (np.int64, np.float64), (np.bool_, np.float64)]:
        assert B.float_dtype(np.zeros((2, 2), dtype=dt), xp) == want
        assert B.as_float(np.zeros((2, 2), dtype=dt), xp).dtype == want
    tp = B.namespace(torch.zeros(1))
    assert B.float_dtype(torch.zeros(2, dtype=torch.bfloat16), tp) == torch.float32
    assert B.accumulation_dtype(xp) == np.float64 and B.accumulation_dtype(tp) == torch.float64


def test_scalar_and_item():
    xp, tp = B.namespace(np.zeros(1)), B.namespace(torch.zeros(1))
    v = B.scalar(np.sum(np.ones(3)), xp)
    assert type(v) is np.float64 and v == 3.0
    t = torch.tensor(2.5, dtype=torch.float64)
    assert B.scalar(t, tp) is t
    assert B.item(torch.tensor(1.5, requires_grad=True) * 2) == 3.0
    assert B.item(np.float32(0.25)) == 0.25


def test_to_numpy_and_device(rng):
    t = torch.tensor(rng.standard_normal((2, 2)), requires_grad=True)
    out = B.to_numpy(t)
    assert isinstance(out, np.ndarray) and np.array_equal(out, t.detach().numpy())
    assert not B.on_accelerator(t) and not B.on_accelerator(out)


def test_numba_view_and_engine_choice(rng, monkeypatch):
    x = rng.standard_normal((3, 3))
    t = torch.tensor(x)
    assert B.numba_view(x) is x
    v = B.numba_view(t)
    assert isinstance(v, np.ndarray) and np.shares_memory(v, t.numpy())
    assert B.numba_view(t.clone().requires_grad_(True)) is None
    assert B.use_numba("numpy", x) is False
    assert B.use_numba("auto", x) is True and B.use_numba("numba", t) is True
    with pytest.raises(TypeError, match="engine='numba' runs on numpy arrays and CPU torch"):
        B.use_numba("numba", t.clone().requires_grad_(True))
    monkeypatch.setenv("REPSIM_DISABLE_NUMBA", "1")
    assert B.use_numba("auto", x) is False
    with pytest.raises(ImportError, match="needs numba"):
        B.use_numba("numba", x)


def test_products_in_the_inputs_own_library(rng):
    x = rng.standard_normal((4, 3))
    for a in (x, torch.tensor(x)):
        xp = B.namespace(a)
        np.testing.assert_allclose(B.to_numpy(B.self_product(a, xp)), x @ x.T, atol=1e-14)
        np.testing.assert_allclose(B.to_numpy(B.pair_product(a, a, xp)), x @ x.T, atol=1e-14)


def test_validation_table_is_declarative():
    assert set(V.PARAMS) >= {"kernel", "estimator", "engine", "sigma", "threshold", "centre"}
    V.check_params(kernel="linear", sigma=None, threshold=2, centre=False)
    with pytest.raises(ValueError, match="centre must be True or False; got 1"):
        V.check_params(centre=1)
    with pytest.raises(ValueError, match="already defined"):
        V.register_params(kernel=V.Options("poly"))
    V.register_params(_test_only=V.Options("a"))
    try:
        with pytest.raises(ValueError, match="_test_only must be one of 'a'; got 'b'"):
            V.check_params(_test_only="b")
    finally:
        del V.PARAMS["_test_only"]


def test_container_sniffing(rng):
    import xarray as xr

    x = rng.standard_normal((3, 2))
    assert V.is_mapping({"a": x}) and V.is_mapping(xr.Dataset({"a": (("n", "f"), x)}))
    assert not V.is_mapping(x) and not V.is_mapping(torch.tensor(x)) and not V.is_mapping([x])
    assert V.is_layer_sequence([x]) and V.is_layer_sequence((x,)) and not V.is_layer_sequence(x)
