"""How an export runs the recipe's module passes: rewrites of the PyTorch model before capture,
each measured against the model before it, and end to end against the model before any pass.
(The precision passes' plan is in passes/precision.py.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mobilegen.export.gates import GateFailure, check
from mobilegen.measure.parity import compare
from mobilegen.passes import PASSES
from mobilegen.passes.base import PassReport, RewriteContext

DistillProgress = Callable[[int, int, float], None]


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
        from mobilegen.sampling.generate import generate
        from mobilegen.sampling.runner import torch_runner

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


def pass_gate_failures(recipe: Any, reports: list[PassReport]) -> list[GateFailure]:
    """Module passes are gated only where their options set `min_psnr_db` (end-to-end image PSNR
    against the model before any pass); otherwise their deviation is reported, not judged."""
    out = []
    for spec, report in zip([p for p in recipe.passes if PASSES[p.name].kind == "module"],
                            reports, strict=True):
        if report.end_to_end is None:
            continue
        failure = check(f"pass {report.name}", "min_psnr_db", report.end_to_end["psnr_db"],
                        spec.config().min_psnr_db, True)
        if failure is not None:
            report.gates.append(str(failure))
            out.append(failure)
    return out
