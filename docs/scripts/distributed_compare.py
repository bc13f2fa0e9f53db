"""The torchrun recipe of the user guide page "Scaling out with torch.distributed".

Single process:        .venv/bin/python docs/scripts/distributed_compare.py one.npy
Two CPU processes:     .venv/bin/torchrun --standalone --nproc_per_node=2 \\
                           docs/scripts/distributed_compare.py two.npy

A ResNet-20 (random weights, fixed seed) compared with itself over its residual-block
outputs on 2,048 random 32×32 images in batches of 128. Under torchrun every process
runs its share of the batches and compare_models all-reduces the accumulator states, so
every rank holds the full result; rank 0 saves the matrix (numpy .npy) and, given a
second file from another run, prints the largest difference between the two.
"""

import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

import repsim


def main(out):
    distributed = "RANK" in os.environ  # set by torchrun
    if distributed:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"

    # the same model and the same data on every process (fixed seeds)
    torch.manual_seed(0)
    model = repsim.models.cifar_resnet(depth=20)
    images = torch.randn(2048, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loader = torch.utils.data.DataLoader(images, batch_size=128)  # 16 batches

    t0 = time.perf_counter()
    sim = repsim.compare_models(model, None, loader, layers_a="stage*.block*",
                                device=device, progress=False)
    seconds = time.perf_counter() - t0
    print(f"rank {rank} of {world}: {sim.attrs['n_examples']} examples in "
          f"{sim.attrs['n_batches']} batches, {seconds:.1f} s")
    if rank == 0:
        np.save(out, sim.values)
        if len(sys.argv) > 2:
            other = np.load(sys.argv[2])
            print(f"largest difference from {sys.argv[2]}: "
                  f"{np.abs(sim.values - other).max():.2e}")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
