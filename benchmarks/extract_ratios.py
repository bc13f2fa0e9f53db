"""What extracting costs over the forward passes alone (issue 23: at most 1.15x).

Usage::

    python benchmarks/extract_ratios.py                        # 10,000 images, batches of 128
    python benchmarks/extract_ratios.py --data-dir ../shared/data   # CIFAR-10 test images
    python benchmarks/extract_ratios.py --device cuda --pooling flatten spatial_mean
    python benchmarks/extract_ratios.py --quick                # 256 images: a smoke run

The workload: a ResNet-56 of :mod:`repsim.models` (random initialisation, eval mode) on
``n`` CIFAR-shaped images (``3 x 32 x 32``; random by default, the first ``n`` CIFAR-10
test images with ``--data-dir``), in batches already in memory.

- **forward**: the plain forward passes over the batches under ``torch.inference_mode``
  (on a GPU, synchronised at the end).
- **extract**: :func:`repsim.extract` of the 27 residual-block outputs
  (:func:`repsim.models.block_names`) over the same batches into a fresh Zarr store under
  ``--tmp`` (a disk, not a RAM folder, for a fair write), until it returns with the store
  complete. ``flatten`` stores the whole block outputs (16,384 + 8,192 + 4,096 values
  per block and image: about 1 MB per image in float32, 10 GB at 10,000 images -- the
  ratio then measures the disk as much as the overlap); ``spatial_mean`` stores 16, 32
  or 64 per block.

The runs are interleaved (forward, then each pooling's extraction, ``--repeats`` times,
after one warm-up of each); it prints the best and the median time of each and the
ratios best/best and median/median, with the bytes stored. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import torch

import repsim
from repsim.models import block_names, cifar_resnet


def images(n: int, data_dir: str | None) -> torch.Tensor:
    if data_dir:
        from repsim.datasets import load_cifar10

        x, _ = load_cifar10(os.path.join(data_dir, "cifar-10-batches-py")
                            if os.path.isdir(os.path.join(data_dir, "cifar-10-batches-py"))
                            else data_dir, train=False)
        if len(x) < n:
            raise SystemExit(f"--data-dir holds {len(x)} test images; --n is {n}")
        x = x[:n].astype(np.float32) / 255.0
        mean, std = x.mean((0, 2, 3), keepdims=True), x.std((0, 2, 3), keepdims=True)
        return torch.from_numpy((x - mean) / std)
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain(model, batches, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            model(b.to(device, non_blocking=True))
    sync(device)
    return time.perf_counter() - t0


def extracted(model, batches, device, names, variant, dtype, folder) -> tuple[float, int]:
    pooling, compression = variant
    out = os.path.join(folder, f"acts_{pooling}_{compression}.zarr")
    shutil.rmtree(out, ignore_errors=True)
    sync(device)
    t0 = time.perf_counter()
    repsim.extract(model, batches, layers=names, out=out, pooling=pooling, dtype=dtype,
                   compression=compression, progress=False)
    sync(device)
    elapsed = time.perf_counter() - t0
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    shutil.rmtree(out, ignore_errors=True)
    return elapsed, size


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--pooling", nargs="+", default=["flatten", "spatial_mean"])
    p.add_argument("--compression", nargs="+", default=["lz4"],
                   help="extract(compression=...): lz4 (default), zstd, none")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--tmp", default=None, help="folder for the stores (default: system temp)")
    p.add_argument("--quick", action="store_true", help="256 images, one repeat")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.batch_size, args.repeats = 256, 64, 1
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = cifar_resnet(56).to(device).eval()
    names = block_names(model)
    x = images(args.n, args.data_dir)
    batches = [x[i:i + args.batch_size] for i in range(0, args.n, args.batch_size)]
    if device.type == "cuda":
        batches = [b.pin_memory() for b in batches]
    print(f"ResNet-56, {len(names)} residual blocks, {args.n} images in {len(batches)} "
          f"batches of {args.batch_size}, {args.device}, dtype {args.dtype}, "
          f"torch threads {torch.get_num_threads()}")
    variants = [(p_, c) for p_ in args.pooling for c in args.compression]
    times: dict = {"forward": [], **{v: [] for v in variants}}
    sizes: dict = {}
    with tempfile.TemporaryDirectory(dir=args.tmp) as folder:
        plain(model, batches[:2], device)  # warm-up: kernels, allocator, thread pools
        for v in variants:
            extracted(model, batches[:2], device, names, v, args.dtype, folder)
        for _ in range(args.repeats):
            times["forward"].append(plain(model, batches, device))
            for v in variants:
                elapsed, sizes[v] = extracted(model, batches, device, names, v, args.dtype,
                                              folder)
                times[v].append(elapsed)
    best_f, med_f = min(times["forward"]), statistics.median(times["forward"])
    print(f"{'':24s}{'best s':>10s}{'median s':>10s}{'best/fwd':>10s}{'med/fwd':>10s}"
          f"{'stored':>12s}")
    print(f"{'forward passes':24s}{best_f:10.3f}{med_f:10.3f}{1:10.2f}{1:10.2f}{'':>12s}")
    for v in variants:
        best, med = min(times[v]), statistics.median(times[v])
        print(f"{'extract ' + ' '.join(v):24s}{best:10.3f}{med:10.3f}{best / best_f:10.2f}"
              f"{med / med_f:10.2f}{sizes[v] / 2**20:10.1f} MiB")


if __name__ == "__main__":
    main()
