"""Region writes into one Zarr store for :func:`repsim.extract`.

* :class:`Regions` writes row ranges of every array of the store: one batch's rows of all
  arrays in one call into zarr's event loop (zarr encodes and writes the chunks
  concurrently), every chunk written as given (without zarr's comparison of each chunk
  with the fill value), and rows in a chunk that another process's range shares under an
  exclusive POSIX lock (a read-modify-write of that chunk), whole chunks without one.
* :class:`Direct` writes the whole chunks of uncompressed arrays (the default store) to
  their files itself, with ``O_DIRECT``: the bytes go from memory to the disk without the
  kernel's copy into the page cache, the writer's largest cost beside the forward passes.
* :class:`PageCache` drops the chunk files zarr wrote from the page cache once on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import mmap
import os
import sys
from collections import deque
from typing import Any

import numpy as np

from .. import store as S


class _Lock:
    """An exclusive ``flock`` on a file beside the store, shared by the processes."""

    def __init__(self, path: str):
        self.path = path

    @contextlib.contextmanager
    def held(self):
        import fcntl  # POSIX; torch.distributed extraction needs a shared POSIX file system

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


def lock_path(out: str) -> str:
    """The lock file of store ``out`` (hidden, beside it; removed when the store is done)."""
    path = os.path.abspath(out).rstrip(os.sep)
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.repsim-lock")


class PageCache:
    """Drops the chunk files a store was written with from the page cache once on disk.

    A chunk file just written is advised ``POSIX_FADV_DONTNEED`` at once (which starts its
    writeback) and again ``lag`` writes later (its pages are clean by then, and are freed).
    The next writes then reuse those pages instead of growing the page cache by the whole
    store: on a virtual machine whose free memory is handed back to the host, writing into
    fresh page-cache memory cost 3 to 4 times the CPU time of writing into reused memory
    (docs/user_guide/store.rst). Outside Linux (no ``posix_fadvise``) it does nothing.
    """

    def __init__(self, lag: int = 4):
        self.lag = lag
        self.enabled = hasattr(os, "posix_fadvise")
        self.queue: deque[list[str]] = deque()

    def written(self, paths: list[str]) -> None:
        if not self.enabled:
            return
        _dontneed(paths)
        self.queue.append(paths)
        while len(self.queue) > self.lag:
            _dontneed(self.queue.popleft())

    def flush(self) -> None:
        while self.queue:
            _dontneed(self.queue.popleft())


def _dontneed(paths: list[str]) -> None:
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # a chunk zarr did not write, or removed since
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


#: the alignment ``O_DIRECT`` needs of a buffer's address, a write's length and its offset
#: (a page: a multiple of every disk's logical block size)
ALIGN = mmap.PAGESIZE


def raw_chunks(arr) -> bool:
    """Whether the chunk files of ``arr`` hold the chunk's bytes as they are in memory:
    Zarr format 3, numeric, C order, no codec but ``bytes`` in this machine's byte order,
    no sharding."""
    from zarr.codecs import BytesCodec

    meta = arr.metadata
    codecs: tuple[Any, ...] = tuple(getattr(meta, "codecs", ()))
    plain = (getattr(meta, "zarr_format", 2) == 3 and hasattr(meta, "encode_chunk_key")
             and len(codecs) == 1 and isinstance(codecs[0], BytesCodec))
    if not plain or arr.dtype.kind not in "biuf" or arr.order != "C":
        return False
    endian = codecs[0].endian
    return endian is None or endian.value == sys.byteorder


class Direct:
    """Writes whole chunks of uncompressed arrays straight to their files with ``O_DIRECT``.

    The chunk file of such an array is the chunk's rows, byte for byte (:func:`raw_chunks`),
    so the writer copies them into a page-aligned buffer (or not at all when they already
    are aligned) and the disk reads them from there: no copy into the page cache and no
    writeback of it later. On this 2-core machine the kernel's buffered copy cost about
    2 s of CPU per GiB written into fresh page-cache memory and 0.1 s with ``O_DIRECT``
    (docs/user_guide/store.rst). Where the file system or the platform has no
    ``O_DIRECT`` (tmpfs, macOS), the first refusal turns it off and zarr writes every chunk.
    """

    def __init__(self) -> None:
        self.enabled = hasattr(os, "O_DIRECT")
        self.buffer: mmap.mmap | None = None

    def write(self, path: str, rows: np.ndarray) -> bool:
        """Write the file ``path`` holding exactly the bytes of ``rows`` (C order); False
        where ``O_DIRECT`` is refused (the file is then zarr's to write)."""
        if not self.enabled:
            return False
        rows = np.ascontiguousarray(rows)
        data = rows.reshape(-1).view(np.uint8).data
        n = len(data)
        padded = -(-n // ALIGN) * ALIGN
        if rows.ctypes.data % ALIGN == 0 and n == padded:
            view = data
        else:
            if self.buffer is None or len(self.buffer) < padded:
                self.buffer = mmap.mmap(-1, padded)  # page-aligned
            view = memoryview(self.buffer)[:padded]
            view[:n] = data
        try:
            fd = _open_direct(path)
        except OSError:  # EINVAL: this file system does not do O_DIRECT
            self.enabled = False
            return False
        try:
            done = 0
            while done < padded:
                done += os.write(fd, view[done:padded])
            if padded != n:
                os.ftruncate(fd, n)
        except OSError:
            os.close(fd)
            self.enabled = False
            return False
        os.close(fd)
        return True


def _open_direct(path: str) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_DIRECT", 0)
    try:
        return os.open(path, flags, 0o666)
    except FileNotFoundError:  # the chunk's directory is new
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, flags, 0o666)


def chunk_files(root: str, arr, a: int, b: int) -> list[str]:
    """The files of the chunks of ``arr`` (in the local store at ``root``) holding rows
    ``a : b``."""
    c = int(arr.chunks[0])
    rest = [range(k) for k in arr.cdata_shape[1:]]
    return [os.path.join(root, arr.path, arr.metadata.encode_chunk_key((i, *more)))
            for i in range(a // c, -(-b // c)) for more in itertools.product(*rest)]


def set_rows(items: list[tuple[Any, int, int, np.ndarray]]) -> None:
    """``arr[a:b] = value`` for every ``(arr, a, b, value)``, in one call into zarr's event
    loop (one call per array where zarr has no ``zarr.core.sync``)."""
    try:
        from zarr.core.sync import sync
    except ImportError:  # pragma: no cover - another zarr layout
        for arr, a, b, value in items:
            arr[a:b] = value
        return

    async def every() -> None:
        await asyncio.gather(*(arr.async_array.setitem(slice(a, b), value)
                               for arr, a, b, value in items))

    sync(every())


class Regions:
    """Row ranges of every array of the store at ``out`` (layers and ``example_id``).

    ``shared=True`` (several processes write): rows in a chunk that a range does not cover
    whole are written under the lock, so two processes never rewrite one chunk at once.
    """

    def __init__(self, out: str, shared: bool):
        self.out = out
        self.lock = _Lock(lock_path(out)) if shared else None
        self.arrays: dict[str, Any] = {}
        self.raw: set[str] = set()  # arrays whose whole chunks Direct writes
        self.length = 0
        self.cache = PageCache()
        self.direct = Direct()

    def open(self) -> None:
        """(Re)read the arrays' metadata: after the store was created or grown."""
        import zarr

        group = zarr.open_group(self.out, mode="r+")
        # every chunk is written as given: zarr otherwise compares each chunk with the fill
        # value first (a pass over the data as long as the encoding)
        whole: Any = {"write_empty_chunks": True}
        self.arrays = {name: arr.with_config(whole) for name, arr in group.arrays()}
        self.raw = {name for name, arr in self.arrays.items()
                    if raw_chunks(arr) and tuple(arr.chunks[1:]) == tuple(arr.shape[1:])}
        self.length = int(self.arrays[S.IDS].shape[0])

    def resize(self, length: int) -> None:
        """Every array to ``length`` rows (metadata only: chunks past it are deleted)."""
        for arr in self.arrays.values():
            arr.resize((length,) + tuple(arr.shape[1:]))
        self.length = length

    def write(self, start: int, layers: dict[str, np.ndarray], ids: np.ndarray) -> None:
        """Rows ``start : start + len(ids)`` of every layer and of ``example_id``."""
        values = dict(layers)
        values[S.IDS] = ids
        stop = start + len(ids)
        chunk = int(self.arrays[S.IDS].chunks[0])
        lo = min(stop, -(-start // chunk) * chunk)  # whole chunks: [lo, hi)
        hi = max(lo, stop // chunk * chunk)
        if self.lock is None or (lo == start and hi == stop):
            self._put(values, start, start, stop)
        else:
            if lo > start:
                with self.lock.held():
                    self._put(values, start, start, lo)
            self._put(values, start, lo, hi)
            if stop > hi:
                with self.lock.held():
                    self._put(values, start, hi, stop)

    def written(self, ranges: list[tuple[Any, int, int]]) -> None:
        """Rows ``a : b`` of arrays ``arr`` were written by zarr (``(arr, a, b)``): their
        chunk files may leave the page cache once on disk."""
        if not self.cache.enabled:
            return
        try:
            paths = [p for arr, a, b in ranges for p in chunk_files(self.out, arr, a, b)]
        except AttributeError:  # a zarr without 3.1's chunk-key metadata: no advice, same store
            self.cache.enabled = False
            return
        self.cache.written(paths)

    def _put(self, values, start, a, b) -> None:
        """Rows ``a : b`` of every array from ``values`` (whose row 0 is row ``start``):
        the whole chunks of raw arrays through :class:`Direct`, the rest through zarr."""
        if b <= a:
            return
        items = []
        for name, v in values.items():
            arr = self.arrays[name]
            c = int(arr.chunks[0])
            lo, hi = -(-a // c), min(b, int(arr.shape[0])) // c  # whole chunks lo .. hi-1
            k = lo
            if name in self.raw and hi > lo:
                while k < hi and self.direct.write(chunk_files(self.out, arr, k * c, k * c + 1)[0],
                                                   v[k * c - start:(k + 1) * c - start]):
                    k += 1  # (False from now on where O_DIRECT is refused)
            if k > lo:  # chunks lo .. k-1 are written; zarr writes the rows around them
                items += [(arr, a, lo * c, v[a - start:lo * c - start]),
                          (arr, k * c, b, v[k * c - start:b - start])]
            else:
                items.append((arr, a, b, v[a - start:b - start]))
        items = [item for item in items if item[2] > item[1]]
        if items:  # (none when O_DIRECT wrote every array's rows)
            set_rows(items)
            self.written([(arr, x, y) for arr, x, y, _ in items])
