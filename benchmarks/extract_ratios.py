"""What extracting costs over the forward passes alone (issue 23: at most 1.15x).

Usage::

    python benchmarks/extract_ratios.py                        # 10,000 images, batches of 128
    python benchmarks/extract_ratios.py --data-dir ../shared/data   # CIFAR-10 test images
    python benchmarks/extract_ratios.py --device cuda --pooling flatten spatial_mean
    python benchmarks/extract_ratios.py --compression lz4 none --tree ../wt-old   # old vs new
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
  ratio then measures the disk and the page cache as much as the overlap);
  ``spatial_mean`` stores 16, 32 or 64 per block.

- **disk floor** (``--disk-floor``): the forward passes while *another process* writes as
  many bytes as the first extraction stored, in 8 MiB blocks with ``O_DIRECT`` (no
  Python, no page cache in its way), timed until both are done. It is what writing that
  many bytes costs the forward passes on this machine whoever writes them: no writer in
  the same process can beat it by much.

Each source tree (this one, and every ``--tree``) runs in its own process (its ``repsim``
first on ``sys.path``), started once and then driven run by run, so that only one process
works at a time and the trees' runs interleave: forward, then each pooling x compression's
extraction, tree after tree, ``--repeats`` times, after one warm-up of each. It prints the
machine and its load, the best and the median time of each run and the ratios
best/best and median/median against the same process's forward passes, with the bytes
stored. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), model)
    except OSError:
        pass
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"{model}; {os.cpu_count()} CPUs; load average {load}"


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


class Workload:
    """The model, the batches and the two timed runs, in one process."""

    def __init__(self, args):
        import repsim
        from repsim.models import block_names, cifar_resnet

        self.repsim, self.args = repsim, args
        self.device = torch.device(args.device)
        torch.manual_seed(0)
        self.model = cifar_resnet(56).to(self.device).eval()
        self.names = block_names(self.model)
        x = images(args.n, args.data_dir)
        self.batches = [x[i:i + args.batch_size] for i in range(0, args.n, args.batch_size)]
        if self.device.type == "cuda":
            self.batches = [b.pin_memory() for b in self.batches]

    def forward(self, batches=None) -> tuple[float, int]:
        sync(self.device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for b in self.batches if batches is None else batches:
                self.model(b.to(self.device, non_blocking=True))
        sync(self.device)
        return time.perf_counter() - t0, 0

    def extract(self, pooling: str, compression: str, folder: str,
                batches=None) -> tuple[float, int]:
        out = os.path.join(folder, f"acts_{os.getpid()}_{pooling}_{compression}.zarr")
        shutil.rmtree(out, ignore_errors=True)
        sync(self.device)
        t0 = time.perf_counter()
        codec = {} if compression == "default" else {"compression": compression}
        self.repsim.extract(self.model, self.batches if batches is None else batches,
                            layers=self.names, out=out, pooling=pooling,
                            dtype=self.args.dtype, progress=False, **codec)
        sync(self.device)
        elapsed = time.perf_counter() - t0
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
        shutil.rmtree(out, ignore_errors=True)
        return elapsed, size


#: the other process of ``--disk-floor`` (python -c, argv: PATH BYTES): writes BYTES zeros
#: to PATH in 8 MiB blocks, with O_DIRECT where the file system takes it (else buffered and
#: then fsync), and removes the file; nothing imported but os and mmap
WRITE_BYTES = """
import mmap, os, sys
path, nbytes, block = sys.argv[1], int(sys.argv[2]), 8 << 20
buf = mmap.mmap(-1, block)
flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
try:
    fd = os.open(path, flags | getattr(os, "O_DIRECT", 0))
except OSError:
    fd = os.open(path, flags)
done = 0
while done < nbytes:
    done += os.write(fd, memoryview(buf)[:min(block, -(-(nbytes - done) // 4096) * 4096)])
os.fsync(fd)
os.close(fd)
os.remove(path)
"""


def serve(args) -> None:
    """A worker: warm up, then answer ``forward`` / ``extract POOLING COMPRESSION`` lines
    on stdin with ``{"time": s, "size": bytes}`` lines on stdout."""
    sys.path.insert(0, os.path.abspath(args.serve))
    import repsim

    work = Workload(args)
    work.forward(work.batches[:2])  # warm-up: kernels, allocator, thread pools
    for pooling in args.pooling:
        for compression in args.compression:
            work.extract(pooling, compression, args.tmp, work.batches[:2])
    print(json.dumps({"repsim": repsim.__file__, "threads": torch.get_num_threads()}),
          flush=True)
    for line in sys.stdin:
        op, *rest = line.split()
        if op == "floor":  # the forward passes beside another process's writes
            t0 = time.perf_counter()
            writer = subprocess.Popen([sys.executable, "-c", WRITE_BYTES,
                                       os.path.join(args.tmp, "floor.bin"), rest[0]])
            work.forward()
            writer.wait()
            t, size = time.perf_counter() - t0, int(rest[0])
        else:
            t, size = work.forward() if op == "forward" else work.extract(*rest, args.tmp)
        print(json.dumps({"time": t, "size": size}), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--pooling", nargs="+", default=["flatten", "spatial_mean"])
    p.add_argument("--compression", nargs="+", default=["default"],
                   help="extract(compression=...): none, lz4, zstd, or default (each tree's "
                        "own default)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--tmp", default=None, help="folder for the stores (default: system temp)")
    p.add_argument("--tree", action="append", default=[],
                   help="another source tree (e.g. a `git worktree` of main) timed alongside "
                        "this one, in the same interleaved rounds; repeatable")
    p.add_argument("--forward-in", choices=["each", "first"], default="each",
                   help="time the forward passes in each tree's process, or in the first "
                        "only (the other trees' ratios then use the first's)")
    p.add_argument("--disk-floor", action="store_true",
                   help="also time the forward passes while another process writes the first "
                        "extraction's bytes (O_DIRECT): what those writes cost on this machine")
    p.add_argument("--quick", action="store_true", help="256 images, one repeat")
    p.add_argument("--serve", default=None, help=argparse.SUPPRESS)  # a worker's tree
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.batch_size, args.repeats = 256, 64, 1
    if args.serve:
        serve(args)
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = [here] + [os.path.abspath(t) for t in args.tree]
    variants = [(p_, c) for p_ in args.pooling for c in args.compression]
    print(f"# {' '.join(sys.argv)}\n# {machine()}")
    with tempfile.TemporaryDirectory(dir=args.tmp) as folder:
        forwarded = [a for a in (argv if argv is not None else sys.argv[1:])]
        cmd = [sys.executable, os.path.abspath(__file__), *forwarded, "--tmp", folder]
        workers = []
        for tree in trees:  # started one after the other: only one warms up at a time
            w = subprocess.Popen(cmd + ["--serve", tree], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, cwd=tree)
            workers.append(w)
            info = json.loads(w.stdout.readline())
            print(f"# tree {tree}: repsim from {info['repsim']}, torch threads "
                  f"{info['threads']}")
        print(f"ResNet-56, 27 residual blocks, {args.n} images in batches of "
              f"{args.batch_size}, {args.device}, dtype {args.dtype}", flush=True)

        def ask(w, line: str) -> dict:
            w.stdin.write(line + "\n")
            w.stdin.flush()
            return json.loads(w.stdout.readline())

        times: dict = {}
        sizes: dict = {}
        for r in range(args.repeats):
            for i, (tree, w) in enumerate(zip(trees, workers)):
                if i == 0 or args.forward_in == "each":
                    times.setdefault((tree, "forward"), []).append(ask(w, "forward")["time"])
                for v in variants:
                    got = ask(w, "extract " + " ".join(v))
                    times.setdefault((tree, v), []).append(got["time"])
                    sizes[tree, v] = got["size"]
            if args.disk_floor:
                got = ask(workers[0], f"floor {sizes[here, variants[0]]}")
                times.setdefault((here, "floor"), []).append(got["time"])
            print(f"# round {r} done; load average "
                  f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        for w in workers:
            w.stdin.close()
            w.wait()
    print(f"{'':40s}{'best s':>9s}{'median s':>9s}{'best/fwd':>9s}{'med/fwd':>9s}"
          f"{'stored':>13s}")
    for tree in trees:
        fwd = times.get((tree, "forward"), times[here, "forward"])
        best_f, med_f = min(fwd), statistics.median(fwd)
        tag = "this tree" if tree == here else os.path.basename(tree)
        label = tag + (": forward passes" if (tree, "forward") in times else ": (first's forward)")
        print(f"{label:40s}{best_f:9.3f}{med_f:9.3f}{1:9.2f}{1:9.2f}")
        for v in variants:
            best, med = min(times[tree, v]), statistics.median(times[tree, v])
            print(f"{tag + ': extract ' + ' '.join(v):40s}{best:9.3f}{med:9.3f}"
                  f"{best / best_f:9.2f}{med / med_f:9.2f}{sizes[tree, v] / 2**20:9.1f} MiB")
    if (here, "floor") in times:
        fwd = times[here, "forward"]
        best, med = min(times[here, "floor"]), statistics.median(times[here, "floor"])
        label = (f"disk floor: forward + {sizes[here, variants[0]] / 2**20:.0f} MiB by "
                 "another process")
        print(f"{label:40s}{best:9.3f}{med:9.3f}{best / min(fwd):9.2f}"
              f"{med / statistics.median(fwd):9.2f}")
    print(f"# {machine()}")


if __name__ == "__main__":
    main()
