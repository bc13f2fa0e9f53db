"""The declared block (repsim.find_block): segmentation, local contrast, the PC1 view and the
threshold sweep, on planted matrices and as properties."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import repsim


def _stages(n_per_stage=(18, 18, 18), stage=0.7, background=0.35, block=None, block_value=0.99, ramp=0.0):
    """Stage squares (graded by ``ramp`` per layer of distance) with an optional sharp block."""
    n = sum(n_per_stage)
    sim = np.full((n, n), background)
    start = 0
    for size in n_per_stage:
        idx = np.arange(start, start + size)
        d = np.abs(idx[:, None] - idx[None, :])
        sim[np.ix_(idx, idx)] = np.maximum(stage - ramp * d, background)
        start += size
    if block is not None:
        f, l = block
        sim[f:l + 1, f:l + 1] = block_value
    np.fill_diagonal(sim, 1.0)
    return sim


def _noisy(sim, sigma, seed):
    rng = np.random.default_rng(seed)
    e = rng.normal(0, sigma, sim.shape)
    out = np.clip(sim + (e + e.T) / np.sqrt(2), 0, 1)
    np.fill_diagonal(out, 1.0)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_sharp_late_square_inside_stage_squares_is_found(seed):
    # ResNet-110 at block-output granularity: 54 layers, a late stage-3 square 39..48
    sim = _noisy(_stages(stage=0.75, block=(39, 48)), 0.02, seed)
    ds = repsim.find_block(sim)
    assert ds.attrs["has_block"] == 1
    assert (ds.attrs["block_first_index"], ds.attrs["block_last_index"]) == (39, 48)
    chosen = ds.isel(run=ds.attrs["block"])
    assert chosen["inside"] > 0.95 and chosen["local_contrast"] > 0.2 and bool(chosen["passes"])
    # the old rule (at a threshold below the stage level) returns stage squares, the
    # largest of which is not the sharp block
    old = repsim.block_structure(sim, threshold=0.7)
    largest = int(np.argmax(old["size"].values))
    assert old.sizes["block"] >= 3 and int(old["size"][largest]) >= 18
    assert (int(old["first_index"][largest]), int(old["last_index"][largest])) != (39, 48)


@pytest.mark.parametrize("stage, ramp", [(0.9, 0.0), (0.95, 0.01), (0.8, 0.005)])
def test_graded_stage_structure_gives_no_block(stage, ramp):
    sim = _stages(stage=stage, ramp=ramp, background=0.6)
    ds = repsim.find_block(sim)
    assert ds.attrs["has_block"] == 0 and ds.attrs["block"] == -1
    assert ds.attrs["block_first_index"] == -1
    # the old rule finds "blocks" there: it sees stage structure
    assert repsim.block_structure(sim, threshold=0.7).sizes["block"] == 3


def test_block_contrast_values():
    sim = np.full((12, 12), 0.3)
    sim[4:8, 4:8] = 0.9
    sim[0, 4:8] = sim[4:8, 0] = 0.5  # far away: outside the local window of 3
    np.fill_diagonal(sim, 1.0)
    c = repsim.block_contrast(sim, 4, 7)
    assert c == pytest.approx((0.9, 0.3, 0.6))
    g = repsim.block_contrast(sim, 4, 7, neighbours=None)  # global: 8 other layers, 1 at 0.5
    assert g.outside == pytest.approx((0.5 + 7 * 0.3) / 8)
    # the window grows with the run: ceil(size / 2) layers on each side
    assert repsim.block_contrast(sim, 4, 11, neighbours=1).outside == pytest.approx(
        np.mean(sim[4:12, 0:4]))
    assert np.isnan(repsim.block_contrast(sim, 0, 11).contrast)  # spans the network
    assert np.isnan(repsim.block_contrast(sim, 3, 3).inside)
    # at the first layer only the right-hand side is compared
    assert repsim.block_contrast(sim, 0, 1).outside == pytest.approx(np.mean(sim[0:2, 2:5]))


def test_segment_known_cases():
    sim = np.full((9, 9), 0.2)
    sim[:3, :3] = sim[3:, 3:] = 0.95
    np.fill_diagonal(sim, 1.0)
    assert repsim.segment_layers(sim) == [(0, 2), (3, 8)]
    assert repsim.segment_layers(np.ones((5, 5))) == [(0, 4)]
    assert repsim.segment_layers(np.eye(4), penalty=0.5) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert repsim.segment_layers(np.ones((1, 1))) == [(0, 0)]
    # a NaN layer (constant) counts as dissimilar
    nan = np.ones((6, 6))
    nan[2, :] = nan[:, 2] = np.nan
    assert repsim.segment_layers(nan, penalty=1.0) == [(0, 1), (2, 2), (3, 5)]


def _brute_cost(values, runs, penalty):
    total = 0.0
    for f, l in runs:
        idx = range(f, l + 1)
        total += sum(1 - np.nan_to_num(values[a, b]) for a, b in itertools.combinations(idx, 2)) + penalty
    return total


def _all_segmentations(n):
    for cuts in itertools.product([0, 1], repeat=n - 1):
        runs, start = [], 0
        for i, c in enumerate(cuts, start=1):
            if c:
                runs.append((start, i - 1))
                start = i
        runs.append((start, n - 1))
        yield runs


@st.composite
def _sym(draw, max_n=7):
    n = draw(st.integers(1, max_n))
    vals = draw(st.lists(st.floats(0, 1), min_size=n * n, max_size=n * n))
    m = np.array(vals).reshape(n, n)
    m = (m + m.T) / 2
    np.fill_diagonal(m, 1.0)
    return m


@settings(max_examples=60, deadline=None)
@given(_sym(), st.floats(0.05, 5))
def test_segmentation_is_optimal_and_covers_every_layer(sim, penalty):
    runs = repsim.segment_layers(sim, penalty=penalty)
    n = sim.shape[0]
    assert runs[0][0] == 0 and runs[-1][1] == n - 1
    assert all(b[0] == a[1] + 1 for a, b in zip(runs, runs[1:]))
    best = min(_brute_cost(sim, r, penalty) for r in _all_segmentations(n))
    assert _brute_cost(sim, runs, penalty) == pytest.approx(best, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(_sym(max_n=12), st.floats(0.5, 1.0), st.floats(0.0, 0.5))
def test_declared_block_meets_its_thresholds_and_has_the_largest_local_contrast(sim, min_inside, min_contrast):
    ds = repsim.find_block(sim, min_inside=min_inside, min_contrast=min_contrast)
    sizes = ds["size"].values
    eligible = sizes >= 3
    if ds.attrs["block"] >= 0:
        b = ds.isel(run=ds.attrs["block"])
        assert b["inside"] >= min_inside and b["local_contrast"] >= min_contrast and int(b["size"]) >= 3
        lc = ds["local_contrast"].values[eligible]
        assert float(b["local_contrast"]) == pytest.approx(np.nanmax(lc))
        c = repsim.block_contrast(sim, int(b["first_index"]), int(b["last_index"]))
        assert c.contrast == pytest.approx(float(b["local_contrast"]))
    # relabelling layers (a DataArray) or transposing changes nothing
    again = repsim.find_block(sim.T, min_inside=min_inside, min_contrast=min_contrast)
    assert again.attrs["block"] == ds.attrs["block"]


@settings(max_examples=30, deadline=None)
@given(_sym(max_n=10))
def test_sensitivity_grid_agrees_with_find_block(sim):
    sens = repsim.block_sensitivity(sim, penalties=[1.0, 3.0], min_insides=[0.5, 0.9], min_contrasts=[0.0, 0.2])
    for p in (1.0, 3.0):
        for mi in (0.5, 0.9):
            for mc in (0.0, 0.2):
                ds = repsim.find_block(sim, penalty=p, min_inside=mi, min_contrast=mc)
                cell = sens.sel(penalty=p, min_inside=mi, min_contrast=mc)
                assert bool(cell["has_block"]) == bool(ds.attrs["has_block"])
                assert int(cell["first_index"]) == ds.attrs["block_first_index"]
    assert sens.attrs["found_share"] == pytest.approx(float(sens["has_block"].mean()))


def test_sensitivity_on_planted_block():
    sens = repsim.block_sensitivity(_stages(stage=0.75, block=(39, 48)))
    assert sens.attrs["found_share"] == 1.0 and sens.attrs["n_settings"] == 27
    assert set(sens["first_index"].values.ravel()) == {39}
    none = repsim.block_sensitivity(_stages(stage=0.95, ramp=0.01, background=0.6))
    # stage edges reach a local contrast of 0.17: only the loosest contrast threshold (0.1)
    # accepts one, which the sweep shows
    assert not none["has_block"].sel(min_contrast=[0.2, 0.3]).any()
    assert none["has_block"].sel(min_contrast=0.1, min_inside=0.95).sum() == 0
    assert 0 < none.attrs["found_share"] < 0.25


def test_pc1_runs():
    share = np.array([0.1, 0.6, 0.7, 0.8, 0.2, 0.9, 0.95, 0.3, np.nan, 0.7])
    assert repsim.pc1_runs(share, min_size=2) == [(1, 3), (5, 6)]
    assert repsim.pc1_runs(share) == [(1, 3)]
    assert repsim.pc1_runs(share, threshold=0.05, min_size=1) == [(0, 7), (9, 9)]
    assert repsim.pc1_runs(np.full(4, 0.5)) == []  # strictly greater


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=30), st.floats(0, 1), st.integers(1, 4))
def test_pc1_runs_are_the_maximal_runs_above_threshold(share, threshold, min_size):
    share = np.array(share)
    runs = repsim.pc1_runs(share, threshold=threshold, min_size=min_size)
    above = share > threshold
    covered = np.zeros_like(above)
    for f, l in runs:
        assert above[f:l + 1].all() and l - f + 1 >= min_size
        assert (f == 0 or not above[f - 1]) and (l == len(share) - 1 or not above[l + 1])
        covered[f:l + 1] = True
    # every maximal run of at least min_size layers is listed
    lengths = np.diff(np.flatnonzero(np.diff(np.r_[0, above.astype(int), 0])))[::2]
    assert len(runs) == int(np.sum(lengths >= min_size))


def test_block_dataset_saves_with_its_definition(tmp_path):
    pytest.importorskip("h5netcdf")
    ds = repsim.find_block(_stages(stage=0.75, block=(39, 48)))
    repsim.save_result(ds, tmp_path / "b.nc")
    back = repsim.load_result(tmp_path / "b.nc")
    assert back.attrs["rule"] == ds.attrs["rule"] and back.attrs["penalty"] == 3.0
    assert back.attrs["block_first_index"] == 39


def test_bad_inputs():
    sim = np.eye(6)
    for kw, match in [({"penalty": 0}, "penalty"), ({"penalty": float("nan")}, "penalty"),
                      ({"min_inside": "x"}, "min_inside"), ({"min_contrast": None}, "min_contrast"),
                      ({"min_size": 1}, "min_size"), ({"neighbours": 0}, "neighbours")]:
        with pytest.raises(ValueError, match=match):
            repsim.find_block(sim, **kw)
    with pytest.raises(ValueError, match="penalty must be > 0"):
        repsim.segment_layers(sim, penalty=-1)
    with pytest.raises(ValueError, match="square"):
        repsim.find_block(np.ones((3, 4)))
    with pytest.raises(ValueError, match="last must be an integer in \\[0, 5\\]"):
        repsim.block_contrast(sim, 0, 6)
    with pytest.raises(ValueError, match="last must be >= first"):
        repsim.block_contrast(sim, 3, 1)
    with pytest.raises(ValueError, match="pc1_share must lie in \\[0, 1\\].*layer 1"):
        repsim.pc1_runs([0.2, 1.5])
    with pytest.raises(ValueError, match="1-d"):
        repsim.pc1_runs(np.ones((2, 2)))
    with pytest.raises(ValueError, match="min_insides must hold"):
        repsim.block_sensitivity(sim, min_insides=[])


def test_docstring_examples_run():
    import doctest

    import repsim.blocks.declared as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
