"""Checkpoints of :func:`repsim.compare_models`: what identifies a comparison, and the file.

A checkpoint holds the accumulator's :meth:`~repsim._accumulator.Accumulator.state_dict`
(the declared states, their options and layout; nothing here knows the fields), the
position in the loader, and a *config* that identifies the comparison: the layers, the
options of the hooks and the driver, every callable by a portable identity
(:func:`repsim._accumulator.callable_identity`), and a fingerprint of each model's
parameters and buffers. Resuming with anything different is refused with the list of
what differs; the file is written atomically (write, then rename).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from .._accumulator import callable_identity
from .._io import atomic_write

FORMAT = 2  # payload layout: {"format", "config", "epoch", "batch", "seen", "state"}


def model_fingerprint(model: nn.Module) -> str:
    """sha256 (first 16 hex digits) of every parameter and buffer: names, dtypes, shapes
    and bytes, so a checkpoint cannot resume with other weights."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        if not isinstance(value, torch.Tensor):
            digest.update(f"{name}={value!r};".encode())
            continue
        t = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{t.dtype}:{tuple(value.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def option_identity(name: str, value: Any, checkpointed: bool) -> Any:
    """A portable description of an option (callables by identity; dicts per entry).

    Raises
    ------
    ValueError
        For a callable a new process cannot find again (a lambda, a local function, an
        object whose repr is a memory address) when ``checkpointed``: its checkpoint
        could never be resumed.
    """
    if isinstance(value, dict):
        return {str(k): option_identity(f"{name}[{k!r}]", v, checkpointed)
                for k, v in value.items()}
    if not callable(value):
        return value
    text, portable = callable_identity(value)
    if checkpointed and not portable:
        raise ValueError(
            f"{name}={text} cannot be identified by a new process (a lambda, a function "
            "defined inside another, or an object without a stable repr), so a "
            "checkpointed run could never resume: define it at module level (or use "
            "functools.partial of one), or pass checkpoint=None"
        )
    return text


def checkpoint_config(plain: dict, hooks: list, models: list, forward: Any) -> dict:
    """What identifies a checkpointed comparison, besides the accumulator's own options
    and layout (which travel in its state_dict and are checked by its load_state_dict):
    ``plain`` entries, each hooks object's options and repeat policy (``_b`` suffix for
    model B's), the ``forward`` callable, and each model's weight fingerprint.

    Raises
    ------
    ValueError
        For a callable that a new process could not find again (see
        :func:`option_identity`).
    """
    config = dict(plain)
    for suffix, h in zip(("", "_b"), hooks):
        for key in ("select", "pooling", "transform", "repeated"):
            config[key + suffix] = option_identity(key, getattr(h, key), True)
    config["forward"] = option_identity("forward", forward, True)
    for suffix, model in zip(("a", "b"), models):
        config["weights_" + suffix] = model_fingerprint(model)
    return config


def _portable(value: Any) -> Any:
    """numpy arrays -> CPU tensors (``torch.load(weights_only=True)`` reads them back)."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return value


def save_checkpoint(path: str, acc: Any, config: dict, epoch: int, batch: int, seen: int) -> None:
    """Write the accumulator's state and the loader position atomically
    (:func:`repsim.results.atomic_write`)."""
    state = {k: _portable(v) for k, v in acc.state_dict().items()}
    payload = {"format": FORMAT, "config": config, "epoch": epoch, "batch": batch,
               "seen": seen, "state": state}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _unreadable(path: str, why: str) -> ValueError:
    return ValueError(
        f"checkpoint {os.fspath(path)!r} cannot be resumed: {why}. It is not a complete "
        "checkpoint of repsim.compare_models; delete it (or pass another checkpoint path) "
        "to start afresh"
    )


def load_checkpoint(path: str, acc: Any, config: dict, device: Any) -> tuple[int, int, int]:
    """Restore ``acc`` from ``path`` after checking that it is this comparison's.

    Returns
    -------
    (epoch, batch, seen)
        Where to continue in the loader.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # empty, truncated, or another kind of file
        raise _unreadable(path, f"reading it failed ({type(e).__name__})") from None
    keys = {"format", "config", "epoch", "batch", "seen", "state"}
    if not isinstance(payload, dict) or not keys <= set(payload):
        raise _unreadable(path, "it does not hold a repsim checkpoint's entries")
    if payload["format"] != FORMAT:
        raise _unreadable(path, f"it has format {payload['format']!r}, this repsim writes "
                                f"format {FORMAT}")
    saved = payload["config"] if isinstance(payload["config"], dict) else {}
    diff = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
    if diff:
        shown = "; ".join(f"{k}: {saved.get(k)!r} then, {config.get(k)!r} now" for k in diff)
        raise ValueError(
            f"checkpoint {os.fspath(path)!r} was written by a different comparison "
            f"(differs in {shown}); delete it or pass another checkpoint path"
        )
    state = {k: v.to(device) if isinstance(v, torch.Tensor) else v
             for k, v in payload["state"].items()}
    try:
        acc.load_state_dict(state)
    except (ValueError, TypeError) as e:
        raise ValueError(f"checkpoint {os.fspath(path)!r} was written by a different "
                         f"comparison: {e}; delete it or pass another checkpoint path") from None
    return int(payload["epoch"]), int(payload["batch"]), int(payload["seen"])


def rank_path(path: Any, rank: int, world: int) -> str:
    """``<stem>.rank<r>of<w><ext>`` under torch.distributed, ``path`` otherwise."""
    path = os.fspath(path)
    if world == 1:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}.rank{rank}of{world}{ext}"
