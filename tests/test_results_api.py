"""netCDF round trip and the public API surface."""

import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

import repsim


def test_netcdf_round_trip(tmp_path, rng):
    sim = repsim.cka_matrix({"conv1": rng.standard_normal((20, 3)), "fc": rng.standard_normal((20, 5))},
                            kernel="rbf", estimator="unbiased")
    path = tmp_path / "sub" / "sim.nc"
    repsim.save_result(sim, path)
    back = repsim.load_result(path)
    np.testing.assert_allclose(back.values, sim.values)
    assert list(back.layer_a.values) == ["conv1", "fc"]
    assert back.attrs["estimator"] == "unbiased" and back.attrs["kernel"] == "rbf"
    assert back.attrs["n"] == 20
    np.testing.assert_allclose(back.attrs["sigma_a"], sim.attrs["sigma_a"])
    assert not list(path.parent.glob("*.tmp"))


def test_save_is_atomic_on_failure(tmp_path, rng, monkeypatch):
    sim = repsim.cka_matrix([rng.standard_normal((10, 2))])
    path = tmp_path / "sim.nc"
    repsim.save_result(sim, path)

    def broken_write(self, target, **kw):
        with open(target, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(xr.DataArray, "to_netcdf", broken_write)
    with pytest.raises(OSError, match="disk full"):
        repsim.save_result(sim * 0, path)
    monkeypatch.undo()
    np.testing.assert_allclose(repsim.load_result(path).values, sim.values)
    assert not list(tmp_path.glob("*.tmp"))


def test_attributes_are_made_storable(tmp_path, rng):
    class Version(str):  # like torch.torch_version.TorchVersion
        pass

    sim = repsim.cka_matrix([rng.standard_normal((10, 2))])
    sim.attrs.update(torch_version=Version("2.13.0"), flag=True, options={"a": 1}, none=None)
    repsim.save_result(sim, tmp_path / "sim.nc")
    back = repsim.load_result(tmp_path / "sim.nc")
    assert back.attrs["torch_version"] == "2.13.0"
    assert back.attrs["flag"] == 1 and back.attrs["options"] == "{'a': 1}" and back.attrs["none"] == "none"
    assert sim.attrs["flag"] is True  # the caller's object is not modified


@pytest.fixture
def umask():
    """Set the process umask for one test, restored afterwards."""
    import os

    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask, want", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_follow_the_umask(tmp_path, rng, umask, mask, want):
    import stat

    umask(mask)
    path = tmp_path / "sim.nc"
    repsim.save_result(repsim.cka_matrix([rng.standard_normal((10, 2))]), path)
    assert stat.S_IMODE(path.stat().st_mode) == want


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o600, 0o664])
def test_overwriting_keeps_the_target_mode(tmp_path, rng, umask, mode):
    import os
    import stat

    umask(0o077)  # would give 0600 to a new file: the existing file's mode must win
    path = tmp_path / "sim.nc"
    path.write_bytes(b"old")
    os.chmod(path, mode)
    sim = repsim.cka_matrix([rng.standard_normal((10, 2))])
    repsim.save_result(sim, path)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    np.testing.assert_allclose(repsim.load_result(path).values, sim.values)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim.nc"]


def test_an_attribute_that_cannot_be_stored_is_named(tmp_path, rng):
    sim = repsim.cka_matrix([rng.standard_normal((10, 2))])
    sim.attrs["handles"] = np.array([object(), object()])
    with pytest.raises(TypeError, match="attribute 'handles' of the DataArray cannot be stored.*dtype object"):
        repsim.save_result(sim, tmp_path / "a.nc")
    ds = xr.Dataset({"cka": sim.drop_attrs() if hasattr(sim, "drop_attrs") else sim.copy()})
    ds["cka"].attrs = {"phase": np.array([1j])}
    with pytest.raises(TypeError, match="attribute 'phase' of variable 'cka'.*complex128"):
        repsim.save_result(ds, tmp_path / "b.nc")
    coord = sim.copy()
    coord.attrs = {}
    coord["layer_a"].attrs["bad"] = np.array([None])
    with pytest.raises(TypeError, match="attribute 'bad' of variable 'layer_a'"):
        repsim.save_result(coord, tmp_path / "c.nc")
    with pytest.raises(TypeError, match="result must be an xarray.DataArray or xarray.Dataset; got ndarray"):
        repsim.save_result(sim.values, tmp_path / "d.nc")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, nothing left


def test_progress_in_a_log_is_one_line_per_stage(capsys):
    """A non-interactive stream gets one plain line per stage (no carriage returns, no
    escape codes); disabled gets nothing; an interactive one gets a tqdm bar."""
    import io

    from repsim._io import progress

    log = io.StringIO()
    assert sum(progress(range(5), total=5, desc="permutations", file=log)) == 10
    with progress(total=3 * 1024 * 1024, desc="cifar.tar.gz", unit="B", unit_scale=True,
                  file=log) as bar:
        for _ in range(2):
            bar.update(1024 * 1024)
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in log.getvalue() and "\x1b" not in log.getvalue()
    assert lines[0].startswith("permutations: 5/5 it in ")
    assert lines[1].startswith("cifar.tar.gz: 2.0M/3.0M B in ") and lines[1].endswith("(stopped early)")
    resumed = io.StringIO()
    with progress(total=10, initial=4, desc="compare_models", unit="batch", file=resumed) as bar:
        bar.update(6)
    assert resumed.getvalue().startswith("compare_models: 10/10 batch in ")
    quiet = io.StringIO()
    assert list(progress(range(3), total=3, desc="x", enabled=False, file=quiet)) == [0, 1, 2]
    assert quiet.getvalue() == ""

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tqdm = pytest.importorskip("tqdm")
    bar = progress(range(2), total=2, desc="t", file=Terminal())
    assert isinstance(bar, tqdm.tqdm) and list(bar) == [0, 1]


def test_import_does_not_pull_heavy_dependencies():
    code = "import sys, repsim; print(sorted(m for m in ('torch', 'matplotlib', 'numba') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_all_is_sorted_and_resolves():
    assert repsim.__all__ == sorted(repsim.__all__)
    for name in repsim.__all__:
        obj = getattr(repsim, name)
        assert callable(obj), name
        doc = obj.__doc__ or ""
        if isinstance(obj, type) and issubclass(obj, Warning):
            assert doc, name
            continue
        assert any(section in doc for section in ("Parameters", "Returns", "Attributes")), name


def test_all_is_written_out_literally():
    """IDEs and type checkers read __all__ statically: a list of string literals."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(repsim))
    (node,) = [n for n in tree.body if isinstance(n, ast.Assign)
               and any(getattr(t, "id", None) == "__all__" for t in n.targets)]
    assert isinstance(node.value, ast.List)
    assert all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.value.elts)
    assert [e.value for e in node.value.elts] == repsim.__all__


def test_interval_is_exported_and_is_what_jackknife_interval_returns(rng):
    acc = repsim.MinibatchCKA(groups=4)
    for _ in range(8):
        x = rng.standard_normal((16, 3))
        acc.update({"a": x, "b": x + rng.standard_normal((16, 3))})
    iv = repsim.jackknife_interval(acc.compute(uncertainty=True), lambda m: m[0, 1])
    assert "Interval" in repsim.__all__ and type(iv) is repsim.Interval
    assert iv.n_groups == 4 and iv.ci_low < iv.estimate < iv.ci_high


@pytest.mark.parametrize("name, module", [("download_cifar10", "datasets"), ("load_cifar10", "datasets"),
                                          ("load_digits_images", "datasets"), ("cifar_resnet", "models")])
def test_study_helpers_left_the_top_level(name, module):
    import importlib

    assert name not in repsim.__all__ and name not in dir(repsim)
    with pytest.warns(DeprecationWarning, match=f"repsim.{name} moved to repsim.{module}.{name}"):
        old = getattr(repsim, name)
    assert old is getattr(importlib.import_module(f"repsim.{module}"), name)


def test_public_docstrings_cite_no_private_paths():
    """The statistics, results and data modules' public docstrings (the other modules'
    owners fix theirs: cca_family and pcs cite repsim._validation)."""
    import re

    import repsim.datasets

    names = [getattr(repsim, n) for n in repsim.__all__
             if getattr(repsim, n).__module__.startswith(("repsim.stats", "repsim.results"))]
    names += [getattr(repsim.datasets, n) for n in ("download_cifar10", "load_cifar10", "load_digits_images")]
    assert len(names) >= 11
    for obj in names:
        name = obj.__name__
        doc = obj.__doc__ or ""
        assert not re.search(r"repsim(\.\w+)*\._\w", doc), f"repsim.{name} cites a private path"


@pytest.mark.parametrize("module", ["kernels", "hsic", "cka", "results", "streaming", "stats.resampling",
                                    "stats.permutation", "stats.jackknife", "stats.seeds"])
def test_docstring_examples(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"repsim.{module}")
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(mask=st.integers(0, 0o777), existing=st.one_of(st.none(), st.integers(0o400, 0o777)))
def test_atomic_write_mode_property(tmp_path_factory, mask, existing):
    """Any umask, any existing mode: a new file gets 0o666 & ~umask, a replaced file its
    old mode; the content is the new one and no temporary file is left."""
    import os
    import stat

    from repsim._io import atomic_write

    folder = tmp_path_factory.mktemp("aw")
    path = folder / "f.bin"
    if existing is not None:
        path.write_bytes(b"old")
        os.chmod(path, existing)
    old = os.umask(mask)
    try:
        atomic_write(path, lambda tmp: open(tmp, "wb").write(b"new"))
    finally:
        os.umask(old)
    os.chmod(folder, 0o700)
    want = (0o666 & ~mask) if existing is None else existing
    assert stat.S_IMODE(path.stat().st_mode) == want
    os.chmod(path, 0o600)
    assert path.read_bytes() == b"new" and [p.name for p in folder.iterdir()] == ["f.bin"]


def test_submodules_load_on_attribute_access():
    """``repsim.models`` and ``repsim.datasets`` work after a plain ``import repsim``
    (they import torch, so ``import repsim`` itself does not load them)."""
    import repsim.datasets as datasets
    import repsim.models as models

    assert repsim.models is models and repsim.models.cifar_resnet is models.cifar_resnet
    assert repsim.datasets is datasets
    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        repsim.nosuch


def test_atomic_write_is_public_and_all_or_nothing(tmp_path):
    """``repsim.results.atomic_write``: the whole file appears at once with the mode of a
    file opened normally (umask applies, an existing file's mode is kept); a write that
    fails leaves the old file as it was and no temporary file behind."""
    import os

    from repsim import _io
    from repsim.results import atomic_write

    assert atomic_write is _io.atomic_write and "atomic_write" in repsim.results.__all__
    target = tmp_path / "sub" / "report.md"
    atomic_write(target, lambda tmp: open(tmp, "w").write("first\n"))
    assert target.read_text() == "first\n"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    os.chmod(target, 0o640)

    def half_then_fail(tmp):
        open(tmp, "w").write("seco")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "first\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.md"]
    atomic_write(target, lambda tmp: open(tmp, "w").write("second\n"))
    assert target.read_text() == "second\n" and target.stat().st_mode & 0o777 == 0o640


def test_netcdf_attrs_is_what_save_result_stores(tmp_path):
    """``repsim.results.netcdf_attrs`` converts attributes exactly as ``save_result``
    writes them (so a converted object equals its reloaded copy), and names what no
    netCDF attribute can hold."""
    from repsim.results import netcdf_attrs

    attrs = {"centre": True, "sigma": None, "sizes": [1, 2.5], "names": ["a", 1], "n": 7}
    got = netcdf_attrs(attrs)
    assert got["centre"] == 1 and type(got["centre"]) is int and got["sigma"] == "none"
    assert got["names"] == ["a", "1"] and got["n"] == 7
    np.testing.assert_array_equal(got["sizes"], [1.0, 2.5])
    sim = xr.DataArray(np.eye(2), dims=("layer_a", "layer_b"),
                       coords={"layer_a": ["x", "y"], "layer_b": ["x", "y"]}, attrs=attrs)
    repsim.save_result(sim, tmp_path / "s.nc")
    back = repsim.load_result(tmp_path / "s.nc").attrs
    assert sorted(back) == sorted(got) and back["sigma"] == got["sigma"]
    assert back["centre"] == got["centre"] and list(back["names"]) == got["names"]
    with pytest.raises(TypeError, match="attribute 'z' of attrs cannot be stored.*complex128"):
        netcdf_attrs({"z": np.array([1j])})


def test_integers_beyond_int64_are_stored_losslessly_as_strings(tmp_path):
    """Before: ``seed=2**70`` failed inside h5py ("Object dtype ... no native HDF5
    equivalent") without naming the attribute. Now every integer netCDF holds natively
    stays a number and the others come back as their exact decimal string."""
    from repsim.results import netcdf_attrs

    attrs = {"seed": 2**70, "neg": -(2**63) - 1, "top": 2**64 - 1, "low": -(2**63),
             "list": [1, 2**70], "mixed": [2**53 + 1, 0.5], "small": [2**53, 0.5],
             "ints": [2**64 - 1, 2**63]}
    sim = xr.DataArray(np.eye(2), dims=("layer_a", "layer_b"),
                       coords={"layer_a": ["x", "y"], "layer_b": ["x", "y"]}, attrs=attrs)
    repsim.save_result(sim, tmp_path / "big.nc")
    back = repsim.load_result(tmp_path / "big.nc").attrs
    assert back["seed"] == "1180591620717411303424" and int(back["seed"]) == 2**70
    assert back["neg"] == str(-(2**63) - 1)
    assert int(back["top"]) == 2**64 - 1 and int(back["low"]) == -(2**63)
    assert not isinstance(back["top"], str)
    assert list(back["list"]) == ["1", str(2**70)]
    assert list(back["mixed"]) == [str(2**53 + 1), "0.5"]  # float64 would round 2**53 + 1
    np.testing.assert_array_equal(back["small"], [2.0**53, 0.5])
    assert [int(v) for v in back["ints"]] == [2**64 - 1, 2**63]
    assert netcdf_attrs(attrs)["seed"] == "1180591620717411303424"


def test_compare_models_with_a_huge_seed_saves(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("h5netcdf")
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    data = [torch.randn(8, 4, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    res = repsim.compare_models(net, net, data, run=repsim.RunOptions(seed=2**70),
                                progress=False)
    repsim.save_result(res, tmp_path / "r.nc")
    assert int(repsim.load_result(tmp_path / "r.nc").attrs["seed"]) == 2**70
