#!/usr/bin/env bash
# The many-tasks GPU check (CI has no GPU): run where a CUDA GPU is available, with whatever torch / timm /
# transformers / peft that machine has (nothing is installed; the package is imported from src/).
#   bash benchmarks/gpu_check.sh            # about 5-8 minutes on one GPU
# 1. the task-store tests, with the model and the batches on the GPU (ADAPTFORMER_TEST_DEVICE);
# 2. batch 32 on ViT-B/16 in bf16: all one task vs 2/4/8/32 tasks, per-group vs gathered, and their difference;
# 3. the same PEFT LoRA adapter_names comparison (if peft is installed there);
# 4. the random request stream over 1,000 task files with --max-resident 64 (task files generated into /tmp).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src
python -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name(0))"
ADAPTFORMER_TEST_DEVICE=cuda timeout 240 python -m pytest -q -p no:cacheprovider tests/test_task_store.py -k "not predict_with_a_task_directory" 2>&1 | tail -5
timeout 420 python benchmarks/multitask.py --device cuda --precision bf16 --repeats 10 --skip-server \
  --tasks 1000 --stream-batches 20 --cache /tmp/adaptformer-bench
