"""
Comparing saved activations from the command line
=================================================

Activations saved by any framework (JAX, TensorFlow, PyTorch, ...) as ``.npz``, ``.npy``,
safetensors or netCDF/HDF5 files can be compared without writing Python::

    repsim model_a.npz model_b.npz --measure procrustes_angular --out result.nc --plot map.png

Here we save two models' activations to ``.npz`` files and run the command in-process
(``repsim.cli.main`` takes the same arguments as the shell command), then load its
netCDF result.
"""

# %%
import os
import tempfile

import matplotlib.pyplot as plt
import numpy as np

import repsim
from repsim import cli

rng = np.random.default_rng(0)
folder = tempfile.mkdtemp()
x = rng.standard_normal((300, 16))
for model, seed in (("a", 1), ("b", 2)):
    r = np.random.default_rng(seed)
    h, acts = x, {}
    for i in range(5):
        h = np.maximum(h @ r.standard_normal((h.shape[1], 24)) / 4, 0) + 0.05
        acts[f"block{i}"] = h
    np.savez(os.path.join(folder, f"{model}.npz"), **acts)

# %%
# The same arguments as ``repsim a.npz b.npz --measure mutual_knn --option k=15 ...``
out = os.path.join(folder, "result.nc")
status = cli.main([
    os.path.join(folder, "a.npz"), os.path.join(folder, "b.npz"),
    "--measure", "mutual_knn", "--option", "k=15", "--out", out,
    "--plot", os.path.join(folder, "map.png"), "--no-progress",
])
print("exit status", status)
result = repsim.load_result(out)
print(result.attrs)

# %%
ax = repsim.plot_similarity(result, title="mutual k-NN, model a vs model b")
plt.show()
