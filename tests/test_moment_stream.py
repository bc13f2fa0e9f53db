"""Stores streamed through feature moments (issue 23 item 2: every measure reads a store):
``similarity_matrix`` / ``compare_many`` with ``batch_size=`` or ``client=`` on a measure
with a form from feature moments (the CCA family, shape metrics, ridge R², ...) feed one
FeatureMoments block by block and equal the measure on the loaded layers.

References: the in-memory registry path (itself tested against the formulas in
test_cca_family / test_shape_regression), and independent float64 formulas written here
for CCA and orthogonal Procrustes."""

import tracemalloc

import numpy as np
import pytest

pytest.importorskip("zarr")
pytest.importorskip("dask")
xr = pytest.importorskip("xarray")

import repsim  # noqa: E402
from test_store_stream import client, write_store  # noqa: E402,F401  (a 2-worker LocalCluster; a store as repsim.extract writes it)

MOMENT_MEASURES = ("cca", "svcca", "pwcca", "procrustes_angular", "ridge_r2")


def layers_of(n, seed=0, offset=1e3):
    """Layers of full column rank and different widths sharing signal, with large offsets
    (the streamed sums are shifted: they must not cancel) and one unrelated layer."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6))
    return {"conv": x @ rng.standard_normal((6, 10)) + 0.3 * rng.standard_normal((n, 10)) + offset,
            "relu": np.maximum(x @ rng.standard_normal((6, 8)), 0) - offset,
            "fc": x[:, :4] + 0.5 * rng.standard_normal((n, 4)),
            "noise": rng.standard_normal((n, 5)) * 1e2}


def ref_mean_cca(x, y):
    """Mean canonical correlation (the registry's ``cca``), from the float64 SVD of the
    product of the centred sides' orthonormal bases (no ridge)."""
    x, y = x - x.mean(0), y - y.mean(0)
    qx, qy = np.linalg.qr(x)[0], np.linalg.qr(y)[0]
    rho = np.linalg.svd(qx.T @ qy, compute_uv=False)
    return float(np.mean(rho[:min(x.shape[1], y.shape[1])]))


def ref_procrustes_angle(x, y):
    """arccos of the nuclear norm of X̃ᵀỸ, X̃ and Ỹ centred and of unit Frobenius norm
    (Williams et al. 2021), zero-padded to one width."""
    x, y = x - x.mean(0), y - y.mean(0)
    x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
    nuc = np.linalg.svd(x.T @ y, compute_uv=False).sum()
    return float(np.arccos(np.clip(nuc, -1, 1)))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("m") / "a.zarr", layers_of(257), chunk=40)


@pytest.fixture(scope="module")
def shuffled(tmp_path_factory):
    """The same examples as ``store`` in another order, two dropped, other layers."""
    rng = np.random.default_rng(5)
    order = rng.permutation(257)[:255]
    other = {k: v[order] * 2.0 for k, v in layers_of(257, seed=1).items()}
    return write_store(tmp_path_factory.mktemp("m") / "b.zarr", other, chunk=32, ids=order)


@pytest.mark.parametrize("measure", MOMENT_MEASURES)
def test_streamed_moments_equal_the_loaded_layers(store, measure):
    loaded = {k: store[k].values for k in store.data_vars}
    whole = repsim.similarity_matrix(loaded, measure=measure, progress=False)
    for batch in (40, 97, 257):
        sim = repsim.similarity_matrix(store, measure=measure, batch_size=batch, progress=False)
        assert sim.attrs["streamed"] == "feature moments"
        assert sim.attrs["blocks"] == -(-257 // batch) and sim.attrs["n"] == 257
        assert list(sim.layer_a.values) == list(store.data_vars)
        if measure == "procrustes_angular":  # arccos near 1: a 1e-16 cosine is a 1e-8 angle
            np.testing.assert_allclose(np.cos(sim.values), np.cos(whole.values), rtol=0,
                                       atol=1e-12)
        else:
            np.testing.assert_allclose(sim.values, whole.values, rtol=0, atol=1e-10)


def test_streamed_values_equal_independent_formulas(store, shuffled):
    a = {k: store[k].values for k in store.data_vars}
    ids_b = shuffled["example_id"].values
    pos = {int(i): k for k, i in enumerate(store["example_id"].values)}
    rows = np.array([pos[int(i)] for i in ids_b if int(i) in pos])
    b = {k: shuffled[k].values for k in shuffled.data_vars}
    cca = repsim.similarity_matrix(shuffled, store, measure="cca", align="ids", batch_size=50,
                                   progress=False)
    proc = repsim.similarity_matrix(shuffled, store, measure="procrustes_angular",
                                    align="ids", batch_size=50, progress=False)
    assert cca.attrs["examples_dropped_b"] == 2 and cca.attrs["n"] == 255
    for i, ka in enumerate(b):
        for j, kb in enumerate(a):
            x, y = b[ka], a[kb][rows]
            assert cca.values[i, j] == pytest.approx(ref_mean_cca(x, y), abs=1e-10)
            assert np.cos(proc.values[i, j]) == pytest.approx(
                np.cos(ref_procrustes_angle(x, y)), abs=1e-12)


def test_options_and_refusals(store):
    loaded = {k: store[k].values for k in store.data_vars}
    sim = repsim.similarity_matrix(store, measure="svcca", batch_size=64, progress=False,
                                   keep=3)
    np.testing.assert_allclose(sim.values, repsim.similarity_matrix(
        loaded, measure="svcca", keep=3, progress=False).values, rtol=0, atol=1e-10)
    for measure, why in (("rsa_kendall", "no form from feature moments"),
                         ("cknna", "no form from feature moments")):
        with pytest.raises(ValueError, match=why):
            repsim.similarity_matrix(store, measure=measure, batch_size=64, progress=False)
    with pytest.raises(TypeError, match="not_an_option"):  # as in memory
        repsim.similarity_matrix(store, measure="cca", batch_size=64, progress=False,
                                 not_an_option=1)
    with pytest.raises(ValueError, match="precision.*not moments|precision"):
        repsim.similarity_matrix(store, measure="cka_linear", precision="float64",
                                 batch_size=64, progress=False)


def test_compare_many_streams_moment_measures(store, shuffled):
    models = {"a": store, "b": shuffled}
    streamed = repsim.compare_many(models, measure="cca", align="ids", batch_size=64)
    loaded = repsim.compare_many(models, measure="cca", align="ids")
    np.testing.assert_allclose(streamed.values, loaded.values, rtol=0, atol=1e-10,
                               equal_nan=True)


def test_streaming_moments_never_holds_a_layer(tmp_path):
    """n = 80,000 examples of 4 layers of 24 features: each layer is 15 MB in float64;
    streaming in blocks of 1,000 peaks under half one layer's size (the moments, one block
    and dask's fixed costs: about 4 MB measured), reading layers whole above four of them."""
    rng = np.random.default_rng(0)
    n, p = 80_000, 24
    base = rng.standard_normal((n, p))
    layers = {f"l{i}": base @ rng.standard_normal((p, p)) + rng.standard_normal((n, p))
              for i in range(4)}
    ds = write_store(tmp_path / "tall.zarr", layers, chunk=1000)
    del layers, base
    layer_bytes = n * p * 8

    def peak(**kw):
        tracemalloc.start()
        try:
            sim = repsim.similarity_matrix(ds, measure="cca", progress=False, **kw)
            return sim, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    streamed, streamed_peak = peak(batch_size=1000)
    whole, whole_peak = peak()
    assert streamed_peak < layer_bytes / 2 < 4 * layer_bytes < whole_peak, (streamed_peak,
                                                                           whole_peak)
    np.testing.assert_allclose(streamed.values, whole.values, rtol=0, atol=1e-10)


def test_two_worker_cluster_equals_one_process(client, store, shuffled):
    for measure in ("pwcca", "procrustes_angular"):
        kw = dict(measure=measure, align="ids", batch_size=50, progress=False)
        one = repsim.similarity_matrix(store, shuffled, client=False, **kw)
        two = repsim.similarity_matrix(store, shuffled, client=client, **kw)
        assert two.attrs["scheduler"] == "dask.distributed" and one.attrs["scheduler"] == "local"
        np.testing.assert_allclose(two.values, one.values, rtol=0, atol=1e-12)
    # the active client streams a moment measure without being asked
    sim = repsim.similarity_matrix(store, measure="cca", progress=False)
    assert sim.attrs["scheduler"] == "dask.distributed"
