#!/usr/bin/env bash
# The benchmarks issue's GPU check, one prepared script (a few minutes on one GPU; CI has none):
# step time and memory of every method on ViT-B/16 at batch 64 in bf16 autocast and in fp16 with loss scaling,
# then the real training loop on CUDA for every method (one short epoch each, both precisions).
#   bash benchmarks/gpu_check_methods.sh            (from the repository root; PYTHONPATH=src on a bare image)
set -euo pipefail
export PYTHONPATH="${PYTHONPATH:-src}"
python benchmarks/train_speed.py --device cuda --model vit_base_patch16_224 --batch 64 \
    --precisions bf16,fp16 --methods adaptformer,lora,bitfit,ssf,vpt,linear,full --steps 10 --warmup 3
for precision in bf16 fp16; do
    for method in adaptformer lora bitfit ssf vpt linear full; do
        python -m adaptformer train --dataset cifar10-neg --model adaptformer/vit-tiny-cifar10 --method "$method" \
            --epochs 1 --warmup-epochs 0 --batch-size 64 --effective-batch 64 --device cuda --precision "$precision" \
            --workers 2 --no-tensorboard --out "${OUT:-/tmp}/gpu-check/$precision-$method" --overwrite \
            | tail -1
    done
done
