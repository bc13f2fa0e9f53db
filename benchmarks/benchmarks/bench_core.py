"""ASV benchmarks of the CKA core, each next to the gram floor it is measured against.

The floor is the time of the float32 grams ``X X^T`` alone for the same data: every CKA
needs them, so ``time_minibatch_cka / time_gram_floor`` is the overhead of everything else
(centring, packing, the pairing product). ``python benchmarks/core_ratios.py`` prints those
ratios measured side by side in one process.
"""

import numpy as np

import repsim

try:
    import torch
except ImportError:  # the numpy benchmarks still run
    torch = None


def _layers(n_layers, n, p, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, p), dtype=np.float32) for _ in range(n_layers)]


class CKA:
    """Single-pair CKA for small and large n and p, both estimators."""

    params = (["100x10", "1000x64", "2000x2048"], ["biased", "unbiased"], ["linear", "rbf"])
    param_names = ["n_p", "estimator", "kernel"]

    def setup(self, n_p, estimator, kernel):
        n, p = map(int, n_p.split("x"))
        self.x, self.y = _layers(2, n, p)
        repsim.cka(self.x[:8], self.y[:8], kernel=kernel, estimator=estimator)  # numba compile

    def time_cka(self, n_p, estimator, kernel):
        repsim.cka(self.x, self.y, kernel=kernel, estimator=estimator)

    def time_gram_floor(self, n_p, estimator, kernel):
        self.x @ self.x.T
        self.y @ self.y.T


class CKAMatrix:
    """All pairs of 16 layers, full data."""

    params = [["500x256", "1000x1024"]]
    param_names = ["n_p"]

    def setup(self, n_p):
        n, p = map(int, n_p.split("x"))
        self.layers = _layers(16, n, p)
        repsim.cka_matrix([x[:8] for x in self.layers[:2]], estimator="unbiased")  # numba compile

    def time_cka_matrix(self, n_p):
        repsim.cka_matrix(self.layers, estimator="unbiased")

    def time_gram_floor(self, n_p):
        for x in self.layers:
            x @ x.T


class MinibatchAllPairs:
    """The issue's workload: 64 layers x 4 batches of n=256, p=4096, float32."""

    params = [["numpy", "torch"]]
    param_names = ["library"]
    n_layers, n_batches, n, p = 64, 4, 256, 4096
    timeout = 600

    def setup(self, library):
        layers = _layers(self.n_layers, self.n, self.p)
        if library == "torch":
            if torch is None:
                raise NotImplementedError("torch not installed")  # ASV skips the benchmark
            layers = [torch.from_numpy(x) for x in layers]
        self.batch = {f"layer{i}": x for i, x in enumerate(layers)}
        repsim.MinibatchCKA().update([x[:8] for x in layers[:2]])  # numba compile

    def time_minibatch_cka(self, library):
        acc = repsim.MinibatchCKA()
        for _ in range(self.n_batches):
            acc.update(self.batch)
        acc.compute()

    def time_gram_floor(self, library):
        for _ in range(self.n_batches):
            for x in self.batch.values():
                x @ x.T

    def peakmem_minibatch_cka(self, library):
        acc = repsim.MinibatchCKA()
        for _ in range(self.n_batches):
            acc.update(self.batch)
        acc.compute()
