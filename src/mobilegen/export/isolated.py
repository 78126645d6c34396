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
                program_for: Callable[..., Any],
                beside: tuple[tuple[str, str], ...] = ()) -> list[tuple[Artifact, ArtifactResult]]:
    """Every target of the plan's recipe (an export.run.Plan; `timer` its StepTimer: typed
    loosely so that this module does not import run.py), one child process each, in order;
    each (timed, untimed) pair in `beside` (the preflight's choice) at the same time (_beside);
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
        jobs = {p.name: TargetJob(plan_file, (keys[p.name], saved[keys[p.name]]), p.name,
                                  out.staging, log) for p in profiles}
        partner = dict(beside)  # timed -> untimed
        paired = set(partner.values())
        outcomes: dict[str, TargetOutcome] = {}
        for p in profiles:
            if p.name in paired:
                continue  # its child runs beside its partner's
            if p.name in partner:
                u = partner[p.name]
                with timer.step(f"target:{p.name}+{u}"):
                    both = _beside(jobs[p.name], jobs[u], lower)
            else:
                with timer.step(f"target:{p.name}"):
                    both = {p.name: _in_child(jobs[p.name], lower)}
            for name, outcome in both.items():
                outcomes[name] = outcome
                for mine, theirs in ((timer.times, outcome.times), (timer.cpu, outcome.cpu)):
                    for step, seconds in theirs.items():
                        mine[step] = round(mine.get(step, 0.0) + seconds, 3)
                if timer.memory is not None:
                    timer.memory.steps.update(outcome.steps)
    return [pair for p in profiles for pair in outcomes[p.name].pairs]


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
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing inherited
    with _pool(ctx, None) as pool:
        return _result(pool.submit(lower, job), job)


def _beside(timed: TargetJob, untimed: TargetJob,
            lower: Callable[[TargetJob], TargetOutcome]) -> dict[str, TargetOutcome]:
    """`untimed`'s child (nothing of it is timed on this host: preflight.untimed_here) and
    `timed`'s at the same time. The timed child lowers, then waits for the untimed one to end
    before it opens a session (wait_until_quiet), so its parity and latency run alone on the
    host, as in sequence (its wait is its step `wait-beside:NAME`). The first failure in recipe
    order is raised once both have ended."""
    ctx = multiprocessing.get_context("spawn")
    quiet = ctx.Event()
    done: dict[str, TargetOutcome] = {}
    errors: dict[str, Exception] = {}
    with _pool(ctx, quiet) as timed_pool, _pool(ctx, None) as untimed_pool:
        futures = {timed.target: timed_pool.submit(lower, timed),
                   untimed.target: untimed_pool.submit(lower, untimed)}
        for job in (untimed, timed):  # the untimed one's end lets the timed one validate
            try:
                done[job.target] = _result(futures[job.target], job)
            except Exception as e:  # raised below, once the other child has ended too
                errors[job.target] = e
            finally:
                quiet.set()
    for job in (timed, untimed):
        if job.target in errors:
            raise errors[job.target]
    return done


def _pool(ctx: Any, quiet: Any) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_child_init,
                               initargs=(quiet,))


def _result(future: Any, job: TargetJob) -> TargetOutcome:
    try:
        return future.result()
    except BrokenProcessPool as e:
        raise ExportError(f"{job.target}: the child process lowering it died without a "
                          "result (killed, most likely for memory: see the memory preflight "
                          "and MOBILEGEN_MEMORY_LIMIT_GB)") from e


_QUIET: Any = None  # in a child lowering beside an untimed one: set once that one has ended


def _child_init(quiet: Any) -> None:
    from mobilegen.export.workers import init_worker

    global _QUIET
    init_worker()
    _QUIET = quiet


def beside_untimed() -> bool:
    """In a child: whether it lowers beside an untimed target's child (export/isolated.py)."""
    return _QUIET is not None


def wait_until_quiet() -> None:
    """In a child lowering beside an untimed one: block until that one has ended."""
    if _QUIET is not None:
        _QUIET.wait()
