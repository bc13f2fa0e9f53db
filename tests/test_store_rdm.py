"""Distance correlation and Pearson RSA of stores streamed in blocks of examples
(repsim._block_cka's distance kernel, repsim._block_rdm), and every streamed form of
similarity_matrix under hostile scales and offsets.

References written here: dcor from double-centred / U-centred float64 distance matrices
(Székely & Rizzo), Pearson RSA from the upper triangles of distance matrices summed
difference by difference."""

import numpy as np
import pytest

pytest.importorskip("zarr")
pytest.importorskip("dask")
xr = pytest.importorskip("xarray")
from hypothesis import given, settings, strategies as st  # noqa: E402

import repsim  # noqa: E402
from test_store_stream import (  # noqa: E402,F401  (fixtures and helpers)
    _hsic_u, client, layers_of, quiet, shuffled, store, write_store)

TOL = 1e-12


def distances(x):
    x = x.reshape(len(x), -1).astype(np.float64)
    return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def ref_dcor(x, y, estimator="unbiased"):
    a, b = distances(x), distances(y)
    if estimator == "unbiased":
        return _hsic_u(a, b) / np.sqrt(_hsic_u(a, a) * _hsic_u(b, b))
    h = np.eye(len(a)) - 1.0 / len(a)
    a, b = h @ a @ h, h @ b @ h
    return (a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())


def ref_rsa(x, y, rdm="euclidean"):
    def entries(z):
        z = z.reshape(len(z), -1).astype(np.float64)
        if rdm == "correlation":
            d = 1.0 - np.corrcoef(z)
        else:
            d = distances(z) ** (2 if rdm == "sqeuclidean" else 1)
        return d[np.triu_indices(len(z), 1)]
    return np.corrcoef(entries(x), entries(y))[0, 1]


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_streamed_dcor_equals_in_memory_and_the_definition(store, estimator):
    ref = repsim.similarity_matrix(store, measure="dcor", estimator=estimator, progress=False)
    data = {k: store[k].values for k in store.data_vars}
    for batch_size in (64, 45, 203):
        sim = repsim.similarity_matrix(store, measure="dcor", estimator=estimator,
                                       batch_size=batch_size, progress=False)
        np.testing.assert_allclose(sim.values, ref.values, rtol=0, atol=TOL)
        assert sim.attrs["streamed"] == "gram block pairs"
    for a in ("conv", "fc"):
        for b in ("relu", "noise"):
            exact = ref_dcor(data[a], data[b], estimator)
            assert abs(float(sim.sel(layer_a=a, layer_b=b)) - exact) < 1e-10


@pytest.mark.parametrize("rdm", ["euclidean", "sqeuclidean", "correlation"])
def test_streamed_pearson_rsa_equals_in_memory_and_the_definition(store, rdm):
    ref = repsim.similarity_matrix(store, measure="rsa", rdm=rdm, progress=False)
    data = {k: store[k].values for k in store.data_vars}
    for batch_size in (64, 45, 203):
        sim = repsim.similarity_matrix(store, measure="rsa", rdm=rdm, batch_size=batch_size,
                                       progress=False)
        np.testing.assert_allclose(sim.values, ref.values, rtol=0, atol=TOL)
        assert sim.attrs["streamed"] == "RDM sums from block pairs"
    for a in ("conv", "fc"):
        for b in ("relu", "noise"):
            assert abs(float(sim.sel(layer_a=a, layer_b=b)) - ref_rsa(data[a], data[b], rdm)) < 1e-10


def test_two_stores_compare_many_and_float32(store, shuffled, tmp_path):
    for measure in ("dcor", "rsa"):
        kw = dict(measure=measure, align="ids", progress=False)
        ref = repsim.similarity_matrix(store, shuffled, **kw)
        sim = repsim.similarity_matrix(store, shuffled, batch_size=70, **kw)
        np.testing.assert_allclose(sim.values, ref.values, rtol=0, atol=TOL)
        models = {"a": store[["fc", "conv"]], "b": shuffled}
        many = [repsim.compare_many(models, measure=measure, align="ids", **b)
                for b in ({}, {"batch_size": 64})]
        np.testing.assert_allclose(many[1].values, many[0].values, rtol=0, atol=TOL,
                                   equal_nan=True)
    layers = {k: v.astype(np.float32) for k, v in layers_of(150, seed=3).items()}
    ds = write_store(tmp_path / "f32.zarr", layers, chunk=40)
    for measure in ("dcor", "rsa"):  # both read float32 data as float64, as in memory
        np.testing.assert_allclose(
            repsim.similarity_matrix(ds, measure=measure, batch_size=40, progress=False).values,
            repsim.similarity_matrix(ds, measure=measure, progress=False).values,
            rtol=0, atol=1e-12)


def test_constant_layers_and_refusals(store, tmp_path):
    rng = np.random.default_rng(1)
    layers = {"x": rng.standard_normal((30, 4)) + 3, "const": np.full((30, 3), 7.0)}
    ds = write_store(tmp_path / "c.zarr", layers, chunk=8)
    for measure in ("dcor", "rsa"):
        for kw in ({}, {"batch_size": 8}):
            with pytest.warns(repsim.DegenerateRepresentationWarning, match="const"):
                sim = repsim.similarity_matrix(ds, measure=measure, progress=False, **kw)
            assert np.isnan(sim.sel(layer_a="const")).all()
            assert sim.sel(layer_a="x", layer_b="x") == pytest.approx(1, abs=1e-15)
    for compare in ("spearman", "kendall"):
        with pytest.raises(ValueError, match=f"compare='{compare}' ranks every RDM entry"):
            repsim.similarity_matrix(store, measure="rsa", compare=compare, batch_size=64,
                                     progress=False)
    flat = write_store(tmp_path / "f.zarr", {"x": np.c_[np.arange(30.0), np.arange(30.0)]},
                       chunk=8)
    with pytest.raises(ValueError, match="example 0 is constant across its features"):
        repsim.similarity_matrix(flat, measure="rsa", rdm="correlation", batch_size=8,
                                 progress=False)


# ------------------------------------------------------------------ hostile input

STREAMED = [("cka_linear", {}), ("cka_linear_unbiased", {}), ("cka_rbf", {}), ("dcor", {}),
            ("rsa", {}), ("rsa", {"rdm": "correlation"}), ("mutual_knn", {"metric": "euclidean"}),
            ("cca", {})]


@settings(max_examples=12, deadline=None)
@given(scale=st.sampled_from([1e-200, 1e-160, 1e-20, 1.0, 1e20, 1e160, 1e200]),
       offset=st.sampled_from([0.0, 1e4]), batch=st.integers(5, 61), seed=st.integers(0, 999))
def test_every_streamed_form_survives_scale_and_offset(scale, offset, batch, seed):
    """Data at 1e-200 .. 1e200 with an offset of 1e4 standard deviations: the streamed value
    equals the in-memory one (the blocked products had gone to 0 or inf -- NaN, or 1.0 for
    linear CKA at 1e-160 -- before each layer was scaled by a power of two)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((61, 5))
    layers = {"x": (x + offset) * scale,
              "y": np.tanh(x @ rng.standard_normal((5, 4))) + 0.3 * rng.standard_normal((61, 4))}
    ds = xr.Dataset({k: (("example", f"{k}_f"), v) for k, v in layers.items()})
    for measure, opts in STREAMED:
        ref = quiet(repsim.similarity_matrix, layers, measure=measure, progress=False, **opts)
        sim = quiet(repsim.similarity_matrix, ds, measure=measure, batch_size=batch,
                    progress=False, **opts)
        tol = 1e-9 if measure != "cca" else 1e-7
        np.testing.assert_allclose(sim.values, ref.values, rtol=0, atol=tol,
                                   err_msg=f"{measure} {opts} at scale {scale}")


def test_two_worker_cluster_equals_one_process(client, store):
    for measure in ("dcor", "rsa"):
        kw = dict(measure=measure, batch_size=101, progress=False)
        one = repsim.similarity_matrix(store, client=False, **kw)
        two = repsim.similarity_matrix(store, client=client, **kw)
        assert two.attrs["scheduler"] == "dask.distributed"
        np.testing.assert_allclose(two.values, one.values, rtol=0, atol=TOL)


def test_a_block_far_above_the_first_blocks_scale_is_refused():
    """The scale comes from the first block; a later block 1e20 times larger (beyond
    2**30 of the first block's scale) could overflow float32 products: refused, naming it.
    A constant first block takes the scale of all blocks instead."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 3))
    x[30:] *= 1e20
    ds = xr.Dataset({"x": (("example", "f"), x.astype(np.float32)), "y": (("example", "g"), x[:, :2])})
    with pytest.raises(ValueError, match=r"layers_a\['x'\] \(examples 30..39\) reaches .*first block"):
        repsim.similarity_matrix(ds, batch_size=10, progress=False)
    # the same data with the large examples in the first block streams
    order = np.r_[30:40, 0:30]
    ds = xr.Dataset({"x": (("example", "f"), x[order].astype(np.float32)),
                     "y": (("example", "g"), x[order, :2])})
    sim = repsim.similarity_matrix(ds, batch_size=10, progress=False)
    ref = repsim.cka_matrix({"x": x[order].astype(np.float32), "y": x[order, :2]})
    np.testing.assert_allclose(sim.values, ref.values, rtol=0, atol=1e-6)
    x[:10] = 3.0  # a constant first block, then examples at 1e20
    ds = xr.Dataset({"x": (("example", "f"), x), "y": (("example", "g"), np.sin(x))})
    np.testing.assert_allclose(
        repsim.similarity_matrix(ds, batch_size=10, progress=False).values,
        repsim.cka_matrix({"x": x, "y": np.sin(x)}).values, rtol=0, atol=1e-9)
