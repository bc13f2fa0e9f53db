"""The repsim command, end to end on files the test writes."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import repsim
from repsim import cli

ROOT = Path(__file__).resolve().parents[1]


def _layers(seed=0, n=48):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6))
    return {
        "conv1": np.tanh(x @ rng.standard_normal((6, 12))).reshape(n, 3, 2, 2).astype(np.float32),
        "fc": x @ rng.standard_normal((6, 5)),
        "out": np.maximum(x, 0) + 0.1,
    }


def _flat(a):
    return np.asarray(a, dtype=np.float64).reshape(a.shape[0], -1)


def test_npz_against_itself_matches_the_library(tmp_path):
    layers = _layers()
    np.savez(tmp_path / "a.npz", **layers)
    out, png = tmp_path / "r.nc", tmp_path / "r.png"
    argv = [str(tmp_path / "a.npz"), "--measure", "procrustes_angular", "--out", str(out),
            "--plot", str(png), "--no-progress"]
    assert cli.main(argv) == 0
    res = repsim.load_result(out)
    assert list(res.layer_a.values) == list(layers)
    for a in layers:
        for b in layers:
            ref = repsim.shape_distance(layers[a], layers[b])
            assert abs(res.sel(layer_a=a, layer_b=b).item() - ref) < 1e-12
    assert res.attrs["measure"] == "procrustes_angular"
    assert png.stat().st_size > 1000


def test_npy_folder_vs_safetensors_with_neighbour_measure_and_option(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    la, lb = _layers(0), _layers(1)
    (tmp_path / "a").mkdir()
    for k, v in la.items():
        np.save(tmp_path / "a" / f"{k}.npy", v)
    safetensors_numpy.save_file({k: np.ascontiguousarray(v) for k, v in lb.items()},
                                str(tmp_path / "b.safetensors"))
    out = tmp_path / "r.nc"
    assert cli.main([str(tmp_path / "a"), str(tmp_path / "b.safetensors"), "--measure",
                     "jaccard_knn", "--option", "k=7", "--out", str(out), "--no-progress"]) == 0
    res = repsim.load_result(out)
    assert res.attrs["k"] == 7
    ref = repsim.jaccard_knn(_flat(la["fc"]), _flat(lb["conv1"]), k=7)
    assert abs(res.sel(layer_a="fc", layer_b="conv1").item() - ref) < 1e-12


def test_netcdf_input_streams_minibatch_cka_in_batches(tmp_path):
    import xarray as xr

    layers = {k: _flat(v) for k, v in _layers(n=50).items()}
    ds = xr.Dataset({k: ((f"n", f"f_{k}"), v) for k, v in layers.items()})
    ds.to_netcdf(tmp_path / "a.nc", engine="h5netcdf")
    out = tmp_path / "r.nc"
    assert cli.main([str(tmp_path / "a.nc"), "--measure", "minibatch_cka", "--batch-size", "16",
                     "--out", str(out), "--no-progress"]) == 0
    res = repsim.load_result(out)
    acc = repsim.MinibatchCKA()
    for start, stop in [(0, 16), (16, 32), (32, 50)]:  # the 2-example tail joins the last batch
        acc.update({k: v[start:stop] for k, v in layers.items()})
    ref = acc.compute()
    np.testing.assert_allclose(res.values, ref.sel(layer_a=res.layer_a, layer_b=res.layer_b).values,
                               rtol=0, atol=1e-12)
    assert res.attrs["n_batches"] == 3 and res.attrs["batch_size"] == 16


def test_bad_input_exits_with_a_message(tmp_path, capsys):
    np.savez(tmp_path / "a.npz", x=np.zeros((10, 2)), y=np.ones((9, 2)))
    assert cli.main([str(tmp_path / "a.npz"), "--out", str(tmp_path / "r.nc")]) == 2
    err = capsys.readouterr().err
    assert "same number of examples" in err and "'y' with shape (9, 2)" in err
    assert cli.main([str(tmp_path / "a.txt")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert cli.main([str(tmp_path / "a.npz"), "--layers-a", "nope"]) == 2
    assert "no layer(s) ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([str(tmp_path / "a.npz"), "--measure", "unknown"])


def test_runs_as_a_subprocess(tmp_path):
    layers = _layers()
    np.savez(tmp_path / "a.npz", **layers)
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, "-m", "repsim.cli", str(tmp_path / "a.npz"), "--measure", "nbs",
         "--out", str(tmp_path / "r.nc"), "--no-progress"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    res = repsim.load_result(tmp_path / "r.nc")
    assert abs(res.sel(layer_a="fc", layer_b="out").item() - repsim.nbs(layers["fc"], layers["out"])) < 1e-12
