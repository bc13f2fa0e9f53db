"""The documented behaviour on bad input (DESIGN.md section 5)."""

import numpy as np
import pytest
import torch

import repsim
from repsim._validation import DegenerateRepresentationWarning


def test_mismatched_example_counts(rng):
    with pytest.raises(ValueError, match=r"same number of examples.*\(10, 3\).*n=10.*\(11, 3\).*n=11"):
        repsim.cka(rng.standard_normal((10, 3)), rng.standard_normal((11, 3)))
    with pytest.raises(ValueError, match="same number of examples"):
        repsim.cka_matrix([rng.standard_normal((10, 3))], [rng.standard_normal((9, 3))])


def test_unbiased_needs_four_examples(rng):
    x = rng.standard_normal((3, 2))
    with pytest.raises(ValueError, match="needs at least 4 examples; got n=3"):
        repsim.cka(x, x, estimator="unbiased")
    with pytest.raises(ValueError, match="at least 4 examples"):
        repsim.hsic(x @ x.T, x @ x.T, estimator="unbiased")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_named(rng, bad):
    x = rng.standard_normal((10, 3))
    y = x.copy()
    y[4, 1] = bad
    with pytest.raises(ValueError, match="y contains NaN or Inf"):
        repsim.cka(x, y)
    with pytest.raises(ValueError, match=r"xs\['conv2'\] contains NaN or Inf"):
        repsim.cka_matrix({"conv1": x, "conv2": y})
    with pytest.raises(ValueError, match="NaN or Inf"):
        repsim.cka(torch.tensor(x), torch.tensor(y), kernel="rbf")


def test_wrong_rank(rng):
    with pytest.raises(ValueError, match=r"at least 2 dimensions; got shape \(10,\)"):
        repsim.cka(rng.standard_normal(10), rng.standard_normal((10, 2)))
    with pytest.raises(ValueError, match="square"):
        repsim.hsic(rng.standard_normal((4, 5)), rng.standard_normal((4, 4)))


def test_unknown_options(rng):
    x = rng.standard_normal((10, 3))
    with pytest.raises(ValueError, match="kernel must be one of 'linear', 'rbf'; got 'poly'"):
        repsim.cka(x, x, kernel="poly")
    with pytest.raises(ValueError, match="estimator must be one of"):
        repsim.cka(x, x, estimator="minibatch")
    with pytest.raises(ValueError, match="method must be one of"):
        repsim.cka(x, x, method="fast")
    with pytest.raises(ValueError, match="engine must be one of"):
        repsim.cka(x, x, engine="cuda")
    with pytest.raises(ValueError, match="method='features' applies to linear biased"):
        repsim.cka(x, x, kernel="rbf", method="features")
    with pytest.raises(ValueError, match="threshold must be"):
        repsim.cka(x, x, kernel="rbf", threshold=0)
    with pytest.raises(ValueError, match="sigma must be"):
        repsim.gram(x, kernel="rbf", sigma=-1.0)


def test_mixing_numpy_and_torch_is_refused(rng):
    x = rng.standard_normal((10, 3))
    with pytest.raises(TypeError, match="one library"):
        repsim.cka(x, torch.tensor(x))
    with pytest.raises(TypeError, match="one library"):
        repsim.cka_matrix([x, torch.tensor(x)])
    xg = torch.tensor(x, requires_grad=True)
    with pytest.raises(TypeError, match="CPU torch tensors without autograd"):
        repsim.cka(xg, xg, engine="numba")


@pytest.mark.parametrize(
    "estimator, method", [("biased", "gram"), ("unbiased", "gram"), ("biased", "features")]
)
def test_constant_representation_is_nan_with_warning(rng, estimator, method):
    x = rng.standard_normal((12, 3))
    const = np.full((12, 4), 0.1)
    with pytest.warns(DegenerateRepresentationWarning, match="'y'"):
        value = repsim.cka(x, const, estimator=estimator, method=method)
    assert np.isnan(value)
    with pytest.warns(DegenerateRepresentationWarning, match="'flat'"):
        sim = repsim.cka_matrix({"ok": x, "flat": const}, estimator=estimator)
    assert float(sim.sel(layer_a="ok", layer_b="ok")) == pytest.approx(1.0)
    assert np.isnan(sim.sel(layer_a="flat")).all()


def test_tiny_but_real_variance_is_not_degenerate(rng):
    x = rng.standard_normal((12, 3))
    y = 1e-6 * x + 1.0  # small variance next to a large mean, float64: still well defined
    assert repsim.cka(x, y, method="gram") == pytest.approx(1.0, abs=1e-6)


def test_values_are_not_clamped():
    # unrelated data: the unbiased estimator may be negative and is returned as such
    r = np.random.default_rng(3)
    values = [repsim.cka(r.standard_normal((6, 2)), r.standard_normal((6, 2)), estimator="unbiased")
              for _ in range(30)]
    assert min(values) < 0


# --------------------------------------------------------------------------- issue 11.5: NaN/Inf


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_in_grams_and_bandwidths_named(rng, bad):
    x = rng.standard_normal((8, 3))
    k = x @ x.T
    k_bad = k.copy()
    k_bad[2, 5] = k_bad[5, 2] = bad  # off the diagonal: the trace does not see it
    for lib in (np.asarray, torch.tensor):
        with pytest.raises(ValueError, match="^l contains NaN or Inf"):
            repsim.hsic(lib(k), lib(k_bad))
        with pytest.raises(ValueError, match="^k contains NaN or Inf"):
            repsim.hsic(lib(k_bad), lib(k), estimator="unbiased")
        with pytest.raises(ValueError, match="^k contains NaN or Inf"):
            repsim.centre_gram(lib(k_bad))
        with pytest.raises(ValueError, match="^k contains NaN or Inf"):
            repsim.ucentre_gram(lib(k_bad))
    x_bad = x.copy()
    x_bad[3, 1] = bad
    with pytest.raises(ValueError, match="^x contains NaN or Inf"):
        repsim.median_sigma(x_bad)  # before: returned a number


def test_nan_gram_is_refused_before_the_accumulator_is_touched(rng):
    x = rng.standard_normal((8, 3))
    acc = repsim.MinibatchCKA()
    acc.update_grams({"a": x @ x.T})
    before = acc.compute().values.copy()
    bad = x @ x.T
    bad[0, 1] = np.nan
    with pytest.raises(ValueError, match=r"grams_a\['a'\] contains NaN or Inf"):
        acc.update_grams({"a": bad})
    np.testing.assert_array_equal(acc.compute().values, before)


# --------------------------------------------------------------------------- issue 11.6: types


def test_big_endian_float64_is_computed_as_float64(rng):
    x = rng.standard_normal((40, 6)) + 1e3
    y = np.tanh(x - 1e3) + 1e-9 * rng.standard_normal((40, 6))
    ref = float(repsim.cka(x, y, method="gram"))
    xb, yb = x.astype(">f8"), y.astype(">f8")
    # before: '>f8' was taken for half precision and computed in float32
    assert float(repsim.cka(xb, yb, method="gram")) == ref
    assert float(repsim.cka(xb, yb, method="features")) == float(repsim.cka(x, y, method="features"))
    assert repsim.gram(xb).dtype == np.float64
    assert repsim.cka_matrix([xb], [yb]).values[0, 0] == pytest.approx(ref, abs=1e-15)
    assert float(repsim.cca(xb, yb)) == float(repsim.cca(x, y))
    assert repsim.hsic(repsim.gram(xb).astype(">f8"), repsim.gram(yb)) == repsim.hsic(repsim.gram(x), repsim.gram(y))
    assert repsim.median_sigma(x.astype(">f4")) == repsim.median_sigma(x.astype("<f4"))


@pytest.mark.parametrize("call", [
    lambda a, b: repsim.cka(a, b),
    lambda a, b: repsim.cka_matrix([a], [b]),
    lambda a, b: repsim.cca(a, b),
    lambda a, b: repsim.pc_variance_fraction(a),
    lambda a, b: repsim.gram(a),
])
def test_complex_masked_and_non_numeric_refused(rng, call):
    x = rng.standard_normal((10, 3))
    with pytest.raises(TypeError, match="must be real; got complex"):
        call(x + 1j * x, x)  # before: the imaginary part was silently dropped
    with pytest.raises(TypeError, match="must be real; got complex"):
        call(torch.tensor(x + 1j * x), torch.tensor(x))
    masked = np.ma.masked_array(x, mask=np.zeros_like(x, dtype=bool))
    with pytest.raises(TypeError, match="masked array"):
        call(masked, x)
    with pytest.raises(TypeError, match="numeric"):
        call(x.astype(str), x)
    meta = torch.empty((10, 3), device="meta")
    with pytest.raises(TypeError, match="'meta' device"):
        call(meta, meta)


def test_lists_and_integers_still_read(rng):
    x = rng.integers(0, 5, size=(12, 3))
    y = x + rng.standard_normal((12, 3))
    assert float(repsim.cka(x.tolist(), y.tolist())) == float(repsim.cka(x.astype(np.float64), y))


# --------------------------------------------------------------------------- issue 11, smaller


def test_two_examples_give_exactly_one_at_most():
    x, y = np.array([[0.0], [1.0]]), np.array([[3.0], [1.0]])
    # before: 1.0000000000000002
    for method in ("gram", "features"):
        assert float(repsim.cka(x, y, method=method)) == 1.0
    r = np.random.default_rng(7)
    for _ in range(50):
        a, b = r.standard_normal((2, 3)), r.standard_normal((2, 4))
        assert 0.0 <= float(repsim.cka(a, b)) <= 1.0
        assert 0.0 <= repsim.cka_matrix([a, b]).values.max() <= 1.0
        u = r.standard_normal((5, 2))
        assert -1.0 <= float(repsim.cka(u, u @ r.standard_normal((2, 2)), estimator="unbiased")) <= 1.0


@pytest.mark.parametrize("kw, match", [
    (dict(kernel="rbf", sigma="1"), "sigma must be a finite number > 0 or None; got '1'"),
    (dict(kernel="rbf", sigma=True), "sigma must be a finite number > 0 or None; got True"),
    (dict(kernel="rbf", threshold=True), "threshold must be a finite number > 0; got True"),
    (dict(kernel="rbf", threshold="0.5"), "threshold must be"),
    (dict(sigma=1.0), r"sigma applies to kernel='rbf' only; got sigma=1.0 with kernel='linear'"),
    (dict(estimator=1), "estimator must be one of"),
])
def test_option_types(rng, kw, match):
    x = rng.standard_normal((10, 3))
    with pytest.raises(ValueError, match=match):
        repsim.cka(x, x, **kw)
    with pytest.raises(ValueError, match=match):
        repsim.cka_matrix([x], **kw)


def test_duplicate_layer_labels_refused(rng):
    x = rng.standard_normal((10, 3))
    with pytest.raises(ValueError, match=r"xs has layer keys 1 and '1' that are both labelled '1'"):
        repsim.cka_matrix({1: x, "1": 2 * x})
    with pytest.raises(ValueError, match="ys has layer keys"):
        repsim.cka_matrix({"a": x}, {1: x, "1": x})


def test_options_are_keyword_only(rng):
    x = rng.standard_normal((10, 3))
    for call in (lambda: repsim.cka(x, x, "rbf"), lambda: repsim.hsic(x @ x.T, x @ x.T, "unbiased"),
                 lambda: repsim.gram(x, "rbf"), lambda: repsim.cca(x, x, "mean"),
                 lambda: repsim.svcca(x, x, 0.9), lambda: repsim.median_sigma(x, 0.5),
                 lambda: repsim.pc_variance_fraction(x, 1), lambda: repsim.remove_top_pcs(x, 1),
                 lambda: repsim.dominant_examples(x, 2)):
        with pytest.raises(TypeError, match="positional argument"):
            call()


def test_warnings_from_cka_matrix_point_at_the_caller(rng):
    x = rng.standard_normal((12, 3))
    with pytest.warns(DegenerateRepresentationWarning) as record:
        repsim.cka_matrix({"ok": x, "flat": np.ones((12, 2))})
    assert record[0].filename == __file__
    with pytest.warns(DegenerateRepresentationWarning) as record:
        repsim.cka(x, np.ones((12, 2)))
    assert record[0].filename == __file__


def test_callable_options_come_from_the_table():
    """``transform`` (MinibatchCKA, GramHooks) and ``forward`` (CaptureOptions) are one
    rule each in V.PARAMS: a callable or None, else a TypeError naming the argument and
    the expected signature."""
    from repsim import _validation as V

    V.check_params(transform=None, forward=len)
    with pytest.raises(TypeError, match=r"transform must be a callable \(n, features\) -> "
                                        r"\(n, features'\) or None; got 3"):
        V.check_params(transform=3)
    with pytest.raises(TypeError, match=r"forward must be a callable \(model, batch\) -> output "
                                        r"or None; got 'f'"):
        V.check_params(forward="f")
    with pytest.raises(TypeError, match="f must be a callable; got 1"):
        V.IsCallable()(1, "f")
    with pytest.raises(TypeError, match="transform must be a callable"):
        repsim.MinibatchCKA(transform=3)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with pytest.raises(TypeError, match=r"forward must be a callable \(model, batch\)"):
        repsim.CaptureOptions(forward="f")
    with pytest.raises(TypeError, match=r"transform must be a callable \(n, features\)"):
        repsim.GramHooks(net, ["0"], transform=3)
