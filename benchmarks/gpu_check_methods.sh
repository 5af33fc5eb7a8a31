#!/usr/bin/env bash
# The methods' GPU check, one prepared script (about 8 minutes on one GPU; CI has none):
# 1. step time and memory of every registered method on ViT-B/16 at batch 64 in bf16 autocast (and fp16);
# 2. a short CUDA training of every method on the embedded backbone in bf16 (one epoch each);
# 3. merge equality on CUDA: every mergeable method's merged backbone against its task (fp32, max difference).
#   bash benchmarks/gpu_check_methods.sh            (from the repository root; PYTHONPATH=src on a bare image)
set -euo pipefail
export PYTHONPATH="${PYTHONPATH:-src}"
python benchmarks/train_speed.py --device cuda --model vit_base_patch16_224 --batch 64 \
    --precisions bf16,fp16 --methods all --steps 10 --warmup 3
for method in $(python -m adaptformer methods --json | python -c "import json,sys; print(' '.join(json.loads(l)['method'] for l in sys.stdin))"); do
    python -m adaptformer train --dataset cifar10-neg --model adaptformer/vit-tiny-cifar10 --method "$method" \
        --epochs 1 --warmup-epochs 0 --batch-size 64 --effective-batch 64 --device cuda --precision bf16 \
        --workers 2 --no-tensorboard --out "${OUT:-/tmp}/gpu-check/bf16-$method" --overwrite | tail -1
done
python - <<'PY'
import timm, torch, adaptformer
from adaptformer.tasks.merge import merged_state_dict
x = torch.randn(8, 3, 224, 224, device="cuda")
for method in ["lora", "dora", "repadapter", "fact-tt", "fact-tk", "bitfit", "ssf", "lntune"]:
    backbone = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).cuda().eval()
    model = adaptformer.adapt(backbone, method, num_classes=10).eval()
    with torch.no_grad():
        for p in model.task.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        state = merged_state_dict(model)
        plain = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).cuda().eval()
        plain.load_state_dict(state)
        print(f"merge {method}: max |merged - task| = {(plain.forward_features(x) - model.forward_features(x)).abs().max():.2e}")
PY
