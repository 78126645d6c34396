"""mobilegen.passes.distill: the generic distillation loop, in one process and under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from mobilegen.passes.distill import DistillResult, distill  # noqa: E402


def _pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    teacher = nn.Sequential(nn.Linear(6, 16), nn.SiLU(), nn.Linear(16, 3))
    student = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 3))
    return teacher, student


def _batches(step: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    return (torch.randn(32, 6, generator=gen),)


def test_single_process_loss_falls_and_teacher_is_untouched():
    teacher, student = _pair()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    seen = []
    result = distill(teacher, student, _batches, steps=60, lr=1e-2,
                     progress=lambda s, n, loss: seen.append((s, n, loss)))
    assert isinstance(result, DistillResult) and result.steps == 60 and len(result.losses) == 60
    assert sum(result.losses[-10:]) < 0.2 * sum(result.losses[:10])
    assert [s for s, _, _ in seen] == list(range(1, 61)) and seen[-1][1] == 60
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.requires_grad for p in teacher.parameters())  # flags restored
    assert not student.training  # handed back in eval mode, ready for export


def test_same_seed_same_run():
    runs = []
    for _ in range(2):
        teacher, student = _pair()
        runs.append((distill(teacher, student, _batches, steps=5, lr=1e-2, seed=7).losses,
                     student.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def test_two_process_gloo_under_torchrun(tmp_path: Path):
    worker = Path(__file__).with_name("distill_torchrun_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(worker), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert all(torch.equal(a[k], b[k]) for k in a), "ranks ended with different weights"
    losses = ranks[0]["losses"]
    assert torch.equal(losses, ranks[1]["losses"])  # the reported loss is the all-reduced mean
    assert losses[-5:].mean() < 0.3 * losses[:5].mean()
