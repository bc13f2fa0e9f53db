"""End-to-end tests of examples/wide_deep_study.py in --smoke mode (tiny models, digits):
every stage, caching, resume, identical reruns, refusal of bad arguments before training,
one atomic record per model, and recomputation of truncated cache files."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import wide_deep_study as study  # noqa: E402
import repsim  # noqa: E402
from wide_deep import claims as wd_claims  # noqa: E402
from wide_deep import config as wd_config  # noqa: E402
from wide_deep import train as wd_train  # noqa: E402
from wide_deep.analyse import cross_pairs  # noqa: E402

MODEL_FIELDS = {
    "depth", "width", "seed", "train_fraction", "test_accuracy", "train_accuracy", "fits", "block", "pc1_max",
    "pc1_runs", "block_sensitivity", "stage_rule", "n_layers", "candidate",
}
BLOCK_FIELDS = {"first", "last", "size", "inside", "local_contrast", "pc1_in", "pc1_out", "pc1_abs_cos_in",
                "inside_after_pc1_removal", "local_contrast_after_pc1_removal", "intervals", "follow_up"}


def _run(out, *extra):
    return study.main(["--smoke", "--out", str(out), "--no-progress", "--threads", "1", *extra])


def _strip(summary):
    """Everything but timings and paths: what must repeat exactly."""
    s = json.loads(json.dumps(summary))
    for key in ("wall_seconds", "analysis_seconds", "command", "train_seconds"):
        s.pop(key, None)
    for m in s["models"]:
        m.pop("train_seconds", None)
    return s


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    assert _run(out) == 0
    return out


def _specs():
    return wd_config.model_specs(wd_config.build_config(wd_config.parse_args(["--smoke"])))


def test_smoke_writes_every_stage(smoke_run, capsys):
    out = smoke_run
    summary = json.loads((out / "summary.json").read_text())
    specs = _specs()
    assert len(summary["models"]) == len(specs) == 5
    for spec in specs:
        assert (out / "models" / f"{spec['id']}.nc").is_file()
        assert (out / "extract" / f"{spec['id']}.nc").is_file()
    blocks = 0
    for m in summary["models"]:
        assert MODEL_FIELDS <= set(m)
        assert 0.0 <= m["test_accuracy"] <= 1.0 and 0.0 <= m["pc1_max"] <= 1.0
        assert m["fits"] is True  # the smoke config's fit threshold is 0
        if m["block"] is not None:
            blocks += 1
            b = m["block"]
            assert BLOCK_FIELDS <= set(b) and b["size"] == b["last"] - b["first"] + 1
            assert b["inside"] >= summary["config"]["block_min_inside"]
            assert b["follow_up"]["n_random"] == summary["config"]["random_removals"]
    assert blocks >= 1  # the loose smoke thresholds exercise the block paths
    assert summary["cross_seed"] and summary["outputs"]["seed_disagreement"]
    keys = {f["key"] for f in summary["findings"]}
    assert keys >= {"block_deep_not_small", "c1_size_with_depth", "c2_less_data", "c3_pc1_inside", "c3_pc1_removal",
                    "c4_seeds", "c4_architectures", "c5_wide_deep", "follow_up"}
    assert {f["met"] for f in summary["findings"]} <= set(wd_claims.VERDICTS)
    report = (out / "report.md").read_text()
    assert "## Binary verdicts and their criteria" in report and "measurement noise" in report
    assert summary["schema"] == 2 and summary["headline"] and "## Headline: continuous statistics" in report
    assert [r["setting"] for r in summary["verdicts_by_fit_threshold"]][-1] == "every trained seed"
    # the reviewable extracts: every model's matrices and predictions, every cross result, float32
    for spec in specs:
        small = repsim.load_result(out / "extracts" / f"{spec['id']}.nc")
        full = repsim.load_result(out / "extract" / f"{spec['id']}.nc")
        assert small["cka"].dtype == np.float32 and "cka_jackknife" not in small and "pc1_scores" not in small
        np.testing.assert_allclose(small["cka"].values, full["cka"].values, atol=1e-6)
        assert small.sizes["output_example"] == summary["n_outputs"]
        assert (out / "outputs" / f"{spec['id']}.nc").is_file()
    assert len(list((out / "extracts" / "cross").glob("*.nc"))) == len(list((out / "cross").glob("*.nc")))
    for m in summary["models"]:  # each model's training budget is in its row
        assert f"| {m['id']} | {m['n_train']:,} / {m['steps']:,} | {m['train_accuracy']:.3f} |" in report
    for fig in summary["figures"].values():
        assert (out / fig).stat().st_size > 1000 and fig in report
    with_block = {m["id"] for m in summary["models"] if m["block"] is not None and m["fits"]}
    assert len(list((out / "cross").glob("*.nc"))) == len(cross_pairs(specs, with_block))


def test_log_is_one_line_per_model_and_stage_without_escape_codes(tmp_path, capsys):
    out = tmp_path / "log"
    assert _run(out) == 0
    text = capsys.readouterr().out
    assert "\x1b" not in text and "\r" not in text
    lines = text.splitlines()
    for spec in _specs():
        assert sum(f"train {spec['id']}:" in line for line in lines) == 1
        assert sum(f"extract {spec['id']}:" in line for line in lines) == 1
        assert sum(f"mechanism {spec['id']}:" in line for line in lines) == 1
    # a rerun loads everything: again one line per model and stage
    assert _run(out) == 0
    again = capsys.readouterr().out.splitlines()
    assert sum("loaded" in line for line in again) == 5
    assert not any("] mechanism " in line for line in again)  # cached


def test_smoke_runs_the_mechanism_stage_and_reports_it(smoke_run, tmp_path):
    out = smoke_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mechanism"]["settings"]["pc_ks"] == [1, 2, 3, 4, 5]
    for m in summary["models"]:
        e = m["mechanism"]
        ds = repsim.load_result(out / "mechanism" / f"{m['id']}.nc")
        assert {"cka_pc0", "cka_pc5", "cka_pc5_jackknife", "probe_accuracy", "branch_ratio", "bn2_gamma"} <= set(ds)
        assert ds.sizes["residual_block"] == 3 * (m["depth"] - 2) // 6 and ds.sizes["layer"] == m["n_layers"]
        assert [r["k"] for r in e["pc_removal"]] == [0, 1, 2, 3, 4, 5]
        assert len(e["probe"]["accuracy"]) == m["n_layers"]
        assert e["span"]["kind"] == ("window" if m["block"] is None else "block")
        if m["block"] is None:  # the dominant-example control at the blocks' relative depth
            assert e["dominant_control"]["n_random"] == summary["config"]["random_removals"]
    pairs = summary["mechanism"]["dominant_overlap"]
    assert [(p["model_a"], p["model_b"]) for p in pairs] == [("resnet14_w1_s0_f1", "resnet14_w1_s1_f1")]
    report = (out / "report.md").read_text()
    section = report[report.index("## Mechanism"):report.index("## Figures")]
    assert "Top-k PC removal" in section and "Linear probes" in section and "Dominant images across seeds" in section
    assert "figures/dominant_images.png" in report and (out / "figures" / "dominant_images.png").stat().st_size > 1000
    # --from-summary writes the same section from the summary alone
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("models", "extract", "mechanism", "cross", "outputs"))
    assert study.main(["--from-summary", str(copy)]) == 0
    again = (copy / "report.md").read_text()
    assert again[again.index("## Mechanism"):again.index("## Figures")] == section


def test_netcdf_has_provenance_and_the_block_definition(smoke_run):
    import repsim

    ds = repsim.load_result(smoke_run / "extract" / "resnet14_w1_s0_f1.nc")
    assert set(ds.data_vars) >= {"cka", "cka_no_pc1", "cka_no_dominant", "pc1_share", "pc1_scores", "logits",
                                 "random_removal_contrast"}
    assert ds["cka"].dims == ("layer_a", "layer_b") and ds.sizes["layer_a"] == 6
    for key in ("model", "depth", "width", "seed", "train_fraction", "estimator", "passes", "batch_size",
                "n_examples", "dataset", "repsim_version", "block_rule", "block_penalty", "block_min_share",
                "block_min_inside", "block_min_contrast", "interval_method"):
        assert key in ds.attrs
    assert "local contrast" in ds.attrs["block_rule"] and "measurement noise" in ds.attrs["interval_method"]
    np.testing.assert_allclose(np.diag(ds["cka"].values), 1.0, atol=1e-6)
    for key in ("cka", "cka_no_pc1", "cka_no_dominant"):
        assert ds[f"{key}_jackknife"].dims == (f"{key}_group", "layer_a", "layer_b")
    cross = repsim.load_result(smoke_run / "cross" / "resnet14_w1_s0_f1__resnet14_w1_s1_f1.nc")
    assert cross.attrs["pair"] == "seeds" and cross["cka"].shape == (6, 6)


def test_checkpoint_is_one_record_of_weights_settings_and_metrics(smoke_run):
    import torch

    from repsim.models import cifar_resnet

    cfg = wd_config.build_config(wd_config.parse_args(["--smoke"]))
    state, meta = wd_train.load_checkpoint(smoke_run / "models" / "resnet8_w1_s0_f1.nc",
                                           wd_config.train_settings(cfg))
    net = cifar_resnet(8, 1, in_channels=1)
    net.load_state_dict(state, strict=True)
    assert meta["id"] == "resnet8_w1_s0_f1" and 0 <= meta["train_accuracy"] <= 1
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_resume_after_interruption_gives_identical_results(smoke_run, tmp_path):
    out = tmp_path / "interrupted"
    assert _run(out, "--stop-after", "2") == 3
    assert len(list((out / "models").glob("*.nc"))) == 2
    assert not (out / "summary.json").exists()
    (out / "models" / "resnet14_w1_s0_f1.nc.tmp").write_bytes(b"partial")  # a kill during a write
    first = {p.name: p.stat().st_mtime_ns for p in (out / "models").glob("*.nc")}
    assert _run(out) == 0
    for name, mtime in first.items():  # finished models are never retrained
        assert (out / "models" / name).stat().st_mtime_ns == mtime
    assert _strip(json.loads((out / "summary.json").read_text())) == _strip(
        json.loads((smoke_run / "summary.json").read_text()))


def test_rerun_after_deleting_outputs_recomputes_only_those(smoke_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(smoke_run, out)
    models_before = {p.name: p.stat().st_mtime_ns for p in (out / "models").glob("*.nc")}
    (out / "extract" / "resnet8_w2_s0_f1.nc").unlink()
    shutil.rmtree(out / "cross")
    (out / "report.md").unlink()
    (out / "summary.json").unlink()
    assert _run(out) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "models").glob("*.nc")} == models_before
    assert _strip(json.loads((out / "summary.json").read_text())) == _strip(
        json.loads((smoke_run / "summary.json").read_text()))


def test_truncated_cache_files_are_recomputed_not_a_crash(smoke_run, tmp_path):
    out = tmp_path / "truncated"
    shutil.copytree(smoke_run, out)
    for path in (out / "models" / "resnet8_w1_s0_f1.nc", out / "extract" / "resnet14_w1_s0_f1.nc",
                 out / "cross" / "resnet14_w1_s0_f1__resnet14_w1_s1_f1.nc"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    (out / "config.json").write_text('{"trunc')  # written, never read back: harmless
    (out / "summary.json").write_text('{"models": [')
    assert _run(out) == 0
    assert _strip(json.loads((out / "summary.json").read_text())) == _strip(
        json.loads((smoke_run / "summary.json").read_text()))
    # an empty record is recomputed too
    (out / "models" / "resnet8_w1_s0_f1.nc").write_bytes(b"")
    assert _run(out) == 0


def test_weights_never_reload_under_other_settings(smoke_run, tmp_path):
    """The old layout (weights .pt, settings .json) could pair weights trained with one
    setting with the metadata of another after a kill; one record cannot."""
    out = tmp_path / "settings"
    shutil.copytree(smoke_run / "models", out / "models")
    base = wd_config.build_config(wd_config.parse_args(["--smoke"]))
    changed = wd_config.build_config(wd_config.parse_args(["--smoke", "--epochs", "1"]))
    spec = wd_config.model_specs(base)[0]
    data = wd_train.load_data(base, progress=False)
    path = out / "models" / f"{spec['id']}.nc"
    model_1, meta = wd_train.train_one(spec, data, changed, out)
    assert meta["resumed"] is False and meta["epochs"] == 1
    # the record now holds the 1-epoch weights with their settings; reverting retrains
    assert wd_train.load_checkpoint(path, wd_config.train_settings(base)) is None
    model_2, meta = wd_train.train_one(spec, data, base, out)
    assert meta["resumed"] is False and meta["epochs"] == 2
    # retrained deterministically: the same weights as the original run
    state, _ = wd_train.load_checkpoint(path, wd_config.train_settings(base))
    before, _ = wd_train.load_checkpoint(smoke_run / "models" / f"{spec['id']}.nc", wd_config.train_settings(base))
    assert all(np.array_equal(state[k].numpy(), before[k].numpy()) for k in state)
    _, meta = wd_train.train_one(spec, data, base, out)
    assert meta["resumed"] is True


def test_a_sub_grid_trains_its_own_epochs_and_only_those_models_change(smoke_run, tmp_path):
    """A sub-grid's ``epochs`` (a larger training fraction trained to fit) is that model's
    training setting: it retrains only that model, and its extract is keyed by it."""
    out = tmp_path / "own_epochs"
    shutil.copytree(smoke_run / "models", out / "models")
    base = wd_config.build_config(wd_config.parse_args(["--smoke"]))
    cfg = wd_config.build_config(wd_config.parse_args(["--smoke"]))
    cfg["grids"] = [g for g in cfg["grids"] if g["train_fractions"] != [0.5]] + [
        {"depths": [8], "train_fractions": [0.5], "epochs": 3}]
    specs = {s["id"]: s for s in wd_config.model_specs(cfg)}
    own, other = specs["resnet8_w1_s0_f0p5"], specs["resnet8_w1_s0_f1"]
    assert own["epochs"] == 3 and "epochs" not in other
    assert wd_config.train_settings(cfg, own)["epochs"] == 3 and wd_config.train_settings(cfg, other)["epochs"] == 2
    assert wd_config.analysis_settings(cfg, own)["epochs"] == {own["id"]: 3}
    assert wd_config.analysis_settings(cfg, other) == wd_config.analysis_settings(base)
    assert "3 epochs for depth 8 on training fraction 0.5" in wd_config.deviations(cfg)
    data = wd_train.load_data(cfg, progress=False)
    _, meta = wd_train.train_one(other, data, cfg, out)
    assert meta["resumed"] is True  # unchanged settings: the smoke run's record
    _, meta = wd_train.train_one(own, data, cfg, out)
    assert meta["resumed"] is False and meta["epochs"] == 3
    assert wd_train.load_checkpoint(out / "models" / f"{own['id']}.nc", wd_config.train_settings(base)) is None


@pytest.mark.parametrize("flags, match", [
    (["--train-fraction", "-1"], "train_fractions"),
    (["--train-fraction", "0"], "train_fractions"),
    (["--batch-size", "0"], "batch_size"),
    (["--batch-size", "-5"], "batch_size"),
    (["--threads", "-1"], "threads"),
    (["--threads", "0"], "threads"),
    (["--data-dir", "/tmp"], "--data-dir is for --dataset cifar10"),
    (["--cka-batch-size", "3"], "cka_batch_size"),
    (["--passes", "0"], "passes"),
    (["--n-eval", "3"], "n_eval"),
    (["--epochs", "0"], "epochs"),
    (["--depths", "10"], "depths"),
    (["--widths", "0"], "widths"),
    (["--seeds", "-1"], "seeds"),
])
def test_bad_arguments_are_refused_before_any_model_trains(tmp_path, flags, match):
    out = tmp_path / "bad"
    with pytest.raises(SystemExit, match=match):
        _run(out, *flags)
    assert not (out / "models").exists()


@pytest.mark.parametrize("content, match", [
    ({"grids": []}, "grids must be a non-empty list"),
    ({"grids": [{"depths": []}]}, "depths"),
    ({"grids": [{"depths": [8], "seeds": []}]}, "seeds"),
    ({"grids": [{"depths": [8], "epochs": 0}]}, r"grids\[0\] epochs"),
    ({"grids": [{"depths": [8], "epochs": 2.5}]}, r"grids\[0\] epochs"),
    ({"grids": [{"depths": [8], "seed": [1]}]}, "unknown keys"),
    ({"grids": [{"depths": [8]}, {"depths": [8], "epochs": 3}]}, "two sub-grids with different epochs"),
    ({"epochz": 3}, "epochz"),
    ({"lr": -1}, "lr"),
    ({"fit_threshold": 1.5}, "fit_threshold"),
    ({"block_penalty": 3.0}, r"block_penalty must be a number in \[1e-06, 2.0\] \(in units of 1 - CKA"),
    ({"block_min_share": 1.5}, r"block_min_share must be a number in \[0.0, 1.0\]"),
    ({"block_min_inside": 1.5}, r"block_min_inside must be a number in \[-1.0, 1.0\]"),
    ({"layers": "leaves"}, "layers"),
    ({"data_dir": "/tmp"}, "data_dir is for dataset 'cifar10'"),
    ([1, 2], "JSON object"),
])
def test_bad_config_files_are_refused(tmp_path, content, match):
    cfg_file = tmp_path / "bad.json"
    cfg_file.write_text(json.dumps(content))
    with pytest.raises(SystemExit, match=match):
        _run(tmp_path / "out", "--config", str(cfg_file))
    assert not (tmp_path / "out" / "models").exists()
    cfg_file.write_text("{not json")
    with pytest.raises(SystemExit, match="cannot read it as JSON"):
        wd_config.build_config(wd_config.parse_args(["--config", str(cfg_file)]))


def test_committed_configs_are_valid():
    for path in sorted((ROOT / "examples" / "wide_deep_configs").glob("*.json")):
        cfg = wd_config.build_config(wd_config.parse_args(["--config", str(path)]))
        assert wd_config.model_specs(cfg), path.name


def test_portable_command_leaves_no_machine_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfgs").mkdir()
    inside = str(tmp_path / "cfgs" / "run.json")
    argv = ["examples/wide_deep_study.py", "--config", inside, "--out", "/srv/u/out", "--data-dir=/srv/u/data",
            "--threads", "2", "--no-progress"]
    assert study.portable_command(argv) == (
        "examples/wide_deep_study.py --config cfgs/run.json --data-dir PATH --threads 2")
    assert study.portable_command(["s.py", "--config=/elsewhere/x/cpu.json", "--out=/o"]) == (
        "s.py --config PATH/cpu.json")
    assert study.portable_command(["s.py", "--config", "examples/c.json"]) == "s.py --config examples/c.json"


def test_from_summary_rewrites_the_committed_cpu_report_without_models(tmp_path, capsys):
    """The CPU reproduction's claims and report come back from its summary.json alone, with
    the labels of issue 24 (its models are not in git)."""
    run = tmp_path / "cifar10_cpu"
    shutil.copytree(ROOT / "docs" / "study" / "cifar10_cpu", run)
    stored = json.loads((run / "summary.json").read_text())
    assert study.main(["--from-summary", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    verdicts = {f["key"]: f["met"] for f in summary["findings"]}
    assert verdicts["block_deep_not_small"] == "met" and verdicts["c1_size_with_depth"] == "emerges"
    assert verdicts["c1_size_with_width"] == "not reached" and verdicts["c5_wide_deep"] == "underpowered"
    assert verdicts["c4_seeds"] == "incomplete" and verdicts["c3_pc1_removal"] == "not met"
    assert summary["models"] == stored["models"] and summary["figures"] == stored["figures"]  # the run's numbers
    report = (run / "report.md").read_text()
    assert "p = 0.10 (the smallest p 2 + 3 models can give: 0.10)" in report
    assert "exact one-sided permutation p = 0.05 (20 splits" in report and "Welch two-sided p = 0.03" in report
    assert "2,500 steps on 3,120 images" in report and "p = 0\n" not in report and ", p = 0;" not in report
    assert "near in-sample" in report
    assert "## Mechanism" not in report  # a summary before the mechanism stage has no section
    # idempotent: a second rewrite gives the same summary
    assert study.main(["--from-summary", str(run)]) == 0
    assert json.loads((run / "summary.json").read_text()) == summary


@pytest.mark.parametrize("run", ["cifar10", "cifar10_gpu"])
def test_from_summary_refuses_runs_that_predate_the_claims(tmp_path, run):
    """The two runs before issue 12 have no fit status per model and the previous block
    rule: --from-summary refuses them with the reason and leaves their reports untouched."""
    folder = tmp_path / run
    shutil.copytree(ROOT / "docs" / "study" / run, folder)
    before = (folder / "report.md").read_text()
    with pytest.raises(SystemExit, match="predates the study's claims"):
        study.main(["--from-summary", str(folder)])
    assert (folder / "report.md").read_text() == before
