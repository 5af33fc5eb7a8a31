"""torchrun/DDP: process-group set-up, the device of each rank, and a head BatchNorm with global statistics.

``torchrun --nproc_per_node N -m adaptformer train ...`` sets RANK/WORLD_SIZE/LOCAL_RANK; we then use NCCL on
GPUs and gloo on CPUs. The head's BatchNorm1d normalises with statistics of the *global* batch
(:class:`GlobalBatchNorm1d`, via differentiable all-reduces), so N ranks with batch b train exactly like one
process with batch N*b. torch's SyncBatchNorm would do this on GPUs only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .device import pick_device


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_preference: str = "auto") -> DistInfo:
    """Join the torchrun process group when launched by torchrun; otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        if device.type == "cpu":  # share the cores instead of oversubscribing them
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return DistInfo(rank, world_size, local_rank, device)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
    return values


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value`` in rank order (a one-element list in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, value)
        return gathered
    return [value]


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics cover the batch of every rank (same state-dict keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        x32 = x.float()
        count = all_reduce(torch.tensor([float(x.shape[0])], device=x.device))
        total = all_reduce(x32.sum(0))
        total_sq = all_reduce((x32 * x32).sum(0))
        mean = total / count
        var = total_sq / count - mean * mean
        with torch.no_grad():
            if self.track_running_stats:
                self.num_batches_tracked += 1
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * unbiased)
        out = (x32 - mean) / torch.sqrt(var + self.eps)
        if self.affine:
            out = out * self.weight + self.bias
        return out.to(x.dtype)


def use_global_batchnorm(model: nn.Module) -> None:
    """Swap plain BatchNorm1d modules for :class:`GlobalBatchNorm1d` in place (state is kept)."""
    for module in model.modules():
        if type(module) is nn.BatchNorm1d:
            module.__class__ = GlobalBatchNorm1d
