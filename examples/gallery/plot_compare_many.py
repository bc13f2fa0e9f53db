"""
Extract once, compare many models with many measures
=====================================================

Capturing activations is the expensive step; every measure after it only reads them.
:func:`repsim.extract` runs each model once over the data and writes the chosen layers
to a store (Zarr, with the identity of every example); :func:`repsim.compare_many` then
compares every model with every model, layer by layer, with any measure, reading each
store once per call and checking that all stores hold the same examples in the same
order.

Here: four CIFAR-style ResNets (:func:`repsim.models.cifar_resnet`: depth 8 and depth
14, two initialisation seeds each), untrained, on synthetic CIFAR-shaped images (smooth
random patterns, no download), compared with five measures from their stores.
"""

# %%
# Extract every model once
# ------------------------
import os
import tempfile

import matplotlib.pyplot as plt
import torch

import repsim
from repsim.models import cifar_resnet, layer_names

torch.set_num_threads(1)
gen = torch.Generator().manual_seed(0)
# 256 images, 3 x 32 x 32: low-frequency patterns (4 x 4 noise upsampled) plus pixel noise
coarse = torch.randn(256, 3, 4, 4, generator=gen)
images = torch.nn.functional.interpolate(coarse, size=32, mode="bilinear")
images = images + 0.2 * torch.randn(images.shape, generator=gen)
batches = list(images.split(64))

models = {}
for depth in (8, 14):
    for seed in (0, 1):
        torch.manual_seed(seed)
        models[f"resnet{depth}_s{seed}"] = cifar_resnet(depth)

folder = tempfile.mkdtemp()
stores = {}
for name, model in models.items():
    layers = ["stem.relu"] + layer_names(model, "blocks")  # stem and every residual block
    stores[name] = repsim.extract(model, batches, layers=layers, pooling="spatial_mean",
                                  out=os.path.join(folder, f"{name}.zarr"), progress=False)
print({name: len(ds.data_vars) for name, ds in stores.items()}, "layers per store")
print(stores["resnet8_s0"])

# %%
# Five measures from the stores
# -----------------------------
# Each call reads every store once; ``compare_many`` returns a
# ``(model_a, model_b, layer_a, layer_b)`` array (shallower models padded with NaN).
measures = ["cka_linear", "cka_rbf", "svcca", "mutual_knn", "procrustes_angular"]
results = {m: repsim.compare_many(stores, measure=m) for m in measures}
cka = results["cka_linear"]
print(cka.sizes)

# the best-matching layer of every layer, and the model x model mean of those scores
best = repsim.best_matches(cka)
print(best["model_score"].round(3).to_pandas())

# %%
# Seed groups: the same architecture over seeds against the other one
# -------------------------------------------------------------------
seeds = {name: name.split("_")[0] for name in stores}
groups = repsim.seed_groups(best["model_score"], seeds)
print(groups["mean"].round(3).to_pandas())

# %%
# Every pair of models, layer by layer (linear CKA)
# -------------------------------------------------
fig, axes = repsim.plot_compare_many(cka, triangle=True, panel_size=2.0)

# %%
# A map of the models for each measure
# ------------------------------------
# Metric MDS of the model distances (``1 - similarity`` of the model x model matrix, or
# the metric itself for Procrustes); the title gives each map's stress-1.
fig, axes = plt.subplots(1, len(measures), figsize=(3.2 * len(measures), 3.4),
                         layout="constrained")
for ax, m in zip(axes, measures):
    repsim.plot_model_map(results[m], ax=ax, seeds=seeds, annotate=False)
    ax.set_title(f"{m}\nstress {repsim.model_map(results[m]).attrs['stress']:.3f}",
                 fontsize="small")
plt.show()
