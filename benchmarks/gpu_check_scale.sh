#!/usr/bin/env bash
# Issue 27's GPU check, one prepared script (at most ~8 minutes on one GPU; CI has none): the scale figures of
# benchmarks/multitask.py on CUDA in bf16 -- 10,000 AdaptFormer-16 task files made and listed, 64 AdaptFormer-64
# tasks resident (task tensors, GPU memory 64 / 1), a cold task's first answer, batches of 2-32 distinct tasks,
# adapted / plain, and the Zipf stream over the 10,000 with at most 64 resident.
#   bash benchmarks/gpu_check_scale.sh [OUT]     (from the repository root; PYTHONPATH=src on a bare image)
set -euo pipefail
export PYTHONPATH="${PYTHONPATH:-src}"
out="${1:-${OUT:-runs}}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 450 python benchmarks/multitask.py --only-many --tasks 10000 --device cuda --precision bf16 \
    --repeats 20 --stream-batches 40 --cache "$out/cache" --json "$out/scale_cuda_bf16.json" 2>&1 \
    | grep -v -i warn | tee "$out/scale_cuda_bf16.txt"
rm -rf "$out/cache"  # 12 GB of generated files: not brought back
