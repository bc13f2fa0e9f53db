"""ASV benchmarks of the uncertainty machinery, each next to the plain path it extends.

- ``MinibatchUncertainty``: ``MinibatchCKA`` updates without and with ``groups=10``
  (per-group sums for jackknife intervals); the ratio of the two is the cost of keeping
  uncertainty (one extra ``(L, L)`` addition per batch: expected ~1.00).
- ``Resampling``: one full-data ``cka_matrix`` and 100 half-sample resamples
  (``repsim.bootstrap``) or 100 permutations (``repsim.permutation_test``) of the same
  layers; ``time_bootstrap_100 / time_cka_matrix`` is the cost of intervals in units of
  one ``cka_matrix``; ``time_bootstrap_100_partial`` gives the measure as
  ``functools.partial(repsim.cka_matrix, ...)``, which must take the same fast path.
- ``AnyMeasurePermutation``: ``permutation_test(measure=repsim.cca)`` over 4 x 4 layer
  pairs (no gram path: the measure is recomputed per pair and permutation) next to one
  ``repsim.cca`` call.

``python benchmarks/stats_ratios.py`` prints those ratios measured side by side in one
process (interleaved, best of several repeats).
"""

import functools

import numpy as np

import repsim


def _layers(n_layers, n, p, seed=0):
    rng = np.random.default_rng(seed)
    return {f"layer{i}": rng.standard_normal((n, p), dtype=np.float32) for i in range(n_layers)}


class MinibatchUncertainty:
    """32 layers x 4 batches of n=256, p=512 (float32), within one model."""

    params = [["plain", "groups10"]]
    param_names = ["mode"]
    n_layers, n_batches, n, p = 32, 4, 256, 512

    def setup(self, mode):
        self.batch = _layers(self.n_layers, self.n, self.p)
        self.groups = None if mode == "plain" else 10

    def time_update(self, mode):
        acc = repsim.MinibatchCKA(groups=self.groups)
        for _ in range(self.n_batches):
            acc.update(self.batch)

    def time_compute(self, mode):
        acc = repsim.MinibatchCKA(groups=self.groups)
        for _ in range(self.n_batches):
            acc.update(self.batch)
        acc.compute(uncertainty=self.groups is not None)

    def peakmem_update(self, mode):
        acc = repsim.MinibatchCKA(groups=self.groups)
        for _ in range(self.n_batches):
            acc.update(self.batch)


class Resampling:
    """16 layers, n=400, p=256: one cka_matrix vs 100 resamples / permutations."""

    params = [["biased", "unbiased"]]
    param_names = ["estimator"]
    timeout = 600

    def setup(self, estimator):
        self.layers = _layers(16, 400, 256)

    def time_cka_matrix(self, estimator):
        repsim.cka_matrix(self.layers, estimator=estimator)

    def time_bootstrap_100(self, estimator):
        repsim.bootstrap(repsim.cka_matrix, data=(self.layers,),
                         measure_kwargs={"estimator": estimator}, n_resamples=100,
                         progress=False)

    def time_bootstrap_100_partial(self, estimator):
        repsim.bootstrap(functools.partial(repsim.cka_matrix, estimator=estimator),
                         data=(self.layers,), n_resamples=100, progress=False)

    def time_permutation_100(self, estimator):
        repsim.permutation_test(self.layers, estimator=estimator, n_permutations=100,
                                progress=False)


class AnyMeasurePermutation:
    """4 layers, n=400, p=16 (float32): one cca call vs 20 permutations of all 16 pairs."""

    timeout = 600

    def setup(self):
        self.layers = _layers(4, 400, 16, seed=1)

    def time_cca(self):
        repsim.cca(self.layers["layer0"], self.layers["layer1"])

    def time_permutation_20(self):
        repsim.permutation_test(self.layers, measure=repsim.cca, n_permutations=20,
                                progress=False)
