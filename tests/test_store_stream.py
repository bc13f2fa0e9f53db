"""Stores streamed in blocks of examples (issue 23 items 2 and 5): full-data linear CKA from
pairs of example blocks in similarity_matrix / compare_many, accumulators fed from a store
by stream_store, and the same map-reduced on a dask.distributed LocalCluster.

Values are checked against the in-memory path and against independent float64 CKA written
here (feature-space biased HSIC, explicitly U-centred unbiased HSIC)."""

import os
import tracemalloc
import warnings

import numpy as np
import pytest

pytest.importorskip("zarr")
pytest.importorskip("dask")
xr = pytest.importorskip("xarray")
from hypothesis import given, settings, strategies as st  # noqa: E402

import repsim  # noqa: E402
from repsim.store import FORMAT, FORMAT_KEY  # noqa: E402

TOL = 1e-12


# ----------------------------------------------------------------------------- references

def ref_cka(x, y):
    """Biased linear CKA, feature-space form on column-centred float64 data."""
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def _hsic_u(k, m):
    """Unbiased HSIC (Song et al. 2012) from its definition, grams with zeroed diagonals."""
    n = len(k)
    k, m = k - np.diag(np.diag(k)), m - np.diag(np.diag(m))
    one = np.ones(n)
    return (np.trace(k @ m) + (one @ k @ one) * (one @ m @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (one @ k @ m @ one)) / (n * (n - 3))


def ref_cka_unbiased(x, y):
    x, y = x - x.mean(0), y - y.mean(0)  # translation invariant; avoids cancellation here
    k, m = x @ x.T, y @ y.T
    return _hsic_u(k, m) / np.sqrt(_hsic_u(k, k) * _hsic_u(m, m))


# ----------------------------------------------------------------------------- stores

def layers_of(n, seed=0, offset=50.0):
    """Layers of different widths sharing signal, with a large common offset (streamed
    sums must not cancel) and one unrelated layer."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 12))
    return {"conv": x @ rng.standard_normal((12, 40)) + offset,
            "relu": np.maximum(x @ rng.standard_normal((12, 30)), 0) - offset,
            "fc": x[:, :5] + 0.5 * rng.standard_normal((n, 5)),
            "noise": rng.standard_normal((n, 9)) * 1e3}


def write_store(path, layers, chunk, ids=None):
    """A store as repsim.extract writes it (variables, example_id, attributes), chunked
    along examples, opened with repsim.open_activations."""
    n = len(next(iter(layers.values())))
    ds = xr.Dataset({k: (("example", f"{k}_feature"), v) for k, v in layers.items()},
                    coords={"example_id": ("example", np.arange(n) if ids is None else ids)},
                    attrs={FORMAT_KEY: FORMAT, "complete": True, "layers": list(layers)})
    ds.chunk({"example": chunk}).to_zarr(path, consolidated=False)
    return repsim.open_activations(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("s") / "a.zarr"
    return write_store(path, layers_of(203), chunk=32)


@pytest.fixture(scope="module")
def shuffled(tmp_path_factory):
    """Another model over the same 203 examples, stored in another order, and 7 more."""
    rng = np.random.default_rng(5)
    base = layers_of(210, seed=0)
    other = {"b1": np.tanh(base["conv"][:, :20] / 10) + 0.1 * rng.standard_normal((210, 20)),
             "b2": base["fc"] @ rng.standard_normal((5, 7))}
    order = rng.permutation(210)
    path = tmp_path_factory.mktemp("s") / "b.zarr"
    ids = np.arange(210)[order]
    return write_store(path, {k: v[order] for k, v in other.items()}, chunk=50, ids=ids)


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# ----------------------------------------------------------------------------- item 2

@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_streamed_cka_equals_in_memory_and_a_float64_reference(store, estimator):
    ref = repsim.similarity_matrix(store, estimator=estimator, progress=False)
    for batch_size in (64, 45, 203):  # two chunks of the store, ragged blocks, one block
        sim = repsim.similarity_matrix(store, estimator=estimator, progress=False,
                                       batch_size=batch_size)
        np.testing.assert_allclose(sim.values, ref.values, rtol=0, atol=TOL)
        assert sim.attrs["blocks"] == -(-203 // batch_size)
        assert sim.attrs["scheduler"] == "local" and sim.attrs["estimator"] == estimator
    data = {k: store[k].values for k in store.data_vars}
    exact = ref_cka if estimator == "biased" else ref_cka_unbiased
    for a in data:
        for b in data:
            assert abs(sim.sel(layer_a=a, layer_b=b) - exact(data[a], data[b])) < 1e-10


def test_two_stores_streamed_with_ids_aligned(store, shuffled):
    with pytest.raises(ValueError, match="differ"):
        repsim.similarity_matrix(store, shuffled, batch_size=70, progress=False)
    ref = repsim.similarity_matrix(store, shuffled, align="ids", progress=False)
    sim = repsim.similarity_matrix(store, shuffled, align="ids", batch_size=70, progress=False)
    np.testing.assert_allclose(sim.values, ref.values, rtol=0, atol=TOL)
    assert (sim.attrs["examples_dropped_a"], sim.attrs["examples_dropped_b"]) == (0, 7)
    # the aligned rows: shuffled's example i is the i-th of its ids
    order = np.argsort(shuffled["example_id"].values)[:203]
    b1 = shuffled["b1"].values[order]
    assert abs(sim.sel(layer_a="fc", layer_b="b1") - ref_cka(store["fc"].values, b1)) < 1e-10


@settings(max_examples=12, deadline=None)
@given(n=st.integers(6, 40), batch=st.integers(1, 45), unbiased=st.booleans(),
       seed=st.integers(0, 2**16))
def test_any_block_size_gives_the_full_data_value(n, batch, unbiased, seed):
    rng = np.random.default_rng(seed)
    layers = {"a": rng.standard_normal((n, 3)) + 10, "b": rng.standard_normal((n, 7)),
              "c": rng.standard_normal((n, 2)) * 1e-3}
    layers["d"] = layers["a"] @ rng.standard_normal((3, 4))
    ds = xr.Dataset({k: (("example", f"{k}_f"), v) for k, v in layers.items()})  # numpy-backed
    est = "unbiased" if unbiased else "biased"
    ref = repsim.cka_matrix(layers, estimator=est).values
    sim = repsim.similarity_matrix(ds, estimator=est, batch_size=batch, progress=False)
    np.testing.assert_allclose(sim.values, ref, rtol=0, atol=1e-11)


def test_streaming_peak_memory_stays_under_four_times_the_largest_layer(tmp_path):
    """A store of 6 layers (19 MB) compared under a budget of 4 x its largest layer
    (4 x 3.2 MB): the streamed path stays under it, reading each layer whole does not."""
    rng = np.random.default_rng(0)
    n, p = 400, 1000
    base = rng.standard_normal((n, p))
    layers = {f"l{i}": base * (i + 1) + i * rng.standard_normal((n, p)) for i in range(6)}
    ds = write_store(tmp_path / "big.zarr", layers, chunk=100)
    del layers, base
    budget = 4 * n * p * 8

    def peak(**kw):
        tracemalloc.start()
        try:
            sim = repsim.similarity_matrix(ds, progress=False, **kw)
            return sim, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    streamed, streamed_peak = peak(batch_size=100)
    whole, whole_peak = peak()
    assert streamed_peak < budget < whole_peak, (streamed_peak, budget, whole_peak)
    np.testing.assert_allclose(streamed.values, whole.values, rtol=0, atol=TOL)


def test_float32_store_streams_float32_products(tmp_path):
    layers = {k: v.astype(np.float32) for k, v in layers_of(150, seed=3).items()}
    ds = write_store(tmp_path / "f32.zarr", layers, chunk=40)
    sim = repsim.similarity_matrix(ds, batch_size=40, progress=False)
    whole = repsim.similarity_matrix(ds, progress=False)
    np.testing.assert_allclose(sim.values, whole.values, rtol=0, atol=1e-6)
    exact = np.array([[ref_cka(layers[a].astype(np.float64), layers[b].astype(np.float64))
                       for b in layers] for a in layers])
    np.testing.assert_allclose(sim.values, exact, rtol=0, atol=1e-5)


def test_constant_layer_and_refusals(store, tmp_path):
    rng = np.random.default_rng(1)
    layers = {"x": rng.standard_normal((30, 4)) + 3, "const": np.full((30, 3), 7.0)}
    ds = write_store(tmp_path / "c.zarr", layers, chunk=8)
    with pytest.warns(repsim.DegenerateRepresentationWarning, match="const"):
        sim = repsim.similarity_matrix(ds, batch_size=8, progress=False)
    assert np.isnan(sim.sel(layer_a="const")).all() and sim.sel(layer_a="x", layer_b="x") == 1
    for measure in ("rsa_kendall", "cknna"):  # the other forms stream (their own tests)
        with pytest.raises(ValueError, match="cannot be streamed .*no form from feature"):
            repsim.similarity_matrix(store, measure=measure, batch_size=32, progress=False)
    with pytest.raises(ValueError, match="precision"):
        repsim.similarity_matrix(store, precision="bfloat16", batch_size=32, progress=False)
    with pytest.raises(ValueError, match="in memory already"):
        repsim.similarity_matrix({"a": np.ones((8, 2))}, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        repsim.similarity_matrix(store, batch_size=0, progress=False)
    bad = {"x": rng.standard_normal((30, 4))}
    bad["x"][17, 2] = np.nan
    ds = write_store(tmp_path / "nan.zarr", bad, chunk=8)
    with pytest.raises(ValueError, match=r"layers_a\['x'\] \(examples 16..23\) contains NaN"):
        repsim.similarity_matrix(ds, batch_size=8, progress=False)


def test_compare_many_streamed_equals_in_memory(store, shuffled):
    models = {"a": store, "b": shuffled, "a2": store[["fc", "conv"]]}
    ref = repsim.compare_many(models, align="ids")
    sim = repsim.compare_many(models, align="ids", batch_size=64)
    np.testing.assert_allclose(sim.values, ref.values, rtol=0, atol=TOL, equal_nan=True)
    assert (sim.layer_name_a.values == ref.layer_name_a.values).all()
    assert sim.attrs["examples_dropped"] == [0, 7, 0] and sim.attrs["n"] == 203


def test_per_rank_stores_put_together_compare_as_one(tmp_path):
    """The last step of the docs' torchrun recipe: one store per rank (DistributedSampler
    order, padded with a repeat), concatenated, deduplicated by id, streamed."""
    full = layers_of(101)
    parts = []
    for rank in range(2):
        idx = list(range(rank, 101, 2))
        idx += idx[:51 - len(idx)]  # the sampler pads to an even split
        parts.append(write_store(tmp_path / f"rank{rank}.zarr",
                                 {k: v[idx] for k, v in full.items()}, 16, np.array(idx)))
    ds = xr.concat(parts, dim="example", combine_attrs="override")
    _, first = np.unique(ds["example_id"].values, return_index=True)
    ds = ds.isel(example=first)
    np.testing.assert_array_equal(ds["example_id"].values, np.arange(101))
    sim = repsim.similarity_matrix(ds, batch_size=30, progress=False)
    np.testing.assert_allclose(sim.values, repsim.cka_matrix(full).values, rtol=0, atol=TOL)


# ----------------------------------------------------------------------------- stream_store

def manual(acc, stores, bounds, ids=None):
    """The batches stream_store should send, fed by hand from values read whole."""
    data = [{k: s[k].values for k in s.data_vars} for s in stores]
    if ids is not None:  # second store's rows in the first's id order
        where = {v: i for i, v in enumerate(stores[1]["example_id"].values.tolist())}
        rows = np.array([where[v] for v in ids])
        data[1] = {k: v[rows] for k, v in data[1].items()}
    for start, stop in bounds:
        acc.update(*[{k: v[start:stop] for k, v in d.items()} for d in data])
    return acc


def test_stream_store_feeds_minibatch_cka_and_feature_moments_batch_by_batch(store, shuffled):
    # 203 = 6 x 32 + 11 (the store's chunks): 7 batches, a ragged last one
    bounds = [(s, min(203, s + 32)) for s in range(0, 203, 32)]
    acc = repsim.stream_store(repsim.MinibatchCKA(groups=3), store)
    ref = manual(repsim.MinibatchCKA(groups=3), [store], bounds)
    assert acc.n_batches == 7 and acc.n_examples == 203
    np.testing.assert_array_equal(acc.compute().values, ref.compute().values)
    np.testing.assert_array_equal(acc.state_dict()["group_ab"], ref.state_dict()["group_ab"])
    # a last batch under 4 examples joins the one before (unbiased needs 4)
    acc = repsim.stream_store(repsim.MinibatchCKA(), store, batch_size=50)
    assert acc.n_batches == 4
    ref = manual(repsim.MinibatchCKA(), [store], [(0, 50), (50, 100), (100, 150), (150, 203)])
    np.testing.assert_array_equal(acc.compute().values, ref.compute().values)
    # two stores matched by example_id; FeatureMoments fed the same way
    ids = store["example_id"].values
    fm = repsim.stream_store(repsim.FeatureMoments(), store, shuffled, batch_size=64,
                             align="ids")
    ref = manual(repsim.FeatureMoments(), [store, shuffled],
                 [(0, 64), (64, 128), (128, 192), (192, 203)], ids=ids)
    for measure in ("cka", "cca"):
        np.testing.assert_allclose(fm.compute(measure).values, ref.compute(measure).values,
                                   rtol=0, atol=TOL)
    with pytest.raises(ValueError, match="differ"):
        repsim.stream_store(repsim.MinibatchCKA(), store, shuffled)
    with pytest.raises(TypeError, match="accumulator"):
        repsim.stream_store(object(), store)


# ----------------------------------------------------------------------------- item 5

@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    saved = dict(os.environ)  # LocalCluster sets OMP_NUM_THREADS etc. in this process
    try:
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cluster:
            with distributed.Client(cluster) as c:
                yield c
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_two_worker_cluster_equals_one_process(client, store, shuffled):
    for estimator in ("biased", "unbiased"):
        kw = dict(estimator=estimator, align="ids", batch_size=101, progress=False)
        one = repsim.similarity_matrix(store, shuffled, client=False, **kw)
        two = repsim.similarity_matrix(store, shuffled, client=client, **kw)
        assert one.attrs["scheduler"] == "local" and one.attrs["blocks"] == 3  # 101, 101, 1
        assert two.attrs["scheduler"] == "dask.distributed" and two.attrs["blocks"] == 3
        np.testing.assert_allclose(two.values, one.values, rtol=0, atol=TOL)
    # without client=, the active client streams a measure that streams ...
    small = store[["fc", "noise"]]
    sim = repsim.similarity_matrix(small, batch_size=101, progress=False)
    assert sim.attrs["scheduler"] == "dask.distributed"
    np.testing.assert_allclose(sim.values, repsim.cka_matrix(
        {k: small[k].values for k in small.data_vars}).values, rtol=0, atol=TOL)
    # ... and a measure that does not stream reads its layers whole, as without one
    assert "scheduler" not in repsim.similarity_matrix(small, measure="rsa_kendall",
                                                       progress=False).attrs
    models = {"a": store[["fc", "conv"]], "b": shuffled}
    many = [repsim.compare_many(models, align="ids", client=c, batch_size=101)
            for c in (client, False)]
    np.testing.assert_allclose(many[0].values, many[1].values, rtol=0, atol=TOL)


def test_stream_store_map_reduce_equals_one_process(client, store, shuffled):
    def acc():
        return repsim.MinibatchCKA(groups=3, estimator="unbiased")

    one = repsim.stream_store(acc(), store, batch_size=40, client=False)
    two = repsim.stream_store(acc(), store, batch_size=40, client=client)
    assert two.n_batches == one.n_batches == 5
    for key in ("sum_ab", "group_ab", "group_batches", "n_examples"):
        np.testing.assert_allclose(two.state_dict()[key], one.state_dict()[key], rtol=TOL)
    a, b = one.compute(uncertainty=True), two.compute(uncertainty=True)
    for var in ("cka", "stderr", "jackknife"):
        np.testing.assert_allclose(b[var].values, a[var].values, rtol=0, atol=TOL)
    fm = [repsim.stream_store(repsim.FeatureMoments(), store, shuffled, batch_size=64,
                              align="ids", client=c) for c in (False, client)]
    for measure in ("cka", "cca"):
        np.testing.assert_allclose(fm[1].compute(measure).values, fm[0].compute(measure).values,
                                   rtol=0, atol=TOL)
