"""How repsim.extract writes a Zarr store (issue 23, the cost of extraction): one call into
zarr per batch for every layer and the ids, whole chunks, and every chunk file dropped from
the page cache once written (so a store larger than memory does not fill it). The values
are checked against the hooked activations themselves (exact equality)."""

import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("zarr")

import repsim  # noqa: E402
from test_store import LAYERS, batches, hooked, net  # noqa: E402


def test_one_zarr_call_per_batch_for_every_layer_in_whole_chunks(tmp_path, monkeypatch):
    from repsim.adapters import _extract_regions as R

    calls = []
    real = R.set_rows

    def recording(items):
        calls.append([(arr.path, a, b, value.shape) for arr, a, b, value in items])
        return real(items)

    monkeypatch.setattr(R, "set_rows", recording)
    model, data = net(), batches(5, 8)
    ds = repsim.extract(model, data, layers=LAYERS, out=tmp_path / "a.zarr", progress=False)
    want = hooked(model, data)
    for name in LAYERS:
        np.testing.assert_array_equal(ds[name].values, want[name])
    # batch 0 creates the store (through xarray); batches 1..4: one call each, every array
    assert len(calls) == 4
    for k, call in enumerate(calls, start=1):
        assert sorted(p for p, *_ in call) == sorted(LAYERS + ["example_id"])
        for path, a, b, shape in call:
            assert (a, b) == (8 * k, 8 * k + 8) and shape[0] == 8  # one whole chunk of 8


@pytest.mark.skipif(not hasattr(os, "posix_fadvise") or not os.path.isdir("/proc/self/fd"),
                    reason="posix_fadvise and /proc are Linux's")
def test_every_chunk_file_leaves_the_page_cache(tmp_path, monkeypatch):
    advised: dict[str, list[int]] = {}
    real = os.posix_fadvise

    def recording(fd, offset, length, advice):
        path = os.readlink(f"/proc/self/fd/{fd}")
        advised.setdefault(path, []).append(advice)
        return real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", recording)
    model, data = net(), batches(9, 8)
    out = tmp_path / "a.zarr"
    ds = repsim.extract(model, data, layers=LAYERS, out=out, progress=False)
    chunks = {str(p) for p in Path(out).rglob("*") if p.is_file() and "/c/" in p.as_posix()}
    assert len(chunks) == 9 * (len(LAYERS) + 1)  # 9 batches of 8 rows, chunks of 8
    assert chunks <= set(advised)
    for path in chunks:  # once written (starts the writeback), once again later (frees)
        assert advised[path].count(os.POSIX_FADV_DONTNEED) == 2, path
    want = hooked(model, data)
    for name in LAYERS:
        np.testing.assert_array_equal(ds[name].values, want[name])
