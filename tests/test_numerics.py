"""Numbers that survive hostile input (issue 11.1): offsets, scales, dtypes, byte orders.

The reference is always the float64 computation on the *same* stored values (the float32
data upcast), so the tests measure repsim's arithmetic, not the rounding of the data.
"""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import repsim
from repsim._validation import DegenerateRepresentationWarning
from repsim.kernels import linear_gram, scaled_centred_gram

HYP = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def issue_pair(n=200, p=400, q=300, seed=0):
    """The issue's example: y a noisy nonlinear function of part of x."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p))
    y = np.tanh(x[:, :q] + 0.5 * rng.standard_normal((n, q)))
    return x, y


def all_paths(x, y, **kw):
    """CKA of one pair through the features/gram path, cka_matrix and MinibatchCKA."""
    out = {"cka": float(repsim.cka(x, y, **kw))}
    mkw = {k: v for k, v in kw.items() if k != "method"}
    out["cka_matrix"] = float(repsim.cka_matrix({"x": x}, {"y": y}, **mkw).values[0, 0])
    acc = repsim.MinibatchCKA(**mkw)  # one batch: the same estimate as the full-data one
    acc.update({"x": x}, {"y": y})
    out["minibatch"] = float(acc.compute().values[0, 0])
    return out


def as_f32(a, lib):
    if lib == "numpy>":  # big-endian float32, as read from FITS / netCDF-3 / HDF5
        return a.astype(">f4")
    a = a.astype(np.float32)
    return torch.from_numpy(a) if lib == "torch" else a


def upcast(a):
    return a.double() if isinstance(a, torch.Tensor) else a.astype(np.float64)  # native order


# --------------------------------------------------------------------------- the issue's cases


@pytest.mark.parametrize("offset", [100.0, 300.0, 2000.0, 1e4])
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_offset_float32_matches_float64_on_every_path(offset, estimator):
    # before: 0.6268 instead of 0.6305 at offset 100, NaN with a false warning at 300
    x, y = issue_pair()
    x32, y32 = (x + offset).astype(np.float32), (y + offset).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateRepresentationWarning)
        got = all_paths(x32, y32, estimator=estimator)
    ref = float(repsim.cka(x32.astype(np.float64), y32.astype(np.float64), estimator=estimator))
    for path, value in got.items():
        assert value == pytest.approx(ref, abs=1e-5), path


def test_linear_layer_with_bias_300_and_stuck_channels():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((256, 64))
    w = rng.standard_normal((64, 128)) / 8
    h32 = (x @ w + 300.0).astype(np.float32)  # a Linear layer with bias 300
    ref = float(repsim.cka(x, h32.astype(np.float64), estimator="unbiased"))
    assert float(repsim.cka(x.astype(np.float32), h32, estimator="unbiased")) == pytest.approx(ref, abs=1e-5)
    wide = rng.standard_normal((1000, 768)).astype(np.float32)
    wide[:, [5, 77]] = 2000.0  # two channels stuck at 2000
    other = np.tanh(wide.astype(np.float64)[:, :100]).astype(np.float32)
    ref = float(repsim.cka(wide.astype(np.float64), other.astype(np.float64), estimator="unbiased"))
    assert float(repsim.cka(wide, other, estimator="unbiased")) == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("scale", [1e-38, 1e-25, 1e-22, 1e-20, 1e20, 1e30])
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_tiny_and_huge_float32_scales(scale, estimator):
    # before: x 1e-22 wrong, 1e-25 NaN; 1e20 overflowed the float32 gram
    x, y = issue_pair(n=60, p=40, q=30)
    x32, y32 = (x * scale).astype(np.float32), (y * scale).astype(np.float32)
    ref = float(repsim.cka(x32.astype(np.float64), y32.astype(np.float64), estimator=estimator,
                           method="gram"))
    got = all_paths(x32, y32, estimator=estimator, method="gram")
    got["features"] = float(repsim.cka(x32, y32, estimator=estimator, method="features")) \
        if estimator == "biased" else ref
    for path, value in got.items():
        assert value == pytest.approx(ref, abs=1e-5), path


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("scale", [1e-160, 1e-100, 1e100, 1e150])
def test_float64_extreme_scales_in_single_shot_measures(scale, lib):
    # before: float64 x 1e-160 gave NaN (the squares underflow)
    x, y = issue_pair(n=50, p=20, q=15)
    if lib == "torch":
        x, y = torch.from_numpy(x), torch.from_numpy(y)
    ref = float(repsim.cka(x, y))
    for method in ("gram", "features"):
        assert float(repsim.cka(x * scale, y * scale, method=method)) == pytest.approx(ref, abs=1e-12)
    assert float(repsim.cka(x * scale, y * scale, estimator="unbiased")) == pytest.approx(
        float(repsim.cka(x, y, estimator="unbiased")), abs=1e-12)
    assert repsim.cka_matrix([x * scale], [y * scale]).values[0, 0] == pytest.approx(ref, abs=1e-12)
    assert float(repsim.cka(x * scale, y * scale, kernel="rbf")) == pytest.approx(
        float(repsim.cka(x, y, kernel="rbf")), abs=1e-12)
    sim = repsim.cka_matrix([x * scale], [y * scale], kernel="rbf", threshold=0.5)
    assert sim.attrs["sigma_a"][0] == pytest.approx(scale * repsim.median_sigma(x, threshold=0.5), rel=1e-12)
    assert repsim.median_sigma(x * scale) == pytest.approx(scale * repsim.median_sigma(x), rel=1e-12)


def test_float64_extreme_scale_in_an_accumulator_is_refused_clearly():
    x, y = issue_pair(n=50, p=20, q=15)
    acc = repsim.MinibatchCKA()
    with pytest.raises(ValueError, match=r"acts_a\['x'\].*rescale"):
        acc.update({"x": x * 1e-160}, {"y": y * 1e-160})
    with pytest.raises(ValueError, match="cannot be represented in float64.*rescale x"):
        linear_gram(x * 1e-160, np)


def test_rbf_large_bandwidth_and_offset_float32():
    x, y = issue_pair(n=120, p=50, q=40)
    for sigma in (None, 1e3, 1e5):
        ref = float(repsim.cka(x, y, kernel="rbf", sigma=sigma))
        with warnings.catch_warnings():
            warnings.simplefilter("error", DegenerateRepresentationWarning)
            got = float(repsim.cka(x.astype(np.float32), y.astype(np.float32), kernel="rbf", sigma=sigma))
        assert got == pytest.approx(ref, abs=1e-4)
    x32, y32 = (x + 1e4).astype(np.float32), (y + 1e4).astype(np.float32)
    ref = float(repsim.cka(x32.astype(np.float64), y32.astype(np.float64), kernel="rbf"))
    # before: "median squared distance ... 0.0; pass sigma explicitly" (cancellation)
    assert float(repsim.cka(x32, y32, kernel="rbf")) == pytest.approx(ref, abs=1e-5)
    assert repsim.median_sigma(x32) == pytest.approx(repsim.median_sigma(x32.astype(np.float64)), rel=1e-5)


def test_constant_layers_still_caught_at_any_offset():
    rng = np.random.default_rng(3)
    y = rng.standard_normal((40, 5)).astype(np.float32)
    for value in (0.0, 1.0, 300.0, 1e4, 3.3e7):
        const = np.full((40, 6), value, dtype=np.float32)
        with pytest.warns(DegenerateRepresentationWarning, match="'x'"):
            assert np.isnan(float(repsim.cka(const, y, method="gram")))
        with pytest.warns(DegenerateRepresentationWarning, match="'x'"):
            assert np.isnan(float(repsim.cka(const.astype(np.float64), y, method="features")))


def test_gram_error_bound_is_that_of_the_centred_data():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((100, 64))
    for offset in (0.0, 1e3, 1e4):
        x32 = (x + offset).astype(np.float32)
        x64 = x32.astype(np.float64)
        c = x64 - x64.mean(axis=0)
        exact = c @ c.T
        k, e, dmax = scaled_centred_gram(x32, np)
        assert e == 0 and dmax == pytest.approx(np.max(np.diag(exact)), rel=1e-3)
        p, eps = x.shape[1], np.finfo(np.float32).eps
        norms = np.sqrt(np.diag(exact))
        # the documented bound p * eps * |x_ci| |x_cj|, plus the per-column rounding of
        # the float32 means (below eps * |mean_j| per entry: a row shift of norm <= d)
        d = np.sqrt(p := x.shape[1]) * np.finfo(np.float32).eps * np.abs(x64.mean(axis=0)).max()
        ni = np.sqrt(np.diag(exact))
        bound = p * np.finfo(np.float32).eps * np.outer(ni, ni) + 2 * d * (ni[:, None] + ni[None, :]) + d * d
        assert np.all(np.abs(k - exact) <= bound)


# --------------------------------------------------------------------------- property tests


@HYP
@given(
    offset=st.sampled_from([0.0, 1.0, 50.0, 1e3, 1e4]),
    log_scale=st.integers(-20, 20),
    width=st.sampled_from([3, 17, 64]),
    estimator=st.sampled_from(["biased", "unbiased"]),
    kernel=st.sampled_from(["linear", "rbf"]),
    lib=st.sampled_from(["numpy", "torch", "numpy>"]),
    seed=st.integers(0, 2**16),
)
def test_float32_cka_within_1e4_of_float64(offset, log_scale, width, estimator, kernel, lib, seed):
    rng = np.random.default_rng(seed)
    n = 48
    x = rng.standard_normal((n, width))
    y = np.tanh(x[:, : max(1, width // 2)] + 0.5 * rng.standard_normal((n, max(1, width // 2))))
    scale = 10.0 ** log_scale
    # offsets in units of the data's spread (std 1 before scaling)
    x32, y32 = as_f32((x + offset) * scale, lib), as_f32((y + offset) * scale, lib)
    kw = dict(estimator=estimator, kernel=kernel)
    ref = float(repsim.cka(upcast(x32), upcast(y32), **kw))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateRepresentationWarning)
        got = all_paths(x32, y32, **kw)
        if kernel == "linear" and estimator == "biased":
            got["features"] = float(repsim.cka(x32, y32, method="features"))
    for path, value in got.items():
        assert value == pytest.approx(ref, abs=1e-4), (path, value, ref)


@HYP
@given(offset=st.sampled_from([0.0, 1e2, 1e4]), log_scale=st.integers(-20, 20),
       seed=st.integers(0, 2**16), lib=st.sampled_from(["numpy", "torch"]))
def test_minibatch_float32_ragged_batches_match_float64(offset, log_scale, seed, lib):
    rng = np.random.default_rng(seed)
    scale = 10.0 ** log_scale
    batches = []
    for n in (30, 30, 11):
        a = rng.standard_normal((n, 12))
        batches.append(((a + offset) * scale, (np.tanh(a[:, :6]) + offset) * scale))

    def run(cast):
        acc = repsim.MinibatchCKA()
        for a, b in batches:
            acc.update({"a": cast(a)}, {"b": cast(b)})
        return float(acc.compute().values[0, 0])

    ref = run(lambda a: upcast(as_f32(a, lib)))
    assert run(lambda a: as_f32(a, lib)) == pytest.approx(ref, abs=1e-4)


@pytest.mark.parametrize("bias", [300.0, 2000.0])
def test_compare_models_float32_with_a_large_bias(bias):
    # before: a Linear layer with bias 300 gave NaN in float32 (0.875 in float64)
    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 32))
    with torch.no_grad():
        model[2].bias.fill_(bias)  # the layer's output: offset ``bias`` against a spread ~0.3
    data = torch.randn(192, 20)
    loader = [(data[i:i + 64],) for i in range(0, 192, 64)]
    kw = dict(layers_a=["0", "2"], progress=False,
              capture=repsim.CaptureOptions(forward=lambda m, b: m(b[0])))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateRepresentationWarning)
        got = repsim.compare_models(model, None, loader, **kw)
    model64 = model.double()
    loader64 = [(b[0].double(),) for b in loader]
    want = repsim.compare_models(model64, None, loader64, **kw)
    np.testing.assert_allclose(got.values, want.values, atol=1e-4)
    assert not np.isnan(got.values).any()
