"""How much an answer depends on the batch it ran in: each image's probabilities computed alone and inside batches
of other images (as the server's cross-task batching and `predict` on a folder run them), per precision.

    python benchmarks/batch_invariance.py --model vit_base_patch16_224 --batches 2 8 32 64

fp32 agrees to rounding; under bf16 autocast the backbone's matrix products round differently at different batch
sizes (the CPU's kernels block the work by batch), which no setting here removes: the figure printed is the bound
to state. The tasks' heads and the softmax run in fp32 in both cases. Random weights (nothing is downloaded); the
task's adapters and head are drawn at ``--spread`` so its answers are confident, as a trained task's are.
"""

from __future__ import annotations

import argparse
import sys

import torch

import adaptformer
from adaptformer.runtime.precision import autocast


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="adaptformer/vit-tiny-cifar10")
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 8, 32, 64])
    parser.add_argument("--images", type=int, default=8, help="images whose answers are compared")
    parser.add_argument("--spread", type=float, default=0.2, help="std of the task's random tensors")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = adaptformer.create_model(args.model, "adaptformer", num_classes=10, pretrained=False).eval()
    for parameter in model.task.parameters():
        parameter.data.normal_(0, args.spread)
    size = model.input_spec().size
    images = torch.randn(max(args.batches + [args.images]), 3, size, size, generator=torch.Generator().manual_seed(1))
    device = torch.device("cpu")
    print(f"{args.model}, {args.images} images, batches {args.batches}")
    for precision in args.precisions:
        with torch.no_grad(), autocast(precision, device):
            alone = torch.cat([model(images[i : i + 1]).float().softmax(-1) for i in range(args.images)])
            worst = {}
            for batch in args.batches:
                together = model(images[:batch]).float().softmax(-1)[: args.images]
                worst[batch] = (together - alone[: len(together)]).abs().max().item()
        figures = ", ".join(f"batch {b}: {v:.2e}" for b, v in worst.items())
        print(f"{precision}: max |p(in a batch) - p(alone)| = {max(worst.values()):.2e} ({figures})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
