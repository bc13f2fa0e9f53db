"""The statistics' packed-gram fast path comes from the registry: every function whose
declaration has a :class:`repsim._registry.GramForm` (and its all-pairs function) takes
it, as the plain function, as a ``repsim.measure(...)`` object (canonical name, alias or
similarity-repository id, presets applied) and inside ``functools.partial`` -- with the
same values as the function. Which path ran is asserted by counting the packed-gram
preparation, never by timing."""

import functools
import sys

import numpy as np
import pytest

import repsim
from repsim import _registry as R
from repsim import stats
from repsim._validation import CALLABLE_PARAMS

PERM = sys.modules["repsim.stats.permutation"]
RESAMPLE = sys.modules["repsim.stats.resampling"]


@pytest.fixture
def gram_preparations(monkeypatch):
    """Counts the packed-gram preparations of the permutation test and the bootstrap."""
    calls = []
    for module in (PERM, RESAMPLE):
        real = module.prepare_pair

        def spy(*args, _real=real, **kwargs):
            calls.append(kwargs)
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, "prepare_pair", spy)
    return calls


def _data(seed=0, n=40, p=30, q=25):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p))
    k = min(12, p)
    return {"a": x, "b": x[:, :k] @ rng.standard_normal((k, q)) + rng.standard_normal((n, q))}


def _same(r1, r2):
    assert set(r1.data_vars) == set(r2.data_vars)
    for k in r1.data_vars:
        np.testing.assert_array_equal(r1[k].values, r2[k].values)


@pytest.mark.parametrize("name, options", [
    ("cka_linear", {}), ("cka", {}), ("cka-kernel=linear-hsic=gretton-score", {}),
    ("cka_linear_unbiased", {"estimator": "unbiased"}), ("cka_debiased", {"estimator": "unbiased"}),
    ("cka_rbf", {"kernel": "rbf"}),
])
def test_permutation_test_with_a_measure_object_takes_the_gram_path(name, options,
                                                                    gram_preparations):
    data = _data()
    kw = dict(n_permutations=25, seed=3, progress=False)
    by_function = stats.permutation_test(data, measure=repsim.cka, measure_kwargs=options, **kw)
    assert len(gram_preparations) == 1
    by_measure = stats.permutation_test(data, measure=repsim.measure(name), **kw)
    assert len(gram_preparations) == 2
    assert {k: gram_preparations[1][k] for k in ("kernel", "estimator")} == \
        {"kernel": "linear", "estimator": "biased", **options}
    _same(by_function, by_measure)
    assert by_measure.attrs["chance_method"] == "exact"
    # the null and p-value come from the same permutations as a direct recomputation
    x, y = data["a"], data["b"]
    rng = np.random.default_rng(3)
    null = [float(repsim.cka(x, y[rng.permutation(len(y))], method="gram", **options))
            for _ in range(25)]
    observed = float(repsim.cka(x, y, **options))
    assert float(by_measure.cka.sel(layer_a="a", layer_b="b")) == pytest.approx(observed, abs=1e-12)
    p = (1 + sum(v >= observed - 1e-12 for v in null)) / 26
    assert float(by_measure.p_value.sel(layer_a="a", layer_b="b")) == p
    assert float(by_measure.null_mean.sel(layer_a="a", layer_b="b")) == \
        pytest.approx(np.mean(null), abs=1e-12)


def test_partial_of_a_measure_and_options_over_its_presets(gram_preparations):
    data = _data(1)
    kw = dict(n_permutations=12, seed=0, progress=False)
    plain = stats.permutation_test(data, measure=repsim.cka,
                                   measure_kwargs={"kernel": "rbf", "threshold": 0.7}, **kw)
    wrapped = functools.partial(repsim.measure("rbf_cka"), threshold=0.7)
    _same(plain, stats.permutation_test(data, measure=wrapped, **kw))
    # the call's options go over the measure's presets, as calling the measure does
    _same(plain, stats.permutation_test(data, measure=repsim.measure("cka_linear"),
                                        measure_kwargs={"kernel": "rbf", "threshold": 0.7}, **kw))
    assert len(gram_preparations) == 3
    assert all(c["kernel"] == "rbf" and c["threshold"] == 0.7 for c in gram_preparations)


def test_bootstrap_with_a_measure_object_takes_the_gram_path(gram_preparations):
    data = _data(2)
    x, y = data["a"], data["b"]
    kw = dict(n_resamples=12, seed=1, progress=False)
    plain = stats.bootstrap(repsim.cka, x, y, estimator="unbiased", **kw)
    _same(plain, stats.bootstrap(repsim.measure("cka_linear_unbiased"), x, y, **kw))
    _same(plain, stats.bootstrap(functools.partial(repsim.measure("cka_unbiased")), x, y, **kw))
    assert len(gram_preparations) == 3
    matrix = stats.bootstrap(repsim.cka_matrix, data, estimator="unbiased", **kw)
    assert len(gram_preparations) == 4
    np.testing.assert_allclose(matrix.cka.sel(layer_a="a", layer_b="b"), plain.cka, atol=1e-12)


def test_bootstrap_recomputes_where_cka_takes_its_feature_path(gram_preparations):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((200, 3))
    y = x + rng.standard_normal((200, 3))
    kw = dict(n_resamples=10, seed=2, progress=False)
    plain = stats.bootstrap(repsim.cka, x, y, **kw)
    _same(plain, stats.bootstrap(repsim.measure("linear_cka"), x, y, **kw))
    assert gram_preparations == []  # O(m p q) per subsample beats n x n grams
    stats.bootstrap(repsim.measure("cka_linear"), x, y, method="gram", **kw)
    assert len(gram_preparations) == 1


def test_measures_without_a_gram_form_are_recomputed(gram_preparations):
    data = _data(5, n=60, p=6, q=5)
    kw = dict(n_permutations=10, seed=0, progress=False)
    _same(stats.permutation_test(data, measure=repsim.cca, **kw),
          stats.permutation_test(data, measure=repsim.measure("mean_cca"), **kw))
    assert gram_preparations == []


@pytest.fixture
def toy_gram_measure():
    """A measure declared for the test (and removed after) whose only path to the
    statistics' fast path is its GramForm declaration."""
    def toy_cka(x, y, *, estimator="biased"):
        return repsim.cka(x, y, estimator=estimator, method="gram")

    R.declare(toy_cka, gram=R.GramForm(("estimator",)),
              measures=[R.Measure("toy_cka", {"estimator": "unbiased"})])
    yield toy_cka
    R._FAMILIES.pop("toy_cka")
    R._MEASURES.pop("toy_cka")
    R._LOOKUP.pop("toy_cka")
    CALLABLE_PARAMS.pop("toy_cka", None)


def test_gram_hooks_are_derived_from_the_registry(toy_gram_measure, gram_preparations):
    hooks = stats._common.gram_hooks()
    declared = {f.function for f in R.families().values() if f.gram is not None}
    matrices = {f.gram.matrix for f in R.families().values()
                if f.gram is not None and f.gram.matrix is not None}
    assert set(hooks) == declared | matrices
    assert {repsim.cka, repsim.cka_matrix, toy_gram_measure} <= set(hooks)
    assert not {repsim.cca, repsim.pwcca, repsim.shape_distance} & set(hooks)
    data = _data(6)
    kw = dict(n_permutations=10, seed=0, progress=False)
    toy = stats.permutation_test(data, measure=repsim.measure("toy_cka"), **kw)
    assert gram_preparations[-1]["estimator"] == "unbiased"
    _same(toy, stats.permutation_test(data, measure=repsim.cka,
                                      measure_kwargs={"estimator": "unbiased"}, **kw))
