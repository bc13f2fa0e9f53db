"""Activation stores (issue 23): repsim.extract, repsim.open_activations, example identity.

Values are checked against the hooked activations themselves (exact equality) and against
an independent float64 linear CKA written here."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("zarr")
pytest.importorskip("dask")

import repsim  # noqa: E402
from repsim.cli import main as cli_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def ref_cka(x, y):
    """Biased linear CKA in float64 from its feature-space form (Kornblith et al. 2019)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    x = x - x.mean(0)
    y = y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 5, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(5 * 36, 7))


def batches(count=4, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 3, 6, 6, generator=g) for _ in range(count)]


LAYERS = ["4", "0", "2"]  # not the network's order, not alphabetical: kept as given


def hooked(model, data, layers=LAYERS, pooling="flatten"):
    """The activations GramHooks(features=True) captures, batch by batch, concatenated."""
    from repsim.adapters._hooks import GramHooks

    out = {}
    model.eval()
    with GramHooks(model, layers, features=True, pooling=pooling) as hooks, torch.no_grad():
        for b in data:
            model(b)
            for k, v in hooks.activations.items():
                out.setdefault(k, []).append(v.reshape(len(v), -1).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def test_store_holds_the_hooked_activations_exactly(tmp_path):
    model, data = net(), batches()
    ds = repsim.extract(model, data, layers=LAYERS, out=tmp_path / "a.zarr", progress=False)
    expect = hooked(model, data)
    assert list(ds.data_vars) == LAYERS and ds.attrs["layers"] == LAYERS
    for k in LAYERS:
        assert ds[k].dims == ("example", f"{k}_feature")
        assert ds[k].dtype == np.float32
        np.testing.assert_array_equal(ds[k].values, expect[k])
    np.testing.assert_array_equal(ds["example_id"].values, np.arange(32))
    assert ds.attrs["pooling"] == "flatten" and ds.attrs["dtype"] == "float32"
    assert ds.attrs["repsim_version"] == repsim.__version__
    assert ds.attrs["example_id_source"] == "index" and ds.attrs["complete"]
    assert (ds.attrs["examples_done"], ds.attrs["batches_done"]) == (32, 4)
    # lazy: dask-backed, chunked by the first batch's rows
    assert ds["0"].chunks[0] == (8, 8, 8, 8)
    # reopening gives the same
    again = repsim.open_activations(tmp_path / "a.zarr")
    assert list(again.data_vars) == LAYERS
    np.testing.assert_array_equal(again["2"].values, expect["2"])


def test_pooling_and_fingerprint(tmp_path):
    model, data = net(), batches(2)
    ds = repsim.extract(model, data, layers=["0", "2"], pooling="spatial_mean",
                        out=tmp_path / "p.zarr", progress=False)
    expect = hooked(model, data, ["0", "2"], "spatial_mean")
    assert ds["0"].shape == (16, 4) and ds.attrs["pooling"] == "spatial_mean"
    np.testing.assert_array_equal(ds["2"].values, expect["2"])
    from repsim.adapters._extract import fingerprint

    assert ds.attrs["model_fingerprint"] == fingerprint(net())  # same weights, same print
    other = net()
    with torch.no_grad():
        other[0].bias[0] += 1e-6
    assert fingerprint(other) != fingerprint(model)
    # a store of other weights is not resumed into
    with pytest.raises(ValueError, match="model_fingerprint"):
        repsim.extract(other, data, layers=["0", "2"], pooling="spatial_mean",
                       out=tmp_path / "p.zarr", progress=False)


def test_cka_from_a_store_equals_cka_from_arrays(tmp_path):
    model, data = net(), batches()
    a = repsim.extract(model, data, layers=LAYERS, out=tmp_path / "a.zarr", progress=False)
    b = repsim.extract(net(3), data, layers=LAYERS, out=tmp_path / "b.zarr", progress=False)
    ha, hb = hooked(model, data), hooked(net(3), data)
    for measure in ("cka_linear", "procrustes"):
        from_store = repsim.similarity_matrix(a, b, measure=measure, progress=False)
        from_arrays = repsim.similarity_matrix(ha, hb, measure=measure, progress=False)
        assert list(from_store.layer_a.values) == LAYERS
        np.testing.assert_allclose(from_store.values, from_arrays.values, rtol=0, atol=1e-12)
    sim = repsim.similarity_matrix(a, b, progress=False)
    ref = np.array([[ref_cka(ha[i], hb[j]) for j in LAYERS] for i in LAYERS])
    np.testing.assert_allclose(sim.values, ref, rtol=0, atol=1e-6)  # float32 grams
    assert sim.attrs["align"] == "strict" and sim.attrs["examples_dropped_a"] == 0


def test_float16_storage(tmp_path):
    model, data = net(), batches()
    ds = repsim.extract(model, data, layers=LAYERS, out=tmp_path / "h.zarr", dtype="float16",
                        progress=False)
    expect = hooked(model, data)
    assert ds.attrs["dtype"] == "float16" and ds["0"].dtype == np.float16
    for k in LAYERS:
        np.testing.assert_array_equal(ds[k].values, expect[k].astype(np.float16))
    with pytest.raises(ValueError, match="bfloat16"):
        repsim.extract(model, data, layers=LAYERS, out=tmp_path / "bf.zarr", dtype="bfloat16",
                       progress=False)
    with pytest.raises(ValueError, match="float16's range"):
        repsim.extract(model, [1e5 * b for b in data], layers=LAYERS, out=tmp_path / "o.zarr",
                       dtype="float16", progress=False)


def test_npz_output_and_ids_from_the_data(tmp_path):
    model, data = net(), batches(3)
    ids = [[f"img{i * 8 + j:03d}" for j in range(8)] for i in range(3)]
    dict_batches = [{"x": b, "example_id": i} for b, i in zip(data, ids)]
    fwd = lambda m, b: m(b["x"])  # noqa: E731
    ds = repsim.extract(model, dict_batches, layers=LAYERS, out=tmp_path / "a.npz",
                        forward=fwd, progress=False)
    expect = hooked(model, data)
    assert list(ds.data_vars) == LAYERS and ds.attrs["example_id_source"] == "dataset"
    assert ds["example_id"].values.tolist() == sum(ids, [])
    for k in LAYERS:
        np.testing.assert_array_equal(ds[k].values, expect[k])
    with np.load(tmp_path / "a.npz") as f:  # an ordinary .npz for numpy
        np.testing.assert_array_equal(f["2"], expect["2"])
    # the same ids given explicitly, to a Zarr store
    z = repsim.extract(model, data, layers=LAYERS, out=tmp_path / "a.zarr", ids=sum(ids, []),
                       progress=False)
    assert z.attrs["example_id_source"] == "given"
    assert z["example_id"].values.tolist() == sum(ids, [])
    with pytest.raises(ValueError, match="ids holds 20 ids"):
        repsim.extract(model, data, layers=LAYERS, out=tmp_path / "b.zarr", ids=range(20),
                       progress=False)


def test_safetensors_output_keeps_ids_attrs_and_layer_order(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    import ml_dtypes

    model, data = net(), batches(3)
    ids = [f"img{i:03d}" for i in range(24)][::-1]
    ds = repsim.extract(model, data, layers=LAYERS, out=tmp_path / "a.safetensors", ids=ids,
                        progress=False)
    expect = hooked(model, data)
    assert list(ds.data_vars) == LAYERS and ds.attrs["layers"] == LAYERS  # not sorted
    assert ds["example_id"].values.tolist() == ids
    assert ds.attrs["example_id_source"] == "given" and ds.attrs["complete"]
    for k in LAYERS:
        np.testing.assert_array_equal(ds[k].values, expect[k])
    # the safetensors library reads it: the tensors, and the metadata as JSON strings
    tensors = st.load_file(str(tmp_path / "a.safetensors"))
    np.testing.assert_array_equal(tensors["0"], expect["0"])
    from safetensors import safe_open

    with safe_open(str(tmp_path / "a.safetensors"), "np") as f:
        meta = f.metadata()
    assert json.loads(meta["layer_order"]) == LAYERS and json.loads(meta["example_id"]) == ids
    assert json.loads(meta["repsim_attrs"])["model_fingerprint"] == ds.attrs["model_fingerprint"]
    # ids are checked against a store of the same examples in another order
    z = repsim.extract(net(3), data, layers=LAYERS, out=tmp_path / "b.zarr", progress=False)
    with pytest.raises(ValueError, match="different examples.*layers_b 24, 0 in common"):
        repsim.similarity_matrix(ds, z, progress=False)
    z2 = repsim.extract(net(3), data, layers=LAYERS, out=tmp_path / "c.zarr", ids=ids,
                        progress=False)
    sim = repsim.similarity_matrix(repsim.open_activations(tmp_path / "a.safetensors"), z2,
                                   progress=False)
    ref = np.array([[ref_cka(expect[i], hooked(net(3), data)[j]) for j in LAYERS]
                    for i in LAYERS])
    np.testing.assert_allclose(sim.values, ref, rtol=0, atol=1e-6)
    flipped = repsim.extract(net(3), [torch.cat(data).flip(0)], layers=LAYERS,
                             out=tmp_path / "f.safetensors", ids=ids[::-1], progress=False)
    with pytest.raises(ValueError, match="same examples in a different order"):
        repsim.similarity_matrix(ds, flipped, progress=False)
    aligned = repsim.similarity_matrix(ds, flipped, align="ids", progress=False)
    np.testing.assert_allclose(aligned.values, sim.values, rtol=0, atol=1e-12)
    # the command reads the ids too
    out = str(tmp_path / "r.nc")
    assert cli_main([str(tmp_path / "a.safetensors"), str(tmp_path / "f.safetensors"),
                     "--out", out, "--no-progress"]) == 2
    # bfloat16 storage, which zarr cannot hold: read back as float32 of the rounded values
    bf = repsim.extract(model, data, layers=LAYERS, out=tmp_path / "h.safetensors",
                        dtype="bfloat16", progress=False)
    assert bf.attrs["dtype"] == "bfloat16"
    np.testing.assert_array_equal(
        bf["2"].values, expect["2"].astype(ml_dtypes.bfloat16).astype(np.float32))
    with pytest.raises(ValueError, match="exists"):
        repsim.extract(model, data, layers=LAYERS, out=tmp_path / "a.safetensors",
                       progress=False)


def test_writes_run_off_the_main_thread_two_batches_behind(tmp_path, monkeypatch):
    """The conversion and the write of a batch run on the writer thread, and the forward
    passes go on while a write is slow: two batches are computed past a blocked write."""
    import threading

    from repsim.adapters import _extract_io as io

    model, data = net(), batches(6)
    forwards, seen, threads = [], [], set()
    model.register_forward_hook(lambda *_: forwards.append(1))
    real_write, real_host = io.Regions.write, io.host_arrays

    def slow_write(self, start, layers, ids):
        if start == 8:  # batch 1: held until the main thread ran batches 2 and 3
            for _ in range(1000):
                if len(forwards) >= 4:
                    break
                threading.Event().wait(0.01)
            seen.append(len(forwards))
        return real_write(self, start, layers, ids)

    def host(*args):
        threads.add(threading.current_thread() is threading.main_thread())
        return real_host(*args)

    monkeypatch.setattr(io.Regions, "write", slow_write)
    monkeypatch.setattr(io, "host_arrays", host)
    ds = repsim.extract(model, data, layers=LAYERS, out=tmp_path / "a.zarr", progress=False)
    assert seen == [4]  # batches 0..3 ran while batch 1's write was held
    assert threads == {True, False}  # the first batch creates the store; then the writer
    np.testing.assert_array_equal(ds["2"].values, hooked(model, data)["2"])


# ------------------------------------------------------------------------------ resume

SCRIPT = """
import os, signal, sys, torch, repsim
sys.path.insert(0, {tests!r})
from test_store import net, batches
out, kill_after = sys.argv[1], int(sys.argv[2])

def data():
    for i, b in enumerate(batches(6, 8)):
        if i == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        yield b

repsim.extract(net(), data(), layers={layers!r}, out=out, chunk=8, progress=False)
"""


def _run(script, out, kill_after):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(script), str(out), str(kill_after)], env=env,
                          capture_output=True, text=True, timeout=300)


def _tree(path):
    return {p.relative_to(path).as_posix(): p.read_bytes()
            for p in sorted(Path(path).rglob("*")) if p.is_file()}


def _same_store(a, b):
    da, db = repsim.open_activations(a), repsim.open_activations(b)
    assert da.attrs == db.attrs
    assert list(da.data_vars) == list(db.data_vars)
    for k in da.variables:
        np.testing.assert_array_equal(da[k].values, db[k].values)
        assert da[k].encoding.get("chunks") == db[k].encoding.get("chunks")


def test_a_killed_extraction_resumes_to_the_same_store(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(ROOT / "tests"), layers=LAYERS))
    whole = tmp_path / "whole.zarr"
    assert _run(script, whole, -1).returncode == 0
    cut = tmp_path / "cut.zarr"
    killed = _run(script, cut, 3)
    assert killed.returncode == -signal.SIGKILL
    with pytest.raises(ValueError, match="unfinished extraction"):
        repsim.open_activations(cut)
    import zarr

    assert zarr.open_group(str(cut), mode="r").attrs["examples_done"] <= 24
    assert _run(script, cut, -1).returncode == 0
    _same_store(whole, cut)
    assert _tree(whole) == _tree(cut)  # byte for byte


def test_a_write_cut_short_is_cut_back_on_resume(tmp_path):
    """A kill between a write and its commit leaves arrays longer than examples_done."""
    import zarr

    model, data = net(), batches(5)
    whole = repsim.extract(model, data, layers=LAYERS, out=tmp_path / "w.zarr", progress=False)

    def failing():
        for i, b in enumerate(data):
            if i == 3:
                raise RuntimeError("stop")
            yield b

    with pytest.raises(RuntimeError, match="stop"):
        repsim.extract(model, failing(), layers=LAYERS, out=tmp_path / "c.zarr",
                       progress=False)
    group = zarr.open_group(str(tmp_path / "c.zarr"), mode="r+")
    assert group.attrs["examples_done"] == 24 and not group.attrs["complete"]
    for _, arr in group.arrays():  # the next batch half written: garbage past the commit
        arr.resize((30,) + arr.shape[1:])
        arr[24:30] = arr[0:6]
    again = repsim.extract(model, data, layers=LAYERS, out=tmp_path / "c.zarr", progress=False)
    assert again.attrs["complete"]
    _same_store(tmp_path / "w.zarr", tmp_path / "c.zarr")
    np.testing.assert_array_equal(again["2"].values, whole["2"].values)


# --------------------------------------------------------------------- example identity

@pytest.fixture
def two_stores(tmp_path):
    data = batches(4)
    ids = np.array([f"ex{i}" for i in range(32)])
    a = repsim.extract(net(), data, layers=LAYERS, out=tmp_path / "a.zarr", ids=ids,
                       progress=False)
    perm = np.random.default_rng(0).permutation(32)
    flat = torch.cat(data)[perm]
    keep = perm[perm != 5][:28]  # b: a shuffled subset of a's examples, 4 missing
    b_data = [torch.cat(data)[keep[i:i + 7]] for i in range(0, 28, 7)]
    b = repsim.extract(net(3), b_data, layers=LAYERS, out=tmp_path / "b.npz", ids=ids[keep],
                       progress=False)
    shuffled = repsim.extract(net(3), [flat[i:i + 8] for i in range(0, 32, 8)], layers=LAYERS,
                              out=tmp_path / "s.zarr", ids=ids[perm], progress=False)
    return a, b, shuffled, ids, perm, keep, data


def test_a_reordered_or_different_set_is_refused(two_stores):
    a, b, shuffled, ids, perm, keep, _ = two_stores
    first = int(np.argmax(ids != ids[perm]))
    with pytest.raises(ValueError, match=rf"same examples in a different order.*position "
                                         rf"{first} \(layers_a has '{ids[first]}', layers_b "
                                         rf"has '{ids[perm][first]}'\).*holds 32 examples, "
                                         "layers_b 32, 32 in common"):
        repsim.similarity_matrix(a, shuffled, progress=False)
    with pytest.raises(ValueError, match="different examples.*holds 32 examples, layers_b 28, "
                                         "28 in common; pass align='ids'"):
        repsim.similarity_matrix(a, b, progress=False)


def test_align_ids_compares_the_intersection(two_stores):
    a, b, shuffled, ids, perm, keep, data = two_stores
    ha, hb = hooked(net(), data), hooked(net(3), data)  # hb in a's order, all 32
    sim = repsim.similarity_matrix(a, b, align="ids", progress=False)
    rows = np.sort(keep)  # the intersection, in a's order
    ref = np.array([[ref_cka(ha[i][rows], hb[j][rows]) for j in LAYERS] for i in LAYERS])
    np.testing.assert_allclose(sim.values, ref, rtol=0, atol=1e-6)
    assert sim.attrs["n"] == 28 and sim.attrs["align"] == "ids"
    assert (sim.attrs["examples_dropped_a"], sim.attrs["examples_dropped_b"]) == (4, 0)
    # the shuffled store aligned by id equals the unshuffled comparison
    aligned = repsim.similarity_matrix(a, shuffled, align="ids", progress=False)
    direct = repsim.similarity_matrix(ha, hb, progress=False)
    np.testing.assert_allclose(aligned.values, direct.values, rtol=0, atol=1e-12)


def test_the_command_checks_example_ids(two_stores, tmp_path, capsys):
    a, b, shuffled, ids, perm, keep, data = two_stores
    za, zs = str(tmp_path / "a.zarr"), str(tmp_path / "s.zarr")
    out = str(tmp_path / "r.nc")
    assert cli_main([za, zs, "--out", out, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "same examples in a different order" in err and "--align ids" in err
    assert "32 in common" in err
    assert cli_main([za, zs, "--out", out, "--no-progress", "--align", "ids"]) == 0
    got = repsim.load_result(out)
    direct = repsim.similarity_matrix(hooked(net(), data), hooked(net(3), data), progress=False)
    assert list(got.layer_a.values) == LAYERS
    np.testing.assert_allclose(got.values, direct.values, rtol=0, atol=1e-12)
    assert cli_main([za, str(tmp_path / "b.npz"), "--out", out, "--no-progress", "--align",
                     "ids", "--measure", "minibatch_cka", "--batch-size", "7"]) == 0
    assert repsim.load_result(out).attrs["examples_dropped_a"] == 4
    assert cli_main([za, str(tmp_path / "b.npz"), "--out", out, "--no-progress"]) == 2
    assert "28 in common" in capsys.readouterr().err


def test_plain_files_keep_working(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 3, 2)), rng.standard_normal((20, 5))
    np.savez(tmp_path / "p.npz", conv=x, fc=y)
    ds = repsim.open_activations(tmp_path / "p.npz")
    assert list(ds.data_vars) == ["conv", "fc"] and "example_id" not in ds.coords
    sim = repsim.similarity_matrix(ds, progress=False)
    assert sim.values[0, 1] == pytest.approx(ref_cka(x, y), abs=1e-12)
    with pytest.raises(ValueError, match="needs example ids"):
        repsim.similarity_matrix(ds, ds, align="ids", progress=False)


# ------------------------------------------------------------------------- many models

def test_compare_many_reads_or_captures_each_model_once(tmp_path, monkeypatch):
    import repsim.store as S

    data = batches(3)
    repsim.extract(net(5), data, layers=LAYERS, out=tmp_path / "m5.zarr", progress=False)
    repsim.extract(net(6), data, layers=["0", "2"], out=tmp_path / "m6.npz", progress=False)
    repsim.extract(net(7), data, layers=LAYERS, out=tmp_path / "m7.zarr", progress=False)
    live = {"m0": net(0), "m1": net(1), "m2": net(2)}  # six models: three live, three stored
    forwards = {k: 0 for k in live}
    for k, model in live.items():
        model.register_forward_hook(lambda *_, k=k: forwards.__setitem__(k, forwards[k] + 1))
    loads, opens = [], []
    real_load, real_open = S._load, S.open_activations
    monkeypatch.setattr(S, "_load", lambda ds, idx: loads.append(ds) or real_load(ds, idx))
    monkeypatch.setattr(S, "open_activations", lambda p: opens.append(str(p)) or real_open(p))
    models = {**live, "m5": str(tmp_path / "m5.zarr"),
              "m6": real_open(tmp_path / "m6.npz"), "m7": str(tmp_path / "m7.zarr")}
    sim = repsim.compare_many(models, layers=LAYERS, data=data)
    assert forwards == {"m0": 3, "m1": 3, "m2": 3}  # one pass over the 3 batches each
    assert opens.count(str(tmp_path / "m5.zarr")) == 1
    assert opens.count(str(tmp_path / "m7.zarr")) == 1
    assert len(loads) == 6  # every model's layers read once, whatever the 36 pairs
    assert sim.dims == ("model_a", "model_b", "layer_a", "layer_b") and sim.shape == (6, 6, 3, 3)
    acts = {"m0": hooked(net(0), data), "m1": hooked(net(1), data), "m2": hooked(net(2), data),
            "m5": hooked(net(5), data), "m6": hooked(net(6), data, ["0", "2"]),
            "m7": hooked(net(7), data)}
    for a in acts:
        for b in acts:
            want = repsim.similarity_matrix(acts[a], acts[b], progress=False).values
            got = sim.sel(model_a=a, model_b=b).values[:len(acts[a]), :len(acts[b])]
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.isnan(sim.sel(model_a="m0", model_b="m6", layer_b=2)).all()  # m6: 2 layers
    assert sim.sel(model_a="m6").layer_name_a.values.tolist() == ["0", "2", ""]
    best = repsim.best_matches(sim)
    row = sim.sel(model_a="m0", model_b="m1", layer_a=1).values
    assert int(best.layer_b.sel(model_a="m0", model_b="m1", layer_a=1)) == int(np.argmax(row))
    assert float(best.score.sel(model_a="m0", model_b="m1", layer_a=1)) == row.max()
    np.testing.assert_allclose(best.model_score.values, best.score.mean("layer_a").values)


def test_compare_many_checks_example_ids(two_stores, tmp_path):
    a, b, shuffled, ids, perm, keep, _ = two_stores
    with pytest.raises(ValueError, match="different examples.*32 examples, b.*28, 28 in common"):
        repsim.compare_many({"a": a, "b": b})
    sim = repsim.compare_many({"a": a, "b": b, "s": shuffled}, align="ids")
    assert sim.attrs["examples_dropped"] == [4, 0, 4] and sim.attrs["n"] == 28
    direct = repsim.similarity_matrix(a, b, align="ids", progress=False)
    np.testing.assert_allclose(sim.sel(model_a="a", model_b="b").values, direct.values,
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("compression", ["lz4", "zstd", "none"])
def test_compression_is_applied_recorded_and_lossless(tmp_path, compression):
    zarr = pytest.importorskip("zarr")
    model, data = net(), batches()
    ds = repsim.extract(model, data, layers=LAYERS, out=tmp_path / "s.zarr",
                        compression=compression, progress=False)
    want = hooked(model, data)
    for name in LAYERS:
        np.testing.assert_array_equal(ds[name].values, want[name])
    assert ds.attrs["compression"] == compression
    codecs = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")[LAYERS[0]].compressors
    names = [type(c).__name__ for c in codecs]
    assert names == {"lz4": ["BloscCodec"], "zstd": ["ZstdCodec"], "none": []}[compression]
    if compression == "lz4":
        assert codecs[0].cname.value == "lz4" and codecs[0].shuffle.value == "bitshuffle"
    other = "zstd" if compression != "zstd" else "lz4"
    with pytest.raises(ValueError, match="compression"):
        repsim.extract(model, data, layers=LAYERS, out=tmp_path / "s.zarr", compression=other,
                       progress=False)
    with pytest.raises(ValueError, match="compression must be one of"):
        repsim.extract(model, data, layers=LAYERS, out=tmp_path / "t.zarr", compression="gzip",
                       progress=False)


def test_the_statistics_take_a_store_as_its_layers(tmp_path):
    ds = repsim.extract(net(), batches(), layers=LAYERS, out=tmp_path / "s.zarr", progress=False)
    whole = repsim.permutation_test(ds, n_permutations=30, seed=3, progress=False)
    layers = {k: ds[k].values for k in LAYERS}
    plain = repsim.permutation_test(layers, n_permutations=30, seed=3, progress=False)
    assert whole.cka.dims == ("layer_a", "layer_b")
    assert whole.layer_a.values.tolist() == LAYERS  # captured order, not alphabetical
    np.testing.assert_array_equal(whole.cka.values, plain.cka.values)
    np.testing.assert_array_equal(whole.p_value.values, plain.p_value.values)
    with pytest.raises(TypeError, match="xarray.Dataset"):
        repsim.permutation_test(ds.drop_attrs(), n_permutations=30, progress=False)
