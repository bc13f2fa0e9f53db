"""Cost of the wide/deep study's mechanism stage (examples/wide_deep/mechanism.py) on one model.

Times, on an untrained CIFAR ResNet with random 16 px images (the cost does not depend on
the weights): one plain within-model CKA run (the extract's unit of work, for scale), the
top-k PC removal for k = 0..5 (one run: one forward and one eigendecomposition per layer
and batch), and the forward pass with the norm and probe hooks plus a probe per layer.
The stage's cost for a model with a block is the last two; a block-free model adds the
dominant-example control (``2 + random_removals`` runs over its window's layers at
``control_passes``).

    python benchmarks/mechanism_cost.py                      # ResNet-110, 1,000 images, the CPU config
    python benchmarks/mechanism_cost.py --depth 8 --n 100    # a check that it runs
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    import torch

    from repsim.models import cifar_resnet
    from wide_deep import analyse, mechanism

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=110)
    p.add_argument("--n", type=int, default=1000, help="held-out images")
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = {"cka_batch_size": 250, "passes": args.passes, "interval_groups": 10, "level": 0.9, "layers": "relu"}
    model = cifar_resnet(args.depth).eval()
    names = analyse.layer_names(model, cfg)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, 3, 16, 16)).astype(np.float32)
    y = rng.integers(0, 10, args.n)
    times = {}
    t = time.perf_counter()
    analyse.within_model_cka(model, names, x, cfg, 7, "cpu")
    times["plain_run"] = time.perf_counter() - t
    print(f"plain run: {times['plain_run']:.1f} s", flush=True)
    t = time.perf_counter()
    mechanism.pc_removed_cka(model, names, x, cfg, 7, "cpu", [1, 2, 3, 4, 5])
    times["pc_removal_k0_to_5"] = time.perf_counter() - t
    print(f"top-k PC removal, k = 0..5, one run: {times['pc_removal_k0_to_5']:.1f} s", flush=True)
    t = time.perf_counter()
    fm = mechanism.forward_measures(model, names, x, "cpu")
    fit, score = mechanism.probe_split(args.n, 0.5, 0)
    for n in names:
        mechanism.ridge_probe(fm["pooled"][n][fit], y[fit], fm["pooled"][n][score], y[score], 10.0)
    times["forward_probes"] = time.perf_counter() - t
    times["stage_with_block"] = times["pc_removal_k0_to_5"] + times["forward_probes"]
    print(f"ResNet-{args.depth}, {len(names)} ReLU layers, {args.n} images, {args.passes} passes, "
          f"{args.threads} threads: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
