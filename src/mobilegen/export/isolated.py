"""Each target lowered and validated in its own child process, from a saved capture.

Chosen by the memory preflight (export/preflight.py) when the targets would not fit one after
another in this process. Before the first target the parent captures every program the targets
need (torch.export.save), makes every input the validation and latency steps feed, times PyTorch
once per thread count, and then drops the model: while a child lowers, the tree holds the child's
capture and converter state, not a second copy of the weights in the parent. A child exits when
its target is done, so whatever its converter, session or interpreter kept goes with it.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mobilegen.errors import ExportError
from mobilegen.measure.memory import Peak, release_freed

if TYPE_CHECKING:
    from mobilegen.export.staging import StagedOutput
    from mobilegen.report.results import ArtifactResult
    from mobilegen.targets.base import Artifact


@dataclass(frozen=True)
class TargetJob:
    plan: Path  # the pickled Plan, without its model and programs
    program: tuple[str, Path]  # the profile's program key and its saved capture (.pt2)
    target: str
    staging: Path
    log: Path


@dataclass(frozen=True)
class TargetOutcome:
    pairs: list[tuple[Artifact, ArtifactResult]]
    times: dict[str, float]
    cpu: dict[str, float]  # step -> the child's CPU seconds
    steps: dict[str, Peak]  # the child's own per-step peaks (its subtree)


def run_targets(plan: Any, out: StagedOutput, timer: Any, log: Path,
                lower: Callable[[TargetJob], TargetOutcome],
                program_for: Callable[..., Any]) -> list[tuple[Artifact, ArtifactResult]]:
    """Every target of the plan's recipe (an export.run.Plan; `timer` its StepTimer: typed
    loosely so that this module does not import run.py), one child process each, in order;
    `lower` (export.run.lower_target) is what each child runs and `program_for`
    (export.run._program_for) captures a profile's program: passed in, so that this module does
    not import run.py, which imports it."""

    from mobilegen.measure.costs import time_torch
    from mobilegen.targets.accel_rewrites import program_key
    from mobilegen.targets.profile import load_target

    recipe = plan.recipe
    profiles = [load_target(t) for t in recipe.targets]
    lat = recipe.latency
    # everything that needs the model, before it is dropped
    for t in recipe.validation.timesteps:
        plan.fixed_inputs[(t, plan.parity_batch(t))] = plan.inputs(t)
    plan.fixed_inputs[(None, lat.batch)] = plan.inputs(batch=lat.batch)
    for threads in sorted({p.threads for p in profiles}):
        if threads not in plan.eager_latency:
            with timer.step("latency:pytorch"):
                plan.eager_latency[threads] = time_torch(
                    plan.model, plan.inputs(batch=lat.batch), lat.warmup, lat.runs, threads,
                    progress=timer.progress.advance,
                    timed=plan.eager_timed.get(threads, ())).to_dict()
    keys = {}
    for p in profiles:
        program_for(plan, p, timer)  # captures a layout's program once, as in process
        keys[p.name] = program_key(p.layout, p.accel_rewrites, p.fixed_shapes)
    # next to the output (same file system, room the output needs anyway), not inside it
    with tempfile.TemporaryDirectory(prefix=".mobilegen-capture-",
                                     dir=out.staging.parent) as tmp:
        with timer.step("save-capture"):
            saved = _save_captures(plan.programs, Path(tmp))
        plan.model, plan.programs = None, {}
        plan_file = Path(tmp) / "plan.pkl"
        plan_file.write_bytes(pickle.dumps(plan))
        release_freed()
        pairs = []
        for p in profiles:
            job = TargetJob(plan_file, (keys[p.name], saved[keys[p.name]]), p.name,
                            out.staging, log)
            with timer.step(f"target:{p.name}"):
                outcome = _in_child(job, lower)
            pairs += outcome.pairs
            for mine, theirs in ((timer.times, outcome.times), (timer.cpu, outcome.cpu)):
                for name, seconds in theirs.items():
                    mine[name] = round(mine.get(name, 0.0) + seconds, 3)
            if timer.memory is not None:
                timer.memory.steps.update(outcome.steps)
    return pairs


def _save_captures(programs: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Each captured program to a .pt2 in `folder`. A function of its own: the loop's last
    program must not stay bound in the caller's frame, holding every weight of the model (its
    state_dict) in the parent while the children lower."""
    import torch

    saved = {}
    for key, program in programs.items():
        saved[key] = folder / f"{key.replace('/', '_')}.pt2"
        torch.export.save(program, str(saved[key]))
    return saved


def load_capture(path: Path) -> Any:
    """A capture saved by _save_captures, read back with its weights memory-mapped from the
    .pt2 (copy-on-write) instead of copied: torch.export.load reads each weight record into a
    new buffer (10.4 s for SD-1.5's 3.44 GB UNet, beside graph deserialization's 3.8 s). The
    archive stores every weight record uncompressed at an aligned offset, so each one maps as a
    tensor of its own (np.memmap, mode "c"), released on its own (targets/base.release_weights).
    Our own file, written by this export in its temporary folder; any other layout of the
    archive falls back to the plain load."""
    import torch
    from torch.export.pt2_archive import _package

    plain = _package._build_file_map

    def mapped(reader: Any, config: Any, base_dir: str) -> dict[str, Any]:
        import numpy as np
        from torch._export.serde.serialize import deserialize_scalar_type

        files = reader.archive_file
        out: dict[str, Any] = {}
        for meta in config.config.values():
            if meta.use_pickle or meta.path_name in out:
                continue
            if meta.tensor_meta is None or meta.tensor_meta.device.type != "cpu":
                return plain(reader, config, base_dir)
            dtype = deserialize_scalar_type(meta.tensor_meta.dtype)
            record = os.path.join(base_dir, meta.path_name)
            nbytes, offset = files.get_record_size(record), files.get_record_offset(record)
            size = torch.empty(0, dtype=dtype).element_size()
            if nbytes == 0 or nbytes % size or offset % size:
                return plain(reader, config, base_dir)
            raw = np.memmap(path, dtype=np.uint8, mode="c", offset=offset, shape=(nbytes,))
            out[meta.path_name] = torch.from_numpy(raw).view(dtype).requires_grad_(
                meta.tensor_meta.requires_grad)
        return out

    _package._build_file_map = mapped
    try:
        return torch.export.load(str(path))
    finally:
        _package._build_file_map = plain


def _in_child(job: TargetJob, lower: Callable[[TargetJob], TargetOutcome]) -> TargetOutcome:
    from mobilegen.export.workers import init_worker

    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing inherited
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=init_worker) as pool:
        future = pool.submit(lower, job)
        try:
            return future.result()
        except BrokenProcessPool as e:
            raise ExportError(f"{job.target}: the child process lowering it died without a "
                              "result (killed, most likely for memory: see the memory preflight "
                              "and MOBILEGEN_MEMORY_LIMIT_GB)") from e
