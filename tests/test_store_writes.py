"""How repsim.extract writes a Zarr store (issue 23, the cost of extraction): the whole
chunks of uncompressed layers go straight to their files with O_DIRECT (byte for byte what
zarr writes); everything else in one call into zarr per batch, in whole chunks, every chunk
file zarr wrote dropped from the page cache once written (so a store larger than memory does
not fill it). The values are checked against the hooked activations themselves (exact
equality)."""

import errno
import mmap
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("zarr")

import repsim  # noqa: E402
from repsim.adapters import _extract_regions as R  # noqa: E402
from test_store import LAYERS, batches, hooked, net  # noqa: E402

LINUX = hasattr(os, "posix_fadvise") and os.path.isdir("/proc/self/fd")


def direct_works(folder) -> bool:
    """Whether the file system under ``folder`` takes O_DIRECT writes."""
    if not hasattr(os, "O_DIRECT"):
        return False
    try:
        fd = os.open(os.path.join(folder, "probe"), os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
    except OSError:
        return False
    os.close(fd)
    return True


def chunk_files(out) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for p in Path(out).rglob("*") if p.is_file() and "/c/" in p.as_posix()}


def no_direct(monkeypatch):
    monkeypatch.delattr(os, "O_DIRECT", raising=False)


def extracted(model, data, out, **kw):
    """``repsim.extract`` of ``LAYERS`` into ``out``, checked against the hooked activations
    (exact equality)."""
    ds = repsim.extract(model, data, layers=LAYERS, out=out, progress=False, **kw)
    want = hooked(model, data)
    for name in LAYERS:
        np.testing.assert_array_equal(ds[name].values, want[name])
    return ds


def test_one_zarr_call_per_batch_for_every_array_in_whole_chunks(tmp_path, monkeypatch):
    """Without O_DIRECT (or for compressed stores) zarr writes every array of a batch in
    one call."""
    no_direct(monkeypatch)
    calls = []
    real = R.set_rows

    def recording(items):
        calls.append([(arr.path, a, b, value.shape) for arr, a, b, value in items])
        return real(items)

    monkeypatch.setattr(R, "set_rows", recording)
    model, data = net(), batches(5, 8)
    extracted(model, data, tmp_path / "a.zarr")
    # batch 0 creates the store (through xarray); batches 1..4: one call each, every array
    assert len(calls) == 4
    for k, call in enumerate(calls, start=1):
        assert sorted(p for p, *_ in call) == sorted(LAYERS + ["example_id"])
        for path, a, b, shape in call:
            assert (a, b) == (8 * k, 8 * k + 8) and shape[0] == 8  # one whole chunk of 8


def test_whole_chunks_go_to_disk_with_o_direct_byte_for_byte_what_zarr_writes(tmp_path,
                                                                               monkeypatch):
    if not direct_works(tmp_path):
        pytest.skip("no O_DIRECT on this platform or file system")
    model, data = net(), batches(5, 8) + [batches(1, 3, seed=2)[0]]  # a last partial chunk
    plain = tmp_path / "plain.zarr"
    with monkeypatch.context() as m:
        no_direct(m)
        repsim.extract(model, data, layers=LAYERS, out=plain, progress=False)

    opened, calls = [], []
    real_open, real_set = os.open, R.set_rows

    def recording_open(path, flags, *args, **kw):
        fd = real_open(path, flags, *args, **kw)
        if flags & os.O_DIRECT:
            opened.append(Path(path).relative_to(tmp_path / "direct.zarr").as_posix())
        return fd

    def recording_set(items):
        calls.append(sorted(arr.path for arr, *_ in items))
        return real_set(items)

    monkeypatch.setattr(os, "open", recording_open)
    monkeypatch.setattr(R, "set_rows", recording_set)
    extracted(model, data, tmp_path / "direct.zarr")
    monkeypatch.undo()
    # batches 1..4 of every layer and of the ids: O_DIRECT (4608, 5760, 224 and 64 bytes a
    # chunk: padded to a page and cut back); batch 0 through xarray, the 3-row batch 5
    # through zarr
    assert sorted(opened) == sorted([f"{name}/c/{k}/0" for name in LAYERS for k in range(1, 5)]
                                    + [f"example_id/c/{k}" for k in range(1, 5)])
    assert calls == [sorted(LAYERS + ["example_id"])]
    assert chunk_files(tmp_path / "direct.zarr") == chunk_files(plain)


def test_direct_writes_aligned_rows_without_a_copy_and_any_length_exactly(tmp_path):
    if not direct_works(tmp_path):
        pytest.skip("no O_DIRECT on this platform or file system")
    w = R.Direct()
    page = mmap.mmap(-1, 2 * R.ALIGN)  # page-aligned memory: written from where it is
    aligned = np.frombuffer(page, np.float32).reshape(4, -1)
    aligned[:] = np.arange(aligned.size, dtype=np.float32).reshape(aligned.shape)
    assert w.write(str(tmp_path / "a" / "0"), aligned)  # a new directory, too
    assert w.buffer is None  # no copy was needed
    assert (tmp_path / "a" / "0").read_bytes() == aligned.tobytes()
    for rows in (np.arange(15, dtype=np.float16).reshape(3, 5),  # 30 bytes
                 np.random.default_rng(0).standard_normal((3, 1500))):  # 36,000 bytes
        assert w.write(str(tmp_path / "b"), rows)
        assert (tmp_path / "b").read_bytes() == rows.tobytes()
    assert len(w.buffer) == -(-36000 // R.ALIGN) * R.ALIGN


def test_a_file_system_without_o_direct_falls_back_to_zarr(tmp_path, monkeypatch):
    tries = []

    def refused(path):
        tries.append(path)
        raise OSError(errno.EINVAL, "O_DIRECT refused")

    monkeypatch.setattr(R, "_open_direct", refused)
    model, data = net(), batches(5, 8)
    extracted(model, data, tmp_path / "a.zarr")
    assert len(tries) == (1 if hasattr(os, "O_DIRECT") else 0)  # tried once, then off


def test_compressed_layers_are_written_by_zarr(tmp_path, monkeypatch):
    opened = []
    real_open = os.open

    def recording_open(path, flags, *args, **kw):
        opened.append(flags & getattr(os, "O_DIRECT", 0))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", recording_open)
    model, data = net(), batches(4, 8)
    ds = repsim.extract(model, data, layers=LAYERS, out=tmp_path / "a.zarr", progress=False,
                        compression="lz4")
    monkeypatch.undo()
    assert not any(opened)
    want = hooked(model, data)
    for name in LAYERS:
        np.testing.assert_array_equal(ds[name].values, want[name])


@pytest.mark.skipif(not LINUX, reason="posix_fadvise and /proc are Linux's")
@pytest.mark.parametrize("direct", [False, True])
def test_every_chunk_file_zarr_wrote_leaves_the_page_cache(tmp_path, monkeypatch, direct):
    """Chunk files zarr wrote (all, or batch 0's where O_DIRECT writes the others) are
    advised DONTNEED twice; those written with O_DIRECT never entered the page cache and
    are not."""
    if direct and not direct_works(tmp_path):
        pytest.skip("no O_DIRECT on this file system")
    if not direct:
        no_direct(monkeypatch)
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
    chunks = {str(out / p) for p in chunk_files(out)}
    assert len(chunks) == 9 * (len(LAYERS) + 1)  # 9 batches of 8 rows, chunks of 8
    by_zarr = {p for p in chunks if "/c/0/" in p or p.endswith("/c/0")} if direct else chunks
    assert set(advised) == by_zarr
    for path in by_zarr:  # once written (starts the writeback), once again later (frees)
        assert advised[path].count(os.POSIX_FADV_DONTNEED) == 2, path
    want = hooked(model, data)
    for name in LAYERS:
        np.testing.assert_array_equal(ds[name].values, want[name])


def test_progress_is_committed_at_most_once_a_second_and_when_the_run_stops(tmp_path,
                                                                              monkeypatch):
    import zarr

    from repsim.adapters import _extract_io as IO

    commits = []
    real = IO.Writer.flush

    def recording(self):
        if self.latest is not None:
            commits.append(self.latest[0])
        return real(self)

    monkeypatch.setattr(IO, "COMMIT_SECONDS", 3600.0)
    monkeypatch.setattr(IO.Writer, "flush", recording)
    model, data = net(), batches(6, 8)

    def failing():
        for i, b in enumerate(data):
            if i == 4:
                raise RuntimeError("stop")
            yield b

    with pytest.raises(RuntimeError, match="stop"):
        repsim.extract(model, failing(), layers=LAYERS, out=tmp_path / "a.zarr", progress=False)
    # the first batch's progress at once, then nothing for an hour, until the failure
    # commits what the four finished writes hold
    assert commits == [8, 32]
    assert zarr.open_group(str(tmp_path / "a.zarr"), mode="r").attrs["examples_done"] == 32
    ds = repsim.extract(model, data, layers=LAYERS, out=tmp_path / "a.zarr", progress=False)
    # resumed from 32: its first write commits at once (40), the end writes the final
    # attributes whole
    assert commits == [8, 32, 40]
    assert ds.attrs["examples_done"] == 48 and ds.attrs["complete"]
    want = hooked(model, data)
    for name in LAYERS:
        np.testing.assert_array_equal(ds[name].values, want[name])


def test_narrow_storage_is_converted_in_torch_bit_for_bit_as_numpy_and_refuses_overflow():
    from repsim.adapters._extract_io import host_arrays, to_host

    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(0)
    # normal, subnormal and tie-rounding float16 values, and float16's largest
    x = np.concatenate([rng.standard_normal(501) * 10.0 ** rng.integers(-9, 5, 501),
                        np.float32(np.float16(1.0)) + np.float32(2.0 ** -11) * np.arange(8),
                        [65504.0, -65504.0, 65519.0]]).astype(np.float32)
    acts = {"a": torch.from_numpy(x.reshape(4, -1))}
    for want in (x.astype(np.float16), x.astype(ml_dtypes.bfloat16)):
        sent, event = to_host(acts, 4, np.dtype(want.dtype))
        got = host_arrays(sent, event, np.dtype(want.dtype))["a"]
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got.reshape(-1).view(np.uint16), want.view(np.uint16))
    # infinities and NaN already there are stored as they are; a finite value that
    # becomes infinite is refused, even beside an infinity
    with_inf = torch.tensor([[np.inf, np.nan, 1.0, -2.0]])
    sent, event = to_host({"b": with_inf}, 1, np.dtype(np.float16))
    np.testing.assert_array_equal(host_arrays(sent, event, np.dtype(np.float16))["b"],
                                  with_inf.numpy().astype(np.float16))
    with pytest.raises(ValueError, match=r"layer 'c' holds values up to 6\.552e\+04, beyond "
                                         r"float16's range"):
        to_host({"c": torch.tensor([[np.inf, 65520.0, 1.0]])}, 1, np.dtype(np.float16))
    sent, event = to_host({"e": torch.zeros(0, 3)}, 0, np.dtype(np.float16))  # no rows
    assert host_arrays(sent, event, np.dtype(np.float16))["e"].shape == (0, 3)


def test_only_plain_numeric_zarr3_chunks_count_as_raw():
    import zarr
    from zarr.codecs import ZstdCodec

    def make(**kw):
        kw = {"shape": (8, 4), "chunks": (4, 4), "dtype": "f4", **kw}
        return zarr.create_array(store={}, **kw)

    assert R.raw_chunks(make(compressors=None))
    assert R.raw_chunks(make(compressors=None, dtype="i8"))
    assert not R.raw_chunks(make(compressors=(ZstdCodec(level=0),)))
    assert not R.raw_chunks(make(compressors=None, zarr_format=2))
    assert not R.raw_chunks(make(compressors=None, dtype=str, shape=(8,), chunks=(4,)))
