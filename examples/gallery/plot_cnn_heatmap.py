"""
Layer × layer heatmap of a small CNN
====================================

:func:`repsim.compare_models` hooks a PyTorch model, runs a data loader through it and
returns minibatch CKA between every pair of selected layers — without storing any
activations (each layer's ``n × n`` gram is formed inside its forward hook) and without
looping over layer pairs.

Here: a CIFAR-style ResNet-20 (:func:`repsim.models.cifar_resnet`) trained for a few epochs on
scikit-learn's 8×8 digits (bundled, no download), compared with itself and with its own
untrained initialisation.
"""

# %%
# Data and a briefly trained model
# --------------------------------
import copy

import matplotlib.pyplot as plt
import torch
from torch import nn

import repsim

torch.set_num_threads(1)  # tiny model: one thread beats threading overhead
torch.manual_seed(0)
x_train, y_train, x_test, y_test = repsim.datasets.load_digits_images(test_size=500)
x_train, y_train = torch.from_numpy(x_train), torch.from_numpy(y_train)
x_test, y_test = torch.from_numpy(x_test), torch.from_numpy(y_test)

model = repsim.models.cifar_resnet(depth=20, width=1, in_channels=1)
untrained = copy.deepcopy(model)

opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9,
                      weight_decay=5e-4)
train = torch.utils.data.TensorDataset(x_train, y_train)
for epoch in range(4):
    model.train()
    for xb, yb in torch.utils.data.DataLoader(train, batch_size=64,
                                              shuffle=True):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()

model.eval()
with torch.no_grad():
    accuracy = (model(x_test).argmax(1) == y_test).float().mean()
print(f"test accuracy after 4 epochs: {accuracy:.1%}")

# %%
# Every residual block against every other
# ----------------------------------------
# Layers are chosen by exact name, glob pattern or module type (as for
# :class:`repsim.GramHooks`); ``"stage*.block*"`` picks the outputs of the
# nine residual blocks. The held-out images go through the
# model in batches of 100; each batch adds its unbiased HSIC terms to the
# accumulator.

test_loader = torch.utils.data.DataLoader(x_test, batch_size=100)
blocks = ["stem", "stage*.block*", "pool"]
sim = repsim.compare_models(model, None, test_loader, layers_a=blocks,
                            progress=False)
print(sim.layer_a.values)
print(sim.attrs["n_examples"], "examples in", sim.attrs["n_batches"],
      "batches")

fig, ax = plt.subplots(figsize=(5.5, 4.8))
repsim.plot_similarity(sim, ax=ax, title="ResNet-20, trained 4 epochs")
fig.tight_layout()

# %%
# Trained against untrained
# -------------------------
# With a second model, the result is ``layers_a × layers_b``. Early layers
# change little in a few epochs of training; the later ones move away from
# their initialisation.

cross = repsim.compare_models(model, untrained, test_loader,
                              layers_a=blocks, layers_b=blocks,
                              names=("trained", "untrained"), progress=False)
print("CKA(trained layer, same layer at initialisation):")
for name in cross.layer_a.values:
    print(f"  {name:>14}: {float(cross.sel(layer_a=name, layer_b=name)):.3f}")

fig, ax = plt.subplots(figsize=(5.5, 4.8))
repsim.plot_similarity(cross, ax=ax, title="trained (rows) vs untrained")
ax.set_xlabel("untrained ResNet-20")
ax.set_ylabel("trained ResNet-20")
fig.tight_layout()
plt.show()
