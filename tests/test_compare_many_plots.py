"""Summaries and figures of compare_many: seed groups against a hand-made reference, the
model distance matrix and its MDS map (distances reproduced within a stress bound), the
heatmap grid's images equal to the pairs' matrices, best matches of a metric."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy import stats as sst

import repsim

pytest.importorskip("matplotlib")


def stores(depths=(3, 3, 2, 3), n=40, seed=0):
    """In-memory stores of models sharing a latent x (so their layers are related)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6))
    out = {}
    for m, depth in enumerate(depths):
        layers = {}
        h = x
        for i in range(depth):
            h = np.tanh(h @ rng.standard_normal((h.shape[1], 6))) + 0.3 * rng.standard_normal((n, 6))
            layers[f"m{m}l{i}"] = h
        out[f"m{m}"] = xr.Dataset({k: (("example", k + "_f"), v) for k, v in layers.items()})
    return out


def ref_cka(x, y):
    x = x - x.mean(0)
    y = y - y.mean(0)
    return np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def test_heatmap_grid_draws_every_pair_cut_to_its_layers():
    ds = stores()
    sim = repsim.compare_many(ds)
    fig, axes = repsim.plot_compare_many(sim)
    assert axes.shape == (4, 4)
    for i, a in enumerate(ds):
        for j, b in enumerate(ds):
            image = axes[i, j].images[0]
            want = np.array([[ref_cka(ds[a][p].values, ds[b][q].values) for q in ds[b]]
                             for p in ds[a]])
            np.testing.assert_allclose(np.asarray(image.get_array()), want, rtol=0, atol=1e-12)
            assert image.get_clim() == (0.0, 1.0)
            if j == 0:  # layer names tick the grid's edges
                assert [t.get_text() for t in axes[i, j].get_yticklabels()] == list(ds[a])
            if i == 3:
                assert [t.get_text() for t in axes[i, j].get_xticklabels()] == list(ds[b])
            assert axes[i, j].get_ylabel() == (a if j == 0 else "")
            assert axes[i, j].get_title() == (b if i == 0 else "")
    # triangle: the panels below the diagonal are switched off and empty
    fig, axes = repsim.plot_compare_many(sim, triangle=True)
    assert not axes[2, 1].images and not axes[2, 1].axison
    assert axes[1, 2].images and axes[2, 2].images
    assert axes[2, 2].get_ylabel() == "m2" and axes[1, 2].get_ylabel() == ""


def test_heatmap_grid_of_a_metric_spans_its_values():
    ds = stores((2, 2))
    sim = repsim.compare_many(ds, measure="procrustes_angular")
    _, axes = repsim.plot_compare_many(sim)
    finite = sim.values[np.isfinite(sim.values)]
    assert axes[0, 1].images[0].get_clim() == (finite.min(), finite.max())


def test_best_matches_of_a_metric_takes_the_smallest():
    ds = stores((2, 3))
    sim = repsim.compare_many(ds, measure="procrustes_angular")
    best = repsim.best_matches(sim)
    row = sim.sel(model_a="m0", model_b="m1", layer_a=0).values
    assert int(best.layer_b.sel(model_a="m0", model_b="m1", layer_a=0)) == int(np.argmin(row))
    assert float(best.score.sel(model_a="m0", model_b="m1", layer_a=0)) == row.min()


def test_model_distances_are_one_minus_the_symmetrised_model_score():
    ds = stores()
    sim = repsim.compare_many(ds)
    names = list(ds)
    score = np.zeros((4, 4))
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            score[i, j] = np.mean([max(ref_cka(ds[a][p].values, ds[b][q].values) for q in ds[b])
                                   for p in ds[a]])
    want = 1 - (score + score.T) / 2
    np.fill_diagonal(want, 0)
    got = repsim.model_distances(sim)
    assert got.dims == ("model_a", "model_b")
    np.testing.assert_allclose(got.values, want, rtol=0, atol=1e-12)
    # a 2-d matrix is taken as it is (a distance's values are kept)
    dist = xr.DataArray(want, dims=("model_a", "model_b"),
                        coords={"model_a": names, "model_b": names}, attrs={"kind": "distance"})
    np.testing.assert_array_equal(repsim.model_distances(dist).values, want)
    with pytest.raises(ValueError, match="NaN"):
        repsim.model_distances(dist.where(dist > 0.0))


def _pairwise(xy):
    return np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))


def test_model_map_reproduces_a_euclidean_configuration():
    rng = np.random.default_rng(3)
    points = rng.uniform(0, 1, (6, 2))
    d = _pairwise(points)
    names = [f"net{i}" for i in range(6)]
    sim = xr.DataArray(1 - d, dims=("model_a", "model_b"),
                       coords={"model_a": names, "model_b": names},
                       attrs={"kind": "similarity", "measure": "cka_linear"})
    coords = repsim.model_map(sim)
    assert coords.dims == ("model", "component") and coords["model"].values.tolist() == names
    np.testing.assert_allclose(_pairwise(coords.values), d, atol=1e-4)
    assert coords.attrs["stress"] < 1e-4
    stress = np.sqrt(((_pairwise(coords.values) - d) ** 2).sum() / (d ** 2).sum())
    assert coords.attrs["stress"] == pytest.approx(stress, abs=1e-15)
    ax = repsim.plot_model_map(sim, seeds={n: n[:-1] + str(int(n[-1]) % 2) for n in names})
    np.testing.assert_allclose(np.asarray(ax.collections[0].get_offsets()), coords.values)
    assert [t.get_text() for t in ax.texts] == names
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["net0", "net1"]


def test_model_map_of_a_comparison_keeps_its_stress_bound():
    sim = repsim.compare_many(stores((3, 3, 3, 3, 2)))
    coords = repsim.model_map(sim)
    d = repsim.model_distances(sim).values
    mapped = _pairwise(coords.values)
    # stress-1 as stated, and the map no worse than the classical (Torgerson) solution
    assert coords.attrs["stress"] == pytest.approx(
        np.sqrt(((mapped - d) ** 2).sum() / (d ** 2).sum()), rel=1e-12)
    j = np.eye(5) - 1 / 5
    w, v = np.linalg.eigh(-0.5 * j @ (d ** 2) @ j)
    classical = v[:, -2:] * np.sqrt(np.maximum(w[-2:], 0))
    classical_stress = np.sqrt(((_pairwise(classical) - d) ** 2).sum() / (d ** 2).sum())
    assert coords.attrs["stress"] <= classical_stress + 1e-9


def test_seed_groups_against_a_hand_made_reference():
    ds = stores((2, 2, 2, 2, 2), seed=1)
    sim = repsim.compare_many(ds)
    seeds = {"m0": "A", "m1": "A", "m2": "A", "m3": "B", "m4": "C"}
    out = repsim.seed_groups(sim, seeds, level=0.8)
    assert out["mean"].dims == ("group_a", "group_b", "layer_a", "layer_b")
    assert out["group_a"].values.tolist() == ["A", "B", "C"]
    v = sim.values

    def ref(pairs):
        x = np.stack([v[i, j] for i, j in pairs])
        k = len(pairs)
        mean, std = x.mean(0), x.std(0, ddof=1)
        half = sst.t.ppf(0.9, k - 1) * std / np.sqrt(k)
        return mean, std, mean - half, mean + half

    within_a = [(i, j) for i in range(3) for j in range(3) if i != j]
    a_vs_b = [(i, 3) for i in range(3)]
    for (g, h), pairs in {("A", "A"): within_a, ("A", "B"): a_vs_b}.items():
        mean, std, lo, hi = ref(pairs)
        sel = out.sel(group_a=g, group_b=h)
        np.testing.assert_allclose(sel["mean"].values, mean, rtol=0, atol=1e-12)
        np.testing.assert_allclose(sel["std"].values, std, rtol=0, atol=1e-12)
        np.testing.assert_allclose(sel["ci_low"].values, lo, rtol=0, atol=1e-12)
        np.testing.assert_allclose(sel["ci_high"].values, hi, rtol=0, atol=1e-12)
        assert int(sel["n_pairs"]) == len(pairs)
    # one pair: its value, no spread; a one-model group against itself: nothing
    np.testing.assert_array_equal(out["mean"].sel(group_a="B", group_b="C").values, v[3, 4])
    assert np.isnan(out["std"].sel(group_a="B", group_b="C")).all()
    assert int(out["n_pairs"].sel(group_a="B", group_b="B")) == 0
    assert np.isnan(out["mean"].sel(group_a="B", group_b="B")).all()
    # the model x model matrix groups the same way
    score = repsim.best_matches(sim)["model_score"]
    grouped = repsim.seed_groups(score, seeds)
    assert grouped["mean"].dims == ("group_a", "group_b")
    want = np.mean([score.values[i, j] for i, j in within_a])
    assert float(grouped["mean"].sel(group_a="A", group_b="A")) == pytest.approx(want, abs=1e-15)
    with pytest.raises(ValueError, match="no group for the model.*m4"):
        repsim.seed_groups(sim, {k: g for k, g in seeds.items() if k != "m4"})
