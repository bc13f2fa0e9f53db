"""The study's recipe checks (a sub-grid's own weight decay or steps), the C1 depth curve and
the paper's figure analogues (issue 24, section 4): config refusals, ids and training
settings pinned for the committed CPU configs (the models being trained must never be
retrained), recipe checks left out of every seed statistic, growth tested exactly, and the
series figures drawn with the right panels."""

import hashlib
import itertools
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from wide_deep import claims, config, exact, figures, growth, recipe, summaries  # noqa: E402
from wide_deep.analyse import cross_pairs  # noqa: E402

CONFIGS = ROOT / "examples" / "wide_deep_configs"


def _cfg(path=None, **overrides):
    cfg = config.build_config(config.parse_args([] if path is None else ["--config", str(path)]))
    cfg.update(overrides)
    return cfg


def _hash(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------- ids and settings, pinned
#
# Computed on main before recipe checks existed (commit f6de68b): the ids, in order, and a
# hash of every model's training, extract and output settings and of every cross pair's
# settings. A change here retrains (or re-analyses) the committed runs' models.
PINNED = {
    "cifar10_cpu.json": (
        ["resnet20_w1_s0_f0p0625", "resnet20_w1_s1_f0p0625", "resnet20_w1_s2_f0p0625", "resnet56_w1_s0_f0p0625",
         "resnet56_w1_s1_f0p0625", "resnet20_w2_s0_f0p0625", "resnet20_w2_s1_f0p0625", "resnet20_w2_s2_f0p0625",
         "resnet110_w1_s0_f0p25", "resnet110_w1_s0_f0p0625", "resnet110_w1_s1_f0p0625", "resnet110_w1_s2_f0p0625"],
        "b6ba0ba286a73e67", 37, "46f1f469a51ca99b"),
    "cifar10_cpu_v2.json": (
        ["resnet20_w1_s0_f0p0625", "resnet20_w1_s1_f0p0625", "resnet20_w1_s2_f0p0625", "resnet20_w1_s3_f0p0625",
         "resnet20_w1_s4_f0p0625", "resnet56_w1_s0_f0p0625", "resnet56_w1_s1_f0p0625", "resnet56_w1_s2_f0p0625",
         "resnet56_w1_s0_f0p01562", "resnet56_w1_s1_f0p01562", "resnet56_w1_s2_f0p01562", "resnet74_w1_s0_f0p0625",
         "resnet20_w2_s0_f0p0625", "resnet20_w2_s1_f0p0625", "resnet20_w2_s2_f0p0625", "resnet20_w2_s0_f0p01562",
         "resnet20_w2_s1_f0p01562", "resnet20_w2_s2_f0p01562", "resnet92_w1_s0_f0p0625", "resnet110_w1_s0_f0p25",
         "resnet110_w1_s0_f0p0625", "resnet110_w1_s1_f0p0625", "resnet110_w1_s2_f0p0625", "resnet110_w1_s3_f0p0625",
         "resnet110_w1_s4_f0p0625", "resnet164_w1_s0_f0p0625", "resnet20_w4_s0_f0p0625", "resnet20_w4_s1_f0p0625"],
        "8e86aabccf64b0b0", 152, "7376266e13e44eee"),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_ids_and_settings_of_the_committed_cpu_configs_are_pinned(name):
    ids, models_hash, n_pairs, pairs_hash = PINNED[name]
    cfg = _cfg(CONFIGS / name)
    specs = config.model_specs(cfg)
    seeds = config.standard(specs)
    assert [s["id"] for s in seeds] == ids
    per = {s["id"]: [config.train_settings(cfg, s), config.analysis_settings(cfg, s), config.outputs_settings(cfg, s)]
           for s in seeds}
    assert _hash(per) == models_hash
    pairs = [(a["id"], b["id"], k, config.analysis_settings(cfg, a, b))
             for a, b, k in cross_pairs(seeds, {s["id"] for s in seeds})]
    assert len(pairs) == n_pairs and _hash(pairs) == pairs_hash
    # spelt out for one model: the record the background run stores beside its weights
    assert config.train_settings(cfg, seeds[0]) == {
        "amp": None, "augment": True, "batch_size": 128, "crop_padding": 4, "dataset": "cifar10",
        "digits_test_size": 500, "epochs": 50, "image_size": 16, "lr": 0.1, "min_steps": 2500, "momentum": 0.9,
        "nesterov": True, "split_seed": 0, "warmup_fraction": 0.25, "weight_decay": 0.0005}


def test_v2_recipe_checks_have_their_own_ids_and_settings():
    cfg = _cfg(CONFIGS / "cifar10_cpu_v2.json")
    specs = {s["id"]: s for s in config.model_specs(cfg)}
    checks = {i: s for i, s in specs.items() if config.is_recipe_check(s)}
    assert sorted(checks) == ["resnet110_w1_s0_f0p0625_st5000", "resnet110_w1_s0_f0p0625_wd0p0002"]
    twin = specs["resnet110_w1_s0_f0p0625"]
    base = config.train_settings(cfg, twin)
    wd, st = checks["resnet110_w1_s0_f0p0625_wd0p0002"], checks["resnet110_w1_s0_f0p0625_st5000"]
    assert config.train_settings(cfg, wd) == dict(base, weight_decay=0.0002)
    assert config.train_settings(cfg, st) == dict(base, min_steps=5000)
    assert config.analysis_settings(cfg, wd)["recipe"] == {wd["id"]: {"weight_decay": 0.0002}}
    assert "recipe" not in config.analysis_settings(cfg, twin)
    assert config.outputs_settings(cfg, st)["train"]["min_steps"] == 5000
    text = config.deviations(cfg)
    assert "recipe check: weight decay 0.0002 for depth 110 width 1 seed 0 on training fraction 0.0625" in text
    assert "recipe check: at least 5,000 steps" in text and "not a seed" in text
    assert "recipe checks" in json.loads((CONFIGS / "cifar10_cpu_v2.json").read_text())["comment"]
    assert config.model_id(dict(twin, recipe={"min_steps": 5000, "weight_decay": 1e-3})) == (
        "resnet110_w1_s0_f0p0625_wd0p001_st5000")


@pytest.mark.parametrize("grid, match", [
    ({"weight_decay": -1e-4}, r"grids\[1\] weight_decay must be a number in \[0.0, 1.0\]; got -0.0001"),
    ({"weight_decay": 2.0}, r"grids\[1\] weight_decay must be a number in \[0.0, 1.0\]"),
    ({"weight_decay": "2e-4"}, r"grids\[1\] weight_decay must be a number"),
    ({"weight_decay": True}, r"grids\[1\] weight_decay must be a number"),
    ({"weight_decay": float("nan")}, r"grids\[1\] weight_decay must be a number"),
    ({"min_steps": 0}, r"grids\[1\] min_steps must be an integer >= 1; got 0"),
    ({"min_steps": 2500.5}, r"grids\[1\] min_steps must be an integer >= 1"),
    ({"min_steps": True}, r"grids\[1\] min_steps must be an integer >= 1"),
    ({"weight_decay": 5e-4}, r"grids\[1\] weight_decay 0.0005 is the config's own weight_decay: a recipe check "
                             "must differ"),
    ({"min_steps": 2500}, r"grids\[1\] min_steps 2500 is the config's own min_steps"),
    ({"weight_decays": 2e-4}, r"grids\[1\] has unknown keys \['weight_decays'\]"),
])
def test_bad_recipe_sub_grids_are_refused(tmp_path, grid, match):
    content = {"min_steps": 2500, "grids": [{"depths": [8]}, {"depths": [8], **grid}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(SystemExit, match=match):
        config.build_config(config.parse_args(["--config", str(path)]))


def test_recipe_check_and_its_twin_are_two_models_in_order():
    cfg = _cfg(grids=[{"depths": [8], "seeds": [0, 1]}, {"depths": [8], "seeds": [0], "weight_decay": 1e-3}])
    config.check_config(cfg)
    assert [s["id"] for s in config.model_specs(cfg)] == ["resnet8_w1_s0_f1", "resnet8_w1_s0_f1_wd0p001",
                                                           "resnet8_w1_s1_f1"]
    assert [s["id"] for s in config.standard(config.model_specs(cfg))] == ["resnet8_w1_s0_f1", "resnet8_w1_s1_f1"]


# ------------------------------------------------------------------ synthetic summaries


def _block(first, last, n_layers, inside=0.97, contrast=0.3, pc1_in=0.45, pc1_out=0.12, after=(0.92, 0.2)):
    return {"first": first, "last": last, "size": last - first + 1, "relative_size": (last - first + 1) / n_layers,
            "inside": inside, "local_contrast": contrast, "pc1_in": pc1_in, "pc1_out": pc1_out, "pc1_abs_cos_in": 0.9,
            "inside_after_pc1_removal": after[0], "local_contrast_after_pc1_removal": after[1],
            "intervals": {"inside_change_after_pc1_removal": None, "local_contrast_change_after_pc1_removal": None},
            "follow_up": None}


def _m(depth, seed, width=1, fraction=0.0625, block=None, fits=True, contrast=0.1, pc1=0.2, recipe_=None, acc=0.6):
    n_layers = depth - 1  # every ReLU output
    m = {"id": config.model_id({"depth": depth, "width": width, "seed": seed, "train_fraction": fraction,
                                **({"recipe": recipe_} if recipe_ else {})}),
         "depth": depth, "width": width, "seed": seed, "train_fraction": fraction, "n_layers": n_layers,
         "train_accuracy": 0.99 if fits else 0.9, "test_accuracy": acc, "fits": fits, "steps": 2500, "n_train": 3120,
         "block": block, "candidate": {"first": 0, "last": 2, "inside": 0.9, "local_contrast": contrast},
         "pc1_max": pc1, "n_parameters": 16_000 * depth * width ** 2}
    if recipe_:
        m["recipe"] = recipe_
    return m


def _summary(models):
    return {"models": models, "cross_seed": [], "cross_architecture": [],
            "outputs": {"wide_vs_deep": None, "seed_disagreement": []}}


def _cpu_like():
    models = [_m(20, s, contrast=c, pc1=0.14) for s, c in enumerate((0.114, 0.086, 0.066))]
    models += [_m(56, s, contrast=0.07) for s in range(2)] + [_m(20, s, width=2) for s in range(3)]
    models += [_m(110, s, block=_block(79, 99, 109, contrast=c), contrast=c, pc1=0.6) for s, c in
               enumerate((0.289, 0.377))] + [_m(110, 2, fits=False, contrast=0.193)]
    return models


def _with_checks(models):
    wd = _m(110, 0, block=_block(75, 100, 109, contrast=0.45), contrast=0.45, pc1=0.8, recipe_={"weight_decay": 2e-4})
    st = _m(20, 0, block=_block(10, 15, 19, contrast=0.3), contrast=0.3, recipe_={"min_steps": 5000})
    return models + [wd, st]


def test_recipe_checks_are_left_out_of_seed_aggregates_claims_and_headline():
    cfg = _cfg(fit_threshold=0.98)
    plain, checked = _summary(_cpu_like()), _summary(_with_checks(_cpu_like()))
    assert summaries.seed_aggregates(checked["models"]) == summaries.seed_aggregates(plain["models"])
    assert summaries.seed_aggregates(checked["models"])["per_architecture"]["resnet110_w1_f0.0625"]["seeds"] == [0, 1]
    assert claims.findings(checked, cfg) == claims.findings(plain, cfg)
    assert claims.headline(checked, cfg) == claims.headline(plain, cfg)
    assert claims.verdicts_by_threshold(checked, cfg) == claims.verdicts_by_threshold(plain, cfg)
    f = {x["key"]: x for x in claims.findings(checked, cfg)}
    # the block-bearing ResNet-20 recipe check would have made "none in the smallest" false
    assert f["block_deep_not_small"]["met"] == "met"
    assert "block in 2 of 3 trained seeds (2 fitted)" in f["block_deep_not_small"]["evidence"]
    # the cross-model pairs: a recipe check never pairs with its twin as a seed
    specs = [{k: m[k] for k in ("id", "depth", "width", "seed", "train_fraction")} for m in checked["models"]]
    for s, m in zip(specs, checked["models"]):
        if "recipe" in m:
            s["recipe"] = m["recipe"]
    ids = {x for a, b, _ in cross_pairs(config.standard(specs), {m["id"] for m in checked["models"]}) for x in (a["id"], b["id"])}
    assert not any("_wd" in i or "_st" in i for i in ids)


def test_recipe_section_compares_each_check_with_its_twin():
    models = _with_checks(_cpu_like())
    models.append(_m(56, 5, recipe_={"weight_decay": 1e-3}))  # no standard twin in the run
    lines = recipe.recipe_section(_summary(models))
    text = "\n".join(lines)
    assert lines[0] == "## Recipe checks\n"
    assert "| resnet110_w1_s0_f0p0625_wd0p0002 | weight decay 0.0002 | 2,500 | 0.990 (fits) | 0.800 | 75-100 (26/109)" \
        in text
    assert "| resnet110_w1_s0_f0p0625 | standard twin | 2,500 | 0.990 (fits) | 0.600 | 79-99 (21/109)" in text
    assert "local contrast 0.450 vs 0.289 (sharper" in text
    # C3's criterion: inside 0.97 -> 0.92 is a drop of 0.05 < 0.1: not dissolved, in both
    assert "PC1 removal dissolves the block (C3's criterion): no vs no" in text
    assert "resnet20_w1_s0_f0p0625_st5000 (at least 5,000 steps) against resnet20_w1_s0_f0p0625: " in text
    assert "block yes vs no" in text and "no block" in text
    assert "resnet56_w1_s5_f0p0625_wd0p001 (weight decay 0.001): no standard twin in this run" in text
    assert recipe.recipe_section(_summary(_cpu_like())) == []


def test_pc1_removal_dissolves_is_c3s_criterion():
    assert recipe.pc1_removal_dissolves(_block(0, 5, 20, inside=0.97, contrast=0.4, after=(0.86, 0.2)))
    assert not recipe.pc1_removal_dissolves(_block(0, 5, 20, inside=0.97, contrast=0.4, after=(0.88, 0.2)))
    assert not recipe.pc1_removal_dissolves(_block(0, 5, 20, inside=0.97, contrast=0.4, after=(0.8, 0.21)))
    assert recipe.pc1_removal_dissolves(None) is None


# ------------------------------------------------------------------ C1 on a depth curve


def _kendall_reference(x, y):
    """Brute force: tau-b of every ordering of y, scipy's, share >= the observed."""
    from scipy.stats import kendalltau

    obs = kendalltau(x, y).statistic
    taus = [kendalltau(x, [y[i] for i in perm]).statistic for perm in itertools.permutations(range(len(y)))]
    taus = np.nan_to_num(taus, nan=-2.0)
    return obs, float(np.mean(taus >= obs - 1e-12)), float(np.mean(taus >= taus.max() - 1e-12))


@pytest.mark.parametrize("y", [[0, 0, 0, 0.1, 0.19, 0.3], [0, 0.2, 0, 0.2, 0.1, 0.3], [0.3, 0.2, 0.1, 0, 0, 0],
                               [0, 0, 0, 0, 0.19, 0.19]])
def test_kendall_increasing_is_exact_over_every_ordering(y):
    x = [20, 56, 74, 92, 110, 164]
    k = exact.kendall_increasing(x, y)
    tau, p, min_p = _kendall_reference(x, y)
    assert k["method"] == "exact" and k["n_orderings"] == 720
    assert k["tau"] == pytest.approx(tau, abs=1e-4)
    assert k["p"] == pytest.approx(p, rel=1e-3) and k["min_p"] == pytest.approx(min_p, rel=1e-3)


def test_kendall_increasing_edge_cases_and_monte_carlo():
    assert exact.kendall_increasing([1, 2], [0, 1]) is None
    flat = exact.kendall_increasing([1, 2, 3, 4], [0, 0, 0, 0])
    assert flat["tau"] is None and flat["p"] == 1.0
    assert exact.kendall_increasing([1, 2, 3], [0, 1, 2])["p"] == pytest.approx(1 / 6, rel=1e-3)  # 4 digits
    big = exact.kendall_increasing(range(10), range(10))  # 10! orderings: a seeded sample
    assert big["method"] == "Monte Carlo" and big["n_orderings"] == exact.MONTE_CARLO
    assert 0 < big["p"] <= 3 / (exact.MONTE_CARLO + 1) and big == exact.kendall_increasing(range(10), range(10))


DEPTHS = (20, 56, 74, 92, 110, 164)


def _curve(sizes, seeds=(0, 1), params_scale=1):
    """A depth series with the given relative block size at each depth (every seed alike)."""
    models = []
    for d, size in zip(DEPTHS, sizes):
        for s in seeds:
            m = _m(d, s, contrast=0.1 + size)
            n = m["n_layers"]
            if size:
                k = max(1, int(round(size * n)))
                m["block"] = _block(n - k - 2, n - 3, n, contrast=0.2 + size)
                m["block"]["size"] = k
            m["n_parameters"] *= params_scale
            models.append(m)
    return models


def _c1(models):
    return {x["key"]: x for x in claims.findings(_summary(models), _cfg())}["c1_size_with_depth"]


def test_c1_depth_curve_grows():
    f = _c1(_curve((0, 0, 0.1, 0.15, 0.2, 0.3)))
    assert f["met"] == "met" and "The block grows with depth" in f["evidence"]
    curve = f["curve"][0]
    assert curve["kendall_size"]["method"] == "exact" and curve["kendall_size"]["p"] <= 0.05
    assert "exact over all 720 orderings of the depths" in f["evidence"]
    assert "it appears between ResNet-56 and ResNet-74" in f["evidence"]
    assert "Kendall's tau of that size against depth" in f["criterion"]


def test_c1_depth_curve_emerges_between_two_depths():
    f = _c1(_curve((0, 0, 0, 0, 0.2, 0.19)))  # 22/109 and 31/163 layers: no rise
    assert f["met"] == "emerges"
    assert "emerges between ResNet-92 and ResNet-110" in f["evidence"] and "without growing beyond it" in f["evidence"]
    one = _c1(_curve((0, 0, 0, 0, 0, 0.2)))
    assert one["met"] == "emerges" and "between ResNet-110 and ResNet-164" in one["evidence"]
    assert "growth needs two depths with a block" in one["evidence"]


def test_c1_depth_curve_not_reached_and_not_met():
    block_model = _m(20, 0, width=8, block=_block(10, 15, 19))  # the run's block sits at 16 M parameters
    block_model["n_parameters"] = 16_000_000
    f = _c1(_curve((0,) * 6) + [block_model])
    assert f["met"] == "not reached" and "the curve stops before the block appears" in f["evidence"]
    assert _c1(_curve((0,) * 6))["met"] == "not met"  # no block anywhere in the run
    scattered = _c1(_curve((0.2, 0, 0.2, 0, 0.2, 0)))
    assert scattered["met"] == "not met" and "does not grow with depth" in scattered["evidence"]


def test_c1_with_three_depths_keeps_its_wording():
    f = _c1([m for m in _curve((0, 0, 0, 0, 0.2, 0.19)) if m["depth"] in (20, 56, 110)])
    assert f["met"] == "emerges" and "curve" not in f
    assert "emergence with depth, not growth" in f["evidence"] and "Kendall" not in f["criterion"]


def test_c1_depth_curve_leaves_out_unfitted_depths_and_says_so():
    models = _curve((0, 0, 0.1, 0.15, 0.2, 0.3))
    models = [dict(m, fits=False) if m["depth"] == 164 else m for m in models]
    f = _c1(models)
    assert f["curve"][0]["depths"] == [20, 56, 74, 92, 110]
    assert "ResNet-164, the deepest trained, has no fitted seed and is left out" in f["evidence"]


# ------------------------------------------------------------------ figures


def _extracts(models):
    import xarray as xr

    rng = np.random.default_rng(0)
    out = {}
    for m in models:
        a = rng.random((m["n_layers"], m["n_layers"]))
        out[m["id"]] = xr.Dataset({"cka": (("layer_a", "layer_b"), (a + a.T) / 2)})
    return out


def _image_titles(fig):
    return [ax.get_title() for ax in fig.axes if ax.images]


def _run_models():
    models = _curve((0, 0, 0, 0, 0.2, 0.2), seeds=(0, 1))
    models = [dict(m, fits=False) if (m["depth"], m["seed"]) == (56, 0) else m for m in models]  # seed 1 shown
    models += [_m(20, s, width=w) for w in (2, 4) for s in (0, 1)]
    models += [_m(56, 0, fraction=0.015625), _m(20, 0, width=2, fraction=0.015625), _m(110, 0, fraction=0.25)]
    return _with_checks(models)


def test_depth_and_width_series_show_one_model_per_point_in_order():
    plt = figures._plt()
    models = _run_models()
    summary = dict(_summary(models), config=_cfg())
    ex = _extracts(models)
    titles = _image_titles(figures.depth_series(ex, summary, plt))
    assert [t.split(",")[0] for t in titles] == [f"ResNet-{d}" for d in DEPTHS]
    assert titles[1].startswith("ResNet-56, seed 1\n")  # seed 0 not fitted: the first fitted seed
    assert titles[0].startswith("ResNet-20, seed 0\n")  # never the ResNet-20 recipe check
    assert "no block of 19 layers" in titles[0] and "block 85-106 of 109 layers" in titles[4]  # 22 of 109 layers
    titles = _image_titles(figures.width_series(ex, summary, plt))
    assert [t.split(",")[0] for t in titles] == ["ResNet-20", "ResNet-20x2", "ResNet-20x4"]
    # one point on the axis: no figure
    single = dict(summary, models=[m for m in models if m["depth"] == 20 and m["width"] == 1])
    assert figures.depth_series(ex, single, plt) is None and figures.width_series(ex, single, plt) is None
    assert figures.fraction_grid(ex, single, plt) is None and figures.depth_curve(single, plt) is None


def test_fraction_grid_rows_are_fractions_and_columns_architectures():
    plt = figures._plt()
    models = _run_models()
    fig = figures.fraction_grid(_extracts(models), dict(_summary(models), config=_cfg()), plt)
    grid = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(grid) == 9  # 3 fractions x (ResNet-20x2, ResNet-56, ResNet-110), by capacity
    # row by row (0.25, 0.0625, 0.015625 of the data), columns by capacity: ResNet-56, ResNet-20x2, ResNet-110
    images = [ax.get_title().split("\n")[0] for ax in grid if ax.images]
    assert images == ["ResNet-110, 0.25 data, seed 0", "ResNet-56, 0.0625 data, seed 1",
                      "ResNet-20x2, 0.0625 data, seed 0", "ResNet-110, 0.0625 data, seed 0",
                      "ResNet-56, 0.015625 data, seed 0", "ResNet-20x2, 0.015625 data, seed 0"]
    assert [i for i, ax in enumerate(grid) if not ax.axison] == [0, 1, 8]  # the cells without a model


def test_depth_curve_has_every_seed_as_a_dot_and_the_mean_as_a_line():
    plt = figures._plt()
    models = _run_models()
    fig = figures.depth_curve(dict(_summary(models), config=_cfg()), plt)
    contrast, pc1 = fig.axes
    assert contrast.get_title().startswith("local contrast") and pc1.get_title().startswith("PC1 max")
    series = [m for m in models if m["width"] == 1 and m["train_fraction"] == 0.0625 and "recipe" not in m]
    assert sum(len(c.get_offsets()) for c in contrast.collections if hasattr(c, "get_offsets")) == len(series)
    (line,) = [ln for ln in contrast.get_lines() if ln.get_label() == "mean over fitted seeds"]
    assert list(line.get_xdata()) == list(DEPTHS)
    fitted56 = [growth.contrast(m) for m in series if m["depth"] == 56 and m["fits"]]
    assert line.get_ydata()[1] == pytest.approx(np.mean(fitted56))  # the unfitted seed is a dot, not in the mean


def test_series_figures_writes_each_figure_with_a_caption(tmp_path):
    from wide_deep.report import CAPTIONS

    models = _run_models()
    figs = figures.series_figures(_extracts(models), dict(_summary(models), config=_cfg()), tmp_path / "figures")
    assert list(figs) == ["depth_series", "width_series", "fraction_grid", "depth_curve"]
    for key, rel in figs.items():
        assert (tmp_path / rel).stat().st_size > 1000 and key in CAPTIONS


# ------------------------------------------------------------------ end to end (--smoke)


@pytest.fixture(scope="module")
def smoke_pair(tmp_path_factory):
    """The smoke run, then the same folder rerun with two recipe checks added to its grid."""
    pytest.importorskip("torch")
    import wide_deep_study as study

    base = tmp_path_factory.mktemp("smoke_plain")
    assert study.main(["--smoke", "--out", str(base), "--no-progress", "--threads", "1"]) == 0
    checked = tmp_path_factory.mktemp("smoke_recipe")
    shutil.copytree(base, checked, dirs_exist_ok=True)
    grids = config.SMOKE_CONFIG["grids"] + [{"depths": [14], "seeds": [0], "weight_decay": 0.002},
                                            {"depths": [8], "seeds": [0], "min_steps": 60}]
    cfg_file = checked / "recipe.json"
    cfg_file.write_text(json.dumps({"grids": grids}))
    mtimes = {p.name: p.stat().st_mtime_ns for p in (base / "models").glob("*.nc")}
    assert study.main(["--smoke", "--config", str(cfg_file), "--out", str(checked), "--no-progress", "--threads",
                       "1"]) == 0
    return base, checked, mtimes


def test_smoke_with_recipe_checks_retrains_nothing_and_changes_no_seed_statistic(smoke_pair):
    base, checked, mtimes = smoke_pair
    for name, mtime in mtimes.items():  # the standard models' records are loaded, never retrained
        assert (checked / "models" / name).stat().st_mtime_ns == mtime
    plain = json.loads((base / "summary.json").read_text())
    with_checks = json.loads((checked / "summary.json").read_text())
    ids = {m["id"] for m in with_checks["models"]} - {m["id"] for m in plain["models"]}
    assert ids == {"resnet14_w1_s0_f1_wd0p002", "resnet8_w1_s0_f1_st60"}

    def strip(models):
        return [{k: v for k, v in m.items() if k != "train_seconds"} for m in models]

    assert strip(config.standard(with_checks["models"])) == strip(plain["models"])
    for key in ("seed_aggregates", "cross_seed", "cross_architecture", "outputs", "headline", "findings",
                "verdicts_by_fit_threshold", "control_window"):
        assert with_checks[key] == plain[key], key
    names = {p.name for p in (checked / "cross").glob("*.nc")}
    assert names == {p.name for p in (base / "cross").glob("*.nc")}  # no cross pair with a recipe check
    by_id = {m["id"]: m for m in with_checks["models"]}
    assert by_id["resnet14_w1_s0_f1_wd0p002"]["recipe"] == {"weight_decay": 0.002}
    per_epoch = -(-797 // 64)  # 1,797 digits less 1,000 held out, batch 64
    assert by_id["resnet8_w1_s0_f1_st60"]["steps"] == -(-60 // per_epoch) * per_epoch
    assert by_id["resnet8_w1_s0_f1"]["steps"] == 2 * per_epoch


def test_smoke_report_labels_recipe_checks_and_draws_the_series(smoke_pair):
    _, checked, _ = smoke_pair
    summary = json.loads((checked / "summary.json").read_text())
    report = (checked / "report.md").read_text()
    section = report.split("## Recipe checks\n", 1)[1].split("\n## ", 1)[0]
    assert "| resnet14_w1_s0_f1_wd0p002 | weight decay 0.002 |" in section
    assert "| resnet8_w1_s0_f1_st60 | at least 60 steps |" in section
    assert section.count("| standard twin |") == 2
    assert "resnet14_w1_s0_f1_wd0p002 (weight decay 0.002) against resnet14_w1_s0_f1: train accuracy" in section
    assert "recipe check: weight decay 0.002 for depth 14" in summary["deviations"]
    # smoke: depths 8 and 14, widths 1 and 2 at depth 8, fractions 1 and 0.5: every series is drawn
    assert {"depth_series", "width_series", "fraction_grid", "depth_curve"} <= set(summary["figures"])
    for fig in summary["figures"].values():
        assert (checked / fig).stat().st_size > 1000 and fig in report


def test_seed_claims_compare_architectures_with_three_seeds():
    """The v2 run's depth curve adds one-seed models deeper than ResNet-110: the seed claims
    (headline, block in the deepest) still compare ResNet-110's five seeds with ResNet-20's,
    and fall back to every architecture when none has three seeds."""
    models = [_m(20, s) for s in range(5)] + [_m(110, s, contrast=0.3) for s in range(5)]
    models += [_m(d, 0) for d in (74, 92, 164)] + [_m(56, s, fraction=0.015625) for s in range(3)]
    deepest, smallest, top = claims.extremes(_summary(models))
    assert (deepest, smallest, top) == ((110, 1), (20, 1), 0.0625)
    heads = claims.headline(_summary(models), _cfg(fit_threshold=0.98))
    assert heads and all(len(h["values_deep"]) == 5 and h["deep"] == "ResNet-110" for h in heads)
    few = [_m(20, 0), _m(56, 0), _m(164, 0)]
    assert claims.extremes(_summary(few))[:2] == ((164, 1), (20, 1))
