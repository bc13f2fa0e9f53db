#!/usr/bin/env python
"""Write a class-balanced subset of CIFAR-10 in the standard python-batch format.

For moving the data to a machine that only takes a limited upload (the GPU run of the
wide/deep study was made this way: 18,000 training and 2,000 test images, 61 MB)::

    python examples/cifar10_subset.py ../shared/data/cifar-10-batches-py OUT_DIR \\
        --train-per-class 1800 --test-per-class 200

``OUT_DIR/cifar-10-batches-py`` then holds ``data_batch_1`` ... ``data_batch_5`` (the chosen
training images split evenly, in a seeded order) and ``test_batch``, readable by
``repsim.load_cifar10`` and ``examples/wide_deep_study.py --data-dir``. Each class keeps
the first images of a seeded permutation, so a smaller subset is inside a larger one.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

try:
    import repsim
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import repsim


def balanced(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of ``per_class`` images of every class (a seeded order), shuffled."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if per_class > len(idx):
            raise SystemExit(f"class {c} has {len(idx)} images; asked for {per_class}")
        keep.append(idx[rng.permutation(len(idx))][:per_class])
    return rng.permutation(np.concatenate(keep))


def write_batch(path: Path, images: np.ndarray, labels: np.ndarray, name: str):
    batch = {
        b"batch_label": name.encode(),
        b"labels": [int(v) for v in labels],
        b"data": np.ascontiguousarray(images.reshape(len(images), -1), dtype=np.uint8),
        b"filenames": [f"{name}_{i}.png".encode() for i in range(len(images))],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=4)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="folder of the official CIFAR-10 python batches")
    p.add_argument("out", type=Path, help="output folder (cifar-10-batches-py is created in it)")
    p.add_argument("--train-per-class", type=int, default=1800)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    xtr, ytr = repsim.load_cifar10(args.source, train=True)
    xte, yte = repsim.load_cifar10(args.source, train=False)
    tr = balanced(ytr, args.train_per_class, args.seed)
    te = balanced(yte, args.test_per_class, args.seed + 1)
    out = args.out / "cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(tr, 5), start=1):
        write_batch(out / f"data_batch_{i}", xtr[part], ytr[part], f"training batch {i} of 5")
    write_batch(out / "test_batch", xte[te], yte[te], "testing batch 1 of 1")
    print(f"wrote {len(tr)} training and {len(te)} test images to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
