"""Data and training: the held-out split, the training loop, one checkpoint record per model."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

import repsim

from .config import train_settings


def load_data(cfg, progress=True) -> dict:
    """Train/eval arrays as float32 ``(m, c, h, w)`` plus int64 labels and class names.

    digits: :func:`repsim.datasets.load_digits_images` (8x8, one channel, seeded split of
    ``digits_test_size`` held-out images). cifar10: the five training batches and the
    first ``n_eval`` images of a seeded permutation of the test batch; ``image_size=16``
    average-pools 2x2; channels standardised with the training set's statistics.
    ``x_out`` / ``y_out``: the first ``n_outputs`` images of the same order (the output
    analyses; they begin with the ``n_eval`` analysed images).
    """
    from repsim.datasets import CIFAR10_CLASSES, download_cifar10, load_cifar10, load_digits_images

    n_eval, n_out = cfg["n_eval"], cfg.get("n_outputs") or cfg["n_eval"]
    if cfg["dataset"] == "digits":
        xtr, ytr, xte, yte = load_digits_images(cfg["digits_test_size"], seed=cfg["split_seed"])
        return {"x_train": xtr, "y_train": ytr, "x_eval": xte[:n_eval], "y_eval": yte[:n_eval],
                "x_out": xte[:n_out], "y_out": yte[:n_out], "classes": [str(i) for i in range(10)]}
    data_dir = cfg["data_dir"] or download_cifar10(progress=progress)
    xtr, ytr = load_cifar10(data_dir, train=True)
    xte, yte = load_cifar10(data_dir, train=False)
    perm = np.random.default_rng(cfg["split_seed"]).permutation(len(yte))[: max(n_eval, n_out)]
    xte, yte = xte[perm], yte[perm]
    xtr, xte = resize(xtr, cfg["image_size"]), resize(xte, cfg["image_size"])
    mean = xtr.mean(axis=(0, 2, 3), keepdims=True)
    std = xtr.std(axis=(0, 2, 3), keepdims=True)
    xte = ((xte - mean) / std).astype(np.float32)
    return {"x_train": ((xtr - mean) / std).astype(np.float32), "y_train": ytr,
            "x_eval": xte[:n_eval], "y_eval": yte[:n_eval], "x_out": xte[:n_out], "y_out": yte[:n_out],
            "classes": list(CIFAR10_CLASSES)}


def resize(x, size):
    """uint8 images ``(m, c, 32, 32)`` to float32 in [0, 1] at ``size`` px (average pooling)."""
    x = x.astype(np.float32) / 255.0
    if size == 32:
        return x
    f = x.shape[-1] // size
    m, c, h, w = x.shape
    return x.reshape(m, c, h // f, f, w // f, f).mean(axis=(3, 5))


def train_subset(y, fraction, seed) -> np.ndarray:
    """Indices of a class-stratified training subset; nested across fractions.

    Every class keeps the first ``round(fraction * count)`` of its examples in a fixed
    seeded order, so the 1/16 subset is inside the 1/4 subset, and so on.
    """
    if fraction >= 1.0:
        return np.arange(len(y))
    rng = np.random.default_rng(1000 + seed)
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        keep.append(idx[: max(1, int(round(fraction * len(idx))))])
    return np.sort(np.concatenate(keep))


def augment(xb, gen, padding, flip):
    """Random crop with zero padding ``padding`` and (optionally) horizontal flip.

    The random draws come from the CPU generator ``gen`` (so a run repeats on any device);
    the gather runs where ``xb`` is.
    """
    import torch

    n, c, h, w = xb.shape
    dev = xb.device
    if padding:
        padded = torch.nn.functional.pad(xb, (padding,) * 4)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=gen).to(dev)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=gen).to(dev)
        rows = dy[:, None] + torch.arange(h, device=dev)[None, :]
        cols = dx[:, None] + torch.arange(w, device=dev)[None, :]
        batch = torch.arange(n, device=dev)[:, None, None, None]
        chan = torch.arange(c, device=dev)[None, :, None, None]
        xb = padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]
    if flip:
        mask = (torch.rand(n, generator=gen) < 0.5).to(dev)
        xb = torch.where(mask[:, None, None, None], xb.flip(-1), xb)
    return xb


def build_model(spec, data):
    """The untrained ResNet of ``spec`` for ``data``'s channels and classes."""
    from repsim.models import cifar_resnet

    return cifar_resnet(spec["depth"], spec["width"], num_classes=len(data["classes"]),
                        in_channels=data["x_train"].shape[1])


def predict(model, x, device, batch=500):
    """Logits ``(m, classes)`` of ``model`` in eval mode."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(model(torch.from_numpy(x[i:i + batch]).to(device)).float().cpu().numpy())
    return np.concatenate(out)


def accuracy(model, x, y, device) -> float:
    """Share of ``x`` that ``model`` classifies as ``y``."""
    return float((predict(model, x, device).argmax(1) == y).mean())


# ---------------------------------------------------------------------------- checkpoints
#
# A model's weights, the settings it was trained with and its metrics are ONE record: a
# netCDF file written by repsim.save_result (atomic: write, then rename). A kill can leave
# the old record or the new one, never weights beside another setting's metadata.


def save_checkpoint(path: Path, model, settings: dict, meta: dict) -> None:
    """Write ``model``'s state dict, ``settings`` and ``meta`` as one atomic netCDF record."""
    import xarray as xr

    variables = {}
    for key, value in model.state_dict().items():
        arr = value.detach().cpu().numpy()
        variables[key] = xr.Variable(tuple(f"{key}_dim{i}" for i in range(arr.ndim)), arr)
    ds = xr.Dataset(variables, attrs={"settings": json.dumps(settings, sort_keys=True),
                                      "meta": json.dumps(meta, sort_keys=True), "format": "wide_deep checkpoint 1"})
    repsim.save_result(ds, path)


def load_checkpoint(path: Path, settings: dict):
    """``(state_dict, meta)`` of the record at ``path`` if it was trained with ``settings``;
    None when the file is absent, unreadable (a truncated write) or from other settings."""
    import torch

    if not path.is_file():
        return None
    try:
        ds = repsim.load_result(path)
        if json.loads(ds.attrs["settings"]) != json.loads(json.dumps(settings, sort_keys=True)):
            print(f"[train] {path.name}: trained with other settings; retraining", file=sys.stderr)
            return None
        state = {k: torch.from_numpy(np.array(ds[k].values)) for k in ds.data_vars}
        return state, json.loads(ds.attrs["meta"])
    except Exception as exc:  # noqa: BLE001 - any unreadable record is recomputed, never trusted
        print(f"[train] {path.name}: unreadable checkpoint ({type(exc).__name__}); retraining", file=sys.stderr)
        return None


def train_one(spec, data, cfg, out: Path, log=None):
    """Train one model, or load its finished record; returns ``(model, meta)``.

    The record ``models/<id>.nc`` (:func:`save_checkpoint`) is written once training
    completes; a model whose record holds the same training settings is never retrained.
    The settings are :func:`train_settings` of ``spec`` (a sub-grid's epochs, a recipe
    check's weight decay and minimum steps).
    ``log(text)`` receives one line when training ends.
    """
    import torch

    path = out / "models" / f"{spec['id']}.nc"
    settings = train_settings(cfg, spec)
    device = torch.device(cfg["device"])
    record = load_checkpoint(path, settings)
    if record is not None:
        model = build_model(spec, data)
        model.load_state_dict(record[0])
        return model.to(device).eval(), {**record[1], "resumed": True}

    torch.manual_seed(spec["seed"])
    model = build_model(spec, data).to(device)
    idx = train_subset(data["y_train"], spec["train_fraction"], cfg["split_seed"])
    xtr = torch.from_numpy(data["x_train"][idx]).to(device)
    ytr = torch.from_numpy(data["y_train"][idx]).to(device)
    fast = device.type == "cuda"
    if fast:
        torch.backends.cudnn.benchmark = True
    # NHWC convolutions on every device (tensor cores on a GPU; on 2 AVX2 cores a ResNet-110 step at
    # 16 px took 0.97 s against 1.12 s); only the rounding differs, the analyses see ordinary tensors
    model = model.to(memory_format=torch.channels_last)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if cfg["amp"] == "bf16" and fast \
        else contextlib.nullcontext
    bs = min(cfg["batch_size"], len(idx))
    steps_per_epoch = math.ceil(len(idx) / bs)
    epochs = settings["epochs"]
    min_steps = settings["min_steps"]  # the config's, or a recipe check's own
    if min_steps and steps_per_epoch * epochs < min_steps:
        epochs = math.ceil(min_steps / steps_per_epoch)
    total = steps_per_epoch * epochs
    warm = max(1, int(round(cfg["warmup_fraction"] * total)))

    def lr_factor(step):  # linear warm-up, then cosine to zero
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                          nesterov=cfg["nesterov"], weight_decay=settings["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    gen = torch.Generator().manual_seed(10_000 + spec["seed"])
    flip = cfg["augment"] and cfg["dataset"] != "digits"
    padding = cfg["crop_padding"] * (cfg["image_size"] or 32) // 32 if cfg["augment"] else 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(idx), generator=gen)
        for i in range(steps_per_epoch):
            b = perm[i * bs:(i + 1) * bs]
            if len(b) < 2:  # batch norm needs two examples
                continue
            b = b.to(device)
            xb = augment(xtr[b], gen, padding, flip) if cfg["augment"] else xtr[b]
            xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast():
                loss = torch.nn.functional.cross_entropy(model(xb), ytr[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    seconds = time.perf_counter() - t0
    model = model.to(memory_format=torch.contiguous_format)
    model.eval()
    meta = {
        **{k: spec[k] for k in ("id", "depth", "width", "seed", "train_fraction", "recipe") if k in spec},
        "n_train": int(len(idx)), "epochs": epochs, "steps": total, "train_seconds": round(seconds, 2),
        "train_accuracy": accuracy(model, data["x_train"][idx], data["y_train"][idx], device),
        "test_accuracy": accuracy(model, data["x_eval"], data["y_eval"], device),
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "torch_threads": torch.get_num_threads(), "memory_format": "channels_last",
    }
    save_checkpoint(path, model, settings, meta)
    if log is not None:
        log(f"train {spec['id']}: {total} steps in {seconds:.0f} s, train acc {meta['train_accuracy']:.3f}, "
            f"test acc {meta['test_accuracy']:.3f}")
    return model, {**meta, "resumed": False}
