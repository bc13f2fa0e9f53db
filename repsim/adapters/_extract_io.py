"""Where :func:`repsim.extract`'s batches go: host copies, the processes' agreement, and
region writes into one Zarr store.

* :func:`to_host` converts each layer to the storage dtype in torch and starts its copy to
  host memory without waiting (pinned and non-blocking from a CUDA device; the hooked
  activations are already copies), and :func:`host_arrays` -- run on the writer thread --
  waits for it, so the main thread only launches work.
* :class:`Comm` is what the processes agree on: one ``all_gather`` of a few integers per
  step (each rank's rows, whether its batch carried ids, the steps it has written, whether
  it failed), a barrier, a broadcast of the run's plan. Outside ``torch.distributed`` it is
  the identity, and the same loop runs.
* The arrays are grown ahead of the writes (to a capacity, so metadata is rewritten rarely)
  by one process while the others wait at a barrier; :mod:`._extract_regions` writes each
  batch's rows into them.
* :func:`own_steps` yields this process's batch of every step (None once it has none).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any, Iterator

import numpy as np
import torch

from .. import store as S
from ._extract_regions import Regions, lock_path

#: the least time between two commits of progress (each is a metadata write through zarr,
#: which on a CPU busy with the forward passes waited ~0.1 s for the interpreter)
COMMIT_SECONDS = 1.0

#: columns of the per-step gather: rows (-1: no batch), ids carried, steps written, failed,
#: batches this process will run in all (-1: unknown)
ROWS, HAS_IDS, WRITTEN, FAILED, PLANNED = range(5)


# ------------------------------------------------------------------------- host copies

#: torch's dtype for each storage dtype: the conversion runs in torch, where the tensors
#: are (vectorised, and on a GPU before the copy, which it halves for 16-bit storage)
TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                "float64": torch.float64}


def to_host(acts: dict[str, torch.Tensor], n: int, dtype: np.dtype):
    """Each layer as ``(n, features)`` of the storage ``dtype`` on its way to host memory,
    and the CUDA event that marks the copies' end (None when nothing is on a GPU).

    Values beyond a 16-bit dtype's range are refused, naming the layer: at once on the
    CPU (a pass over the layer's range first, the exact test only when it is exceeded),
    after the copy (:func:`host_arrays`) from a GPU."""
    target = TORCH_DTYPES[dtype.name]
    out, event, overflow = {}, None, {}
    for name, value in acts.items():
        value = value.detach()
        value = value.reshape(n, -1) if n else value.reshape(0, math.prod(value.shape[1:]))
        if value.dtype != target:
            narrow = value.to(target)
            if dtype.itemsize < 4 and value.numel() and not value.is_cuda:
                _check_range(name, value, narrow, target)
            elif dtype.itemsize < 4 and value.numel():
                overflow[name] = (_overflowed(value, narrow), value.abs().amax())
            value = narrow
        if value.is_cuda:
            value = value.to("cpu", non_blocking=True)  # into pinned memory, not waited on
            event = event or torch.cuda.Event()
        out[name] = value
    if event is not None:
        event.record()
    return (out, overflow), event


def _overflowed(value: torch.Tensor, narrow: torch.Tensor) -> torch.Tensor:
    """Whether a finite value became infinite (a 0-d boolean tensor, not waited on)."""
    return (torch.isfinite(value) & ~torch.isfinite(narrow)).any()


def _check_range(name: str, value, narrow, target) -> None:
    limit = torch.finfo(target).max
    lo, hi = (float(v) for v in torch.aminmax(value))
    if -limit <= lo and hi <= limit:  # (False for NaN: then the exact test)
        return
    if bool(_overflowed(value, narrow)):
        _refuse(name, float(value[torch.isfinite(value)].abs().max()), target)


def _refuse(name: str, largest: float, target) -> None:
    kind = str(target).removeprefix("torch.")
    raise ValueError(f"layer {name!r} holds values up to {largest:.4g}, beyond {kind}'s range "
                     f"({float(torch.finfo(target).max):.4g}); store dtype='float32'")


def host_arrays(sent, event, dtype: np.dtype) -> dict[str, Any]:
    """The layers :func:`to_host` sent as numpy arrays of the storage ``dtype`` (after the
    copies' ``event``), and the range test of layers that were narrowed on a GPU."""
    tensors, overflow = sent
    if event is not None:
        event.synchronize()
    for name, (flag, largest) in overflow.items():
        if bool(flag):
            _refuse(name, float(largest), TORCH_DTYPES[dtype.name])
    out = {}
    for name, t in tensors.items():
        if t.dtype == torch.bfloat16:  # numpy has none: the same bits as ml_dtypes'
            out[name] = t.view(torch.int16).numpy().view(dtype)
        else:
            out[name] = t.numpy()
    return out


# ------------------------------------------------------------------------ the processes

class Comm:
    """The collectives of one run (``world == 1``: none; every call returns at once)."""

    def __init__(self, rank: int, world: int, device: torch.device):
        self.rank, self.world, self.device = rank, world, device

    def gather(self, row: list[int]) -> np.ndarray:
        """Every rank's ``row``, shape (world, len(row)), in rank order."""
        if self.world == 1:
            return np.asarray([row], dtype=np.int64)
        dist = torch.distributed
        t = torch.tensor(row, dtype=torch.int64, device=self.device)
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t)
        return torch.stack(parts).cpu().numpy()

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def own_steps(data, rank: int, world: int, sharded: bool, start: int) -> Iterator[Any]:
    """This process's batch of each step from ``start`` on, then None for ever.

    ``sharded`` (an iterable every rank iterates whole): step ``k`` of rank ``r`` is batch
    ``k * world + r``. Otherwise (a loader with a ``DistributedSampler``, or one process)
    step ``k`` is this process's ``k``-th batch."""
    for index, batch in enumerate(data):
        step, mine = (index // world, index % world == rank) if sharded else (index, True)
        if mine and step >= start:
            yield batch
    while True:
        yield None


def planned(data, rank: int, world: int, sharded: bool) -> int:
    """How many batches this process will run, or -1 where ``data`` has no length."""
    try:
        total = len(data)
    except TypeError:
        return -1
    return max(0, -(-(total - rank) // world)) if sharded else total


def grown(needed: int, capacity: int) -> int:
    """The next capacity of the arrays: at least ``needed``, at least twice the last."""
    return max(needed, 2 * capacity)


# ---------------------------------------------------------------------------- the writer

def _codec(name: str) -> Any:
    """The Zarr compressors of ``extract(compression=name)``."""
    from zarr.codecs import BloscCodec, ZstdCodec

    return {"lz4": (BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle"),),
            "zstd": (ZstdCodec(level=0),), "none": None}[name]


class Writer:
    """Places each step's batches in the store and writes them on one background thread.

    After every step's gather all processes know every rank's rows, so the examples are
    ordered by (step, rank, row) and rank ``r``'s batch starts after all rows of earlier
    steps and of lower ranks in its step. The first rank with a batch (rank 0 whenever
    rank 0 has one) creates the store through xarray with its batch as rows ``0 : n``;
    the others wait at a barrier. The arrays grow ahead of the writes (``grown``): every
    process drains its writes, rank 0 resizes between two barriers. Progress is committed
    to the store's attributes as ``examples_done`` / ``batches_done`` (and ``steps_done``
    under torch.distributed) once every process has written those steps, at most once a
    second and when the run stops: one process after its writes; several through rank 0,
    the steps every rank's last gather reported written. ``.npz`` / safetensors outputs
    (one process) collect the batches in order instead.
    """

    def __init__(self, out: str, fmt: str, plan, comm: Comm, attrs: dict, chunk: int | None,
                 dtype: np.dtype, given: np.ndarray | None, pool, depth: int = 2):
        self.out, self.fmt, self.comm, self.attrs = out, fmt, comm, attrs
        self.chunk, self.dtype, self.given, self.pool, self.depth = chunk, dtype, given, pool, \
            depth
        self.total, self.batches, self.step = plan.examples, plan.batches, plan.steps
        self.capacity, self.created = plan.length, plan.steps > 0
        self.history = {plan.steps: (plan.examples, plan.batches)}
        self.committed = plan.steps
        self.estimate = 0
        self.regions = Regions(out, shared=comm.world > 1) if fmt == "zarr" else None
        if self.created and self.regions is not None:
            self.regions.open()
        self.collected: dict[str, list] = {}
        self.collected_ids: list = []
        self.pending: Any = []  # (step, future), oldest first
        self.latest: tuple[int, int, int] | None = None  # progress not yet committed
        self.committed_at = -float("inf")
        self.group: Any = None  # the store's group, for commits

    # -- the main thread ------------------------------------------------------------------

    def written(self) -> int:
        """Steps this process has written whole (the gather's WRITTEN column)."""
        return self.pending[0][0] if self.pending else self.step

    def reap(self, block_until: int | None = None) -> BaseException | None:
        """Forget finished writes (waiting until at most ``block_until`` are pending); the
        first error among them."""
        failure = None
        while self.pending and (self.pending[0][1].done() or (
                block_until is not None and len(self.pending) > block_until)):
            err = self.pending.pop(0)[1].exception()
            failure = failure or err
        return failure

    def place(self, info: np.ndarray, tensors, event, own_ids) -> int:
        """Step ``self.step``'s batches (``info`` from the gather; this rank's ``tensors``
        and the ids its batch carried): offsets, ids, the store created or grown, this
        rank's write queued. Returns the number of batches in the step."""
        rank, rows = self.comm.rank, info[:, ROWS]
        sizes = np.maximum(rows, 0)
        start, new_total = self.total + int(sizes[:rank].sum()), self.total + int(sizes.sum())
        if self.given is not None and new_total > len(self.given):
            raise ValueError(f"ids holds {len(self.given)} ids; the data have more examples "
                             f"(at least {new_total})")
        if not self.estimate:
            per = info[:, PLANNED]
            self.estimate = int(per.sum()) * int(rows.max()) if (per >= 0).all() \
                else 64 * (new_total - self.total)
        n = int(rows[rank])
        ids = None
        if n >= 0:
            ids = self.given[start:start + n] if self.given is not None else own_ids \
                if own_ids is not None else np.arange(start, start + n, dtype=np.int64)
            if ids.dtype.kind in "US":
                ids = ids.astype(object)
        count = int((rows >= 0).sum())
        batches = self.batches + count
        commit = (new_total, batches, self.step + 1) if self.comm.world == 1 else None
        if self.regions is not None and not self.created:
            creator = int(np.argmax(rows >= 0))
            self.capacity = max(new_total, self.estimate)
            if rank == creator:
                self._create(host_arrays(tensors, event, self.dtype), ids, commit)
            self.comm.barrier()
            if rank != creator:
                self.regions.open()
                if n >= 0:
                    self._submit(tensors, event, start, ids, commit)
            self.created = True
        else:
            if self.regions is not None and new_total > self.capacity:
                self._grow(max(grown(new_total, self.capacity), self.estimate))
            if n >= 0:
                self._submit(tensors, event, start, ids, commit)
        self.total, self.batches, self.step = new_total, batches, self.step + 1
        self.history[self.step] = (self.total, self.batches)
        if self.comm.world > 1 and rank == 0:
            self._commit_agreed(int(info[:, WRITTEN].min()))
        return count

    def finish(self) -> None:
        """Wait for every write, agree that all succeeded, and mark the store complete (cut
        to its examples), or write the file."""
        failure = self.reap(block_until=0)
        info = self.comm.gather([0, 0, 0, failure is not None, 0])
        if failure is not None:
            raise failure
        self.latest = None  # the final attributes below say it all
        if info[:, FAILED].any():
            raise RuntimeError(f"repsim.extract failed on rank {int(np.argmax(info[:, FAILED]))}; "
                               "see its error")
        if self.total == 0 and self.batches == 0:
            raise ValueError("data yielded no batches")
        if self.given is not None and len(self.given) != self.total:
            raise ValueError(f"ids holds {len(self.given)} ids for {self.total} examples")
        final = {"examples_done": self.total, "batches_done": self.batches, "complete": True}
        if self.regions is not None:
            self.regions.cache.flush()
        if self.regions is None:
            self._write_file(final)
            return
        if self.comm.rank == 0:
            import zarr

            self.regions.resize(self.total)
            group = zarr.open_group(self.out, mode="r+")
            attrs = dict(group.attrs)
            keys = [S.FORMAT_KEY, "layers", "repsim_version"] + [
                k for k in attrs if k not in (S.FORMAT_KEY, "layers", "repsim_version",
                                              "world_size", "steps_done", *final)]
            group.attrs.put({**{k: attrs[k] for k in keys}, **final})
            with contextlib.suppress(FileNotFoundError):
                os.remove(lock_path(self.out))
        self.comm.barrier()

    def settle(self) -> None:
        """After a failure: wait for the writes under way and commit the progress they
        made (best effort: the failure, not this, is what the caller reports)."""
        with contextlib.suppress(Exception):
            self.reap(block_until=0)
            self.flush()

    # -- helpers --------------------------------------------------------------------------

    def _submit(self, tensors, event, start, ids, commit) -> None:
        self.reap(block_until=self.depth - 1)  # errors surface at the next reap/gather
        self.pending.append((self.step, self.pool.submit(self._task, tensors, event, start,
                                                         ids, commit)))

    def _task(self, tensors, event, start, ids, commit) -> None:
        arrays = host_arrays(tensors, event, self.dtype)
        if self.regions is None:
            for k, v in arrays.items():
                self.collected.setdefault(k, []).append(v)
            self.collected_ids.append(ids)
        else:
            self.regions.write(start, arrays, ids)
            if commit is not None:
                self._commit(*commit)

    def _create(self, arrays, ids, commit) -> None:
        import xarray as xr

        ds = xr.Dataset({k: ((S.EXAMPLE, S.feature_dim(k)), v) for k, v in arrays.items()},
                        coords={S.IDS: (S.EXAMPLE, ids)})
        self.attrs["layers"] = list(arrays)
        ds.attrs = dict(self.attrs)
        size = self.chunk or max(len(ids), 1)
        codec = _codec(self.attrs.get("compression", "zstd"))
        encoding: dict[str, Any] = {k: {"chunks": (size, v.shape[1]), "compressors": codec}
                                    for k, v in arrays.items()}
        encoding[S.IDS] = {"chunks": (size,), "compressors": codec}
        ds.to_zarr(self.out, mode="w", consolidated=False, encoding=encoding)
        assert self.regions is not None
        self.regions.open()
        self.regions.written([(arr, 0, len(ids)) for arr in self.regions.arrays.values()])
        self.regions.resize(self.capacity)
        if commit is not None:
            self._commit(*commit)

    def _grow(self, capacity: int) -> None:
        """Every process drains its writes; rank 0 resizes the arrays between barriers."""
        failure = self.reap(block_until=0)
        assert self.regions is not None
        self.comm.barrier()
        if self.comm.rank == 0:
            self.regions.resize(capacity)
        self.comm.barrier()
        self.regions.open()
        self.capacity = capacity
        if failure is not None:  # reported by the next gather
            self.pending.append((self.step, _failed(failure)))

    def _commit(self, examples: int, batches: int, steps: int) -> None:
        """Record progress (on the writer thread): at most once every ``COMMIT_SECONDS``,
        the latest progress kept for :meth:`flush` otherwise."""
        self.latest = (examples, batches, steps)
        if time.monotonic() - self.committed_at >= COMMIT_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write the latest progress not yet in the store's attributes (writer idle)."""
        if self.latest is None:
            return
        import zarr

        examples, batches, steps = self.latest
        update = {"examples_done": examples, "batches_done": batches}
        if self.comm.world > 1:
            update["steps_done"] = steps
        if self.group is None:
            self.group = zarr.open_group(self.out, mode="r+")
        self.group.attrs.update(update)
        self.latest, self.committed_at = None, time.monotonic()

    def _commit_agreed(self, steps: int) -> None:
        """Rank 0 queues the commit of ``steps`` (written by every rank) after its writes."""
        if steps > self.committed and steps in self.history:
            examples, batches = self.history[steps]
            self.pending.append((self.step, self.pool.submit(self._commit, examples, batches,
                                                             steps)))
            self.committed = steps
        for old in [s for s in self.history if s < self.committed]:
            del self.history[old]

    def _write_file(self, final: dict) -> None:
        layers = {k: np.concatenate(v) for k, v in self.collected.items()}
        ids = np.concatenate(self.collected_ids)
        attrs = {**self.attrs, "layers": list(layers), **final}
        (S.write_npz if self.fmt == "npz" else S.write_safetensors)(self.out, layers, ids, attrs)


def _failed(err: BaseException):
    from concurrent.futures import Future

    f: Future = Future()
    f.set_exception(err)
    return f
