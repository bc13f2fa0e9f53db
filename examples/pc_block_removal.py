"""
Block structure, the first principal component, and the examples that carry it
===============================================================================

Nguyen, Raghu & Kornblith (ICLR 2021) found that wide or deep networks develop a *block
structure*: many consecutive layers whose representations are nearly identical under
linear CKA -- a bright square on the layer x layer heatmap. The block goes with a
dominant first principal component shared by those layers, and it dissolves once that
component is removed. Their follow-up (TMLR 2022) traced the component to a handful of
examples with huge activations along it.

Here we plant exactly that in a synthetic stack of 12 layers: each layer drifts a little
away from the one before (so similarity decays with distance), and layers 4-8 also carry
one shared component whose scores are large for only 10 of 500 examples. We detect the
block, remove the first principal component, and leave the 10 examples out.
"""

# %%
import functools

import matplotlib.pyplot as plt
import numpy as np

import repsim

rng = np.random.default_rng(0)
n, width, n_layers, drift = 500, 64, 12, 0.88
block_layers = range(4, 9)

# the planted component: small for most examples, +-10 for ten of them
scores = 0.3 * rng.standard_normal(n)
dominant = rng.choice(n, 10, replace=False)
scores[dominant] = rng.choice([-1.0, 1.0], 10) * 10

h = rng.standard_normal((n, width))
acts = {}
for layer in range(n_layers):
    if layer:
        h = drift * h + np.sqrt(1 - drift**2) * rng.standard_normal((n, width))
    x = h.copy()
    if layer in block_layers:
        direction = rng.standard_normal(width)
        x += 8.5 * np.outer(scores, direction / np.linalg.norm(direction))
    acts[f"layer{layer}"] = x

print("variance in PC1 per layer:",
      " ".join(f"{float(repsim.pc_variance_fraction(x, k=1)):.2f}" for x in acts.values()))

# %%
# The heatmap and its block
# -------------------------
# :func:`repsim.block_structure` grows runs of layers while each new layer's mean
# similarity to the run stays above a threshold (0.8 by default) and reports runs of at
# least ``min_size`` layers as a table; :func:`repsim.plot_similarity` outlines them.

sim = repsim.cka_matrix(acts)
blocks = repsim.block_structure(sim)
for b in range(blocks.sizes["block"]):
    row = blocks.isel(block=b)
    print(f"block {row['first'].item()} .. {row['last'].item()}: {row['size'].item()} layers, "
          f"mean CKA inside {row['inside'].item():.3f}, to the rest {row['outside'].item():.3f}")
print(f"block score {blocks.attrs['block_score']:.3f}")

ax = repsim.plot_similarity(sim, blocks=blocks, title="linear CKA")
ax.figure.tight_layout()

# %%
# The declared block: sharp edges, not just bright
# ------------------------------------------------
# :func:`repsim.find_block` asks a stricter question: it segments the layers optimally
# into contiguous runs and, among the runs that pass declared thresholds (size, inside CKA,
# local contrast), takes the one with the largest *local* contrast (inside CKA minus CKA to
# its neighbouring layers). On a network
# this is what separates the paper's block from stage structure; the PC1 view
# (:func:`repsim.pc1_runs`) is a second, independent definition to compare with.

found = repsim.find_block(sim)
first, last = found.attrs["block_first_index"], found.attrs["block_last_index"]
print(f"declared block: layers {first} .. {last}, local contrast "
      f"{repsim.block_contrast(sim, first, last).contrast:.3f}")
share = np.array([float(repsim.pc_variance_fraction(x, k=1)) for x in acts.values()])
print(f"PC1 view (share > 0.5): {repsim.pc1_runs(share)}")

# %%
# Removing the first principal component
# --------------------------------------
# :func:`repsim.remove_top_pcs` centres a representation and subtracts its projection on
# the top ``k`` components. Recomputed on every layer, CKA shows the underlying gradual
# decay again and the block is gone.

removed = repsim.cka_matrix({name: repsim.remove_top_pcs(x, k=1) for name, x in acts.items()})
print(f"after removing PC1: {repsim.block_structure(removed).sizes['block']} block(s), "
      f"score {repsim.block_score(removed):.3f}, local contrast of the declared block "
      f"{repsim.block_contrast(sim, first, last).contrast:.3f} -> "
      f"{repsim.block_contrast(removed, first, last).contrast:.3f}; "
      f"CKA(layer4, layer8) {float(sim.sel(layer_a='layer4', layer_b='layer8')):.3f} -> "
      f"{float(removed.sel(layer_a='layer4', layer_b='layer8')):.3f}")

# %%
# The same, streamed: the removal is a per-layer transform of
# :class:`repsim.MinibatchCKA`, applied to each minibatch before its gram -- the paper's
# "CKA after removing the first PC" heatmap is one accumulator.

acc = repsim.MinibatchCKA(transform=functools.partial(repsim.remove_top_pcs, k=1))
for start in range(0, n, 100):
    acc.update({name: x[start:start + 100] for name, x in acts.items()})
streamed = acc.compute()
print(f"minibatch CKA without PC1: block score {repsim.block_score(streamed):.3f}")

# %%
# The examples that carry the block
# ---------------------------------
# :func:`repsim.dominant_examples` ranks the examples of one block layer by their
# projection on its first principal component; here the top 10 hold almost all of PC1's
# variance, and they are exactly the ones we planted. ``exclude`` drops them from every
# layer, and CKA without them has no block either.

dom = repsim.dominant_examples(acts["layer6"], top=10)
print(f"top 10 of {dom.n} examples hold {dom.share:.1%} of PC1's variance "
      f"(PC1 holds {dom.pc1_fraction:.1%} of the layer's); "
      f"the planted ones: {sorted(dom.indices.tolist()) == sorted(dominant.tolist())}")
without = repsim.cka_matrix(dom.exclude(acts))
print(f"without them: {repsim.block_structure(without).sizes['block']} block(s), "
      f"score {repsim.block_score(without):.3f}")

fig, axes = repsim.plot_similarity_grid(
    {"linear CKA": sim, "PC1 removed": removed, "PC1 removed (minibatch)": streamed,
     "10 examples left out": without},
    blocks=True, ncols=4, panel_size=2.6,
)
plt.show()
