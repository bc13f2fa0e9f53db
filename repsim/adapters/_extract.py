"""Extract once: one forward pass over the data, every selected layer written to a store.

:func:`extract` runs the batches through :class:`repsim.GramHooks` built with
``features=True`` (so every pooling, the transformers support and ``select`` work as in
:func:`repsim.compare_models`), and appends each batch's pooled activations to a Zarr store
through xarray (or collects them for a ``.npz`` file). The write of batch ``k`` runs on a
background thread while batch ``k + 1`` computes; after each write the store's
``examples_done`` / ``batches_done`` attributes are committed, so a killed run resumes
there: arrays longer than ``examples_done`` (a write cut short) are cut back, and the
batches already stored are skipped without a forward pass.
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
from ._hooks import GramHooks
from ._selection import LayerSpec, unwrap_model

__all__ = ["extract", "fingerprint"]

DTYPES = ("float32", "float16", "bfloat16", "float64")
V.register_params("extract", dtype=V.Options(*DTYPES))
#: attributes that must agree for a run to resume a store
IDENTITY = ("model_fingerprint", "hooked_modules", "pooling", "dtype", "example_id_source")


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


def _storage_dtype(dtype: str, npz: bool):
    V.check_params("extract", dtype=dtype)
    if dtype != "bfloat16":
        return np.dtype(dtype)
    import ml_dtypes
    import zarr

    try:
        zarr.create_array(store={}, shape=(1,), dtype=ml_dtypes.bfloat16)
    except (ValueError, TypeError) as err:
        raise ValueError(f"dtype='bfloat16': zarr {zarr.__version__} cannot store it "
                         f"({err}); store dtype='float16' (its CKA error is in the store "
                         "guide) or 'float32'") from None
    if npz:
        raise ValueError("dtype='bfloat16' cannot be written to a .npz file (numpy has no "
                         "bfloat16); write a Zarr store or choose 'float16'")
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


def _stored(arr: torch.Tensor, dtype, name: str) -> np.ndarray:
    with np.errstate(over="ignore"):  # overflow is refused below, naming the layer
        out = arr.detach().to("cpu").numpy().astype(dtype)
    if dtype.itemsize < 4 and not np.isfinite(out).all() and np.isfinite(arr.cpu().numpy()).all():
        big = float(arr.abs().max())
        raise ValueError(f"layer {name!r} holds values up to {big:.4g}, beyond "
                         f"{dtype.name}'s range ({float(np.finfo(dtype).max):.4g}); store "
                         "dtype='float32'")
    return out


@dataclass
class _State:
    """How far the writes got: examples and batches committed, the captured layers."""

    done: int
    batches: int
    layers: list | None = None


def _resume_state(out: str, identity: dict, overwrite: bool):
    """(examples done, batches done, complete) of the store at ``out``; (0, 0, False) to
    start afresh. Refuses a folder that is not a store, or a store of another run."""
    if not os.path.exists(out):
        return 0, 0, False
    if overwrite:
        shutil.rmtree(out) if os.path.isdir(out) else os.remove(out)
        return 0, 0, False
    import zarr

    if not S.is_zarr(out):
        raise ValueError(f"out={out!r} exists and is not a Zarr store; pass overwrite=True "
                         "to replace it")
    group = zarr.open_group(out, mode="r+")
    attrs: dict[str, Any] = dict(group.attrs)
    if attrs.get(S.FORMAT_KEY) != S.FORMAT:
        raise ValueError(f"out={out!r} is a Zarr store that repsim.extract did not write; "
                         "pass overwrite=True to replace it")
    for key in IDENTITY:
        if key in attrs and attrs[key] != identity[key]:
            raise ValueError(f"out={out!r} holds another extraction ({key} is "
                             f"{attrs[key]!r}, this run's is {identity[key]!r}); pass "
                             "overwrite=True to replace it, or another out")
    if "examples_done" not in attrs:  # the first write did not finish
        return 0, 0, False
    done = int(attrs["examples_done"])
    for _, arr in group.arrays():  # cut back a write that was cut short
        if arr.shape[0] != done:
            arr.resize((done,) + tuple(arr.shape[1:]))
    return done, int(attrs["batches_done"]), bool(attrs.get("complete", False))


def extract(model: nn.Module, data: Iterable[Any], *, layers: LayerSpec, out: str | os.PathLike,
            pooling: str | Callable[[torch.Tensor], torch.Tensor] = "flatten",
            ids: Any = None, dtype: str = "float32", select: Any = None,
            repeated: str = "error", forward: Callable[[nn.Module, Any], Any] | None = None,
            device: str | torch.device | None = None, eval_mode: bool = True,
            chunk: int | None = None, seed: int = 0, progress: bool = True,
            overwrite: bool = False) -> xr.Dataset:
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
        resumable; or a ``.npz`` file, written once at the end (small cases).
    pooling, select, repeated
        How a module's output becomes ``(rows, features)``; see :class:`repsim.GramHooks`.
    ids : sequence, optional
        The ids of all examples, in data order (one per row; unique). Default: the batches'
        ``"example_id"`` entries, else the running index ``0, 1, ...``.
    dtype : {"float32", "float16", "bfloat16", "float64"}, default "float32"
        Storage dtype, recorded in the attributes. ``"float16"`` halves the store; values
        beyond its range are refused. ``"bfloat16"`` is refused where zarr cannot store it
        (zarr 3.1 cannot).
    forward : callable, optional
        ``forward(model, batch)`` for other batch layouts or entry points.
    device : str or torch.device, optional
        Where the forward runs; default: the model's.
    chunk : int, optional
        Examples per Zarr chunk; default: the first batch's rows.
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
        :func:`repsim.open_activations` of ``out``: one variable per captured layer, dims
        ``("example", "<layer>_feature")``, coordinate ``example_id``; attrs ``layers``
        (as captured), ``hooked_modules``, ``model_fingerprint`` (:func:`fingerprint`),
        ``pooling``, ``dtype``, ``example_id_source`` (``"given"``, ``"dataset"`` or
        ``"index"``), ``repsim_version``, ``examples_done``, ``batches_done``,
        ``complete``.

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
    npz = out.lower().endswith(".npz")
    store_dtype = _storage_dtype(dtype, npz)
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
    }
    if npz:
        if os.path.exists(out) and not overwrite:
            raise ValueError(f"out={out!r} exists; pass overwrite=True to replace it")
        done, skip, complete = 0, 0, False
    else:
        if S.is_zarr(out) and not overwrite:  # a store of ids from the data says so
            import zarr

            stored = zarr.open_group(out, mode="r").attrs.get("example_id_source")
            if stored == "dataset" and given is None:
                identity["example_id_source"] = "dataset"
        done, skip, complete = _resume_state(out, identity, overwrite)
    if complete:
        return S.open_activations(out)
    if given is not None and done:
        stored_ids = np.asarray(xr.open_zarr(out, consolidated=False)[S.IDS].values)
        if stored_ids.tolist() != given[:done].tolist():
            raise ValueError(f"out={out!r} holds ids that differ from ids[:{done}]; pass "
                             "overwrite=True to start again")
    where = _model_device(inner, device)
    if device is not None:
        inner.to(where)
    collected: dict[str, list] = {}
    collected_ids: list = []
    state = _State(done, skip)
    total = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]

    def write(acts: dict[str, np.ndarray], batch_ids: np.ndarray, first: bool) -> None:
        import zarr

        rows = len(batch_ids)
        if npz:
            for k, v in acts.items():
                collected.setdefault(k, []).append(v)
            collected_ids.append(batch_ids)
        else:
            ds = xr.Dataset({k: ((S.EXAMPLE, S.feature_dim(k)), v) for k, v in acts.items()},
                            coords={S.IDS: (S.EXAMPLE, batch_ids)})
            # xarray writes a Dataset's attrs over the group's: every write carries all of
            # them, with the progress of the writes before it (committed once it is done)
            ds.attrs = {S.FORMAT_KEY: S.FORMAT, "layers": list(acts),
                        "repsim_version": __version__, **identity,
                        "examples_done": state.done, "batches_done": state.batches,
                        "complete": False}
            if first:
                size = chunk or rows
                encoding: dict[str, Any] = {k: {"chunks": (size, v.shape[1])}
                                            for k, v in acts.items()}
                encoding[S.IDS] = {"chunks": (size,)}
                ds.to_zarr(out, mode="w", consolidated=False, encoding=encoding)
            else:
                ds.to_zarr(out, append_dim=S.EXAMPLE, consolidated=False)
            group = zarr.open_group(out, mode="r+")
            group.attrs.update({"examples_done": state.done + rows,
                                "batches_done": state.batches + 1})
        state.done += rows
        state.batches += 1

    bar = _progress(total=total, initial=skip, desc="extract", enabled=progress, unit="batch")
    pending = None
    with torch.random.fork_rng(devices=[]), ThreadPoolExecutor(1) as pool, bar, hooks, \
            _inference([inner], eval_mode):
        torch.manual_seed(seed)
        for index, batch in enumerate(data):
            if index < skip:
                continue
            batch, batch_ids = _batch_ids(batch, index, identity["example_id_source"])
            if batch_ids is not None:
                identity["example_id_source"] = "dataset"
            hooks.start_pass()
            _run_forward(inner, batch, where, forward)
            acts = hooks.activations
            rows = {k: int(v.shape[0]) for k, v in acts.items()}
            n = next(iter(rows.values()))
            if any(r != n for r in rows.values()):
                raise ValueError(f"batch {index}: layers give different numbers of rows "
                                 f"{rows}; a store needs one row per example in every layer")
            if state.layers is None:
                state.layers = list(acts)
            elif list(acts) != state.layers:
                raise ValueError(f"batch {index} captured layers {list(acts)}, the first "
                                 f"{state.layers}")
            arrays = {k: _stored(v.reshape(n, -1), store_dtype, k) for k, v in acts.items()}
            if pending is not None:
                pending.result()  # the previous write is committed before this one starts
            start = state.done
            if given is not None:
                batch_ids = given[start:start + n]
                if len(batch_ids) != n:
                    raise ValueError(f"ids holds {len(given)} ids; the data have more "
                                     f"examples (at least {start + n})")
            elif batch_ids is None:
                batch_ids = np.arange(start, start + n, dtype=np.int64)
            elif len(batch_ids) != n:
                raise ValueError(f"batch {index} carries {len(batch_ids)} ids for {n} rows")
            if batch_ids.dtype.kind in "US":
                batch_ids = batch_ids.astype(object)
            pending = pool.submit(write, arrays, batch_ids, start == 0)
            bar.update(1)
        if pending is not None:
            pending.result()
    n_done = state.done
    if n_done == 0:
        raise ValueError("data yielded no batches")
    if given is not None and len(given) != n_done:
        raise ValueError(f"ids holds {len(given)} ids for {n_done} examples")
    final = {"examples_done": n_done, "batches_done": state.batches, "complete": True}
    if npz:
        ids_all = np.concatenate(collected_ids)
        attrs = {S.FORMAT_KEY: S.FORMAT, "layers": state.layers,
                 "repsim_version": __version__, **identity, **final}
        S.write_npz(out, {k: np.concatenate(v) for k, v in collected.items()},
                    ids_all, attrs)
    else:
        import zarr

        zarr.open_group(out, mode="r+").attrs.update(final)
    return S.open_activations(out)
