#!/usr/bin/env python
"""Do wide and deep networks learn the same things? The study, end to end.

Trains a grid of CIFAR-style ResNets (depth ``6n+2`` × width multiplier × seed × training
fraction) and reproduces the analyses of Nguyen, Raghu & Kornblith (ICLR 2021) with
repsim's public API:

(a) within-model layer × layer minibatch CKA on held-out data (unbiased HSIC, batches of
    ``cka_batch_size``, ``passes`` shuffled passes) over residual-block outputs;
(b) block structure of every model (``repsim.block_structure``) against depth, width and
    training fraction;
(c) share of variance in the first principal component of every layer
    (``repsim.pc_variance_fraction``) and the CKA heatmap after removing it
    (``repsim.remove_top_pcs`` inside ``repsim.MinibatchCKA``);
(d) the dominant examples of the block (``repsim.dominant_examples``) and CKA without them;
(e) cross-model CKA (``MinibatchCKA.update(acts_a, acts_b)``): the same architecture
    across seeds, and different depths/widths;
(f) outputs: per-example disagreement between a wide and a deep model against that
    between seeds, and per-class accuracy differences with exact McNemar tests.

Stages ``train → extract/compare → analyse → report`` cache their outputs under ``--out``
(a checkpoint per model, one netCDF file per model and stage, written atomically), so a
rerun resumes where an interrupted one stopped and never retrains a finished model.

Usage
-----
::

    python examples/wide_deep_study.py                      # default: sklearn digits, ≤10 min on 2 cores
    python examples/wide_deep_study.py --smoke --out /tmp/s # every stage on tiny models, seconds
    python examples/wide_deep_study.py --dataset cifar10 --data-dir ../shared/data/cifar-10-batches-py \\
        --config examples/wide_deep_configs/cifar10_cpu.json
    python examples/wide_deep_study.py --config examples/wide_deep_configs/cifar10_gpu.json --device cuda

Without ``--data-dir`` the CIFAR-10 archive is downloaded into ``~/.cache/repsim``
(checksum verified). Configs are JSON files holding any of the keys of
``DEFAULT_CONFIG``; command-line flags override them.

References
----------
Nguyen, T., Raghu, M. and Kornblith, S. (2021). Do wide and deep networks learn the same
things? Uncovering how neural network representations vary with width and depth. ICLR.

He, K., Zhang, X., Ren, S. and Sun, J. (2016). Deep residual learning for image
recognition. CVPR.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:  # running from a source checkout without installing
    import repsim
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import repsim

# ---------------------------------------------------------------------------- config

#: Every key a config file may hold. ``grids`` is a list of sub-grids; the study's models
#: are the union of their products depths × widths × seeds × train_fractions.
DEFAULT_CONFIG = {
    "dataset": "digits",
    "data_dir": None,
    "digits_test_size": 500,
    "split_seed": 0,
    "image_size": None,  # CIFAR-10: 32, or 16 (2×2 average pooling); digits stay 8×8
    "n_eval": 1000,  # held-out images used for the analyses (CIFAR-10 test set subset)
    "grids": [  # two seeds of the smallest, the widest and the deepest model
        {"depths": [20, 110], "widths": [1], "seeds": [0, 1], "train_fractions": [1.0]},
        {"depths": [14], "widths": [2], "seeds": [0, 1], "train_fractions": [1.0]},
        {"depths": [56], "widths": [1], "seeds": [0], "train_fractions": [1.0, 0.25]},
    ],
    "epochs": 60,
    "batch_size": 128,
    "lr": 0.05,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "warmup_fraction": 0.25,  # linear warm-up over this share of the steps, then cosine to zero
    "augment": False,  # crop + horizontal flip (on for CIFAR-10)
    "crop_padding": 4,
    "min_steps": 0,  # reduced-data models train at least this many steps (epochs scaled up)
    "cka_batch_size": 250,
    "passes": 10,
    "layers": "blocks",  # "blocks": residual-block outputs; "all": every leaf module
    "block_threshold": None,  # passed to repsim.block_structure when set
    "dominant_top": 25,  # examples removed in analysis (d)
    "cross_passes": 4,
    "interval_groups": 10,  # batch groups of the delete-a-group jackknife behind every interval
    "level": 0.9,  # confidence level of the intervals
    "threads": None,
    "device": "cpu",
    "amp": None,  # "bf16": train under bfloat16 autocast on CUDA (ignored on CPU); analyses stay float32
}

SMOKE_CONFIG = {
    "digits_test_size": 1000,
    "grids": [
        {"depths": [8, 14], "widths": [1], "seeds": [0], "train_fractions": [1.0]},
        {"depths": [8], "widths": [2], "seeds": [0], "train_fractions": [1.0]},
        {"depths": [14], "widths": [1], "seeds": [1], "train_fractions": [1.0]},
        {"depths": [8], "widths": [1], "seeds": [0], "train_fractions": [0.5]},
    ],
    "epochs": 2,
    "batch_size": 64,
    "cka_batch_size": 50,
    "passes": 2,
    "cross_passes": 1,
    "dominant_top": 5,
    "n_eval": 100,
}

#: What ``--dataset cifar10`` changes (before a config file and flags apply).
CIFAR10_DEFAULTS = {
    "dataset": "cifar10",
    "image_size": 16,
    "augment": True,
    "cka_batch_size": 256,
    "n_eval": 1000,
    "grids": [{"depths": [20, 56], "widths": [1], "seeds": [0], "train_fractions": [0.0625]}],
    "epochs": 30,
}

TRAIN_KEYS = (
    "dataset", "digits_test_size", "split_seed", "image_size", "epochs", "batch_size", "lr",
    "momentum", "nesterov", "weight_decay", "warmup_fraction", "augment", "crop_padding",
    "min_steps", "amp",
)
ANALYSIS_KEYS = ("n_eval", "cka_batch_size", "passes", "layers", "dominant_top", "cross_passes",
                 "interval_groups", "level")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Wide/deep ResNet representation study (Nguyen, Raghu & Kornblith 2021).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="JSON file with any keys of DEFAULT_CONFIG")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/wide_deep[_<dataset>])")
    p.add_argument("--smoke", action="store_true", help="tiny models, every stage, seconds")
    p.add_argument("--dataset", choices=["digits", "cifar10"])
    p.add_argument("--data-dir", type=Path, help="CIFAR-10 python batches; downloaded when absent")
    p.add_argument("--train-fraction", type=float, nargs="+", dest="train_fractions",
                   help="training fractions (one grid with --depths/--widths/--seeds)")
    p.add_argument("--depths", type=int, nargs="+")
    p.add_argument("--widths", type=int, nargs="+")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--image-size", type=int, choices=[16, 32])
    p.add_argument("--n-eval", type=int)
    p.add_argument("--passes", type=int, help="shuffled passes for minibatch CKA (paper: 10)")
    p.add_argument("--cross-passes", type=int, help="shuffled passes for cross-model CKA")
    p.add_argument("--min-steps", type=int, help="reduced-data models train at least this many steps")
    p.add_argument("--cka-batch-size", type=int, help="minibatch CKA batch size (paper: 256)")
    p.add_argument("--all-layers", action="store_true", help="every leaf module, not just block outputs")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", help="torch device, e.g. cuda")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a kill
    return p.parse_args(argv)


def build_config(args) -> dict:
    """Defaults, then the CIFAR-10 defaults (when that is the dataset), then --smoke, then
    the config file, then explicit flags."""
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    loaded = {}
    if args.config is not None:
        with open(args.config) as f:
            loaded = json.load(f)
        unknown = sorted(set(loaded) - set(DEFAULT_CONFIG) - {"comment"})
        if unknown:
            raise SystemExit(f"unknown config keys {unknown} in {args.config}; expected keys of DEFAULT_CONFIG")
        loaded.pop("comment", None)
    if (args.dataset or loaded.get("dataset")) == "cifar10":
        cfg.update(CIFAR10_DEFAULTS)
    if args.smoke:
        cfg.update(copy.deepcopy(SMOKE_CONFIG))
    cfg.update(loaded)
    for key in ("dataset", "epochs", "batch_size", "lr", "image_size", "n_eval", "passes", "cross_passes",
                "min_steps", "cka_batch_size", "threads", "device"):
        value = getattr(args, key, None)
        if value is not None:
            cfg[key] = value
    if args.data_dir is not None:
        cfg["data_dir"] = str(args.data_dir)
    if args.all_layers:
        cfg["layers"] = "all"
    if any(v is not None for v in (args.depths, args.widths, args.seeds, args.train_fractions)):
        base = cfg["grids"][0]
        cfg["grids"] = [{
            "depths": args.depths or base["depths"],
            "widths": args.widths or [1],
            "seeds": args.seeds or [0],
            "train_fractions": args.train_fractions or [1.0],
        }]
    if cfg["dataset"] == "cifar10" and cfg["image_size"] is None:
        cfg["image_size"] = 32
    if cfg["amp"] not in (None, "bf16"):
        raise SystemExit(f"amp must be null or \"bf16\", got {cfg['amp']!r}")
    return cfg


def model_specs(cfg) -> list[dict]:
    """The union of the config's sub-grids, in a stable order (cheapest models first)."""
    seen = {}
    for grid in cfg["grids"]:
        for d in grid["depths"]:
            for w in grid.get("widths", [1]):
                for s in grid.get("seeds", [0]):
                    for f in grid.get("train_fractions", [1.0]):
                        spec = {"depth": int(d), "width": int(w), "seed": int(s), "train_fraction": float(f)}
                        spec["id"] = model_id(spec)
                        seen[spec["id"]] = spec
    return sorted(seen.values(), key=lambda s: (s["depth"] * s["width"] ** 2, s["depth"], s["width"],
                                                 -s["train_fraction"], s["seed"]))


def model_id(spec) -> str:
    frac = f"{spec['train_fraction']:.4g}".replace(".", "p")
    return f"resnet{spec['depth']}_w{spec['width']}_s{spec['seed']}_f{frac}"


def _hash(d) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def train_signature(cfg) -> dict:
    return {k: cfg[k] for k in TRAIN_KEYS}


# ---------------------------------------------------------------------------- data


def load_data(cfg, progress=True) -> dict:
    """Train/eval arrays as float32 ``(m, c, h, w)`` plus int64 labels.

    digits: ``repsim.load_digits_images`` (8×8, one channel, seeded split of
    ``digits_test_size`` held-out images). cifar10: the five training batches and the
    first ``n_eval`` images of a seeded permutation of the test batch; ``image_size=16``
    average-pools 2×2; channels standardised with the training set's statistics.
    """
    if cfg["dataset"] == "digits":
        xtr, ytr, xte, yte = repsim.load_digits_images(cfg["digits_test_size"], seed=cfg["split_seed"])
        classes = [str(i) for i in range(10)]
        xte, yte = xte[: cfg["n_eval"]], yte[: cfg["n_eval"]]
    elif cfg["dataset"] == "cifar10":
        from repsim.datasets import CIFAR10_CLASSES

        data_dir = cfg["data_dir"]
        if data_dir is None:
            data_dir = repsim.download_cifar10(progress=progress)
        xtr, ytr = repsim.load_cifar10(data_dir, train=True)
        xte, yte = repsim.load_cifar10(data_dir, train=False)
        perm = np.random.default_rng(cfg["split_seed"]).permutation(len(yte))[: cfg["n_eval"]]
        xte, yte = xte[perm], yte[perm]
        xtr, xte = _resize(xtr, cfg["image_size"]), _resize(xte, cfg["image_size"])
        mean = xtr.mean(axis=(0, 2, 3), keepdims=True)
        std = xtr.std(axis=(0, 2, 3), keepdims=True)
        xtr = ((xtr - mean) / std).astype(np.float32)
        xte = ((xte - mean) / std).astype(np.float32)
        classes = list(CIFAR10_CLASSES)
    else:
        raise SystemExit(f"dataset must be 'digits' or 'cifar10', got {cfg['dataset']!r}")
    return {"x_train": xtr, "y_train": ytr, "x_eval": xte, "y_eval": yte, "classes": classes}


def _resize(x, size):
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


# ---------------------------------------------------------------------------- training


def _atomic_write_bytes(path: Path, write):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _write_json(path: Path, obj):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
            f.write("\n")

    _atomic_write_bytes(path, write)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _augment(xb, gen, padding, flip):
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
        rows = (dy[:, None] + torch.arange(h, device=dev)[None, :])  # (n, h)
        cols = (dx[:, None] + torch.arange(w, device=dev)[None, :])  # (n, w)
        batch = torch.arange(n, device=dev)[:, None, None, None]
        chan = torch.arange(c, device=dev)[None, :, None, None]
        xb = padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]
    if flip:
        mask = (torch.rand(n, generator=gen) < 0.5).to(dev)
        xb = torch.where(mask[:, None, None, None], xb.flip(-1), xb)
    return xb


def build_model(spec, data):
    from repsim.models import cifar_resnet

    return cifar_resnet(spec["depth"], spec["width"], num_classes=len(data["classes"]),
                        in_channels=data["x_train"].shape[1])


def _accuracy(model, x, y, device, batch=500):
    preds = predict(model, x, device, batch)
    return float((preds.argmax(1) == y).mean())


def predict(model, x, device, batch=500):
    """Logits ``(m, classes)`` of ``model`` in eval mode."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(model(torch.from_numpy(x[i:i + batch]).to(device)).float().cpu().numpy())
    return np.concatenate(out)


def train_one(spec, data, cfg, out: Path, progress=True):
    """Train one model (or load its finished checkpoint); returns (model, meta).

    A checkpoint ``models/<id>.pt`` (state dict, loaded with ``weights_only=True``) and
    ``models/<id>.json`` (metrics and the training signature) are written atomically once
    training completes; a model whose checkpoint matches the signature is never retrained.
    """
    import torch

    ckpt, meta_path = out / "models" / f"{spec['id']}.pt", out / "models" / f"{spec['id']}.json"
    sig = train_signature(cfg)
    device = torch.device(cfg["device"])
    model = build_model(spec, data).to(device)
    if ckpt.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("train_signature") == sig:
            model.load_state_dict(torch.load(ckpt, map_location=device, weights_only=True))
            meta["resumed"] = True
            return model.eval(), meta
        print(f"[train] {spec['id']}: checkpoint was trained with other settings; retraining", file=sys.stderr)

    torch.manual_seed(spec["seed"])
    model = build_model(spec, data).to(device)
    idx = train_subset(data["y_train"], spec["train_fraction"], cfg["split_seed"])
    # the training set lives on the training device (a GPU then never waits for the host)
    xtr = torch.from_numpy(data["x_train"][idx]).to(device)
    ytr = torch.from_numpy(data["y_train"][idx]).to(device)
    fast = device.type == "cuda"
    if fast:  # NHWC convolutions (tensor cores); the analyses see ordinary tensors
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)
    def autocast():
        if cfg.get("amp") == "bf16" and fast:  # CPUs have no fast bf16 convolutions: ignored there
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()
    bs = min(cfg["batch_size"], len(idx))
    steps_per_epoch = math.ceil(len(idx) / bs)
    epochs = cfg["epochs"]
    if cfg["min_steps"] and steps_per_epoch * epochs < cfg["min_steps"]:
        epochs = math.ceil(cfg["min_steps"] / steps_per_epoch)
    total = steps_per_epoch * epochs
    warm = max(1, int(round(cfg["warmup_fraction"] * total)))

    def lr_factor(step):  # linear warm-up, then cosine to zero
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                          nesterov=cfg["nesterov"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    gen = torch.Generator().manual_seed(10_000 + spec["seed"])
    flip = cfg["augment"] and cfg["dataset"] != "digits"
    padding = cfg["crop_padding"] * (cfg["image_size"] or 32) // 32 if cfg["augment"] else 0
    bar = _tqdm(total=total, desc=spec["id"], leave=False, disable=not progress)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(idx), generator=gen)
        for i in range(steps_per_epoch):
            b = perm[i * bs:(i + 1) * bs]
            if len(b) < 2:  # batch norm needs two examples
                continue
            b = b.to(device)
            xb = xtr[b]
            if cfg["augment"]:
                xb = _augment(xb, gen, padding, flip)
            if fast:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast():
                loss = torch.nn.functional.cross_entropy(model(xb), ytr[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    bar.close()
    train_seconds = time.perf_counter() - t0
    if fast:  # back to the layout a resumed (freshly loaded) model has
        model = model.to(memory_format=torch.contiguous_format)
    model.eval()
    meta = {
        **{k: spec[k] for k in ("id", "depth", "width", "seed", "train_fraction")},
        "n_train": int(len(idx)),
        "epochs": epochs,
        "steps": total,
        "train_seconds": round(train_seconds, 2),
        "train_accuracy": _accuracy(model, data["x_train"][idx], data["y_train"][idx], device),
        "test_accuracy": _accuracy(model, data["x_eval"], data["y_eval"], device),
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "train_signature": sig,
        "torch_threads": torch.get_num_threads(),
    }
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _atomic_write_bytes(ckpt, lambda tmp: torch.save(state, tmp))
    _write_json(meta_path, meta)
    meta["resumed"] = False
    return model, meta


def _tqdm(**kw):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        class tqdm:  # noqa: N801 - minimal stand-in with tqdm's interface
            def __init__(self, *a, **k):
                pass

            def update(self, *a):
                pass

            def set_postfix(self, *a, **k):
                pass

            def set_postfix_str(self, *a, **k):
                pass

            def close(self):
                pass
    return tqdm(**kw)


# ---------------------------------------------------------------------------- extraction


def layer_names(model, cfg) -> list[str]:
    """Residual-block outputs (default) or every leaf module (``layers="all"``)."""
    from repsim.models import block_names

    if cfg["layers"] == "all":
        return [n for n, m in model.named_modules() if n and not list(m.children())]
    return block_names(model)


def eval_loader(x, batch_size):
    """A shuffling loader over held-out images; ``compare_models`` seeds its order per pass."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    drop_last = _drops_tail(len(x), batch_size)
    return DataLoader(TensorDataset(torch.from_numpy(np.ascontiguousarray(x))), batch_size=batch_size,
                      shuffle=True, drop_last=drop_last)


def _drops_tail(n, batch_size) -> bool:
    """Every batch needs n >= 4 for the unbiased estimator: a tiny ragged tail is dropped."""
    return 0 < n % batch_size < 4


def n_groups(n, cfg, passes) -> int:
    """Jackknife groups for ``passes`` passes over ``n`` examples: ``interval_groups``, or
    fewer when there are fewer batches."""
    bs = cfg["cka_batch_size"]
    batches = passes * (math.ceil(n / bs) - _drops_tail(n, bs))
    return max(2, min(cfg["interval_groups"], batches))


def within_model_cka(model, names, x, cfg, seed, device, transform=None, progress=True, name="model"):
    """Minibatch CKA of every pair of ``names`` on ``x`` (analyses a, c, d), with intervals.

    ``repsim.compare_models`` with ``cfg["passes"]`` shuffled passes of batches of
    ``cfg["cka_batch_size"]``; ``transform`` is applied to each layer's batch (e.g. PC1
    removal) before its gram. Returns the Dataset of ``compare_models(groups=...)``:
    ``cka``, ``stderr``, ``ci_low``, ``ci_high`` and the leave-one-group-out matrices
    ``jackknife`` (runs with the same ``x``, ``seed`` and groups see the same batches, so
    :func:`repsim.jackknife_interval` can pair them).
    """
    return repsim.compare_models(
        model, None, eval_loader(x, cfg["cka_batch_size"]), layers_a=list(names),
        epochs=cfg["passes"], estimator="unbiased", device=device, progress=progress, seed=seed,
        transform=transform, names=(name, name), groups=n_groups(len(x), cfg, cfg["passes"]), level=cfg["level"],
    )


def cross_model_cka(model_a, model_b, names_a, names_b, x, cfg, seed, device, progress=True, names=("a", "b")):
    """Minibatch CKA between every layer of ``model_a`` and every layer of ``model_b`` (e),
    with intervals (as :func:`within_model_cka`)."""
    return repsim.compare_models(
        model_a, model_b, eval_loader(x, cfg["cka_batch_size"]), layers_a=list(names_a),
        layers_b=list(names_b), epochs=cfg["cross_passes"], estimator="unbiased", device=device,
        progress=progress, seed=seed, names=names, groups=n_groups(len(x), cfg, cfg["cross_passes"]),
        level=cfg["level"],
    )


def layer_statistics(model, names, x, device, top):
    """Per layer on the whole held-out set: PC1 variance share and dominant examples (c, d).

    One forward of all of ``x`` in eval mode; each layer is reduced inside its hook by
    ``repsim.dominant_examples`` (which also reports PC1's variance share), so only one
    layer's activations are alive at a time.

    Returns
    -------
    pc1 : ndarray, shape (L,)
    dominant : ndarray of int64, shape (L, top)
        Per layer, the ``top`` examples with the largest ``|PC1 projection|``, largest first.
    """
    import torch

    pc1 = {}
    dominant = {}

    def hook(name):
        def fn(m, i, o):
            dom = repsim.dominant_examples(o.detach().flatten(1), top=top)
            pc1[name] = float(dom.pc1_fraction)
            dominant[name] = np.asarray(dom.indices, dtype=np.int64)
        return fn

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        model.eval()
        with torch.no_grad():
            model(torch.from_numpy(x).to(device))
    finally:
        for h in handles:
            h.remove()
    return np.array([pc1[n] for n in names]), np.stack([dominant[n] for n in names])


# ---------------------------------------------------------------------------- blocks


def block_options(cfg) -> dict:
    """Options of ``repsim.block_structure`` (its defaults unless the config sets a threshold)."""
    return {} if cfg.get("block_threshold") is None else {"threshold": cfg["block_threshold"]}


def find_blocks(sim, cfg) -> list[dict]:
    """Blocks of a layer × layer CKA matrix via ``repsim.block_structure``, largest first.

    Returns a list of ``{"first", "last", "size", "inside", "outside"}`` (layer indices and
    the mean CKA inside the block and from it to the other layers).
    """
    ds = repsim.block_structure(sim, **block_options(cfg))
    blocks = [
        {"first": int(f), "last": int(l), "size": int(n), "inside": float(i), "outside": float(o)}
        for f, l, n, i, o in zip(ds["first_index"].values, ds["last_index"].values, ds["size"].values,
                                 ds["inside"].values, ds["outside"].values)
    ]
    return sorted(blocks, key=lambda b: (-b["size"], b["first"]))


def contrast(values: np.ndarray, first: int, last: int) -> float:
    """Mean CKA inside layers ``first..last`` (off-diagonal) minus mean CKA to the rest."""
    inside = np.arange(first, last + 1)
    rest = np.setdiff1d(np.arange(values.shape[0]), inside)
    block = values[np.ix_(inside, inside)]
    off = block[~np.eye(len(inside), dtype=bool)]
    if len(off) == 0 or len(rest) == 0:
        return float("nan")
    return float(np.nanmean(off) - np.nanmean(values[np.ix_(inside, rest)]))


def dominant_set(stats_dominant, pc1, block, top):
    """Examples removed in analysis (d): the dominant examples of the block's middle layer
    (of the layer with the largest PC1 share when the model has no block)."""
    if block is not None:
        layer = (block["first"] + block["last"]) // 2
    else:
        layer = int(np.argmax(pc1))
    return layer, np.asarray(stats_dominant[layer][:top], dtype=np.int64)


# ---------------------------------------------------------------------------- stages


def extract_one(spec, model, meta, data, cfg, out: Path, device, progress=True):
    """Analyses (a), (c), (d) and test-set predictions for one model, cached as netCDF."""
    import xarray as xr

    path = out / "extract" / f"{spec['id']}.nc"
    sig = _hash({"train": train_signature(cfg), "analysis": {k: cfg[k] for k in ANALYSIS_KEYS},
                 "block_threshold": cfg.get("block_threshold")})
    if path.is_file():
        ds = repsim.load_result(path)
        if ds.attrs.get("signature") == sig:
            return ds
    t0 = time.perf_counter()
    names = layer_names(model, cfg)
    x = data["x_eval"]
    seed = 7 + spec["seed"]
    pc1, dominant = layer_statistics(model, names, x, device, cfg["dominant_top"])
    runs = {"cka": within_model_cka(model, names, x, cfg, seed, device, progress=progress, name=spec["id"])}
    runs["cka_no_pc1"] = within_model_cka(model, names, x, cfg, seed, device, transform=_remove_pc1,
                                          progress=progress, name=spec["id"])
    blocks = find_blocks(runs["cka"]["cka"], cfg)
    layer, removed = dominant_set(dominant, pc1, blocks[0] if blocks else None, cfg["dominant_top"])
    keep = np.setdiff1d(np.arange(len(x)), removed)
    runs["cka_no_dominant"] = within_model_cka(model, names, x[keep], cfg, seed, device, progress=progress,
                                               name=spec["id"])
    logits = predict(model, x, device)
    ds = xr.Dataset(
        {
            **run_variables(runs),
            "pc1_share": ("layer", pc1),
            "dominant_examples": (("layer", "rank"), dominant),
            "logits": (("example", "class"), logits),
            "labels": ("example", data["y_eval"]),
        },
        coords={"layer": names, "class": data["classes"]},
    )
    ds.attrs.update(
        {
            "model": spec["id"], "depth": spec["depth"], "width": spec["width"], "seed": spec["seed"],
            "train_fraction": spec["train_fraction"], "dataset": cfg["dataset"],
            "test_accuracy": meta["test_accuracy"], "train_accuracy": meta["train_accuracy"],
            "estimator": "unbiased", "kernel": "linear", "measure": "minibatch_cka",
            "n_examples": int(len(x)), "batch_size": cfg["cka_batch_size"], "passes": cfg["passes"],
            "cka_seed": seed, "layers": cfg["layers"], "level": cfg["level"],
            "interval_method": "delete-a-group jackknife over batch groups",
            "dominant_layer": names[layer], "dominant_removed": removed.tolist() if len(removed) else "none",
            "pc_removed": 1, "signature": sig, "repsim_version": repsim.__version__,
            "reference": "Nguyen, Raghu & Kornblith (2021), ICLR",
            "seconds": round(time.perf_counter() - t0, 2),
        }
    )
    for var in ds.variables.values():
        var.attrs = _netcdf_attrs(var.attrs)
    ds.attrs = _netcdf_attrs(ds.attrs)
    repsim.save_result(ds, path)
    return ds


def run_variables(runs: dict) -> dict:
    """Extract variables of named CKA runs (uncertainty Datasets): the estimate ``key``,
    ``key_stderr`` and the leave-one-group-out matrices ``key_jackknife`` (own group dim)."""
    variables = {}
    for key, res in runs.items():
        variables[key] = res["cka"]
        variables[f"{key}_stderr"] = res["stderr"]
        variables[f"{key}_jackknife"] = res["jackknife"].rename(group=f"{key}_group")
    return variables


def jackknife_view(ds, key="cka"):
    """The ``key`` run of an extract (or a cross result) as the Dataset that
    :func:`repsim.jackknife_interval` takes."""
    import xarray as xr

    if key == "cka" and "jackknife" in ds:  # a compare_models result
        return ds
    rep = ds[f"{key}_jackknife"].rename({f"{key}_group": "group"})
    return xr.Dataset({"cka": ds[key], "jackknife": rep}, attrs={"level": ds.attrs.get("level", 0.9),
                                                                  "estimate": "cka"})


def interval(results, statistic) -> dict | None:
    """``{"estimate", "ci": [low, high], "stderr"}`` of ``statistic`` (jackknife, paired
    across ``results``), rounded for ``summary.json``; None when not finite."""
    iv = repsim.jackknife_interval(results, statistic)
    if not np.isfinite(iv.estimate):
        return None
    return {"estimate": _finite(iv.estimate), "ci": [_finite(iv.ci_low), _finite(iv.ci_high)],
            "stderr": _finite(iv.stderr), "level": iv.level}


def _netcdf_attrs(attrs) -> dict:
    """Attributes netCDF can hold: numbers, strings and 1-d numeric arrays."""
    out = {}
    for k, v in attrs.items():
        if isinstance(v, (bool, np.bool_)):
            v = int(v)
        elif v is None:
            v = "none"
        elif isinstance(v, (list, tuple, np.ndarray)):
            arr = np.asarray(v)
            v = arr if arr.dtype.kind in "iuf" and arr.ndim == 1 else ", ".join(str(x) for x in np.ravel(arr))
        elif isinstance(v, str):
            v = str(v)  # plain str: h5py cannot write str subclasses such as torch's TorchVersion
        elif not isinstance(v, (int, float, np.integer, np.floating)):
            v = str(v)
        out[k] = v
    return out


def _remove_pc1(x):
    """Per-batch transform for analysis (c): remove each layer's first principal component."""
    return repsim.remove_top_pcs(x, k=1)


def main_fraction(items) -> float:
    """The training fraction with the most architectures (ties: the larger fraction); the
    cross-architecture and wide-vs-deep comparisons use the models trained on it."""
    archs = {}
    for s in items:
        archs.setdefault(s["train_fraction"], set()).add((s["depth"], s["width"]))
    return max(archs, key=lambda f: (len(archs[f]), f))


def cross_pairs(specs) -> list[tuple[dict, dict, str]]:
    """Pairs for analysis (e): seeds of one architecture, and different architectures."""
    pairs = []
    by_arch = {}
    for s in specs:
        by_arch.setdefault((s["depth"], s["width"], s["train_fraction"]), []).append(s)
    for group in by_arch.values():
        group = sorted(group, key=lambda s: s["seed"])
        if len(group) >= 2:
            pairs.append((group[0], group[1], "seeds"))
    top = main_fraction(specs)
    first = {}  # lowest seed of every architecture trained on the largest fraction
    for s in sorted(specs, key=lambda s: s["seed"]):
        if s["train_fraction"] == top:
            first.setdefault((s["depth"], s["width"]), s)
    base = sorted(first)
    for i, a in enumerate(base):
        for b in base[i + 1:]:
            pairs.append((first[a], first[b], "architectures"))
    return pairs


def cross_one(a, b, kind, models, cfg, data, out, device, progress=True):
    path = out / "cross" / f"{a['id']}__{b['id']}.nc"
    sig = _hash({"train": train_signature(cfg), "analysis": {k: cfg[k] for k in ANALYSIS_KEYS}})
    if path.is_file():
        res = repsim.load_result(path)
        if res.attrs.get("signature") == sig:
            return res
    t0 = time.perf_counter()
    ma, mb = models[a["id"]], models[b["id"]]
    res = cross_model_cka(ma, mb, layer_names(ma, cfg), layer_names(mb, cfg), data["x_eval"], cfg,
                          seed=11, device=device, progress=progress, names=(a["id"], b["id"]))
    res.attrs.update({"model_a": a["id"], "model_b": b["id"], "pair": kind, "passes": cfg["cross_passes"],
                      "batch_size": cfg["cka_batch_size"], "signature": sig, "dataset": cfg["dataset"],
                      "repsim_version": repsim.__version__, "seconds": round(time.perf_counter() - t0, 2)})
    res.attrs = _netcdf_attrs(res.attrs)
    repsim.save_result(res, path)
    return res


# ---------------------------------------------------------------------------- analyse


def _finite(v):
    return None if v is None or not np.isfinite(v) else round(float(v), 4)


def model_summary(spec, meta, ds, cfg) -> dict:
    """The per-model entry of ``summary.json`` (analysis b, c, d)."""
    names = [str(n) for n in ds["layer"].values]
    sim = ds["cka"].values
    pc1 = ds["pc1_share"].values
    blocks = find_blocks(ds["cka"], cfg)
    entry = {
        "id": spec["id"], "depth": spec["depth"], "width": spec["width"], "seed": spec["seed"],
        "train_fraction": spec["train_fraction"], "n_train": meta["n_train"], "steps": meta["steps"],
        "train_seconds": meta["train_seconds"], "train_accuracy": round(meta["train_accuracy"], 4),
        "test_accuracy": round(meta["test_accuracy"], 4), "n_layers": len(names),
        "n_blocks": len(blocks), "pc1_max": _finite(pc1.max()),
        "largest_block": None, "block_contrast": None,
        "block_score": _finite(repsim.block_score(ds["cka"], **block_options(cfg))),
        "block_score_after_pc1_removal": _finite(repsim.block_score(ds["cka_no_pc1"], **block_options(cfg))),
        "block_score_without_dominant": _finite(repsim.block_score(ds["cka_no_dominant"], **block_options(cfg))),
        "pc1_in_block": None, "pc1_out_of_block": None,
        "block_contrast_after_pc1_removal": None,
        "n_blocks_after_pc1_removal": len(find_blocks(ds["cka_no_pc1"], cfg)),
        "block_contrast_without_dominant": None, "dominant_layer": ds.attrs["dominant_layer"],
        "dominant_removed": int(len(np.atleast_1d(ds.attrs["dominant_removed"]))),
        "n_parameters": meta["n_parameters"],
    }
    if blocks:
        b = blocks[0]
        inside = np.arange(b["first"], b["last"] + 1)
        rest = np.setdiff1d(np.arange(len(names)), inside)
        entry.update(
            largest_block={"first_layer": names[b["first"]], "last_layer": names[b["last"]],
                           "first": b["first"], "last": b["last"], "size": b["size"]},
            block_contrast=_finite(contrast(sim, b["first"], b["last"])),
            pc1_in_block=_finite(pc1[inside].mean()),
            pc1_out_of_block=_finite(pc1[rest].mean()) if len(rest) else None,
            block_contrast_after_pc1_removal=_finite(contrast(ds["cka_no_pc1"].values, b["first"], b["last"])),
            block_contrast_without_dominant=_finite(contrast(ds["cka_no_dominant"].values, b["first"], b["last"])),
        )
        # intervals (delete-a-group jackknife over batch groups; paired where the runs share batches)
        plain, nopc, nodom = (jackknife_view(ds, k) for k in ("cka", "cka_no_pc1", "cka_no_dominant"))
        opts = block_options(cfg)

        def con(m):
            return contrast(m, b["first"], b["last"])

        entry["intervals"] = {
            "block_contrast": interval(plain, con),
            "block_contrast_change_after_pc1_removal": interval([plain, nopc], lambda a, r: con(r) - con(a)),
            "block_score_change_after_pc1_removal": interval(
                [plain, nopc], lambda a, r: repsim.block_score(r, **opts) - repsim.block_score(a, **opts)),
            "block_contrast_without_dominant": interval(nodom, con),
        }
    return entry


def seed_pair_summary(a, b, res, entries) -> dict:
    """In-block vs out-of-block CKA between corresponding layers of two seeds (analysis e),
    with jackknife intervals of both means and of their difference."""
    diag = np.diag(res["cka"].values)
    ea = entries[a["id"]]
    out = {"model_a": a["id"], "model_b": b["id"], "mean_corresponding_cka": _finite(np.nanmean(diag)),
           "in_block_cka": None, "out_of_block_cka": None}
    if ea["largest_block"] is not None:
        inside = np.arange(ea["largest_block"]["first"], ea["largest_block"]["last"] + 1)
        rest = np.setdiff1d(np.arange(len(diag)), inside)
        out["in_block_cka"] = _finite(np.nanmean(diag[inside]))
        out["out_of_block_cka"] = _finite(np.nanmean(diag[rest])) if len(rest) else None
        if len(rest):
            view = jackknife_view(res)
            out["intervals"] = {
                "in_block_cka": interval(view, lambda m: np.nanmean(np.diag(m)[inside])),
                "out_of_block_cka": interval(view, lambda m: np.nanmean(np.diag(m)[rest])),
                "in_minus_out": interval(view, lambda m: np.nanmean(np.diag(m)[inside]) - np.nanmean(np.diag(m)[rest])),
            }
    return out


def arch_pair_summary(a, b, res, entries) -> dict:
    """Cross-architecture CKA (analysis e): for each model that has a block, how well its
    in-block and out-of-block layers are matched by their best counterpart in the other model."""
    values = res["cka"].values
    out = {"model_a": a, "model_b": b, "mean_best_match_a": _finite(np.nanmax(values, axis=1).mean()),
           "mean_best_match_b": _finite(np.nanmax(values, axis=0).mean())}
    for side, model, best in (("a", a, np.nanmax(values, axis=1)), ("b", b, np.nanmax(values, axis=0))):
        block = entries[model]["largest_block"]
        if block is None:
            continue
        inside = np.arange(block["first"], block["last"] + 1)
        rest = np.setdiff1d(np.arange(len(best)), inside)
        out[f"best_match_in_block_{side}"] = _finite(best[inside].mean())
        out[f"best_match_out_of_block_{side}"] = _finite(best[rest].mean()) if len(rest) else None
        if len(rest):
            axis = 1 if side == "a" else 0
            out[f"best_match_in_minus_out_{side}"] = interval(
                jackknife_view(res), lambda m, axis=axis, inside=inside, rest=rest:
                np.nanmax(m, axis=axis)[inside].mean() - np.nanmax(m, axis=axis)[rest].mean())
    return out


def _mcnemar(right_a, right_b):
    """Exact two-sided McNemar test on paired correctness; returns (b, c, p)."""
    from scipy.stats import binomtest

    b = int(np.sum(right_a & ~right_b))
    c = int(np.sum(~right_a & right_b))
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return b, c, p


def _wilson(k, n, level=0.9):
    """Wilson score interval of a proportion ``k / n``."""
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(centre - half, 4), round(centre + half, 4)]


def _mean_interval(d, level=0.9):
    """Mean of paired per-example differences ``d`` with a Student-t interval."""
    n = len(d)
    se = float(np.std(d, ddof=1) / math.sqrt(n))
    half = repsim.stats.t_quantile(0.5 + level / 2, n - 1) * se
    m = float(np.mean(d))
    return {"estimate": round(m, 4), "ci": [round(m - half, 4), round(m + half, 4)], "stderr": round(se, 4),
            "level": level}


def _holm(pvalues):
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    adj = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adj[i] = running
    return adj


def output_summary(specs, extracts, data, level=0.9) -> dict:
    """Per-example disagreement and per-class differences (analysis f), with Wilson
    intervals for the disagreement rates and a paired interval for wide-vs-deep minus
    seed-to-seed disagreement (same held-out images)."""
    preds = {s["id"]: extracts[s["id"]]["logits"].values.argmax(1) for s in specs}
    y = data["y_eval"]
    seeds = []
    by_arch = {}
    for s in specs:
        by_arch.setdefault((s["depth"], s["width"], s["train_fraction"]), []).append(s)
    for group in by_arch.values():
        group = sorted(group, key=lambda s: s["seed"])
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                pa, pb = preds[group[i]["id"]], preds[group[j]["id"]]
                seeds.append({"model_a": group[i]["id"], "model_b": group[j]["id"],
                              "disagreement": round(float(np.mean(pa != pb)), 4),
                              "disagreement_ci": _wilson(int(np.sum(pa != pb)), len(pa), level),
                              "_differs": pa != pb})
    top = main_fraction(specs)
    full = [s for s in specs if s["train_fraction"] == top and s["seed"] == min(x["seed"] for x in specs)]
    wide = max(full, key=lambda s: (s["width"], -s["depth"]))
    deep = max(full, key=lambda s: (s["depth"], -s["width"]))
    result = {"seed_disagreement": seeds, "wide_vs_deep": None}
    seed_differs = [e.pop("_differs") for e in seeds]
    if wide["width"] <= deep["width"] or wide["depth"] >= deep["depth"]:  # no wide model and deep model pair
        return result
    pw, pd_ = preds[wide["id"]], preds[deep["id"]]
    rw, rd = pw == y, pd_ == y
    per_class = []
    for c, name in enumerate(data["classes"]):
        m = y == c
        b, cc, p = _mcnemar(rw[m], rd[m])
        per_class.append({"class": name, "n": int(m.sum()), "accuracy_wide": round(float(rw[m].mean()), 4),
                          "accuracy_deep": round(float(rd[m].mean()), 4),
                          "difference": round(float(rw[m].mean() - rd[m].mean()), 4),
                          "wide_only_right": b, "deep_only_right": cc, "p": round(p, 5)})
    for entry, adj in zip(per_class, _holm([e["p"] for e in per_class])):
        entry["p_holm"] = round(float(adj), 5)
    b, cc, p = _mcnemar(rw, rd)
    result["wide_vs_deep"] = {
        "wide": wide["id"], "deep": deep["id"],
        "accuracy_wide": round(float(rw.mean()), 4), "accuracy_deep": round(float(rd.mean()), 4),
        "disagreement": round(float(np.mean(pw != pd_)), 4),
        "disagreement_ci": _wilson(int(np.sum(pw != pd_)), len(pw), level),
        # per image: wide/deep disagree (0/1) minus the mean over seed pairs of seeds disagreeing
        "minus_seed_disagreement": (_mean_interval((pw != pd_).astype(float) - np.mean(seed_differs, axis=0), level)
                                    if seed_differs else None),
        "overall_mcnemar_p": round(p, 5),
        "n_classes_significant": int(sum(e["p_holm"] < 0.05 for e in per_class)),
        "per_class": per_class,
    }
    return result


SEED_METRICS = ("test_accuracy", "pc1_max", "block_score", "block_contrast", "pc1_in_block")


def seed_aggregates(models, level=0.9) -> dict:
    """Across training seeds (``repsim.aggregate_seeds``, ``repsim.compare_seeds``).

    ``per_architecture``: for every architecture and training fraction with two seeds or
    more, the mean, seed-to-seed spread and t interval of each of ``SEED_METRICS``.
    ``comparisons``: for every two such architectures, whether they differ beyond
    seed-to-seed variation (Welch t test per metric).
    """
    groups = {}
    for m in models:
        groups.setdefault(f"resnet{m['depth']}_w{m['width']}_f{m['train_fraction']:g}", []).append(m)
    groups = {k: v for k, v in groups.items() if len(v) >= 2}

    def values(group, key):
        return [np.nan if m.get(key) is None else float(m[key]) for m in group]

    out = {"per_architecture": {}, "comparisons": []}
    for arch, group in groups.items():
        entry = {"seeds": [m["seed"] for m in group]}
        for key in SEED_METRICS:
            agg = repsim.aggregate_seeds(values(group, key), level=level)
            entry[key] = {"mean": _finite(float(agg["mean"])), "std": _finite(float(agg["std"])),
                          "ci": [_finite(float(agg["ci_low"])), _finite(float(agg["ci_high"]))],
                          "values": [_finite(v) for v in values(group, key)]}
        out["per_architecture"][arch] = entry
    archs = sorted(groups)
    for i, a in enumerate(archs):
        for b in archs[i + 1:]:
            row = {"a": a, "b": b}
            for key in SEED_METRICS:
                va, vb = values(groups[a], key), values(groups[b], key)
                if np.isnan(va).any() or np.isnan(vb).any():
                    row[key] = None
                    continue
                cmp = repsim.compare_seeds(va, vb, level=level)
                row[key] = {"difference": _finite(float(cmp["difference"])),
                            "ci": [_finite(float(cmp["ci_low"])), _finite(float(cmp["ci_high"]))],
                            "p": _finite(float(cmp["p_value"])), "differs": bool(cmp["differs"])}
            out["comparisons"].append(row)
    return out


def findings(summary) -> list[dict]:
    """Each of the paper's claims, checked against this run's numbers (never tuned)."""
    models = summary["models"]
    out = []

    def add(key, claim, ok, text):
        # ok: one verdict, or one per model / pair ("partly" when they differ); for claims
        # tested with intervals, None = the interval contains zero (within the noise)
        if isinstance(ok, list):
            yes, no = sum(o is True for o in ok), sum(o is False for o in ok)
            if yes == len(ok):
                verdict = "yes"
            elif yes:
                verdict = f"partly ({yes} of {len(ok)})"
            elif no == len(ok):
                verdict = "no"
            elif no:
                verdict = f"no ({no} of {len(ok)} against, {len(ok) - no} within the intervals)"
            else:
                verdict = "inconclusive (every interval contains zero)"
        else:
            verdict = {True: "yes", False: "no", None: "not testable"}[ok]
        out.append({"key": key, "claim": claim, "reproduced": verdict, "evidence": text})

    top = main_fraction(models)
    base = [m for m in models if m["train_fraction"] == top and m["seed"] == min(x["seed"] for x in models)]
    if len(base) >= 2:
        big = max(base, key=lambda m: (m["n_parameters"], m["depth"]))
        deep = max(base, key=lambda m: (m["depth"], m["width"]))
        small = min(base, key=lambda m: (m["n_parameters"], m["depth"]))
        largest = [big] if big["id"] == deep["id"] else [deep, big]
        has = [m for m in largest if m["n_blocks"] > 0]
        ok = bool(has) and small["n_blocks"] == 0
        text = "; ".join(_block_text(m) for m in largest) + f"; smallest ({small['id']}): {_block_text(small)}"
        add("block_in_large_not_small", "A block structure appears in the largest-capacity model(s) and not in "
            "the smallest (repsim.block_structure's rule).", ok, text)
        # the same claim with the paper's characterisation of a block: one whose layers are
        # dominated by their first principal component (mean PC1 share inside > 0.5)
        dominated = [m for m in largest if _pc1_dominated(m)]
        ok = bool(dominated) and not _pc1_dominated(small)
        text = "; ".join(f"{m['id']}: PC1 share {_fmt(m['pc1_in_block'])} inside its largest block, "
                         f"{_fmt(m['pc1_out_of_block'])} outside (max {_fmt(m['pc1_max'])})"
                         for m in largest + [small])
        add("pc1_block_in_large_not_small", "A PC1-dominated block (mean PC1 share inside the largest block > 0.5) "
            "appears in the largest-capacity model(s) and not in the smallest.", ok, text)
    pairs = {}
    for m in models:
        pairs.setdefault((m["depth"], m["width"], m["seed"]), []).append(m)
    rows = []
    verdicts = []
    for group in pairs.values():
        if len(group) < 2:
            continue
        group = sorted(group, key=lambda m: -m["train_fraction"])
        full, rest = group[0], group[1:]
        for r in rest:
            size_full = (full["largest_block"] or {}).get("size", 0)
            size_r = (r["largest_block"] or {}).get("size", 0)
            verdicts.append(r["n_blocks"] > full["n_blocks"] or size_r > size_full)
            rows.append(f"{r['id']} ({r['train_fraction']:g} of the data, train acc {r['train_accuracy']:.3f}): "
                        f"{r['n_blocks']} block(s), largest {size_r} layers vs {full['n_blocks']} / {size_full} "
                        f"with all the data (train acc {full['train_accuracy']:.3f})")
    if rows:
        add("less_data_more_blocks", "Less training data gives more or larger blocks.", verdicts, "; ".join(rows))
    with_block = [m for m in models if m["largest_block"] is not None and m["pc1_out_of_block"] is not None]
    if with_block:
        ok = [m["pc1_in_block"] > m["pc1_out_of_block"] for m in with_block]
        add("pc1_higher_inside", "The first principal component explains more variance inside the block than "
            "outside.", ok, "; ".join(f"{m['id']}: {m['pc1_in_block']:.3f} inside vs {m['pc1_out_of_block']:.3f} "
                                      "outside" for m in with_block))
        ivs = [m.get("intervals", {}) for m in with_block]
        ok = [_below_zero(iv.get("block_contrast_change_after_pc1_removal")) for iv in ivs]
        add("pc1_removal_weakens_block", "Removing the first principal component weakens the block (its contrast "
            "falls by more than the paired 90% jackknife interval allows).", ok,
            "; ".join(f"{m['id']}: contrast {m['block_contrast']:.3f} → {_fmt(m['block_contrast_after_pc1_removal'])}"
                      f", change {_ivtext(iv.get('block_contrast_change_after_pc1_removal'))}; score "
                      f"{_fmt(m['block_score'])} → {_fmt(m['block_score_after_pc1_removal'])}, change "
                      f"{_ivtext(iv.get('block_score_change_after_pc1_removal'))}"
                      for m, iv in zip(with_block, ivs)))
        ok = []
        for m, iv in zip(with_block, ivs):
            full, nodom = iv.get("block_contrast"), iv.get("block_contrast_without_dominant")
            ok.append(None if full is None or nodom is None else True if nodom["ci"][1] < full["ci"][0]
                      else False if nodom["ci"][0] > full["ci"][1] else None)
        add("dominant_examples_carry_block", "Removing the block's dominant examples weakens the block (the "
            "two contrasts' 90% intervals do not overlap).", ok,
            "; ".join(f"{m['id']}: contrast {_ivtext(iv.get('block_contrast'))} → "
                      f"{_ivtext(iv.get('block_contrast_without_dominant'))} without {m['dominant_removed']} "
                      "examples" for m, iv in zip(with_block, ivs)))
    seed_pairs = [p for p in summary["cross_seed"] if p["in_block_cka"] is not None and p["out_of_block_cka"] is not None]
    if seed_pairs:
        ok = [_below_zero(p.get("intervals", {}).get("in_minus_out")) for p in seed_pairs]
        add("block_differs_across_seeds", "Across seeds, layers inside the block match less than layers outside it "
            "(corresponding-layer CKA; 90% jackknife intervals).",
            ok, "; ".join(f"{p['model_a']} vs {p['model_b']}: {_ivtext(p['intervals']['in_block_cka'])} in block vs "
                          f"{_ivtext(p['intervals']['out_of_block_cka'])} outside, difference "
                          f"{_ivtext(p['intervals']['in_minus_out'])}" for p in seed_pairs))
    elif summary["cross_seed"]:
        add("block_differs_across_seeds", "Across seeds, layers inside the block match less than layers outside it.",
            None, "no seed pair of a model with a block: " + "; ".join(
                f"{p['model_a']} vs {p['model_b']}: mean corresponding-layer CKA {_fmt(p['mean_corresponding_cka'])}"
                for p in summary["cross_seed"]))
    rows, verdicts = [], []
    for p in summary["cross_architecture"]:
        for side in ("a", "b"):
            inside, outside = p.get(f"best_match_in_block_{side}"), p.get(f"best_match_out_of_block_{side}")
            if inside is not None and outside is not None:
                diff = p.get(f"best_match_in_minus_out_{side}")
                verdicts.append(_below_zero(diff))
                rows.append(f"{p['model_' + side]} vs {p['model_b' if side == 'a' else 'model_a']}: "
                            f"{inside:.3f} in block vs {outside:.3f} outside, difference {_ivtext(diff)}")
    if rows:
        add("block_unmatched_across_architectures", "Across architectures, block layers find a poorer match in "
            "the other model than layers outside the block (90% jackknife interval of the difference below zero).",
            verdicts, "; ".join(rows))
    wd = summary["outputs"]["wide_vs_deep"]
    seeds = summary["outputs"]["seed_disagreement"]
    if wd is not None and seeds:
        mean_seed = float(np.mean([s["disagreement"] for s in seeds]))
        diff = wd.get("minus_seed_disagreement")
        ok = None if diff is None else True if diff["ci"][0] > 0 else False if diff["ci"][1] < 0 else None
        verdict_ok = ok if ok is not None else [None]
        add("wide_deep_disagree_more", "A wide and a deep model disagree on more examples than two seeds of one "
            "architecture (paired 90% interval over the held-out images above zero).", verdict_ok,
            f"{wd['wide']} (acc {wd['accuracy_wide']:.3f}) vs {wd['deep']} (acc "
            f"{wd['accuracy_deep']:.3f}) disagree on {wd['disagreement']:.3f} (90% CI {_citext(wd['disagreement_ci'])})"
            f" of the held-out images; seeds disagree on {mean_seed:.3f} on average ({len(seeds)} pair(s): "
            + ", ".join(_citext(s['disagreement_ci']) for s in seeds) + f"); difference {_ivtext(diff)}; "
            f"{wd['n_classes_significant']} class(es) differ significantly (exact McNemar, Holm-corrected p < 0.05)")
    aggs = summary.get("seed_aggregates", {}).get("per_architecture", {})
    if aggs:
        text = "; ".join(
            f"{arch} (seeds {', '.join(map(str, a['seeds']))}): " + ", ".join(
                f"{key.replace('_', ' ')} {_fmt(a[key]['mean'])} (values {', '.join(_fmt(v) for v in a[key]['values'])})"
                for key in ("pc1_max", "block_contrast", "test_accuracy")) for arch, a in aggs.items())
        cmps = summary["seed_aggregates"]["comparisons"]
        if cmps:
            text += "; " + "; ".join(
                f"{c['a']} − {c['b']}: " + ", ".join(
                    f"{key.replace('_', ' ')} {_fmt(c[key]['difference'])} (90% CI {_citext(c[key]['ci'])}, "
                    f"p = {_fmt(c[key]['p'], '.3g')})" for key in ("pc1_max", "test_accuracy") if c[key])
                for c in cmps)
        out.append({"key": "seed_spread", "claim": "Seed-to-seed spread of the block measures (architectures with "
                    "several seeds; repsim.aggregate_seeds / compare_seeds)", "reproduced": "reported",
                    "evidence": text})
    return out


def _below_zero(iv):
    """True / False / None: the interval lies below zero / above zero / contains it."""
    if iv is None or iv["ci"][0] is None or iv["ci"][1] is None:
        return None
    return True if iv["ci"][1] < 0 else False if iv["ci"][0] > 0 else None


def _citext(ci):
    return "n/a" if ci is None or None in ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _ivtext(iv):
    """``0.123 [0.100, 0.146]`` (estimate and its interval) or n/a."""
    return "n/a" if iv is None else f"{_fmt(iv['estimate'])} {_citext(iv['ci'])}"


def _pc1_dominated(m) -> bool:
    return m["pc1_in_block"] is not None and m["pc1_in_block"] > 0.5


def _fmt(v, spec=".3f"):
    return "n/a" if v is None else format(v, spec)


def _block_text(m):
    if m["largest_block"] is None:
        return f"{m['id']} has no block (PC1 share max {_fmt(m['pc1_max'])}, train acc {m['train_accuracy']:.3f})"
    b = m["largest_block"]
    return (f"{m['id']} has {m['n_blocks']} block(s), largest {b['first_layer']}…{b['last_layer']} "
            f"({b['size']} of {m['n_layers']} layers, score {_fmt(m['block_score'])}, contrast "
            f"{_fmt(m['block_contrast'])}; train acc {m['train_accuracy']:.3f})")


# ---------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    if not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _heat(ax, values, title, xlabel=None, ylabel=None):
    im = ax.imshow(values, origin="lower", cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=7)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=7)
    return im


def make_figures(specs, extracts, crosses, summary, out: Path) -> dict:
    """The paper's figures; returns {name: relative path}."""
    plt = _plt()
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    figs = {}
    entries = {m["id"]: m for m in summary["models"]}
    seed0 = min(s["seed"] for s in specs)
    base = [s for s in specs if s["seed"] == seed0]

    # 1. heatmap grid over depth x width (rows: width and training fraction)
    depths = sorted({s["depth"] for s in base})
    rows = sorted({(s["width"], s["train_fraction"]) for s in base}, key=lambda r: (-r[1], r[0]))
    fig, axes = plt.subplots(len(rows), len(depths), figsize=(2.2 * len(depths) + 0.8, 2.2 * len(rows)),
                             squeeze=False, constrained_layout=True)
    im = None
    for i, (w, f) in enumerate(rows):
        for j, d in enumerate(depths):
            ax = axes[i, j]
            match = [s for s in base if (s["depth"], s["width"], s["train_fraction"]) == (d, w, f)]
            if not match:
                ax.axis("off")
                continue
            s = match[0]
            e = entries[s["id"]]
            im = _heat(ax, extracts[s["id"]]["cka"].values,
                       f"ResNet-{d} ×{w}, {f:g} data\nacc {e['test_accuracy']:.2f}, PC1 max {_fmt(e['pc1_max'], '.2f')}",
                       xlabel="layer" if i == len(rows) - 1 else None, ylabel="layer" if j == 0 else None)
    fig.colorbar(im, ax=axes, shrink=0.8, label="minibatch CKA")
    fig.suptitle("Layer × layer CKA (residual-block outputs, held-out data)", fontsize=9)
    figs["heatmaps"] = _savefig(fig, fig_dir / "heatmaps.png", plt)

    # 2. PC1 share curves
    fig, ax = plt.subplots(figsize=(6, 3.5), constrained_layout=True)
    for s in base:
        pc1 = extracts[s["id"]]["pc1_share"].values
        ax.plot(np.linspace(0, 1, len(pc1)), pc1, marker=".", lw=1,
                label=f"ResNet-{s['depth']} ×{s['width']}, {s['train_fraction']:g} data")
    ax.set_xlabel("relative layer depth")
    ax.set_ylabel("variance share of PC1")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    figs["pc1"] = _savefig(fig, fig_dir / "pc1_share.png", plt)

    # 2b. block score and largest block against depth, width and training fraction
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), constrained_layout=True)
    for m in summary["models"]:
        label = f"×{m['width']}, {m['train_fraction']:g} data, seed {m['seed']}"
        marker = {1: "o", 2: "s", 4: "D", 8: "^"}.get(m["width"], "v")
        rel = 0.0 if m["largest_block"] is None else m["largest_block"]["size"] / m["n_layers"]
        axes[0].scatter(m["depth"], m["block_score"], marker=marker, label=label)
        axes[1].scatter(m["depth"], rel, marker=marker, label=label)
    axes[0].set_ylabel("block score (repsim.block_score)")
    axes[1].set_ylabel("largest block / layers")
    for ax in axes:
        ax.set_xlabel("depth")
        ax.set_xscale("log")
        ax.set_ylim(-0.05, 1.05)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axes[1].legend(unique.values(), unique.keys(), fontsize=6, loc="best")
    figs["block_scores"] = _savefig(fig, fig_dir / "block_scores.png", plt)

    # 3. before / after PC1 removal and without dominant examples
    chosen = sorted((s for s in specs if entries[s["id"]]["pc1_in_block"] is not None),
                    key=lambda s: -entries[s["id"]]["pc1_in_block"])[:4]
    if not chosen:
        chosen = [max(base, key=lambda s: (s["depth"] * s["width"] ** 2, s["depth"]))]
    fig, axes = plt.subplots(len(chosen), 3, figsize=(8, 2.6 * len(chosen)), squeeze=False, constrained_layout=True)
    for i, s in enumerate(chosen):
        ds = extracts[s["id"]]
        e = entries[s["id"]]
        im = _heat(axes[i, 0], ds["cka"].values, f"{s['id']}\nCKA (contrast {_fmt(e['block_contrast'])})")
        _heat(axes[i, 1], ds["cka_no_pc1"].values,
              f"without PC1 (contrast {_fmt(e['block_contrast_after_pc1_removal'])})")
        _heat(axes[i, 2], ds["cka_no_dominant"].values,
              f"without {len(np.atleast_1d(ds.attrs['dominant_removed']))} dominant examples\n"
              f"(contrast {_fmt(e['block_contrast_without_dominant'])})")
    fig.colorbar(im, ax=axes, shrink=0.8, label="minibatch CKA")
    figs["pc_removal"] = _savefig(fig, fig_dir / "pc_removal.png", plt)

    # 4. cross-model grids
    if crosses:
        fig, axes = plt.subplots(1, len(crosses), figsize=(2.4 * len(crosses) + 0.8, 2.8), squeeze=False,
                                 constrained_layout=True)
        for ax, ((a, b, kind), res) in zip(axes[0], crosses.items()):
            im = _heat(ax, res["cka"].values, f"{kind}:\n{a} (rows)\nvs {b}", xlabel=b.split("_")[0],
                       ylabel=a.split("_")[0])
        fig.colorbar(im, ax=axes, shrink=0.8, label="cross-model minibatch CKA")
        figs["cross"] = _savefig(fig, fig_dir / "cross_models.png", plt)

    # 5. per-class differences between the wide and the deep model
    wd = summary["outputs"]["wide_vs_deep"]
    if wd is not None:
        fig, ax = plt.subplots(figsize=(6, 3), constrained_layout=True)
        diff = [e["difference"] for e in wd["per_class"]]
        colors = ["tab:red" if e["p_holm"] < 0.05 else "tab:gray" for e in wd["per_class"]]
        ax.bar(range(len(diff)), diff, color=colors)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xticks(range(len(diff)), [e["class"] for e in wd["per_class"]], rotation=45, fontsize=7)
        ax.set_ylabel("accuracy wide − deep")
        ax.set_title(f"{wd['wide']} vs {wd['deep']} (red: Holm-corrected McNemar p < 0.05)", fontsize=8)
        figs["per_class"] = _savefig(fig, fig_dir / "per_class.png", plt)
    return figs


def _savefig(fig, path: Path, plt) -> str:
    _atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return f"figures/{path.name}"


# ---------------------------------------------------------------------------- report


def write_report(summary, figs, cfg, out: Path):
    """``report.md``: every finding with its numbers, said plainly when it does not hold."""
    L = []
    L.append(f"# Wide and deep ResNets on {summary['dataset']}: block structure study\n")
    L.append(f"Generated by `examples/wide_deep_study.py` (repsim {repsim.__version__}). "
             f"Reproduces the analyses of Nguyen, Raghu & Kornblith (ICLR 2021) at the scale given below. "
             "Intervals (in brackets) are 90% delete-a-group jackknife intervals over batch groups of the "
             "minibatch estimates, paired where two runs share their batches (repsim.jackknife_interval): they "
             "describe the measurement on these held-out images, not training randomness, which only the seed "
             "comparisons show.\n")
    L.append("## Set-up\n")
    L.append(f"- data: {summary['data']}")
    L.append(f"- training: SGD (momentum {cfg['momentum']}, Nesterov {cfg['nesterov']}), peak lr {cfg['lr']}, "
             f"linear warm-up over {cfg['warmup_fraction']:.0%} of the steps then cosine, weight decay {cfg['weight_decay']}, batch "
             f"{cfg['batch_size']}, {cfg['epochs']} epochs" + (", crop + flip augmentation" if cfg["augment"] and
                                                              cfg["dataset"] != "digits" else ""))
    L.append(f"- CKA: linear minibatch CKA with unbiased HSIC over residual-block outputs "
             f"({cfg['layers']}), batch {cfg['cka_batch_size']}, {cfg['passes']} shuffled passes over "
             f"{summary['n_eval']} held-out images; cross-model: {cfg['cross_passes']} passes")
    L.append("- blocks: `repsim.block_structure` on each CKA matrix; *contrast* = mean CKA inside the largest "
             "block minus mean CKA from it to the other layers (the same layers are used after PC1 removal and "
             "without the dominant examples)")
    L.append(f"- wall time of the invocation that wrote this report: {summary['wall_seconds']:.0f} s "
             f"({summary['torch_threads']} torch thread(s); stages cached by an earlier invocation are loaded, not "
             f"recomputed); training: {sum(m['train_seconds'] for m in summary['models']):.0f} s in all, per model "
             "in the table" + (f"; analyses (extract and compare): {summary['analysis_seconds']:.0f} s"
                               if summary.get("analysis_seconds") is not None else "") + "\n")
    L.append("## Findings\n")
    for f in summary["findings"]:
        r = f["reproduced"]
        verdict = {"yes": "**reproduced**", "no": "**not reproduced at this scale**",
                   "not testable": "**not testable**", "reported": "**reported**"}.get(
            r, f"**{r.replace('partly', 'partly reproduced').replace('no (', 'not reproduced (')}**")
        L.append(f"- {f['claim']} — {verdict}. {f['evidence']}.")
    L.append("")
    L.append("## Models\n")
    L.append("| model | train frac | steps | train s | train acc | test acc | PC1 max | blocks | largest block | "
             "score | contrast [90% CI] | PC1 in / out | contrast w/o PC1 | change [90% CI] | contrast w/o dominant |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for m in summary["models"]:
        b = m["largest_block"]
        iv = m.get("intervals", {})
        block = "—" if b is None else f"{b['first_layer']}…{b['last_layer']} ({b['size']}/{m['n_layers']})"
        L.append(f"| {m['id']} | {m['train_fraction']:g} | {m['steps']} | {m['train_seconds']:.0f} | "
                 f"{m['train_accuracy']:.3f} | {m['test_accuracy']:.3f} | {_fmt(m['pc1_max'])} | {m['n_blocks']} | "
                 f"{block} | {_fmt(m['block_score'])} | {_ivtext(iv.get('block_contrast'))} | "
                 f"{_fmt(m['pc1_in_block'])} / {_fmt(m['pc1_out_of_block'])} | "
                 f"{_fmt(m['block_contrast_after_pc1_removal'])} | "
                 f"{_ivtext(iv.get('block_contrast_change_after_pc1_removal'))} | "
                 f"{_ivtext(iv.get('block_contrast_without_dominant'))} |")
    L.append("")
    aggs = summary.get("seed_aggregates", {})
    if aggs.get("per_architecture"):
        L.append("## Seed to seed\n")
        L.append("Mean over seeds with the seed-to-seed standard deviation and a 90% t interval "
                 "(`repsim.aggregate_seeds`); with two seeds the interval is wide by construction.\n")
        L.append("| architecture | seeds | " + " | ".join(k.replace("_", " ") for k in SEED_METRICS) + " |")
        L.append("|---|---|" + "---|" * len(SEED_METRICS))
        for arch, a in aggs["per_architecture"].items():
            L.append(f"| {arch} | {', '.join(map(str, a['seeds']))} | " + " | ".join(
                f"{_fmt(a[k]['mean'])} ± {_fmt(a[k]['std'])} {_citext(a[k]['ci'])}" for k in SEED_METRICS) + " |")
        for c in aggs["comparisons"]:
            L.append(f"\n{c['a']} − {c['b']} (Welch t test over seeds, `repsim.compare_seeds`): " + "; ".join(
                f"{k.replace('_', ' ')} {_fmt(c[k]['difference'])} {_citext(c[k]['ci'])}, p = {_fmt(c[k]['p'], '.3g')}"
                for k in SEED_METRICS if c[k]))
        L.append("")
    if summary["cross_seed"]:
        L.append("## Across seeds\n")
        L.append("| model a | model b | corresponding-layer CKA (mean) | in block [90% CI] | outside block [90% CI] "
                 "| in − out [90% CI] |")
        L.append("|---|---|---|---|---|---|")
        for p in summary["cross_seed"]:
            iv = p.get("intervals", {})
            L.append(f"| {p['model_a']} | {p['model_b']} | {_fmt(p['mean_corresponding_cka'])} | "
                     f"{_ivtext(iv.get('in_block_cka'))} | {_ivtext(iv.get('out_of_block_cka'))} | "
                     f"{_ivtext(iv.get('in_minus_out'))} |")
        L.append("")
    if summary["cross_architecture"]:
        L.append("## Across architectures\n")
        L.append("Best-matching layer of the other model, averaged over a model's in-block and out-of-block "
                 "layers (only for models with a block).\n")
        L.append("| model a | model b | best match a→b | in block (a) | outside (a) | best match b→a | in block (b) "
                 "| outside (b) |")
        L.append("|---|---|---|---|---|---|---|---|")
        for p in summary["cross_architecture"]:
            L.append(f"| {p['model_a']} | {p['model_b']} | {_fmt(p['mean_best_match_a'])} | "
                     f"{_fmt(p.get('best_match_in_block_a'))} | {_fmt(p.get('best_match_out_of_block_a'))} | "
                     f"{_fmt(p['mean_best_match_b'])} | {_fmt(p.get('best_match_in_block_b'))} | "
                     f"{_fmt(p.get('best_match_out_of_block_b'))} |")
        L.append("")
    wd = summary["outputs"]["wide_vs_deep"]
    L.append("## Outputs\n")
    for s in summary["outputs"]["seed_disagreement"]:
        L.append(f"- seeds {s['model_a']} vs {s['model_b']}: disagree on {s['disagreement']:.3f} "
                 f"(90% CI {_citext(s['disagreement_ci'])}) of held-out images")
    if wd is not None:
        L.append(f"- wide {wd['wide']} (acc {wd['accuracy_wide']:.3f}) vs deep {wd['deep']} (acc "
                 f"{wd['accuracy_deep']:.3f}): disagree on {wd['disagreement']:.3f} "
                 f"(90% CI {_citext(wd['disagreement_ci'])}; minus the seeds' disagreement, paired over images: "
                 f"{_ivtext(wd.get('minus_seed_disagreement'))}); overall McNemar p = "
                 f"{wd['overall_mcnemar_p']:.3g}; classes with Holm-corrected p < 0.05: "
                 f"{wd['n_classes_significant']} of {len(wd['per_class'])}")
        big = sorted(wd["per_class"], key=lambda e: -abs(e["difference"]))[:3]
        L.append("- largest per-class differences (wide − deep): " + ", ".join(
            f"{e['class']} {e['difference']:+.3f} (p = {e['p']:.3g}, Holm {e['p_holm']:.3g})" for e in big))
    L.append("")
    L.append("## Figures\n")
    captions = {
        "heatmaps": "Layer × layer CKA for every depth (columns) and width / training fraction (rows), shared "
                    "colour scale",
        "pc1": "Share of variance explained by the first principal component, per layer",
        "block_scores": "Block score and relative size of the largest block against depth (markers: width; "
                        "legend: width, training fraction, seed)",
        "pc_removal": "CKA before and after removing the first principal component, and without the dominant "
                      "examples",
        "cross": "Cross-model CKA: seeds of one architecture and different architectures",
        "per_class": "Per-class accuracy difference between the wide and the deep model",
    }
    for key, path in figs.items():
        L.append(f"![{captions[key]}]({path})\n\n*{captions[key]}.*\n")
    L.append("## Reproduce\n")
    L.append(f"```\npython examples/wide_deep_study.py {summary['command']}\n```\n")
    L.append("Outputs: `models/` (checkpoints), `extract/` and `cross/` (netCDF with provenance attrs), "
             "`summary.json`, `figures/`.")
    text = "\n".join(L) + "\n"
    _atomic_write_bytes(out / "report.md", lambda tmp: Path(tmp).write_text(text))


# ---------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = build_config(args)
    progress = not args.no_progress
    out = args.out or Path("runs") / ("wide_deep" if cfg["dataset"] == "digits" else f"wide_deep_{cfg['dataset']}")
    if args.smoke and args.out is None:
        out = Path("runs") / "wide_deep_smoke"
    out.mkdir(parents=True, exist_ok=True)
    import torch

    threads = cfg["threads"] or min(8, os.cpu_count() or 1)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    t_start = time.perf_counter()
    _write_json(out / "config.json", cfg)
    data = load_data(cfg, progress)
    specs = model_specs(cfg)
    pairs = cross_pairs(specs)
    overall = _tqdm(total=2 * len(specs) + len(pairs), desc="study", disable=not progress)
    models, metas, extracts = {}, {}, {}
    trained_now = 0
    for spec in specs:
        overall.set_postfix_str(f"train {spec['id']}")
        models[spec["id"]], metas[spec["id"]] = train_one(spec, data, cfg, out, progress)
        trained_now += not metas[spec["id"]]["resumed"]
        overall.update(1)
        if args.stop_after is not None and trained_now >= args.stop_after:
            overall.close()
            print(f"stopped after training {trained_now} model(s) (--stop-after)", file=sys.stderr)
            return 3
    device = torch.device(cfg["device"])
    for spec in specs:
        overall.set_postfix_str(f"extract {spec['id']}")
        extracts[spec["id"]] = extract_one(spec, models[spec["id"]], metas[spec["id"]], data, cfg, out, device,
                                           progress)
        overall.update(1)
    crosses = {}
    for a, b, kind in pairs:
        overall.set_postfix_str(f"compare {a['id']} / {b['id']}")
        crosses[(a["id"], b["id"], kind)] = cross_one(a, b, kind, models, cfg, data, out, device, progress)
        overall.update(1)
    overall.close()

    entries = {s["id"]: model_summary(s, metas[s["id"]], extracts[s["id"]], cfg) for s in specs}
    by_id = {s["id"]: s for s in specs}
    summary = {
        "dataset": cfg["dataset"],
        "data": _data_text(cfg, data),
        "n_eval": int(len(data["y_eval"])),
        "command": _portable_command(" ".join(argv if argv is not None else sys.argv[1:])),
        "config": cfg,
        "torch_threads": threads,
        "models": list(entries.values()),
        "cross_seed": [seed_pair_summary(by_id[a], by_id[b], res, entries)
                       for (a, b, kind), res in crosses.items() if kind == "seeds"],
        "cross_architecture": [arch_pair_summary(a, b, res, entries)
                               for (a, b, kind), res in crosses.items() if kind == "architectures"],
        "outputs": output_summary(specs, extracts, data, cfg["level"]),
    }
    summary["seed_aggregates"] = seed_aggregates(summary["models"], cfg["level"])
    timed = [ds.attrs.get("seconds") for ds in extracts.values()] + [r.attrs.get("seconds") for r in crosses.values()]
    summary["analysis_seconds"] = round(float(sum(timed)), 1) if all(t is not None for t in timed) else None
    summary["findings"] = findings(summary)
    figs = make_figures(specs, extracts, crosses, summary, out)
    summary["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    summary["figures"] = figs
    _write_json(out / "summary.json", summary)
    write_report(summary, figs, cfg, out)
    print(f"report: {out / 'report.md'}")
    for f in summary["findings"]:
        print(f"  [{f['reproduced']}] {f['claim']}")
    return 0


def _portable_command(command: str) -> str:
    """The command line without machine-specific paths (``--out``, ``--data-dir``)."""
    words, out, skip = command.split(), [], False
    for w in words:
        if skip:
            skip = False
            continue
        if w == "--out":
            skip = True
            continue
        if w == "--data-dir":
            out.append("--data-dir PATH")
            skip = True
            continue
        if w != "--no-progress":
            out.append(w)
    return " ".join(out)


def _data_text(cfg, data):
    n_train, n_eval = len(data["y_train"]), len(data["y_eval"])
    if cfg["dataset"] == "digits":
        return (f"scikit-learn 8×8 digits, {n_train} training / {n_eval} held-out images (seeded split, "
                f"seed {cfg['split_seed']}), standardised, no augmentation")
    return (f"CIFAR-10 at {cfg['image_size']}×{cfg['image_size']} px, {n_train} training images (before the "
            f"training fraction), {n_eval} test images (seeded subset)")


if __name__ == "__main__":
    sys.exit(main())
