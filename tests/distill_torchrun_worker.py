"""Run by tests/test_distill.py under `python -m torch.distributed.run --nproc_per_node 2`:
each rank builds a differently initialised student, distills it with mobilegen.passes.distill
unchanged, and saves its final weights and losses for the test to compare across ranks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

from mobilegen.passes.distill import distill


def main(out_dir: str) -> None:
    rank = int(os.environ["RANK"])
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(6, 16), nn.SiLU(), nn.Linear(16, 3))
    torch.manual_seed(100 + rank)  # ranks start different: DDP must broadcast rank 0's weights
    student = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 3))

    def batches(step: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        return (torch.randn(32, 6, generator=gen),)

    result = distill(teacher, student, batches, steps=40, lr=1e-2, seed=3)
    torch.save({"state": student.state_dict(), "losses": torch.tensor(result.losses),
                "world": int(os.environ["WORLD_SIZE"])}, Path(out_dir) / f"rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
