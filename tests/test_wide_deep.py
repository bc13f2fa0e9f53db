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
    assert f["block_deep_not_small"]["met"] == "met"
    assert "2 of 3 fitted seeds" in f["block_deep_not_small"]["evidence"]
    assert "deep_s3" in f["block_deep_not_small"]["evidence"]  # named as excluded
    assert f["c1_size_with_depth"]["met"] == "met"
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
