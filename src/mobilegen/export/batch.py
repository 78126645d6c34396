"""Several recipes at once: each export in its own process (torch, onnxruntime and the converters
keep global state and threads; processes keep runs independent and a crash contained). Workers
call the library (export.single.export_recipe) and return typed results."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobilegen.errors import EXIT_ERROR, EXIT_GATE, EXIT_INTERRUPTED, EXIT_OK, SEVERITY
from mobilegen.export.progress import Progress, Silent
from mobilegen.export.workers import init_worker


@dataclass
class BatchResult:
    recipe: Path
    out_dir: Path
    exit_code: int
    report: dict[str, Any] | None  # None when the export failed before writing one
    error: str | None  # the one line a user would have seen


def export_one(recipe_path: Path, out_dir: Path, no_cache: bool) -> BatchResult:
    """One batch item; every outcome (ok, gate failed, error, interrupted) becomes a result. A
    pipeline recipe is exported whole in this one worker (its components in turn, as alone),
    afresh: pipeline exports bypass the cache."""
    from mobilegen.errors import MobilegenError
    from mobilegen.export.single import export_recipe
    from mobilegen.recipe import PipelineRecipe, load_any_recipe

    try:
        recipe = load_any_recipe(recipe_path)
        if isinstance(recipe, PipelineRecipe):
            from mobilegen.export.chain import run_pipeline_export

            outcome = run_pipeline_export(recipe, out_dir)
        else:
            outcome = export_recipe(recipe, out_dir, use_cache=not no_cache)
    except MobilegenError as e:
        return BatchResult(recipe_path, out_dir, e.exit_code, None, f"error: {e}")
    except KeyboardInterrupt:
        return BatchResult(recipe_path, out_dir, EXIT_INTERRUPTED, None, "interrupted")
    except Exception as e:  # a crash in one export must not hide the others' results
        return BatchResult(recipe_path, out_dir, EXIT_ERROR, None,
                           f"error: {type(e).__name__}: {e}")
    if outcome.failures:
        return BatchResult(recipe_path, outcome.out_dir, EXIT_GATE, outcome.report,
                           "gate failed: " + "; ".join(outcome.failures))
    return BatchResult(recipe_path, outcome.out_dir, EXIT_OK, outcome.report, None)


def run_batch(items: list[tuple[Path, Path]], jobs: int, no_cache: bool,
              progress: Progress | None = None) -> list[BatchResult]:
    """(recipe, out_dir) pairs, `jobs` processes at a time; results in the order given. Each
    recipe is one step of `progress` (`export:<out folder name>`), started when a worker takes
    it and finished with its wall time, so a display can keep one line per recipe."""
    progress = progress or Silent()
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    results: dict[int, BatchResult] = {}
    running: dict[Future[BatchResult], tuple[int, str, float]] = {}
    queue = list(enumerate(items))
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=ctx,
                             initializer=init_worker) as pool:
        while queue or running:
            while queue and len(running) < max(1, jobs):  # a worker is free: start the next
                i, (recipe, out) = queue.pop(0)
                step = f"export:{out.name}"
                progress.step_started(step)
                running[pool.submit(export_one, recipe, out, no_cache)] = (i, step,
                                                                           time.perf_counter())
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                i, step, t0 = running.pop(future)
                results[i] = future.result()
                progress.step_finished(step, time.perf_counter() - t0, True)
    return [results[i] for i in range(len(items))]


def worst_exit_code(results: list[BatchResult]) -> int:
    """Worst first (errors.SEVERITY): interrupted, error, usage, gate failed, ok."""
    codes = {r.exit_code for r in results}
    for code in SEVERITY:
        if code in codes:
            return code
    return max(codes) if codes else EXIT_OK
