"""One export: recipe -> model -> passes -> capture -> per-target artifacts -> parity, latency,
report. `run_export` returns its typed result with the gate verdicts; the caller (the CLI, a
batch worker, a pipeline export) decides what a failed gate means.

Every step is timed; everything lands in a staging folder that replaces the output folder only
when complete (a failed gate still writes the complete report: it is a result, not an error).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobilegen.checkpoints.loader import LoadedModel, build_random, load_checkpoint
from mobilegen.errors import CheckpointError, ExportError
from mobilegen.export import preflight, validation_scope
from mobilegen.export.gates import GateFailure, artifact_failures, delegation_failures
from mobilegen.export.manifest import build_manifest, component_entry, model_notes
from mobilegen.export.progress import Progress, as_progress
from mobilegen.export.staging import StagedOutput, StagingFolder
from mobilegen.export.toolchain_log import toolchain_output
from mobilegen.measure.costs import (
    count_macs,
    count_params,
    group_costs,
    on_meta,
    time_fn,
    time_torch,
    torch_threads,
)
from mobilegen.measure.memory import GB, TreeSampler, release_freed
from mobilegen.measure.parity import Parity, compare
from mobilegen.models import get_family
from mobilegen.passes.precision import PrecisionPlan, precision_plan
from mobilegen.recipe import Recipe
from mobilegen.report.provenance import host_info
from mobilegen.report.results import ArtifactResult, ExportReport
from mobilegen.sampling.generate import generate, save_grid
from mobilegen.sampling.runner import Runner, torch_runner
from mobilegen.signature import ModelIO
from mobilegen.targets import load_for_profile, runtime_module
from mobilegen.targets.base import Artifact, ExportRequest, Target
from mobilegen.targets.profile import TargetProfile, load_target

TrainProgress = Callable[[int, int, float], None]


@dataclass
class ExportResult:
    out_dir: Path
    report: ExportReport

    @property
    def failures(self) -> list[str]:
        return self.report.failures


def cpu_seconds() -> float:
    """CPU seconds of this process and of the children it has reaped (an isolated target's
    child, a converter subprocess): on a shared host the figure contention does not inflate."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class StepTimer:
    """Times each step (wall and CPU seconds) and tells `progress` (export/progress.py) when it
    starts and ends."""

    def __init__(self, progress: Progress | Callable[[str], None] | None = None,
                 memory: TreeSampler | None = None) -> None:
        self.times: dict[str, float] = {}
        self.cpu: dict[str, float] = {}  # step -> CPU seconds (cpu_seconds)
        self.progress = as_progress(progress)
        self.memory = memory  # per-step peak memory of the process tree (measure/memory.py)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.progress.step_started(name)
        if self.memory is not None:
            self.memory.begin(name)
        t0, c0 = time.perf_counter(), cpu_seconds()
        ok = False
        try:
            yield
            ok = True
        finally:
            seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
            if self.memory is not None:
                self.memory.end(name)
            self.progress.step_finished(name, seconds, ok)
        self.times[name] = round(self.times.get(name, 0.0) + seconds, 3)
        self.cpu[name] = round(self.cpu.get(name, 0.0) + cpu, 3)

    def recovery(self, step: int, steps: int, loss: float) -> None:
        """Distillation steps as counted work (the TrainProgress shape)."""
        self.progress.advance(step, steps, f"loss {loss:.3e}")


def load_model(recipe: Recipe) -> LoadedModel:
    spec = recipe.model
    family = get_family(spec.family)
    if spec.init == "random":
        if spec.config is not None:
            cfg = family.config_from_dict(spec.config)
        else:
            variants = family.variants()
            if spec.variant not in variants:
                raise CheckpointError(
                    f"unknown {spec.family} variant '{spec.variant}' "
                    f"(known: {', '.join(sorted(variants))})"
                )
            cfg = variants[spec.variant]
        return build_random(spec.family, cfg, spec.seed)
    path = recipe.checkpoint_path()
    assert path is not None  # the recipe schema guarantees it for init = "checkpoint"
    return load_checkpoint(path, spec.family, spec.config)


def capture(model: Any, example: tuple[Any, ...], dynamic: bool = True) -> Any:
    """torch.export once, with a dynamic batch axis on every input (or, for fixed-shape
    profiles, at the example's shapes); all targets lower from it. A construct torch.export
    cannot capture is one line naming the model and the construct."""
    import torch
    from torch.export import Dim

    batch = Dim("batch", min=1, max=4096)
    shapes = tuple({0: batch} for _ in example) if dynamic else None
    if dynamic and all(isinstance(x, torch.Tensor) and x.shape[:1] == (1,) for x in example):
        # torch.export specializes a size-1 axis to the constant 1 ("Constraints violated
        # (batch)"): trace at batch 2; the program still takes batch 1 (validate.batch = 1)
        example = tuple(torch.cat([x, x]) for x in example)
    try:
        return torch.export.export(model, example, dynamic_shapes=shapes)
    except Exception as e:  # torch raises many types here (Unsupported, UserError, ...)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"torch.export cannot capture {type(model).__name__}: "
                          f"{type(e).__name__}: {first}") from e


@dataclass
class Plan:
    """What one export does, decided before any lowering."""

    recipe: Recipe
    model: Any  # after module passes
    io: ModelIO
    size: int
    component: dict[str, Any]  # the manifest's entry; drives sampling
    precision: PrecisionPlan
    end_to_end: bool  # sample through every runnable artifact (a decoder has nothing to sample)
    param_bytes: int
    example: tuple[Any, ...]
    labels: list[int] | None
    programs: dict[str, Any] = field(default_factory=dict)  # layout -> captured program
    reference: dict[float, np.ndarray] = field(default_factory=dict)  # t -> PyTorch output
    torch_images: np.ndarray | None = None
    calibration: tuple[dict[str, np.ndarray], ...] = ()
    eager_latency: dict[int, dict[str, Any]] = field(default_factory=dict)  # threads -> stats
    # (t, batch) -> inputs, made before the model is dropped for lowering in child processes
    fixed_inputs: dict[tuple[float | None, int], Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)  # the report's validation_scope
    # a big model's validation (export/validation_scope.py): t -> its parity call's batch where
    # not the validation batch, the t whose parity call is the first latency run, and the
    # reference's timed call at it (threads -> ms), PyTorch's first latency run
    parity_batches: dict[float, int] = field(default_factory=dict)
    latency_from: float | None = None
    eager_timed: dict[int, list[float]] = field(default_factory=dict)

    def times_call(self, i: int) -> bool:
        """Whether parity call `i` is timed as a latency run: the last one, after another."""
        return self.latency_from is not None and i == len(self.recipe.validation.timesteps) - 1

    def parity_batch(self, t: float) -> int:
        return self.parity_batches.get(t, self.recipe.validation.batch)

    def inputs(self, t: float | None = None, seed: int = 1, batch: int | None = None) -> Any:
        if batch is not None:
            b = batch
        else:
            b = self.recipe.validation.batch if t is None else self.parity_batch(t)
        if self.model is None:  # a child lowering one target (export/isolated.py)
            return self.fixed_inputs[(t, b)]
        if t is None:
            return self.model.example_inputs(b, image_size=self.size)
        return self.model.example_inputs(b, seed=seed, t=t, image_size=self.size)


def run_export(
    recipe: Recipe, out_dir: Path, progress: Progress | Callable[[str], None] | None = None,
    argv: list[str] | None = None, train_progress: TrainProgress | None = None,
    calibration: list[dict[str, np.ndarray]] | None = None,
) -> ExportResult:
    """`calibration`: feeds recorded by the caller (a pipeline's chain,
    export/chain_calibration.py) in place of the component's own made-up ones."""
    with TreeSampler() as memory:
        return _run_export(recipe, out_dir, StepTimer(progress, memory), argv, train_progress,
                           calibration)


def _run_export(recipe: Recipe, out_dir: Path, timer: StepTimer, argv: list[str] | None,
                train_progress: TrainProgress | None,
                calibration: list[dict[str, np.ndarray]] | None) -> ExportResult:
    with StagedOutput(out_dir) as out:  # a bad output folder fails before any work
        with timer.step("load"):
            loaded = load_model(recipe)
        # before the heavy steps: refuses (exit 1) or picks child processes per target
        gate = preflight.check(recipe, _param_bytes(loaded.model))
        plan, model_summary, pass_reports = _prepare(recipe, loaded, out, timer,
                                                     train_progress or timer.recovery,
                                                     calibration)
        log = out.path("logs/toolchain.log")  # what converters print (toolchain_log.py)
        sections = _report_sections(recipe, plan, timer)  # on the model, before it may be dropped
        sections["validation"] = plan.validation
        rows: list[ArtifactResult] = []
        artifacts: list[Artifact] = []
        if gate.isolate:  # each target in its own child process, from a saved capture
            from mobilegen.export import isolated

            del loaded  # the plan holds the model; isolation drops both
            pairs = isolated.run_targets(plan, out, timer, log, lower_target, _program_for,
                                         gate.beside)
        else:
            pairs = [p for name in recipe.targets for p in target_rows(plan, name, out, timer, log)]
        for art, row in pairs:
            artifacts.append(art)
            rows.append(row)
        sections["memory"] = _memory_section(timer, gate)
        failures = _gate_failures(recipe, rows, pass_reports)
        report = ExportReport(
            recipe={"name": recipe.name, "path": str(recipe.path)}, model=model_summary,
            artifacts=rows, passes=[r.to_dict() for r in pass_reports] + plan.precision.summary(),
            gates={"config": recipe.gates.model_dump(), "failures": [str(f) for f in failures]},
            sample_grids={"pytorch": "samples-pytorch.png"} if plan.end_to_end else {},
            sections=sections, timings_s=timer.times, host=host_info(),
            timings_cpu_s=timer.cpu)
        _write(out, report, build_manifest(recipe, plan.component, artifacts, out.staging, argv))
        final = out.commit()
    return ExportResult(final, report)


def _param_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def lower_target(job: Any) -> Any:
    """In a child process (export/isolated.py): load the plan and the capture, lower and
    validate one target; -> isolated.TargetOutcome."""
    import pickle

    from mobilegen.export.isolated import (
        TargetOutcome,
        beside_untimed,
        load_capture,
        wait_until_quiet,
    )
    from mobilegen.export.staging import StagingFolder
    from mobilegen.measure.memory import TreeSampler

    plan = pickle.loads(job.plan.read_bytes())
    key, path = job.program
    with TreeSampler() as memory:
        timer = StepTimer(None, memory)
        with timer.step(f"load-capture:{job.target}"):
            plan.programs = {key: load_capture(path)}
        wait = None
        if beside_untimed():
            def wait() -> None:
                with timer.step(f"wait-beside:{job.target}"):
                    wait_until_quiet()
        pairs = target_rows(plan, job.target, StagingFolder(job.staging), timer, job.log,
                            last_use=True, before_validation=wait)
    return TargetOutcome(pairs, timer.times, timer.cpu, dict(memory.steps))


def target_rows(plan: Plan, target_name: str, out: StagingFolder, timer: StepTimer,
                log: Path, last_use: bool = False,
                before_validation: Callable[[], None] | None = None,
                ) -> list[tuple[Artifact, ArtifactResult]]:
    """One target: lower, then validate each runnable artifact; its state is freed on return.
    `last_use` (a child lowering one target): the captured programs are dropped once lowered,
    so that validation's session or interpreter does not sit beside a second copy of the
    weights. `before_validation` runs between the two (a child beside an untimed target waits
    there: export/isolated.py)."""
    profile = load_target(target_name)
    with toolchain_output(log):
        target = runtime_module(profile.runtime)
    pairs = []
    produced = _lower(plan, target, profile, out, timer, log, last_use)
    if last_use:
        plan.programs.clear()
        release_freed()
    if before_validation is not None:
        before_validation()
    for art in produced:
        row = _row(plan, art, out.staging)
        pairs.append((art, row))
        if art.runnable:
            with timer.step(f"open:{art.file}"), toolchain_output(log):
                runner = load_for_profile(out.staging / art.file, profile)
            _validate(plan, row, runner, profile, out, timer)
            del runner  # a session holds the weights again: free it before the next
    release_freed()  # the converter's state, before the next target starts
    return pairs


def _prepare(recipe: Recipe, loaded: LoadedModel, out: StagedOutput, timer: StepTimer,
             train_progress: TrainProgress | None,
             calibration: list[dict[str, np.ndarray]] | None = None,
             ) -> tuple[Plan, dict[str, Any], list[Any]]:
    """Count, describe, run module passes, capture, and compute what every artifact is compared
    with (per-timestep outputs, the PyTorch sampling run, calibration feeds)."""
    from mobilegen.passes.apply import apply_module_passes

    model, cfg = loaded.model, loaded.config
    size = recipe.export_size(cfg)  # image_size checked against the model (one line)
    io: ModelIO = get_family(loaded.family).io_spec(cfg, size)
    with timer.step("count"):
        macs, table = count_macs(*on_meta(model, model.example_inputs(1, image_size=size)))
        params = count_params(model)
    param_bytes = _param_bytes(model)
    scope = validation_scope.scope(recipe, param_bytes)  # smaller, reported, for big models
    recipe = scope.recipe
    component = component_entry(recipe, loaded, io, size)
    if "sampler" not in component and recipe.validation.end_to_end:  # a decoder: nothing to sample
        recipe = recipe.model_copy(
            update={"validation": recipe.validation.model_copy(update={"end_to_end": False})})
    labels = component["conditioning"].get("labels")
    with timer.step("passes"):  # module passes rewrite the model before capture
        model, pass_reports = apply_module_passes(
            recipe, model, component, io, size,
            sample=lambda m: generate(torch_runner(m, io), component),
            save_grid=lambda name, images: save_grid(out.path(name), images, labels),
            progress=train_progress)
    plan = Plan(recipe, model, io, size, component, precision_plan(recipe),
                end_to_end=recipe.validation.end_to_end and "sampler" in component,
                param_bytes=param_bytes, labels=labels,
                example=model.example_inputs(recipe.validation.batch, seed=0, image_size=size),
                validation=scope.to_dict(param_bytes), parity_batches=scope.batches,
                latency_from=scope.latency_from)
    with timer.step("capture"):
        plan.programs["default"] = capture(model, plan.example)
    with timer.step("reference"):
        reference(plan)
    if plan.end_to_end:
        with timer.step("sample-pytorch"):
            plan.torch_images = generate(torch_runner(model, io), component,
                                         progress=timer.progress.advance)
        save_grid(out.path("samples-pytorch.png"), plan.torch_images, labels)
    count = calibration_count(recipe, plan.precision.calibration_feeds, param_bytes)
    if count and calibration:
        plan.calibration = tuple(calibration[:count])
    elif count:
        with timer.step("calibrate"):
            plan.calibration = _calibration(plan, count, timer)
    summary = {"family": loaded.family, "source": loaded.source, "init": recipe.model.init,
               "source_dtype": loaded.source_dtype, "config": cfg.to_dict(), "params": params,
               "param_bytes": param_bytes, "image_size": size, "gmac": macs / 1e9,
               "modules": group_costs(table), "notes": model_notes(recipe, component)}
    return plan, summary, pass_reports


def reference(plan: Plan) -> None:
    """PyTorch's output at each parity t, what every artifact is compared with. The last call,
    where `plan.times_call` (a big model's, export/validation_scope.py), runs with the first
    target's thread count and is timed: it is PyTorch's first latency run."""
    import torch

    with torch.inference_mode():
        for i, t in enumerate(plan.recipe.validation.timesteps):
            inputs = plan.inputs(t)
            if not plan.times_call(i):
                plan.reference[t] = plan.model(*inputs).numpy()
                continue
            threads = load_target(plan.recipe.targets[0]).threads
            with torch_threads(threads):
                t0 = time.perf_counter()
                plan.reference[t] = plan.model(*inputs).numpy()
                plan.eager_timed[threads] = [(time.perf_counter() - t0) * 1000.0]


def _lower(plan: Plan, target: Target, profile: TargetProfile, out: StagingFolder,
           timer: StepTimer, log: Path, last_use: bool = False) -> list[Artifact]:
    """The profile's base artifacts, then one per precision pass (a target that cannot do a pass
    gets a non-runnable row saying why, not an error). Paths come back relative to OUT.
    `last_use`: nothing reads the captured program after this target (a child process)."""
    name = profile.name
    req = ExportRequest(program=_program_for(plan, profile, timer), io=plan.io,
                        example=plan.example, profile=profile, workdir=out.dir(name),
                        stem=plan.component["name"], param_bytes=plan.param_bytes,
                        calibration=plan.calibration, sample_batch=_sample_batch(plan.component),
                        consume_program=last_use and not plan.precision.specs)
    with timer.step(f"export:{name}"), toolchain_output(log):
        produced = target.export(req)
    for pass_name, spec, _ in plan.precision.specs:
        why = target.supports(spec)
        if why is not None:
            produced.append(Artifact(f"{req.stem}.{spec.tag}", "none", name, profile.runtime,
                                     spec.tag, runnable=False,
                                     details={"skipped": f"pass {pass_name} not supported: {why}"}))
            continue
        with timer.step(f"export:{name}:{spec.tag}"), toolchain_output(log):
            produced += target.export_precision(req, spec)
    for art in produced:
        art.file = f"{name}/{art.file}"
        art.companions = [f"{name}/{c}" for c in art.companions]
    return produced


def _program_for(plan: Plan, profile: TargetProfile, timer: StepTimer) -> Any:
    """The captured program for a profile: the shared capture for "default", else the layout's
    rewrite of the model (targets/ane.py) with the profile's accelerator forms
    (targets/accel_rewrites.py), fixed shapes where asked; captured once per combination."""
    from mobilegen.targets.accel_rewrites import program_key, rewrite_forms

    fixed = profile.fixed_shapes
    key = program_key(profile.layout, profile.accel_rewrites, fixed)
    if key not in plan.programs:
        from mobilegen.targets.ane import apply_layout

        with timer.step(f"capture:{key}"), rewrite_forms(profile.accel_rewrites):
            plan.programs[key] = capture(apply_layout(plan.model, profile.layout)[0],
                                         plan.example, dynamic=not fixed)
    return plan.programs[key]


def _row(plan: Plan, art: Artifact, root: Path) -> ArtifactResult:
    # is_file: a Core ML .mlpackage is a folder; its files are listed as companions
    size = sum((root / f).stat().st_size for f in [art.file, *art.companions]
               if (root / f).is_file())
    return ArtifactResult(artifact=art.file, format=art.format, target=art.target,
                          precision=art.precision, runnable=art.runnable, bytes=size,
                          details=art.details,
                          gate_limits=plan.precision.limits.get(art.precision))


def _validate(plan: Plan, row: ArtifactResult, runner: Runner, profile: TargetProfile,
              out: StagingFolder, timer: StepTimer) -> None:
    """Per-timestep parity against PyTorch, latency, and the end-to-end sampling run."""
    recipe, feeds = plan.recipe, plan.io.feeds
    per_t, timed = [], []
    with timer.step(f"validate:{row.artifact}"):
        for i, t in enumerate(recipe.validation.timesteps):
            inputs = feeds(plan.inputs(t))
            t0 = time.perf_counter()
            output = runner(inputs)
            if plan.times_call(i):  # a big model's: the first latency run (validation_scope)
                timed.append((time.perf_counter() - t0) * 1000.0)
            per_t.append((t, compare(plan.reference[t], output)))
    row.parity_per_timestep = [{"t": t, "batch": plan.parity_batch(t), **p.to_dict()}
                               for t, p in per_t]
    row.parity = Parity.worst([p for _, p in per_t]).to_dict()
    row.details.update(getattr(runner, "row_details", {}))  # how the host ran it (litert gpu)
    host_time = getattr(runner, "host_time", None)
    if host_time is not None:  # a software GPU's time is no latency: labelled, not gated
        lat = plan.io.feeds(plan.inputs(batch=recipe.latency.batch))
        with timer.step(f"host-time:{row.artifact}"):
            row.details["gpu_host_time"] = host_time(lat, recipe.latency.warmup,
                                                     recipe.latency.runs)
    elif not row.details.get("simulated"):  # a simulator's host time is not latency (qnn.py)
        _latency(plan, row, runner, profile, timer, timed)
    if plan.torch_images is not None:
        with timer.step(f"sample:{row.artifact}"):
            images = generate(runner, plan.component, progress=timer.progress.advance)
        # the extension stays in the name: denoiser.onnx and denoiser.ort each keep their grid
        grid = row.artifact.replace("/", "_") + "-samples.png"
        save_grid(out.path(grid), images, plan.labels)
        row.end_to_end = {**compare(plan.torch_images, images, 2.0).to_dict(), "grid": grid}


def _latency(plan: Plan, row: ArtifactResult, runner: Runner, profile: TargetProfile,
             timer: StepTimer, timed: list[float]) -> None:
    """`timed`: this artifact's parity calls that count as latency runs (validation_scope)."""
    recipe, feeds = plan.recipe, plan.io.feeds
    lat = feeds(plan.inputs(batch=recipe.latency.batch))
    with timer.step(f"latency:{row.artifact}"):
        stats = time_fn(lambda: runner(lat), recipe.latency.warmup, recipe.latency.runs,
                        profile.threads, progress=timer.progress.advance, timed=timed)
    if profile.threads not in plan.eager_latency:
        with timer.step("latency:pytorch"):
            plan.eager_latency[profile.threads] = time_torch(
                plan.model, plan.inputs(batch=recipe.latency.batch), recipe.latency.warmup,
                recipe.latency.runs, profile.threads, progress=timer.progress.advance,
                timed=plan.eager_timed.get(profile.threads, ())).to_dict()
    eager = plan.eager_latency[profile.threads]
    row.latency, row.pytorch_latency = stats.to_dict(), eager
    row.speedup_vs_pytorch = eager["median_ms"] / stats.median_ms


def calibration_count(recipe: Recipe, pass_feeds: int, param_bytes: int | None = None) -> int:
    """How many calibration feeds the export needs: static int8 passes (`pass_feeds`, from the
    recipe's precision plan) or a profile that reads them (TargetProfile.feeds_needed: a qnn
    profile's quantization or simulator check) for a model of `param_bytes` fp32 weight bytes
    (None: not known yet, every profile's own count); 0: none."""
    def needed(target: str) -> int:
        profile = load_target(target)
        return profile.calibration_feeds if param_bytes is None else profile.feeds_needed(
            param_bytes)

    return max([pass_feeds, *(needed(t) for t in recipe.targets)])


def _calibration(plan: Plan, count: int, timer: StepTimer) -> tuple[dict[str, np.ndarray], ...]:
    """Feeds for static quantization: the model's own sampling trajectories, stratified over t
    (passes/calibration.py). A component without a sampler (a decoder) has no trajectory: its
    validation inputs at `count` seeds stand in."""
    from mobilegen.passes.calibration import calibration_feeds

    if "sampler" not in plan.component:
        batch = plan.recipe.validation.batch
        return tuple(plan.io.feeds(plan.model.example_inputs(batch, seed=100 + i,
                                                             image_size=plan.size))
                     for i in range(count))
    return tuple(calibration_feeds(torch_runner(plan.model, plan.io), plan.component, count,
                                   progress=timer.progress.advance))


def _sample_batch(component: dict[str, Any]) -> int | None:
    """The batch the sampler calls the model with: its images, twice under classifier-free
    guidance ([cond; null] in one call, sampling/samplers.py); None without a sampler."""
    sampler = component.get("sampler")
    if sampler is None:
        return None
    guided = component["conditioning"]["kind"] in ("class", "context")
    return int(sampler["num_images"]) * (2 if guided and sampler["guidance_scale"] != 1.0 else 1)


def _gate_failures(recipe: Recipe, rows: list[ArtifactResult],
                   pass_reports: list[Any]) -> list[GateFailure]:
    from mobilegen.passes.apply import pass_gate_failures

    failures: list[GateFailure] = []
    for row in rows:
        own = artifact_failures(row, recipe.gates)
        profile = load_target(row.target)
        if profile.full_delegation_required:  # accelerator profiles (targets/coverage.py)
            own += delegation_failures(row, profile.coverage_accelerator)
        row.gates = [str(f) for f in own]
        failures += own
    return failures + pass_gate_failures(recipe, pass_reports)


def _report_sections(recipe: Recipe, plan: Plan, timer: StepTimer) -> dict[str, Any]:
    """The recipe's optional [report] sections, measured on the model as exported (after module
    passes): `blocks` (per-block latency table + operator profile) and `estimates`."""
    out: dict[str, Any] = {}
    example = plan.model.example_inputs(recipe.latency.batch, seed=0, image_size=plan.size)
    if recipe.report.blocks:
        from mobilegen.measure import blocks

        threads = load_target(recipe.targets[0]).threads
        with timer.step("blocks"):
            out["blocks"] = blocks.report_section(plan.model, example, threads=threads,
                                                  warmup=recipe.latency.warmup,
                                                  runs=recipe.latency.runs)
    if recipe.report.estimates:
        from mobilegen.measure import estimate

        with timer.step("estimates"):
            out["estimates"] = estimate.report_section(plan.model, example)
    return out


def _memory_section(timer: StepTimer, gate: preflight.Preflight) -> dict[str, Any]:
    """The preflight's estimate next to the measured peak of the whole process tree, overall and
    per step (measure/memory.py), so the estimate's error is visible."""
    mem = timer.memory
    head = gate.to_dict()
    if mem is None or not mem.measured:
        return {**head, "measured": False, "note": "no /proc on this host: not sampled"}
    mem.sample()
    peak = mem.peak.rss_bytes / GB
    est = gate.estimate_gb(gate.isolate)
    return {**head, "measured": True, "peak": mem.peak.to_dict(),
            "estimate_error_pct": round(100 * (est - peak) / peak, 1),
            "per_step": {k: v.to_dict() for k, v in mem.steps.items()},
            "note": "whole process tree (this process and its children), sampled every "
                    f"{mem.interval:g} s: RSS summed per process, and PSS (shared pages split)"}


def _write(out: StagedOutput, report: ExportReport, manifest: dict[str, Any]) -> None:
    from mobilegen.report.html import write_html
    from mobilegen.report.markdown import render_markdown

    data = report.to_dict()
    out.write_json("manifest.json", manifest)
    out.write_json("report.json", data)
    out.path("report.md").write_text(render_markdown(data))
    write_html(data, out.staging)
