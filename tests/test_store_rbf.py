"""RBF CKA of stores streamed in blocks of examples: the median-heuristic bandwidth selected
exactly over all n^2 squared distances in passes over the block pairs
(repsim._block_median), the RBF gram summed block pair by block pair
(repsim._block_cka), on one process and on a 2-worker LocalCluster.

References: the RBF gram from explicit pairwise distances in long double and np.median over
the whole n x n distance matrix, as in Kornblith et al.'s code (ref_cka of
tests/test_rbf_bandwidths.py)."""

import numpy as np
import pytest

pytest.importorskip("zarr")
pytest.importorskip("dask")
xr = pytest.importorskip("xarray")
from hypothesis import given, settings, strategies as st  # noqa: E402

import repsim  # noqa: E402
from repsim import _block_median as BM  # noqa: E402
from repsim._block_cka import block_sq_distances, scale_exponent  # noqa: E402
from test_rbf_bandwidths import ref_cka  # noqa: E402
from test_store_stream import (  # noqa: E402,F401  (fixtures and helpers)
    _hsic_u, client, layers_of, quiet, shuffled, store, write_store)

TOL = 1e-12


def ref_rbf_cka(x, y, estimator="biased", sigma=None):
    """RBF CKA from the definition in long double (tests/test_rbf_bandwidths.py: the gram,
    or the gram less 1 through ``expm1`` when sigma exceeds the spread); sigma the median
    heuristic over all n^2 entries unless given."""
    return ref_cka(x, y, sigma, estimator)


# ------------------------------------------------------------------ the exact median

def scale_of(x, batch):
    """The shift and power-of-two exponent the streamed path gives a layer (from the
    first block, or from all rows when the first block is constant)."""
    shift = x[:batch].mean(0)
    amax = float(np.abs(x[:batch] - shift).max()) or float(np.abs(x - shift).max())
    return shift, scale_exponent(amax)


def assembled(x, batch):
    """The n x n squared distances put together from the blocks' own distances."""
    n = len(x)
    shift, e = scale_of(x, batch)
    d = np.empty((n, n))
    for i in range(0, n, batch):
        for j in range(i, n, batch):
            ri, rj = slice(i, min(n, i + batch)), slice(j, min(n, j + batch))
            blk = block_sq_distances(x[ri], x[rj], shift, ri == rj, "x", ri, rj, exp=e)[1]
            d[ri, rj], d[rj, ri] = blk, blk.T
    return d, shift


def medians_by_passes(x, batch, monkeypatch=None, cap=None, first=None, step=None):
    if monkeypatch is not None:
        for name, value in (("CAP", cap), ("FIRST_SHIFT", first), ("STEP", step)):
            if value is not None:
                monkeypatch.setattr(BM, name, value)
    n = len(x)
    shift, e = scale_of(x, batch)
    bounds = [slice(s, min(n, s + batch)) for s in range(0, n, batch)]

    def sweep(counts):
        for i, ri in enumerate(bounds):
            for rj in bounds[i:]:
                counts.add_pair(ri, rj, [(x[ri], x[rj])])
        return counts

    return BM.exact_medians(n, ["x"], [shift], "x", sweep, [e])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 37), batch=st.integers(1, 40), ties=st.integers(0, 3),
       scale=st.sampled_from([1e-150, 1e-3, 1.0, 1e5, 1e150]), seed=st.integers(0, 2**16))
def test_passes_select_the_median_of_all_n2_distances_exactly(n, batch, ties, scale, seed):
    """Equal, bit for bit, to np.median over the n x n matrix of the same distances, for any
    block size, odd and even n, duplicated rows (ties, zero distances) and any scale."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3)) * scale + 7 * scale
    for t in range(min(ties, n - 1)):
        x[t + 1] = x[0]
    d, _ = assembled(x, batch)
    median, norm, passes = medians_by_passes(x, batch)
    assert median[0] == np.median(d)
    shift, e = scale_of(x, batch)
    c = np.ldexp(x - shift, -e)
    assert norm[0] == np.einsum("ij,ij->i", c, c).max()
    assert passes == 2  # counted in 12-bit bins, then collected


@pytest.mark.parametrize("cap,first,step,passes", [
    (10, 40, 20, None),  # refined 40 -> 20 -> 0 bits: every bin one value at the end
    (0, 60, 30, None),   # nothing collected: resolved from single-value bins
    (10**9, 63, 20, 2),  # everything in one bin, collected at once
])
def test_refining_passes_reach_the_same_median(monkeypatch, cap, first, step, passes):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, (41, 4)).astype(float)  # integer distances: many equal
    d, _ = assembled(x, 9)
    median, _, used = medians_by_passes(x, 9, monkeypatch, cap, first, step)
    assert median[0] == np.median(d)
    if passes is not None:
        assert used == passes
    else:
        assert used >= 3


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(allow_nan=False, width=64), min_size=1, max_size=50))
def test_sort_keys_order_as_the_floats_and_invert(values):
    v = np.array(values)
    keys = BM.sort_keys(v)
    assert (BM.from_keys(keys).view(np.int64) == v.view(np.int64)).all()
    assert (np.sort(v) == BM.from_keys(np.sort(keys))).all()


def test_counts_of_different_passes_do_not_merge():
    one = BM.DistanceCounts(["x"], [np.zeros(2)], [(0, 10, 4)], "x")
    two = BM.DistanceCounts(["x"], [np.zeros(2)], [(0, 10, None)], "x")
    with pytest.raises(ValueError, match="different passes"):
        one.merge(two)


def test_distances_that_change_between_passes_are_refused(monkeypatch):
    """A worker that rounds differently (simulated: the second pass sees other data) makes
    the ranks fall outside the range the first pass chose: refused, not answered."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 3))
    calls = []

    def sweep(counts):
        y = x if not calls else x * 3  # every distance 9x larger in the second pass
        calls.append(1)
        for i in range(0, 20, 5):
            for j in range(i, 20, 5):
                counts.add_pair(slice(i, i + 5), slice(j, j + 5),
                                [(y[i:i + 5], y[j:j + 5])])
        return counts

    with pytest.raises(RuntimeError, match="differed between the passes"):
        BM.exact_medians(20, ["x"], [x[:5].mean(0)], "x", sweep)


# ------------------------------------------------------------------ RBF CKA from blocks

@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("sigma", [None, 400.0])  # 400: grams near a constant (fc: K ~ 1 - 3e-5)
def test_streamed_rbf_cka_equals_in_memory_and_the_definition(store, estimator, sigma):
    opts = dict(measure="cka_rbf", estimator=estimator, sigma=sigma, progress=False)
    ref = quiet(repsim.similarity_matrix, store, **opts)
    data = {k: store[k].values for k in store.data_vars}
    for batch_size in (64, 45, 203):
        sim = quiet(repsim.similarity_matrix, store, batch_size=batch_size, **opts)
        np.testing.assert_allclose(sim.values, ref.values, rtol=0, atol=TOL, equal_nan=True)
        assert sim.attrs["kernel"] == "rbf" and sim.attrs["streamed"] == "gram block pairs"
        assert sim.attrs["bandwidth_passes"] == (0 if sigma else 2)
    want = [repsim.median_sigma(v) for v in data.values()] if sigma is None else [sigma] * 4
    np.testing.assert_allclose(sim.attrs["sigma_a"], want, rtol=1e-13)
    for a in ("conv", "fc"):
        for b in ("relu", "fc"):
            exact = ref_rbf_cka(data[a], data[b], estimator, sigma)
            assert abs(float(sim.sel(layer_a=a, layer_b=b)) - exact) < 1e-10


@settings(max_examples=10, deadline=None)
@given(n=st.integers(6, 30), batch=st.integers(1, 32), unbiased=st.booleans(),
       threshold=st.sampled_from([0.5, 1.0, 2.0]), seed=st.integers(0, 2**16))
def test_any_block_size_gives_the_full_data_rbf_value(n, batch, unbiased, threshold, seed):
    rng = np.random.default_rng(seed)
    layers = {"a": rng.standard_normal((n, 3)) + 1e3, "b": rng.standard_normal((n, 7)),
              "c": np.tanh(rng.standard_normal((n, 2)))}
    ds = xr.Dataset({k: (("example", f"{k}_f"), v) for k, v in layers.items()})
    est = "unbiased" if unbiased else "biased"
    ref = repsim.cka_matrix(layers, kernel="rbf", estimator=est, threshold=threshold)
    sim = repsim.similarity_matrix(ds, measure="cka_rbf", estimator=est, threshold=threshold,
                                   batch_size=batch, progress=False)
    np.testing.assert_allclose(sim.values, ref.values, rtol=0, atol=1e-11)
    np.testing.assert_allclose(sim.attrs["sigma_a"], ref.attrs["sigma_a"], rtol=1e-12)


def test_two_stores_and_compare_many_stream_rbf(store, shuffled):
    kw = dict(measure="cka_rbf", align="ids", progress=False)
    ref = quiet(repsim.similarity_matrix, store, shuffled, **kw)
    sim = quiet(repsim.similarity_matrix, store, shuffled, batch_size=70, **kw)
    np.testing.assert_allclose(sim.values, ref.values, rtol=0, atol=TOL)
    assert sim.attrs["bandwidth_passes"] == 4  # two per side
    models = {"a": store[["fc", "conv"]], "b": shuffled}
    many = [quiet(repsim.compare_many, models, measure="cka_rbf", align="ids", **b)
            for b in ({}, {"batch_size": 64})]
    np.testing.assert_allclose(many[1].values, many[0].values, rtol=0, atol=TOL, equal_nan=True)


def test_float32_store_rbf(tmp_path):
    layers = {k: v.astype(np.float32) for k, v in layers_of(150, seed=3).items()}
    ds = write_store(tmp_path / "f32.zarr", layers, chunk=40)
    kw = dict(measure="cka_rbf", progress=False)
    sim = quiet(repsim.similarity_matrix, ds, batch_size=40, **kw)
    whole = quiet(repsim.similarity_matrix, ds, **kw)
    np.testing.assert_allclose(sim.values, whole.values, rtol=0, atol=1e-5)
    exact = np.array([[ref_rbf_cka(layers[a], layers[b]) for b in layers] for a in layers])
    np.testing.assert_allclose(sim.values, exact, rtol=0, atol=1e-4)


def test_constant_and_tied_layers_as_in_memory(tmp_path):
    rng = np.random.default_rng(1)
    tied = np.repeat(rng.standard_normal((1, 4)), 30, axis=0)
    tied[:5] += rng.standard_normal((5, 4))  # 25 identical rows: most distances 0
    layers = {"x": rng.standard_normal((30, 4)) + 3, "const": np.full((30, 3), 7.0)}
    ds = write_store(tmp_path / "c.zarr", layers, chunk=8)
    with pytest.warns(repsim.DegenerateRepresentationWarning, match="const"):
        sim = repsim.similarity_matrix(ds, measure="cka_rbf", batch_size=8, progress=False)
    assert np.isnan(sim.sel(layer_a="const")).all() and sim.sel(layer_a="x", layer_b="x") == 1
    assert np.isnan(sim.attrs["sigma_a"][1])
    ds = write_store(tmp_path / "t.zarr", {"x": layers["x"], "tied": tied}, chunk=8)
    for kw in ({}, {"batch_size": 8}):
        with pytest.raises(ValueError, match=r"cannot pick an RBF bandwidth for .*'tied'"):
            repsim.similarity_matrix(ds, measure="cka_rbf", progress=False, **kw)
    fixed = repsim.similarity_matrix(ds, measure="cka_rbf", sigma=1.0, batch_size=8,
                                     progress=False)
    ref = repsim.cka_matrix({"x": layers["x"], "tied": tied}, kernel="rbf", sigma=1.0)
    np.testing.assert_allclose(fixed.values, ref.values, rtol=0, atol=TOL)


def test_two_worker_cluster_equals_one_process_for_rbf(client, store):
    kw = dict(measure="cka_rbf", estimator="unbiased", batch_size=101, progress=False)
    one = quiet(repsim.similarity_matrix, store, client=False, **kw)
    two = quiet(repsim.similarity_matrix, store, client=client, **kw)
    assert two.attrs["scheduler"] == "dask.distributed" and two.attrs["bandwidth_passes"] == 2
    assert list(two.attrs["sigma_a"]) == list(one.attrs["sigma_a"])  # the same exact medians
    np.testing.assert_allclose(two.values, one.values, rtol=0, atol=TOL)
