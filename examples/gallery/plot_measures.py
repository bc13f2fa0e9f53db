"""
Measures beyond CKA, layer by layer
===================================

CKA is one of many ways to compare representations. Here a small random "network" of
eight layers (each a noisy nonlinear map of the previous one) is compared with itself by
four measures of different families: linear CKA, the angular Procrustes shape distance
(Williams et al. 2021, shown as its cosine, the normalised Bures similarity), mutual
k-nearest neighbours (Huh et al. 2024) and RSA with Kendall's τ-a. ``repsim.measures()``
lists what each measure is invariant to, what it costs and whether it streams.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np

import repsim

rng = np.random.default_rng(0)
n, p = 400, 32
layers = {}
h = rng.standard_normal((n, p))
for i in range(8):
    h = np.tanh(h @ rng.standard_normal((p, p)) / np.sqrt(p) * 1.5) + 0.2 * rng.standard_normal((n, p))
    layers[f"layer{i}"] = h

# %%
# Each measure for every pair of layers. The neighbourhood measures come from
# :func:`repsim.neighbour_matrix`, which finds every layer's neighbours once; the others
# are plain ``f(x, y)`` functions.
names = list(layers)


def all_pairs(fn):
    return np.array([[float(fn(layers[a], layers[b])) for b in names] for a in names])


panels = {
    "linear CKA": repsim.cka_matrix(layers).values,
    "NBS = cos(Procrustes angle)": all_pairs(repsim.nbs),
    "mutual k-NN (k=10)": repsim.neighbour_matrix(layers, measure="mutual_knn", k=10).values,
    "RSA, Kendall τ-a": all_pairs(lambda x, y: repsim.rsa(x, y, compare="kendall")),
}
fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
for ax, (title, values) in zip(axes, panels.items()):
    repsim.plot_similarity(values, ax=ax, title=title, colorbar=False)
fig.tight_layout()

# %%
# The measure table (abridged): invariances and whether each measure streams.
table = repsim.measures()
print(table[["function", "kind", "orthogonal", "isotropic_scaling", "invertible_linear",
             "translation", "streaming"]].to_string())
