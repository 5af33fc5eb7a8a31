#!/usr/bin/env bash
# Issue 17's GPU check, one prepared script (a few minutes on one GPU; CI has none): the family conformance
# checks on CUDA, then step time and memory per method on Swin-T and Hiera-T beside ViT-S (batch 64, bf16).
#   bash benchmarks/gpu_check_families.sh            (from the repository root; PYTHONPATH=src on a bare image)
set -euo pipefail
export PYTHONPATH="${PYTHONPATH:-src}"
python benchmarks/gpu_check_families.py
for model in swin_tiny_patch4_window7_224 hiera_tiny_224 vit_small_patch16_224; do
    python benchmarks/train_speed.py --device cuda --model "$model" --batch 64 --precisions bf16 \
        --methods adaptformer,lora,linear,full --steps 10 --warmup 3
done
