"""Grams, centring, U-centring and HSIC against their textbook definitions."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import repsim
from repsim._backend import namespace
from repsim.kernels import centre_features, centre_into, column_means


def textbook_unbiased_hsic(k, l):
    """Song et al. (2012), eq. 5, written out term by term."""
    n = k.shape[0]
    kt = k - np.diag(np.diag(k))
    lt = l - np.diag(np.diag(l))
    one = np.ones(n)
    term1 = np.trace(kt @ lt)
    term2 = (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (one @ kt @ lt @ one)
    return (term1 + term2 - term3) / (n * (n - 3))


def textbook_biased_hsic(k, l):
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def test_linear_gram(rng):
    # issue 11.1 changed the contract: the linear gram is that of the centred features
    x = rng.standard_normal((7, 3, 2)) + 5.0
    flat = x.reshape(7, 6)
    centred = flat - flat.mean(axis=0)
    np.testing.assert_allclose(repsim.gram(x), centred @ centred.T, atol=1e-12)
    h = np.eye(7) - 1 / 7  # ... which every centred kernel treats as x x^T
    np.testing.assert_allclose(h @ repsim.gram(x) @ h, h @ flat @ flat.T @ h, atol=1e-10)


def test_rbf_gram_definition(rng):
    x = rng.standard_normal((9, 4))
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.testing.assert_allclose(repsim.gram(x, kernel="rbf", sigma=1.7), np.exp(-d / (2 * 1.7**2)), rtol=1e-12)
    sigma = np.sqrt(np.median(d)) * 0.8
    np.testing.assert_allclose(repsim.gram(x, kernel="rbf", threshold=0.8), np.exp(-d / (2 * sigma**2)), rtol=1e-10)


def test_centre_gram_is_hkh(rng):
    k = rng.standard_normal((6, 6))
    h = np.eye(6) - 1 / 6
    np.testing.assert_allclose(repsim.centre_gram(k), h @ k @ h, atol=1e-12)


def test_ucentre_gram_definition(rng):
    n = 8
    k = rng.standard_normal((n, n))
    k = k + k.T
    kt = k - np.diag(np.diag(k))
    expected = (
        kt
        - kt.sum(1, keepdims=True) / (n - 2)
        - kt.sum(0, keepdims=True) / (n - 2)
        + kt.sum() / ((n - 1) * (n - 2))
    )
    np.fill_diagonal(expected, 0)
    np.testing.assert_allclose(repsim.ucentre_gram(k), expected, atol=1e-12)


@pytest.mark.parametrize("unbiased", [False, True])
def test_numba_and_numpy_centring_agree(rng, unbiased):
    k = rng.standard_normal((33, 33)).astype(np.float32)
    a, b = np.empty(33 * 33), np.empty(33 * 33)
    ta = centre_into(k, unbiased, a, np, engine="numba")
    tb = centre_into(k, unbiased, b, np, engine="numpy")
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose([float(v) for v in ta], [float(v) for v in tb], rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(4, 20), seed=st.integers(0, 2**31 - 1))
def test_unbiased_hsic_equals_textbook(n, seed):
    r = np.random.default_rng(seed)
    x, y = r.standard_normal((n, 3)), r.standard_normal((n, 5))
    k, l = x @ x.T, y @ y.T
    assert repsim.hsic(k, l, estimator="unbiased") == pytest.approx(textbook_unbiased_hsic(k, l), rel=1e-8, abs=1e-10)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 20), seed=st.integers(0, 2**31 - 1))
def test_biased_hsic_equals_textbook(n, seed):
    r = np.random.default_rng(seed)
    k, l = r.standard_normal((n, n)), r.standard_normal((n, n))
    k, l = k + k.T, l + l.T  # grams are symmetric
    assert repsim.hsic(k, l) == pytest.approx(textbook_biased_hsic(k, l), rel=1e-8, abs=1e-10)


def test_hsic_torch_returns_tensor(rng):
    x = rng.standard_normal((10, 4))
    k = torch.from_numpy(x @ x.T)
    value = repsim.hsic(k, k, estimator="unbiased")
    assert isinstance(value, torch.Tensor) and value.ndim == 0
    assert float(value) == pytest.approx(textbook_unbiased_hsic(x @ x.T, x @ x.T))


def test_unbiased_hsic_is_unbiased_for_independent_data():
    # the biased estimator of independent data is positive on average; the unbiased one ~0
    r = np.random.default_rng(1)
    biased, unbiased = [], []
    for _ in range(200):
        x, y = r.standard_normal((12, 2)), r.standard_normal((12, 2))
        k, l = x @ x.T, y @ y.T
        biased.append(repsim.hsic(k, l))
        unbiased.append(repsim.hsic(k, l, estimator="unbiased"))
    assert np.mean(biased) > 5 * np.std(biased) / np.sqrt(200)
    assert abs(np.mean(unbiased)) < 3 * np.std(unbiased) / np.sqrt(200)


def test_torch_gram_and_numba_centring_on_cpu_tensors(rng):
    x = torch.tensor(rng.standard_normal((30, 17)), dtype=torch.float32)
    g = repsim.gram(x)
    assert isinstance(g, torch.Tensor) and g.dtype == torch.float32
    # small means: the product of the raw features, centred in float64 after it
    x64 = x.double()
    want = (x64 - x64.mean(0)) @ (x64 - x64.mean(0)).T
    torch.testing.assert_close(g.double(), want, rtol=0, atol=1e-5 * float(want.abs().max()))
    # a large common offset: a shift subtracted before the one product, centred in float64
    # after it -- the centred gram to float32 accuracy of the centred data
    big = x + 300.0
    torch.testing.assert_close(repsim.gram(big).double(), want, rtol=0,
                               atol=1e-5 * float(want.abs().max()))
    k = g.double()
    a, b = torch.empty(900, dtype=torch.float64), torch.empty(900, dtype=torch.float64)
    xp = namespace(k)
    centre_into(k, True, a, xp, engine="numba")  # zero-copy numpy views of the tensors
    centre_into(k, True, b, xp, engine="numpy")
    torch.testing.assert_close(a, b)
    xg = x.clone().requires_grad_(True)
    assert repsim.gram(xg).requires_grad


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_stacked_centring_equals_per_layer_numba(monkeypatch, estimator, kernel):
    """On an accelerator the grams are centred in stacks (forced here on the CPU); rows,
    degeneracy terms and bandwidths equal the per-layer numba path, across chunk borders
    (chunks of 3 for 7 layers), for numpy arrays and for torch tensors (some requiring
    grad)."""
    from repsim import _centring, kernels
    from repsim.hsic import centred_gram_stack

    assert not kernels.stacks_centring(torch.zeros(2, 2)) and not kernels.stacks_centring(np.zeros((2, 2)))
    assert kernels.stacks_centring(torch.zeros(2, 2, device="meta"))
    monkeypatch.setattr(_centring, "STACK_CHUNK", 3)  # the centring's own module
    monkeypatch.setattr(_centring, "stacks_centring", lambda k: True)
    rng = np.random.default_rng(5)
    layers = [rng.standard_normal((30, p)) for p in (4, 9, 2, 16, 5, 7, 3)]
    names = [f"l{i}" for i in range(len(layers))]
    kw = dict(kernel=kernel, estimator=estimator, sigmas=[0.7] * 7 if kernel == "rbf" else None)
    ref = centred_gram_stack(layers, names, engine="numba", **kw)
    got = centred_gram_stack(layers, names, engine="numpy", **kw)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[2], ref[2], rtol=1e-12)
    np.testing.assert_allclose(got[3], ref[3], rtol=1e-12)
    if estimator == "unbiased":
        assert np.all(got[0].reshape(7, 30, 30)[:, np.arange(30), np.arange(30)] == 0)
    mixed = [torch.tensor(x, requires_grad=i % 2 == 1) for i, x in enumerate(layers)]
    out = centred_gram_stack(mixed, names, engine="auto", **kw)
    np.testing.assert_allclose(out[0].detach().numpy(), ref[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out[2], ref[2], rtol=1e-12)


@pytest.mark.parametrize("n", [1, 5, 16, 17, 250, 1000])
def test_column_means_accumulate_in_float64(rng, n):
    x = (rng.standard_normal((n, 7)) * [1, 10, 1e3, 1e4, 1e5, 3e7, 1]).astype(np.float32) + 1e4
    exact = x.astype(np.float64).mean(axis=0)
    for a in (x, torch.from_numpy(x)):
        m = column_means(a, namespace(a))
        assert m.dtype in (np.float64, torch.float64)
        # a float64 reduction: only float64 rounding, whatever the offset
        bound = 4 * n * np.finfo(np.float64).eps * np.abs(x.astype(np.float64)).mean(axis=0)
        assert np.all(np.abs(np.asarray(m) - exact) <= bound)
        c = centre_features(a, namespace(a))
        assert type(c) is type(a) and c.dtype == a.dtype and c.shape == a.shape
        want = (x.astype(np.float64) - exact).astype(np.float32)
        np.testing.assert_allclose(np.asarray(c), want, rtol=0,
                                   atol=4 * np.finfo(np.float32).eps * np.abs(x).max())
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(column_means(x64, namespace(x64)), x64.mean(axis=0), rtol=1e-15)


@pytest.mark.parametrize("offset, path", [(0.0, "product"), (1.0, "product"), (10.0, "shifted"),
                                          (1e4, "shifted"), ("rows", "features")])
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_gram_is_centred_before_or_after_the_product(rng, monkeypatch, offset, path, lib):
    """Means small against the spread: the raw product centred in float64 (no extra pass
    over the features); larger means: a shift (the float64 mean of SHIFT_ROWS rows)
    subtracted before the product -- either way the gram is formed once. Only where the
    product shows the shift missed the mean (rows unlike the rest) are the features centred
    with their exact float64 means and the gram formed again. Every path gives the centred
    gram to float32 accuracy of the centred data."""
    from repsim import _backend, kernels

    n = 500
    x = rng.standard_normal((n, 40)).astype(np.float32)
    if offset == "rows":  # the rows the shift is estimated from carry an offset the rest lack
        x[:: n // kernels.SHIFT_ROWS][: kernels.SHIFT_ROWS] += np.float32(30.0)
    else:
        x += np.float32(offset)
    arg = x if lib == "numpy" else torch.from_numpy(x.copy())
    calls, products = [], []
    real, real_product = kernels.centre_features, _backend.self_product
    monkeypatch.setattr(kernels, "centre_features", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(_backend, "self_product", lambda *a: products.append(a[0]) or real_product(*a))
    g = kernels.linear_gram(arg, namespace(arg))
    if calls:
        got = "features"
    else:
        got = "product" if np.array_equal(np.asarray(products[0]), x) else "shifted"
    assert got == path
    assert len(products) == (2 if path == "features" else 1)
    x64 = x.astype(np.float64)
    want = (x64 - x64.mean(0)) @ (x64 - x64.mean(0)).T
    g = np.asarray(g)
    assert g.dtype == np.float32
    # centred again in float64: the features path leaves a per-column constant of float32
    # rounding of the means (~eps * |mean|) in the features, which H g H removes
    h = np.eye(n) - 1.0 / n
    np.testing.assert_allclose(h @ g.astype(np.float64) @ h, want, rtol=0,
                               atol=40 * 4 * np.finfo(np.float32).eps * np.abs(want).max())


def test_deferred_range_checks_on_the_stacked_path(monkeypatch, rng):
    """On an accelerator the grams' ranges are read back once per batch, after all grams
    are formed; a layer outside float32's range still takes the rescaling path and NaN is
    still refused naming the layer (forced here on the CPU)."""
    from repsim import _centring
    from repsim.hsic import centred_gram_stack

    layers = [rng.standard_normal((40, 30)).astype(np.float32) for _ in range(3)]
    layers[1] = layers[1] * np.float32(1e-22)  # squares underflow float32 without rescaling
    names = ["a", "tiny", "c"]
    ref = centred_gram_stack(layers, names, estimator="unbiased")
    monkeypatch.setattr(_centring, "stacks_centring", lambda k: True)
    got = centred_gram_stack(layers, names, estimator="unbiased")
    for r, g in zip(ref[0], got[0]):  # rows agree up to each layer's scale
        np.testing.assert_allclose(g / np.abs(g).max(), r / np.abs(r).max(), atol=1e-6)
    assert np.all(got[2] > got[3])  # no layer taken for constant
    bad = [layers[0], layers[2].copy()]
    bad[1][3, 4] = np.nan
    with pytest.raises(ValueError, match=r"x\['c'\].*NaN"):
        centred_gram_stack(bad, ["a", "c"], estimator="unbiased")


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_small_offsets_keep_the_product_of_the_raw_features(rng, estimator):
    """Where the means are small against the spread, the packed rows are the centring of
    the raw product ``x x^T`` itself -- bit for bit what repsim computed before the
    centring-first rule, so well-conditioned results did not move."""
    from repsim._backend import self_product
    from repsim.hsic import centred_gram_stack

    x = (rng.standard_normal((64, 48)) + 0.3).astype(np.float32)
    packed = centred_gram_stack([x], ["a"], estimator=estimator)[0]
    want = np.empty((1, 64 * 64))
    centre_into(self_product(x, namespace(x)), estimator == "unbiased", want[0], namespace(x))
    np.testing.assert_array_equal(packed, want)


def test_shifted_gram_in_and_out_of_inference_mode(rng):
    """The shift's scratch buffer is reused across calls: a gram formed under
    torch.inference_mode (compare_models' forwards) must not leave an inference tensor that
    a later call outside it cannot write to, and the buffer must not alias a returned gram."""
    x = torch.from_numpy((rng.standard_normal((40, 30)) + 20.0).astype(np.float32))
    xp = namespace(x)
    with torch.inference_mode():
        first = kernels_linear(x, xp)
    second = kernels_linear(x * 2.0, xp)
    third = kernels_linear(x, xp)
    torch.testing.assert_close(first, third)
    torch.testing.assert_close(second, 4.0 * third, rtol=1e-5, atol=1e-3)


def kernels_linear(x, xp):
    from repsim.kernels import linear_gram

    return linear_gram(x, xp)
