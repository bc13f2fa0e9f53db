"""MinibatchCKA: agreement with full-data CKA, merging, state, ragged batches."""

import functools
import warnings

import numpy as np
import pytest
import torch

import repsim
from repsim.streaming import GROUP_STATES, SUM_STATES


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
    hab = sum(repsim.hsic(repsim.gram(b[a]), repsim.gram(b[c]), "unbiased") for b in batches)
    haa = sum(repsim.hsic(repsim.gram(b[a]), repsim.gram(b[a]), "unbiased") for b in batches)
    hcc = sum(repsim.hsic(repsim.gram(b[c]), repsim.gram(b[c]), "unbiased") for b in batches)
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


# --------------------------------------------------------------------------- declared states
def fed(rng, batches=3, n=20, **opts):
    acc = repsim.MinibatchCKA(**opts)
    for _ in range(batches):
        acc.update(stack(rng, n))
    return acc


def test_states_are_declared_on_the_accumulators_library(rng):
    acc = fed(rng, groups=2)
    state = acc.state_dict()
    assert set(state) == {"class", "options", "names_a", "names_b", "symmetric", "sigmas_a",
                          "sigmas_b", *SUM_STATES, *GROUP_STATES}
    for key in SUM_STATES + GROUP_STATES:  # every state, counts included, is an array
        assert isinstance(state[key], np.ndarray)
    assert state["n_batches"].dtype == np.int64 and state["n_batches"] == 3
    t = repsim.MinibatchCKA(groups=2)
    t.update({k: torch.tensor(v) for k, v in stack(rng, 20).items()})
    for key in SUM_STATES + GROUP_STATES:
        assert isinstance(t.state_dict()[key], torch.Tensor)
    acc.reset()
    assert not acc.started and acc.n_batches == 0 and acc.names_a is None


@pytest.mark.parametrize("opts,other", [
    (dict(kernel="rbf", sigma=1.0), dict(kernel="rbf", sigma=50.0)),
    (dict(kernel="rbf", sigma={"layer0": 1.0, "layer1": 1, "layer2": 1, "layer3": 1}),
     dict(kernel="rbf", sigma={"layer0": 2.0, "layer1": 1, "layer2": 1, "layer3": 1})),
    (dict(transform=functools.partial(repsim.remove_top_pcs, k=1)), dict()),
    (dict(transform=functools.partial(repsim.remove_top_pcs, k=1)),
     dict(transform=functools.partial(repsim.remove_top_pcs, k=2))),
    (dict(weighting="pairs"), dict(weighting="batches")),
    (dict(groups=2), dict(groups=3)),
    (dict(kernel="rbf", threshold=0.5), dict(kernel="rbf", threshold=1.0)),
])
def test_merge_refuses_another_computation(rng, opts, other):
    a, b = fed(rng, **opts), fed(rng, **other)
    before = a.state_dict()
    with pytest.raises(ValueError, match="cannot merge accumulators of different computations"):
        a.merge(b)
    with pytest.raises(ValueError, match="other options"):
        a.load_state_dict(b.state_dict())
    np.testing.assert_array_equal(a.state_dict()["sum_ab"], before["sum_ab"])


def test_merge_refuses_other_calibrated_bandwidths_and_layers(rng):
    a = fed(rng, kernel="rbf")
    b = repsim.MinibatchCKA(kernel="rbf")
    b.update({k: 100 * v for k, v in stack(rng, 20).items()})  # calibrated 100x larger
    with pytest.raises(ValueError, match="sigmas_a"):
        a.merge(b)
    c = repsim.MinibatchCKA()
    c.update({"x": rng.standard_normal((8, 2))})
    with pytest.raises(ValueError, match="names_a"):
        fed(rng).merge(c)


def test_merge_refuses_numpy_with_torch_in_repsims_words(rng):
    t = repsim.MinibatchCKA()
    t.update({k: torch.tensor(v) for k, v in stack(rng, 20).items()})
    with pytest.raises(TypeError, match="holds numpy arrays.*accumulated torch arrays on cpu"):
        t.merge(fed(rng))
    with pytest.raises(TypeError, match="acts_a\\['layer0'\\] holds numpy arrays"):
        t.update(stack(rng, 20))  # a numpy batch after torch batches
    assert t.n_batches == 1


def test_lambdas_identify_by_object_and_partials_by_contents(rng):
    f = lambda x: x[:, :2]  # noqa: E731
    a, b = fed(rng, transform=f), fed(rng, transform=f)
    assert a.merge(b).n_batches == 6
    with pytest.raises(ValueError, match="transform"):
        a.merge(fed(rng, transform=lambda x: x[:, :2]))
    p = fed(rng, transform=functools.partial(repsim.remove_top_pcs, k=1))
    q = fed(rng, transform=functools.partial(repsim.remove_top_pcs, k=1))
    assert p.merge(q).n_batches == 6


def test_load_state_dict_validates_everything_before_assigning(rng):
    grouped = fed(rng, groups=3)
    plain = fed(rng)
    snapshot = plain.state_dict()

    def unchanged():
        now = plain.state_dict()
        assert now["names_a"] == snapshot["names_a"]
        for key in SUM_STATES:
            np.testing.assert_array_equal(now[key], snapshot[key])
        plain.update(stack(rng, 20))  # still usable (no KeyError on a half-loaded object)
        plain.load_state_dict(snapshot)

    with pytest.raises(ValueError, match="groups"):  # other groups: refused, nothing loaded
        plain.load_state_dict(grouped.state_dict())
    unchanged()
    renamed = dict(grouped.state_dict(), options=dict(grouped.state_dict()["options"], groups=None))
    with pytest.raises(ValueError, match="unexpected keys"):
        plain.load_state_dict(renamed)
    unchanged()
    for key, bad, what in [
        ("sum_ab", np.zeros((3, 4)), "shape \\(4, 4\\)"),
        ("sum_aa", np.zeros(4, dtype=np.float32), "dtype float64"),
        ("n_batches", np.zeros((), dtype=np.float64), "dtype int64"),
        ("names_a", ["a", "b"], "shape \\(2, 4\\)"),  # the names decide the shapes
        ("sum_bb", torch.zeros(4, dtype=torch.float64), "holds torch"),
        ("sum_bb", [0.0] * 4, "numpy array or torch tensor"),
        ("symmetric", "yes", "bool"),
        ("class", "Other", "written by"),
    ]:
        broken = dict(snapshot, **{key: bad})
        with pytest.raises(ValueError, match=what):
            plain.load_state_dict(broken)
        unchanged()
    missing = dict(snapshot)
    del missing["tolerance_b"]
    with pytest.raises(ValueError, match="missing keys \\['tolerance_b'\\]"):
        plain.load_state_dict(missing)
    unchanged()


def test_state_dict_round_trip_is_exact_under_both_weightings(rng):
    for weighting in ("pairs", "batches"):
        batches = [stack(rng, n) for n in (20, 9, 33)]
        whole = repsim.MinibatchCKA(weighting=weighting, groups=2)
        part = repsim.MinibatchCKA(weighting=weighting, groups=2)
        for b in batches:
            whole.update(b)
        part.update(batches[0])
        resumed = repsim.MinibatchCKA(weighting=weighting, groups=2)
        resumed.load_state_dict(part.state_dict())
        for b in batches[1:]:
            resumed.update(b)
        np.testing.assert_array_equal(resumed.compute().values, whole.compute().values)
        np.testing.assert_array_equal(resumed.compute(uncertainty=True)["stderr"].values,
                                      whole.compute(uncertainty=True)["stderr"].values)
        first, second = repsim.MinibatchCKA(weighting=weighting), repsim.MinibatchCKA(weighting=weighting)
        first.update(batches[0])
        for b in batches[1:]:
            second.update(b)
        plain = repsim.MinibatchCKA(weighting=weighting)
        for b in batches:
            plain.update(b)
        np.testing.assert_allclose(first.merge(second).compute().values, plain.compute().values,
                                   rtol=1e-13)


def _simulated_all_reduce(partner_state, partner_check, calls):
    """The collective of a 2-process group, seen from one process: adds the partner's
    check vector first, then its declared states in declaration order."""
    order = iter(SUM_STATES + GROUP_STATES)

    def all_reduce(x):
        key = next(order) if calls else None
        calls.append(key)
        x += partner_check if key is None else partner_state[key]
    return all_reduce


def test_sync_sums_every_declared_state(rng):
    a, b = fed(rng, batches=2, groups=2), fed(rng, batches=3, groups=2)
    expected = repsim.MinibatchCKA(groups=2).merge(a).merge(b)
    fp = float(b._fingerprint())
    calls = []
    a.sync(_simulated_all_reduce(b.state_dict(), np.array([1.0, 1.0, fp, fp * fp]), calls))
    assert calls == [None, *SUM_STATES, *GROUP_STATES]
    for key in SUM_STATES + GROUP_STATES:
        np.testing.assert_array_equal(a.state_dict()[key], expected.state_dict()[key])
    assert a.n_batches == 5


def test_sync_refuses_differing_or_empty_processes(rng):
    a, b = fed(rng), fed(rng, batches=1, n=20, estimator="biased")
    fp = float(b._fingerprint())
    before = a.state_dict()
    with pytest.raises(ValueError, match="different layers or options"):
        a.sync(_simulated_all_reduce(b.state_dict(), np.array([1.0, 1.0, fp, fp * fp]), []))
    with pytest.raises(ValueError, match="1 of 2 processes have no batches"):
        a.sync(_simulated_all_reduce({}, np.array([1.0, 0.0, 0.0, 0.0]), []))
    np.testing.assert_array_equal(a.state_dict()["sum_ab"], before["sum_ab"])


# --------------------------------------------------------------------------- batch weighting
def official_minibatch_cka(batches):
    """The official accumulator (Nguyen et al.'s ``efficient_CKA.MinibatchCKA``), written
    out: raw U-centred inner products summed over batches, normalised once."""
    def ugram(x):
        x = x.reshape(x.shape[0], -1)
        gram = x @ x.T
        n = gram.shape[0]
        np.fill_diagonal(gram, 0)
        means = np.sum(gram, 0) / (n - 2)
        means -= np.sum(means) / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0)
        return gram.reshape(-1)

    acc = 0
    for acts in batches:
        g = np.stack([ugram(x) for x in acts.values()])
        acc = acc + g @ g.T
    norm = np.sqrt(np.diag(acc))
    return acc / norm[:, None] / norm[None, :]


def eq3_minibatch_cka(batches):
    """Nguyen et al. eq. (3): every batch's unbiased HSIC weighted equally."""
    names = list(batches[0])
    h = np.zeros((len(names), len(names)))
    for acts in batches:
        grams = [repsim.gram(acts[k]) for k in names]
        h += [[repsim.hsic(k, l, "unbiased") for l in grams] for k in grams]
    d = np.sqrt(np.diag(h))
    return h / d[:, None] / d[None, :]


@pytest.mark.parametrize("sizes", [(256, 200, 56), (4, 5, 64, 439)])
def test_ragged_batches_official_by_default_eq3_with_batches(rng, sizes):
    batches = [stack(rng, n) for n in sizes]
    pairs, per_batch = repsim.MinibatchCKA(), repsim.MinibatchCKA(weighting="batches")
    for b in batches:
        pairs.update(b)
        per_batch.update(b)
    official, eq3 = official_minibatch_cka(batches), eq3_minibatch_cka(batches)
    np.testing.assert_allclose(pairs.compute().values, official, rtol=0, atol=1e-10)
    np.testing.assert_allclose(per_batch.compute().values, eq3, rtol=0, atol=1e-10)
    assert np.abs(official - eq3).max() > 1e-3  # the two really differ on these batches
    assert pairs.compute().attrs["weighting"] == "pairs"
    assert per_batch.compute().attrs["weighting"] == "batches"


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(4, 40), min_size=1, max_size=5), seed=st.integers(0, 2**16))
def test_ragged_batches_property(sizes, seed):
    rng = np.random.default_rng(seed)
    batches = [stack(rng, n) for n in sizes]
    pairs, per_batch = repsim.MinibatchCKA(), repsim.MinibatchCKA(weighting="batches")
    for b in batches:
        pairs.update(b)
        per_batch.update(b)
    np.testing.assert_allclose(pairs.compute().values, official_minibatch_cka(batches), atol=1e-10)
    np.testing.assert_allclose(per_batch.compute().values, eq3_minibatch_cka(batches), atol=1e-10)
    if len(set(sizes)) == 1:  # equal batches: the two weightings agree
        np.testing.assert_allclose(pairs.compute().values, per_batch.compute().values, atol=1e-12)


def test_batches_weighting_with_groups_merge_and_biased(rng):
    batches = [stack(rng, n) for n in (12, 30, 7, 19)]
    whole = repsim.MinibatchCKA(weighting="batches", groups=2, estimator="biased")
    a = repsim.MinibatchCKA(weighting="batches", groups=2, estimator="biased")
    b = repsim.MinibatchCKA(weighting="batches", groups=2, estimator="biased")
    for i, x in enumerate(batches):
        whole.update(x)
        (a if i < 2 else b).update(x)
    names = list(batches[0])
    h = np.zeros((4, 4))
    for x in batches:
        grams = [repsim.gram(x[k]) for k in names]
        h += [[repsim.hsic(k, l, "biased") for l in grams] for k in grams]
    np.testing.assert_allclose(whole.compute().values, h / np.sqrt(np.outer(np.diag(h), np.diag(h))),
                               atol=1e-12)
    np.testing.assert_allclose(a.merge(b).compute().values, whole.compute().values, rtol=1e-13)
    # group g holds batches g, g+2 (each batch's HSIC): its ratio by hand
    g0 = sum(np.array([[repsim.hsic(repsim.gram(x[k]), repsim.gram(x[l]), "biased") for l in names]
                       for k in names]) for x in batches[::2])
    np.testing.assert_allclose(whole.state_dict()["group_ab"][0], g0, rtol=1e-12)


# --------------------------------------------------------------------------- hostile input
@pytest.mark.parametrize("kwargs,err,match", [
    (dict(kernel="rbf", sigma=-1), ValueError, "sigma must be a finite number > 0; got -1"),
    (dict(kernel="rbf", sigma="1"), ValueError, "sigma must be a finite number > 0"),
    (dict(kernel="rbf", sigma=float("nan")), ValueError, "sigma must be"),
    (dict(kernel="rbf", sigma={"a": 0.0}), ValueError, "sigma\\['a'\\] must be"),
    (dict(sigma=1.0), ValueError, "sigma applies to kernel='rbf' only"),
    (dict(transform=3), TypeError, "transform must be a callable"),
    (dict(threshold=True), ValueError, "threshold must be a finite number > 0"),
    (dict(weighting="equal"), ValueError, "weighting must be one of 'pairs', 'batches'"),
])
def test_bad_options_refused_at_construction(kwargs, err, match):
    with pytest.raises(err, match=match):
        repsim.MinibatchCKA(**kwargs)


@pytest.mark.parametrize("engine", ["numpy", "numba"])
@pytest.mark.parametrize("transform,match", [
    (lambda a: a[:5], "n=20.*got shape \\(5, "),
    (lambda a: a[:, 0], "got shape \\(20,\\)"),
    (lambda a: a[:, :0], "got shape \\(20, 0\\)"),
    (lambda a: a.tolist(), "array of the input's library"),
])
def test_transform_that_changes_n_or_shape_is_refused(rng, engine, transform, match):
    acc = repsim.MinibatchCKA(transform=transform, engine=engine)
    with pytest.raises((ValueError, TypeError), match=match):
        acc.update(stack(rng, 20))
    assert not acc.started


@pytest.mark.parametrize("where", [(0, 0), (2, 5)])  # on and off the diagonal
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_update_grams_with_nan_or_inf_refused_before_state(rng, where, bad):
    acc = repsim.MinibatchCKA()
    grams = {k: v @ v.T for k, v in stack(rng, 10).items()}
    acc.update_grams(grams)
    before = acc.state_dict()
    poisoned = dict(grams)
    poisoned["layer2"] = poisoned["layer2"].copy()
    poisoned["layer2"][where] = bad
    with pytest.raises(ValueError, match="grams_a\\['layer2'\\] contains NaN or Inf"):
        acc.update_grams(poisoned)
    for key in SUM_STATES:
        np.testing.assert_array_equal(acc.state_dict()[key], before[key])
    acc.update_grams(grams)
    assert np.isfinite(acc.compute().values).all()


def test_inputs_that_require_grad_are_detached(rng):
    acts = {k: torch.tensor(v, requires_grad=True) for k, v in stack(rng, 20).items()}
    acc = repsim.MinibatchCKA()
    acc.update(acts)
    acc.update_grams({k: v @ v.T for k, v in acts.items()})
    for key in SUM_STATES:
        assert not acc.state_dict()[key].requires_grad
    assert acc._values["sum_ab"].grad_fn is None
    ref = repsim.MinibatchCKA()
    ref.update({k: v.detach() for k, v in acts.items()})
    ref.update({k: v.detach() for k, v in acts.items()})
    np.testing.assert_allclose(acc.compute().values, ref.compute().values, atol=1e-12)


# --------------------------------------------------------------------------- the base, reused
from repsim._accumulator import Accumulator, State  # noqa: E402


class Moments(Accumulator):
    """A feature-moment accumulator written on the base: sum x (D,), X^T X (D, D), n."""

    STATES = (State("sum_x", ("d",)), State("xtx", ("d", "d")), State("n", (), "int64"))
    LAYOUT = ("names",)

    def __init__(self, centre=False):
        self.centre = centre
        self.reset()

    def _options(self):
        return {"centre": self.centre}

    def _dims(self, layout):
        return {"d": len(layout["names"])}

    def update(self, x, names):
        self._check_like(x, "x")
        if not self.started:
            self._start({"names": list(names)}, np, None)
        self._values["sum_x"] += x.sum(0)
        self._values["xtx"] += x.T @ x
        self._values["n"] += x.shape[0]


def test_a_second_accumulator_reuses_the_base_unchanged(rng):
    xs = [rng.standard_normal((n, 3)) for n in (5, 9, 4)]
    whole, a, b = Moments(), Moments(), Moments()
    for i, x in enumerate(xs):
        whole.update(x, "pqr")
        (a if i < 1 else b).update(x, "pqr")
    a.merge(b)
    np.testing.assert_allclose(a._values["xtx"], whole._values["xtx"], rtol=1e-14)
    assert int(a._values["n"]) == 18
    copy = Moments()
    copy.load_state_dict(whole.state_dict())
    np.testing.assert_array_equal(copy.state_dict()["sum_x"], whole.state_dict()["sum_x"])
    with pytest.raises(ValueError, match="xtx.*shape \\(3, 3\\)"):
        Moments().load_state_dict(dict(whole.state_dict(), xtx=np.zeros((2, 2))))
    with pytest.raises(ValueError, match="centre: True here, False in other"):
        Moments(centre=True).merge(whole)
    fp = float(whole._fingerprint())
    calls = []

    def all_reduce(x):
        calls.append(x.shape)
        x += np.array([1.0, 1.0, fp, fp * fp]) if len(calls) == 1 else x  # partner = a copy

    twice = Moments()
    twice.load_state_dict(whole.state_dict())
    twice.sync(all_reduce)
    assert calls == [(4,), (3,), (3, 3), ()]
    np.testing.assert_allclose(twice._values["xtx"], 2 * whole._values["xtx"], rtol=1e-15)
