#!/usr/bin/env bash
# The wide/deep study close to the paper's protocol on one GPU (a few minutes on an H100):
# 32 px CIFAR-10 and 1/4 of it, ResNet depths 14/38/110, widths 1/2/8, two seeds of
# ResNet-110 and of the 8x-wide ResNet-14, 30 epochs with bf16 autocast, 10 shuffled passes
# of minibatch CKA (batch 256) over 2,000 test images (examples/wide_deep_configs/cifar10_gpu.json).
#
#   examples/wide_deep_gpu.sh /path/to/cifar-10-batches-py [extra study flags]
#
# Outputs go to runs/wide_deep_gpu (report.md, summary.json, figures/); a rerun resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR="${1:?usage: $0 /path/to/cifar-10-batches-py [flags]}"
shift
PYTHON="${PYTHON:-python}"
# deterministic cuBLAS (the study calls torch.use_deterministic_algorithms)
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"
exec "$PYTHON" examples/wide_deep_study.py \
    --config examples/wide_deep_configs/cifar10_gpu.json \
    --data-dir "$DATA_DIR" --device cuda --out runs/wide_deep_gpu "$@"
