"""What every module pass shares: recovery options, the PassReport, and the run that measures a
rewrite's deviation (before and after an optional distillation) against the model before it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mobilegen.measure.parity import Parity, compare


class ModulePassOptions(BaseModel):
    """Options every module rewrite accepts (a recipe table sets them, e.g.
    `{name = "relu_attention", recover_steps = 200}`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recover_steps: int = Field(0, ge=0)  # distillation steps after the rewrite; 0 = none
    recover_lr: float = Field(1e-4, gt=0.0)
    recover_batch: int = Field(16, ge=1)
    recover_seed: int = 0
    # Gate on the end-to-end image PSNR vs the model before any pass; None = report only.
    min_psnr_db: float | None = None


@dataclass
class PassReport:
    name: str
    kind: str  # "module" | "precision"
    options: dict[str, Any]
    changed: dict[str, int]  # what was replaced, counted by kind
    param_bytes_before: int
    param_bytes_after: int
    deviation: dict[str, Any]  # vs the model before the pass: per timestep + worst
    recovery: dict[str, Any] | None = None  # steps, losses, deviation after recovery
    end_to_end: dict[str, Any] | None = None  # image PSNR vs the model before any pass, grid
    gates: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RewriteContext:
    """What a module pass needs from the export: validation inputs per timestep and, for recovery,
    a factory of distillation batches built from the teacher's own samples."""

    timesteps: list[float]
    example: Callable[[float], tuple[Any, ...]]  # model time -> inputs (fixed seed)
    recovery_batches: Callable[[Any, int], Callable[[int, Any], tuple[Any, ...]]] | None = None
    progress: Callable[[int, int, float], None] | None = None


def param_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def deviation(before: Any, after: Any, ctx: RewriteContext) -> dict[str, Any]:
    import torch

    per_t, items = [], []
    with torch.inference_mode():
        for t in ctx.timesteps:
            inputs = ctx.example(t)
            p = compare(before(*inputs).numpy(), after(*inputs).numpy())
            items.append(p)
            per_t.append({"t": t, **p.to_dict()})
    return {"per_timestep": per_t, "worst": Parity.worst(items).to_dict()}


def run_rewrite(
    name: str, model: Any, options: ModulePassOptions, ctx: RewriteContext,
    rewrite: Callable[[Any], dict[str, int]],
) -> tuple[Any, PassReport]:
    """Apply `rewrite` (in place, returns counts by kind) to a copy of `model`; measure it."""
    from mobilegen.passes.distill import distill

    student = copy.deepcopy(model).eval()
    changed = rewrite(student)
    report = PassReport(
        name=name, kind="module", options=options.model_dump(), changed=changed,
        param_bytes_before=param_bytes(model), param_bytes_after=param_bytes(student),
        deviation=deviation(model, student, ctx),
    )
    if options.recover_steps and sum(changed.values()) and ctx.recovery_batches is not None:
        batches = ctx.recovery_batches(model, options.recover_batch)
        result = distill(model, student, batches, options.recover_steps, options.recover_lr,
                         options.recover_seed, ctx.progress)
        head = max(1, len(result.losses) // 10)
        report.recovery = {
            "steps": result.steps, "lr": options.recover_lr, "batch": options.recover_batch,
            "wall_s": round(result.wall_s, 3),
            "loss_first": sum(result.losses[:head]) / head,
            "loss_last": sum(result.losses[-head:]) / head,
            "deviation_after": deviation(model, student, ctx),
        }
    return student, report
