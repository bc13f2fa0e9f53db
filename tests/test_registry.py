"""The measure registry: every registered measure as a layer x layer matrix equals its
per-pair function; names resolve through canonical names, aliases and similarity-
repository ids; unknown names and options get the nearest suggestion; the two measures
added by one declaration each match reference implementations written out here."""

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import repsim
from repsim import _registry as R

ALL = repsim.measure_names()


def _layers(seed, n, widths):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, 3))
    out = {}
    for i, w in enumerate(widths):  # related layers: a shared signal plus noise
        out[f"layer{i}"] = np.tanh(base @ rng.standard_normal((3, w))) \
            + 0.5 * rng.standard_normal((n, w))
    return out


def _close(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.maximum(1.0, np.abs(np.nan_to_num(b)))
    same_nan = np.isnan(a) == np.isnan(b)
    return bool(same_nan.all() and (np.abs(np.nan_to_num(a - b)) <= 1e-12 * scale).all())


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(16, 28),
       widths=st.lists(st.integers(2, 7), min_size=2, max_size=3),
       two_models=st.booleans())
def test_similarity_matrix_equals_the_per_pair_function(name, seed, n, widths, two_models):
    """Every registered measure, float64: the matrix path (layers prepared once, half of a
    symmetric matrix mirrored, CKA through cka_matrix) gives the per-pair values within
    1e-12, and a symmetric measure's within-model matrix is symmetric."""
    m = repsim.measure(name)
    a = _layers(seed, n, widths)
    b = _layers(seed + 1, n, widths[::-1]) if two_models else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # underdetermined CCA on small n, say
        sim = repsim.similarity_matrix(a, b, measure=name, progress=False)
        other = a if b is None else b
        ref = np.array([[float(m(a[i], other[j])) for j in other] for i in a])
    assert sim.dims == ("layer_a", "layer_b")
    assert list(sim.layer_a.values) == list(a) and list(sim.layer_b.values) == list(other)
    assert _close(sim.values, ref), (name, np.nanmax(np.abs(sim.values - ref)))
    if b is None and m.symmetric:
        assert np.array_equal(sim.values, sim.values.T, equal_nan=True)
    assert sim.attrs["measure"] == name and sim.attrs["function"] == m.function


def test_every_name_resolves_to_its_measure():
    names = repsim.measure_names(aliases=True)
    assert set(names.values()) == set(ALL)
    for m in R.all_measures():
        for key in (m.name, *m.aliases, *m.repository):
            assert repsim.measure(key) is m
            assert names[key] == m.name
        for rid in m.repository:  # the repository's namespaced form
            assert repsim.measure(f"measure/netrep/{rid}") is m
    assert repsim.measure("cka").name == "cka_linear"
    assert repsim.measure("procrustes").name == "procrustes_angular"
    assert repsim.measure("cka_debiased").name == "cka_linear_unbiased"
    assert repsim.measure("cka-kernel=linear-hsic=song-score").name == "cka_linear_unbiased"
    assert repsim.measure("cka-kernel=linear-hsic=gretton-score").name == "cka_linear"


def test_similarity_repository_ids_follow_its_grammar():
    """Ids are ``name`` or ``name-key=value-...`` (Cloos et al.'s naming grammar), never
    clash with another measure, and every id is declared at most once."""
    seen = {}
    for m in R.all_measures():
        for rid in m.repository:
            assert rid == rid.strip() and " " not in rid and "/" not in rid
            assert rid not in seen, (rid, seen.get(rid), m.name)
            seen[rid] = m.name
    assert len(seen) >= 15


def test_unknown_names_and_options_suggest_the_nearest():
    x = np.random.default_rng(0).standard_normal((20, 3))
    with pytest.raises(ValueError, match="did you mean 'procrustes_angular'"):
        repsim.measure("procrustes_angualr")
    with pytest.raises(ValueError, match="did you mean 'mutual_knn'"):
        repsim.similarity_matrix([x, x], measure="mutal_knn", progress=False)
    with pytest.raises(TypeError, match="unknown option 'estimatr'; did you mean 'estimator'"):
        repsim.compare(x, x, "cka", estimatr="unbiased")
    with pytest.raises(ValueError, match="estimator must be one of 'biased', 'unbiased'; got "
                                         "'debaised'; did you mean 'debiased'"):
        repsim.compare(x, x, "cka", estimator="debaised")
    with pytest.raises(ValueError, match="got 'debiased'; did you mean 'unbiased'"):
        repsim.cka(x, x, estimator="debiased")  # the function itself takes no alias
    with pytest.raises(ValueError, match="score must be one of 'angular', 'euclidean'; got "
                                         "'angualr'; did you mean 'angular'"):
        repsim.shape_distance(x, x, score="angualr")


def test_debiased_is_the_unbiased_estimator():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((40, 4)), rng.standard_normal((40, 3))
    want = float(repsim.cka(x, y, estimator="unbiased"))
    assert float(repsim.compare(x, y, "cka", estimator="debiased")) == want
    assert float(repsim.compare(x, y, "cka_debiased")) == want
    acc = repsim.FeatureMoments()
    acc.update({"x": x, "y": y})
    got = acc.compute("cka", estimator="debiased").sel(layer_a="x", layer_b="y").item()
    assert abs(got - want) < 1e-12


def test_compare_applies_presets_then_options():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((50, 4)), rng.standard_normal((50, 4))
    assert float(repsim.compare(x, y, "procrustes_euclidean")) == float(
        repsim.shape_distance(x, y, alpha=1.0, score="euclidean"))
    assert float(repsim.compare(x, y, "mutual_knn", k=5)) == float(repsim.mutual_knn(x, y, 5))
    assert float(repsim.compare(x, y)) == float(repsim.cka(x, y))


def test_result_attrs_say_what_was_computed(tmp_path):
    layers = _layers(3, 30, [4, 5, 3])
    sim = repsim.similarity_matrix(layers, measure="cka_debiased", progress=False)
    assert sim.attrs["measure"] == "cka_linear_unbiased"
    assert sim.attrs["similarity_repository"] == "cka-kernel=linear-hsic=song-score"
    assert sim.attrs["estimator"] == "unbiased"
    assert "estimator='unbiased'" in sim.attrs["options"]
    assert sim.attrs["repsim_version"] == repsim.__version__
    assert sim.attrs["n"] == 30 and sim.attrs["symmetric"]
    repsim.save_result(sim, tmp_path / "r.nc")
    back = repsim.load_result(tmp_path / "r.nc")
    assert back.attrs["measure"] == "cka_linear_unbiased"
    np.testing.assert_array_equal(back.values, sim.values)


def test_cka_measures_go_through_the_one_product_path(monkeypatch):
    import sys

    C = sys.modules["repsim.cka"]  # the module (repsim.cka is the function)
    calls = []
    real = C.cka_matrix

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(C, "cka_matrix", spy)
    layers = _layers(4, 30, [4, 5, 3])
    for name, est, kernel in (("cka_linear", "biased", "linear"),
                              ("cka_linear_unbiased", "unbiased", "linear"),
                              ("cka_rbf", "biased", "rbf")):
        sim = repsim.similarity_matrix(layers, measure=name, progress=False)
        assert calls[-1]["estimator"] == est and calls[-1]["kernel"] == kernel
        np.testing.assert_array_equal(sim.values, real(layers, kernel=kernel, estimator=est).values)
    assert len(calls) == 3


@pytest.fixture
def counted_measure():
    """A toy measure declared for the test (and removed after): counts its steps."""
    counts = {"prepare": 0, "pair": 0}

    def toy_similarity(x, y, scale=1.0):
        return scale * float(np.mean(x) * np.mean(y))

    def prepare(x, name, **_):
        counts["prepare"] += 1
        return float(np.mean(x))

    def pair(a, b, *, scale, **_):
        counts["pair"] += 1
        return scale * a * b

    R.declare(toy_similarity, constraints={"scale": repsim._validation.Positive()},
              prepare=prepare, pair=pair,
              measures=[R.Measure("toy_similarity", {}, "similarity", "[0, 1]", (), True,
                                  aliases=("toy",), repository=("toy-score",))])
    yield counts
    R._FAMILIES.pop("toy_similarity")
    R._MEASURES.pop("toy_similarity")
    for key in ("toy_similarity", "toy", "toy-score"):
        R._LOOKUP.pop(key)
    repsim._validation.CALLABLE_PARAMS.pop("toy_similarity")


def test_each_layer_is_prepared_once_and_a_symmetric_half_computed_once(counted_measure,
                                                                        capsys):
    layers = [np.full((10, 2), v) + np.arange(20).reshape(10, 2) for v in range(5)]
    sim = repsim.similarity_matrix(layers, measure="toy", scale=2.0, progress=False)
    assert counted_measure == {"prepare": 5, "pair": 15}  # 5 layers, 5 * 6 / 2 pairs
    expected = np.array([[2.0 * np.mean(a) * np.mean(b) for b in layers] for a in layers])
    np.testing.assert_allclose(sim.values, expected, rtol=1e-15)
    repsim.similarity_matrix(layers[:2], layers, measure="toy_similarity", progress=False)
    assert counted_measure == {"prepare": 12, "pair": 25}  # two sets: all 2 x 5 pairs
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        repsim.similarity_matrix(layers, measure="toy", scale=-1.0, progress=False)
    assert capsys.readouterr().err == ""


def test_progress_is_shown_for_long_work(capsys):
    layers = _layers(5, 20, [3, 3, 3])
    repsim.similarity_matrix(layers, measure="rsa", progress=True)
    err = capsys.readouterr().err
    assert "rsa: layers" in err and "rsa: pairs" in err


def test_bad_layers_are_named():
    x = np.zeros((10, 3))
    with pytest.raises(ValueError, match=r"layers_b\['b'\]"):
        repsim.similarity_matrix({"a": x}, {"b": np.zeros((9, 3))}, measure="cca",
                                 progress=False)
    with pytest.raises(ValueError, match=r"NaN or Inf"):
        bad = np.ones((20, 3))
        bad[3, 1] = np.nan
        repsim.similarity_matrix({"ok": np.random.default_rng(0).standard_normal((20, 3)),
                                  "bad": bad}, measure="procrustes", progress=False)


def test_feature_moments_takes_registry_names():
    rng = np.random.default_rng(6)
    acts = {"a": rng.standard_normal((80, 5)), "b": rng.standard_normal((80, 4))}
    acc = repsim.FeatureMoments()
    acc.update(acts)
    got = acc.compute("procrustes_angular").sel(layer_a="a", layer_b="b").item()
    assert abs(got - float(repsim.shape_distance(acts["a"], acts["b"]))) < 1e-12
    with pytest.raises(ValueError, match="did you mean 'shape_distance'"):
        acc.compute("shape_distanse")
    with pytest.raises(TypeError, match="did you mean 'ridge'"):
        acc.compute("gulp", ridg=0.1)


# --------------------------------------------------------------------------- the two new measures


def _eos_reference(x, y):
    """Eigenspace overlap score as ReSi computes it (Klabunde et al. 2025, after May et
    al. 2019), re-implemented: left singular vectors of the uncentred data up to
    numpy's matrix_rank, ``||UᵀV||_F² / max(p, q)``."""
    u = np.linalg.svd(x)[0][:, : np.linalg.matrix_rank(x)]
    v = np.linalg.svd(y)[0][:, : np.linalg.matrix_rank(y)]
    return np.linalg.norm(u.T @ v, ord="fro") ** 2 / max(x.shape[1], y.shape[1])


def _cycle_knn_reference(x, y, k):
    """Cycle k-NN as the platonic-representation code computes it (Huh et al. 2024),
    re-implemented: cosine neighbours (self excluded by a -1e8 diagonal, largest first),
    then ``knn_x[knn_y]`` and the fraction of examples found among those."""
    def knn(a):
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        s = a @ a.T
        np.fill_diagonal(s, -1e8)
        return np.argsort(-s, axis=1, kind="stable")[:, :k]

    back = knn(x)[knn(y)]  # (n, k, k): the x-neighbours of i's y-neighbours
    n = x.shape[0]
    return float(np.mean((back == np.arange(n)[:, None, None]).reshape(n, -1).max(axis=1)))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(8, 40), p=st.integers(1, 12),
       q=st.integers(1, 12))
def test_eigenspace_overlap_matches_the_reference(seed, n, p, q):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p))
    y = np.c_[x[:, : min(p, q) // 2], rng.standard_normal((n, q - min(p, q) // 2))]
    assert abs(float(repsim.eigenspace_overlap(x, y)) - _eos_reference(x, y)) < 1e-12


def test_eigenspace_overlap_rank_deficient_and_invariances():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((30, 4))
    low = np.c_[x[:, :2], x[:, :2] @ rng.standard_normal((2, 3))]  # rank 2 in 5 columns
    assert abs(float(repsim.eigenspace_overlap(x, low)) - _eos_reference(x, low)) < 1e-12
    assert abs(float(repsim.eigenspace_overlap(x, low)) - 2 / 5) < 1e-12  # span(low) ⊂ span(x)
    a = rng.standard_normal((4, 4))
    assert abs(float(repsim.eigenspace_overlap(x, x @ a)) - 1.0) < 1e-12


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(6, 40), k=st.integers(1, 5))
def test_cycle_knn_matches_the_reference(seed, n, k):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 5))
    y = np.tanh(x @ rng.standard_normal((5, 3))) + 0.3 * rng.standard_normal((n, 3))
    k = min(k, n - 1)
    assert float(repsim.cycle_knn(x, y, k)) == pytest.approx(_cycle_knn_reference(x, y, k),
                                                             abs=1e-12)
    assert float(repsim.cycle_knn(y, x, k)) == pytest.approx(_cycle_knn_reference(y, x, k),
                                                             abs=1e-12)


def test_the_new_measures_are_in_every_derived_place():
    table = repsim.measures()
    for name in ("eigenspace_overlap", "cycle_knn"):
        assert name in table.index and name in repsim.measure_names()
    assert table.loc["cycle_knn", "symmetric"] == False  # noqa: E712
    assert table.loc["eigenspace_overlap", "invertible_linear"] == True  # noqa: E712
    from repsim import cli

    choices = next(a for a in cli.build_parser()._actions if a.dest == "measure").choices
    assert "eigenspace_overlap" in choices and "cycle_knn" in choices
