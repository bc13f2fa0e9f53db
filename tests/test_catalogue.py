"""The measure table: every claimed invariance holds, no unclaimed one does, and the
user guide renders the same table."""

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import repsim
from repsim.catalogue import INVARIANCES, rst_table
from repsim.catalogue import MEASURES as DECLARED

ROOT = Path(__file__).resolve().parents[1]


def _on_small_data(m):
    """The registered measures, sized for the tests' 40-60 examples: cycle k-NN saturates
    at 1 (every example comes back through one of its k² paths) unless k² is small next
    to n, so it runs with k=4 here."""
    if m.name == "cycle_knn":
        return replace(m, options={**m.options, "k": 4})
    return m


MEASURES = [_on_small_data(m) for m in DECLARED]


def _data(seed=0, n=60):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 5)) * [1.0, 2.0, 0.5, 1.5, 1.0]
    y = np.tanh(x @ rng.standard_normal((5, 4))) + 0.4 * rng.standard_normal((n, 4))
    return x, y


def _transform(kind, a, rng):
    p = a.shape[1]
    if kind == "orthogonal":
        return a @ np.linalg.qr(rng.standard_normal((p, p)))[0]
    if kind == "isotropic_scaling":
        return 3.7 * a
    if kind == "invertible_linear":
        u, _, vt = np.linalg.svd(rng.standard_normal((p, p)))
        return a @ (u * np.linspace(0.3, 3.0, p)) @ vt  # condition number 10
    if kind == "translation":
        return a + 5.0 * rng.standard_normal(p)
    raise AssertionError(kind)


CASES = [(m, inv) for m in MEASURES for inv in INVARIANCES]


@pytest.mark.parametrize("measure,invariance", CASES, ids=[f"{m.name}-{i}" for m, i in CASES])
def test_the_table_states_exactly_the_invariances_that_hold(measure, invariance):
    """Claimed: the value stays when x or y is transformed. Not claimed: it moves for at
    least one side (PWCCA, say, is invariant to rotating y but not x)."""
    x, y = _data()
    rng = np.random.default_rng(1)
    before = float(measure(x, y))
    after = [float(measure(_transform(invariance, x, rng), y)),
             float(measure(x, _transform(invariance, y, rng)))]
    change = [abs(a - before) for a in after]
    if invariance in measure.invariances:
        assert max(change) < 1e-8 * max(1.0, abs(before)), (measure.name, before, after)
    else:  # the table does not under-claim either
        assert max(change) > 1e-6, (measure.name, before, after)


@pytest.mark.parametrize("measure", MEASURES, ids=[m.name for m in MEASURES])
def test_symmetry_and_range_as_stated(measure):
    x, y = _data(seed=2)
    xy, yx = float(measure(x, y)), float(measure(y, x))
    if measure.symmetric:
        assert abs(xy - yx) < 1e-9
    else:
        assert abs(xy - yx) > 1e-6
    lo, hi = {"[0, 1]": (0, 1), "<= 1": (-np.inf, 1), "[-1, 1]": (-1, 1),
              "[0, pi/2]": (0, np.pi / 2), "[0, inf)": (0, np.inf)}[measure.range]
    assert lo - 1e-12 <= xy <= hi + 1e-12
    same = float(measure(x, x))
    if measure.options.get("ridge", 0) and measure.kind == "similarity":
        assert 0 < same < 1  # a ridge penalty shrinks even a perfect prediction
        return
    if measure.name == "cycle_knn":  # an example that none of its k neighbours has among
        assert xy < same <= 1  # theirs (an anti-hub) does not come back, even on x vs x
        return
    expected = 0.0 if measure.kind in ("metric", "distance") else 1.0
    assert abs(same - expected) < 1e-6


def test_measures_dataframe_lists_every_row_with_its_columns():
    table = repsim.measures()
    assert list(table.index) == [m.name for m in DECLARED]
    for inv in INVARIANCES:
        assert table[inv].dtype == bool
    assert table.loc["shape_cca_angular", "invertible_linear"]
    assert not table.loc["procrustes_angular", "invertible_linear"]
    assert table.loc["mutual_knn", "chance"] == "k / (n - 1) (exact)"
    for m in MEASURES:
        assert callable(getattr(repsim, m.function))


def test_user_guide_renders_the_same_table():
    text = (ROOT / "docs" / "user_guide" / "measures.rst").read_text()
    block = re.search(r"\.\. measures-table-start\n\n(.*?)\n\.\. measures-table-end", text, re.S)
    assert block is not None
    assert block.group(1) == rst_table()


def test_mutual_knn_permutation_chance_level_is_k_over_n_minus_1():
    x, y = _data(seed=4, n=40)
    rng = np.random.default_rng(0)
    k = 10
    # exact expectation over all permutations: average over many and compare to k/(n-1)
    vals = [float(repsim.mutual_knn(x, y[rng.permutation(40)], k)) for _ in range(400)]
    se = np.std(vals) / np.sqrt(len(vals))
    assert abs(np.mean(vals) - k / 39) < 4 * se


def test_jaccard_knn_permutation_chance_level_is_the_hypergeometric_sum():
    from scipy.stats import hypergeom

    x, y = _data(seed=5, n=40)
    rng = np.random.default_rng(1)
    k = 8
    s = np.arange(k + 1)
    exact = float(np.sum(hypergeom(39, k, k).pmf(s) * s / (2 * k - s)))
    vals = [float(repsim.jaccard_knn(x, y[rng.permutation(40)], k)) for _ in range(400)]
    se = np.std(vals) / np.sqrt(len(vals))
    assert abs(np.mean(vals) - exact) < 4 * se


@pytest.mark.parametrize("module", ["shape", "regression", "neighbours", "rdm", "catalogue"])
def test_docstring_examples_hold(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"repsim.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("measure", MEASURES, ids=[m.name for m in MEASURES])
def test_every_measure_plugs_into_permutation_test(measure):
    """Plain ``f(x, y, **options) -> scalar`` callables: the permutation test recomputes
    them on shuffled examples; related data beat every shuffle."""
    x, y = _data(seed=6, n=40)
    ds = repsim.permutation_test(x, y, measure=getattr(repsim, measure.function),
                                 measure_kwargs=measure.options, n_permutations=19, seed=0,
                                 progress=False,
                                 alternative="less" if measure.kind != "similarity" else "greater")
    observed = ds[ds.attrs["estimate"]]
    assert abs(float(observed) - float(measure(x, y))) < 1e-12
    assert float(ds.p_value) == pytest.approx(1 / 20)
