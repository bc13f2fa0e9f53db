"""Readers of saved activations for the ``repsim`` command: one layer per entry.

Files are opened by their headers only; data are read when asked for (memory-mapped
``.npy``, stored ``.npz`` members and safetensors; sliced HDF5), or once into memory after
the declared size was checked against the memory available (compressed ``.npz``).
Anything malformed raises :class:`InputError`, one line naming the file and the layer.

Layer order is the writer's where the file stores one (``.npz`` members, safetensors
``__metadata__["layer_order"]`` or a header not in the library's sorted order, HDF5 /
netCDF creation order, ``.pt`` dict order); otherwise (``.npy`` folders, a sorted
safetensors header, HDF5 without creation order) a natural sort (``layer2`` before
``layer10``), with a warning where names differ in more than their numbers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

__all__ = ["InputError", "Source", "available_memory", "check_fits", "display", "natural_order",
           "q"]


class InputError(ValueError):
    """Bad input file or argument, reported as one line (exit status 2)."""


def display(text: str) -> str:
    """``text`` printable and storable as UTF-8: bytes that were not valid UTF-8 in a file
    name (kept by Python as surrogates) become ``\\xNN`` escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def q(text: str) -> str:
    """``text`` in quotes for a message, as :func:`display` writes it."""
    return "'" + display(text).replace("'", "\\'") + "'"


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024:
            return f"{nbytes:.3g} {unit}"
        nbytes /= 1024
    return f"{nbytes:.3g} EiB"


def available_memory() -> int:
    """Bytes of memory available to a new allocation (``MemAvailable`` on Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2**62


def check_fits(nbytes: int, what: str) -> None:
    """Refuse ``what`` (needing ``nbytes``) before allocating when memory cannot hold it."""
    free = available_memory()
    if nbytes > free:
        raise InputError(f"{what} needs {_size(nbytes)} of memory; {_size(free)} is available")


_CHUNK = re.compile(r"(\d+)")


def _natural_key(name: str) -> tuple:
    return tuple((0, int(c), c) if c.isdigit() else (1, 0, c) for c in _CHUNK.split(name) if c)


def natural_order(names) -> tuple[list[str], bool]:
    """``names`` sorted naturally (``layer2`` before ``layer10``), and whether that order
    is a guess: True when the names differ in more than their numbers (``conv``, ``fc``)."""
    ordered = sorted(names, key=_natural_key)
    patterns = {_CHUNK.sub("#", n) for n in ordered}
    return ordered, len(patterns) > 1


# ---------------------------------------------------------------------------- .npy headers

def _npy_header(f, where: str) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """shape, dtype, fortran_order and header length of an open ``.npy`` stream."""
    start = f.tell()
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error, SyntaxError) as err:
        raise InputError(f"{where} is not a readable .npy array ({_reason(err)})") from None
    return tuple(int(s) for s in shape), np.dtype(dtype), bool(fortran), f.tell() - start


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return display(text[0]) if text else type(err).__name__


def _check_dtype(dtype: np.dtype, where: str) -> None:
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise InputError(f"{where} has dtype {dtype}; a layer must hold numbers "
                         "(bool, int or float)")


def _nbytes(shape, dtype) -> int:
    count = 1
    for s in shape:
        count *= int(s)
    return count * np.dtype(dtype).itemsize


def _map(path, dtype, shape, offset, fortran):
    if _nbytes(shape, dtype) == 0:
        return np.empty(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran else "C")


# ----------------------------------------------------------------------------- the source

class _Layer(NamedTuple):
    shape: tuple
    dtype: Any
    get: Callable[[], Any]
    label: str


class Source:
    """The layers of one saved-activations file or folder, opened lazily.

    Attributes
    ----------
    path : str
    names : list of str
        In the writer's order (see the module docstring).
    order : str
        Where that order came from, for the user and the result's attrs.
    order_warning : str or None
        Set when the order was guessed from names that differ in more than numbers.
    files : list of str
        The files the layers are read from (to refuse writing over any of them).
    """

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self.label = display(self.path)
        self.order_warning: str | None = None
        self._cache: dict[str, Any] = {}
        self._close: list[Callable[[], Any]] = []
        if not os.path.exists(self.path):
            raise InputError(f"{self.label}: no such file or folder")
        low = self.path.lower()
        try:
            if os.path.isdir(self.path):
                self._npy_folder()
            elif low.endswith(".npy"):
                self.files = [self.path]
                name = os.path.basename(self.path)[:-4]
                self._layers = {name: self._npy_layer(self.path, name)}
                self.order = "a single layer"
            elif low.endswith(".npz"):
                self._npz()
            elif low.endswith(".safetensors"):
                self._safetensors()
            elif low.endswith((".nc", ".nc4", ".h5", ".hdf5", ".he5")):
                self._hdf5()
            elif low.endswith((".pt", ".pth")):
                self._torch()
            else:
                raise InputError(
                    f"cannot read {self.label}: expected a .npz, .npy, .safetensors, "
                    ".nc/.h5/.hdf5 or .pt file, or a folder of .npy files"
                )
        except InputError:
            self.close()
            raise
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error,
                RuntimeError, struct.error, UnicodeDecodeError) as err:
            self.close()
            raise InputError(f"cannot read {self.label}: {_reason(err)}") from None
        if not self._layers:
            raise InputError(f"{self.label} holds no layers")
        for name, layer in self._layers.items():
            where = f"layer {q(name)} of {self.label}"
            _check_dtype(np.dtype(layer.dtype), where)
            if len(layer.shape) == 0:
                raise InputError(f"{where} is 0-d (shape ()); a layer needs a first axis of "
                                 "examples, shape (n, ...)")
        self.names = list(self._layers)

    # -- formats ------------------------------------------------------------------------

    def _sorted(self, names, what):
        ordered, guessed = natural_order(names)
        self.order = f"natural sort of the names ({what})"
        if guessed and len(ordered) > 1:
            self.order_warning = (
                f"{self.label}: {what}, so layers are taken in natural name order "
                f"({', '.join(display(n) for n in ordered[:6])}"
                f"{', ...' if len(ordered) > 6 else ''}); "
                "name the layers in order with --layers-a/--layers-b if that is not the "
                "network's order"
            )
        return ordered

    def _npy_folder(self):
        entries = [e for e in os.listdir(self.path)
                   if e.lower().endswith(".npy") and os.path.isfile(os.path.join(self.path, e))]
        if not entries:
            raise InputError(f"folder {self.label} holds no .npy files")
        names = self._sorted([e[:-4] for e in entries], "a folder stores no layer order")
        by_name = {e[:-4]: e for e in entries}
        self.files = [os.path.join(self.path, by_name[n]) for n in names]
        self._layers = {n: self._npy_layer(os.path.join(self.path, by_name[n]), n) for n in names}

    def _npy_layer(self, path, name):
        where = display(path)
        with open(path, "rb") as f:
            shape, dtype, fortran, header = _npy_header(f, where)
        _check_dtype(dtype, f"layer {q(name)} of {where}")
        need = header + _nbytes(shape, dtype)
        have = os.path.getsize(path)
        if have < need:
            raise InputError(
                f"{where} is truncated: its header declares shape {shape} of {dtype} "
                f"({_size(need)} with the header), the file holds {_size(have)}"
            )
        return _Layer(shape, dtype, lambda: _map(path, dtype, shape, header, fortran), where)

    def _npz(self):
        self.files = [self.path]
        with open(self.path, "rb") as f:
            magic = f.read(4)
        if magic[:2] != b"PK":
            what = "an empty file" if not magic else (
                "a .npy array" if magic == b"\x93NUM" else "not a zip archive")
            raise InputError(f"{self.label} is not a .npz file ({what})")
        try:
            zf = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
            raise InputError(f"{self.label} is not a readable .npz file (truncated or "
                             f"corrupt zip archive: {_reason(err)})") from None
        self._close.append(zf.close)
        self._zip = zf
        self._layers = {}
        for info in zf.infolist():
            if not info.filename.endswith(".npy") or info.is_dir():
                raise InputError(
                    f"{self.label}: member {q(info.filename)} is not a numpy array "
                    "(.npy); a .npz file holds one array per layer"
                )
            name = info.filename[:-4]
            where = f"layer {q(name)} of {self.label}"
            with zf.open(info) as m:
                shape, dtype, fortran, header = _npy_header(m, where)
            _check_dtype(dtype, where)
            need = header + _nbytes(shape, dtype)
            if info.file_size < need:
                raise InputError(
                    f"{where} is truncated: its header declares shape {shape} of {dtype} "
                    f"({_size(need)} with the header), the member holds {_size(info.file_size)}"
                )
            self._layers[name] = _Layer(
                shape, dtype,
                lambda info=info, shape=shape, dtype=dtype, fortran=fortran, header=header,
                where=where: self._npz_member(info, shape, dtype, fortran, header, where),
                where,
            )
        self.order = "member order of the .npz file"

    def _npz_member(self, info, shape, dtype, fortran, header, where):
        size = _nbytes(shape, dtype)
        try:
            if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
                with open(self.path, "rb") as f:
                    f.seek(info.header_offset)
                    local = f.read(30)
                if len(local) < 30 or local[:4] != b"PK\x03\x04":
                    raise InputError(f"{where}: corrupt zip member header in {self.label}")
                start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") \
                    + int.from_bytes(local[28:30], "little")
                if os.path.getsize(self.path) < start + header + size:
                    raise InputError(f"{where} is truncated: the file ends before its data")
                arr = _map(self.path, dtype, shape, start + header, fortran)
                whole = np.memmap(self.path, dtype=np.uint8, mode="r", offset=start,
                                  shape=(header + size,))
                crc, step = 0, 1 << 26
                for s in range(0, header + size, step):
                    crc = zlib.crc32(whole[s:s + step], crc)
                if crc != info.CRC:
                    raise InputError(f"{where} is corrupt (CRC-32 check failed)")
                return arr
            check_fits(size, f"{where} (compressed, read into memory)")
            with self._zip.open(info) as m:
                arr = np.lib.format.read_array(m, allow_pickle=False)
                m.read()  # to the end of the member: zipfile checks the CRC there
            return arr
        except InputError:
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as err:
            raise InputError(f"{where} cannot be read (truncated or corrupt: {_reason(err)})") \
                from None

    _ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8",
                  "I32": "<i4", "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4",
                  "U16": "<u2", "U8": "u1", "BOOL": "?"}

    def _safetensors(self):
        self.files = [self.path]
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise InputError(f"{self.label} is not a safetensors file (shorter than 8 bytes)")
            n = struct.unpack("<Q", head)[0]
            if n > min(size - 8, 100 * 2**20):
                raise InputError(f"{self.label} is not a safetensors file (declared header of "
                                 f"{n} bytes, the file holds {size})")
            raw = f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            raise InputError(f"{self.label}: malformed safetensors header ({_reason(err)})") \
                from None
        if not isinstance(header, dict):
            raise InputError(f"{self.label}: malformed safetensors header (not a JSON object)")
        meta = header.pop("__metadata__", None) or {}
        data_start, data_size = 8 + n, size - 8 - n
        layers, kinds = {}, []
        for name, entry in header.items():
            where = f"layer {q(name)} of {self.label}"
            try:
                dt, shape = entry["dtype"], [int(s) for s in entry["shape"]]
                begin, end = (int(v) for v in entry["data_offsets"])
            except (TypeError, KeyError, ValueError) as err:
                raise InputError(f"{where}: malformed safetensors entry ({_reason(err)})") \
                    from None
            if dt not in self._ST_DTYPES:
                raise InputError(f"{where} has safetensors dtype {dt!r}, which numpy cannot "
                                 "read; save it as F32/F64/F16/BF16 or an integer type")
            if min(shape, default=0) < 0 or not 0 <= begin <= end <= data_size \
                    or end - begin != _nbytes(shape, self._ST_DTYPES[dt]):
                raise InputError(
                    f"{where}: malformed safetensors entry (shape {shape} of {dt} at bytes "
                    f"{begin}..{end}; the data section holds {data_size} bytes)"
                )
            dtype = np.dtype("<f4") if dt == "BF16" else np.dtype(self._ST_DTYPES[dt])
            layers[name] = _Layer(tuple(shape), dtype, lambda dt=dt, shape=tuple(shape), b=begin:
                                  self._st_array(dt, shape, data_start + b), where)
            kinds.append(dt)
        stored = meta.get("layer_order") if isinstance(meta, dict) else None
        names = list(layers)
        if stored is not None:
            try:
                order = json.loads(stored)
                assert isinstance(order, list) and sorted(order) == sorted(names)
            except (ValueError, AssertionError, TypeError):
                raise InputError(f"{self.label}: __metadata__ layer_order must be a JSON list "
                                 "of every tensor name") from None
            self.order = "layer_order in the safetensors metadata"
        elif not _grouped_sorted(names, kinds):
            order = names
            self.order = "header order of the safetensors file"
        else:
            order = self._sorted(names, "the safetensors header is sorted by name, not in "
                                        "the writer's order")
        self._layers = {k: layers[k] for k in order}

    def _st_array(self, dt, shape, offset):
        if dt == "BF16":
            raw = _map(self.path, np.dtype("<u2"), shape, offset, False)
            return (np.asarray(raw, dtype=np.uint32) << 16).view(np.float32)
        return _map(self.path, np.dtype(self._ST_DTYPES[dt]), shape, offset, False)

    def _hdf5(self):
        import h5py

        self.files = [self.path]
        try:
            f = h5py.File(self.path, "r")
        except OSError as err:
            raise InputError(f"{self.label} is not a readable HDF5/netCDF-4 file "
                             f"(truncated or corrupt: {_reason(err)})") from None
        self._close.append(f.close)
        names = []
        for name in f:
            link = f.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise InputError(
                    f"layer {q(name)} of {self.label} is an external link to "
                    f"{q(link.filename)}:{display(link.path)}; refusing to follow it "
                    "-- copy the data into the file"
                )
            obj = f.get(name)
            if isinstance(obj, h5py.Dataset) and obj.attrs.get("CLASS") != b"DIMENSION_SCALE":
                names.append(name)
        tracked = f["/"].id.get_create_plist().get_link_creation_order()
        if tracked:
            self.order = "creation order stored in the file"
        else:
            names = self._sorted(names, "the HDF5 file does not track creation order")
        self._layers = {}
        for name in names:
            ds = f[name]
            where = f"layer {q(name)} of {self.label}"
            self._layers[name] = _Layer(ds.shape, ds.dtype, lambda ds=ds: ds, where)

    def _torch(self):
        import torch

        self.files = [self.path]
        try:
            try:  # memory-mapped: a tensor's data are read when sliced
                obj = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
                obj = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many kinds (UnpicklingError, zip errors)
            raise InputError(f"{self.label} is not a readable .pt file of tensors "
                             f"({_reason(err)})") from None
        if not isinstance(obj, dict):
            raise InputError(f"{self.label} holds a {type(obj).__name__}; expected a dict "
                             "of layer name -> tensor")
        self._layers = {}
        for name, t in obj.items():
            where = f"layer {q(str(name))} of {self.label}"
            if not isinstance(t, torch.Tensor):
                raise InputError(f"{where} is a {type(t).__name__}, not a tensor")
            dtype = np.dtype("float32") if t.dtype == torch.bfloat16 else \
                torch.empty(0, dtype=t.dtype).numpy().dtype
            self._layers[str(name)] = _Layer(tuple(t.shape), dtype, lambda t=t: t, where)
        self.order = "dict order of the .pt file"

    # -- access -------------------------------------------------------------------------

    def shape(self, name: str) -> tuple[int, ...]:
        return self._layers[name].shape

    def where(self, name: str) -> str:
        return self._layers[name].label

    def nbytes(self, name: str) -> int:
        return _nbytes(self.shape(name), self._layers[name].dtype)

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """Examples ``start:stop`` of layer ``name`` as a numpy array (the whole layer by
        default); a compressed ``.npz`` member is decompressed once and kept."""
        layer = self._layers[name]
        try:
            data = self._cache.get(name)
            if data is None:
                data = self._cache[name] = layer.get()
            part = data[slice(start, stop)]
            if hasattr(part, "detach"):  # a torch tensor
                part = part.detach()
                if str(part.dtype) == "torch.bfloat16":
                    part = part.float()
                part = part.numpy()
            return np.asarray(part)
        except InputError:
            raise
        except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile,
                RuntimeError) as err:
            raise InputError(f"{layer.label} cannot be read ({_reason(err)})") from None

    def close(self) -> None:
        for close in self._close:
            with contextlib.suppress(Exception):  # closing a broken file
                close()
        self._close = []


def _grouped_sorted(names, kinds) -> bool:
    """Whether ``names`` come in runs of one dtype, each run sorted by name: the order the
    safetensors library writes (by dtype, then name), which is not the writer's."""
    seen, prev = set(), None
    for i, (name, kind) in enumerate(zip(names, kinds)):
        if kind != prev:
            if kind in seen:
                return False
            seen.add(kind)
            prev = kind
        elif name < names[i - 1]:
            return False
    return True
