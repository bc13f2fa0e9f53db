"""Numbers for the cost model on the user guide page "Performance".

Run from the repository root:

    .venv/bin/python docs/scripts/cost_model.py

One batch of n = 256 examples through L = 16 layers of p = 1024 float32 features. Times,
best of 5 repeats (1 for the slow loop), for numpy and torch (CPU):

- the gram floor: the L grams X Xᵀ alone, which any CKA implementation must form;
- repsim: ``MinibatchCKA.update`` on the whole batch (grams, U-centring, one pairing GEMM);
- a per-pair loop, the way most CKA code is written: for every (a, b) pair, centre with
  H = I - 11ᵀ/n and form tr(K H L H) and the two self terms with n×n×n products.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

import repsim

N, L, P, REPEATS = 256, 16, 1024, 5


def best(fn, repeats=REPEATS):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


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
        return tr(k @ h @ l @ h)

    out = np.empty((len(acts), len(acts)))
    for i, k in enumerate(grams):
        for j, l in enumerate(grams):
            out[i, j] = float(hsic(k, l)) / float(np.sqrt(float(hsic(k, k)) * float(hsic(l, l))))
    return out


def main():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((N, P)).astype(np.float32)
    acts_np = [np.tanh(base + 0.3 * i * rng.standard_normal((N, P)).astype(np.float32))
               for i in range(L)]
    gram_flops = L * 2 * N * N * P
    pair_flops = 2 * L * L * N * N
    loop_flops = L * L * 3 * 3 * 2 * N ** 3
    print(f"n = {N}, L = {L} layers, p = {P} features, float32; best of {REPEATS}; "
          f"torch threads: {torch.get_num_threads()}")
    print(f"flops: grams {gram_flops / 1e9:.2f} G, pairing GEMM {pair_flops / 1e9:.3f} G, "
          f"per-pair loop {loop_flops / 1e9:.1f} G")
    print(f"{'library':>8} | {'gram floor':>10} | {'repsim update':>13} | {'ratio':>5} | "
          f"{'per-pair loop':>13} | {'ratio':>6} | {'loop / repsim':>13}")
    for lib in ("numpy", "torch"):
        acts = acts_np if lib == "numpy" else [torch.from_numpy(a) for a in acts_np]
        floor = best(lambda: [a @ a.T for a in acts])

        def update():
            acc = repsim.MinibatchCKA()
            acc.update(acts)
            return acc

        update()  # warm-up (numba compilation on the numpy path)
        t_repsim = best(update)
        t_loop = best(lambda: per_pair_loop(acts, lib), repeats=1)
        print(f"{lib:>8} | {floor * 1e3:8.1f}ms | {t_repsim * 1e3:11.1f}ms | "
              f"{t_repsim / floor:5.2f} | {t_loop * 1e3:11.0f}ms | {t_loop / floor:6.1f} | "
              f"{t_loop / t_repsim:12.0f}×")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"load average (1, 5, 15 min) at the end: {load} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
