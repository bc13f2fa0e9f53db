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


@pytest.mark.parametrize("module", ["kernels", "hsic", "cka", "results", "streaming"])
def test_docstring_examples(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"repsim.{module}")
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
