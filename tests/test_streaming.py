"""MinibatchCKA: agreement with full-data CKA, merging, state, ragged batches."""

import warnings

import numpy as np
import pytest
import torch

import repsim
from repsim.streaming import SUM_STATES


def stack(rng, n, widths=(3, 5, 8, 2)):
    x = rng.standard_normal((n, 6))
    return {f"layer{i}": np.tanh(x @ rng.standard_normal((6, w))) + 0.3 * rng.standard_normal((n, w))
            for i, w in enumerate(widths)}


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_one_batch_equals_full_data_cka(rng, kernel, estimator):
    acts = stack(rng, 40)
    acc = repsim.MinibatchCKA(kernel=kernel, estimator=estimator)
    acc.update(acts)
    full = repsim.cka_matrix(acts, kernel=kernel, estimator=estimator)
    np.testing.assert_allclose(acc.compute().values, full.values, atol=1e-12)


def test_minibatch_formula_by_hand(rng):
    batches = [stack(rng, 16) for _ in range(3)]
    acc = repsim.MinibatchCKA()
    for b in batches:
        acc.update(b)
    a, c = "layer0", "layer2"
    hab = sum(repsim.hsic(repsim.gram(b[a]), repsim.gram(b[c]), estimator="unbiased") for b in batches)
    haa = sum(repsim.hsic(repsim.gram(b[a]), repsim.gram(b[a]), estimator="unbiased") for b in batches)
    hcc = sum(repsim.hsic(repsim.gram(b[c]), repsim.gram(b[c]), estimator="unbiased") for b in batches)
    assert float(acc.compute().sel(layer_a=a, layer_b=c)) == pytest.approx(hab / np.sqrt(haa * hcc), abs=1e-12)
    res = acc.compute()
    assert res.attrs["n_batches"] == 3 and res.attrs["n_examples"] == 48
    assert res.attrs["measure"] == "minibatch_cka" and res.attrs["estimator"] == "unbiased"


def test_merge_equals_one_accumulator(rng):
    batches = [stack(rng, 20) for _ in range(5)]
    one = repsim.MinibatchCKA()
    first, second = repsim.MinibatchCKA(), repsim.MinibatchCKA()
    for i, b in enumerate(batches):
        one.update(b)
        (first if i < 2 else second).update(b)
    merged = first.merge(second)
    np.testing.assert_allclose(merged.compute().values, one.compute().values, atol=1e-13)
    assert merged.n_batches == 5
    empty = repsim.MinibatchCKA().merge(one)
    np.testing.assert_allclose(empty.compute().values, one.compute().values, atol=0)


def test_across_models_equals_off_diagonal_block_of_within(rng):
    within, across = repsim.MinibatchCKA(), repsim.MinibatchCKA()
    for _ in range(3):
        a, b = stack(rng, 24), stack(rng, 24, widths=(4, 7))
        b = {f"b_{k}": v for k, v in b.items()}
        across.update(a, b)
        within.update({**a, **b})
    w = within.compute()
    got = across.compute()
    expected = w.sel(layer_a=list(got.layer_a.values), layer_b=list(got.layer_b.values))
    np.testing.assert_allclose(got.values, expected.values, atol=1e-12)


def test_ragged_last_batch(rng):
    acc = repsim.MinibatchCKA()
    sizes = [32, 32, 7]
    batches = [stack(rng, n) for n in sizes]
    for b in batches:
        acc.update(b)
    assert acc.n_examples == sum(sizes)
    ref = repsim.MinibatchCKA()
    for b in batches:
        ref.update(b)
    np.testing.assert_allclose(acc.compute().values, ref.compute().values)


def test_state_dict_round_trip_and_resume(rng):
    batches = [stack(rng, 20) for _ in range(4)]
    straight = repsim.MinibatchCKA()
    for b in batches:
        straight.update(b)
    part = repsim.MinibatchCKA()
    for b in batches[:2]:
        part.update(b)
    state = part.state_dict()
    assert set(SUM_STATES) <= set(state)
    resumed = repsim.MinibatchCKA()
    resumed.load_state_dict(state)
    for b in batches[2:]:
        resumed.update(b)
    np.testing.assert_allclose(resumed.compute().values, straight.compute().values, atol=0)
    # the saved state is a copy, not a view of the live sums
    part.update(batches[2])
    assert state["n_batches"] == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numpy_and_torch_agree(rng, dtype):
    batches = [stack(rng, 30) for _ in range(3)]
    a, t = repsim.MinibatchCKA(), repsim.MinibatchCKA()
    for b in batches:
        a.update(b)
        t.update({k: torch.tensor(v, dtype=dtype) for k, v in b.items()})
    assert isinstance(t.state_dict()["sum_ab"], torch.Tensor)
    np.testing.assert_allclose(a.compute().values, t.compute().values, atol=1e-5 if dtype == torch.float32 else 1e-12)


def test_numba_and_numpy_engines_agree(rng):
    batches = [stack(rng, 30) for _ in range(2)]
    a, b = repsim.MinibatchCKA(engine="numba"), repsim.MinibatchCKA(engine="numpy")
    for x in batches:
        a.update(x)
        b.update(x)
    np.testing.assert_allclose(a.compute().values, b.compute().values, atol=1e-12)


def test_rbf_bandwidth_fixed_after_first_batch(rng):
    acc = repsim.MinibatchCKA(kernel="rbf")
    b1 = stack(rng, 20)
    acc.update(b1)
    sig = list(acc.sigmas_a)
    assert sig[0] == pytest.approx(repsim.median_sigma(b1["layer0"]))
    acc.update({k: 10 * v for k, v in stack(rng, 20).items()})
    assert acc.sigmas_a == sig
    assert list(acc.compute().attrs["sigma_a"]) == pytest.approx(sig)


def test_transform_applied_before_grams(rng):
    acts = stack(rng, 20)
    acc = repsim.MinibatchCKA(transform=lambda x: x[:, :1])
    acc.update(acts)
    expected = repsim.cka_matrix({k: v[:, :1] for k, v in acts.items()}, estimator="unbiased")
    np.testing.assert_allclose(acc.compute().values, expected.values, atol=1e-12)


def test_constant_layer_gives_nan_with_warning(rng):
    acts = stack(rng, 20)
    acts["dead"] = np.full((20, 4), 3.0)
    acc = repsim.MinibatchCKA()
    acc.update(acts)
    with pytest.warns(RuntimeWarning, match="'dead'"):
        res = acc.compute()
    assert np.isnan(res.sel(layer_a="dead")).all() and np.isnan(res.sel(layer_b="dead")).all()
    ok = res.drop_sel(layer_a="dead", layer_b="dead")
    assert np.isfinite(ok).all()


def test_bad_updates(rng):
    acc = repsim.MinibatchCKA()
    acc.update(stack(rng, 10))
    with pytest.raises(ValueError, match="same layers"):
        acc.update({"other": rng.standard_normal((10, 3))})
    with pytest.raises(ValueError, match="every update or in none"):
        acc.update(stack(rng, 10), stack(rng, 10))
    with pytest.raises(ValueError, match="no batches"):
        repsim.MinibatchCKA().compute()
    with pytest.raises(ValueError, match="at least 4 examples"):
        repsim.MinibatchCKA().update(stack(rng, 3))
    with pytest.raises(ValueError, match=r"acts_a\['b'\].*n=5"):
        repsim.MinibatchCKA().update({"a": rng.standard_normal((6, 2)), "b": rng.standard_normal((5, 2))})
    with pytest.raises(ValueError, match="estimator must be one of"):
        repsim.MinibatchCKA(estimator="debiased")
    other = repsim.MinibatchCKA(estimator="biased")
    other.update(stack(rng, 10))
    with pytest.raises(ValueError, match="cannot merge"):
        acc.merge(other)
    with pytest.raises(TypeError, match="MinibatchCKA"):
        acc.merge(object())


def test_no_warning_for_healthy_layers(rng):
    acc = repsim.MinibatchCKA()
    acc.update(stack(rng, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        acc.compute()
