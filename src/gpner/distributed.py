"""Data parallelism over ``torch.distributed`` (``torchrun --nproc_per_node=N -m gpner train``).

Every process holds the whole model and takes a contiguous share of each global batch; gradients
are averaged by hand after backward (one flat all-reduce), epoch statistics are all-reduced, and
rank 0 alone evaluates, writes files and reports.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Dist", "init_distributed"]


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: ``rank`` of ``world`` processes, whose collectives run
    on ``device`` (a CUDA device under nccl, which refuses CPU tensors; the CPU under gloo)."""

    rank: int = 0
    world: int = 1
    device: str | torch.device = "cpu"

    @property
    def main(self) -> bool:
        """Rank 0: the process that evaluates, writes and reports."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def share(self, indices: list[int]) -> list[int]:
        """This process's contiguous share of a global batch."""
        if self.world == 1:
            return indices
        per = math.ceil(len(indices) / self.world)
        return indices[self.rank * per : (self.rank + 1) * per]

    def average_gradients(self, model: nn.Module) -> None:
        """All-reduce gradients into their mean over processes: one flat buffer, one collective.

        Done by hand rather than through DistributedDataParallel because VAT takes inner
        gradients with ``torch.autograd.grad``, which DDP's reducer hooks do not expect.
        """
        if self.world == 1:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean of each value over processes (every process gets the result)."""
        if self.world == 1:
            return values
        keys = sorted(values)
        summed = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(summed)
        return {k: v / self.world for k, v in zip(keys, summed.tolist())}

    def decide(self, flag: bool, device: torch.device) -> bool:
        """Rank 0's ``flag``, on every process (so that all leave a loop together)."""
        if self.world == 1:
            return flag
        tensor = torch.tensor([int(flag)], device=device)
        dist.broadcast(tensor, 0)
        return bool(tensor.item())


def init_distributed(device: torch.device) -> Dist:
    """Join the process group ``torchrun`` describes (gloo on CPU, nccl on GPU), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), device)
