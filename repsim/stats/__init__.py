"""Statistical confidence for similarities: intervals, chance levels and seed comparisons.

One module per responsibility: :mod:`repsim.stats.resampling` (bootstrap),
:mod:`repsim.stats.permutation` (permutation test), :mod:`repsim.stats.jackknife` (the
minibatch jackknife), :mod:`repsim.stats.seeds` (seed statistics); Student-t quantiles and
CDFs come from :mod:`scipy.special`.

A CKA heatmap without error bars invites over-reading. This module attaches uncertainty
to every entry of a similarity matrix, computed from the grams of the full data only
(they are formed once; every resample or permutation indexes them):

- :func:`bootstrap` -- confidence intervals by resampling examples, for
  :func:`repsim.cka`, :func:`repsim.cka_matrix` (gram entries re-indexed, never
  recomputed) and any other measure callable (the CCA family, say; recomputed on each
  resample).
- :func:`permutation_test` -- the chance level of every entry (example order of one
  side shuffled), a p-value and a chance-corrected score; for CKA from the permuted
  grams with the exact expectation in closed form, for any other measure
  ``(x, y) -> scalar`` by recomputing it on each permutation.
- :func:`aggregate_seeds` and :func:`compare_seeds` -- mean and spread over training
  seeds, and whether two architectures differ beyond seed-to-seed variation.

The minibatch estimator gets its intervals from :class:`repsim.MinibatchCKA` itself
(``groups=`` at construction, ``compute(uncertainty=True)``), by the delete-a-group
jackknife implemented here in :func:`jackknife_ratio`.

Why biased CKA of unrelated representations is far from 0
-------------------------------------------------------------
Under the permutation null (one side's examples shuffled) the biased HSIC of the centred
grams ``K, L`` has the exact expectation ``tr(K) tr(L) / (n - 1)``, so the expected
chance-level CKA is

    ``E_null[CKA] = sqrt(r_K r_L) / (n - 1)``,  ``r_K = tr(K)^2 / ||K||_F^2``,

the geometric mean of the two effective ranks over ``n - 1``. For isotropic features
``r_K ~ min(p, n - 1)``: with ``p << n`` chance CKA is about ``p / n``; once ``p >> n``
the centred gram is nearly ``p * H`` (the diagonal, each example's squared norm,
dominates) and chance CKA tends to 1 -- the biased estimator cannot tell unrelated wide
layers apart. The unbiased estimator (Song et al. 2012) drops the diagonal; its null
expectation is exactly 0 at every ``n`` and ``p``.

Measured on independent standard Gaussian ``x, y`` of shape ``(100, p)``
(``default_rng(0)``, ``x`` drawn first; null from 200 permutations, seed 0; the same
numbers come out of ``repsim.stats.permutation_test``):

=====  ==========  ============  ==============  ===============  =======  ==========
p      biased CKA  unbiased CKA  chance (exact)  null mean +- sd  p-value  calibrated
=====  ==========  ============  ==============  ===============  =======  ==========
10     0.0943      +0.0073       0.0896          0.0884 +- 0.014  0.32     +0.0052
100    0.5152      +0.0269       0.5020          0.5022 +- 0.007  0.05     +0.0264
1000   0.9098      +0.0158       0.9084          0.9083 +- 0.001  0.13     +0.0159
10000  0.9903      +0.0056       0.9903          0.9903 +- 1e-4   0.37     +0.0061
=====  ==========  ============  ==============  ===============  =======  ==========

The unbiased estimator's own permutation null has mean ~0 (within 0.0015) and sd 0.014
to 0.015 at every ``p`` here: its spread depends on ``n``, not on the width. The
chance-corrected biased score tracks the unbiased estimate closely.

So a biased CKA of 0.9 between two 1000-wide layers seen on 100 examples is chance level;
report the unbiased estimator, or the chance-corrected score
``(CKA - chance) / (1 - chance)`` that :func:`permutation_test` returns.
"""

from ._common import t_quantile, t_two_sided_p
from ._common import _uncertainty_dataset  # noqa: F401  (used by repsim.streaming)
from .jackknife import Interval, jackknife_interval, jackknife_ratio
from .permutation import permutation_test
from .resampling import bootstrap
from .seeds import aggregate_seeds, compare_seeds

__all__ = [
    "Interval",
    "aggregate_seeds",
    "bootstrap",
    "compare_seeds",
    "jackknife_interval",
    "jackknife_ratio",
    "permutation_test",
    "t_quantile",
    "t_two_sided_p",
]
