"""Extract once: one forward pass over the data, every selected layer written to a store.

:func:`extract` runs the batches through :class:`repsim.GramHooks` built with
``features=True`` (so every pooling, the transformers support and ``select`` work as in
:func:`repsim.compare_models`), and writes each batch's pooled activations into a Zarr
store created through xarray (or collects them for a ``.npz`` / safetensors file). The
write of batch ``k`` -- the conversion to the storage dtype included -- runs on a
background thread while the next batches compute; after each write the store's
``examples_done`` / ``batches_done`` attributes are committed, so a killed run resumes
there: arrays longer than ``examples_done`` are cut back, and the batches already stored
are skipped without a forward pass. Under :mod:`torch.distributed` every process runs the
same loop over its own batches and writes its rows into the one store
(:mod:`repsim.adapters._extract_io` places them).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
import xarray as xr
from torch import nn

from .. import _validation as V
from .. import store as S
from .._io import progress as _progress
from ._batches import _inference, _model_device, _run_forward
from ._distributed import _comm_device, _dist_context, _presharded
from ._extract_io import FAILED, HAS_IDS, ROWS, Comm, Writer, own_steps, planned, to_host
from ._hooks import GramHooks
from ._selection import LayerSpec, unwrap_model

__all__ = ["extract", "fingerprint"]

DTYPES = ("float32", "float16", "bfloat16", "float64")
V.register_params("extract", dtype=V.Options(*DTYPES),
                  compression=V.Options("lz4", "zstd", "none"))
#: attributes that must agree for a run to resume a store
IDENTITY = ("model_fingerprint", "hooked_modules", "pooling", "dtype", "example_id_source",
            "compression")


def fingerprint(model: nn.Module) -> str:
    """``"sha256:<hex>"`` of the model's ``state_dict``: every entry's name, dtype, shape
    and bytes, in order (the same weights give the same fingerprint on any device)."""
    h = hashlib.sha256()
    for key, value in unwrap_model(model).state_dict().items():
        h.update(key.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().to("cpu").contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(value).encode())
    return "sha256:" + h.hexdigest()


def _storage_dtype(dtype: str, fmt: str):
    V.check_params("extract", dtype=dtype)
    if dtype != "bfloat16":
        return np.dtype(dtype)
    import ml_dtypes

    if fmt == "npz":
        raise ValueError("dtype='bfloat16' cannot be written to a .npz file (numpy has no "
                         "bfloat16); write a .safetensors file or choose 'float16'")
    if fmt == "zarr":
        import zarr

        try:
            zarr.create_array(store={}, shape=(1,), dtype=ml_dtypes.bfloat16)
        except (ValueError, TypeError) as err:
            raise ValueError(f"dtype='bfloat16': zarr {zarr.__version__} cannot store it "
                             f"({err}); store dtype='float16' (its CKA error is in the "
                             "store guide) or 'float32', or write a .safetensors file") \
                from None
    return np.dtype(ml_dtypes.bfloat16)


def _batch_ids(batch, index: int, source: str):
    """(the batch without its ids, the ids it carries or None)."""
    if isinstance(batch, dict) and S.IDS in batch:
        batch = dict(batch)
        ids = batch.pop(S.IDS)
        ids = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
        if source == "given":
            raise ValueError(f"batch {index} carries {S.IDS!r} and ids= was given; pass one")
        if source == "index" and index > 0:
            raise ValueError(f"batch {index} carries {S.IDS!r} but the first did not; every "
                             "batch must carry its ids, or none")
        return batch, ids
    if source == "dataset":
        raise ValueError(f"batch {index} has no {S.IDS!r} entry; every batch must carry its "
                         "ids, or none")
    return batch, None


@dataclass
class _Plan:
    """Where a run starts: the steps, examples and batches already in the store, the
    arrays' length, whether it is finished, and where its ids come from."""

    steps: int = 0
    examples: int = 0
    batches: int = 0
    length: int = 0
    complete: bool = False
    source: str = "index"


def _file_format(out: str) -> str:
    low = out.lower()
    return "npz" if low.endswith(".npz") else \
        "safetensors" if low.endswith(".safetensors") else "zarr"


def _plan(out: str, fmt: str, identity: dict, given, overwrite: bool, world: int) -> _Plan:
    """The run's start (rank 0 reads it; every rank gets it). Refuses a folder that is not
    a store, a store of another run or of another number of processes."""
    plan = _Plan(source=identity["example_id_source"])
    if fmt != "zarr":
        if os.path.exists(out) and not overwrite:
            raise ValueError(f"out={out!r} exists; pass overwrite=True to replace it")
        return plan
    if not os.path.exists(out):
        return plan
    if overwrite:
        shutil.rmtree(out) if os.path.isdir(out) else os.remove(out)
        return plan
    import zarr

    if not S.is_zarr(out):
        raise ValueError(f"out={out!r} exists and is not a Zarr store; pass overwrite=True "
                         "to replace it")
    group = zarr.open_group(out, mode="r+")
    attrs: dict[str, Any] = dict(group.attrs)
    if attrs.get(S.FORMAT_KEY) != S.FORMAT:
        raise ValueError(f"out={out!r} is a Zarr store that repsim.extract did not write; "
                         "pass overwrite=True to replace it")
    if attrs.get("example_id_source") == "dataset" and given is None:
        plan.source = identity["example_id_source"] = "dataset"  # ids from the data
    for key in IDENTITY:
        if key in attrs and attrs[key] != identity[key]:
            raise ValueError(f"out={out!r} holds another extraction ({key} is "
                             f"{attrs[key]!r}, this run's is {identity[key]!r}); pass "
                             "overwrite=True to replace it, or another out")
    if attrs.get("complete", False):
        plan.complete = True
        return plan
    if attrs.get("world_size", 1) != world:
        raise ValueError(f"out={out!r} holds an unfinished extraction by "
                         f"{attrs.get('world_size', 1)} process(es); resume it with as many "
                         "(its order of examples depends on them), or pass overwrite=True")
    if "examples_done" not in attrs:  # the first write did not finish
        return plan
    done = int(attrs["examples_done"])
    for _, arr in group.arrays():  # cut back a write that was cut short
        if arr.shape[0] != done:
            arr.resize((done,) + tuple(arr.shape[1:]))
    if given is not None and done:
        stored_ids: Any = group[S.IDS]
        stored = np.asarray(stored_ids[:done])
        if stored.tolist() != given[:done].tolist():
            raise ValueError(f"out={out!r} holds ids that differ from ids[:{done}]; pass "
                             "overwrite=True to start again")
    plan.examples, plan.batches, plan.length = done, int(attrs["batches_done"]), done
    plan.steps = int(attrs.get("steps_done", plan.batches))
    return plan


def extract(model: nn.Module, data: Iterable[Any], *, layers: LayerSpec, out: str | os.PathLike,
            pooling: str | Callable[[torch.Tensor], torch.Tensor] = "flatten",
            ids: Any = None, dtype: str = "float32", select: Any = None,
            repeated: str = "error", forward: Callable[[nn.Module, Any], Any] | None = None,
            device: str | torch.device | None = None, eval_mode: bool = True,
            chunk: int | None = None, compression: str = "none", seed: int = 0,
            progress: bool = True, overwrite: bool = False) -> xr.Dataset:
    """Run the data through the model once and store every selected layer's activations.

    Parameters
    ----------
    model : torch.nn.Module
        Run in eval mode (unless ``eval_mode=False``) under ``torch.inference_mode``; its
        training flags are restored afterwards.
    data : iterable
        Batches as :func:`repsim.compare_models` takes them (tensors, ``(input, target,
        ...)`` sequences, dicts of keyword arguments), in the same order on every run (a
        shuffling DataLoader repeats its order: torch's RNG is seeded from ``seed``). A
        dict batch may carry its examples' ids under ``"example_id"`` (removed before the
        model sees the batch).
    layers : None, str, type or list
        Which modules to capture (:func:`repsim.select_layers`).
    out : str or os.PathLike
        A Zarr store (a folder, conventionally ``*.zarr``), written as batches run and
        resumable; or a ``.npz`` or ``.safetensors`` file, written once at the end (small
        cases; ids and attributes in reserved members or the safetensors metadata).
    pooling, select, repeated
        How a module's output becomes ``(rows, features)``; see :class:`repsim.GramHooks`.
    ids : sequence, optional
        The ids of all examples, in data order (one per row; unique). Default: the batches'
        ``"example_id"`` entries, else the running index ``0, 1, ...``.
    dtype : {"float32", "float16", "bfloat16", "float64"}, default "float32"
        Storage dtype, recorded in the attributes. ``"float16"`` halves the store; values
        beyond its range are refused. ``"bfloat16"`` is written to safetensors files
        (read back as float32) and refused where zarr cannot store it (zarr 3.1 cannot)
        and for ``.npz``.
    forward : callable, optional
        ``forward(model, batch)`` for other batch layouts or entry points.
    device : str or torch.device, optional
        Where the forward runs; default: the model's.
    chunk : int, optional
        Examples per Zarr chunk; default: the first batch's rows.
    compression : {"none", "lz4", "zstd"}, default "none"
        The Zarr store's codec (recorded in the attributes; a store of another codec is
        not resumed): ``"none"`` raw bytes, the cheapest to write -- where the forward
        passes keep every core busy, a codec's CPU time adds to the extraction (whole
        ResNet-56 block outputs on 2 CPU cores: 1.34x the forward passes uncompressed,
        1.49x with ``"lz4"``; docs/user_guide/store.rst); ``"lz4"`` Blosc's LZ4 over
        bit-shuffled bytes (post-ReLU float32 blocks 1.3x smaller, about 560 MB/s on one
        core), ``"zstd"`` zarr's default Zstandard (1.7x smaller, 110 to 270 MB/s). Files
        ignore it.
    seed : int, default 0
        torch's RNG is seeded from it for the run (the caller's state is restored).
    progress : bool, default True
    overwrite : bool, default False
        Replace whatever is at ``out``. Otherwise a finished store of this run is returned
        as it is, an unfinished one resumed, and a store of another model, pooling, dtype
        or layer set refused.

    Returns
    -------
    xarray.Dataset
        :func:`repsim.open_activations` of ``out`` (on every process): one variable per
        captured layer, dims ``("example", "<layer>_feature")``, coordinate
        ``example_id``; attrs ``layers`` (as captured), ``hooked_modules``,
        ``model_fingerprint`` (:func:`fingerprint`), ``pooling``, ``dtype``,
        ``compression`` (Zarr), ``example_id_source`` (``"given"``, ``"dataset"`` or
        ``"index"``), ``repsim_version``, ``examples_done``, ``batches_done``,
        ``complete``.

    Notes
    -----
    **torch.distributed.** Inside an initialised default process group every process calls
    :func:`extract` with the same arguments (the same ``out``, on a file system all of them
    share, with POSIX locks) and the store holds every process's examples once:

    * *Which batches.* An iterable every process iterates whole: rank ``r`` runs batches
      ``r, r + w, r + 2w, ...`` (``w`` processes), as :func:`repsim.compare_models` does.
      A ``DataLoader`` with a ``DistributedSampler``: each process runs its own batches.
    * *Order.* After each step (every process's next batch) one ``all_gather`` of each
      rank's rows gives every process every offset: examples are stored by step, then
      rank, then row. For an iterable every process iterates this is the data's order --
      the store equals, value and id for value and id, the one a single process writes.
      For a ``DistributedSampler`` it is its shards interleaved batch by batch (rank 0's
      first batch, rank 1's first, ..., rank 0's second, ...); let the dataset give the
      ids (``"example_id"`` in dict batches), and note that without ``drop_last=True`` the
      sampler repeats examples to even out the shards (their ids then repeat, which
      comparisons refuse). ``ids=`` numbers the stored order.
    * *Who writes what.* The first process with a batch (rank 0) creates the store with
      its first batch, the others wait at a barrier; each process then writes its own
      rows; rows in a chunk another process also writes go under an exclusive lock on
      a hidden file beside the store (removed at the end). The arrays grow ahead of the
      writes, by rank 0 between two barriers.
    * *Resume.* Rank 0 commits ``steps_done`` (with ``examples_done``, ``batches_done``)
      once every process reported those steps written; run the same command with the same
      number of processes and every process skips the committed steps. A store left by
      another number of processes is refused. An error on one process is raised on every
      process at the next step (instead of a hang).
    * ``.npz`` / safetensors outputs have one writer and are refused.

    Examples
    --------
    >>> import torch, repsim, tempfile, os
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> batches = [torch.randn(16, 4) for _ in range(3)]
    >>> out = os.path.join(tempfile.mkdtemp(), "acts.zarr")
    >>> ds = repsim.extract(net, batches, layers=["0", "2"], out=out, progress=False)
    >>> ds["0"].dims, ds["0"].shape, ds.attrs["layers"]
    (('example', '0_feature'), (48, 8), ['0', '2'])
    """
    from .. import __version__

    out = os.fspath(out)
    fmt = _file_format(out)
    rank, world = _dist_context()
    if world > 1 and fmt != "zarr":
        raise ValueError(f"out={out!r}: under torch.distributed every process writes into "
                         "one Zarr store; a .npz or .safetensors file has one writer")
    store_dtype = _storage_dtype(dtype, fmt)
    V.check_params("extract", compression=compression)
    inner = unwrap_model(model)
    hooks = GramHooks(inner, layers, select=select, pooling=pooling, repeated=repeated,
                      features=True)
    given = None if ids is None else np.asarray(ids)
    if given is not None and given.ndim != 1:
        raise ValueError(f"ids must be one id per example, shape (n,); got {given.shape}")
    identity: dict[str, Any] = {
        "model_fingerprint": fingerprint(inner), "hooked_modules": list(hooks.names),
        "pooling": pooling if isinstance(pooling, str) else getattr(pooling, "__name__",
                                                                   repr(pooling)),
        "dtype": dtype, "example_id_source": "given" if given is not None else "index",
        **({"compression": compression} if fmt == "zarr" else {}),
    }
    where = _model_device(inner, device)
    comm = Comm(rank, world, _comm_device(where) if world > 1 else where)
    plan = _agreed(comm, lambda: _plan(out, fmt, identity, given, overwrite, world))
    if plan.complete:
        return S.open_activations(out)
    identity["example_id_source"] = source = plan.source
    if device is not None:
        inner.to(where)
    sharded = world > 1 and not _presharded(data)
    attrs = {S.FORMAT_KEY: S.FORMAT, "layers": [], "repsim_version": __version__, **identity,
             "complete": False, **({"world_size": world} if world > 1 else {})}
    known = hasattr(data, "__len__") and (world == 1 or sharded)
    bar = _progress(total=len(data) if known else None,  # type: ignore[arg-type]
                    initial=plan.batches, desc="extract", enabled=progress and rank == 0,
                    unit="batch")
    captured: list | None = None
    with torch.random.fork_rng(devices=[]), ThreadPoolExecutor(1) as pool, bar, hooks, \
            _inference([inner], eval_mode):
        torch.manual_seed(seed)
        writer = Writer(out, fmt, plan, comm, attrs, chunk, store_dtype, given, pool)
        steps = own_steps(data, rank, world, sharded, plan.steps)
        count = planned(data, rank, world, sharded)
        index = plan.steps  # this process's batches so far
        try:
            while True:
                n, batch_ids, tensors, event, failure = -1, None, None, None, None
                try:
                    failure = writer.reap()
                    batch = next(steps)
                    if batch is not None and failure is None:
                        batch, batch_ids = _batch_ids(batch, index, source)
                        hooks.start_pass()
                        _run_forward(inner, batch, where, forward)
                        acts = hooks.activations
                        n = _rows(acts, index)
                        if captured is None:
                            captured = list(acts)
                        elif list(acts) != captured:
                            raise ValueError(f"batch {index} captured layers {list(acts)}, the "
                                             f"first {captured}")
                        if batch_ids is not None and len(batch_ids) != n:
                            raise ValueError(f"batch {index} carries {len(batch_ids)} ids for "
                                             f"{n} rows")
                        tensors, event = to_host(acts, n, store_dtype)
                        index += 1
                except Exception as err:  # every process learns of it at the gather
                    if world == 1:
                        raise
                    failure = err
                info = comm.gather([n, int(batch_ids is not None), writer.written(),
                                    int(failure is not None), count])
                if failure is not None:
                    raise failure
                if info[:, FAILED].any():
                    raise RuntimeError("repsim.extract failed on rank "
                                       f"{int(np.argmax(info[:, FAILED]))}; see its error")
                rows = info[:, ROWS]
                if (rows < 0).all():
                    break
                source = _agreed_source(info, source, writer.step == 0)
                writer.attrs["example_id_source"] = source
                bar.update(writer.place(info, tensors, event, batch_ids))
            writer.finish()
        except BaseException:
            writer.settle()  # commits the progress of the writes that finished
            raise
    return S.open_activations(out)


def _rows(acts: dict, index: int) -> int:
    """The rows every layer of a batch gives (one per example)."""
    rows = {k: int(v.shape[0]) for k, v in acts.items()}
    n = next(iter(rows.values()))
    if any(r != n for r in rows.values()):
        raise ValueError(f"batch {index}: layers give different numbers of rows {rows}; a "
                         "store needs one row per example in every layer")
    return n


def _agreed(comm: Comm, make: Callable[[], _Plan]) -> _Plan:
    """Rank 0's ``make()`` on every rank; its ValueError raised on every rank."""
    result: _Plan | str | None = None
    if comm.rank == 0:
        try:
            result = make()
        except ValueError as err:
            if comm.world == 1:
                raise
            result = str(err)
    result = comm.broadcast(result)
    if isinstance(result, str):
        raise ValueError(result)
    assert result is not None
    return result


def _agreed_source(info: np.ndarray, source: str, first: bool) -> str:
    """Where the ids come from, after the first step: ``"dataset"`` when the batches
    carry them -- on every process with a batch, or on none."""
    carried = info[info[:, ROWS] >= 0, HAS_IDS]
    if not first or not carried.any():
        return source
    if not carried.all():
        raise ValueError(f"the first batches of ranks {np.flatnonzero(info[:, HAS_IDS]).tolist()}"
                         f" carry {S.IDS!r} and the others' do not; every batch must carry its "
                         "ids, or none")
    return "dataset"
