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
    assert "same number of examples" in err and "'y' of " in err and "with shape (9, 2)" in err
    (tmp_path / "a.txt").write_text("x")
    assert cli.main([str(tmp_path / "a.txt")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert cli.main([str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz: no such file or folder" in capsys.readouterr().err
    assert cli.main([str(tmp_path / "a.npz"), "--layers-a", "nope"]) == 2
    assert "no layer 'nope' in" in capsys.readouterr().err
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


# ------------------------------------------------------------------------- layer order

ORDERED = [f"layer{i}" for i in range(12)]


def _twelve(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal((n, 3)).astype(np.float32) + i
            for i, name in enumerate(ORDERED)}


def _order(path, **kw):
    src = cli.Source(str(path))
    try:
        return src.names, src.order_warning
    finally:
        src.close()


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_keeps_member_order(tmp_path, compressed):
    save = np.savez_compressed if compressed else np.savez
    layers = _twelve()
    save(tmp_path / "a.npz", **layers)
    assert _order(tmp_path / "a.npz") == (ORDERED, None)
    shuffled = ORDERED[::-1][:5] + ORDERED[:7]  # the writer's order, whatever it is
    save(tmp_path / "b.npz", **{k: layers[k] for k in shuffled})
    assert _order(tmp_path / "b.npz")[0] == shuffled


def test_npy_folder_sorts_naturally_and_warns_only_when_guessing(tmp_path):
    (tmp_path / "a").mkdir()
    for k, v in _twelve().items():
        np.save(tmp_path / "a" / f"{k}.npy", v)
    assert _order(tmp_path / "a") == (ORDERED, None)
    (tmp_path / "b").mkdir()
    for k in ("fc", "conv2", "conv10"):
        np.save(tmp_path / "b" / f"{k}.npy", np.ones((5, 2)))
    names, warning = _order(tmp_path / "b")
    assert names == ["conv2", "conv10", "fc"]
    assert "natural name order" in warning and "--layers-a" in warning


def test_safetensors_header_is_sorted_so_names_are_sorted_naturally(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    layers = _twelve()
    layers["layer5"] = layers["layer5"].astype(np.float64)  # a second dtype group
    st.save_file(layers, str(tmp_path / "a.safetensors"))
    assert _order(tmp_path / "a.safetensors") == (ORDERED, None)
    src = cli.Source(str(tmp_path / "a.safetensors"))
    for k in ORDERED:
        np.testing.assert_array_equal(src.read(k), layers[k])
    np.testing.assert_array_equal(src.read("layer3", 4, 9), layers["layer3"][4:9])
    src.close()


def test_safetensors_layer_order_metadata_is_the_order(tmp_path):
    import json

    st = pytest.importorskip("safetensors.numpy")
    order = ORDERED[6:] + ORDERED[:6]
    st.save_file(_twelve(), str(tmp_path / "a.safetensors"),
                 metadata={"layer_order": json.dumps(order)})
    assert _order(tmp_path / "a.safetensors") == (order, None)


def _write_safetensors(path, tensors, order):
    """A safetensors file whose header lists the tensors in ``order`` (as a writer other
    than the safetensors library may)."""
    import json
    import struct

    header, blobs, offset = {}, [], 0
    for k in order:
        data = np.ascontiguousarray(tensors[k]).tobytes()
        header[k] = {"dtype": "F32", "shape": list(tensors[k].shape),
                     "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    Path(path).write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def test_safetensors_header_in_a_writers_order_is_kept(tmp_path):
    layers = _twelve()
    order = ORDERED[::-1]
    _write_safetensors(tmp_path / "a.safetensors", layers, order)
    assert _order(tmp_path / "a.safetensors") == (order, None)
    src = cli.Source(str(tmp_path / "a.safetensors"))
    np.testing.assert_array_equal(src.read("layer7"), layers["layer7"])
    src.close()


def test_netcdf_keeps_stored_order_and_plain_hdf5_sorts_naturally(tmp_path):
    import h5py
    import xarray as xr

    layers = _twelve()
    for name, order in (("a.nc", ORDERED), ("b.nc", ORDERED[::-1])):
        xr.Dataset({k: (("n", f"f_{k}"), layers[k]) for k in order}).to_netcdf(
            tmp_path / name, engine="h5netcdf")
        assert _order(tmp_path / name) == (order, None)
    with h5py.File(tmp_path / "c.h5", "w") as f:  # no creation order tracked
        for k in ORDERED[::-1]:
            f[k] = layers[k]
    assert _order(tmp_path / "c.h5") == (ORDERED, None)


def test_pt_dict_of_tensors_keeps_dict_order_and_torch_is_imported_only_then(tmp_path):
    torch = pytest.importorskip("torch")
    layers = _twelve()
    order = ORDERED[3:] + ORDERED[:3]
    torch.save({k: torch.from_numpy(layers[k]) for k in order}, tmp_path / "a.pt")
    assert _order(tmp_path / "a.pt") == (order, None)
    np.savez(tmp_path / "a.npz", **layers)
    code = ("import sys; from repsim import cli; "
            f"s = cli.main([{str(tmp_path / 'a.npz')!r}, '--out', {str(tmp_path / 'r.nc')!r}, "
            "'--no-progress', '--no-summary']); print(s, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
    assert proc.stdout.split() == ["0", "False"], proc.stderr
    out = tmp_path / "p.nc"
    assert cli.main([str(tmp_path / "a.pt"), "--out", str(out), "--no-progress"]) == 0
    res = repsim.load_result(out)
    assert list(res.layer_a.values) == order
    ref = repsim.cka_matrix({k: layers[k] for k in order})
    np.testing.assert_allclose(res.values, ref.values, rtol=0, atol=1e-12)
    torch.save({"x": torch.ones(5, 2), "meta": "text"}, tmp_path / "bad.pt")
    assert cli.main([str(tmp_path / "bad.pt"), "--out", str(out)]) == 2


@pytest.mark.parametrize("fmt", ["npz", "npy", "safetensors", "nc"])
def test_command_result_keeps_layer_order_in_every_format(tmp_path, fmt):
    layers = _twelve()
    path = tmp_path / f"a.{fmt}" if fmt != "npy" else tmp_path / "a"
    if fmt == "npz":
        np.savez(path, **layers)
    elif fmt == "npy":
        path.mkdir()
        for k, v in layers.items():
            np.save(path / f"{k}.npy", v)
    elif fmt == "safetensors":
        st = pytest.importorskip("safetensors.numpy")
        st.save_file(layers, str(path))
    else:
        import xarray as xr

        xr.Dataset({k: (("n", f"f_{k}"), v) for k, v in layers.items()}).to_netcdf(
            path, engine="h5netcdf")
    out = tmp_path / "r.nc"
    assert cli.main([str(path), "--out", str(out), "--no-progress", "--no-summary"]) == 0
    res = repsim.load_result(out)
    assert list(res.layer_a.values) == ORDERED and list(res.layer_b.values) == ORDERED


# ------------------------------------------------------------- one read, one path, summary

def test_each_layer_is_read_once_and_a_symmetric_measure_computes_half(tmp_path, monkeypatch):
    layers = _twelve(n=24)
    np.savez(tmp_path / "a.npz", **layers)
    reads, calls, prepared = [], [], []
    real_read, real_fn = cli.Source.read, repsim.shape_distance
    family = repsim.measure("procrustes_angular").family  # the command runs similarity_matrix
    real_pair, real_prepare = family.pair, family.prepare
    monkeypatch.setattr(cli.Source, "read", lambda self, name, *a: reads.append(name)
                        or real_read(self, name, *a))
    # a frozen declaration: swapped by hand, restored below
    object.__setattr__(family, "pair", lambda a, b, **kw: calls.append(1) or real_pair(a, b, **kw))
    object.__setattr__(family, "prepare", lambda x, name, **kw: prepared.append(name)
                       or real_prepare(x, name, **kw))
    out = tmp_path / "r.nc"
    try:
        assert cli.main([str(tmp_path / "a.npz"), "--measure", "procrustes_angular", "--out",
                         str(out), "--no-progress", "--no-summary"]) == 0
    finally:
        object.__setattr__(family, "pair", real_pair)
        object.__setattr__(family, "prepare", real_prepare)
    assert sorted(reads) == sorted(ORDERED)
    assert len(prepared) == 12  # each layer prepared once
    assert len(calls) == 12 * 13 // 2  # half of the symmetric matrix, diagonal included
    res = repsim.load_result(out)
    np.testing.assert_array_equal(res.values, res.values.T)
    assert abs(res.sel(layer_a="layer3", layer_b="layer8").item()
               - real_fn(layers["layer8"], layers["layer3"], alpha=1.0)) < 1e-12
    reads.clear()
    np.savez(tmp_path / "b.npz", **_twelve(n=24, seed=1))
    assert cli.main([str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--measure", "pwcca",
                     "--out", str(out), "--no-progress", "--no-summary"]) == 0
    assert sorted(reads) == sorted(ORDERED * 2)


@pytest.mark.parametrize("measure, estimator", [
    ("cka_linear", "biased"), ("cka_linear_unbiased", "unbiased"), ("cka_debiased", "unbiased"),
    ("cka-kernel=linear-hsic=song-score", "unbiased")])
def test_cka_measures_go_through_cka_matrix(tmp_path, monkeypatch, measure, estimator):
    layers = _twelve(n=30)
    np.savez(tmp_path / "a.npz", **layers)
    np.savez(tmp_path / "b.npz", **_twelve(n=30, seed=3))
    used = []
    real = repsim.cka_matrix
    monkeypatch.setattr(repsim, "cka_matrix", lambda *a, **kw: used.append(kw) or real(*a, **kw))
    real_cka, per_pair = repsim.cka, []

    def cka(x, y, **kw):
        per_pair.append(1)
        return real_cka(x, y, **kw)

    monkeypatch.setattr(repsim, "cka", cka)
    out = tmp_path / "r.nc"
    for files in ([tmp_path / "a.npz"], [tmp_path / "a.npz", tmp_path / "b.npz"]):
        assert cli.main([*map(str, files), "--measure", measure, "--out", str(out),
                         "--no-progress", "--no-summary"]) == 0
        res = repsim.load_result(out)
        ref = real(layers, None if len(files) == 1 else dict(np.load(files[1])),
                   estimator=estimator)
        np.testing.assert_allclose(res.values, ref.values, rtol=0, atol=1e-12)
        assert res.attrs["measure"] == repsim.measure(measure).name
        assert res.attrs["estimator"] == estimator
    assert len(used) == 2 and not per_pair


def test_summary_on_stdout_names_diagonal_and_best_match(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 5))
    np.savez(tmp_path / "a.npz", first=x, second=x @ rng.standard_normal((5, 5)),
             noise=rng.standard_normal((40, 5)))
    np.savez(tmp_path / "b.npz", noise=rng.standard_normal((40, 5)), first=2 * x)
    proc = subprocess.run(
        [sys.executable, "-m", "repsim.cli", "a.npz", "b.npz", "--measure", "procrustes_angular",
         "--out", "r.nc", "--no-progress"], capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("procrustes_angular: 3 x 2 layers, n = 40 (lower is closer)")
    assert lines[1].split() == ["layer", "best", "match"]
    assert lines[2].split()[:2] == ["first", "first"] and lines[2].split()[2] == "(0.0000)"
    proc = subprocess.run(
        [sys.executable, "-m", "repsim.cli", "a.npz", "--out", "s.nc", "--no-progress"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=tmp_path,
        timeout=300)
    lines = proc.stdout.splitlines()
    assert lines[1].split() == ["layer", "diagonal", "best", "match"]
    assert lines[2].split()[:3] == ["first", "1.0000", "second"]  # itself excluded


def test_progress_lines_for_a_pair_measure_and_switched_off(tmp_path, capsys):
    np.savez(tmp_path / "a.npz", **_twelve(n=20))
    out = str(tmp_path / "r.nc")
    assert cli.main([str(tmp_path / "a.npz"), "--measure", "rsa", "--out", out]) == 0
    err = capsys.readouterr().err
    assert "rsa: layers: 12/12" in err and "rsa: pairs: 78/78 pair" in err and "reading " in err
    assert cli.main([str(tmp_path / "a.npz"), "--measure", "rsa", "--out", out,
                     "--no-progress"]) == 0
    assert "layer pairs" not in capsys.readouterr().err
