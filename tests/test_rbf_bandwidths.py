"""RBF CKA at any bandwidth: far above the spread (the gram near a constant) and far below
it (every off-diagonal value tiny), on every path, against RBF CKA written in long double.

Before: a bandwidth 10^7 times the spread was 2e-5 off (the gram ``exp(-D / 2 sigma^2)``
kept ~1e-14 of its centred part) and at 10^8 the layer was called constant; the unbiased
estimator at sigma a few times below the distances was 2% off (0.979 for 0.99999998) and
NaN further down, with numpy's 'invalid value' warning; the streamed path lost the
off-diagonal sum under the diagonal's (``1'K~1 = t - tr K``).

References written here: the grams from explicit pairwise distances in long double
(80-bit on x86, exponents to -4951): ``exp(-D / 2 sigma^2)`` below the spread, and
``expm1(-D / 2 sigma^2)`` (the gram less 1; both estimators ignore a constant) above it.
"""

import math
import warnings

import numpy as np
import pytest
import torch

import repsim
from repsim.kernels import RBF_SHIFT, RBF_UNSCALED_LIMIT
from test_store_stream import _hsic_u

N = 40


def data(seed=0):
    """Two related layers of different spreads (y's distances ~8x x's)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, 6))
    y = x @ rng.standard_normal((6, 6)) * 3.0 + 0.2 * rng.standard_normal((N, 6))
    return x, y


def ref_cka(x, y, sigma, estimator):
    """RBF CKA from the definition in long double; ``sigma`` None: ``sqrt(median)`` of all
    ``n^2`` squared distances (zero diagonal included), per side."""
    def gram(z):
        z = z.reshape(len(z), -1).astype(np.longdouble)
        d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
        s = np.sqrt(np.median(d2)) if sigma is None else np.longdouble(sigma)
        a = d2 / (2 * s * s)
        return np.expm1(-a) if s > rms(z) else np.exp(-a)

    k, m = gram(x), gram(y)
    if estimator == "unbiased":
        return float(_hsic_u(k, m) / np.sqrt(_hsic_u(k, k) * _hsic_u(m, m)))
    h = np.eye(len(k), dtype=np.longdouble) - np.longdouble(1) / len(k)
    kc, mc = h @ k @ h, h @ m @ h
    return float((kc * mc).sum() / np.sqrt((kc * kc).sum() * (mc * mc).sum()))


def rms(z):
    """Root mean squared distance between the rows."""
    z = np.asarray(z, dtype=np.float64)
    return math.sqrt(2.0 * ((z - z.mean(0)) ** 2).sum() / len(z))


def smallest_exponent(z, sigma):
    """min over i != j of D_ij / (2 sigma^2): the largest off-diagonal value is exp(-it)."""
    d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    return d2[~np.eye(len(z), dtype=bool)].min() / (2 * sigma ** 2)


def quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no numpy 'invalid value' either
        return fn(*a, **k)


def paths(x, y, sigma, estimator, store=None):
    out = {"cka": float(quiet(repsim.cka, x, y, kernel="rbf", sigma=sigma, estimator=estimator)),
           "cka_matrix": float(quiet(repsim.cka_matrix, {"x": x}, {"y": y}, kernel="rbf",
                                     sigma=sigma, estimator=estimator).values[0, 0]),
           "numba": float(quiet(repsim.cka_matrix, {"x": x}, {"y": y}, kernel="rbf",
                                sigma=sigma, estimator=estimator, engine="numba").values[0, 0]),
           "torch": float(quiet(repsim.cka, torch.from_numpy(x), torch.from_numpy(y),
                                kernel="rbf", sigma=sigma, estimator=estimator))}
    big = max(smallest_exponent(x, sigma), smallest_exponent(y, sigma))
    if estimator == "biased" or big <= RBF_UNSCALED_LIMIT:  # sums over batches/blocks
        acc = repsim.MinibatchCKA(kernel="rbf", sigma=sigma, estimator=estimator)
        acc.update({"x": x}, {"y": y})
        out["minibatch"] = float(quiet(acc.compute).values[0, 0])
        if store is not None:
            sim = quiet(repsim.similarity_matrix, store, kernel="rbf", sigma=sigma,
                        estimator=estimator, batch_size=16, progress=False)
            out["store"] = float(np.asarray(sim)[0, 1])
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    pytest.importorskip("zarr")
    from test_store_stream import write_store

    x, y = data()
    return write_store(tmp_path_factory.mktemp("rbf") / "s.zarr", {"x": x, "y": y}, chunk=16)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("ratio", [0.03, 0.06, 0.1, 0.25, 0.5, 1.0, 3.0, 1e3, 1e6, 1e9, 1e30])
def test_every_path_equals_long_double_at_any_bandwidth(store, estimator, ratio):
    """sigma = ratio x the root mean squared distance of x (y's spread is ~8x larger,
    so its off-diagonal values lie far below 2**-64 at the smaller ratios)."""
    x, y = data()
    sigma = ratio * rms(x)
    ref = ref_cka(x, y, sigma, estimator)
    got = paths(x, y, sigma, estimator, store)
    if ratio <= 0.1:
        assert smallest_exponent(y, sigma) > RBF_SHIFT  # the rescaled regime is exercised
    for path, value in got.items():
        assert value == pytest.approx(ref, rel=1e-10, abs=1e-12), (path, value, ref)


def test_bandwidth_far_above_the_spread_tends_to_linear_cka():
    """As sigma -> inf, K - 1 ~ -D / (2 sigma^2) and the centred RBF gram is the linear
    one: RBF CKA -> linear CKA at rate sigma^-2, with no digits lost on the way."""
    x, y = data(1)
    for estimator in ("biased", "unbiased"):
        lin = float(repsim.cka(x, y, estimator=estimator))
        gaps = [abs(float(repsim.cka(x, y, kernel="rbf", sigma=s * rms(x), estimator=estimator))
                    - lin) for s in (1e2, 1e3, 1e4)]
        assert gaps[1] / gaps[0] == pytest.approx(1e-2, rel=0.05)
        assert gaps[2] / gaps[1] == pytest.approx(1e-2, rel=0.05)
        far = float(repsim.cka(x, y, kernel="rbf", sigma=1e12 * rms(x), estimator=estimator))
        assert far == pytest.approx(lin, abs=1e-14)


def test_unbiased_sums_refuse_values_below_2_to_minus_300_one_batch_rescales(store):
    x, y = data()
    sigma = rms(x) / 80  # x's largest off-diagonal value ~ exp(-290)
    assert smallest_exponent(x, sigma) > RBF_UNSCALED_LIMIT
    ref = ref_cka(x, y, sigma, "unbiased")
    assert float(repsim.cka(x, y, kernel="rbf", sigma=sigma, estimator="unbiased")) == \
        pytest.approx(ref, rel=1e-9)
    acc = repsim.MinibatchCKA(kernel="rbf", sigma=sigma, estimator="unbiased")
    with pytest.raises(ValueError, match=r"acts_a\['x'\].*below 2\*\*-300"):
        acc.update({"x": x}, {"y": y})
    with pytest.raises(ValueError, match=r"layers_a\['x'\].*below 2\*\*-300"):
        repsim.similarity_matrix(store, kernel="rbf", sigma=sigma, estimator="unbiased",
                                 batch_size=16, progress=False)
    # the biased estimator needs no rescaling (the diagonal, 1, dominates): still defined
    acc = repsim.MinibatchCKA(kernel="rbf", sigma=sigma, estimator="biased")
    acc.update({"x": x}, {"y": y})
    assert float(acc.compute().values[0, 0]) == pytest.approx(ref_cka(x, y, sigma, "biased"),
                                                              abs=1e-12)


def test_bandwidth_beyond_float64_is_refused_not_called_constant():
    x, y = data()
    with pytest.raises(ValueError, match="exceeds the spread.*1e144.*underflows"):
        repsim.cka(x, y, kernel="rbf", sigma=1e160)


def test_gram_is_still_the_plain_rbf_gram():
    """repsim.gram returns exp(-D / 2 sigma^2) itself (the shifted form is internal)."""
    x, _ = data()
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    for sigma in (0.05, 1.0, 1e5):
        np.testing.assert_allclose(repsim.gram(x, kernel="rbf", sigma=sigma),
                                   np.exp(-d2 / (2 * sigma ** 2)), rtol=1e-12, atol=1e-300)


def _u_centred(k):
    n = len(k)
    k = k.copy()
    np.fill_diagonal(k, 0)
    r, t = k.sum(1), k.sum()
    u = k - r[:, None] / (n - 2) - r[None, :] / (n - 2) + t / ((n - 1) * (n - 2))
    np.fill_diagonal(u, 0)
    return u


@pytest.mark.parametrize("n,d", [(5, 2000), (6, 500), (8, 4000)])
def test_small_batches_with_concentrated_distances_keep_their_digits(n, d):
    """Few examples in many dimensions: every distance near the mean, the smallest above
    (n-1)/n of it. The subtracted constant is the *off-diagonal* mean, never above the
    largest value (with the all-entries mean it swamped every entry: NaN or a
    math range error). Reference: the exactly rescaled gram exp(-(D - min D) / 2 sigma^2)
    (the unbiased estimator ignores the diagonal and a common factor)."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, d))
    y = x + 0.3 * rng.standard_normal((n, d))

    def rescaled(z, s):
        dz = ((z[:, None] - z[None]) ** 2).sum(-1)
        return np.exp(-(dz - dz[~np.eye(n, dtype=bool)].min()) / (2 * s * s))

    dx = ((x[:, None] - x[None]) ** 2).sum(-1)
    smallest = dx[~np.eye(n, dtype=bool)].min()
    for f in (50, 200, 1000):  # min D / 2 sigma^2
        s = math.sqrt(smallest / 2 / f)
        a, b = _u_centred(rescaled(x, s)), _u_centred(rescaled(y, s))
        ref = (a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())
        for engine in ("numpy", "numba"):
            got = quiet(repsim.cka_matrix, {"x": x}, {"y": y}, kernel="rbf", sigma=s,
                        estimator="unbiased", engine=engine).values[0, 0]
            assert float(got) == pytest.approx(ref, rel=1e-9), (f, engine)


def test_minibatch_of_small_batches_with_concentrated_distances():
    """Sums over batches (no rescale): min D / 2 sigma^2 = 120 in batches of 6 was NaN
    (the constant above every value); the reference rescales every batch by one factor."""
    rng = np.random.default_rng(3)
    n, d = 6, 3000
    xs = [rng.standard_normal((n, d)) for _ in range(3)]
    ys = [x + 0.5 * rng.standard_normal((n, d)) for x in xs]
    d0 = ((xs[0][:, None] - xs[0][None]) ** 2).sum(-1)
    s = math.sqrt(d0[~np.eye(n, dtype=bool)].min() / 2 / 120)
    acc = repsim.MinibatchCKA(kernel="rbf", estimator="unbiased", sigma=s)
    num = da = db = 0.0
    for x, y in zip(xs, ys):
        acc.update({"x": x}, {"y": y})
        a, b = (_u_centred(np.exp(-(((z[:, None] - z[None]) ** 2).sum(-1) / (2 * s * s) - 120)))
                for z in (x, y))
        num, da, db = num + (a * b).sum(), da + (a * a).sum(), db + (b * b).sum()
    assert float(quiet(acc.compute).values[0, 0]) == pytest.approx(num / math.sqrt(da * db),
                                                                  rel=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_equidistant_examples_are_nan_for_unbiased_rbf(dtype):
    """Orthogonal rows of equal norm that are not exact in binary (3.7 Q): one RBF value
    between all pairs, U(K) = 0; the RBF gram less a constant is pure rounding then, so
    the test is taken on the linear gram (U(D^2) = -2 U(k)). Was -0.012 for float32."""
    q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((64, 64)))
    x = (3.7 * q[:32]).astype(dtype)
    y = np.random.default_rng(3).standard_normal((32, 5)).astype(dtype)
    with pytest.warns(repsim.DegenerateRepresentationWarning, match="'x'"):
        assert np.isnan(repsim.cka(x, y, kernel="rbf", estimator="unbiased"))


def test_minibatch_values_stay_in_the_estimators_range():
    """Biased RBF CKA of two layers whose grams are both nearly the identity (sigma below
    the spread) rounds to just above 1 (1.000000000000001 before); MinibatchCKA clips to
    [0, 1] like repsim.cka."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 8))
    y = x @ rng.standard_normal((8, 8)) + 0.1 * rng.standard_normal((60, 8))
    for sigma in (0.15, 0.05):
        acc = repsim.MinibatchCKA(kernel="rbf", sigma=sigma, estimator="biased")
        acc.update({"x": x}, {"y": y})
        v = float(acc.compute().values[0, 0])
        assert 0.0 <= v <= 1.0 and v == pytest.approx(ref_cka(x, y, sigma, "biased"), abs=1e-14)
