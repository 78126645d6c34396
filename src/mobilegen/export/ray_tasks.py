"""Work beyond one machine on a Ray cluster (the `mobilegen[ray]` extra): a batch's exports and a
sensitivity study's per-layer trials as Ray tasks. The local process pool stays the default.

Each export task declares the memory the preflight estimates for it (export/preflight.py), so Ray
places it only on a node with that much memory resource left: two SD-size exports never share a
node that holds one. Inside the task the same figure is the export's memory limit, so its own
preflight keeps it within what it reserved. An export no node can hold is refused before any
task starts, with one line naming both figures.

A shared file system is assumed: recipes, checkpoints and output folders are given to the tasks
as absolute paths and written where the local path writes them; every node runs the same
mobilegen install.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mobilegen.errors import EXIT_ERROR, MobilegenError, TargetUnavailableError
from mobilegen.export.batch import BatchResult, export_one
from mobilegen.export.progress import Progress, Silent
from mobilegen.measure.memory import GB

# passed to every task: the cache folder and the memory rules follow the driver's settings
FORWARDED_ENV = ("MOBILEGEN_CACHE_DIR", "MOBILEGEN_ISOLATE_TARGETS")


def connect(address: str) -> Any:
    """ray.init against `address` ("auto", "HOST:PORT" or "ray://HOST:PORT"); one line when Ray is
    missing or the cluster cannot be reached."""
    try:
        import ray
    except ImportError as e:
        raise TargetUnavailableError("--ray needs Ray: pip install 'mobilegen[ray]'") from e
    if ray.is_initialized():
        return ray
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    try:
        ray.init(address=address, runtime_env={"env_vars": env} if env else None,
                 log_to_driver=False, logging_level="ERROR")
    except Exception as e:  # ConnectionError, RuntimeError, ValueError by address kind
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MobilegenError(f"cannot connect to the Ray cluster at {address}: {first}") from e
    return ray


def _largest_node_memory(ray: Any) -> float:
    return max((n["Resources"].get("memory", 0.0) for n in ray.nodes() if n.get("Alive")),
               default=0.0)


def _memory_for(recipe_path: Path) -> tuple[int, str | None]:
    """(bytes the task declares, None) or (0, the error line) for a recipe that does not load."""
    from mobilegen.export.preflight import estimate, recipe_param_bytes
    from mobilegen.recipe import PipelineRecipe, load_any_recipe

    try:
        recipe = load_any_recipe(recipe_path)
        # a pipeline's components are exported one after another: its peak is its largest's
        parts = ([getattr(recipe, s) for s in recipe.slots()]
                 if isinstance(recipe, PipelineRecipe) else [recipe])
        need = max(min(estimate(recipe_param_bytes(r), r.targets)[:2]) for r in parts)
    except MobilegenError as e:
        return 0, f"error: {e}"
    return int(need * GB), None


def _task(recipe: Path, out: Path, no_cache: bool, limit_gb: float) -> BatchResult:
    """The export inside a Ray worker: the declared memory is its preflight's limit."""
    os.environ["MOBILEGEN_MEMORY_LIMIT_GB"] = f"{limit_gb:.3f}"
    return export_one(recipe, out, no_cache)


def run_batch_ray(items: list[tuple[Path, Path]], no_cache: bool, address: str,
                  progress: Progress | None = None) -> list[BatchResult]:
    """As export.batch.run_batch, each (recipe, out_dir) a Ray task; results in the order given."""
    import time

    ray = connect(address)
    progress = progress or Silent()
    largest = _largest_node_memory(ray)
    remote = ray.remote(num_cpus=1, max_retries=0)(_task)
    results: dict[int, BatchResult] = {}
    pending: dict[Any, tuple[int, Path, Path, str, float]] = {}
    for i, (recipe, out) in enumerate(items):
        recipe, out = recipe.absolute(), out.absolute()  # the shared file system's paths
        memory, error = _memory_for(recipe)
        if error is None and memory > largest:
            error = (f"error: memory preflight: {recipe.name} needs an estimated "
                     f"{memory / GB:.1f} GB, but the largest Ray node offers "
                     f"{largest / GB:.1f} GB of memory resource; not submitted")
        if error is not None:
            results[i] = BatchResult(recipe, out, EXIT_ERROR, None, error)
            continue
        step = f"export:{out.name}"
        progress.step_started(step)
        ref = remote.options(memory=memory).remote(recipe, out, no_cache, memory / GB)
        pending[ref] = (i, recipe, out, step, time.perf_counter())
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        i, recipe, out, step, t0 = pending.pop(done[0])
        try:
            results[i] = ray.get(done[0])
        except Exception as e:  # the worker died (OOM kill, node lost): a result, not a crash
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            results[i] = BatchResult(recipe, out, EXIT_ERROR, None,
                                     f"error: Ray task failed: {type(e).__name__}: {first}")
        progress.step_finished(step, time.perf_counter() - t0, True)
    return [results[i] for i in range(len(items))]


# ------------------------------------------------------------------------- sensitivity trials


def _trial(fp32: Path, spec: Any, nodes: list[str], calibration: list[dict[str, np.ndarray]],
           cache: Path, validation: list[dict[str, np.ndarray]], reference: list[np.ndarray],
           out: Path) -> list[float]:
    """One per-layer trial on a Ray worker: quantize exactly `nodes`, score against fp32."""
    from mobilegen.passes.sensitivity import outputs, psnrs
    from mobilegen.targets.onnx_precision import quantize_static_nodes

    try:
        quantize_static_nodes(fp32, out, spec, nodes, calibration, False, cache)
        return psnrs(reference, outputs(out, validation))
    finally:
        out.unlink(missing_ok=True)


def ray_trials(study: Any, address: str) -> Any:
    """A `run_trials` for passes.sensitivity.layer_sensitivity: the first trial here (it writes
    the calibration cache every other trial reads), the rest as Ray tasks, in order."""
    ray = connect(address)
    remote = ray.remote(num_cpus=1, max_retries=0)(_trial)

    def run(member_sets: list[list[Any]]) -> list[list[float]]:
        if not member_sets:
            return []
        first = study.quantized(member_sets[0])[0]
        shared = {k: ray.put(v) for k, v in (("calibration", study.calibration),
                                             ("validation", study.validation),
                                             ("reference", study.reference))}
        refs = [remote.remote(study.fp32, study.spec, [x.node for x in members],
                              shared["calibration"], study.cache, shared["validation"],
                              shared["reference"], study.work / f"trial-{i}.onnx")
                for i, members in enumerate(member_sets[1:], start=1)]
        try:
            rest = ray.get(refs)
        except Exception as e:
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise MobilegenError(f"a sensitivity trial failed on Ray: {first_line}") from e
        return [first, *rest]

    return run
