"""ASV benchmarks of the CCA family and the principal-component analyses.

Each measure is timed next to its floor, the thin SVDs of both sides alone (float64):
every function here needs them, so ``time_cca / time_svd_floor`` is the overhead of
everything else (validation, centring, the ``Q_x^T Q_y`` product and its singular values,
PWCCA's weights).
"""

import numpy as np

import repsim


def _pair(n, p, q, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, min(p, q)))
    x = z @ rng.standard_normal((z.shape[1], p)) + rng.standard_normal((n, p))
    y = z @ rng.standard_normal((z.shape[1], q)) + rng.standard_normal((n, q))
    return x.astype(np.float32), y.astype(np.float32)


class CCAFamily:
    """CCA, SVCCA and PWCCA of two layers, from a small layer to a wide one."""

    params = [[(500, 64, 32), (5000, 256, 512), (10000, 512, 512)]]
    param_names = ["n_p_q"]

    def setup(self, n_p_q):
        self.x, self.y = _pair(*n_p_q)

    def time_cca(self, n_p_q):
        repsim.cca(self.x, self.y)

    def time_svcca(self, n_p_q):
        repsim.svcca(self.x, self.y, keep=0.99)

    def time_pwcca(self, n_p_q):
        repsim.pwcca(self.x, self.y)

    def time_canonical_correlations(self, n_p_q):
        repsim.canonical_correlations(self.x, self.y)

    def time_svd_floor(self, n_p_q):
        for a in (self.x, self.y):
            a = a.astype(np.float64)
            np.linalg.svd(a - a.mean(axis=0), full_matrices=False)


class PrincipalComponents:
    """PC removal and dominant examples on one layer (minibatch-sized and full-data)."""

    params = [[(256, 4096), (5000, 512)]]
    param_names = ["n_p"]

    def setup(self, n_p):
        self.x = _pair(n_p[0], n_p[1], 1)[0]

    def time_remove_top_pcs(self, n_p):
        repsim.remove_top_pcs(self.x, k=1)

    def time_pc_variance_fraction(self, n_p):
        repsim.pc_variance_fraction(self.x, k=1)

    def time_dominant_examples(self, n_p):
        repsim.dominant_examples(self.x, top=10)


class Blocks:
    """Block detection on a 200-layer heatmap (the paper's deepest models)."""

    params = [50, 200]
    param_names = ["n_layers"]

    def setup(self, n_layers):
        rng = np.random.default_rng(0)
        idx = np.arange(n_layers)
        sim = 0.9 ** np.abs(idx[:, None] - idx[None, :])
        sim[n_layers // 4: n_layers // 2, n_layers // 4: n_layers // 2] = 0.95
        noise = rng.normal(0, 0.02, sim.shape)
        self.sim = np.clip(sim + (noise + noise.T) / 2, 0, 1)
        np.fill_diagonal(self.sim, 1.0)

    def time_block_structure(self, n_layers):
        repsim.block_structure(self.sim)
