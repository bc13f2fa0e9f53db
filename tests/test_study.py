"""End-to-end tests of examples/wide_deep_study.py in --smoke mode (tiny models, digits)."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "wide_deep_study.py"

MODEL_FIELDS = {
    "depth", "width", "seed", "train_fraction", "test_accuracy", "train_accuracy", "n_blocks",
    "largest_block", "block_score", "pc1_in_block", "pc1_out_of_block", "block_score_after_pc1_removal",
    "block_contrast", "block_contrast_after_pc1_removal", "pc1_max",
}


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("wide_deep_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["wide_deep_study"] = module
    spec.loader.exec_module(module)
    return module


def _run(study, out, *extra):
    return study.main(["--smoke", "--out", str(out), "--no-progress", "--threads", "1", *extra])


def _strip(summary):
    """Everything but timings and paths: what must repeat exactly."""
    s = json.loads(json.dumps(summary))
    for key in ("wall_seconds", "analysis_seconds", "command"):
        s.pop(key, None)
    for m in s["models"]:
        m.pop("train_seconds", None)
    return s


@pytest.fixture(scope="module")
def smoke_run(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    assert _run(study, out) == 0
    return out


def test_smoke_writes_every_stage(smoke_run, study):
    out = smoke_run
    summary = json.loads((out / "summary.json").read_text())
    specs = study.model_specs(study.build_config(study.parse_args(["--smoke"])))
    assert len(summary["models"]) == len(specs) == 5
    for spec in specs:
        assert (out / "models" / f"{spec['id']}.pt").is_file()
        assert (out / "extract" / f"{spec['id']}.nc").is_file()
    for m in summary["models"]:
        assert MODEL_FIELDS <= set(m)
        assert 0.0 <= m["test_accuracy"] <= 1.0
        assert 0.0 <= m["pc1_max"] <= 1.0
        assert m["n_blocks"] >= 0
        if m["largest_block"] is not None:
            b = m["largest_block"]
            assert {"first_layer", "last_layer", "size"} <= set(b)
            assert b["size"] == b["last"] - b["first"] + 1
    assert summary["cross_seed"] and {"in_block_cka", "out_of_block_cka"} <= set(summary["cross_seed"][0])
    wd = summary["outputs"]["wide_vs_deep"]
    assert wd is not None and 0 <= wd["disagreement"] <= 1 and len(wd["per_class"]) == 10
    assert summary["outputs"]["seed_disagreement"]
    assert {f["key"] for f in summary["findings"]} >= {"block_in_large_not_small", "wide_deep_disagree_more"}
    report = (out / "report.md").read_text()
    assert "## Findings" in report and "reproduced" in report
    for fig in summary["figures"].values():
        assert (out / fig).stat().st_size > 1000
        assert fig in report
    assert len(list((out / "cross").glob("*.nc"))) == len(study.cross_pairs(specs))


def test_netcdf_has_provenance(smoke_run):
    import repsim

    ds = repsim.load_result(smoke_run / "extract" / "resnet14_w1_s0_f1.nc")
    assert set(ds.data_vars) >= {"cka", "cka_no_pc1", "cka_no_dominant", "pc1_share", "logits"}
    assert ds["cka"].dims == ("layer_a", "layer_b") and ds.sizes["layer_a"] == 6
    for key in ("model", "depth", "width", "seed", "train_fraction", "estimator", "passes", "batch_size",
                "n_examples", "dataset", "repsim_version"):
        assert key in ds.attrs
    assert ds.attrs["estimator"] == "unbiased" and ds.attrs["depth"] == 14
    np.testing.assert_allclose(np.diag(ds["cka"].values), 1.0, atol=1e-6)
    # every CKA run keeps its entrywise standard errors and jackknife replicates
    for key in ("cka", "cka_no_pc1", "cka_no_dominant"):
        assert ds[f"{key}_jackknife"].dims == (f"{key}_group", "layer_a", "layer_b")
        assert np.all(ds[f"{key}_stderr"].values[~np.eye(6, dtype=bool)] > 0)
    assert ds.attrs["level"] == 0.9
    cross = repsim.load_result(smoke_run / "cross" / "resnet14_w1_s0_f1__resnet14_w1_s1_f1.nc")
    assert cross.attrs["pair"] == "seeds" and cross["cka"].shape == (6, 6)
    assert set(cross.data_vars) >= {"cka", "stderr", "ci_low", "ci_high", "jackknife"}


def test_checkpoints_load_with_weights_only(smoke_run, study):
    import torch

    state = torch.load(smoke_run / "models" / "resnet8_w1_s0_f1.pt", weights_only=True)
    from repsim.models import cifar_resnet

    net = cifar_resnet(8, 1, in_channels=1)
    net.load_state_dict(state)


def test_resume_after_interruption_gives_identical_results(study, smoke_run, tmp_path):
    out = tmp_path / "interrupted"
    # simulate a kill mid-grid: stop after two models have been trained
    assert _run(study, out, "--stop-after", "2") == 3
    assert len(list((out / "models").glob("*.pt"))) == 2
    assert not (out / "summary.json").exists()
    # a partial file left behind by a kill during a write is ignored
    (out / "models" / "resnet14_w1_s0_f1.pt.tmp").write_bytes(b"partial")
    first = {p.name: p.stat().st_mtime_ns for p in (out / "models").glob("*.pt")}
    assert _run(study, out) == 0
    for name, mtime in first.items():  # finished models are never retrained
        assert (out / "models" / name).stat().st_mtime_ns == mtime
    resumed = json.loads((out / "summary.json").read_text())
    full = json.loads((smoke_run / "summary.json").read_text())
    assert _strip(resumed) == _strip(full)


def test_rerun_after_deleting_outputs_recomputes_only_those(study, smoke_run, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(smoke_run, out)
    models_before = {p.name: p.stat().st_mtime_ns for p in (out / "models").glob("*.pt")}
    (out / "extract" / "resnet8_w2_s0_f1.nc").unlink()
    shutil.rmtree(out / "cross")
    (out / "report.md").unlink()
    (out / "summary.json").unlink()
    assert _run(study, out) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "models").glob("*.pt")} == models_before
    again = json.loads((out / "summary.json").read_text())
    full = json.loads((smoke_run / "summary.json").read_text())
    assert _strip(again) == _strip(full)
    assert (out / "report.md").is_file()


def test_changed_training_settings_retrain(study, smoke_run, tmp_path):
    import shutil

    out = tmp_path / "changed"
    shutil.copytree(smoke_run / "models", out / "models")
    cfg = study.build_config(study.parse_args(["--smoke", "--epochs", "1"]))
    spec = study.model_specs(cfg)[0]
    data = study.load_data(cfg, progress=False)
    _, meta = study.train_one(spec, data, cfg, out, progress=False)
    assert meta["resumed"] is False and meta["epochs"] == 1
    _, meta = study.train_one(spec, data, cfg, out, progress=False)
    assert meta["resumed"] is True


def test_config_file_and_grid(study, tmp_path):
    cfg_file = tmp_path / "grid.json"
    cfg_file.write_text(json.dumps({"grids": [{"depths": [8, 20], "widths": [1, 2], "seeds": [0, 1],
                                               "train_fractions": [1.0, 0.25]}], "epochs": 3}))
    cfg = study.build_config(study.parse_args(["--config", str(cfg_file)]))
    specs = study.model_specs(cfg)
    assert len(specs) == 16 and cfg["epochs"] == 3
    assert {s["id"] for s in specs} >= {"resnet8_w1_s0_f1", "resnet20_w2_s1_f0p25"}
    cfg = study.build_config(study.parse_args(["--config", str(cfg_file), "--depths", "14", "--epochs", "5"]))
    assert [s["depth"] for s in study.model_specs(cfg)] == [14] and cfg["epochs"] == 5
    cfg_file.write_text(json.dumps({"epochz": 3}))
    with pytest.raises(SystemExit, match="epochz"):
        study.build_config(study.parse_args(["--config", str(cfg_file)]))
    cfg = study.build_config(study.parse_args(["--dataset", "cifar10", "--train-fraction", "0.0625"]))
    assert cfg["augment"] and cfg["image_size"] == 16 and cfg["grids"][0]["train_fractions"] == [0.0625]


def test_train_subsets_are_stratified_and_nested(study):
    y = np.repeat(np.arange(10), 40)
    small = study.train_subset(y, 0.25, 0)
    big = study.train_subset(y, 0.5, 0)
    assert set(small) <= set(big)
    assert np.bincount(y[small]).tolist() == [10] * 10
    assert len(study.train_subset(y, 1.0, 0)) == 400


def test_augmentation_shapes_and_determinism(study):
    import torch

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    a = study._augment(x, torch.Generator().manual_seed(0), 2, True)
    b = study._augment(x, torch.Generator().manual_seed(0), 2, True)
    assert a.shape == x.shape and torch.equal(a, b)
    same = study._augment(x, torch.Generator().manual_seed(0), 0, False)
    assert torch.equal(same, x)


def test_cifar10_data_path(study, tmp_path):
    # a tiny fake CIFAR-10 folder: the study's loader resizes to 16 px and standardises
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                         b"labels": [int(v) for v in rng.integers(0, 10, 20)]}, f, protocol=4)
    cfg = study.build_config(study.parse_args(["--dataset", "cifar10", "--data-dir", str(folder),
                                                "--n-eval", "12"]))
    data = study.load_data(cfg, progress=False)
    assert data["x_train"].shape == (100, 3, 16, 16) and data["x_eval"].shape == (12, 3, 16, 16)
    assert data["x_train"].dtype == np.float32
    np.testing.assert_allclose(data["x_train"].mean(axis=(0, 2, 3)), 0, atol=1e-4)
    assert data["classes"][0] == "airplane"


def _planted_layers(rng, n, block, rotation):
    """Twelve layers drifting apart, plus a strong component shared by the layers of
    ``block`` along a direction set by ``rotation`` (another 'seed' rotates it)."""
    t = rng.standard_normal(n) * 3
    h = rng.standard_normal((n, 16))
    acts = {}
    for layer in range(12):
        h = 0.9 * h + np.sqrt(1 - 0.81) * rng.standard_normal((n, 16))
        x = h.copy()
        if block[0] <= layer <= block[1]:
            x = x + np.outer(t, rotation[layer])
        acts[f"l{layer}"] = x
    return acts


def test_block_intervals_and_findings_on_a_planted_block(study):
    """Summaries on synthetic layers with a PC1-carried block: contrast intervals contain
    the estimate, PC1 removal lowers the contrast beyond its paired interval, and the
    block matches across 'seeds' less than the rest, beyond the interval."""
    import repsim

    rng = np.random.default_rng(0)
    cfg = dict(study.DEFAULT_CONFIG)
    seed_dirs = [rng.standard_normal((12, 16)) * 3 for _ in range(2)]
    runs = {k: repsim.MinibatchCKA(groups=10, transform=t) for k, t in
            (("cka", None), ("cka_no_pc1", study._remove_pc1), ("cka_no_dominant", None))}
    cross = repsim.MinibatchCKA(groups=10)
    for _ in range(20):
        state = rng.bit_generator.state
        a = _planted_layers(rng, 64, (4, 9), seed_dirs[0])
        rng.bit_generator.state = state  # the other 'seed': same inputs, block direction rotated
        b = _planted_layers(rng, 64, (4, 9), seed_dirs[1])
        for acc in runs.values():
            acc.update(a)
        cross.update(a, b)
    results = {k: acc.compute(uncertainty=True) for k, acc in runs.items()}
    names = list(a)
    import xarray as xr

    ds = xr.Dataset({**study.run_variables(results), "pc1_share": ("layer", np.linspace(0.1, 0.5, 12))},
                    coords={"layer": names})
    ds.attrs.update(dominant_layer="l6", dominant_removed=[1, 2, 3], level=0.9)
    spec = {"id": "m_s0", "depth": 110, "width": 1, "seed": 0, "train_fraction": 1.0}
    meta = {"n_train": 100, "steps": 10, "train_seconds": 1.0, "train_accuracy": 1.0, "test_accuracy": 0.9,
            "n_parameters": 1000}
    entry = study.model_summary(spec, meta, ds, cfg)
    b = entry["largest_block"]
    assert (b["first"], b["last"]) == (4, 9)
    con = entry["intervals"]["block_contrast"]
    assert con["estimate"] == pytest.approx(entry["block_contrast"], abs=1e-4)
    assert con["ci"][0] < con["estimate"] < con["ci"][1] and con["level"] == 0.9
    change = entry["intervals"]["block_contrast_change_after_pc1_removal"]
    assert change["estimate"] == pytest.approx(entry["block_contrast_after_pc1_removal"] - entry["block_contrast"],
                                               abs=2e-4)
    assert change["ci"][1] < 0  # the planted block is carried by one component
    pair = study.seed_pair_summary(spec, dict(spec, id="m_s1"), cross.compute(uncertainty=True), {"m_s0": entry})
    iv = pair["intervals"]
    assert iv["in_minus_out"]["ci"][1] < 0 < iv["out_of_block_cka"]["ci"][0]
    assert iv["in_block_cka"]["estimate"] == pytest.approx(pair["in_block_cka"], abs=1e-4)
    summary = {"models": [entry], "cross_seed": [pair], "cross_architecture": [],
               "outputs": {"wide_vs_deep": None, "seed_disagreement": []}}
    verdicts = {f["key"]: f["reproduced"] for f in study.findings(summary)}
    assert verdicts["pc1_removal_weakens_block"] == "yes"
    assert verdicts["block_differs_across_seeds"] == "yes"


def test_output_intervals(study):
    """Wilson intervals of disagreement rates and the paired wide-vs-deep minus seeds interval."""
    lo, hi = study._wilson(10, 100)
    assert lo < 0.1 < hi and (lo, hi) == pytest.approx((0.0607, 0.1604), abs=1e-4)  # z = 1.645
    d = np.r_[np.ones(30), np.zeros(70)] - np.r_[np.ones(10), np.zeros(90)]
    iv = study._mean_interval(d)
    assert iv["estimate"] == pytest.approx(0.2) and iv["ci"][0] > 0.1
