"""Side by side: ``compare_models`` of two source trees on real activations, in one run.

Usage (from the repository root; ``git worktree add ../old <commit>`` gives the old tree)::

    python benchmarks/tree_ratios.py --trees ../old . [--rounds 2] [--batches 2] [--workload every]

For each tree a fresh process (``PYTHONPATH=<tree>``) runs the workload and prints one JSON
line; the trees alternate over ``--rounds`` rounds, so a drifting machine load hits both
alike. Workloads (CIFAR-style ResNets from ``repsim.models.cifar_resnet``, random weights,
seed 0, batches of 256 random 32 x 32 images, unbiased minibatch CKA):

``every``
    ResNet-56 against itself on every module output (the paper's protocol: every named
    module except the root and the ``nn.Sequential`` containers) -- conv, BN, ReLU (post-ReLU,
    non-negative: large column means) and residual-sum outputs.
``blocks``
    ResNet-20 against ResNet-56 on the residual-block outputs.

Figures per process: *in repsim*, the time spent inside repsim's own work (the gram hooks'
``_gram`` and ``MinibatchCKA.update_grams``); *floor*, the float32 grams ``X X^T`` of the same
layers alone (torch matmul on the stored activations of every batch, timed in the same
process, interleaved with repsim); their ratio; *total - forward*; and the largest
deviation of the CKA matrix from a float64 reference written out here (U-centred float64
grams of the same float32 activations, Song et al.'s unbiased HSIC, summed over batches).
The minimum over ``--repeats`` repetitions inside a process is kept. The CPU model, its
bfloat16 flags and the load average are printed first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

N = 256


def machine() -> str:
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    keep = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"{model}; {os.cpu_count()} CPUs; flags {' '.join(keep) or 'none of interest'}; load {load}"


def _reference(acts_per_batch, names_a, names_b):
    """Unbiased CKA from float64 U-centred grams of the stored float32 activations."""
    import numpy as np

    def ucentred(x):
        x = x.astype(np.float64)
        k = x @ x.T
        n = k.shape[0]
        np.fill_diagonal(k, 0.0)
        r = k.sum(1)
        u = k - r[:, None] / (n - 2) - r[None, :] / (n - 2) + k.sum() / ((n - 1) * (n - 2))
        np.fill_diagonal(u, 0.0)
        return u.ravel()

    cross = self_a = self_b = 0.0
    for acts in acts_per_batch:
        ga = np.stack([ucentred(acts["a", n]) for n in names_a])
        gb = np.stack([ucentred(acts["b", n]) for n in names_b])
        cross = cross + ga @ gb.T
        self_a = self_a + np.einsum("ij,ij->i", ga, ga)
        self_b = self_b + np.einsum("ij,ij->i", gb, gb)
    return cross / np.sqrt(np.outer(self_a, self_b))


def child(args) -> None:
    import numpy as np
    import torch
    from torch import nn

    torch.set_num_threads(args.threads)
    import repsim
    from repsim.adapters import torch as adapter
    from repsim.models import block_names, cifar_resnet
    from repsim.streaming import MinibatchCKA

    torch.manual_seed(0)
    if args.workload == "every":
        model_a = model_b = cifar_resnet(56).eval()
        names_a = names_b = [n for n, m in model_a.named_modules()
                             if n and not isinstance(m, nn.Sequential)]
    else:
        model_a, model_b = cifar_resnet(20).eval(), cifar_resnet(56).eval()
        names_a, names_b = block_names(model_a), block_names(model_b)
    within = model_b is model_a
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(args.batches * N, 3, 32, 32, generator=gen)
    batches = list(images.split(N))

    def capture(model, names, x):
        out, modules = {}, dict(model.named_modules())
        hs = [modules[n].register_forward_hook(
            lambda m, i, o, n=n: out.__setitem__(n, o.detach().reshape(N, -1).float().clone()))
            for n in names]
        try:
            with torch.inference_mode():
                model(x)
        finally:
            for h in hs:
                h.remove()
        return out

    stored = []
    for x in batches:
        acts = {("a", n): v for n, v in capture(model_a, names_a, x).items()}
        bside = acts if within else {("b", n): v for n, v in capture(model_b, names_b, x).items()}
        acts.update({("b", k[1]): v for k, v in bside.items()})
        stored.append(acts)
    ref = _reference([{k: v.numpy() for k, v in a.items()} for a in stored], names_a, names_b)

    def floor():
        with torch.inference_mode():
            for acts in stored:
                for (side, _), x in acts.items():
                    if side == "a" or not within:
                        x @ x.T

    def forwards():
        with torch.inference_mode():
            for x in batches:
                model_a(x)
                if not within:
                    model_b(x)

    clock = {"t": 0.0}
    saved = []
    for owner, attr in ((adapter.GramHooks, "_gram"), (MinibatchCKA, "update_grams")):
        original = getattr(owner, attr)
        saved.append((owner, attr, original))

        def wrapper(*a, _f=original, **k):
            t0 = time.perf_counter()
            out = _f(*a, **k)
            clock["t"] += time.perf_counter() - t0
            return out

        setattr(owner, attr, wrapper)
    kw = dict(getattr(args, "options", None) or {})

    def ours():
        return repsim.compare_models(model_a, None if within else model_b, batches, names_a,
                                     None if within else names_b, progress=False, **kw)

    best = {"floor": float("inf"), "repsim": float("inf"), "total": float("inf"),
            "forward": float("inf")}
    result = None
    for _ in range(args.repeats):
        for name, fn in (("floor", floor), ("forward", forwards), ("repsim", ours)):
            clock["t"] = 0.0
            t0 = time.perf_counter()
            out = fn()
            t = time.perf_counter() - t0
            if name == "repsim":
                result = out
                best["total"] = min(best["total"], t)
                best["repsim"] = min(best["repsim"], clock["t"])
            else:
                best[name] = min(best[name], t)
    values = np.asarray(result.values if hasattr(result, "values") else result, dtype=np.float64)
    print(json.dumps({
        "tree": args.child, "layers": [len(names_a), len(names_b)], "batches": args.batches,
        "floor": best["floor"], "in_repsim": best["repsim"],
        "ratio": best["repsim"] / best["floor"],
        "total_minus_forward": best["total"] - best["forward"],
        "ratio_total": (best["total"] - best["forward"]) / best["floor"],
        "max_dev": float(np.nanmax(np.abs(values - ref))),
    }), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trees", nargs="+", default=["."])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workload", choices=("every", "blocks"), default="every")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    print(machine(), flush=True)
    print(f"workload {args.workload}: {args.batches} batches of {N}, {args.threads} threads", flush=True)
    rows = []
    for r in range(args.rounds):
        for tree in args.trees:
            env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
            cmd = [sys.executable, __file__, "--child", tree, "--repeats", str(args.repeats),
                   "--batches", str(args.batches), "--threads", str(args.threads),
                   "--workload", args.workload]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"round {r}  {tree:24s} in repsim / floor {row['ratio']:.3f}  "
                  f"(total-forward / floor {row['ratio_total']:.3f})  floor {row['floor']:.2f} s  "
                  f"max |dCKA| {row['max_dev']:.1e}  layers {row['layers']}", flush=True)
    print(machine(), flush=True)


if __name__ == "__main__":
    main()
