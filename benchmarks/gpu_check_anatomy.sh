#!/usr/bin/env bash
# Issue 24's GPU check, one prepared script (at most ~8 minutes on one GPU; CI has none): the census of every timm
# prefix and Hugging Face vision class on CUDA in bf16, then ViT-L/16 training memory and step time at batch 64
# with and without gradient checkpointing (bf16).
#   bash benchmarks/gpu_check_anatomy.sh [OUT]     (from the repository root; PYTHONPATH=src on a bare image)
set -euo pipefail
export PYTHONPATH="${PYTHONPATH:-src}"
out="${1:-${OUT:-runs}}"
mkdir -p "$out"
timeout 330 python benchmarks/census.py --device cuda --dtype bfloat16 --seconds 60 \
    --out "$out/census_cuda_bf16.jsonl" --table "$out/census_cuda_bf16.md" | tail -n 25 || echo "census stopped (time)"
timeout 150 python benchmarks/train_speed.py --device cuda --model vit_large_patch16_224 --batch 64 \
    --precisions bf16 --methods adaptformer --grad-checkpointing --steps 5 --warmup 2 --json "$out/ckpt_vitl.json"
