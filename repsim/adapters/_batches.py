"""Running the loader's batches for :func:`repsim.compare_models`.

Which batches this process runs, in which epoch, from where a checkpoint resumes
(:func:`_batches`, the one place for epoch, shard and resume decisions), and how one batch
reaches a model: on its device (:func:`_model_device`, :func:`_to_device`), in inference
mode with every training flag restored (:func:`_inference`), and through the model or a
user ``forward`` (:func:`_run_forward`).
"""

from __future__ import annotations

import collections.abc
import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch


def _model_device(model, device):
    if device is not None:
        return torch.device(device)
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _to_device(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _run_forward(model, batch, device, forward):
    """Forward one loader batch: tensor, (input, target, ...) sequence, or dict of kwargs."""
    if isinstance(batch, collections.abc.Mapping) and not isinstance(batch, dict):
        # transformers' BatchEncoding (a UserDict): keyword arguments, moved entry by entry
        batch = dict(batch) if forward is None or not hasattr(batch, "to") else batch.to(device)
    batch = _to_device(batch, device)
    if forward is not None:
        return forward(model, batch)
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (list, tuple)) and batch:
        return model(batch[0])
    raise TypeError(
        "loader batches must be tensors, (input, target) sequences or dicts of model "
        f"keyword arguments; got {type(batch).__name__} (pass forward=(model, batch) -> "
        "output for other layouts)"
    )


@contextlib.contextmanager
def _inference(models, eval_mode):
    """eval() + inference_mode for the comparison; every module's training flag restored."""
    flags = [(m, m.training) for model in models for m in model.modules()]
    try:
        if eval_mode:
            for model in models:
                model.eval()
        with torch.inference_mode():
            yield
    finally:
        for m, flag in flags:
            m.training = flag


def _epoch_seed(seed, epoch):
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


@dataclass
class _Step:
    """One position of the run: a batch (``index``; ``mine``: this process runs it) or,
    with ``index=None``, the end of ``epoch``. ``seen`` counts batches before it."""

    epoch: int
    index: int | None
    seen: int
    batch: Any = None
    mine: bool = False


def _batches(loader, *, epochs, seed, start, sharded, rank, world) -> Iterator[_Step]:
    """Every epoch, shard and resume decision in one place.

    Seeds torch's RNG from ``(seed, epoch)`` and calls ``set_epoch`` on the loader's
    samplers at each epoch start, skips what a checkpoint already holds (``start`` =
    ``(epoch, batch, seen)``), and marks round-robin shards (``index % world == rank``)
    unless the loader shards itself.
    """
    start_epoch, start_batch, seen = start
    for epoch in range(start_epoch, epochs):
        torch.manual_seed(_epoch_seed(seed, epoch))
        for obj in (getattr(loader, "sampler", None),
                    getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
            set_epoch = getattr(obj, "set_epoch", None)
            if set_epoch is not None:
                set_epoch(epoch)
        first = start_batch if epoch == start_epoch else 0
        index = -1
        for index, batch in enumerate(loader):
            if index < first:
                continue
            yield _Step(epoch, index, seen, batch, not sharded or index % world == rank)
            seen += 1
        if index < 0 and epoch > 0:
            raise ValueError(
                f"loader yielded no batches in epoch {epoch} (a one-shot iterator?); "
                "pass a loader that can be iterated once per epoch"
            )
        yield _Step(epoch, None, seen)
