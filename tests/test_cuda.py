"""repsim's torch path on a CUDA device, checked against the numpy float64 reference.

Every measure runs on torch tensors on the device, in float64 and in float32, and must
give the numpy float64 result (float64: ``rtol=1e-10``; float32: about ``1e-5`` absolute),
with results in the library and on the device each function's docstring promises (0-d
float64 tensors on the input's device for the scalar measures, DataArrays and Datasets of
host numpy values for the matrix and statistics functions). Covered: ``gram`` and the
centrings, ``hsic``, ``cka`` (linear biased on both the gram and the feature path, linear
unbiased, RBF with a fixed and a median-heuristic bandwidth), ``cka_matrix``,
``MinibatchCKA`` (``update``, ``update_grams``, ``merge``, ``transform``,
``compute(uncertainty=True)`` and ``jackknife_interval`` of its result), the CCA family,
the principal-component functions, ``bootstrap``, ``permutation_test``,
``compare_models`` on a small ResNet (the model on the device against the same model on
the CPU), and the public reference values of ``tests/test_reference_values.py`` through
the device.

The whole module is skipped unless torch is installed and ``torch.cuda.is_available()``.

Environment
-----------
REPSIM_TEST_DEVICE
    The torch device the tests put their tensors on; default ``"cuda"`` (any torch device
    string, e.g. ``"cuda:1"``). The skip applies only to devices starting with ``cuda``, so
    ``REPSIM_TEST_DEVICE=cpu python -m pytest tests/test_cuda.py`` runs every check on CPU
    tensors on a machine without a GPU (a dry run of this file; on CPU the compare_models
    test compares the CPU with itself).

TF32 is switched off for the module (cuBLAS matmuls and cuDNN convolutions), and
restored afterwards: its 10-bit mantissa (~3e-4 relative error) is far outside the
float32 tolerances here. ``test_float32_products_are_not_tf32`` checks that this held.
"""

from __future__ import annotations

import functools
import os
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import xarray as xr  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import repsim  # noqa: E402
from conftest import kornblith_demo  # noqa: E402
from repsim._validation import (  # noqa: E402
    DegenerateRepresentationWarning,
    UnderdeterminedCCAWarning,
)

DEVICE = os.environ.get("REPSIM_TEST_DEVICE", "cuda")

pytestmark = pytest.mark.skipif(
    DEVICE.startswith("cuda") and not torch.cuda.is_available(),
    reason=f"REPSIM_TEST_DEVICE={DEVICE!r} needs CUDA: torch.cuda.is_available() is False "
    "(set REPSIM_TEST_DEVICE=cpu to run these checks on CPU tensors)",
)

DTYPES = [torch.float64, torch.float32]
BOTH = [pytest.param(d, id=str(d).removeprefix("torch.")) for d in DTYPES]
ON_CPU = torch.device(DEVICE).type == "cpu"


@pytest.fixture(scope="module", autouse=True)
def no_tf32():
    """True float32 cuBLAS matmuls and cuDNN convolutions for this module, then restore."""
    flags = (torch.backends.cuda.matmul, torch.backends.cudnn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch >= 2.9 prefers its fp32_precision settings
        saved = [f.allow_tf32 for f in flags]
        for f in flags:
            f.allow_tf32 = False
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for f, value in zip(flags, saved):
                f.allow_tf32 = value


# --------------------------------------------------------------------------- helpers
def dev(a, dtype):
    """A numpy array (or nested list) as a tensor of ``dtype`` on the test device."""
    return torch.tensor(np.asarray(a), dtype=dtype, device=DEVICE)


def devs(layers, dtype):
    return {k: dev(v, dtype) for k, v in layers.items()}


def close(got, want, dtype, atol32=1e-5):
    """float64 inputs: to rounding; float32 inputs: to ``atol32`` (NaN matches NaN)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    if dtype == torch.float64:
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-11)
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=atol32)


def check_scalar(value, like, want, dtype, atol32=1e-5):
    """A 0-d float64 tensor on ``like``'s device, equal to the numpy result ``want``."""
    assert isinstance(value, torch.Tensor), type(value)
    assert value.ndim == 0 and value.dtype == torch.float64
    assert value.device == like.device
    assert isinstance(want, np.float64)
    close(float(value), float(want), dtype, atol32)


def check_attrs(got, want, dtype):
    """The same provenance; RBF bandwidths (median heuristic) to the data's precision."""
    assert set(got) == set(want)
    for key, value in want.items():
        if key.startswith("sigma"):
            w = np.asarray(value, dtype=np.float64)
            close(np.asarray(got[key], dtype=np.float64) / w.max(), w / w.max(), dtype)
        else:
            np.testing.assert_array_equal(got[key], value, err_msg=key)


def check_dataset(got, want, dtype, atol32=1e-5, variables=None):
    assert isinstance(got, xr.Dataset)
    assert list(got.data_vars) == list(want.data_vars)
    check_attrs(got.attrs, want.attrs, dtype)
    for name in variables or want.data_vars:
        assert isinstance(got[name].values, np.ndarray)
        close(got[name].values, want[name].values, dtype, atol32)
    for dim in got.coords:
        assert list(got[dim].values) == list(want[dim].values)


def linear_grams(acts, dtype):
    """Each layer's linear gram ``x x^T``, formed on the device in ``dtype``."""
    flat = {k: dev(v, dtype).reshape(v.shape[0], -1) for k, v in acts.items()}
    return {k: x @ x.T for k, x in flat.items()}


def related(seed, n=60, p=8, q=12, noise=0.5):
    """Two related representations of the same ``n`` examples, float64."""
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, p))
    y = np.tanh(x @ r.standard_normal((p, q))) + noise * r.standard_normal((n, q))
    return x, y


def layers(seed, n=40):
    """Four layers of one model: plain, conv-shaped, a linear map of the first, noise."""
    r = np.random.default_rng(seed)
    a = r.standard_normal((n, 10))
    return {
        "a": a,
        "conv": np.tanh(a @ r.standard_normal((10, 12))).reshape(n, 3, 2, 2)
        + 0.3 * r.standard_normal((n, 3, 2, 2)),
        "lin": a @ r.standard_normal((10, 6)),
        "noise": r.standard_normal((n, 7)),
    }


# --------------------------------------------------------------------------- setup
def test_float32_products_are_not_tf32():
    """cuBLAS and cuDNN give true float32 products here (the fixture turned TF32 off):
    simulated TF32 rounding gives a relative error of ~3e-4 on these, float32 ~6e-7."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(256, 1024, generator=g).double()
    b = torch.randn(1024, 256, generator=g).double()
    want = a @ b  # a and b are float32 values: only the product's rounding differs
    got = (a.float().to(DEVICE) @ b.float().to(DEVICE)).cpu().double()
    err = float((got - want).abs().max() / want.abs().max())
    assert err < 2e-5, f"float32 matmul relative error {err:.2e}: TF32 still on?"
    x = torch.randn(4, 1024, 8, 8, generator=g).double()
    w = torch.randn(64, 1024, 1, 1, generator=g).double()
    want = F.conv2d(x, w)
    got = F.conv2d(x.float().to(DEVICE), w.float().to(DEVICE)).cpu().double()
    err = float((got - want).abs().max() / want.abs().max())
    assert err < 5e-5, f"float32 1x1 convolution relative error {err:.2e}: TF32 still on?"


# --------------------------------------------------------------------------- grams, HSIC
@pytest.mark.parametrize("dtype", BOTH)
def test_gram_and_centring(dtype):
    x, _ = related(0, n=30, p=6)
    t = dev(x, dtype)
    k = repsim.gram(t)
    assert isinstance(k, torch.Tensor) and k.device == t.device and k.dtype == dtype
    ref = repsim.gram(x)
    close(k.cpu().numpy() / np.abs(ref).max(), ref / np.abs(ref).max(), dtype)
    r = repsim.gram(t, kernel="rbf", sigma=2.5)
    assert r.device == t.device and r.dtype == torch.float64
    close(r.cpu().numpy(), repsim.gram(x, kernel="rbf", sigma=2.5), dtype)
    for fn in (repsim.centre_gram, repsim.ucentre_gram):
        c = fn(k)
        assert c.device == t.device and c.dtype == torch.float64
        close(c.cpu().numpy() / np.abs(ref).max(), fn(ref) / np.abs(ref).max(), dtype)
    sigma = repsim.median_sigma(t, threshold=0.5)
    assert isinstance(sigma, float)
    assert sigma == pytest.approx(repsim.median_sigma(x, threshold=0.5),
                                  rel=1e-10 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("dtype", BOTH)
def test_hsic(dtype, estimator):
    x, y = related(1, n=30)
    k, l = x @ x.T, y @ y.T
    want = repsim.hsic(k, l, estimator=estimator)
    tk, tl = dev(k, dtype), dev(l, dtype)
    got = repsim.hsic(tk, tl, estimator=estimator)
    assert isinstance(got, torch.Tensor) and got.ndim == 0 and got.dtype == torch.float64
    assert got.device == tk.device
    scale = np.sqrt(repsim.hsic(k, k, estimator=estimator) * repsim.hsic(l, l, estimator=estimator))
    close(float(got) / scale, want / scale, dtype)  # HSIC in units of its CKA normaliser
    close(float(repsim.hsic(tk, tk, estimator=estimator)) / scale, repsim.hsic(k, k, estimator=estimator) / scale,
          dtype)


# --------------------------------------------------------------------------- cka
CKA_CASES = [
    dict(kernel="linear", estimator="biased", method="gram"),
    dict(kernel="linear", estimator="biased", method="features"),
    dict(kernel="linear", estimator="biased"),  # auto: features here (p, q << n)
    dict(kernel="linear", estimator="unbiased"),
    dict(kernel="rbf", estimator="biased", sigma=4.0),
    dict(kernel="rbf", estimator="unbiased", sigma=4.0),
    dict(kernel="rbf", estimator="biased", threshold=0.7),  # median heuristic
]


@pytest.mark.parametrize("opts", CKA_CASES, ids=lambda o: "-".join(map(str, o.values())))
@pytest.mark.parametrize("dtype", BOTH)
def test_cka(dtype, opts):
    x, y = related(2)
    tx, ty = dev(x, dtype), dev(y, dtype)
    check_scalar(repsim.cka(tx, ty, **opts), tx, repsim.cka(x, y, **opts), dtype)
    # conv-shaped input is flattened the same way on the device
    x4 = x.reshape(60, 2, 2, 2)
    check_scalar(repsim.cka(dev(x4, dtype), ty, **opts), tx, repsim.cka(x4, y, **opts), dtype)
    assert float(repsim.cka(tx, tx, **opts)) == pytest.approx(1.0, abs=1e-9)


def test_cka_constant_side_is_nan_on_device():
    x, _ = related(3, n=20)
    for dtype in DTYPES:
        flat = dev(np.ones((20, 4)), dtype)
        for method in ("gram", "features"):
            with pytest.warns(DegenerateRepresentationWarning, match="'y'"):
                value = repsim.cka(dev(x, dtype), flat, method=method)
            assert value.device == flat.device and torch.isnan(value)


@pytest.mark.skipif(ON_CPU, reason="numba runs on CPU tensors")
def test_numba_engine_refuses_device_tensors():
    x, y = related(4, n=10)
    with pytest.raises(TypeError, match="engine='numba'"):
        repsim.cka(dev(x, torch.float32), dev(y, torch.float32), engine="numba")


# --------------------------------------------------------------------------- cka_matrix
@pytest.mark.parametrize("opts", [
    dict(),
    dict(estimator="unbiased"),
    dict(kernel="rbf", sigma=3.0),
    dict(kernel="rbf", estimator="unbiased", threshold=0.8),
], ids=["linear", "unbiased", "rbf-sigma", "rbf-median-unbiased"])
@pytest.mark.parametrize("dtype", BOTH)
def test_cka_matrix(dtype, opts):
    xs, ys = layers(5), layers(6)
    want = repsim.cka_matrix(xs, **opts)
    got = repsim.cka_matrix(devs(xs, dtype), **opts)
    assert isinstance(got, xr.DataArray) and isinstance(got.values, np.ndarray)
    assert got.dims == ("layer_a", "layer_b") and list(got.layer_a.values) == list(xs)
    close(got.values, want.values, dtype)
    check_attrs(got.attrs, want.attrs, dtype)
    across = repsim.cka_matrix(devs(xs, dtype), devs(ys, dtype), **opts)
    close(across.values, repsim.cka_matrix(xs, ys, **opts).values, dtype)


@pytest.mark.parametrize("dtype", BOTH)
def test_cka_matrix_constant_layer(dtype):
    xs = layers(7, n=24)
    xs["flat"] = np.full((24, 5), 3.0)
    with pytest.warns(DegenerateRepresentationWarning, match="flat"):
        want = repsim.cka_matrix(xs, estimator="unbiased")
    with pytest.warns(DegenerateRepresentationWarning, match="flat"):
        got = repsim.cka_matrix(devs(xs, dtype), estimator="unbiased")
    assert np.isnan(got.sel(layer_a="flat")).all() and np.isnan(got.sel(layer_b="flat")).all()
    close(got.values, want.values, dtype)


# --------------------------------------------------------------------------- reference values
@pytest.mark.parametrize("dtype", BOTH)
def test_reference_values_on_device(dtype):
    """Kornblith et al.'s demo data (tests/test_reference_values.py) through the device."""
    x, y = kornblith_demo()
    tx, ty = dev(x, dtype), dev(y, dtype)
    for opts, value in [
        (dict(method="gram"), 0.55761),
        (dict(method="features"), 0.55761),
        (dict(estimator="unbiased"), 0.51346),
        (dict(kernel="rbf", threshold=0.5), 0.65483),
    ]:
        got = repsim.cka(tx, ty, **opts)
        assert got.device == tx.device
        assert float(got) == pytest.approx(value, abs=5e-6), opts
    assert float(repsim.cka_matrix([tx], [ty])[0, 0]) == pytest.approx(0.55761, abs=5e-6)
    acc = repsim.MinibatchCKA()
    acc.update([tx], [ty])
    assert float(acc.compute()[0, 0]) == pytest.approx(0.51346, abs=5e-6)
    assert repsim.median_sigma(tx, threshold=0.5) == pytest.approx(
        0.5 * np.sqrt(np.median(np.sum((x[:, None] - x[None]) ** 2, axis=-1))), rel=1e-6)
    # the CCA demo values of repsim.cca's docstring
    uncentred = repsim.cca(tx, ty, summary="mean_squared", centre=False)
    assert float(uncentred) == pytest.approx(0.54312, abs=5e-6)
    assert float(repsim.cca(tx, ty, summary="mean_squared")) == pytest.approx(0.54540, abs=5e-6)


# --------------------------------------------------------------------------- MinibatchCKA
def batches(seed, sizes=(16, 16, 16, 16, 11)):
    """Activations of two models over a few batches (the last one ragged)."""
    r = np.random.default_rng(seed)
    wa, wb = r.standard_normal((10, 12)), r.standard_normal((10, 9))
    out = []
    for n in sizes:
        x = r.standard_normal((n, 10))
        a = {"in": x, "mid": np.tanh(x @ wa).reshape(n, 3, 2, 2),
             "noise": r.standard_normal((n, 5))}
        b = {"h": np.tanh(x @ wb) + 0.5 * r.standard_normal((n, 9)), "lin": x[:, :4] * 2.0}
        out.append((a, b))
    return out


MB_CASES = [
    (dict(groups=3), False),
    (dict(estimator="biased", groups=3), True),
    (dict(kernel="rbf", sigma=4.0, groups=2), True),
    (dict(kernel="rbf", threshold=0.8), False),  # bandwidths calibrated on the first batch
]


@pytest.mark.parametrize("opts,across", MB_CASES, ids=["unbiased", "biased-across",
                                                       "rbf-sigma-across", "rbf-median"])
@pytest.mark.parametrize("dtype", BOTH)
def test_minibatch_cka(dtype, opts, across):
    data = batches(8)
    want, got = repsim.MinibatchCKA(**opts), repsim.MinibatchCKA(**opts)
    for a, b in data:
        want.update(a, b if across else None)
        got.update(devs(a, dtype), devs(b, dtype) if across else None)
    state = got.state_dict()
    for key in ("sum_ab", "sum_aa", "sum_bb") + (("group_ab",) if opts.get("groups") else ()):
        assert isinstance(state[key], torch.Tensor) and state[key].dtype == torch.float64
        assert state[key].device.type == torch.device(DEVICE).type
    w, g = want.compute(), got.compute()
    assert isinstance(g, xr.DataArray) and isinstance(g.values, np.ndarray)
    close(g.values, w.values, dtype)
    assert g.attrs["n_examples"] == 75 and g.attrs["n_batches"] == 5
    check_attrs(g.attrs, w.attrs, dtype)
    if opts.get("groups"):
        g_ds, w_ds = got.compute(uncertainty=True), want.compute(uncertainty=True)
        check_dataset(g_ds, w_ds, dtype, atol32=5e-5)
        # an interval for a function of the whole matrix, from the leave-one-group-out ones
        gi = repsim.jackknife_interval(g_ds, lambda m: np.nanmean(np.diag(m)))
        wi = repsim.jackknife_interval(w_ds, lambda m: np.nanmean(np.diag(m)))
        close([gi.estimate, gi.stderr, gi.ci_low, gi.ci_high],
              [wi.estimate, wi.stderr, wi.ci_low, wi.ci_high], dtype, atol32=5e-5)


@pytest.mark.parametrize("dtype", BOTH)
def test_minibatch_grams_merge_and_transform(dtype):
    data = batches(9)
    want = repsim.MinibatchCKA(groups=2)
    for a, b in data:
        want.update(a, b)
    # update_grams with the device grams x x^T gives what update gives
    from_grams = repsim.MinibatchCKA(groups=2)
    for a, b in data:
        from_grams.update_grams(linear_grams(a, dtype), linear_grams(b, dtype))
    close(from_grams.compute().values, want.compute().values, dtype)
    check_dataset(from_grams.compute(uncertainty=True), want.compute(uncertainty=True), dtype,
                  atol32=5e-5)
    # merging two device accumulators over halves of the batches is exact
    first, second = repsim.MinibatchCKA(), repsim.MinibatchCKA()
    whole = repsim.MinibatchCKA()
    for i, (a, b) in enumerate(data):
        (first if i < 2 else second).update(devs(a, dtype), devs(b, dtype))
        whole.update(devs(a, dtype), devs(b, dtype))
    merged = first.merge(second)
    np.testing.assert_allclose(merged.compute().values, whole.compute().values, rtol=1e-12,
                               atol=1e-14)
    assert merged.state_dict()["sum_ab"].device == whole.state_dict()["sum_ab"].device
    # a transform (top PC removed per batch) runs on the device
    opts = dict(transform=functools.partial(repsim.remove_top_pcs, k=1))
    want_t, got_t = repsim.MinibatchCKA(**opts), repsim.MinibatchCKA(**opts)
    for a, _ in data:
        want_t.update(a)
        got_t.update(devs(a, dtype))
    close(got_t.compute().values, want_t.compute().values, dtype, atol32=2e-5)


# --------------------------------------------------------------------------- CCA family
@pytest.mark.parametrize("dtype", BOTH)
def test_cca_family(dtype):
    x, y = related(10, n=80, p=8, q=12, noise=1.0)
    tx, ty = dev(x, dtype), dev(y, dtype)
    rho = repsim.canonical_correlations(tx, ty)
    assert isinstance(rho, torch.Tensor) and rho.device == tx.device and rho.dtype == torch.float64
    close(rho.cpu().numpy(), repsim.canonical_correlations(x, y), dtype)
    rho_u = repsim.canonical_correlations(tx, ty, centre=False)
    close(rho_u.cpu().numpy(), repsim.canonical_correlations(x, y, centre=False), dtype)
    for summary in ("mean", "mean_squared"):
        check_scalar(repsim.cca(tx, ty, summary=summary), tx, repsim.cca(x, y, summary=summary), dtype)
        check_scalar(repsim.cca(tx, ty, summary=summary, centre=False), tx,
                     repsim.cca(x, y, summary=summary, centre=False), dtype)
    keeps = [5, (4, 6), 1] + ([0.99, (0.9, 7)] if dtype == torch.float64 else [])
    for keep in keeps:
        check_scalar(repsim.svcca(tx, ty, keep=keep), tx, repsim.svcca(x, y, keep=keep), dtype)
    check_scalar(repsim.svcca(tx, ty, keep=5, summary="mean_squared"), tx,
                 repsim.svcca(x, y, keep=5, summary="mean_squared"), dtype)
    for side in ("x", "y", "smaller"):
        check_scalar(repsim.pwcca(tx, ty, side=side), tx, repsim.pwcca(x, y, side=side), dtype)
    check_scalar(repsim.pwcca(tx, ty, centre=False), tx, repsim.pwcca(x, y, centre=False), dtype)


@pytest.mark.parametrize("dtype", BOTH)
def test_cca_rank_deficient_and_underdetermined(dtype):
    r = np.random.default_rng(11)
    x = r.standard_normal((40, 5))
    x = np.c_[x, x[:, :2] @ r.standard_normal((2, 3))]  # 8 columns of rank 5
    y = x[:, :3] @ r.standard_normal((3, 4)) + 0.2 * r.standard_normal((40, 4))
    tx, ty = dev(x, dtype), dev(y, dtype)
    rho = repsim.canonical_correlations(tx, ty)
    assert rho.shape == (4,)  # min(rank 5, rank 4)
    close(rho.cpu().numpy(), repsim.canonical_correlations(x, y), dtype)
    check_scalar(repsim.pwcca(tx, ty), tx, repsim.pwcca(x, y), dtype)
    wide = r.standard_normal((10, 8))
    with pytest.warns(UnderdeterminedCCAWarning):
        other = wide[:, ::-1] + r.standard_normal((10, 8))
        value = repsim.cca(dev(wide, dtype), dev(other, dtype))
    assert value.device == tx.device


# --------------------------------------------------------------------------- principal components
@pytest.mark.parametrize("dtype", BOTH)
def test_pcs(dtype):
    r = np.random.default_rng(12)
    # well separated component variances (so the top PCs are stable to float32 rounding)
    x = r.standard_normal((50, 4, 2, 2)) * (4.0 * 0.7 ** np.arange(16)).reshape(1, 4, 2, 2)
    x = x + 0.5
    t = dev(x, dtype)
    for k in (1, 3):
        check_scalar(repsim.pc_variance_fraction(t, k=k), t, repsim.pc_variance_fraction(x, k=k),
                     dtype)
    for k in (0, 1, 2):
        out = repsim.remove_top_pcs(t, k=k)
        assert isinstance(out, torch.Tensor) and out.device == t.device
        assert out.dtype == dtype and out.shape == t.shape
        close(out.cpu().numpy(), repsim.remove_top_pcs(x, k=k), dtype)


@pytest.mark.parametrize("dtype", BOTH)
def test_dominant_examples(dtype):
    r = np.random.default_rng(13)
    x = r.standard_normal((120, 8))
    direction = r.standard_normal(8)
    direction /= np.linalg.norm(direction)
    x[[7, 30, 99]] += np.array([40.0, -30.0, 20.0])[:, None] * direction
    t = dev(x, dtype)
    want, got = repsim.dominant_examples(x, top=3), repsim.dominant_examples(t, top=3)
    assert isinstance(got.indices, np.ndarray) and isinstance(got.scores, np.ndarray)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.keep, want.keep)
    assert isinstance(got.share, float) and isinstance(got.pc1_fraction, float)
    close(got.share, want.share, dtype)
    close(got.pc1_fraction, want.pc1_fraction, dtype)
    sign = np.sign(got.scores @ want.scores)  # the sign of a principal component is arbitrary
    close(sign * got.scores / 40.0, want.scores / 40.0, dtype)
    acts = {"x": t, "other": dev(r.standard_normal((120, 2, 3)), dtype)}
    kept = got.exclude(acts)
    for name, a in kept.items():
        assert isinstance(a, torch.Tensor) and a.device == t.device and a.dtype == dtype
        assert a.shape[0] == 117
        np.testing.assert_array_equal(a.cpu().numpy(), acts[name].cpu().numpy()[want.keep])


# --------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("dtype", BOTH)
def test_bootstrap(dtype):
    xs = layers(14, n=30)
    opts = dict(n_resamples=12, progress=False, seed=3)
    # cka_matrix: the gram path (centred grams indexed per resample on the device)
    want = repsim.bootstrap(repsim.cka_matrix, xs, estimator="unbiased", **opts)
    got = repsim.bootstrap(repsim.cka_matrix, devs(xs, dtype), estimator="unbiased", **opts)
    check_dataset(got, want, dtype)
    # cka: the gram path (unbiased) and the feature path (recomputed per resample)
    x, y = xs["a"], xs["noise"]
    tx, ty = dev(x, dtype), dev(y, dtype)
    for kw in (dict(estimator="unbiased"), dict(kernel="rbf", sigma=3.0), dict()):
        check_dataset(repsim.bootstrap(repsim.cka, tx, ty, **kw, **opts),
                      repsim.bootstrap(repsim.cka, x, y, **kw, **opts), dtype)
    # any other measure is recomputed on each resample: here on the device
    check_dataset(repsim.bootstrap(repsim.svcca, tx, ty, keep=4, **opts),
                  repsim.bootstrap(repsim.svcca, x, y, keep=4, **opts), dtype)


@pytest.mark.parametrize("dtype", BOTH)
def test_permutation_test(dtype):
    x, y = related(15, n=40, p=5, q=30, noise=2.0)
    opts = dict(n_permutations=30, progress=False, seed=1)
    want = repsim.permutation_test(x, y, **opts)
    got = repsim.permutation_test(dev(x, dtype), dev(y, dtype), **opts)
    # p-values count ties with the observed value and z divides by the null's spread:
    # compared exactly for float64 only
    exact = None if dtype == torch.float64 else ["cka", "chance", "calibrated", "null_mean",
                                                 "null_std"]
    check_dataset(got, want, dtype, variables=exact)
    xs = layers(16, n=30)
    want = repsim.permutation_test(xs, estimator="unbiased", **opts)
    got = repsim.permutation_test(devs(xs, dtype), estimator="unbiased", **opts)
    check_dataset(got, want, dtype, variables=exact)
    assert np.all(got.chance.values == 0.0)


# --------------------------------------------------------------------------- compare_models
COMPARED = ["stem.conv", "stem", "stage*.block*", "pool", "fc"]


def test_compare_models_on_device_matches_cpu():
    """A small ResNet (float32) on the device against the same model on the CPU."""
    torch.manual_seed(0)
    net, other = repsim.models.cifar_resnet(8, 1), repsim.models.cifar_resnet(8, 1)
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(12, 3, 16, 16, generator=g) for _ in range(3)]
    labelled = [(x, torch.zeros(12, dtype=torch.long)) for x in data]
    want = repsim.compare_models(net, None, data, COMPARED, progress=False)
    want2 = repsim.compare_models(net, other, labelled, COMPARED, COMPARED, progress=False,
                                  statistics=repsim.StatisticsOptions(groups=3))
    assert next(net.parameters()).device.type == "cpu"
    got = repsim.compare_models(net, None, data, COMPARED, progress=False, device=DEVICE)
    assert next(net.parameters()).device.type == torch.device(DEVICE).type
    got2 = repsim.compare_models(net, other, labelled, COMPARED, COMPARED, progress=False,
                                 statistics=repsim.StatisticsOptions(groups=3), device=DEVICE)
    assert next(other.parameters()).device.type == torch.device(DEVICE).type
    assert isinstance(got, xr.DataArray) and isinstance(got.values, np.ndarray)
    assert list(got.layer_a.values) == list(want.layer_a.values)
    assert len(got.layer_a) == 7
    np.testing.assert_allclose(got.values, want.values, rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.diag(got.values), 1.0, atol=1e-6)
    for key in ("n_examples", "n_batches", "estimator", "kernel", "within_model"):
        assert got.attrs[key] == want.attrs[key]
    assert isinstance(got2, xr.Dataset) and got2.attrs["n_groups"] == 3
    # the intervals scale the jackknife error by t(0.95, 2 df) = 2.9: a looser bound
    for name, atol in (("cka", 1e-4), ("stderr", 1e-4), ("jackknife", 1e-4), ("ci_low", 4e-4),
                       ("ci_high", 4e-4)):
        np.testing.assert_allclose(got2[name].values, want2[name].values, rtol=0, atol=atol)


@pytest.mark.skipif(ON_CPU, reason="the reduced precisions' device paths need CUDA")
@pytest.mark.parametrize("precision", ["tf32", "bfloat16"])
def test_reduced_precision_on_device(precision):
    """precision='tf32'/'bfloat16' on the device: within the stated bounds of float64,
    recorded in the attrs, the global TF32 flag left as it was, and a device without the
    units warned about."""
    from repsim import _precision

    rng = np.random.default_rng(3)
    x = np.maximum(rng.standard_normal((256, 3000)) + 0.3, 0.0) + 50.0
    y = np.tanh(x[:, :600] @ rng.standard_normal((600, 200)) / 30.0)
    ref = float(repsim.cka(x, y, estimator="unbiased"))
    before = torch.backends.cuda.matmul.allow_tf32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", repsim.PrecisionWarning)
        got = repsim.cka(dev(x, torch.float32), dev(y, torch.float32), estimator="unbiased",
                         precision=precision)
        mat = repsim.cka_matrix({"x": dev(x, torch.float32), "y": dev(y, torch.float32)},
                                precision=precision)
    assert torch.backends.cuda.matmul.allow_tf32 == before
    assert got.device.type == "cuda"
    assert abs(float(got) - ref) <= _precision.bf16_cka_bound(200)
    assert mat.attrs["precision"] == precision
    assert abs(float(mat.values[0, 1]) - float(repsim.cka(x, y))) <= _precision.bf16_cka_bound(200)
    info = repsim.precision_support(DEVICE)
    assert info["device"].startswith("cuda") and info[precision] == (
        torch.cuda.get_device_capability(DEVICE)[0] >= 8)


def test_narrow_storage_converted_on_the_device_as_on_the_cpu():
    """extract's float16 storage narrows on the device before the copy: the same bits as
    numpy's cast, and an overflow found after the copy is refused naming the layer."""
    from repsim.adapters._extract_io import host_arrays, to_host

    rng = np.random.default_rng(3)
    x = (rng.standard_normal((8, 64)) * 10.0 ** rng.integers(-8, 4, (8, 64))).astype(np.float32)
    sent, event = to_host({"a": torch.from_numpy(x).to(DEVICE)}, 8, np.dtype(np.float16))
    got = host_arrays(sent, event, np.dtype(np.float16))["a"]
    np.testing.assert_array_equal(got.view(np.uint16), x.astype(np.float16).view(np.uint16))
    big = torch.tensor([[1.0, 7e4]], device=DEVICE)
    with pytest.raises(ValueError, match="layer 'b' holds values up to 7e\\+04, beyond float16"):
        sent, event = to_host({"b": big}, 1, np.dtype(np.float16))
        host_arrays(sent, event, np.dtype(np.float16))
