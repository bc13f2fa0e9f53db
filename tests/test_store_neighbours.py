"""k-NN measures of stores streamed in blocks of examples (repsim._block_neighbours): the
neighbour lists from pairs of example blocks equal the whole-data lists of
repsim.neighbours.neighbours (indices, values, ties), and mutual k-NN, Jaccard k-NN and
rank similarity equal the in-memory values, on one process and on a 2-worker LocalCluster.
"""

import warnings

import numpy as np
import pytest

pytest.importorskip("zarr")
pytest.importorskip("dask")
xr = pytest.importorskip("xarray")
from hypothesis import example, given, settings, strategies as st  # noqa: E402

import repsim  # noqa: E402
from repsim import _block_neighbours as BN  # noqa: E402
from repsim.neighbours import neighbours  # noqa: E402
from repsim.store_stream import side_of  # noqa: E402
from repsim.store_blocks import block_pairs, sweep_pairs  # noqa: E402
from repsim.store_stream import example_blocks  # noqa: E402
from test_store_stream import (  # noqa: E402,F401  (fixtures and helpers)
    client, shuffled, store, write_store)

MEASURES = ("mutual_knn", "jaccard_knn", "rank_similarity")


def lists_in_blocks(x, k, metric, batch):
    """Neighbour lists of one in-memory layer, found from its block pairs."""
    ds = xr.Dataset({"x": (("example", "f"), x)})
    side = side_of(ds, None, "x")
    bounds = example_blocks(len(x), batch)
    means, exps = BN._centring(side, bounds) if metric == "euclidean" else (None, None)
    acc = BN.BlockNeighbours(len(x), k, metric, ["x"], "x", [x.shape[1]], means, exps)
    return sweep_pairs(acc, block_pairs(bounds), (side,), client=None, desc="",
                       progress=False).neighbours()[0]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 40), batch=st.integers(1, 45), k=st.integers(1, 8),
       metric=st.sampled_from(["cosine", "euclidean"]), ties=st.booleans(),
       scale=st.sampled_from([1e-150, 1.0, 1e150]), seed=st.integers(0, 2**16))
@example(n=7, batch=2, k=4, metric="cosine", ties=True, scale=1e-150, seed=1)  # 1-ulp order
def test_lists_from_block_pairs_equal_the_whole_data_lists(n, batch, k, metric, ties, scale,
                                                           seed):
    """Indices, values and the tie count, for any block size, k up to n - 1, data at any
    scale and with duplicated rows. Duplicated rows are tied in exact arithmetic, but the
    products of different block shapes may round them 1 ulp apart (BLAS kernels differ by
    shape), so their order inside a list may differ: indices are compared in order where
    the values are apart, as sets where they are within 1e-12 (the measures use sets), and
    not at all where the k-th and (k+1)-th nearest are within 1e-12 (a tie at the list's
    boundary: the set is then the rounding's, in memory as in blocks; noted, not fixed)."""
    k = min(k, n - 1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4)) * scale + (3 * scale if metric == "euclidean" else 0)
    if ties:
        x[n // 2:] = x[0]
    whole = neighbours(x, k, metric)
    blocks = lists_in_blocks(x, k, metric, batch)
    assert blocks.tied == whole.tied and blocks.first_tied == whole.first_tied
    if whole.tied:
        return  # the sets are the tie-break's; the measures are NaN (tested below)
    np.testing.assert_allclose(blocks.value, whole.value, rtol=1e-12,
                               atol=1e-12 * np.abs(whole.value).max())
    close = 1e-12 * max(1.0, float(np.abs(whole.value).max()))
    wider = neighbours(x, k + 1, metric).value if k + 1 <= n - 1 else None
    for row in range(n):
        v, i, j = whole.value[row], whole.index[row], blocks.index[row]
        if wider is not None and abs(wider[row, k] - wider[row, k - 1]) <= close:
            continue
        assert set(i) == set(j), row
        for a in range(len(v)):  # a position whose value is apart from its neighbours'
            apart = all(abs(v[a] - v[b]) > close for b in range(len(v)) if b != a)
            assert not apart or i[a] == j[a], (row, a)


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_streamed_measures_equal_in_memory(store, measure, metric):
    ref = repsim.similarity_matrix(store, measure=measure, metric=metric, k=7, progress=False)
    for batch_size in (64, 45, 203):
        sim = repsim.similarity_matrix(store, measure=measure, metric=metric, k=7,
                                       batch_size=batch_size, progress=False)
        assert (sim.values == ref.values).all()
        assert sim.attrs["streamed"] == "neighbour lists from block pairs"
        assert sim.attrs["blocks"] == -(-203 // batch_size) and sim.attrs["k"] == 7


def test_two_stores_and_compare_many(store, shuffled):
    for measure in MEASURES:
        kw = dict(measure=measure, align="ids", progress=False, k=5)
        ref = repsim.similarity_matrix(store, shuffled, **kw)
        sim = repsim.similarity_matrix(store, shuffled, batch_size=70, **kw)
        assert (sim.values == ref.values).all() and sim.attrs["examples_dropped_b"] == 7
    models = {"a": store[["fc", "conv"]], "b": shuffled}
    many = [repsim.compare_many(models, measure="mutual_knn", align="ids", **b)
            for b in ({}, {"batch_size": 64})]
    np.testing.assert_array_equal(many[1].values, many[0].values)


def test_tied_layers_are_nan_with_a_warning_each_as_in_memory(tmp_path):
    """Distinct one-hot rows and a constant layer: every neighbourhood decided by ties.
    In memory (the registry's pair step) and streamed alike: NaN rows and columns and one
    warning per such layer -- where the pair step had returned 0.93 for the two."""
    rng = np.random.default_rng(1)
    layers = {"x": rng.standard_normal((30, 4)), "onehot": np.eye(30),
              "const": np.full((30, 3), 7.0)}
    ds = write_store(tmp_path / "t.zarr", layers, chunk=8)
    for kw in ({}, {"batch_size": 8}):
        with pytest.warns(repsim.DegenerateRepresentationWarning) as rec:
            sim = repsim.similarity_matrix(ds, measure="mutual_knn", metric="euclidean", k=3,
                                           progress=False, **kw)
        said = [str(w.message) for w in rec if "undefined" in str(w.message)]
        assert len(said) == 2 and "'onehot'" in said[0] and "'const'" in said[1], said
        assert sim.sel(layer_a="x", layer_b="x") == 1
        assert np.isnan(sim.values[1:]).all() and np.isnan(sim.values[:, 1:]).all()
    with pytest.warns(repsim.DegenerateRepresentationWarning, match="'onehot'"):
        assert np.isnan(repsim.similarity_matrix(layers, measure="cknna", k=3,
                                                 progress=False).values[1:]).all()


def test_refusals(store, tmp_path):
    with pytest.raises(ValueError, match=r"k must be .*at most n - 1 = 202"):
        repsim.similarity_matrix(store, measure="mutual_knn", k=203, batch_size=64,
                                 progress=False)
    with pytest.raises(ValueError, match="metric must be one of"):
        repsim.similarity_matrix(store, measure="mutual_knn", metric="l1", batch_size=64,
                                 progress=False)
    zero = {"z": np.vstack([np.zeros((1, 3)), np.ones((9, 3))])}
    ds = write_store(tmp_path / "z.zarr", zero, chunk=4)
    with pytest.raises(ValueError, match="all-zero row"):
        repsim.similarity_matrix(ds, measure="mutual_knn", k=2, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="cannot be streamed"):  # needs the features
        repsim.similarity_matrix(store, measure="second_order_cosine", batch_size=64,
                                 progress=False)
    acc = BN.BlockNeighbours(10, 2, "cosine", ["x"], "x", [3])
    with pytest.raises(RuntimeError, match="not every block pair"):
        acc.neighbours()
    with pytest.raises(ValueError, match="different layers or options"):
        acc.merge(BN.BlockNeighbours(10, 3, "cosine", ["x"], "x", [3]))


def test_two_worker_cluster_equals_one_process(client, store):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for metric in ("cosine", "euclidean"):
            kw = dict(measure="rank_similarity", metric=metric, k=6, batch_size=101,
                      progress=False)
            one = repsim.similarity_matrix(store, client=False, **kw)
            two = repsim.similarity_matrix(store, client=client, **kw)
            assert two.attrs["scheduler"] == "dask.distributed"
            np.testing.assert_array_equal(two.values, one.values)
