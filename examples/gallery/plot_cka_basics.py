"""
CKA basics and invariances
==========================

Centered kernel alignment (CKA) compares two representations of the *same* examples:
``x`` of shape ``(n, p)`` and ``y`` of shape ``(n, q)``, rows in the same order. It is 1
when the two are the same up to the transformations it ignores, and falls towards 0 as
they share less structure.

Linear CKA is invariant to orthogonal transformations, isotropic scaling and permuting
features (so it compares layers of different widths and of networks with permuted
neurons), but *not* to arbitrary invertible linear maps — an invariance that would make
every pair of wide-enough layers look identical (Kornblith et al., 2019).
"""

# %%
# Invariances
# -----------
# A random representation and transformed copies of it.
import matplotlib.pyplot as plt
import numpy as np

import repsim

rng = np.random.default_rng(0)
n, p = 500, 50
x = rng.standard_normal((n, p))

# a random rotation, and a skewed (badly conditioned) invertible map
q, _ = np.linalg.qr(rng.standard_normal((p, p)))
a = rng.standard_normal((p, p)) @ np.diag(np.logspace(0, 2, p))

transforms = {
    "rotation": x @ q,
    "scaling ×7": 7.0 * x,
    "feature permutation": x[:, rng.permutation(p)],
    "rotation + noise": x @ q + 0.5 * rng.standard_normal((n, p)),
    "general linear map": x @ a,
    "independent data": rng.standard_normal((n, p)),
}
scores = {name: repsim.cka(x, y) for name, y in transforms.items()}
for name, value in scores.items():
    print(f"{name:>20}: linear CKA = {value:.4f}")

# %%
# The first three are exactly 1; noise lowers it; a general invertible linear map changes
# the representation's geometry, and CKA says so. Independent data does not give 0: the
# biased estimator (the default) has a positive bias that shrinks as ``n`` grows, which the
# unbiased estimator removes:

y_indep = transforms["independent data"]
print(f"biased:   {repsim.cka(x, y_indep):.4f}")
print(f"unbiased: {repsim.cka(x, y_indep, estimator='unbiased'):.4f}")

fig, ax = plt.subplots(figsize=(6, 3))
ax.barh(list(scores), list(scores.values()), color="tab:blue")
ax.set_xlim(0, 1.05)
ax.invert_yaxis()
ax.set_xlabel("linear CKA with x")
ax.set_title("What linear CKA ignores, and what it does not")
fig.tight_layout()

# %%
# Linear and RBF kernels
# ----------------------
# ``kernel="rbf"`` compares the local (neighbourhood) structure instead of the global
# linear one. The bandwidth is a fraction ``threshold`` of the median distance
# between examples: small thresholds look only at close neighbours, large ones approach
# linear CKA. Compare a representation with a saturating non-linear distortion of it:

y = np.tanh(3 * x)
print(f"linear CKA:              {repsim.cka(x, y):.4f}")
for threshold in (0.1, 0.5, 1.0, 2.0):
    value = repsim.cka(x, y, kernel="rbf", threshold=threshold)
    print(f"RBF CKA, threshold {threshold}: {value:.4f}")

# %%
# Beware the small-threshold limit: when the bandwidth is far below the typical
# distance between examples, both grams approach the identity matrix (every example is
# only near itself) and RBF CKA tends to 1 for *any* pair of representations — here for
# independent data:

print(f"independent data, RBF threshold 0.1: "
      f"{repsim.cka(x, y_indep, kernel='rbf', threshold=0.1):.4f}")
print(f"independent data, RBF threshold 1.0: "
      f"{repsim.cka(x, y_indep, kernel='rbf', threshold=1.0):.4f}")

# %%
# All pairs at once
# -----------------
# :func:`repsim.cka_matrix` compares every pair from one or two lists (or dicts) of
# representations with a single matrix product, and returns a labelled
# :class:`xarray.DataArray`. Here, a "network" whose layers drift away from the input
# one small random rotation-plus-noise step at a time:

layers = {"input": x}
h = x
for i in range(1, 8):
    r, _ = np.linalg.qr(rng.standard_normal((p, p)))
    h = np.tanh(h @ r + 0.3 * rng.standard_normal((n, p)))
    layers[f"layer{i}"] = h

sim = repsim.cka_matrix(layers)
print(sim.round(3))

fig, ax = plt.subplots(figsize=(4.5, 4))
im = ax.imshow(sim.values, vmin=0, vmax=1, cmap="magma")
ax.set_xticks(range(len(layers)), sim.layer_b.values, rotation=90)
ax.set_yticks(range(len(layers)), sim.layer_a.values)
fig.colorbar(im, ax=ax, label="linear CKA")
ax.set_title("Similarity decays with distance in depth")
fig.tight_layout()
plt.show()
