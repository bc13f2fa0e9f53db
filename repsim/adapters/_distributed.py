"""torch.distributed helpers of the adapter: who runs which batch, and the all-reduce.

The all-reduce is the accumulator's own :meth:`~repsim._accumulator.Accumulator.sync`
with torch's collective: nothing here knows the accumulator's fields.
"""

from __future__ import annotations

from typing import Any

import torch


def _dist_context() -> tuple[int, int]:
    """(rank, world_size) of the default process group, or (0, 1) outside one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _presharded(loader):
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    inner = getattr(batch_sampler, "sampler", None)
    ds = torch.utils.data.distributed.DistributedSampler
    return isinstance(sampler, ds) or isinstance(inner, ds)


def _comm_device(device):
    backend = torch.distributed.get_backend()
    if backend == "nccl":
        return device if device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_accumulator(acc: Any, device: Any = None) -> Any:
    """Sum an accumulator's declared states over all processes of the default group.

    ``acc.sync(torch.distributed.all_reduce)`` on the right device: every process must
    call it with an accumulator over the same layers and options (checked first, so a
    mismatch raises the same error everywhere instead of hanging); afterwards each holds
    the sums of all processes, so ``acc.compute()`` gives the same result everywhere.

    Parameters
    ----------
    acc : repsim.MinibatchCKA (or any accumulator built on repsim._accumulator.Accumulator)
    device : torch.device, optional
        The device of the accumulator's tensors (where NCCL's check vector goes when this
        process has no batch).

    Returns
    -------
    Accumulator
        ``acc``, updated in place.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    return acc.sync(torch.distributed.all_reduce, device=_comm_device(device))
