"""The repsim command under hostile input (issue 26): it never writes over an input,
never leaves a partial file under a target's name, and answers every malformed file with
one line naming the file (no traceback, exit status 2) -- run as a subprocess."""

import json
import os
import signal
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import repsim
from repsim import cli

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")


def run(*args, cwd):
    argv = [sys.executable, "-m", "repsim.cli", *[os.fsencode(a) if isinstance(a, str) else a
                                                  for a in args]]
    return subprocess.run(argv, capture_output=True, env=ENV, cwd=cwd, timeout=300)


def refused(proc, *needles):
    """Exit status 2, one line on stderr, no traceback, naming every needle."""
    err = proc.stderr.decode("utf-8", "backslashreplace")
    assert proc.returncode == 2, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("repsim: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]


def _acts(n=30, seed=0):
    rng = np.random.default_rng(seed)
    return {"l1": rng.standard_normal((n, 4)), "l2": rng.standard_normal((n, 3))}


@pytest.fixture
def acts(tmp_path):
    np.savez(tmp_path / "acts.npz", **_acts())
    return tmp_path / "acts.npz"


# ------------------------------------------------------------------- outputs and inputs

def test_out_that_is_an_input_is_refused_also_via_links_and_relative_paths(tmp_path, acts):
    before = acts.read_bytes()
    (tmp_path / "sub").mkdir()
    os.symlink(acts, tmp_path / "link.npz")
    os.link(acts, tmp_path / "hard.npz")
    for out in ("acts.npz", "./acts.npz", "sub/../acts.npz", str(acts), "link.npz", "hard.npz"):
        refused(run("acts.npz", "--out", out, cwd=tmp_path), "refusing to write over an input")
        refused(run("link.npz", "--out", "r.nc", "--plot", out, cwd=tmp_path), "--plot")
    np.savez(tmp_path / "b.npz", **_acts(seed=1))
    refused(run("acts.npz", "b.npz", "--out", "b.npz", cwd=tmp_path), "b.npz")
    assert acts.read_bytes() == before and not (tmp_path / "r.nc").exists()


def test_out_into_an_input_npy_folder_file_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    for k, v in _acts().items():
        np.save(tmp_path / "a" / f"{k}.npy", v)
    refused(run("a", "--out", "a/l1.npy", cwd=tmp_path), "refusing to write over an input")
    assert np.load(tmp_path / "a" / "l1.npy").shape == (30, 4)


def test_out_and_plot_the_same_file_is_refused(tmp_path, acts):
    refused(run("acts.npz", "--out", "r.png", "--plot", "./r.png", cwd=tmp_path),
            "--out and --plot are the same file")
    assert not (tmp_path / "r.png").exists()


def test_unsupported_plot_format_is_refused_before_any_work(tmp_path, acts):
    refused(run("acts.npz", "--out", "r.nc", "--plot", "r.xyz", cwd=tmp_path),
            "unsupported image format 'xyz'")
    assert not (tmp_path / "r.nc").exists()
    refused(run("acts.npz", "--option", "nope=1", "--out", "r.nc", cwd=tmp_path),
            "'nope' is not an option of cka_linear")
    refused(run("acts.npz", "--option", "estimator=debiassed", "--out", "r.nc", cwd=tmp_path),
            "--option: estimator must be one of")
    assert not (tmp_path / "r.nc").exists()


def test_interrupted_plot_leaves_the_old_file_and_no_temporary(tmp_path, acts, monkeypatch):
    import matplotlib.figure

    png = tmp_path / "r.png"
    png.write_bytes(b"old plot")

    def savefig(self, fname, **kw):
        Path(fname).write_bytes(b"\x89PNG\r\n\x1a\n")  # 8 bytes, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    status = cli.main([str(acts), "--out", str(tmp_path / "r.nc"), "--plot", str(png),
                       "--no-progress", "--no-summary"])
    assert status == 130
    assert png.read_bytes() == b"old plot"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acts.npz", "r.nc", "r.png"]


def test_stale_temporaries_of_a_killed_run_are_removed_and_nothing_else(tmp_path, acts):
    # a real SIGKILL in the middle of an atomic write of r.nc
    code = ("import os, signal; from repsim._io import atomic_write\n"
            "def w(tmp):\n    open(tmp, 'wb').write(b'partial'); os.kill(os.getpid(), signal.SIGKILL)\n"
            f"atomic_write({str(tmp_path / 'r.nc')!r}, w)")
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    stale = [p.name for p in tmp_path.glob(".r.nc.*.tmp")]
    assert len(stale) == 1
    others = [".r.nc.tmp", ".r.nc.abc.tmp", f".r.nc.{os.getpid()}-0123456789ab.tmp",
              ".other.nc.999999999-0123456789ab.tmp", "r.nc.999999999-0123456789ab.tmp"]
    for name in others:
        (tmp_path / name).write_bytes(b"someone else's")
    (tmp_path / ".r.png.999999999-0123456789ab.tmp").write_bytes(b"stale plot")
    proc = run("acts.npz", "--out", "r.nc", "--plot", "r.png", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = {p.name for p in tmp_path.iterdir()}
    assert not names & set(stale) and ".r.png.999999999-0123456789ab.tmp" not in names
    assert set(others) <= names
    assert repsim.load_result(tmp_path / "r.nc").shape == (2, 2)


# ------------------------------------------------------------------------- bad .npz

def _npz_bytes(**arrays):
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_empty_truncated_and_text_npz_name_the_file(tmp_path):
    (tmp_path / "empty.npz").write_bytes(b"")
    refused(run("empty.npz", cwd=tmp_path), "empty.npz", "empty file")
    (tmp_path / "cut.npz").write_bytes(_npz_bytes(**_acts())[:700])
    refused(run("cut.npz", cwd=tmp_path), "cut.npz")
    (tmp_path / "text.npz").write_text("layer,values\n1,2\n")
    line = refused(run("text.npz", cwd=tmp_path), "text.npz", "not a zip archive")
    assert "pickle" not in line and "unsafe" not in line


@pytest.mark.parametrize("compress", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_crc_corrupt_npz_names_the_file_and_layer(tmp_path, compress):
    np.savez(tmp_path / "ok.npz", **_acts())
    with zipfile.ZipFile(tmp_path / "ok.npz") as src, \
            zipfile.ZipFile(tmp_path / "bad.npz", "w", compress) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=compress)
    raw = bytearray((tmp_path / "bad.npz").read_bytes())
    with zipfile.ZipFile(tmp_path / "bad.npz") as z:
        info = z.getinfo("l2.npy")
    at = info.header_offset + 30 + len(info.filename) + info.compress_size - 9
    raw[at] ^= 0x55
    (tmp_path / "bad.npz").write_bytes(bytes(raw))
    refused(run("bad.npz", "--no-progress", cwd=tmp_path), "bad.npz", "'l2'")


def test_npz_with_a_non_array_member_names_it(tmp_path):
    np.savez(tmp_path / "a.npz", **_acts())
    with zipfile.ZipFile(tmp_path / "a.npz", "a") as z:
        z.writestr("notes.txt", "hello")
    refused(run("a.npz", cwd=tmp_path), "a.npz", "'notes.txt' is not a numpy array")


def _huge_header(shape):
    header = {"descr": "<f8", "fortran_order": False, "shape": shape}
    text = repr(header).encode()
    text += b" " * (63 - (len(text) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


def test_declared_shape_of_1e12_by_1e6_is_refused_before_allocating(tmp_path):
    shape = (10**12, 10**6)
    with zipfile.ZipFile(tmp_path / "big.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("l1.npy", _huge_header(shape) + b"\0" * 64)
    refused(run("big.npz", "--no-progress", cwd=tmp_path), "big.npz", "'l1'", "EiB")
    with zipfile.ZipFile(tmp_path / "stored.npz", "w") as z:
        z.writestr("l1.npy", _huge_header(shape) + b"\0" * 64)
    refused(run("stored.npz", cwd=tmp_path), "stored.npz", "truncated")
    (tmp_path / "big.npy").write_bytes(_huge_header(shape) + b"\0" * 64)
    refused(run("big.npy", cwd=tmp_path), "big.npy", "truncated")


def test_compressed_layer_larger_than_memory_is_refused_before_reading(tmp_path, monkeypatch,
                                                                       capsys):
    from repsim import _readers

    np.savez_compressed(tmp_path / "zeros.npz", l1=np.zeros((1000, 300)), l2=np.zeros((1000, 2)))
    monkeypatch.setattr(_readers, "available_memory", lambda: 1_000_000)
    monkeypatch.setattr(cli, "available_memory", lambda: 1_000_000)
    assert cli.main([str(tmp_path / "zeros.npz"), "--out", str(tmp_path / "r.nc"),
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "zeros.npz" in err and "needs 2.3 MiB of memory" in err
    # streamed: a batch fits, the compressed layer (decompressed whole, once) does not
    assert cli.main([str(tmp_path / "zeros.npz"), "--out", str(tmp_path / "r.nc"),
                     "--measure", "minibatch_cka", "--batch-size", "16", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "layer 'l1' of" in err and "zeros.npz (compressed, read into memory) needs" in err
    assert not (tmp_path / "r.nc").exists()


def test_truncated_npy_in_a_folder_is_not_an_mmap_error(tmp_path):
    (tmp_path / "a").mkdir()
    np.save(tmp_path / "a" / "l1.npy", np.ones((40, 8)))
    raw = (tmp_path / "a" / "l1.npy").read_bytes()
    (tmp_path / "a" / "l1.npy").write_bytes(raw[:-100])
    line = refused(run("a", cwd=tmp_path), "l1.npy", "truncated")
    assert "mmap" not in line


# -------------------------------------------------------------------- bad safetensors

def _st(path, header, data=b"", raw_header=None):
    raw = raw_header if raw_header is not None else json.dumps(header).encode()
    Path(path).write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize("case", ["short", "huge_header", "bad_json", "not_object",
                                  "offsets_out", "size_mismatch", "bad_dtype", "no_shape",
                                  "bad_order"])
def test_malformed_safetensors_name_the_file(tmp_path, case):
    path = tmp_path / "a.safetensors"
    ok = {"x": {"dtype": "F32", "shape": [4, 2], "data_offsets": [0, 32]}}
    data = np.ones((4, 2), np.float32).tobytes()
    if case == "short":
        path.write_bytes(b"\x05\x00")
    elif case == "huge_header":
        path.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    elif case == "bad_json":
        _st(path, None, data, raw_header=b"{\"x\": [")
    elif case == "not_object":
        _st(path, [1, 2], data)
    elif case == "offsets_out":
        _st(path, {"x": {**ok["x"], "data_offsets": [0, 3200]}}, data)
    elif case == "size_mismatch":
        _st(path, {"x": {**ok["x"], "shape": [5, 2]}}, data)
    elif case == "bad_dtype":
        _st(path, {"x": {**ok["x"], "dtype": "F8_E4M3"}}, data)
    elif case == "no_shape":
        _st(path, {"x": {"dtype": "F32", "data_offsets": [0, 32]}}, data)
    else:
        _st(path, {**ok, "__metadata__": {"layer_order": "[\"y\"]"}}, data)
    refused(run("a.safetensors", cwd=tmp_path), "a.safetensors")


# --------------------------------------------------------------------- bad layers

def test_zero_d_string_and_zero_width_layers_are_refused_by_name(tmp_path):
    np.savez(tmp_path / "zero_d.npz", l1=np.ones((5, 2)), s=np.float64(3.0))
    refused(run("zero_d.npz", cwd=tmp_path), "zero_d.npz", "'s'", "0-d")
    np.savez(tmp_path / "text.npz", l1=np.ones((5, 2)), words=np.array(["a"] * 5))
    refused(run("text.npz", cwd=tmp_path), "text.npz", "'words'", "must hold numbers")
    np.savez(tmp_path / "empty.npz", l1=np.ones((5, 2)), w=np.ones((5, 0)))
    refused(run("empty.npz", "--measure", "cca", cwd=tmp_path), "empty.npz", "'w'", "no features")


@pytest.mark.parametrize("measure", ["procrustes_angular", "cka_linear", "mutual_knn", "minibatch_cka"])
def test_nan_or_inf_layer_is_named_with_its_file(tmp_path, measure):
    layers = _acts()
    layers["l2"][7, 1] = np.nan if measure != "mutual_knn" else np.inf
    np.savez(tmp_path / "a.npz", **layers)
    options = ["--option", "k=5"] if measure == "mutual_knn" else []
    refused(run("a.npz", "--measure", measure, "--batch-size", "8", "--no-progress", *options,
                cwd=tmp_path),
            "a.npz", "'l2'", "NaN or Inf", "example 7")


def test_empty_layer_selection_is_refused(tmp_path, acts):
    refused(run("acts.npz", "--layers-a", ",", cwd=tmp_path), "--layers-a ',' names no layer")
    refused(run("acts.npz", "--layers-a", "", cwd=tmp_path), "--layers-a '' names no layer")
    refused(run("acts.npz", "--layers-b", " , ", cwd=tmp_path), "--layers-b")
    refused(run("acts.npz", "--layers-a", "l1,l1", cwd=tmp_path), "listed twice")


def test_a_layer_named_with_a_comma_can_be_selected(tmp_path):
    layers = {"a,b": np.random.default_rng(0).standard_normal((20, 3)), "c": np.ones((20, 2))}
    layers["c"][:, 0] = np.arange(20)
    np.savez(tmp_path / "a.npz", **layers)
    for flags in (["--layer-a", "a,b", "--layer-a", "c"], ["--layers-a", "a\\,b,c"]):
        proc = run("a.npz", *flags, "--layer-b", "a,b", "--out", "r.nc", "--no-progress",
                   cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        res = repsim.load_result(tmp_path / "r.nc")
        assert list(res.layer_a.values) == ["a,b", "c"] and list(res.layer_b.values) == ["a,b"]
    refused(run("a.npz", "--layers-a", "a,b", cwd=tmp_path), "no layer 'a' in")


def test_minibatch_cka_on_zero_examples_names_the_file(tmp_path):
    np.savez(tmp_path / "a.npz", l1=np.ones((0, 3)), l2=np.ones((0, 2)))
    refused(run("a.npz", "--measure", "minibatch_cka", cwd=tmp_path), "a.npz", "0 examples")
    np.savez(tmp_path / "b.npz", l1=np.ones((3, 3)))
    refused(run("b.npz", "--measure", "minibatch_cka", cwd=tmp_path), "b.npz", "at least 4")


def test_truncated_h5_names_the_file(tmp_path):
    import h5py

    with h5py.File(tmp_path / "a.h5", "w") as f:
        for k, v in _acts(n=200).items():
            f[k] = v
    raw = (tmp_path / "a.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(raw[: len(raw) // 2])
    refused(run("cut.h5", "--no-progress", cwd=tmp_path), "cut.h5")


def test_h5_external_link_is_refused(tmp_path):
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["secret"] = np.ones((30, 2))
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["l1"] = _acts()["l1"]
        f["l2"] = h5py.ExternalLink("other.h5", "/secret")
    refused(run("a.h5", cwd=tmp_path), "a.h5", "'l2'", "external link", "other.h5")


def test_non_utf8_input_path_and_layer_name(tmp_path):
    folder = os.fsencode(tmp_path) + b"/acts\xff"
    os.mkdir(folder)
    for k, v in _acts().items():
        with open(os.path.join(folder, k.encode() + b".npy"), "wb") as f:
            np.save(f, v)
    with open(os.path.join(folder, b"l\xe93.npy"), "wb") as f:
        np.save(f, _acts(seed=2)["l1"])
    proc = run(folder, "--out", "r.nc", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    res = repsim.load_result(tmp_path / "r.nc")
    assert list(res.layer_a.values) == ["l1", "l2", "l\\xe93"]
    assert res.attrs["source_a"].endswith("acts\\xff")
    assert b"l\\xe93" in proc.stdout
    proc = run(folder, "--layer-a", b"l\xe93", "--out", "s.nc", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    refused(run(folder, "--layer-a", b"zz\xff", cwd=tmp_path), "acts\\xff", "zz\\xff")


def test_help_states_the_contract_overwriting_and_an_example(tmp_path):
    proc = run("--help", cwd=tmp_path)
    text = proc.stdout.decode()
    assert proc.returncode == 0
    assert "first axis is the examples" in text and "same order" in text
    assert "replaced if they exist, atomically" in text
    assert "repsim acts.npz --measure cka_linear" in text
    assert run("--version", cwd=tmp_path).stdout.decode().strip() == f"repsim {repsim.__version__}"
