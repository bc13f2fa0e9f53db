"""The effect of float16 storage on CKA (issue 23; the number in docs/user_guide/store.rst).

Extracts the residual-block outputs (and the stem and the logits) of a CIFAR ResNet from
:mod:`repsim.models` on ``n`` CIFAR-10 test images (or random images without the data)
twice -- stored as float32 and as float16 -- and reports the largest change of linear CKA
(biased and debiased) over every layer pair, within the model and against a second seed.
Accuracy, not timing: run it anywhere::

    python benchmarks/store_float16_cka.py --n 512 --data-dir ../shared/data
"""

import argparse
import os
import tempfile

import numpy as np
import torch

import repsim
from repsim.models import cifar_resnet


def images(n, data_dir):
    if data_dir:
        from repsim.datasets import load_cifar10

        x, _ = load_cifar10(data_dir, train=False)
        x = x[:n].astype(np.float32) / 255.0
        mean, std = x.mean((0, 2, 3), keepdims=True), x.std((0, 2, 3), keepdims=True)
        return torch.from_numpy((x - mean) / std)
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    x = images(args.n, args.data_dir)
    batches = [x[i:i + 128] for i in range(0, args.n, 128)]
    layers = ["stem", "stage1.*", "stage2.*", "stage3.*", "fc"]
    stores = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (0, 1):
            torch.manual_seed(seed)
            model = cifar_resnet(args.depth)
            names = [n for n in repsim.select_layers(model, layers) if n.count(".") <= 1]
            for dtype in ("float32", "float16"):
                out = os.path.join(tmp, f"s{seed}_{dtype}.zarr")
                stores[seed, dtype] = repsim.extract(model, batches, layers=names, out=out,
                                                     dtype=dtype, progress=False)
        for estimator in ("biased", "unbiased"):
            for pair, label in (((0, 0), "within seed 0"), ((0, 1), "seed 0 vs seed 1")):
                sims = {dt: repsim.similarity_matrix(
                    stores[pair[0], dt], stores[pair[1], dt], estimator=estimator,
                    progress=False).values for dt in ("float32", "float16")}
                d = np.abs(sims["float16"] - sims["float32"])
                print(f"linear CKA ({estimator}), {label}: {d.shape[0]} x {d.shape[1]} layers, "
                      f"n = {args.n}: max |dCKA| = {d.max():.2e}, mean {d.mean():.2e}")


if __name__ == "__main__":
    main()
