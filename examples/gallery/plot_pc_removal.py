"""
PC removal dissolves a block
============================

Nguyen, Raghu & Kornblith (2021) found that wide or deep networks trained on modest
amounts of data develop a *block structure*: a run of consecutive layers whose
representations are all very similar to each other, and dissimilar to everything
outside. They traced it to a single dominant first principal component shared by those
layers — carried by a small set of examples with very large activations along it — and
showed that removing that component dissolves the block.

This example plants exactly that structure in a synthetic 12-layer stack, finds the
block, and shows it disappear after :func:`repsim.remove_top_pcs`.
"""

# %%
# A representation stack with a planted dominant component
# ----------------------------------------------------------
# Each layer is a noisy, rotated, non-linear function of the previous one, so similarity
# decays smoothly with depth. Layers 5–9 additionally carry one shared direction ``v``
# along which ten "dominant" examples have very large values.
import matplotlib.pyplot as plt
import numpy as np

import repsim

rng = np.random.default_rng(0)
n, p, n_layers = 500, 64, 12
u = rng.standard_normal(n)
planted = np.sort(rng.choice(n, size=10, replace=False))
u[planted] *= 12.0  # ten examples dominate the shared direction
v = rng.standard_normal(p)
v /= np.linalg.norm(v)

layers = {}
h = rng.standard_normal((n, p))
for i in range(1, n_layers + 1):
    r, _ = np.linalg.qr(rng.standard_normal((p, p)))
    h = np.tanh(1.2 * h @ r) + 0.5 * rng.standard_normal((n, p))
    if 5 <= i <= 9:
        layers[f"layer{i}"] = h + 3.0 * np.outer(u, v)
    else:
        layers[f"layer{i}"] = h

# %%
# Layer × layer CKA, and the block it shows
# -----------------------------------------
sim = repsim.cka_matrix(layers, estimator="unbiased")
blocks = repsim.block_structure(sim)
table = blocks[["first", "last", "size", "inside", "outside"]]
print(table.to_dataframe().round(3))
print(f"block score: {blocks.attrs['block_score']:.3f}")

# %%
# The share of variance in the first principal component is what sets the block layers
# apart:

pc1 = {name: float(repsim.pc_variance_fraction(x, k=1))
       for name, x in layers.items()}
for name, share in pc1.items():
    print(f"{name:>8}: PC1 explains {share:.0%} of the variance")

# %%
# ... and a handful of examples carry that component:

top = repsim.dominant_examples(layers["layer7"], top=10)
print("dominant examples:", np.sort(top.indices))
print("planted examples: ", planted)
print(f"their share of PC1's variance: {top.share:.0%}"
      f" (typical for 10 of {n} examples: {10 / n:.0%})")

# %%
# Leaving just those ten examples out (of 500) is enough to dissolve the block
# here, as Nguyen et al. found for real networks:

without = top.exclude(layers)
sim_without = repsim.cka_matrix(without, estimator="unbiased")
score = repsim.block_score(sim_without)
print(f"block score without them: {score:.3f}")

# %%
# Remove the first principal component of every layer
# ----------------------------------------------------
sim_removed = repsim.cka_matrix(
    {name: repsim.remove_top_pcs(x, k=1)
     for name, x in layers.items()},
    estimator="unbiased")
blocks_removed = repsim.block_structure(sim_removed)
print(f"blocks after removing PC1: {blocks_removed.sizes['block']}, "
      f"block score {blocks_removed.attrs['block_score']:.3f}")

fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
repsim.plot_similarity(sim, ax=axes[0], blocks=blocks, title="CKA")
repsim.plot_similarity(sim_removed, ax=axes[1],
                       title="CKA after removing PC1")
fig.tight_layout()

# %%
# Inside the block, CKA was close to 1 and similarity to the layers around it close to 0;
# without PC1 the stack shows the smooth decay with depth that its layers actually have.

fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(range(1, n_layers + 1), list(pc1.values()), marker="o")
ax.set_xlabel("layer")
ax.set_ylabel("variance in PC1")
ax.set_ylim(0, 1)
fig.tight_layout()
plt.show()
