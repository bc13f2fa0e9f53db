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
