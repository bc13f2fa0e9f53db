"""Uncertainty of similarities: intervals, permutation null, seeds, minibatch RBF CKA.

Coverage tests draw a few hundred seeded data sets in a setting with a closed-form
population CKA: ``x ~ N(0, I_p)``, ``y = x + e`` with ``e ~ N(0, I_p)`` gives
``Sigma_xy = I``, ``Sigma_yy = 2 I`` and linear CKA ``||Sigma_xy||_F^2 /
(||Sigma_xx||_F ||Sigma_yy||_F) = 1/2`` for every ``p``.
"""

import itertools
import math
import warnings

import numpy as np
import pytest
import xarray as xr

import repsim
from repsim import stats

POP_CKA = 0.5


def pair(rng, n, p):
    x = rng.standard_normal((n, p))
    return x, x + rng.standard_normal((n, p))


# ----------------------------------------------------------------- Student t
def test_student_t_matches_scipy():
    sp = pytest.importorskip("scipy.stats")
    for df in [1, 2, 3, 4.5, 9, 30, 250]:
        for q in [0.005, 0.05, 0.5, 0.95, 0.975, 0.995]:
            assert stats.t_quantile(q, df) == pytest.approx(sp.t.ppf(q, df), rel=1e-12, abs=1e-12)
        t = np.array([0.0, 0.3, 1.7, 4.0, 25.0])
        np.testing.assert_allclose(stats.t_two_sided_p(t, df), 2 * sp.t.sf(t, df), rtol=1e-9, atol=1e-14)
    assert stats.t_quantile(0.95, np.inf) == pytest.approx(sp.norm.ppf(0.95))


# ----------------------------------------------------------------- bootstrap
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_bootstrap_gram_path_equals_recomputing_on_each_subsample(rng, estimator, kernel):
    """Indexing the centred grams gives what cka_matrix gives on the subsampled data."""
    xs = {"a": rng.standard_normal((40, 5)), "b": rng.standard_normal((40, 3, 2)),
          "c": rng.standard_normal((40, 7))}
    xs["c"][:, :5] += xs["a"]
    ys = {"u": rng.standard_normal((40, 4)) + xs["a"][:, :4], "v": rng.standard_normal((40, 6))}
    opts = dict(kernel=kernel, estimator=estimator, sigma=2.5 if kernel == "rbf" else None)
    kw = dict(n_resamples=12, seed=3, progress=False)

    def slow(a, b, **o):  # not repsim.cka_matrix itself: takes the generic path
        return repsim.cka_matrix(a, b, **o)

    for b in (ys, None):
        fast = repsim.bootstrap(repsim.cka_matrix, xs, b, **opts, **kw)
        ref = repsim.bootstrap(slow, xs, b, **opts, **kw)
        for var in ("cka", "stderr", "ci_low", "ci_high"):
            np.testing.assert_allclose(fast[var].values, ref[var].values, atol=1e-10)
        assert list(fast.layer_b.values) == (["u", "v"] if b is not None else ["a", "b", "c"])


def test_bootstrap_scalar_cka_and_attrs(rng):
    x, y = pair(rng, 120, 4)
    ds = repsim.bootstrap(repsim.cka, x, y, estimator="unbiased", n_resamples=50, level=0.8,
                          seed=1, progress=False)
    assert ds.cka.shape == ()
    assert float(ds.cka) == pytest.approx(float(repsim.cka(x, y, estimator="unbiased")))
    assert float(ds.ci_low) < float(ds.cka) < float(ds.ci_high)
    assert ds.attrs["n_resamples"] == 50 and ds.attrs["level"] == 0.8
    assert ds.attrs["subsample_size"] == 60 and ds.attrs["estimate"] == "cka"
    again = repsim.bootstrap(repsim.cka, x, y, estimator="unbiased", n_resamples=50, level=0.8,
                             seed=1, progress=False)
    xr.testing.assert_identical(ds, again)  # same seed, same result
    other = repsim.bootstrap(repsim.cka, x, y, estimator="unbiased", n_resamples=50, level=0.8,
                             seed=2, progress=False)
    assert float(other.ci_low) != float(ds.ci_low)


def test_bootstrap_interval_coverage_near_nominal():
    """90% intervals of unbiased linear CKA cover the population value 1/2 in 85-95% of
    200 seeded draws (measured: 0.91; n=100, p=3)."""
    rng = np.random.default_rng(123)
    draws, covered = 200, 0
    for d in range(draws):
        x, y = pair(rng, 100, 3)
        ds = repsim.bootstrap(repsim.cka, x, y, estimator="unbiased", n_resamples=100, seed=d,
                              progress=False)
        covered += float(ds.ci_low) <= POP_CKA <= float(ds.ci_high)
    assert 0.85 <= covered / draws <= 0.95


def test_bootstrap_generic_measure_scalar_and_array(rng):
    x, y = pair(rng, 80, 3)

    def mean_abs_corr(a, b):
        c = np.corrcoef(a.T, b.T)[: a.shape[1], a.shape[1]:]
        return float(np.mean(np.abs(np.diag(c))))

    ds = repsim.bootstrap(mean_abs_corr, x, y, n_resamples=30, progress=False)
    assert set(ds.data_vars) == {"mean_abs_corr", "stderr", "ci_low", "ci_high"}
    assert ds.attrs["estimate"] == "mean_abs_corr"
    assert float(ds.ci_low) < float(ds.mean_abs_corr) < float(ds.ci_high)

    def per_column(a, b):
        return np.abs(np.sum(a * b, axis=0)) / a.shape[0]

    ds = repsim.bootstrap(per_column, x, y, n_resamples=30, progress=False)
    assert ds.per_column.dims == ("dim_0",) and ds.stderr.shape == (3,)


def test_bootstrap_cca_family_measure(rng):
    cca_family = pytest.importorskip("repsim.cca_family")
    x, y = pair(rng, 150, 4)
    ds = repsim.bootstrap(cca_family.cca, x, y, n_resamples=20, progress=False)
    est = ds[ds.attrs["estimate"]]
    assert float(ds.ci_low) <= float(est) <= float(ds.ci_high)
    assert float(ds.stderr) > 0


def test_bootstrap_torch_matches_numpy(rng):
    torch = pytest.importorskip("torch")
    xs = {"a": rng.standard_normal((30, 4)), "b": rng.standard_normal((30, 6))}
    ref = repsim.bootstrap(repsim.cka_matrix, xs, estimator="unbiased", n_resamples=10, progress=False)
    got = repsim.bootstrap(repsim.cka_matrix, {k: torch.from_numpy(v) for k, v in xs.items()},
                           estimator="unbiased", n_resamples=10, progress=False)
    for var in ("cka", "ci_low", "ci_high"):
        np.testing.assert_allclose(got[var].values, ref[var].values, atol=1e-10)


def test_bootstrap_constant_layer_is_nan_with_warning(rng):
    xs = {"a": rng.standard_normal((30, 4)), "flat": np.ones((30, 3))}
    with pytest.warns(repsim._validation.DegenerateRepresentationWarning, match="flat"):
        ds = repsim.bootstrap(repsim.cka_matrix, xs, n_resamples=10, progress=False)
    assert np.isnan(ds.ci_low.sel(layer_a="flat")).all()
    assert np.isfinite(ds.ci_low.sel(layer_a="a", layer_b="a"))


# ----------------------------------------------------------------- permutation null
def _all_permutation_mean(x, y, estimator):
    vals = [float(repsim.cka(x, y[list(p)], estimator=estimator, method="gram"))
            for p in itertools.permutations(range(x.shape[0]))]
    return float(np.mean(vals))


def test_chance_level_is_the_exact_permutation_expectation(rng):
    """Averaged over all 720 orderings of n=6 examples: biased CKA -> the closed form,
    unbiased CKA -> exactly 0."""
    x, y = rng.standard_normal((6, 3)), rng.standard_normal((6, 5))
    ds = repsim.permutation_test(x, y, n_permutations=10, progress=False)
    assert float(ds.chance) == pytest.approx(_all_permutation_mean(x, y, "biased"), rel=1e-10)
    kx = repsim.centre_gram(x @ x.T)
    ky = repsim.centre_gram(y @ y.T)
    rank = [np.trace(k) ** 2 / np.sum(k * k) for k in (kx, ky)]
    assert float(ds.chance) == pytest.approx(math.sqrt(rank[0] * rank[1]) / 5, rel=1e-10)
    du = repsim.permutation_test(x, y, estimator="unbiased", n_permutations=10, progress=False)
    assert float(du.chance) == 0.0
    assert _all_permutation_mean(x, y, "unbiased") == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_permutation_null_is_centred_where_theory_says(estimator):
    rng = np.random.default_rng(5)
    xs = {"narrow": rng.standard_normal((60, 5)), "wide": rng.standard_normal((60, 400))}
    ys = {"y": rng.standard_normal((60, 50))}
    ds = repsim.permutation_test(xs, ys, estimator=estimator, n_permutations=300, progress=False)
    tol = 4 * ds.null_std / math.sqrt(300)
    assert (abs(ds.null_mean - ds.chance) < tol).all()
    if estimator == "unbiased":
        assert (ds.chance == 0).all()
    else:  # wider layers have a higher chance level
        chance = ds.chance.sel(layer_b="y")
        assert float(chance.sel(layer_a="wide")) > float(chance.sel(layer_a="narrow")) + 0.3


def test_biased_cka_inflation_numbers_in_the_notes():
    """The table in repsim.stats' notes: independent Gaussians, n=100."""
    expected = {10: (0.0943, 0.0896), 100: (0.5152, 0.5020), 1000: (0.9098, 0.9084),
                10000: (0.9903, 0.9903)}
    for p, (biased, chance) in expected.items():
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((100, p)), rng.standard_normal((100, p))
        ds = repsim.permutation_test(x, y, n_permutations=10, progress=False)
        assert float(ds.cka) == pytest.approx(biased, abs=6e-5)
        assert float(ds.chance) == pytest.approx(chance, abs=6e-5)
        assert abs(float(repsim.cka(x, y, estimator="unbiased"))) < 0.03


def test_permutation_detects_dependence_and_calibrates(rng):
    x, y = pair(rng, 80, 4)
    noise = rng.standard_normal((80, 4))
    ds = repsim.permutation_test({"x": x}, {"y": y, "noise": noise}, n_permutations=99,
                                 seed=1, progress=False)
    assert float(ds.p_value.sel(layer_a="x", layer_b="y")) == pytest.approx(0.01)
    assert float(ds.p_value.sel(layer_a="x", layer_b="noise")) > 0.05
    assert float(ds.calibrated.sel(layer_a="x", layer_b="y")) > 0.3
    same = repsim.permutation_test(x, n_permutations=10, progress=False)  # x vs shuffled x
    assert float(same.cka) == pytest.approx(1.0) and float(same.calibrated) == pytest.approx(1.0)


def test_permutation_torch_matches_numpy(rng):
    torch = pytest.importorskip("torch")
    x, y = pair(rng, 25, 3)
    ref = repsim.permutation_test(x, y, n_permutations=20, progress=False)
    got = repsim.permutation_test(torch.from_numpy(x), torch.from_numpy(y), n_permutations=20,
                                  progress=False)
    for var in ("cka", "chance", "null_mean", "p_value"):
        assert float(got[var]) == pytest.approx(float(ref[var]), abs=1e-12)


# ----------------------------------------------------------------- seeds
def test_aggregate_seeds_dataarrays():
    rng = np.random.default_rng(2)
    vals = rng.uniform(size=(4, 2, 3))
    results = [repsim.results.similarity_array(v, ["a", "b"], ["u", "v", "w"], {"kernel": "linear"})
               for v in vals]
    ds = repsim.aggregate_seeds(results, level=0.95)
    np.testing.assert_allclose(ds["mean"].values, vals.mean(0))
    np.testing.assert_allclose(ds["std"].values, vals.std(0, ddof=1))
    half = stats.t_quantile(0.975, 3) * vals.std(0, ddof=1) / 2
    np.testing.assert_allclose(ds.ci_high.values - ds["mean"].values, half)
    assert list(ds.layer_a.values) == ["a", "b"] and ds.attrs["n_seeds"] == 4
    assert ds.attrs["kernel"] == "linear"
    stacked = xr.concat(results, dim="seed")
    xr.testing.assert_allclose(repsim.aggregate_seeds(stacked, level=0.95), ds)


def test_compare_seeds_welch_matches_scipy():
    sp = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(4)
    a = rng.normal(0.8, 0.02, size=(5, 3))
    b = rng.normal(0.78, 0.05, size=(4, 3))
    b[:, 2] = rng.normal(0.6, 0.05, size=4)
    ds = repsim.compare_seeds(list(a), list(b))
    ref = sp.ttest_ind(a, b, equal_var=False)
    np.testing.assert_allclose(ds.t.values, ref.statistic)
    np.testing.assert_allclose(ds.p_value.values, ref.pvalue, rtol=1e-8)
    assert bool(ds.differs[2]) and ds.attrs["test"] == "welch"
    np.testing.assert_allclose(ds.difference.values, a.mean(0) - b.mean(0))


def test_compare_seeds_permutation_exact_and_no_difference():
    ds = repsim.compare_seeds([0.80, 0.82, 0.81], [0.70, 0.69, 0.72], test="permutation")
    assert float(ds.p_value) == pytest.approx(2 / 20)  # the two extreme splits of 20
    rng = np.random.default_rng(9)
    same = repsim.compare_seeds(list(rng.normal(0.5, 0.05, 6)), list(rng.normal(0.5, 0.05, 6)))
    assert not bool(same.differs)
    assert float(same.ci_low) < 0 < float(same.ci_high)


def test_seed_helpers_bad_input():
    a = repsim.results.similarity_array(np.eye(2), ["a", "b"], ["a", "b"])
    b = repsim.results.similarity_array(np.eye(2), ["a", "c"], ["a", "c"])
    with pytest.raises(ValueError, match="at least 2 seeds"):
        repsim.compare_seeds([a], [a, a])
    with pytest.raises(ValueError, match="share their coordinates"):
        repsim.compare_seeds([a, a], [b, b])
    with pytest.raises(ValueError, match="test must be one of"):
        repsim.compare_seeds([1, 2], [1, 2], test="t")
    with pytest.raises(ValueError, match="one shape"):
        repsim.aggregate_seeds([np.zeros(2), np.zeros(3)])
    with pytest.raises(TypeError, match="list of per-seed results"):
        repsim.aggregate_seeds(np.zeros(3))
    with pytest.raises(ValueError, match="'seed' dimension"):
        repsim.aggregate_seeds(a)


# ----------------------------------------------------------------- minibatch uncertainty
def _feed(acc, rng, batches, n, p):
    for _ in range(batches):
        x, y = pair(rng, n, p)
        acc.update({"x": x, "z": rng.standard_normal((n, 2))}, {"y": y})


def test_minibatch_uncertainty_estimate_is_the_plain_one(rng):
    plain, grouped = repsim.MinibatchCKA(), repsim.MinibatchCKA(groups=4)
    for _ in range(9):
        x, y = pair(rng, 20, 3)
        plain.update({"x": x}, {"y": y})
        grouped.update({"x": x}, {"y": y})
    ds = grouped.compute(uncertainty=True, level=0.8)
    xr.testing.assert_identical(grouped.compute(), plain.compute())
    np.testing.assert_array_equal(ds.cka.values, plain.compute().values)
    assert ds.attrs["n_groups"] == 4 and ds.attrs["level"] == 0.8
    np.testing.assert_array_equal(grouped.state_dict()["group_batches"], [3, 2, 2, 2])


def test_minibatch_jackknife_matches_direct_leave_one_group_out(rng):
    acc = repsim.MinibatchCKA(groups=3)
    parts = [repsim.MinibatchCKA() for _ in range(3)]
    for t in range(6):
        x, y = pair(rng, 16, 3)
        acc.update({"x": x}, {"y": y})
        parts[t % 3].update({"x": x}, {"y": y})
    loo = []
    for g in range(3):
        rest = repsim.MinibatchCKA()
        for h in range(3):
            if h != g:
                rest.merge(parts[h])
        loo.append(float(rest.compute()[0, 0]))
    se = math.sqrt(2 / 3 * np.sum((np.array(loo) - np.mean(loo)) ** 2))
    ds = acc.compute(uncertainty=True)
    assert float(ds.stderr[0, 0]) == pytest.approx(se, rel=1e-10)
    half = stats.t_quantile(0.95, 2) * se
    assert float(ds.ci_high[0, 0] - ds.cka[0, 0]) == pytest.approx(half, rel=1e-10)


def test_minibatch_interval_coverage_near_nominal():
    """90% jackknife intervals (10 groups, 20 batches of 32, p=3) cover the population CKA
    1/2 in 85-95% of 200 seeded draws (measured: 0.905)."""
    rng = np.random.default_rng(7)
    draws, covered = 200, 0
    for _ in range(draws):
        acc = repsim.MinibatchCKA(groups=10)
        for _ in range(20):
            x, y = pair(rng, 32, 3)
            acc.update({"x": x}, {"y": y})
        ds = acc.compute(uncertainty=True)
        covered += float(ds.ci_low[0, 0]) <= POP_CKA <= float(ds.ci_high[0, 0])
    assert 0.85 <= covered / draws <= 0.95


def test_minibatch_groups_merge_and_state_dict_exact(rng):
    whole, first, second = (repsim.MinibatchCKA(groups=3) for _ in range(3))
    batches = [pair(rng, 12, 3) for _ in range(7)]
    for t, (x, y) in enumerate(batches):
        whole.update({"x": x}, {"y": y})
        (first if t < 3 else second).update({"x": x}, {"y": y})
    # second's local batch counter restarts: its groups hold other batches, still disjoint
    merged = repsim.MinibatchCKA(groups=3).merge(first).merge(second)
    np.testing.assert_allclose(merged.compute().values, whole.compute().values, rtol=1e-13)
    assert merged.state_dict()["group_batches"].sum() == 7
    resumed = repsim.MinibatchCKA(groups=3)
    resumed.load_state_dict(whole.state_dict())
    xr.testing.assert_identical(resumed.compute(uncertainty=True), whole.compute(uncertainty=True))
    with pytest.raises(ValueError, match="groups"):
        repsim.MinibatchCKA().load_state_dict(whole.state_dict())
    with pytest.raises(ValueError, match="cannot merge"):
        whole.merge(_plain_with(batches))


def _plain_with(batches):
    acc = repsim.MinibatchCKA(groups=4)
    for x, y in batches:
        acc.update({"x": x}, {"y": y})
    return acc


def test_minibatch_set_group_pins_passes(rng):
    acc = repsim.MinibatchCKA(groups=2)
    for epoch in range(2):
        acc.set_group(epoch)
        _feed(acc, rng, 3, 16, 3)
    np.testing.assert_array_equal(acc.state_dict()["group_batches"], [3, 3])
    acc.set_group(None)
    _feed(acc, rng, 1, 16, 3)
    np.testing.assert_array_equal(acc.state_dict()["group_batches"], [4, 3])  # batch 6 -> 6 % 2
    with pytest.raises(ValueError, match="group must be in"):
        acc.set_group(2)
    with pytest.raises(ValueError, match="groups=G"):
        repsim.MinibatchCKA().set_group(0)


def test_minibatch_uncertainty_torch(rng):
    torch = pytest.importorskip("torch")
    ref, got = repsim.MinibatchCKA(groups=3), repsim.MinibatchCKA(groups=3)
    for _ in range(6):
        x, y = pair(rng, 16, 3)
        ref.update([x, y])
        got.update([torch.from_numpy(x), torch.from_numpy(y)])
    assert torch.is_tensor(got.state_dict()["group_ab"])
    np.testing.assert_allclose(got.compute(uncertainty=True).stderr.values,
                               ref.compute(uncertainty=True).stderr.values, rtol=1e-10)


def test_minibatch_uncertainty_needs_groups_and_two_of_them(rng):
    acc = repsim.MinibatchCKA()
    _feed(acc, rng, 2, 16, 3)
    with pytest.raises(ValueError, match="groups=G"):
        acc.compute(uncertainty=True)
    with pytest.raises(ValueError, match="groups must be an integer >= 2"):
        repsim.MinibatchCKA(groups=1)
    one = repsim.MinibatchCKA(groups=3)
    _feed(one, rng, 1, 16, 3)
    with pytest.warns(RuntimeWarning, match="at least 2 groups"):
        ds = one.compute(uncertainty=True)
    assert np.isnan(ds.stderr).all() and np.isfinite(ds.cka).all()


# ----------------------------------------------------------------- minibatch RBF CKA
def _rbf_data():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1200, 8))
    y = np.tanh(x @ rng.standard_normal((8, 6))) + 0.5 * rng.standard_normal((1200, 6))
    return x, y


def _full_unbiased_rbf(x, y, sx, sy):
    k, l = repsim.gram(x, kernel="rbf", sigma=sx), repsim.gram(y, kernel="rbf", sigma=sy)
    h = lambda a, b: float(repsim.hsic(a, b, estimator="unbiased"))  # noqa: E731
    return h(k, l) / math.sqrt(h(k, k) * h(l, l))


def test_minibatch_rbf_converges_to_full_data_rbf_cka():
    """With the bandwidth fixed at the full-data median heuristic, minibatch RBF CKA
    agrees with full-data (unbiased) RBF CKA to sampling error, closer as batches grow,
    and exactly when one batch holds all examples."""
    x, y = _rbf_data()
    sx, sy = repsim.median_sigma(x), repsim.median_sigma(y)
    full = _full_unbiased_rbf(x, y, sx, sy)
    err = {}
    for bs in (25, 100, 600, 1200):
        acc = repsim.MinibatchCKA(kernel="rbf", sigma={"x": sx, "y": sy})
        for i in range(0, 1200, bs):
            acc.update({"x": x[i:i + bs]}, {"y": y[i:i + bs]})
        res = acc.compute()
        assert res.attrs["sigma_a"] == pytest.approx([sx]) and res.attrs["sigma_b"] == pytest.approx([sy])
        err[bs] = abs(float(res[0, 0]) - full)
    assert err[1200] < 1e-12
    assert err[600] < 1e-3
    assert max(err.values()) < 0.005
    assert err[600] < err[25] and err[600] < err[100]


def test_minibatch_rbf_bandwidth_calibrated_once_on_the_first_batch():
    x, y = _rbf_data()
    acc = repsim.MinibatchCKA(kernel="rbf", threshold=0.8)
    for i in range(0, 1200, 100):
        acc.update({"x": x[i:i + 100]}, {"y": y[i:i + 100]})
    res = acc.compute()
    assert res.attrs["sigma_a"] == pytest.approx([repsim.median_sigma(x[:100], threshold=0.8)])
    assert res.attrs["sigma_b"] == pytest.approx([repsim.median_sigma(y[:100], threshold=0.8)])
    # never re-estimated: the same value after many batches; close to the full-data one
    assert acc.sigmas_a == pytest.approx([repsim.median_sigma(x[:100], threshold=0.8)])
    assert res.attrs["sigma_a"][0] == pytest.approx(repsim.median_sigma(x, threshold=0.8), rel=0.05)
    fixed = repsim.MinibatchCKA(kernel="rbf", sigma={"x": res.attrs["sigma_a"][0],
                                                      "y": res.attrs["sigma_b"][0]})
    for i in range(0, 1200, 100):
        fixed.update({"x": x[i:i + 100]}, {"y": y[i:i + 100]})
    assert float(fixed.compute()[0, 0]) == pytest.approx(float(res[0, 0]), rel=1e-12)


# ----------------------------------------------------------------- bad input
def test_bad_input_messages(rng):
    x, y = pair(rng, 20, 3)
    cases = [
        (dict(level=1.0), ValueError, "level must be a number strictly between 0 and 1"),
        (dict(n_resamples=5), ValueError, "n_resamples must be an integer >= 10"),
        (dict(fraction=1.5), ValueError, "fraction must be a float"),
        (dict(fraction=0.05), ValueError, "need 2 <= m < n"),
        (dict(interval="bca"), ValueError, "interval must be one of"),
    ]
    for kw, err, msg in cases:
        with pytest.raises(err, match=msg):
            repsim.bootstrap(repsim.cka, x, y, progress=False, **kw)
    with pytest.raises(ValueError, match="at least 4 examples"):
        repsim.bootstrap(repsim.cka, x[:7], y[:7], estimator="unbiased", progress=False)
    with pytest.raises(TypeError, match="measure must be callable"):
        repsim.bootstrap("cka", x, y)
    with pytest.raises(ValueError, match="same number of examples"):
        repsim.bootstrap(lambda a, b: 0.0, x, y[:10], progress=False)
    with pytest.raises(ValueError, match="same number of examples"):
        repsim.bootstrap(repsim.cka_matrix, [x], [y[:10]], progress=False)
    with pytest.raises(ValueError, match="n_permutations must be an integer >= 10"):
        repsim.permutation_test(x, y, n_permutations=5)
    with pytest.raises(ValueError, match="kernel must be one of"):
        repsim.permutation_test(x, y, kernel="poly", progress=False)
    with pytest.raises(ValueError, match="NaN or Inf"):
        bad = x.copy()
        bad[3, 1] = np.nan
        repsim.permutation_test(bad, y, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        repsim.permutation_test(x, y, n_permutations=10, progress=False)


# ----------------------------------------------------------------- plots
def test_plot_similarity_intervals_marks_entries_containing_threshold(rng):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    x, y = pair(rng, 100, 3)
    acts = {"x": x, "y": y, "noise": rng.standard_normal((100, 3))}
    ds = repsim.bootstrap(repsim.cka_matrix, acts, estimator="unbiased", n_resamples=30,
                          progress=False)
    ax = repsim.plot_similarity_intervals(ds, threshold=0.0)
    marked = {(int(r), int(c)) for c, r in ax.collections[0].get_offsets()}
    expected = {(int(r), int(c)) for r, c in zip(*np.nonzero(
        (ds.ci_low.values <= 0) & (ds.ci_high.values >= 0)))}
    assert marked == expected and (0, 1) not in marked and (0, 2) in marked
    plt.close("all")
    with pytest.raises(ValueError, match="ci_low and ci_high"):
        repsim.plot_similarity_intervals(ds.cka, threshold=0.5)


def test_plot_diagonal_band_maps_relative_depth(rng):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    est = np.linspace(0, 1, 12).reshape(3, 4)
    ds = xr.Dataset({"cka": (("layer_a", "layer_b"), est), "ci_low": (("layer_a", "layer_b"), est - 0.1),
                     "ci_high": (("layer_a", "layer_b"), est + 0.2)}, attrs={"estimate": "cka"})
    ax = repsim.plot_diagonal_band({"A vs B": ds, "seeds": repsim.aggregate_seeds([est, est + 0.1])})
    xs, ys = ax.lines[0].get_data()
    np.testing.assert_allclose(xs, [0, 0.5, 1])
    np.testing.assert_allclose(ys, [est[0, 0], est[1, 2], est[2, 3]])  # j = round(i * 3 / 2)
    segs = ax.collections[0].get_segments()
    np.testing.assert_allclose([s[:, 1] for s in segs], [[est[0, 0] - 0.1, est[0, 0] + 0.2],
                                                        [est[1, 2] - 0.1, est[1, 2] + 0.2],
                                                        [est[2, 3] - 0.1, est[2, 3] + 0.2]])
    plt.close("all")
    with pytest.raises(ValueError, match="x must be one of"):
        repsim.plot_diagonal_band(ds, x="layer")


def test_permutation_chunks_agree_and_p_values_are_calibrated(monkeypatch):
    """Under independence one-sided p-values are uniform: P(p <= 0.1) ~ 0.1 over 200 seeded
    draws; chunking the permuted grams changes nothing."""
    rng = np.random.default_rng(11)
    xs = {"a": rng.standard_normal((20, 3)), "b": rng.standard_normal((20, 30))}
    ys = {"u": rng.standard_normal((20, 4)), "v": rng.standard_normal((20, 2)), "w": rng.standard_normal((20, 9))}
    whole = repsim.permutation_test(xs, ys, n_permutations=20, progress=False)
    monkeypatch.setattr(stats.permutation, "_CHUNK_BYTES", 8 * 20 * 20 * 2)  # two layers per chunk
    xr.testing.assert_allclose(repsim.permutation_test(xs, ys, n_permutations=20, progress=False), whole)
    small = 0
    for d in range(200):
        x, y = rng.standard_normal((30, 4)), rng.standard_normal((30, 4))
        ds = repsim.permutation_test(x, y, estimator="unbiased", n_permutations=49, seed=d,
                                     progress=False)
        small += float(ds.p_value) <= 0.1
    assert 0.05 <= small / 200 <= 0.15


def test_bootstrap_cka_feature_path_agrees_with_gram_path(rng):
    """Linear biased CKA with few features is recomputed in feature space on each
    subsample (no n x n grams held); same subsamples, same intervals as the gram path."""
    x, y = pair(rng, 400, 3)
    gram_call = stats._common.gram_call
    assert gram_call(repsim.cka, (x, y), {}) is None  # recomputed: the feature path
    assert gram_call(repsim.cka, (x, y), {"method": "gram"}) is not None
    assert gram_call(repsim.cka, (x, y), {"estimator": "unbiased"}) is not None
    feat = repsim.bootstrap(repsim.cka, x, y, n_resamples=15, progress=False)
    gram = repsim.bootstrap(repsim.cka, x, y, method="gram", n_resamples=15, progress=False)
    for var in ("cka", "stderr", "ci_low", "ci_high"):
        assert float(feat[var]) == pytest.approx(float(gram[var]), abs=1e-12)
    assert feat.cka.dims == () and feat.attrs["estimate"] == "cka"
    assert feat.attrs["estimator"] == "biased" and feat.attrs["n"] == 400


def test_permutation_zero_gives_exact_chance_only(rng):
    xs = {"a": rng.standard_normal((40, 50)), "b": rng.standard_normal((40, 5))}
    ds = repsim.permutation_test(xs, n_permutations=0, progress=False)
    assert set(ds.data_vars) == {"cka", "chance", "calibrated"}
    full = repsim.permutation_test(xs, n_permutations=10, progress=False)
    xr.testing.assert_allclose(ds.chance, full.chance)
    np.testing.assert_allclose(ds.cka.values, repsim.cka_matrix(xs).values, rtol=1e-12)
    np.testing.assert_allclose(np.diag(ds.calibrated.values), 1.0)
    with pytest.raises(ValueError, match="n_permutations must be an integer >= 10"):
        repsim.permutation_test(xs, n_permutations=3)


def test_bootstrap_statistic_of_the_matrix(rng):
    """A derived quantity (diagonal-band mean, best match, block score) gets its interval
    from the same resamples; the fast gram path equals recomputation."""
    base = rng.standard_normal((60, 6))
    xs = {f"l{i}": base[:, : 6 - i] + 0.3 * i * rng.standard_normal((60, 6 - i)) for i in range(5)}

    def band_mean(sim):
        return float(np.mean(np.diag(sim.values, 1)))

    def best_match(sim):
        return sim.max("layer_b")

    def slow(a, **o):
        return repsim.cka_matrix(a, **o)

    kw = dict(n_resamples=12, seed=4, progress=False, estimator="unbiased")
    for stat in (band_mean, best_match, repsim.block_score):
        fast = repsim.bootstrap(repsim.cka_matrix, xs, statistic=stat, **kw)
        ref = repsim.bootstrap(slow, xs, statistic=stat, **kw)
        xr.testing.assert_allclose(fast, ref)
        assert fast.attrs["statistic"] == stat.__name__
    ds = repsim.bootstrap(repsim.cka_matrix, xs, statistic=band_mean, **kw)
    assert ds.attrs["estimate"] == "band_mean" and ds.band_mean.shape == ()
    assert float(ds.band_mean) == pytest.approx(band_mean(repsim.cka_matrix(xs, estimator="unbiased")))
    ds = repsim.bootstrap(repsim.cka_matrix, xs, statistic=best_match, **kw)
    assert ds.attrs["estimate"] == "cka" and ds.cka.dims == ("layer_a",)
    x, y = pair(rng, 80, 3)
    sq = repsim.bootstrap(repsim.cka, x, y, statistic=np.square, n_resamples=12, progress=False,
                          estimator="unbiased")
    assert float(sq.square) == pytest.approx(float(repsim.cka(x, y, estimator="unbiased")) ** 2)
    with pytest.raises(TypeError, match="statistic must be callable"):
        repsim.bootstrap(repsim.cka_matrix, xs, statistic="max", progress=False)


def test_seed_helpers_take_uncertainty_datasets(rng):
    per_seed = []
    for seed in range(3):
        acc = repsim.MinibatchCKA(groups=2)
        _feed(acc, np.random.default_rng(seed), 4, 16, 3)
        per_seed.append(acc.compute(uncertainty=True))
    agg = repsim.aggregate_seeds(per_seed)
    np.testing.assert_allclose(agg["mean"].values, np.mean([d.cka.values for d in per_seed], axis=0))
    assert list(agg.layer_b.values) == ["y"]
    with pytest.raises(TypeError, match="'estimate' attribute"):
        repsim.aggregate_seeds([xr.Dataset({"v": 1.0})])


# --------------------------------------------------------------------------- jackknife of a statistic
def _three_layer_run(rng, groups=5, batches=10, transform=None, seed=0):
    local = np.random.default_rng(seed)
    acc = repsim.MinibatchCKA(groups=groups, transform=transform)
    for _ in range(batches):
        x = local.standard_normal((32, 6))
        acc.update({"x": x, "y": x + local.standard_normal((32, 6)), "z": local.standard_normal((32, 4))})
    return acc.compute(uncertainty=True)


def test_jackknife_interval_of_one_entry_is_the_entrywise_interval(rng):
    ds = _three_layer_run(rng)
    assert ds["jackknife"].dims == ("group", "layer_a", "layer_b") and ds.sizes["group"] == 5
    iv = repsim.jackknife_interval(ds, lambda m: m[0, 1])
    assert iv.estimate == pytest.approx(float(ds.cka[0, 1]), rel=1e-12)
    assert iv.stderr == pytest.approx(float(ds.stderr[0, 1]), rel=1e-10)
    assert (iv.ci_low, iv.ci_high) == pytest.approx((float(ds.ci_low[0, 1]), float(ds.ci_high[0, 1])), rel=1e-10)
    assert iv.level == 0.9 and iv.n_groups == 5


def test_jackknife_interval_matches_the_formula_and_pairs_results(rng):
    ds = _three_layer_run(rng)
    stat = lambda m: m[0, 1] - np.mean([m[0, 2], m[1, 2]])  # noqa: E731
    reps = np.array([stat(m) for m in ds["jackknife"].values])
    se = math.sqrt(4 / 5 * np.sum((reps - reps.mean()) ** 2))
    iv = repsim.jackknife_interval(ds, stat, level=0.8)
    assert iv.stderr == pytest.approx(se, rel=1e-12)
    assert iv.ci_high - iv.estimate == pytest.approx(stats.t_quantile(0.9, 4) * se, rel=1e-12)
    # paired: the difference of a result with itself has no spread; vector statistics keep their shape
    same = repsim.jackknife_interval([ds, ds], lambda a, b: stat(a) - stat(b))
    assert same.estimate == 0.0 and same.stderr == 0.0
    vec = repsim.jackknife_interval(ds, lambda m: np.diag(m, 1))
    np.testing.assert_allclose(vec.stderr, [float(ds.stderr[0, 1]), float(ds.stderr[1, 2])], rtol=1e-10)
    # a PC-removal run on the same batches pairs with the plain run
    nopc = _three_layer_run(rng, transform=lambda a: repsim.remove_top_pcs(a, k=1))
    paired = repsim.jackknife_interval([ds, nopc], lambda a, b: a[0, 1] - b[0, 1])
    assert paired.estimate == pytest.approx(float(ds.cka[0, 1] - nopc.cka[0, 1]), rel=1e-12)


def test_jackknife_interval_bad_input(rng):
    ds = _three_layer_run(rng)
    with pytest.raises(ValueError, match="no leave-one-group-out"):
        repsim.jackknife_interval(ds.drop_vars("jackknife"), lambda m: m[0, 1])
    with pytest.raises(ValueError, match="different numbers of groups"):
        repsim.jackknife_interval([ds, _three_layer_run(rng, groups=4)], lambda a, b: a[0, 1])
    with pytest.raises(ValueError, match="at least one"):
        repsim.jackknife_interval([], lambda m: m)
    with pytest.raises(ValueError, match="level"):
        repsim.jackknife_interval(ds, lambda m: m[0, 1], level=1.5)


# ----------------------------------------------------------------- any measure, own namespaces
def test_bootstrap_partial_cka_takes_the_gram_path(rng):
    """functools.partial(repsim.cka, ...) is recognised by the fast-path hook: same values
    as repsim.cka with the options as keywords, and as recomputing on every subsample."""
    import functools

    x, y = pair(rng, 60, 4)
    kw = dict(n_resamples=12, seed=2, progress=False)
    rbf = functools.partial(repsim.cka, kernel="rbf", estimator="unbiased", sigma=3.0)
    assert stats._common.gram_call(rbf, (x, y), {}) is not None
    fast = repsim.bootstrap(rbf, data=(x, y), **kw)
    assert fast.attrs["kernel"] == "rbf" and list(fast.attrs["sigma_a"]) == [3.0]  # gram path

    def slow(a, b):  # the same computation, not recognised: recomputed per subsample
        return repsim.cka(a, b, kernel="rbf", estimator="unbiased", sigma=3.0)

    ref = repsim.bootstrap(slow, data=(x, y), **kw)
    old = repsim.bootstrap(repsim.cka, x, y, kernel="rbf", estimator="unbiased", sigma=3.0, **kw)
    for var in ("stderr", "ci_low", "ci_high"):
        assert float(fast[var]) == pytest.approx(float(ref[var]), abs=1e-12)
        assert float(fast[var]) == float(old[var])
    assert float(fast.cka) == pytest.approx(float(ref.slow), abs=1e-12)
    # a partial of cka_matrix, and a partial that pins the data too
    xs = {"a": x, "b": y}
    m1 = repsim.bootstrap(functools.partial(repsim.cka_matrix, estimator="unbiased"), data=(xs,), **kw)
    m2 = repsim.bootstrap(repsim.cka_matrix, xs, estimator="unbiased", **kw)
    xr.testing.assert_identical(m1, m2)
    # linear biased with few features: cka's feature path, recomputed (no fast path)
    assert stats._common.gram_call(functools.partial(repsim.cka), (x, y), {}) is None


def test_bootstrap_measure_options_have_their_own_namespace(rng):
    """A measure option named like one of bootstrap's (level, seed) reaches the measure."""
    x, y = pair(rng, 50, 3)

    def scaled(a, b, level=1.0, seed=0):
        return level * float(np.mean(a * b)) + seed

    ds = repsim.bootstrap(scaled, data=(x, y), measure_kwargs={"level": 2.0, "seed": 5},
                          level=0.8, n_resamples=10, progress=False)
    assert float(ds.scaled) == pytest.approx(2.0 * np.mean(x * y) + 5, rel=1e-14)
    assert ds.attrs["level"] == 0.8 and ds.attrs["seed"] == 0
    new = repsim.bootstrap(repsim.cka, data=[x, y], measure_kwargs={"estimator": "unbiased"},
                           n_resamples=10, progress=False)
    old = repsim.bootstrap(repsim.cka, x, y, estimator="unbiased", n_resamples=10, progress=False)
    xr.testing.assert_identical(new, old)
    with pytest.raises(TypeError, match="either positionally or as data"):
        repsim.bootstrap(repsim.cka, x, y, data=(x, y))
    with pytest.raises(TypeError, match="measure_kwargs=, not both"):
        repsim.bootstrap(repsim.cka, data=(x, y), measure_kwargs={}, estimator="unbiased")
    with pytest.raises(TypeError, match="data must be a non-empty tuple"):
        repsim.bootstrap(repsim.cka, data=x)


def _manual_null(measure, x, y, n_permutations, seed):
    rng = np.random.default_rng(seed)
    return np.array([measure(x, y[rng.permutation(len(y))]) for _ in range(n_permutations)])


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_permutation_test_any_measure_matches_a_manual_null(rng, alternative):
    x = rng.standard_normal((40, 5))
    y = x[:, :3] + rng.standard_normal((40, 3))
    ds = repsim.permutation_test(x, y, measure=repsim.cca, n_permutations=30, seed=4,
                                 alternative=alternative, progress=False)
    null = _manual_null(repsim.cca, x, y, 30, 4)
    obs = repsim.cca(x, y)
    assert float(ds.cca) == obs and ds.attrs["estimate"] == "cca"
    assert ds.attrs["chance_method"] == "permutation null mean"
    assert float(ds.null_mean) == pytest.approx(null.mean(), rel=1e-13)
    assert float(ds.chance) == pytest.approx(null.mean(), rel=1e-13)
    assert float(ds.null_std) == pytest.approx(null.std(ddof=1), rel=1e-12)
    extreme = {"greater": null >= obs - 1e-12, "less": null <= obs + 1e-12,
               "two-sided": np.abs(null - null.mean()) >= abs(obs - null.mean()) - 1e-12}[alternative]
    assert float(ds.p_value) == pytest.approx((1 + extreme.sum()) / 31, abs=1e-15)
    if alternative == "greater":
        assert float(ds.p_value) == pytest.approx(1 / 31)  # related: nothing beats it
    elif alternative == "less":
        assert float(ds.p_value) == pytest.approx(1.0)


def test_permutation_test_any_measure_over_layer_pairs_and_distances(rng):
    """Every pair gets the measure; one permutation per replicate is shared by all pairs;
    a distance is tested with alternative='less'."""
    xs = {"a": rng.standard_normal((30, 3)), "b": rng.standard_normal((30, 4))}
    ys = {"u": xs["a"] + 0.1 * rng.standard_normal((30, 3))}

    def procrustes_gap(a, b):  # a distance: small when related
        a, b = a - a.mean(0), b - b.mean(0)
        a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
        return 2 - 2 * np.linalg.svd(a.T @ b, compute_uv=False).sum()

    ds = repsim.permutation_test(xs, ys, measure=procrustes_gap, alternative="less",
                                 n_permutations=20, seed=1, progress=False)
    assert ds.procrustes_gap.dims == ("layer_a", "layer_b")
    for name in ("a", "b"):
        null = _manual_null(procrustes_gap, xs[name], ys["u"], 20, 1)
        got = ds.sel(layer_a=name, layer_b="u")
        assert float(got.procrustes_gap) == pytest.approx(procrustes_gap(xs[name], ys["u"]), abs=1e-15)
        assert float(got.null_mean) == pytest.approx(null.mean(), rel=1e-12)
    assert float(ds.p_value.sel(layer_a="a", layer_b="u")) == pytest.approx(1 / 21)


def test_permutation_test_cka_measures_keep_the_gram_fast_path(rng):
    import functools

    xs = {"a": rng.standard_normal((25, 4)), "b": rng.standard_normal((25, 40))}
    ys = {"u": xs["a"] + rng.standard_normal((25, 4))}
    ref = repsim.permutation_test(xs, ys, estimator="unbiased", n_permutations=15, progress=False)
    for measure, mk in [(repsim.cka_matrix, {"estimator": "unbiased"}),
                        (repsim.cka, {"estimator": "unbiased", "method": "gram"}),
                        (functools.partial(repsim.cka, estimator="unbiased"), None)]:
        got = repsim.permutation_test(xs, ys, measure=measure, measure_kwargs=mk,
                                      n_permutations=15, progress=False)
        xr.testing.assert_identical(got, ref)
    assert ref.attrs["chance_method"] == "exact"
    closed = repsim.permutation_test(xs, ys, measure=repsim.cka, n_permutations=0, progress=False)
    assert np.all(np.isfinite(closed.chance.values))


def test_permutation_test_any_measure_bad_input(rng):
    x, y = rng.standard_normal((20, 3)), rng.standard_normal((20, 3))
    with pytest.raises(TypeError, match=r"\['kernel'\] are options of the default CKA"):
        repsim.permutation_test(x, y, measure=repsim.cca, kernel="rbf")
    with pytest.raises(TypeError, match="measure must be callable"):
        repsim.permutation_test(x, y, measure="cca")
    with pytest.raises(TypeError, match="measure_kwargs needs measure="):
        repsim.permutation_test(x, y, measure_kwargs={"estimator": "unbiased"})
    with pytest.raises(ValueError, match="n_permutations=0 needs a closed-form chance level"):
        repsim.permutation_test(x, y, measure=repsim.cca, n_permutations=0)
    with pytest.raises(TypeError, match=r"returning a scalar; per_column returned shape \(3,\)"):
        def per_column(a, b):
            return np.mean(a * b, axis=0)
        repsim.permutation_test(x, y, measure=per_column, n_permutations=10, progress=False)
    with pytest.raises(ValueError, match="alternative must be one of"):
        repsim.permutation_test(x, y, alternative="bigger")
    with pytest.raises(ValueError, match="same number of examples"):
        repsim.permutation_test({"a": x}, {"b": y[:10]}, measure=repsim.cca, progress=False)


# ----------------------------------------------------------------- input types (issue 11.6)
def test_xarray_inputs_are_resampled(rng):
    x, y = pair(rng, 60, 4)
    dx = xr.DataArray(x, dims=("example", "unit"), coords={"example": np.arange(60)})
    dy = xr.DataArray(y, dims=("example", "unit"))
    kw = dict(n_resamples=12, seed=1, progress=False)
    for measure in (repsim.cca, repsim.cka):  # cka with few features: recomputed per subsample
        want = repsim.bootstrap(measure, data=(x, y), **kw)
        got = repsim.bootstrap(measure, data=(dx, dy), **kw)
        assert float(got.stderr) > 0
        for var in ("stderr", "ci_low", "ci_high"):
            assert float(got[var]) == pytest.approx(float(want[var]), abs=1e-13)
    seen = []

    def coords_seen(a, b):  # the measure receives resampled DataArrays
        seen.append(a.example.values.copy())
        return float(np.mean(a.values * b.values))

    repsim.bootstrap(coords_seen, data=(dx, dy), **kw)
    assert len(seen[1]) == 30 and np.all(np.diff(seen[1]) > 0) and len(set(seen[1])) == 30
    want = repsim.bootstrap(repsim.cka_matrix, {"a": x}, {"b": y}, estimator="unbiased", **kw)
    got = repsim.bootstrap(repsim.cka_matrix, {"a": dx}, {"b": dy}, estimator="unbiased", **kw)
    xr.testing.assert_identical(got, want)
    for m in (None, repsim.cca):
        want = repsim.permutation_test(x, y, measure=m, n_permutations=10, progress=False)
        got = repsim.permutation_test(dx, dy, measure=m, n_permutations=10, progress=False)
        xr.testing.assert_allclose(got, want, rtol=0, atol=1e-14)
    with pytest.raises(TypeError, match=r"data\[0\] is an xarray.Dataset"):
        repsim.bootstrap(repsim.cca, xr.Dataset({"x": dx}), dy)
    with pytest.raises(TypeError, match="xs is an xarray.Dataset"):
        repsim.permutation_test(xr.Dataset({"x": dx}), dy)


def test_pandas_and_list_inputs_converted_or_refused(rng):
    pd = pytest.importorskip("pandas")
    x, y = pair(rng, 50, 3)
    kw = dict(n_resamples=10, seed=0, progress=False)
    want = repsim.bootstrap(repsim.cka, x, y, estimator="unbiased", **kw)
    got = repsim.bootstrap(repsim.cka, pd.DataFrame(x), pd.DataFrame(y), estimator="unbiased", **kw)
    xr.testing.assert_identical(got, want)
    want = repsim.permutation_test(x, y, n_permutations=10, progress=False)
    got = repsim.permutation_test(pd.DataFrame(x), pd.DataFrame(y), n_permutations=10, progress=False)
    xr.testing.assert_identical(got, want)
    s = repsim.bootstrap(lambda a, b: float(np.corrcoef(a, b)[0, 1]), pd.Series(x[:, 0]),
                         pd.Series(y[:, 0]), **kw)
    assert float(s.stderr) > 0
    with pytest.raises(TypeError, match="does not convert to float64"):
        repsim.bootstrap(repsim.cka, pd.DataFrame({"a": ["u"] * 50}), y, **kw)
    with pytest.raises(TypeError, match=r"data\[0\] is a list of numbers.*numpy.asarray"):
        repsim.bootstrap(repsim.cka, x.tolist(), y.tolist(), **kw)
    with pytest.raises(TypeError, match=r"xs is a list of numbers.*numpy.asarray"):
        repsim.permutation_test(x.tolist(), y)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(q=st.floats(1e-6, 1 - 1e-6), df=st.floats(0.5, 1e6))
def test_t_quantile_inverts_the_two_sided_p(q, df):
    t = stats.t_quantile(q, df)
    assert float(stats.t_two_sided_p(t, df)) == pytest.approx(2 * min(q, 1 - q), rel=1e-9, abs=1e-15)
    assert (t > 0) == (q > 0.5) or q == 0.5


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(8, 30), offset=st.floats(-1e3, 1e3))
def test_permutation_any_measure_equals_the_gram_path_for_cka(seed, n, offset):
    """A CKA measure that the hook does not recognise (a lambda) goes through the generic
    path; its null equals the permuted-gram null of the same permutations."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3)) + offset
    y = x @ rng.standard_normal((3, 2)) + rng.standard_normal((n, 2))
    fast = repsim.permutation_test(x, y, estimator="unbiased", n_permutations=10, seed=seed,
                                   progress=False)
    slow = repsim.permutation_test(x, y, measure=lambda a, b: repsim.cka(a, b, estimator="unbiased"),
                                   n_permutations=10, seed=seed, progress=False)
    for var in ("null_mean", "null_std", "p_value"):
        assert float(slow[var]) == pytest.approx(float(fast[var]), rel=1e-7, abs=1e-9)
    assert float(slow["<lambda>"]) == pytest.approx(float(fast.cka), rel=1e-9, abs=1e-12)


def test_bootstrap_empty_or_scalar_data_is_refused(rng):
    x = rng.standard_normal((20, 3))
    with pytest.raises(ValueError, match="at least one layer; got an empty dict"):
        repsim.bootstrap(repsim.cka_matrix, {}, progress=False)
    with pytest.raises(ValueError, match="first axis of examples; got a 0-d array"):
        repsim.bootstrap(lambda a, b: 0.0, x, np.float64(1.0), progress=False)


# ---------------------------------------------------------------- multiple comparisons
def _holm_by_definition(p):
    """Holm (1979): the i-th smallest p-value adjusted to max_{j <= i} min(1, (m - j) p_(j))."""
    p = np.asarray(p, dtype=float)
    m = len(p)
    order = np.argsort(p)
    adj = np.empty(m)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        adj[idx] = running
    return adj


def _bh_by_definition(p):
    """Benjamini-Hochberg: min_{j >= i} min(1, m p_(j) / j) for the i-th smallest."""
    p = np.asarray(p, dtype=float)
    m = len(p)
    order = np.argsort(p)
    adj = np.empty(m)
    for rank, idx in enumerate(order):
        adj[idx] = min(1.0, min(m * p[order[j]] / (j + 1) for j in range(rank, m)))
    return adj


def test_adjust_p_values_holm_and_bh_match_their_definitions():
    from repsim.stats import _common as C

    rng = np.random.default_rng(2)
    for _ in range(20):
        p = rng.uniform(0, 0.2, size=(3, 4)) ** rng.uniform(0.5, 3)
        np.testing.assert_allclose(C.adjust_p_values(p, "holm"),
                                   _holm_by_definition(p.ravel()).reshape(3, 4), rtol=0, atol=1e-15)
        np.testing.assert_allclose(C.adjust_p_values(p, "bh"),
                                   _bh_by_definition(p.ravel()).reshape(3, 4), rtol=1e-14, atol=0)
    p = np.array([0.01, np.nan, 0.04, 0.03])
    np.testing.assert_allclose(C.adjust_p_values(p, "holm"), [0.03, np.nan, 0.06, 0.06])
    fam = np.array([True, True, False, True])
    np.testing.assert_allclose(C.adjust_p_values(p, "holm", fam), [0.02, np.nan, np.nan, 0.03])
    np.testing.assert_array_equal(C.adjust_p_values(p, "none"), p)
    with pytest.raises(ValueError, match="correction must be one of"):
        C.adjust_p_values(p, "bonferroni")


def test_compare_seeds_welch_is_scipys_to_1e12_with_the_no_spread_conventions():
    sp = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(8)
    a, b = rng.normal(0.8, 0.03, size=(4, 5)), rng.normal(0.79, 0.01, size=(6, 5))
    a[:, 3], b[:, 3] = 0.5, 0.5  # no spread, equal means: no test (p = 1)
    a[:, 4], b[:, 4] = 0.6, 0.5  # no spread, different means: undefined (was p = 0)
    with pytest.warns(RuntimeWarning, match="1 entry has no seed spread"):
        ds = repsim.compare_seeds(list(a), list(b), correction="none")
    ref = sp.ttest_ind(a[:, :3], b[:, :3], equal_var=False)
    np.testing.assert_allclose(ds.t.values[:3], ref.statistic, rtol=1e-12)
    np.testing.assert_allclose(ds.df.values[:3], ref.df, rtol=1e-12)
    np.testing.assert_allclose(ds.p_value.values[:3], ref.pvalue, rtol=1e-12)
    assert ds.p_value.values[3] == 1.0 and np.isnan(ds.p_value.values[4])
    assert not ds.differs.values[4] and ds.attrs["n_undefined"] == 1
    assert "p_adjusted" not in ds and ds.attrs["correction"] == "none"
    # the exact test is defined there: 4 + 6 seeds fully separated; only the observed split
    # of the 210 reaches the observed difference (unequal sizes: no mirror split)
    exact = repsim.compare_seeds(list(a), list(b), correction="none", test="permutation")
    assert exact.p_value.values[4] == pytest.approx(1 / math.comb(10, 4), abs=1e-15)


def test_compare_seeds_corrects_a_layer_matrix_by_default():
    # before: no correction, so 'differs' was a per-entry p < 0.1 over 10 tests
    rng = np.random.default_rng(11)
    names = ["l0", "l1", "l2", "l3"]

    def seeds(shift, k):
        out = []
        for _ in range(k):
            m = np.eye(4)
            up = rng.normal(0.5, 0.03, size=(4, 4)) + shift
            m[np.triu_indices(4, 1)] = up[np.triu_indices(4, 1)]
            m = np.triu(m) + np.triu(m, 1).T
            out.append(xr.DataArray(m, dims=("layer_a", "layer_b"),
                                    coords={"layer_a": names, "layer_b": names}))
        return out

    shift = np.zeros((4, 4))
    shift[0, 1] = shift[1, 0] = 0.06
    a, b = seeds(shift, 4), seeds(0.0, 4)
    ds = repsim.compare_seeds(a, b)
    assert ds.attrs["correction"] == "holm" and ds.attrs["n_tests"] == 6  # upper, diagonal untested
    p = ds.p_value.values
    iu = np.triu_indices(4, 1)
    adj = np.full((4, 4), np.nan)
    adj[iu] = _holm_by_definition(p[iu])
    adj = np.where(np.isnan(adj), adj.T, adj)
    np.fill_diagonal(adj, 1.0)
    np.testing.assert_allclose(ds.p_adjusted.values, adj, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(ds.differs.values, adj < 0.1)
    bh = repsim.compare_seeds(a, b, correction="bh")
    sp = pytest.importorskip("scipy.stats")
    np.testing.assert_allclose(bh.p_adjusted.values[iu], sp.false_discovery_control(p[iu]), rtol=1e-14)
    raw = repsim.compare_seeds(a, b, correction="none")
    np.testing.assert_array_equal(raw.differs.values, p < 0.1)
    with pytest.raises(ValueError, match="correction must be one of"):
        repsim.compare_seeds(a, b, correction="fdr")


def test_permutation_test_corrects_the_pair_matrix_by_default(rng):
    x, y = pair(rng, 40, 3)
    layers_a = {"x": x, "n1": rng.standard_normal((40, 3))}
    layers_b = {"y": y, "n2": rng.standard_normal((40, 3)), "n3": rng.standard_normal((40, 2))}
    ds = repsim.permutation_test(layers_a, layers_b, n_permutations=30, seed=3, progress=False)
    assert ds.attrs["correction"] == "holm" and ds.attrs["n_tests"] == 6
    p = ds.p_value.values
    np.testing.assert_allclose(ds.p_adjusted.values,
                               _holm_by_definition(p.ravel()).reshape(p.shape), atol=1e-15)
    bh = repsim.permutation_test(layers_a, layers_b, n_permutations=30, seed=3, progress=False,
                                 correction="bh")
    np.testing.assert_allclose(bh.p_adjusted.values,
                               _bh_by_definition(p.ravel()).reshape(p.shape), rtol=1e-14)
    gen = repsim.permutation_test(layers_a, layers_b, measure=repsim.cca, n_permutations=10,
                                  seed=3, progress=False)
    pg = gen.p_value.values
    np.testing.assert_allclose(gen.p_adjusted.values,
                               _holm_by_definition(pg.ravel()).reshape(pg.shape), atol=1e-15)
    none = repsim.permutation_test(layers_a, layers_b, n_permutations=10, progress=False,
                                   correction="none")
    assert "p_adjusted" not in none and none.attrs["correction"] == "none"
    single = repsim.permutation_test(x, y, n_permutations=10, progress=False)
    assert float(single.p_adjusted) == float(single.p_value)
