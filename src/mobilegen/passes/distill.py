"""A generic distillation loop: teach `student` to reproduce `teacher` on the inputs `batches`
yields (loss = MSE between their outputs). Used by pass recovery (ReLU attention, GELU->SiLU) and by
decoder distillation after pruning.

One process by default. Under `torchrun` (WORLD_SIZE > 1 in the environment) the same call joins
a gloo process group, wraps the student in DistributedDataParallel (gradients averaged over ranks),
draws each rank's batches from its own seed, and only rank 0 calls `progress`. Every rank ends with
identical student weights (DDP broadcasts rank 0's weights at wrap time, then applies the same
averaged gradients everywhere).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

Batches = Callable[[int, torch.Generator], tuple[torch.Tensor, ...]]
DistillProgress = Callable[[int, int, float], None]


@dataclass(frozen=True)
class DistillResult:
    losses: list[float]  # mean loss over ranks, one per step
    steps: int
    wall_s: float


def _world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when run plainly."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def distill(
    teacher: nn.Module,
    student: nn.Module,
    batches: Batches,
    steps: int,
    lr: float = 1e-4,
    seed: int = 0,
    progress: DistillProgress | None = None,
) -> DistillResult:
    """Train `student` in place for `steps` AdamW steps (its parameters that require grad); the
    teacher is frozen meanwhile and returned unchanged."""
    rank, world = _world()
    created_group = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo", rank=rank, world_size=world)
        created_group = True
    teacher.eval()
    teacher_flags = [(p, p.requires_grad) for p in teacher.parameters()]
    for p, _ in teacher_flags:  # frozen while training; restored on the way out
        p.requires_grad_(False)
    student.train()
    trained: nn.Module = student
    if world > 1:
        trained = nn.parallel.DistributedDataParallel(student)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr,
                            weight_decay=0.0)
    # Distinct data per rank; identical across reruns with the same seed.
    gen = torch.Generator().manual_seed(seed * 1009 + rank)
    losses: list[float] = []
    t0 = time.perf_counter()
    try:
        for step in range(steps):
            inputs = batches(step, gen)
            with torch.no_grad():
                target = teacher(*inputs)
            loss = nn.functional.mse_loss(trained(*inputs), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = loss.detach()
            if world > 1:
                dist.all_reduce(value)
                value /= world
            losses.append(float(value))
            if progress is not None and rank == 0:
                progress(step + 1, steps, losses[-1])
    finally:
        student.eval()
        for p, flag in teacher_flags:
            p.requires_grad_(flag)
        if created_group:
            dist.destroy_process_group()
    return DistillResult(losses=losses, steps=steps, wall_s=time.perf_counter() - t0)
