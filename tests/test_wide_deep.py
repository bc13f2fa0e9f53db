"""Unit tests of the study's package (examples/wide_deep): its public functions on small,
known inputs."""

import sys
from pathlib import Path

import numpy as np
import pytest

import repsim

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from wide_deep import analyse, claims, config, report, summaries  # noqa: E402


def test_model_ids_and_grid_order():
    cfg = config.build_config(config.parse_args([]))
    specs = config.model_specs(cfg)
    ids = [s["id"] for s in specs]
    assert ids == [f"resnet20_w1_s{s}_f1" for s in range(3)] + [f"resnet110_w1_s{s}_f1" for s in range(3)]
    assert config.model_id({"depth": 20, "width": 2, "seed": 1, "train_fraction": 0.25}) == "resnet20_w2_s1_f0p25"
    # cheapest first: depth x width^2
    cost = [s["depth"] * s["width"] ** 2 for s in specs]
    assert cost == sorted(cost)


def test_default_config_file_is_the_default():
    spelt = config.build_config(config.parse_args(["--config", str(ROOT / "examples/wide_deep_configs/digits_default.json")]))
    assert spelt == config.build_config(config.parse_args([]))


def test_grid_flags_and_cifar_defaults():
    cfg = config.build_config(config.parse_args(["--depths", "14", "--epochs", "5"]))
    assert [s["depth"] for s in config.model_specs(cfg)] == [14] and cfg["epochs"] == 5
    cfg = config.build_config(config.parse_args(["--dataset", "cifar10", "--train-fraction", "0.0625"]))
    assert cfg["augment"] and cfg["image_size"] == 16 and cfg["grids"][0]["train_fractions"] == [0.0625]
    assert cfg["weight_decay"] == 1e-4 and cfg["momentum"] == 0.9 and not cfg["nesterov"]


def test_deviations_are_declared():
    text = config.deviations(config.build_config(config.parse_args([])))
    assert "digits" in text and "weight decay 0.0005" in text and "Nesterov" in text and "warm-up" in text
    assert "layers 'relu'" in text and "4 CKA passes" in text
    assert "peak lr 0.02 instead of 0.1" in text and "30 epochs" in text
    scaled = config.build_config(config.parse_args(["--batch-size", "256", "--lr", "0.1"]))
    assert "linear scaling of 0.1 at batch 128 would give 0.2 at batch 256" in config.deviations(scaled)
    cifar = config.build_config(config.parse_args(["--dataset", "cifar10", "--batch-size", "128"]))
    text = config.deviations(cifar)
    assert "16 px" in text and "weight decay" not in text and "peak lr" not in text


def test_train_subsets_are_stratified_and_nested():
    from wide_deep.train import train_subset

    y = np.repeat(np.arange(10), 40)
    small, big = train_subset(y, 0.25, 0), train_subset(y, 0.5, 0)
    assert set(small) <= set(big)
    assert np.bincount(y[small]).tolist() == [10] * 10
    assert len(train_subset(y, 1.0, 0)) == 400


def test_augmentation_shapes_and_determinism():
    torch = pytest.importorskip("torch")
    from wide_deep.train import augment

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    a = augment(x, torch.Generator().manual_seed(0), 2, True)
    b = augment(x, torch.Generator().manual_seed(0), 2, True)
    assert a.shape == x.shape and torch.equal(a, b)
    assert torch.equal(augment(x, torch.Generator().manual_seed(0), 0, False), x)
    # a crop of a zero-padded image: every output pixel is an input pixel or zero
    assert set(np.unique(a.numpy())) <= set(np.unique(x.numpy())) | {0.0}


def test_cifar10_data_path(tmp_path):
    pytest.importorskip("torch")
    import pickle

    from wide_deep.train import load_data

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                         b"labels": [int(v) for v in rng.integers(0, 10, 20)]}, f, protocol=4)
    cfg = config.build_config(config.parse_args(["--dataset", "cifar10", "--data-dir", str(folder), "--n-eval", "12"]))
    data = load_data(cfg, progress=False)
    assert data["x_train"].shape == (100, 3, 16, 16) and data["x_eval"].shape == (12, 3, 16, 16)
    np.testing.assert_allclose(data["x_train"].mean(axis=(0, 2, 3)), 0, atol=1e-4)
    assert data["classes"][0] == "airplane"
    assert data["x_out"].shape == data["x_eval"].shape  # no n_outputs: the analysed images
    more = load_data(dict(cfg, n_outputs=16), progress=False)  # the output images begin with the analysed ones
    assert more["x_out"].shape == (16, 3, 16, 16) and np.array_equal(more["x_out"][:12], data["x_eval"])
    assert np.array_equal(more["y_out"][:12], data["y_eval"]) and np.array_equal(more["x_eval"], data["x_eval"])


def test_block_options_are_the_same_for_every_layer_count():
    # the segmentation's cost is linear in a run's size and the relative size floor lives
    # in the library: the study passes one declared set of options, whatever L
    cfg = config.build_config(config.parse_args([]))
    want = {"penalty": 0.25, "min_inside": 0.9, "min_contrast": 0.2, "min_size": 3, "min_share": 0.1,
            "neighbours": 3}
    assert analyse.block_options(cfg, 19) == analyse.block_options(cfg, 217) == want
    # the library's defaults: a caller without the study's config gets the same rule
    defaults = repsim.find_block(np.eye(5)).attrs
    assert {k: defaults[k] for k in want} == want
    # a 2x finer copy of a planted matrix gives the same block
    sim = np.full((54, 54), 0.35)
    sim[36:, 36:] = 0.75
    sim[39:49, 39:49] = 0.99
    np.fill_diagonal(sim, 1.0)
    fine = np.kron(sim, np.ones((2, 2)))
    np.fill_diagonal(fine, 1.0)
    assert analyse.declared_block(sim, cfg)[0] == (39, 48)
    assert analyse.declared_block(fine, cfg)[0] == (78, 97)


def test_window():
    assert analyse.window(54, (39, 48), 3) == (34, 53)  # ceil(10/2) = 5 each side, clipped
    assert analyse.window(20, (0, 2), 3) == (0, 5)


def test_n_groups_and_loader_tail():
    cfg = {"cka_batch_size": 250, "interval_groups": 10}
    assert analyse.n_groups(500, cfg, 5) == 10 and analyse.n_groups(500, cfg, 1) == 2
    assert analyse.n_groups(502, cfg, 1) == 2  # a 2-example tail is dropped


def test_remove_pc1_removes_the_top_component():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 6)) + np.outer(rng.standard_normal(50) * 10, rng.standard_normal(6))
    r = analyse.remove_pc1(x)
    c = x - x.mean(0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    np.testing.assert_allclose(np.asarray(r) @ vt[0], 0, atol=1e-8)


def test_mean_abs_cos():
    s = np.array([[1.0, 0, 0], [-2.0, 0, 0], [0, 1.0, 0]])
    # pairs: |cos| 1, 0, 0 -> mean 1/3
    assert summaries.mean_abs_cos(s) == pytest.approx(1 / 3)
    assert np.isnan(summaries.mean_abs_cos(s[:1]))


def test_output_statistics():
    lo, hi = summaries.wilson(10, 100)
    assert (lo, hi) == pytest.approx((0.0607, 0.1604), abs=1e-4)  # z = 1.645
    d = np.r_[np.ones(30), np.zeros(70)] - np.r_[np.ones(10), np.zeros(90)]
    iv = summaries.mean_interval(d)
    assert iv["estimate"] == pytest.approx(0.2) and iv["ci"][0] > 0.1
    np.testing.assert_allclose(summaries.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    assert summaries.mcnemar(np.array([1, 1, 0, 0], bool), np.array([1, 0, 0, 1], bool))[:2] == (1, 1)


def _model(id_, depth, width, seed, acc, fits=True, block=None, fraction=1.0, n_layers=20):
    return {"id": id_, "depth": depth, "width": width, "seed": seed, "train_fraction": fraction,
            "test_accuracy": acc, "train_accuracy": 1.0 if fits else 0.5, "fits": fits, "n_layers": n_layers,
            "block": block, "pc1_max": 0.5}


def test_matched_pair_rule():
    models = [_model("w_s0", 14, 2, 0, 0.90), _model("w_s1", 14, 2, 1, 0.92),
              _model("d_s0", 110, 1, 0, 0.91), _model("m_s0", 56, 1, 0, 0.80),
              _model("u_s0", 56, 4, 0, 0.91, fits=False)]
    wide, deep, gap = summaries.matched_pair(models)
    assert wide == (14, 2) and deep == (110, 1) and gap == pytest.approx(0.0)
    assert summaries.matched_pair([_model("a", 20, 1, 0, 0.9)]) is None


def _block(first, last, pc1_in, pc1_out, inside=0.98, contrast=0.4, after_inside=0.95, after_contrast=0.3,
           beats=True):
    return {"first": first, "last": last, "size": last - first + 1, "relative_size": (last - first + 1) / 20,
            "inside": inside, "local_contrast": contrast, "pc1_in": pc1_in, "pc1_out": pc1_out, "pc1_abs_cos_in": 0.9,
            "inside_after_pc1_removal": after_inside, "local_contrast_after_pc1_removal": after_contrast,
            "intervals": {"inside_change_after_pc1_removal": None, "local_contrast_change_after_pc1_removal": None},
            "follow_up": {"dominant_drop": 0.2, "random_drop_mean": 0.0, "random_drop_p95": 0.05, "n_random": 20,
                          "removed": 5, "beats_p95": beats}}


def _findings(models, cross_architecture=()):
    """The claims on a summary holding only these models (and cross-architecture rows), by key."""
    cfg = config.build_config(config.parse_args([]))
    summary = {"models": models, "cross_seed": [], "cross_architecture": list(cross_architecture),
               "outputs": {"wide_vs_deep": None, "seed_disagreement": []}}
    return {x["key"]: x for x in claims.findings(summary, cfg)}


def test_findings_count_seeds_and_exclude_unfit_models():
    models = [_model(f"small_s{s}", 20, 1, s, 0.95) for s in range(3)]
    models += [_model("deep_s0", 110, 1, 0, 0.9, block=_block(12, 17, 0.7, 0.2)),
               _model("deep_s1", 110, 1, 1, 0.9, block=_block(13, 17, 0.6, 0.3, after_inside=0.8,
                                                               after_contrast=0.1)),
               _model("deep_s2", 110, 1, 2, 0.9, block=None),
               _model("deep_s3", 110, 1, 3, 0.3, fits=False, block=_block(0, 19, 0.1, 0.5))]
    f = _findings(models)
    # four trained seeds of the deepest, the unfit one counted without a block: 2 of 4 < 2/3
    assert f["block_deep_not_small"]["met"] == "not met"
    assert "block in 2 of 4 trained seeds (3 fitted)" in f["block_deep_not_small"]["evidence"]
    assert "deep_s3" in f["block_deep_not_small"]["evidence"]  # named as not fitted
    assert _findings(models[:3] + models[3:5] + models[6:])["block_deep_not_small"]["met"] == "met"  # 2 of 3
    assert f["c1_size_with_depth"]["met"] == "emerges"  # (0, x): the block appears, growth untested
    assert f["c3_pc1_inside"]["met"] == "met" and "in 2 of 2" in f["c3_pc1_inside"]["evidence"]
    # removal: deep_s0 drops 0.03 inside (not >= 0.1); deep_s1 drops 0.18 and 75%
    assert f["c3_pc1_removal"]["met"] == "not met" and "in 1 of 2" in f["c3_pc1_removal"]["evidence"]
    assert f["follow_up"]["met"] == "met"
    assert f["c5_wide_deep"]["met"] == "not testable" and f["c2_less_data"]["met"] == "not testable"


def test_report_never_calls_a_block_pc1_dominated_when_pc1_is_lower_inside():
    assert report.pc1_dominated(_block(0, 5, 0.8, 0.3), 0.5)
    assert not report.pc1_dominated(_block(0, 5, 0.69, 0.77), 0.5)  # the old digits seed-0 case
    assert not report.pc1_dominated(_block(0, 5, 0.4, 0.1), 0.5)
    assert not report.pc1_dominated(None, 0.5)


def test_console_lines_are_single_lines():
    summary = {"findings": [{"met": "met", "claim": "C.", "evidence": "numbers 0.1"}]}
    lines = report.console_lines(summary)
    assert lines == ["[met] C. numbers 0.1"] and all("\n" not in x and "\x1b" not in x for x in lines)


def test_c4_architectures_names_the_model_each_block_is_matched_in():
    deep = _model("deep_s0", 110, 1, 0, 0.9, block=_block(12, 17, 0.7, 0.2))
    small, mid = _model("small_s0", 20, 1, 0, 0.9), _model("mid_s0", 56, 1, 0, 0.9)
    diff = {"estimate": -0.4, "ci": [-0.45, -0.35]}
    cross = [{"model_a": "small_s0", "model_b": "deep_s0", "best_match_in_block_b": 0.3,
              "best_match_out_of_block_b": 0.7, "best_match_in_minus_out_b": diff},
             {"model_a": "mid_s0", "model_b": "deep_s0", "best_match_in_block_b": 0.5,
              "best_match_out_of_block_b": 0.6, "best_match_in_minus_out_b": {"estimate": -0.1, "ci": [-0.2, 0.01]}}]
    f = _findings([small, mid, deep], cross)["c4_architectures"]
    assert "deep_s0 (best matches in small_s0): 0.300 in block vs 0.700" in f["evidence"]
    assert "deep_s0 (best matches in mid_s0): 0.500 in block vs 0.600" in f["evidence"]
    assert f["met"] == "not met"  # the second interval reaches above 0


def test_seed_aggregates_count_fitted_seeds_only():
    deep = [_model(f"d{s}", 110, 1, s, acc, block=_block(12, 17, 0.7, 0.2)) for s, acc in ((0, 0.60), (1, 0.62))]
    deep.append(_model("d2", 110, 1, 2, 0.10, fits=False))
    small = [_model(f"s{s}", 20, 1, s, acc) for s, acc in ((0, 0.50), (1, 0.54), (2, 0.52))]
    aggs = summaries.seed_aggregates(deep + small)
    d = aggs["per_architecture"]["resnet110_w1_f1"]
    assert d["seeds"] == [0, 1] and d["unfit_seeds"] == [2]
    assert d["test_accuracy"]["values"] == [0.60, 0.62] and d["test_accuracy"]["mean"] == pytest.approx(0.61)
    assert aggs["per_architecture"]["resnet20_w1_f1"]["unfit_seeds"] == []
    (cmp,) = aggs["comparisons"]
    assert cmp["test_accuracy"]["difference"] == pytest.approx(0.61 - 0.52)
    # one fitted seed left: no aggregate for that architecture
    assert "resnet110_w1_f1" not in summaries.seed_aggregates(deep[:1] + deep[2:] + small)["per_architecture"]


def test_c2_compares_the_same_architecture_and_seed_on_more_data_at_equal_fit():
    def c2(models):
        return _findings(models)["c2_less_data"]

    less = _model("deep_s0_f16", 110, 1, 0, 0.6, block=_block(12, 17, 0.5, 0.1), fraction=0.0625)
    more_none = _model("deep_s0_f4", 110, 1, 0, 0.7, fraction=0.25)
    more_small = _model("deep_s0_f4", 110, 1, 0, 0.7, block=_block(14, 17, 0.5, 0.1), fraction=0.25)
    more_large = _model("deep_s0_f4", 110, 1, 0, 0.7, block=_block(5, 17, 0.5, 0.1), fraction=0.25)
    f = c2([less, more_none])
    assert f["met"] == "met" and "deep_s0_f16: 0.30 vs deep_s0_f4: 0.00" in f["evidence"]
    assert c2([less, more_small])["met"] == "met"
    assert c2([less, more_large])["met"] == "not met"
    # not at equal fit: the model on more data did not fit -> no pair
    assert c2([less, dict(more_none, fits=False)])["met"] == "not testable"
    # another seed is not a pair
    assert c2([less, dict(more_none, seed=1)])["met"] == "not testable"


# --- issue 24: exact tests, labels worded by the data, controls, models as units ---------

from wide_deep import exact  # noqa: E402


def test_fisher_presence_is_the_exact_hypergeometric_tail():
    from math import comb

    f = exact.fisher_presence(2, 2, 0, 3)  # a block in 2/2 deep seeds, 0/3 shallow ones
    assert f["p"] == pytest.approx(0.1) and f["min_p"] == pytest.approx(0.1)
    assert f["p"] == pytest.approx(1 / comb(5, 2))
    # 2/3 vs 0/3: P(X >= 2), X ~ hypergeometric(6 models, 3 deep, 2 with a block) = C(3,2)C(3,0)/C(6,2)
    assert exact.fisher_presence(2, 3, 0, 3)["p"] == pytest.approx(3 / 15)
    assert exact.fisher_presence(0, 3, 0, 3)["p"] == pytest.approx(1.0)


def test_permutation_test_is_exact_over_every_split():
    from scipy.stats import permutation_test

    deep, small = [0.289, 0.377, 0.193], [0.114, 0.086, 0.066]  # fully separated, 3 vs 3
    r = exact.permutation_greater(deep, small)
    assert r["p"] == pytest.approx(1 / 20) and r["n_splits"] == 20 and r["min_p"] == pytest.approx(0.05)
    assert r["difference"] == pytest.approx(np.mean(deep) - np.mean(small), abs=1e-4)
    ref = permutation_test((deep, small), lambda a, b: np.mean(a) - np.mean(b), permutation_type="independent",
                           alternative="greater", n_resamples=np.inf).pvalue
    assert r["p"] == pytest.approx(ref)
    assert exact.permutation_greater(deep, small, two_sided=True)["p"] == pytest.approx(0.1)
    assert exact.permutation_greater(deep[:2], small)["p"] == pytest.approx(0.1)  # 2 vs 3: 10 splits
    # ties: block sizes 21, 21 vs 0, 0, 0 -- an exact p, where Welch has no spread to use
    assert exact.permutation_greater([21, 21], [0, 0, 0])["p"] == pytest.approx(0.1)
    mixed = exact.permutation_greater([1.0, 3.0, 5.0], [2.0, 4.0, 6.0])
    ref = permutation_test(([1.0, 3.0, 5.0], [2.0, 4.0, 6.0]), lambda a, b: np.mean(a) - np.mean(b),
                           permutation_type="independent", alternative="greater", n_resamples=np.inf).pvalue
    assert mixed["p"] == pytest.approx(ref)
    assert exact.permutation_greater([], [1.0]) is None


def test_welch_is_undefined_without_spread_not_p_zero():
    from scipy.stats import ttest_ind

    w = exact.welch([21, 21], [0, 0, 0])
    assert w["p"] is None and w["ci"] is None and "undefined" in w["undefined"]
    a, b = [0.6532, 0.7218, 0.4328], [0.1358, 0.1353, 0.135]  # PC1 max, every seed of the CPU run
    w = exact.welch(a, b)
    assert w["p"] == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue, abs=1e-4)
    assert w["p"] == pytest.approx(0.033, abs=5e-4)


def _disagreements(values):
    return {frozenset(k): v for k, v in values.items()}


def test_models_as_units_on_the_cpu_runs_disagreements_is_underpowered():
    w, d = ["w0", "w1", "w2"], ["d0", "d1"]
    cross = dict(zip([(a, b) for a in w for b in d], [0.356, 0.387, 0.370, 0.362, 0.381, 0.381]))
    within = {("w0", "w1"): 0.316, ("w0", "w2"): 0.308, ("w1", "w2"): 0.293, ("d0", "d1"): 0.400}
    dis = _disagreements({**cross, **within})
    r = exact.models_as_units(dis, w, d, alpha=0.05)
    # balanced excess: mean cross minus the mean of the two within means
    expected = np.mean(list(cross.values())) - 0.5 * (np.mean([0.316, 0.308, 0.293]) + 0.400)
    assert r["excess"] == pytest.approx(expected, abs=1e-4) and r["excess"] == pytest.approx(0.020, abs=5e-4)
    assert r["n_splits"] == 10 and r["min_p"] == pytest.approx(0.1) and r["underpowered"]

    # reference: every relabelling enumerated independently
    import itertools

    units = w + d

    def stat(ws):
        ds = [u for u in units if u not in ws]
        c = np.mean([dis[frozenset((a, b))] for a in ws for b in ds])
        ww = np.mean([dis[frozenset(p)] for p in itertools.combinations(ws, 2)])
        dd = np.mean([dis[frozenset(p)] for p in itertools.combinations(ds, 2)])
        return c - (ww + dd) / 2

    all_stats = [stat(list(ws)) for ws in itertools.combinations(units, 3)]
    assert r["p"] == pytest.approx(np.mean(np.asarray(all_stats) >= stat(w) - 1e-12))


def test_models_as_units_with_four_and_four_separated_models_reaches_alpha():
    w, d = [f"w{i}" for i in range(4)], [f"d{i}" for i in range(4)]
    units = w + d
    dis = _disagreements({(a, b): (0.2 if (a[0] == b[0]) else 0.3) for i, a in enumerate(units)
                          for b in units[i + 1:]})
    r = exact.models_as_units(dis, w, d, alpha=0.05)
    # 70 relabellings; the statistic is symmetric in the two labels, so the true split and its
    # mirror tie at the top: p = 2/70
    assert r["n_splits"] == 70 and r["p"] == pytest.approx(2 / 70, abs=1e-4) and not r["underpowered"]
    assert r["excess"] == pytest.approx(0.1)
    assert exact.models_as_units(dis, w[:1], d) is None


def test_per_class_over_seeds_against_a_direct_count():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    correct = {"w0": np.array([1, 1, 1, 1, 0, 0, 1, 1], bool), "w1": np.array([1, 1, 1, 0, 0, 1, 1, 1], bool),
               "d0": np.array([1, 0, 0, 0, 0, 0, 1, 1], bool), "d1": np.array([0, 0, 1, 0, 1, 1, 0, 0], bool)}
    rows = exact.per_class_over_seeds(correct, y, ["a", "b"], ["w0", "w1"], ["d0", "d1"])
    a, b = rows
    assert a["accuracy_wide"] == pytest.approx((1.0 + 0.75) / 2) and a["accuracy_deep"] == pytest.approx(0.25)
    # class a: wide 1.0, 0.75; deep 0.25, 0.25 -> the observed split and its mirror are the extremes of 6
    assert a["p"] == pytest.approx(2 / 6, abs=1e-4)
    assert b["difference"] == pytest.approx(0.625 - 0.5)
    np.testing.assert_allclose([a["p_holm"], b["p_holm"]], summaries.holm([a["p"], b["p"]]), atol=1e-4)


def test_relative_window_and_its_layers_in_shallower_models():
    window = exact.relative_window([(79, 99, 109)])  # the CPU run's block: layers 79-99 of 109
    assert window == pytest.approx([79 / 109, 100 / 109], abs=1e-4)
    assert exact.window_layers(window, 109).tolist() == list(range(79, 100))
    assert exact.window_layers(window, 19).tolist() == [14, 15, 16]  # 13.8 -> 14, 17.4 -> 17
    assert exact.window_layers(window, 55).tolist() == list(range(40, 50))
    assert exact.relative_window([]) is None


def _cross(diag, n_groups=3):
    import xarray as xr

    n = len(diag)
    m = np.full((n, n), 0.1) + np.diag(np.asarray(diag) - 0.1)
    names = [f"l{i}" for i in range(n)]
    return xr.Dataset({"cka": (("layer_a", "layer_b"), m),
                       "jackknife": (("group", "layer_a", "layer_b"), np.repeat(m[None], n_groups, 0))},
                      coords={"layer_a": names, "layer_b": names}, attrs={"level": 0.9})


def test_seed_pair_control_at_the_blocks_relative_depth():
    diag = [0.9] * 14 + [0.5, 0.4, 0.3] + [0.9, 0.9]  # 19 layers; low late layers, no block
    a, b = {"id": "s0"}, {"id": "s1"}
    entries = {"s0": {"block": None}, "s1": {"block": None}}
    res = _cross(diag)
    plain = summaries.seed_pair_summary(a, b, res, entries, edge=1)
    assert plain["in_block_cka"] is None  # no block and no window: nothing to compare
    window = exact.relative_window([(79, 99, 109)])
    ctl = summaries.seed_pair_summary(a, b, res, entries, edge=1, window=window)
    assert ctl["control"] is True and ctl["window"] == window
    assert ctl["in_block_cka"] == pytest.approx(0.4)  # layers 14-16
    assert ctl["out_of_block_cka"] == pytest.approx(0.9)  # layers 1-13 and 17 (edge 1 left out)
    assert ctl["intervals"]["in_minus_out"]["estimate"] == pytest.approx(-0.5)
    # a block in the second seed: its block, not the window, and no control
    entries["s1"]["block"] = {"first": 3, "last": 5}
    own = summaries.seed_pair_summary(a, b, res, entries, edge=1, window=window)
    assert own["control"] is False and own["in_block_cka"] == pytest.approx(0.9)


def test_arch_pair_control_marks_the_block_free_side():
    res = _cross([0.9] * 14 + [0.5, 0.4, 0.3] + [0.9, 0.9])
    entries = {"a": {"block": None}, "b": {"block": {"first": 14, "last": 16}}}
    out = summaries.arch_pair_summary("a", "b", res, entries, edge=1, window=[14 / 19, 17 / 19])
    assert out["control_a"] is True and "control_b" not in out
    for side in "ab":
        assert out[f"best_match_in_block_{side}"] == pytest.approx(0.4)
        assert out[f"best_match_out_of_block_{side}"] == pytest.approx(0.9)


def _cpu_like(fitted_deep=(True, True, False)):
    """The CPU run's block-bearing shape: ResNet-20 x3 (no block), ResNet-56 x2, ResNet-20x2 x3,
    ResNet-110 x3 with a block in the two fitted seeds."""
    models = []
    for s, c in enumerate((0.114, 0.086, 0.066)):
        m = _model(f"r20_s{s}", 20, 1, s, 0.6, n_layers=19)
        models.append(dict(m, candidate={"local_contrast": c}, n_parameters=272474, pc1_max=0.135))
    for s in range(2):
        models.append(dict(_model(f"r56_s{s}", 56, 1, s, 0.59, n_layers=55), candidate={"local_contrast": 0.07},
                           n_parameters=855770))
    for s in range(3):
        models.append(dict(_model(f"w_s{s}", 20, 2, s, 0.61, n_layers=19), candidate={"local_contrast": 0.1},
                           n_parameters=1084586))
    for s, (c, fit) in enumerate(zip((0.289, 0.377, 0.193), fitted_deep)):
        blk = dict(_block(79, 99, 0.45, 0.13, contrast=c), relative_size=21 / 109) if fit else None
        m = _model(f"r110_s{s}", 110, 1, s, 0.58, fits=fit, block=blk, n_layers=109)
        models.append(dict(m, n_parameters=1730714, candidate={"local_contrast": c},
                           train_accuracy=0.9875 if fit else 0.9657))
    return models


def test_c1_is_worded_by_the_data_emerges_and_not_reached():
    f = _findings(_cpu_like())
    depth, width = f["c1_size_with_depth"], f["c1_size_with_width"]
    assert depth["met"] == "emerges" and "emergence with depth, not growth" in depth["evidence"]
    assert width["met"] == "not reached" and "1.73 M parameters" in width["evidence"]
    # a block at two depths that grows: met
    models = _cpu_like()
    models[3] = dict(models[3], block=dict(_block(40, 45, 0.4, 0.1), relative_size=6 / 55))
    models[4] = dict(models[4], block=dict(_block(40, 45, 0.4, 0.1), relative_size=6 / 55))
    assert _findings(models)["c1_size_with_depth"]["met"] == "met"
    # the wide series reaches the block's capacity and stays without a block: not met
    big = [dict(m, n_parameters=4_000_000) if m["width"] == 2 else m for m in _cpu_like()]
    assert _findings(big)["c1_size_with_width"]["met"] == "not met"


def test_block_claim_counts_seeds_as_the_text_says_with_fisher_beside_it():
    f = _findings(_cpu_like())["block_deep_not_small"]
    assert f["met"] == "met" and "block in 2 of 3 trained seeds (2 fitted)" in f["evidence"]
    assert f["fisher"]["fitted"]["p"] == pytest.approx(0.1) and f["fisher"]["every_seed"]["p"] == pytest.approx(0.2)
    assert "p = 0.10" in f["evidence"] and "weak evidence" in f["evidence"]
    # one fitted seed of three: 2 of 3 cannot be reached by fitted models
    assert _findings(_cpu_like((True, False, False)))["block_deep_not_small"]["met"] == "not testable"


def test_headline_local_contrast_permutation_and_pc1_welch():
    cfg = config.build_config(config.parse_args([]))
    rows = {(r["statistic"].split(" (")[0], r["seeds"]): r for r in claims.headline({"models": _cpu_like()}, cfg)}
    every = rows[("local contrast", "every trained seed")]
    assert every["values_deep"] == [0.289, 0.377, 0.193] and every["unfit_deep"] == [2]
    assert every["permutation"]["p"] == pytest.approx(0.05)
    assert rows[("local contrast", "fitted seeds")]["permutation"]["p"] == pytest.approx(0.1)
    assert rows[("PC1 max", "every trained seed")]["welch"]["p"] is None  # 0.5 everywhere: no spread
    assert all("smallest possible p" in line for line in claims.headline_lines(list(rows.values())))


def test_verdicts_by_fit_threshold_and_with_every_seed():
    cfg = dict(config.build_config(config.parse_args([])), fit_threshold=0.98)
    summary = {"models": _cpu_like(), "cross_seed": [], "cross_architecture": [],
               "outputs": {"wide_vs_deep": None, "seed_disagreement": []}}
    for m in summary["models"]:
        if m["depth"] != 110:
            m["train_accuracy"] = 0.995
    rows = {r["setting"]: r for r in claims.verdicts_by_threshold(summary, cfg)}
    assert set(rows) == {"fit >= 0.98", "fit >= 0.99", "every trained seed"}
    assert rows["fit >= 0.98"]["verdicts"]["block_deep_not_small"] == "met"
    assert rows["fit >= 0.99"]["verdicts"]["block_deep_not_small"] == "not testable"  # no ResNet-110 fits
    assert rows["fit >= 0.99"]["n_models"] == 8 and rows["every trained seed"]["n_models"] == 11


def _pair(a, b, inside, outside, control=False):
    return {"model_a": a, "model_b": b, "in_block_cka": inside, "out_of_block_cka": outside, "control": control,
            "intervals": {}}


def test_c4_seeds_needs_its_block_free_control():
    cfg = config.build_config(config.parse_args([]))
    base = {"models": _cpu_like(), "cross_architecture": [],
            "outputs": {"wide_vs_deep": None, "seed_disagreement": []}}
    block = [_pair("r110_s0", "r110_s1", 0.146, 0.657)]

    def c4(pairs, schema=2):
        return {x["key"]: x for x in claims.findings(dict(base, cross_seed=pairs, schema=schema), cfg)}["c4_seeds"]

    assert c4(block, schema=1)["met"] == "incomplete" and "predates issue 24" in c4(block, schema=1)["evidence"]
    assert c4(block + [_pair("r20_s0", "r20_s1", 0.7, 0.8, True)])["met"] == "met"
    # late layers seed-specific in a block-free model as well: the block is no different
    assert c4(block + [_pair("r20_s0", "r20_s1", 0.1, 0.8, True)])["met"] == "not met"
    assert c4([_pair("r110_s0", "r110_s1", 0.5, 0.6)])["met"] == "not met"


def test_c5_from_a_summary_before_issue_24_is_underpowered():
    cfg = config.build_config(config.parse_args([]))
    models = _cpu_like()
    wide = [m["id"] for m in models if m["width"] == 2]
    deep = [m["id"] for m in models if m["depth"] == 56]
    seeds = [{"model_a": "w_s0", "model_b": "w_s1", "disagreement": 0.316},
             {"model_a": "w_s0", "model_b": "w_s2", "disagreement": 0.308},
             {"model_a": "w_s1", "model_b": "w_s2", "disagreement": 0.293},
             {"model_a": "r56_s0", "model_b": "r56_s1", "disagreement": 0.4}]
    wd = {"wide": wide[0], "deep": deep[0], "wide_arch": [20, 2], "deep_arch": [56, 1], "accuracy_gap": 0.025,
          "cross_disagreements": [0.356, 0.387, 0.370, 0.362, 0.381, 0.381]}
    summary = {"models": models, "cross_seed": [], "cross_architecture": [], "n_eval": 1000,
               "outputs": {"wide_vs_deep": wd, "seed_disagreement": seeds}}
    dis, w, d = summaries.disagreements_from_summary(summary)
    assert w == wide and d == deep and dis[frozenset(("w_s0", "r56_s1"))] == pytest.approx(0.387)
    f = {x["key"]: x for x in claims.findings(summary, cfg)}["c5_wide_deep"]
    assert f["met"] == "underpowered" and "balanced excess 0.020" in f["evidence"]
    assert "exact p = 0.10 over 10 relabellings" in f["evidence"]


def test_output_summary_tests_models_as_units():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    models = [dict(_model(f"w{s}", 14, 2, s, 0.8), n_layers=10) for s in range(2)]
    models += [dict(_model(f"d{s}", 56, 1, s, 0.8), n_layers=10) for s in range(2)]
    logits = {m["id"]: rng.standard_normal((200, 3)) for m in models}
    out = summaries.output_summary(models, logits, y, ["a", "b", "c"])
    wd = out["wide_vs_deep"]
    assert out["n_images"] == 200 and wd["n_images"] == 200
    preds = {k: v.argmax(1) for k, v in logits.items()}
    dis = {frozenset((a, b)): float(np.mean(preds[a] != preds[b])) for a in preds for b in preds if a != b}
    ref = exact.models_as_units(dis, ["w0", "w1"], ["d0", "d1"], alpha=0.05)
    assert wd["models_as_units"] == ref and wd["models_as_units"]["underpowered"]  # 2 + 2: 6 splits
    assert len(wd["per_class_over_seeds"]) == 3 and len(wd["disagreements"]) == 6


def test_cross_pairs_compare_every_seed_with_a_block_to_each_other_architecture():
    specs = [dict(depth=d, width=w, seed=s, train_fraction=0.0625, id=f"r{d}x{w}_s{s}")
             for d, w, n in ((20, 1, 2), (110, 1, 2), (20, 2, 1)) for s in range(n)]
    plain = analyse.cross_pairs(specs)
    more = analyse.cross_pairs(specs, block_ids={"r110x1_s1"})
    added = [(a["id"], b["id"]) for a, b, _ in more[len(plain):]]
    assert sorted(added) == [("r20x1_s0", "r110x1_s1"), ("r20x2_s0", "r110x1_s1")]
    assert analyse.cross_pairs(specs, block_ids={"r110x1_s0"}) == plain  # the first seed is compared already


def test_n_outputs_is_checked_and_declared_calibration_is_a_list():
    with pytest.raises(SystemExit, match="n_outputs"):
        config.build_config(config.parse_args(["--n-eval", "100", "--n-outputs", "50"]))
    with pytest.raises(SystemExit, match="at most 500"):
        config.build_config(config.parse_args(["--n-outputs", "600"]))
    path = ROOT / "examples/wide_deep_configs/cifar10_cpu.json"
    cfg = config.build_config(config.parse_args(["--config", str(path)]))
    assert cfg["n_outputs"] == 10000 and "resnet110_w1_s0_f0p0625" in cfg["calibrated_on"]


def test_seed_aggregates_say_undefined_where_no_seed_varies():
    deep = [_model(f"d{s}", 110, 1, s, 0.6 + s / 100, block=_block(12, 17, 0.7, 0.2)) for s in range(2)]
    small = [_model(f"s{s}", 20, 1, s, 0.5 + s / 100) for s in range(3)]
    aggs = summaries.seed_aggregates(deep + small)
    assert aggs["per_architecture"]["resnet110_w1_f1"]["block_size"]["ci"] is None  # 6, 6: no interval
    (cmp,) = aggs["comparisons"]
    assert cmp["block_size"]["p"] is None and "undefined" in cmp["block_size"]["undefined"]
    assert cmp["block_size"]["permutation"]["p"] == pytest.approx(0.1)  # 6, 6 vs 0, 0, 0: 1 of 10 splits, mirrored
    assert "Welch undefined" in report._compare_text(cmp["block_size"])
