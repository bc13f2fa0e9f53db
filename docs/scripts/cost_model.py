"""Numbers for the cost model on the user guide page "Performance".

Run from the repository root:

    .venv/bin/python docs/scripts/cost_model.py

One batch of n = 256 examples through L = 16 layers of p = 1024 float32 features, on ONE
CPU thread (threadpoolctl and torch.set_num_threads), so that the ratios mean the same on
a busy machine as on an idle one. For numpy and for torch:

- the gram floor: the L grams X Xᵀ alone, which any CKA implementation must form;
- repsim: ``MinibatchCKA.update`` on the whole batch (grams, U-centring, one pairing GEMM);
- a per-pair loop, the way most CKA code is written: for every (a, b) pair, centre with
  H = I - 11ᵀ/n and form tr(K H L H) and the two self terms with n×n×n products. It is
  timed on the 4×4 = 16 pairs of the first four layers and scaled to L² pairs (its cost
  is the same for every pair).

Floor and repsim are timed alternately, best of 10; the loop best of 3.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

import repsim

N, L, P, REPEATS = 256, 16, 1024, 10
LOOP_LAYERS = 4


def per_pair_loop(acts, lib):
    n = acts[0].shape[0]
    if lib == "numpy":
        h = np.eye(n, dtype=np.float32) - np.float32(1.0 / n)
        tr = np.trace
    else:
        h = torch.eye(n) - 1.0 / n
        tr = torch.trace
    grams = [a @ a.T for a in acts]

    def hsic(k, l):
        return float(tr(k @ h @ l @ h))

    out = np.empty((len(acts), len(acts)))
    for i, k in enumerate(grams):
        for j, l in enumerate(grams):
            out[i, j] = hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))
    return out


def main():
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    base = rng.standard_normal((N, P)).astype(np.float32)
    acts_np = [np.tanh(base + 0.3 * i * rng.standard_normal((N, P)).astype(np.float32))
               for i in range(L)]
    gram_flops = L * 2 * N * N * P
    pair_flops = 2 * L * L * N * N
    loop_flops = L * L * 3 * 3 * 2 * N ** 3
    print(f"n = {N}, L = {L} layers, p = {P} features, float32, one CPU thread")
    print(f"Gflop: grams {gram_flops / 1e9:.2f}, pairing GEMM {pair_flops / 1e9:.3f}, "
          f"per-pair loop {loop_flops / 1e9:.1f}")
    print("times in ms; ×floor = time / gram floor")
    print(f"{'':>6} | {'floor':>6} | {'repsim':>6} | {'×floor':>6} | "
          f"{'loop':>6} | {'×floor':>6} | {'loop/repsim':>11}")
    for lib in ("numpy", "torch"):
        acts = acts_np if lib == "numpy" else [torch.from_numpy(a) for a in acts_np]

        def update():
            acc = repsim.MinibatchCKA()
            acc.update(acts)
            return acc

        update()  # warm-up (numba compilation on the numpy path)
        floor, t_repsim = [], []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            [a @ a.T for a in acts]
            floor.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            update()
            t_repsim.append(time.perf_counter() - t0)
        floor, t_repsim = min(floor), min(t_repsim)
        loop = []
        for _ in range(3):
            t0 = time.perf_counter()
            per_pair_loop(acts[:LOOP_LAYERS], lib)
            loop.append(time.perf_counter() - t0)
        t_loop = min(loop) * (L / LOOP_LAYERS) ** 2
        print(f"{lib:>6} | {floor * 1e3:6.1f} | {t_repsim * 1e3:6.1f} | "
              f"{t_repsim / floor:6.2f} | {t_loop * 1e3:6.0f} | {t_loop / floor:6.1f} | "
              f"{t_loop / t_repsim:10.0f}×")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"load average (1, 5, 15 min) at the end: {load}; {os.cpu_count()} CPUs")


if __name__ == "__main__":
    with threadpool_limits(limits=1):
        main()
