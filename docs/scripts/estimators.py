"""Numbers for the user guide page "Choosing a measure and an estimator".

Run from the repository root:

    .venv/bin/python docs/scripts/estimators.py

Prints three tables (seeded, so the numbers are the same on every run; about a minute
on one CPU core):

1. biased vs unbiased linear CKA of *independent* data as the number of examples grows;
2. the same for two *related* representations, against a large-n reference;
3. minibatch CKA of a fixed data set across batch sizes, next to full-data CKA and the
   naive average of per-batch CKA.
"""

from __future__ import annotations

import numpy as np

import repsim


def related_pair(rng, n, p=64):
    """Two representations of the same n examples that share structure non-linearly."""
    x = rng.standard_normal((n, p))
    w = rng.standard_normal((p, p)) / np.sqrt(p)
    y = np.tanh(2.0 * x @ w) + 0.7 * rng.standard_normal((n, p))
    return x, y


def table_independent(repeats=20, p=64):
    print(f"1. Independent data, p = q = {p} features, {repeats} seeds per row "
          "(population CKA is 0)")
    print(f"{'n':>6} | {'biased CKA':>17} | {'unbiased CKA':>18}")
    for n in (16, 32, 64, 128, 256, 512, 1024, 2048):
        b, u = [], []
        for seed in range(repeats):
            rng = np.random.default_rng(seed)
            x = rng.standard_normal((n, p))
            y = rng.standard_normal((n, p))
            b.append(repsim.cka(x, y))
            u.append(repsim.cka(x, y, estimator="unbiased"))
        print(f"{n:>6} | {np.mean(b):8.4f} ± {np.std(b):6.4f} | "
              f"{np.mean(u):+9.4f} ± {np.std(u):6.4f}")


def table_related(repeats=20):
    rng = np.random.default_rng(1234)
    x, y = related_pair(rng, 16384)
    ref = repsim.cka(x, y, estimator="unbiased")
    print(f"\n2. Related data (y = tanh(2 x W) + noise, 64 features), {repeats} seeds per row;"
          f" reference: unbiased CKA at n = 16384 = {ref:.4f}")
    print(f"{'n':>6} | {'biased CKA':>17} | {'unbiased CKA':>17}")
    for n in (16, 32, 64, 128, 256, 512, 1024, 2048):
        b, u = [], []
        for seed in range(repeats):
            x, y = related_pair(np.random.default_rng(10_000 + seed), n)
            b.append(repsim.cka(x, y))
            u.append(repsim.cka(x, y, estimator="unbiased"))
        print(f"{n:>6} | {np.mean(b):8.4f} ± {np.std(b):6.4f} | "
              f"{np.mean(u):8.4f} ± {np.std(u):6.4f}")


def table_minibatch(n_total=4096):
    rng = np.random.default_rng(7)
    x, y = related_pair(rng, n_total)
    full_b = repsim.cka(x, y)
    full_u = repsim.cka(x, y, estimator="unbiased")
    print(f"\n3. One data set of n = {n_total} examples (related pair as in 2.): "
          f"full-data biased CKA {full_b:.4f}, unbiased {full_u:.4f}")
    print(f"{'batch':>6} | {'minibatch, unbiased':>19} | {'minibatch, biased':>17} | "
          f"{'mean of per-batch CKA':>21}")
    for batch in (8, 16, 32, 64, 128, 256, 512, 1024):
        acc_u = repsim.MinibatchCKA(estimator="unbiased")
        acc_b = repsim.MinibatchCKA(estimator="biased")
        per_batch = []
        for start in range(0, n_total, batch):
            xb, yb = x[start:start + batch], y[start:start + batch]
            acc_u.update({"x": xb}, {"y": yb})
            acc_b.update({"x": xb}, {"y": yb})
            per_batch.append(repsim.cka(xb, yb))
        mb_u = float(acc_u.compute().values[0, 0])
        mb_b = float(acc_b.compute().values[0, 0])
        print(f"{batch:>6} | {mb_u:>19.4f} | {mb_b:>17.4f} | {np.mean(per_batch):>21.4f}")


if __name__ == "__main__":
    table_independent()
    table_related()
    table_minibatch()
