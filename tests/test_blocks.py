"""Block-structure detection: planted, noisy, absent and multiple blocks; the table, the
score, and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import repsim
from repsim.results import similarity_array


def _matrix(n_layers, blocks=(), inside=0.95, background=0.3, cross=None):
    """Background similarity with planted blocks ((first, last) inclusive)."""
    sim = np.full((n_layers, n_layers), background)
    for first, last in blocks:
        sim[first:last + 1, first:last + 1] = inside
    if cross is not None and len(blocks) == 2:
        (a0, a1), (b0, b1) = blocks
        sim[a0:a1 + 1, b0:b1 + 1] = cross
        sim[b0:b1 + 1, a0:a1 + 1] = cross
    np.fill_diagonal(sim, 1.0)
    return sim


def _noisy(sim, sigma, seed):
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, sigma, sim.shape)
    out = np.clip(sim + (noise + noise.T) / np.sqrt(2), 0, 1)
    np.fill_diagonal(out, 1.0)
    return out


def _decay(n_layers, rate):
    idx = np.arange(n_layers)
    return rate ** np.abs(idx[:, None] - idx[None, :])


def _spans(ds):
    return list(zip(ds["first_index"].values.tolist(), ds["last_index"].values.tolist()))


def test_planted_block_and_its_table():
    sim = _matrix(12, [(3, 8)])
    ds = repsim.block_structure(sim)
    assert isinstance(ds, xr.Dataset) and ds.sizes["block"] == 1
    assert _spans(ds) == [(3, 8)]
    assert ds["size"].values.tolist() == [6]
    assert ds["first"].values.tolist() == ["3"] and ds["last"].values.tolist() == ["8"]
    assert ds["inside"].item() == pytest.approx(0.95)
    assert ds["outside"].item() == pytest.approx(0.3)
    assert ds.attrs["threshold"] == 0.8 and ds.attrs["min_size"] == 3
    assert ds.attrs["n_layers"] == 12 and "threshold" in ds.attrs["rule"]
    # score: 6*5 ordered pairs of 12*11, similarity 0.95
    assert ds.attrs["block_score"] == pytest.approx(30 * 0.95 / 132)
    assert repsim.block_score(sim) == ds.attrs["block_score"]


def test_dataarray_layer_names_and_torch_input():
    names = [f"stage{i // 4}.block{i % 4}" for i in range(12)]
    sim = similarity_array(_matrix(12, [(4, 9)]), names, names, {"measure": "cka"})
    ds = repsim.block_structure(sim)
    assert ds["first"].item() == "stage1.block0" and ds["last"].item() == "stage2.block1"
    torch = pytest.importorskip("torch")
    ds_t = repsim.block_structure(torch.from_numpy(_matrix(12, [(4, 9)])))
    assert _spans(ds_t) == [(4, 9)]


@pytest.mark.parametrize("seed", range(10))
def test_noisy_blocks(seed):
    sim = _noisy(_matrix(20, [(2, 7), (11, 17)]), sigma=0.05, seed=seed)
    assert _spans(repsim.block_structure(sim)) == [(2, 7), (11, 17)]


@pytest.mark.parametrize("sim", [
    np.eye(10),
    _matrix(10, background=0.5),
    _decay(16, 0.85),           # gradual decay: adjacent 0.85, two apart 0.72
    _noisy(_matrix(16, background=0.4), 0.1, 0),
], ids=["identity", "flat", "decay", "noise"])
def test_no_block(sim):
    ds = repsim.block_structure(sim)
    assert ds.sizes["block"] == 0
    assert ds.attrs["block_score"] == 0.0 == repsim.block_score(sim)


def test_two_adjacent_blocks_stay_two():
    # two touching blocks whose cross similarity (0.6) is high but below the threshold
    sim = _matrix(14, [(1, 6), (7, 12)], cross=0.6)
    ds = repsim.block_structure(sim)
    assert _spans(ds) == [(1, 6), (7, 12)]
    np.testing.assert_allclose(ds["inside"].values, [0.95, 0.95])
    # outside of block 0: 6 layers x (6 cross at 0.6 + 2 background at 0.3) each
    assert ds["outside"].values[0] == pytest.approx((6 * 0.6 + 2 * 0.3) / 8)
    # mutually similar blocks are one block
    assert _spans(repsim.block_structure(_matrix(14, [(1, 6), (7, 12)], cross=0.9))) == [(1, 12)]


def test_min_size_and_threshold():
    sim = _matrix(12, [(0, 1), (4, 6), (8, 11)], inside=0.85)
    assert _spans(repsim.block_structure(sim)) == [(4, 6), (8, 11)]
    assert _spans(repsim.block_structure(sim, min_size=2)) == [(0, 1), (4, 6), (8, 11)]
    assert _spans(repsim.block_structure(sim, min_size=4)) == [(8, 11)]
    assert repsim.block_structure(sim, threshold=0.9).sizes["block"] == 0
    # a lower threshold lets a gradual decay count
    assert repsim.block_structure(_decay(16, 0.85), threshold=0.5).sizes["block"] > 0


def test_whole_matrix_one_block_has_no_outside():
    ds = repsim.block_structure(np.full((5, 5), 0.9))
    assert _spans(ds) == [(0, 4)] and np.isnan(ds["outside"].item())
    assert repsim.block_score(np.full((5, 5), 0.9)) == pytest.approx(0.9)


def test_nan_layer_ends_a_block():
    sim = _matrix(12, [(2, 10)])
    sim[6, :] = sim[:, 6] = np.nan
    assert _spans(repsim.block_structure(sim)) == [(2, 5), (7, 10)]


def test_score_orders_models_by_block_area():
    small = repsim.block_score(_matrix(20, [(5, 8)]))
    large = repsim.block_score(_matrix(20, [(2, 15)]))
    faint = repsim.block_score(_matrix(20, [(2, 15)], inside=0.82))
    assert 0 < small < faint < large <= 1


def test_block_table_saves_to_netcdf(tmp_path):
    pytest.importorskip("h5netcdf")
    pytest.importorskip("h5py")
    ds = repsim.block_structure(_matrix(10, [(1, 4), (6, 9)]))
    repsim.save_result(ds, tmp_path / "blocks.nc")
    back = repsim.load_result(tmp_path / "blocks.nc")
    assert back["first"].values.tolist() == ["1", "6"]
    assert back.attrs["block_score"] == pytest.approx(ds.attrs["block_score"])


def test_bad_inputs():
    with pytest.raises(ValueError, match="square"):
        repsim.block_structure(np.ones((3, 4)))
    with pytest.raises(ValueError, match="square"):
        repsim.block_structure(np.ones(4))
    asym = _matrix(6, [(0, 3)])
    asym[0, 5] = 0.9
    with pytest.raises(ValueError, match="symmetric"):
        repsim.block_structure(asym)
    a, b = ["a", "b", "c"], ["x", "y", "z"]
    with pytest.raises(ValueError, match="same layer_a and layer_b"):
        repsim.block_structure(similarity_array(np.eye(3), a, b))
    with pytest.raises(TypeError, match="Dataset"):
        repsim.block_structure(xr.Dataset())
    for kw, match in [({"threshold": float("nan")}, "threshold"), ({"threshold": "hi"}, "threshold"),
                      ({"min_size": 1}, "min_size"), ({"min_size": 2.5}, "min_size")]:
        with pytest.raises(ValueError, match=match):
            repsim.block_structure(np.eye(4), **kw)
        with pytest.raises(ValueError, match=match):
            repsim.block_score(np.eye(4), **kw)


def test_docstring_examples_run():
    import doctest

    import repsim.blocks as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
