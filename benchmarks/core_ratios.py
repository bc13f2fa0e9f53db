"""Side-by-side timings of the CKA core against the gram floor, in one process.

Usage::

    python benchmarks/core_ratios.py [--repeats 5] [--layers 64] [--batches 4] [--n 256] [--p 4096]
        [--data gaussian resnet transformer] [--precisions float32 bfloat16]
    python benchmarks/core_ratios.py --device cuda [...]

Data (``--data``, all three by default, each its own table): ``gaussian``, ``--layers``
float32 layers of ``n x p`` standard normal values (zero means); ``resnet``, real
activations of a CIFAR ResNet-20 (random weights, ``n`` random 32 x 32 images): its
post-ReLU, post-BN and residual-sum (block output) layers, whose column means are large
against their spread -- the case the Gaussian data never exercises; ``transformer``, the
hidden states of a random BERT-style encoder (hidden 256, 4 blocks, 16 tokens, flattened).
The first line names the CPU model, its bfloat16 flags and the load average.

Prints, for the all-pairs minibatch CKA workload (float32), the time of repsim's numpy and
torch paths as a multiple of the gram floor (the float32 grams ``X X^T`` alone, same
library), the gram-forming step alone (``repsim.kernels.linear_gram``: float64 column
means, centring, then the float32 gram; its ratio to the floor is the cost of centring
first), the speed-up over a loop over layer pairs with an ``n x n x n`` product per pair
(what most peer libraries do), and the numba-vs-numpy figures of the fused steps. Runs
are interleaved and the minimum over repeats is kept, so a shared machine's noise hits
both sides alike; numpy and torch are measured in separate processes (one script run).

With ``--device cuda`` (or ``cuda:N``) only the torch path is measured, with the tensors on
that GPU: repsim against the float32 grams ``X X^T`` on the device, and the per-pair loop
on the device (numba runs on host memory only, so its rows and section are left out).
Every timed function ends with ``torch.cuda.synchronize()``, so a time covers the kernels
it queued, and each is run once untimed first (CUDA context, cuBLAS handles).
"""

import argparse
import time

import numpy as np

import repsim
from repsim.kernels import centre_into, linear_gram, rbf_from_linear


def best_of(fns, repeats):
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def per_pair_loop(batch):
    """Unbiased HSIC pair by pair with n x n x n products (the peer-library pattern)."""
    import torch

    grams = [x @ x.T for x in batch]
    n = grams[0].shape[0]
    device = grams[0].device
    tilde = [g.double() - torch.diag(torch.diag(g.double())) for g in grams]
    one = torch.ones(n, dtype=torch.float64, device=device)

    def h(k, l):
        kl = k @ l
        return (torch.trace(kl) + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * (one @ kl @ one)) / (n * (n - 3))

    self_terms = [h(k, k) for k in tilde]
    out = torch.empty(len(tilde), len(tilde), dtype=torch.float64, device=device)
    for i, k in enumerate(tilde):
        for j, l in enumerate(tilde):
            out[i, j] = h(k, l) / torch.sqrt(self_terms[i] * self_terms[j])
    return out


def machine():
    """CPU model, its bfloat16 flags (repsim.precision_support) and the load average."""
    import os

    info = repsim.precision_support()
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"CPU: {info['name']} ({os.cpu_count()} CPUs); bfloat16 units: "
            f"{', '.join(info['units']) or 'none (no avx512_bf16 / amx_bf16)'}; load average {load}")


def real_layers(kind, n, seed=0):
    """Float32 ``(n, features)`` numpy activations of real layers: the ASV suite's
    (``benchmarks/benchmarks/bench_core.py``), so both measure the same data."""
    from benchmarks.bench_core import _real_layers  # benchmarks/ is this script's directory

    return {k: v.numpy() for k, v in _real_layers(kind, n, seed).items()}


def measure(library, args):
    """Time floor and repsim for one library (run in its own process, see main)."""
    rng = np.random.default_rng(0)
    if args.data == "gaussian":
        batch = {f"layer{i}": rng.standard_normal((args.n, args.p), dtype=np.float32)
                 for i in range(args.layers)}
    else:
        batch = real_layers(args.data, args.n)
    if library == "torch":
        import torch

        batch = {k: torch.from_numpy(v) for k, v in batch.items()}

    def floor():
        for _ in range(args.batches):
            for x in batch.values():
                x @ x.T

    def minibatch(**kw):
        def run():
            acc = repsim.MinibatchCKA(**kw)
            for _ in range(args.batches):
                acc.update(batch)
            return acc.compute()
        return run

    xp = repsim._backend.namespace(next(iter(batch.values())))

    def centred_grams():
        # the gram-forming step alone: float64 column means, centring, then the float32 gram
        for _ in range(args.batches):
            for x in batch.values():
                linear_gram(x, xp)

    import warnings

    minibatch()()  # compile the numba kernels once
    fns = {"floor": floor, "repsim": minibatch(), "repsim (numpy engine)": minibatch(engine="numpy"),
           "centred grams": centred_grams}
    reduced = [m for m in args.precisions if m != "float32"]
    for mode in reduced:
        fns[f"repsim {mode}"] = minibatch(precision=mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a reduced mode without units warns: measured anyway
        t = best_of(fns, args.repeats)
    rows = [(f"repsim {library}, numba centring (auto)", t["repsim"], t["repsim"] / t["floor"]),
            (f"repsim {library}, numpy centring", t["repsim (numpy engine)"],
             t["repsim (numpy engine)"] / t["floor"]),
            (f"centred grams {library} (linear_gram, one product per layer)", t["centred grams"],
             t["centred grams"] / t["floor"])]
    rows += [(f"repsim {library}, precision={mode!r}", t[f"repsim {mode}"],
              t[f"repsim {mode}"] / t["floor"]) for mode in reduced]
    rows.append((f"gram floor {library} (float32)", t["floor"], 1.0))
    for name, sec, ratio in rows:
        print(f"| {name} | {sec:.3f} | {ratio:.3f} |")

    if library == "torch":
        sub = {k: batch[k] for k in list(batch)[: args.pair_layers]}

        def packed():
            acc = repsim.MinibatchCKA()
            acc.update(sub)
            return acc.compute()

        tp = best_of({"per-pair loop": lambda: per_pair_loop(list(sub.values())), "repsim": packed},
                     max(1, args.repeats // 2))
        ref = per_pair_loop(list(sub.values())).numpy()
        dev = float(np.max(np.abs(packed().values - ref)))
        print(f"\nper-pair loop ({args.pair_layers} layers, 1 batch, torch): {tp['per-pair loop']:.3f} s; "
              f"repsim {tp['repsim']:.3f} s; speed-up {tp['per-pair loop'] / tp['repsim']:.1f}x; "
              f"max |difference| {dev:.2e}")
    else:
        x = next(iter(batch.values()))
        k = x @ x.T
        out = np.empty(args.n * args.n)
        steps = {
            "U-centre (numba)": lambda: centre_into(k, True, out, np, engine="numba"),
            "U-centre (numpy)": lambda: centre_into(k, True, out, np, engine="numpy"),
            "centre (numba)": lambda: centre_into(k, False, out, np, engine="numba"),
            "centre (numpy)": lambda: centre_into(k, False, out, np, engine="numpy"),
            "rbf from gram (numba)": lambda: rbf_from_linear(k, np, sigma=10.0, engine="numba"),
            "rbf from gram (numpy)": lambda: rbf_from_linear(k, np, sigma=10.0, engine="numpy"),
        }
        for f in steps.values():
            f()
        ts = best_of({name: (lambda f=f: [f() for _ in range(20)]) for name, f in steps.items()}, args.repeats)
        print("\n| step (n=%d) | numba (ms) | numpy (ms) | numpy / numba |\n|---|---|---|---|" % args.n)
        for step in ("U-centre", "centre", "rbf from gram"):
            a, b = ts[f"{step} (numba)"] / 20 * 1e3, ts[f"{step} (numpy)"] / 20 * 1e3
            print(f"| {step} | {a:.3f} | {b:.3f} | {b / a:.2f} |")


def measure_device(args):
    """Time floor, repsim and the per-pair loop with torch tensors on a CUDA device."""
    import torch

    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    batch = {f"layer{i}": torch.from_numpy(rng.standard_normal((args.n, args.p), dtype=np.float32)).to(device)
             for i in range(args.layers)}

    def synced(fn):
        def run():
            out = fn()
            torch.cuda.synchronize(device)
            return out
        return run

    def floor():
        for _ in range(args.batches):
            for x in batch.values():
                x @ x.T

    def minibatch(precision="float32"):
        def run():
            acc = repsim.MinibatchCKA(precision=precision)
            for _ in range(args.batches):
                acc.update(batch)
            return acc.compute()
        return run

    modes = ["float32", "tf32", "bfloat16"]
    fns = {"floor": synced(floor)}
    fns.update({f"repsim {m}": synced(minibatch(m)) for m in modes})
    results = {name: fn() for name, fn in fns.items()}  # untimed first run: context, handles
    acc = repsim.MinibatchCKA()
    for _ in range(args.batches):
        acc.update({k: v.double() for k, v in batch.items()})
    ref = acc.compute().values
    t = best_of(fns, args.repeats)
    where = f"torch {device}"
    print("\n| path | time (s) | x gram floor | max abs(CKA - float64) |\n|---|---|---|---|")
    for m in modes:
        err = float(np.nanmax(np.abs(results[f"repsim {m}"].values - ref)))
        print(f"| repsim {where}, precision={m!r} | {t[f'repsim {m}']:.3f} | "
              f"{t[f'repsim {m}'] / t['floor']:.3f} | {err:.1e} |")
    print(f"| gram floor {where} (float32) | {t['floor']:.3f} | 1.000 | |")

    sub = {k: batch[k] for k in list(batch)[: args.pair_layers]}

    def packed():
        acc = repsim.MinibatchCKA()
        acc.update(sub)
        return acc.compute()

    loop = synced(lambda: per_pair_loop(list(sub.values())))
    packed = synced(packed)
    ref = loop().cpu().numpy()
    dev = float(np.max(np.abs(packed().values - ref)))
    tp = best_of({"per-pair loop": loop, "repsim": packed}, max(1, args.repeats // 2))
    print(f"\nper-pair loop ({len(sub)} layers, 1 batch, {where}): {tp['per-pair loop']:.3f} s; "
          f"repsim {tp['repsim']:.3f} s; speed-up {tp['per-pair loop'] / tp['repsim']:.1f}x; "
          f"max |difference| {dev:.2e}")


def main():
    import subprocess
    import sys

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layers", type=int, default=64)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--p", type=int, default=4096)
    ap.add_argument("--pair-layers", type=int, default=16,
                    help="layers in the per-pair-loop comparison (it is slow)")
    ap.add_argument("--device", default="cpu",
                    help="cpu (default: numpy and torch, numba included) or a CUDA device, "
                    "cuda or cuda:N (torch only, tensors on that GPU)")
    ap.add_argument("--data", nargs="+", default=["gaussian", "resnet", "transformer"],
                    choices=["gaussian", "resnet", "transformer"])
    ap.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"],
                    choices=["float32", "bfloat16"])
    ap.add_argument("--library", choices=["numpy", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.device != "cpu":
        import torch

        try:
            kind = torch.device(args.device).type
        except RuntimeError as err:
            ap.error(f"--device {args.device!r}: {err}")
        if kind != "cuda":
            ap.error(f"--device must be cpu or a CUDA device (cuda, cuda:N); got {args.device!r}")
        if not torch.cuda.is_available():
            ap.error(f"--device {args.device!r} needs CUDA, but torch.cuda.is_available() is False")
        print(f"workload: {args.layers} layers x {args.batches} batches of n={args.n}, p={args.p}, "
              f"float32; repeats={args.repeats} (interleaved, min kept); torch only, tensors on "
              f"{args.device} ({torch.cuda.get_device_name(torch.device(args.device))}, torch "
              f"{torch.__version__}), each timed function ending in torch.cuda.synchronize()")
        measure_device(args)
        return
    if args.library:
        args.data = args.data[0]
        measure(args.library, args)
        return
    print(machine())
    for data in args.data:
        what = (f"{args.layers} Gaussian layers of n={args.n}, p={args.p}" if data == "gaussian"
                else f"{data} activations (real layers, n={args.n})")
        print(f"\n## {data}\n\nworkload: {what} x {args.batches} batches, float32; "
              f"repeats={args.repeats} (interleaved, min kept); numpy and torch each in a fresh "
              "process so their BLAS thread pools never alternate")
        rows, extras = [], []
        for library in ("numpy", "torch"):
            argv = [a for a in sys.argv[1:]]
            if "--data" in argv:  # the child measures one kind of data
                i = argv.index("--data")
                j = i + 1
                while j < len(argv) and not argv[j].startswith("--"):
                    j += 1
                del argv[i:j]
            out = subprocess.run([sys.executable, __file__, "--library", library, "--data", data]
                                 + argv, check=True, capture_output=True, text=True).stdout
            head, _, tail = out.partition("\n\n")
            rows.append(head.strip())
            extras.append(tail.strip())
        print("\n| path | time (s) | x gram floor |\n|---|---|---|")
        print("\n".join(rows))
        for extra in extras:
            print("\n" + extra)
    print("\n" + machine())


if __name__ == "__main__":
    main()
