"""How an export runs the recipe's passes: module rewrites on the PyTorch model before capture
(each measured against the model before it, and end to end against the model before any pass),
and the per-target precision passes' specs, gate limits and calibration feeds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mobilegen.passes import PASSES
from mobilegen.passes.base import PassReport, RewriteContext
from mobilegen.passes.precision import PrecisionSpec
from mobilegen.validate import compare

DistillProgress = Callable[[int, int, float], None]


@dataclass
class PrecisionPlan:
    """The recipe's precision passes in order, with what each row is gated on."""

    specs: list[tuple[str, PrecisionSpec, Any]] = field(default_factory=list)  # name, spec, options
    limits: dict[str, dict[str, float | None]] = field(default_factory=dict)  # tag -> gate limits
    calibration_feeds: int = 0  # 0 = no pass needs calibration

    def summary(self) -> list[dict[str, Any]]:
        return [{"name": name, "kind": "precision", "tag": spec.tag,
                 "options": opts.model_dump(), "gate_limits": self.limits[spec.tag]}
                for name, spec, opts in self.specs]


def precision_plan(recipe: Any) -> PrecisionPlan:
    plan = PrecisionPlan()
    for p in recipe.passes:
        entry = PASSES[p.name]
        if entry.kind != "precision":
            continue
        opts = p.config()
        spec = entry.load().precision_spec(opts)
        if spec.tag in plan.limits:  # two entries would write the same artifact
            raise ValueError(f"{spec.tag} is listed twice")
        plan.specs.append((p.name, spec, opts))
        plan.limits[spec.tag] = opts.limits(spec.tag)
        if spec.kind == "int8" and spec.mode == "static":
            plan.calibration_feeds = max(plan.calibration_feeds, opts.calibration_feeds)
    return plan


def apply_module_passes(
    recipe: Any, model: Any, component: dict[str, Any], io: Any, size: int,
    sample: Callable[[Any], np.ndarray], save_grid: Callable[[str, np.ndarray], None],
    progress: DistillProgress | None = None,
) -> tuple[Any, list[PassReport]]:
    """Run the recipe's module passes in order; `sample(model)` draws the report's sampling run
    (same seed every time) for the end-to-end image PSNR against the model before any pass."""
    from mobilegen.passes.calibration import noised_batches

    module_passes = [p for p in recipe.passes if PASSES[p.name].kind == "module"]
    if not module_passes:
        return model, []
    val = recipe.validation

    def example(t: float) -> tuple[Any, ...]:
        return model.example_inputs(val.batch, seed=1, t=t, image_size=size)

    def recovery_batches(teacher: Any, batch: int) -> Callable[[int, Any], tuple[Any, ...]]:
        # x0 from the teacher's own samples at a seed the report's sampling run does not use.
        from mobilegen.generate import generate
        from mobilegen.pipeline import torch_runner

        seed = component["sampler"]["seed"] + 1
        x0 = generate(torch_runner(teacher, io), component, seed=seed)
        return noised_batches(x0, component, batch)

    ctx = RewriteContext(list(val.timesteps), example, recovery_batches, progress)
    original = sample(model) if val.end_to_end else None
    reports = []
    for p in module_passes:
        options = p.config()
        model, report = PASSES[p.name].load().run(model, options, ctx)
        if original is not None:
            images = sample(model)
            grid = f"samples-pass-{len(reports)}-{p.name}.png"
            save_grid(grid, images)
            report.end_to_end = {**compare(original, images, 2.0).to_dict(), "grid": grid,
                                 "against": "the model before any pass, same seed"}
        reports.append(report)
    return model, reports


def pass_gate_failures(recipe: Any, reports: list[PassReport]) -> list[str]:
    """Module passes are gated only where their options set `min_psnr_db` (end-to-end image PSNR
    against the model before any pass); otherwise their deviation is reported, not judged."""
    out = []
    for spec, report in zip([p for p in recipe.passes if PASSES[p.name].kind == "module"],
                            reports, strict=True):
        limit = spec.config().min_psnr_db
        if limit is None or report.end_to_end is None:
            continue
        value = report.end_to_end["psnr_db"]
        value = float("inf") if value is None else value
        if value < limit or value != value:
            report.gates.append(f"pass {report.name}: min_psnr_db {value:.4g} (needs >= "
                                f"{limit:g}, off by {abs(value - limit):.4g})")
            out.extend(report.gates)
    return out
