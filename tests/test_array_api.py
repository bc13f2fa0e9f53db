"""Arrays of other array-API libraries: JAX (immutable arrays) and array-api-strict.

Before: with JAX arrays ``cka(estimator="unbiased")``, ``cka_matrix``, ``dcor``, the
centring functions and the accumulators failed with JAX's "arrays are immutable" error
(in-place centring into packed buffers), while the biased CKA, CCA, k-NN and RSA worked;
with array-api-strict most measures failed on its stricter indexing. Now such arrays are
read into host numpy at the entry (DLPack), never written to, and every public function
gives the numpy result.
"""

import warnings

import numpy as np
import pytest

import repsim


@pytest.fixture(params=["jax", "array_api_strict"])
def xp(request):
    if request.param == "jax":
        jax = pytest.importorskip("jax")
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        return jnp
    return pytest.importorskip("array_api_strict")


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 5))
    return x, x + rng.standard_normal((20, 5))


PAIR_MEASURES = ["cka", "cca", "svcca", "pwcca", "dcor", "rsa", "mutual_knn", "jaccard_knn",
                 "rank_similarity", "second_order_cosine", "cknna", "nbs", "shape_distance",
                 "ridge_r2", "gulp"]


def _same(got, want):
    got = np.asarray(getattr(got, "values", got), dtype=np.float64)
    want = np.asarray(getattr(want, "values", want), dtype=np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("measure", PAIR_MEASURES)
def test_pair_measures_equal_numpy(xp, measure):
    xn, yn = _data()
    x, y = xp.asarray(xn), xp.asarray(yn)
    fn = getattr(repsim, measure)
    got = fn(x, y)
    assert isinstance(got, (np.ndarray, np.generic))  # computed with numpy, as documented
    _same(got, fn(xn, yn))
    np.testing.assert_array_equal(np.asarray(x), xn)  # the input is never written to


@pytest.mark.parametrize("kwargs", [dict(estimator="unbiased"), dict(kernel="rbf"),
                                    dict(kernel="rbf", estimator="unbiased")])
def test_cka_estimators_that_centre_grams(xp, kwargs):
    # the named failures: in-place centring into the packed gram rows
    xn, yn = _data()
    _same(repsim.cka(xp.asarray(xn), xp.asarray(yn), **kwargs), repsim.cka(xn, yn, **kwargs))
    _same(repsim.cka_matrix({"a": xp.asarray(xn), "b": xp.asarray(yn)}, **kwargs),
          repsim.cka_matrix({"a": xn, "b": yn}, **kwargs))


def test_grams_layers_accumulators_and_statistics(xp):
    xn, yn = _data()
    x, y = xp.asarray(xn), xp.asarray(yn)
    gx, gn = repsim.gram(x), repsim.gram(xn)
    _same(gx, gn)
    _same(repsim.centre_gram(xp.asarray(gn)), repsim.centre_gram(gn))
    _same(repsim.ucentre_gram(xp.asarray(gn)), repsim.ucentre_gram(gn))
    _same(repsim.hsic(xp.asarray(gn), xp.asarray(repsim.gram(yn))), repsim.hsic(gn, repsim.gram(yn)))
    _same(repsim.neighbour_matrix([x, y], k=3), repsim.neighbour_matrix([xn, yn], k=3))
    _same(repsim.canonical_correlations(x, y), repsim.canonical_correlations(xn, yn))
    _same(repsim.remove_top_pcs(x, k=1), repsim.remove_top_pcs(xn, k=1))
    _same(repsim.pc_variance_fraction(x), repsim.pc_variance_fraction(xn))

    def stream(cls, a, b, *args):
        acc = cls()
        acc.update([a[:10, ...], b[:10, ...]])
        acc.update([a[10:, ...], b[10:, ...]])
        return acc.compute(*args)

    _same(stream(repsim.MinibatchCKA, x, y), stream(repsim.MinibatchCKA, xn, yn))
    _same(stream(repsim.FeatureMoments, x, y, "nbs"), stream(repsim.FeatureMoments, xn, yn, "nbs"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _same(repsim.bootstrap(repsim.cka, x, y, n_resamples=20, progress=False).cka,
              repsim.bootstrap(repsim.cka, xn, yn, n_resamples=20, progress=False).cka)
        _same(repsim.permutation_test(x, y, n_permutations=10, progress=False).p_value,
              repsim.permutation_test(xn, yn, n_permutations=10, progress=False).p_value)
        _same(repsim.permutation_test(x, y, measure=repsim.cca, n_permutations=10,
                                      progress=False).p_value,
              repsim.permutation_test(xn, yn, measure=repsim.cca, n_permutations=10,
                                      progress=False).p_value)
    sim = repsim.cka_matrix([xn[:, :i + 1] for i in range(5)] + [yn]).values
    assert str(repsim.find_block(xp.asarray(sim))) == str(repsim.find_block(sim))
    assert repsim.segment_layers(xp.asarray(sim)) == repsim.segment_layers(sim)
    _same(repsim.aggregate_seeds([xp.asarray(sim), xp.asarray(0.9 * sim)])["mean"],
          repsim.aggregate_seeds([sim, 0.9 * sim])["mean"])


def test_torch_only_transform_refuses_other_arrays_by_type(xp):
    pytest.importorskip("torch")
    from repsim.adapters.transformers import standardize_features

    with pytest.raises(TypeError, match="needs a torch tensor.*got "):
        standardize_features(xp.asarray(_data()[0]))
