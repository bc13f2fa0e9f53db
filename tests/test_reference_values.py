"""The public reference values of DESIGN.md section 2 (Kornblith et al.'s demo)."""

import numpy as np
import pytest

import repsim
from conftest import kornblith_demo


@pytest.mark.parametrize("engine", ["numpy", "numba"])
@pytest.mark.parametrize("method", ["gram", "features"])
def test_linear_cka(engine, method):
    x, y = kornblith_demo()
    assert repsim.cka(x, y, method=method, engine=engine) == pytest.approx(0.55761, abs=5e-6)


@pytest.mark.parametrize("engine", ["numpy", "numba"])
def test_debiased_linear_cka(engine):
    x, y = kornblith_demo()
    value = repsim.cka(x, y, estimator="unbiased", engine=engine)
    assert value == pytest.approx(0.51346, abs=5e-6)


@pytest.mark.parametrize("engine", ["numpy", "numba"])
def test_rbf_cka_threshold_half(engine):
    x, y = kornblith_demo()
    value = repsim.cka(x, y, kernel="rbf", threshold=0.5, engine=engine)
    assert value == pytest.approx(0.65483, abs=5e-6)


def test_reference_values_through_cka_matrix_and_minibatch():
    x, y = kornblith_demo()
    sim = repsim.cka_matrix([x], [y])
    assert float(sim[0, 0]) == pytest.approx(0.55761, abs=5e-6)
    acc = repsim.MinibatchCKA()
    acc.update([x], [y])
    assert float(acc.compute()[0, 0]) == pytest.approx(0.51346, abs=5e-6)


def test_median_sigma_matches_demo_bandwidth():
    x, _ = kornblith_demo()
    d = np.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
    assert repsim.median_sigma(x, threshold=0.5) == pytest.approx(0.5 * np.sqrt(np.median(d)))
