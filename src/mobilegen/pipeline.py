"""One export: recipe -> model -> capture -> per-target artifacts -> parity, latency, report.

Every step is timed; everything lands in a staging folder that replaces the output folder only
when complete. A failed gate still writes the (complete) report, then raises GateFailedError.
"""

from __future__ import annotations

import contextlib
import math
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobilegen import __version__
from mobilegen.checkpoints import LoadedModel, build_random, load_checkpoint
from mobilegen.errors import CheckpointError, GateFailedError
from mobilegen.generate import Runner, generate, save_grid
from mobilegen.measure import count_macs, count_params, group_costs, time_fn, time_torch
from mobilegen.models import get_family
from mobilegen.outputs import StagedOutput, sha256_file
from mobilegen.recipe import Recipe, load_target
from mobilegen.signature import ModelIO
from mobilegen.targets import Artifact, runtime_module
from mobilegen.toolchain_output import toolchain_output
from mobilegen.validate import Parity, compare

REPORT_SCHEMA = 1
MANIFEST_SCHEMA = 1
Progress = Callable[[str], None]


@dataclass
class ExportResult:
    out_dir: Path
    report: dict[str, Any]
    gate_failures: list[str] = field(default_factory=list)


class StepTimer:
    def __init__(self, progress: Progress) -> None:
        self.times: dict[str, float] = {}
        self.progress = progress

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.progress(name)
        t0 = time.perf_counter()
        yield
        self.times[name] = round(self.times.get(name, 0.0) + time.perf_counter() - t0, 3)


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


def torch_runner(model: Any, io: ModelIO) -> Runner:
    import torch

    names = io.input_names

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names if n in feeds]
            return model(*args).numpy()

    return run


def _feeds(inputs: tuple[Any, ...], io: ModelIO) -> dict[str, np.ndarray]:
    return {spec.name: t.numpy() for spec, t in zip(io.inputs, inputs, strict=True)}


def capture(model: Any, example: tuple[Any, ...]) -> Any:
    """torch.export once, with a dynamic batch axis on every input; all targets lower from it."""
    import torch
    from torch.export import Dim

    batch = Dim("batch", min=1, max=4096)
    return torch.export.export(model, example, dynamic_shapes=tuple({0: batch} for _ in example))


def run_export(
    recipe: Recipe, out_dir: Path, progress: Progress = lambda s: None,
    argv: list[str] | None = None,
    train_progress: Callable[[int, int, float], None] | None = None,
) -> ExportResult:
    import torch

    from mobilegen.passes.apply import apply_module_passes, pass_gate_failures, precision_plan

    timer = StepTimer(progress)
    with timer.step("load"):
        loaded = load_model(recipe)
    model, cfg = loaded.model, loaded.config
    size = recipe.image_size or cfg.image_size
    io: ModelIO = get_family(loaded.family).io_spec(cfg, size)
    val = recipe.validation
    with timer.step("count"):
        example = model.example_inputs(val.batch, seed=0, image_size=size)
        macs, table = count_macs(model, model.example_inputs(1, image_size=size))
        params = count_params(model)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    with StagedOutput(out_dir) as out:
        component = _component_entry(recipe, loaded, io, size)
        if "sampler" not in component and val.end_to_end:  # a decoder: nothing to sample
            val = val.model_copy(update={"end_to_end": False})
            recipe = recipe.model_copy(update={"validation": val})
        labels = component["conditioning"].get("labels")
        # Module passes (gelu_to_silu, relu_attention) rewrite the model before capture.
        with timer.step("passes"):
            model, pass_reports = apply_module_passes(
                recipe, model, component, io, size,
                sample=lambda m: generate(torch_runner(m, io), component),
                save_grid=lambda name, images: save_grid(out.path(name), images, labels),
                progress=train_progress,
            )
        plan = precision_plan(recipe)
        with timer.step("capture"):
            program = capture(model, example)
        programs = {"default": program}
        with torch.inference_mode():
            reference = {
                t: model(*model.example_inputs(val.batch, seed=1, t=t, image_size=size)).numpy()
                for t in val.timesteps
            }
        torch_images = None
        if val.end_to_end and "sampler" in component:  # a decoder has nothing to sample
            with timer.step("sample-pytorch"):
                torch_images = generate(torch_runner(model, io), component)
            save_grid(out.path("samples-pytorch.png"), torch_images, labels)
        rows: list[dict[str, Any]] = []
        eager: dict[int, dict[str, Any]] = {}
        artifacts: list[Artifact] = []
        calibration: list[dict[str, np.ndarray]] = []
        if plan.calibration_feeds:  # static int8: feeds from the model's own trajectories
            from mobilegen.passes.calibration import calibration_feeds

            with timer.step("calibrate"):
                calibration = calibration_feeds(torch_runner(model, io), component,
                                                plan.calibration_feeds)
        log = out.path("logs/toolchain.log")  # what converters print (toolchain_output.py)
        for target_name in recipe.targets:
            profile = load_target(target_name)
            with toolchain_output(log):
                runtime = runtime_module(profile.runtime)
            # a profile with its own layout (ios-ane) gets its own capture, once per layout
            target_program = _program_for(profile.layout, programs, model, example, timer)
            with timer.step(f"export:{target_name}"), toolchain_output(log):
                produced = runtime.export(target_program, io, example, profile,
                                          out.dir(target_name), component["name"], param_bytes)
            produced += _precision_artifacts(plan, runtime, target_program, io, example, profile,
                                             out.dir(target_name), param_bytes, calibration, timer,
                                             component["name"], log)
            for art in produced:
                art.file = f"{target_name}/{art.file}"
                art.companions = [f"{target_name}/{c}" for c in art.companions]
                artifacts.append(art)
                row = {"artifact": art.file, "format": art.format, "target": target_name,
                       "precision": art.precision, "runnable": art.runnable,
                       "bytes": _artifact_bytes(out.staging, art), "details": art.details}
                if art.precision in plan.limits:  # fp16/int8 rows have limits of their own
                    row["gate_limits"] = plan.limits[art.precision]
                rows.append(row)
                if not art.runnable:
                    continue
                with toolchain_output(log):
                    runner = runtime.load(out.staging / art.file, profile.threads)
                with timer.step(f"validate:{art.file}"):
                    per_t = []
                    for t in val.timesteps:
                        inputs = model.example_inputs(val.batch, seed=1, t=t, image_size=size)
                        p = compare(reference[t], runner(_feeds(inputs, io)))
                        per_t.append({"t": t, **p.to_dict()})
                        row.setdefault("_parity", []).append(p)
                    row["parity_per_timestep"] = per_t
                    row["parity"] = Parity.worst(row.pop("_parity")).to_dict()
                lat_inputs = _feeds(model.example_inputs(recipe.latency.batch, image_size=size), io)
                with timer.step(f"latency:{art.file}"):
                    stats = time_fn(lambda r=runner, f=lat_inputs: r(f), recipe.latency.warmup,
                                    recipe.latency.runs, profile.threads)
                if profile.threads not in eager:
                    with timer.step("latency:pytorch"):
                        eager[profile.threads] = time_torch(
                            model, model.example_inputs(recipe.latency.batch, image_size=size),
                            recipe.latency.warmup, recipe.latency.runs, profile.threads,
                        ).to_dict()
                row["latency"] = stats.to_dict()
                row["pytorch_latency"] = eager[profile.threads]
                row["speedup_vs_pytorch"] = eager[profile.threads]["median_ms"] / stats.median_ms
                if torch_images is not None:
                    with timer.step(f"sample:{art.file}"):
                        images = generate(runner, component)
                    grid = art.file.replace("/", "_").rsplit(".", 1)[0] + "-samples.png"
                    save_grid(out.path(grid), images, labels)
                    row["end_to_end"] = {**compare(torch_images, images, 2.0).to_dict(),
                                         "grid": grid}
        extra = _report_sections(recipe, model, size, timer)
        failures = evaluate_gates(recipe, rows) + pass_gate_failures(recipe, pass_reports)
        for row in rows:
            row["gates"] = [f for f in failures if f.startswith(row["artifact"] + ":")]
        report = {
            "schema_version": REPORT_SCHEMA,
            "tool": {"name": "mobilegen", "version": __version__},
            "recipe": {"name": recipe.name, "path": str(recipe.path)},
            "status": "gate_failed" if failures else "ok",
            "model": {
                "family": loaded.family, "source": loaded.source,
                "init": recipe.model.init, "source_dtype": loaded.source_dtype,
                "config": cfg.to_dict(), "params": params, "param_bytes": param_bytes,
                "image_size": size, "gmac": macs / 1e9,
                "modules": group_costs(table),
                "notes": _model_notes(recipe, component),
            },
            "artifacts": rows,
            "passes": [r.to_dict() for r in pass_reports] + plan.summary(),
            "gates": {"config": recipe.gates.model_dump(), "failures": failures},
            "sample_grids": {"pytorch": "samples-pytorch.png"} if torch_images is not None else {},
            **extra,
            "timings_s": timer.times,
            "host": host_info(),
        }
        manifest = build_manifest(recipe, loaded, component, artifacts, out.staging, argv)
        out.write_json("manifest.json", manifest)
        out.write_json("report.json", json_safe(report))
        from mobilegen.html_report import write_html
        from mobilegen.report import render_markdown

        out.path("report.md").write_text(render_markdown(report))
        write_html(json_safe(report), out.staging)
        final = out.commit()
    if failures:
        raise GateFailedError(f"{len(failures)} gate(s) failed: " + "; ".join(failures))
    return ExportResult(final, report, failures)


def _component_entry(recipe: Recipe, loaded: LoadedModel, io: ModelIO, size: int) -> dict[str, Any]:
    """The manifest's description of how to drive the component (also drives e2e parity).

    The family's `component_entry(cfg, recipe, size)` (in its model module) gives what only it
    knows: name, conditioning, sample shape, value ranges, layouts, latent scaling. A component
    with conditioning gets the shared sampler entry; one without (the VAE decoder) gets none."""
    from mobilegen.generate import sampler_config
    from mobilegen.sampling import VPSchedule, sampler_constants

    own = get_family(loaded.family).component_entry(loaded.config, recipe, size)
    entry: dict[str, Any] = {"name": own.pop("name"), "family": loaded.family,
                             "inputs": [t.to_dict() for t in io.inputs],
                             "outputs": [t.to_dict() for t in io.outputs], **own}
    cond = own.get("conditioning")
    if cond is None:  # not a denoiser: nothing to sample
        entry["conditioning"] = {"kind": "none"}
        return entry
    s = recipe.sampler
    schedule = VPSchedule()
    sampler = {"kind": s.kind, "steps": s.steps, "guidance_scale": s.guidance_scale,
               "time_spacing": s.time_spacing, "seed": s.seed, "num_images": s.num_images,
               "schedule": schedule.to_dict()}
    sampler["constants"] = sampler_constants(sampler_config(sampler), schedule)
    guided = cond["kind"] != "none" and s.guidance_scale != 1.0
    entry["prediction"] = "epsilon"
    entry["guidance"] = {"scale": s.guidance_scale,
                         "batch": "2B: [conditional; null] concatenated" if guided else "B"}
    entry["sampler"] = sampler
    return entry


def _model_notes(recipe: Recipe, component: dict[str, Any]) -> list[str]:
    """Plain statements a reader must not miss (random weights, checks that did not run)."""
    notes = []
    if recipe.model.init == "random":
        notes.append(f"weights are RANDOM (init = \"random\", seed {recipe.model.seed}): "
                     "sizes and latencies are real, generated images are meaningless")
    if "sampler" not in component:
        notes.append(f"end-to-end sampling parity skipped: {component['name']} has no sampler "
                     "(only per-call parity and latency are checked)")
    return notes


def build_manifest(
    recipe: Recipe, loaded: LoadedModel, component: dict[str, Any], artifacts: list[Artifact],
    root: Path, argv: list[str] | None,
) -> dict[str, Any]:
    files = []
    for art in artifacts:
        for rel in [art.file, *art.companions]:
            p = root / rel
            if p.is_file():  # an .mlpackage folder is hashed through its files (companions)
                files.append({"path": rel, "bytes": p.stat().st_size, "sha256": sha256_file(p),
                              "format": art.format if rel == art.file else "companion",
                              "target": art.target, "runtime": art.runtime,
                              "precision": art.precision})
                if p.suffix == ".ort":
                    from mobilegen.targets.ort_content import ort_content_sha256

                    files[-1]["content_sha256"] = ort_content_sha256(p)
                    files[-1]["note"] = ("bytes may differ between conversions (a derived table is "
                                         "written in hash-map order); content_sha256 is stable")
    ckpt = recipe.checkpoint_path()
    return {
        "schema_version": MANIFEST_SCHEMA,
        "recipe": recipe.name,
        "components": [component],
        "files": files,
        "provenance": {
            "checkpoint": str(ckpt) if ckpt else "random",
            "checkpoint_sha256": sha256_file(ckpt) if ckpt and ckpt.is_file() else None,
            "recipe_sha256": sha256_file(recipe.path) if recipe.path else None,
            "command": shlex.join(argv if argv is not None else sys.argv),
            "versions": library_versions(),
        },
    }


def evaluate_gates(recipe: Recipe, rows: list[dict[str, Any]]) -> list[str]:
    """One line per failed gate: which artifact, which gate, the value and by how much."""
    g = recipe.gates
    out: list[str] = []

    def check(art: str, name: str, value: float, limit: float | None, higher_is_better: bool):
        if limit is None:
            return
        bad = value < limit if higher_is_better else value > limit
        if bad or math.isnan(value):
            op = ">=" if higher_is_better else "<="
            out.append(f"{art}: {name} {value:.4g} (needs {op} {limit:g}, off by "
                       f"{abs(value - limit):.4g})")

    for row in rows:
        if not row["runnable"]:
            continue
        art, par = row["artifact"], row["parity"]
        # fp16/int8 rows carry their precision's limits (passes/precision_gates.py); the
        # latency gate applies to every row as written.
        lim = row.get("gate_limits") or g.model_dump()
        step_psnr = math.inf if par["psnr_db"] is None else par["psnr_db"]
        check(art, "min_step_psnr_db", step_psnr, lim["min_step_psnr_db"], True)
        check(art, "min_cosine", par["cosine"], lim["min_cosine"], True)
        check(art, "max_abs_error", par["max_abs_error"], lim["max_abs_error"], False)
        check(art, "max_latency_ms", row["latency"]["median_ms"], g.max_latency_ms, False)
        if "end_to_end" in row:
            e2e = row["end_to_end"]["psnr_db"]
            check(art, "min_psnr_db", math.inf if e2e is None else e2e, lim["min_psnr_db"], True)
    return out


def _report_sections(recipe: Recipe, model: Any, size: int, timer: StepTimer) -> dict[str, Any]:
    """The recipe's optional [report] sections, measured on the model as exported (after module
    passes): `blocks` (per-block latency table + operator profile) and `estimates`."""
    out: dict[str, Any] = {}
    example = model.example_inputs(recipe.latency.batch, seed=0, image_size=size)
    if recipe.report.blocks:
        from mobilegen import blocks

        threads = load_target(recipe.targets[0]).threads
        with timer.step("blocks"):
            out["blocks"] = blocks.report_section(model, example, threads=threads,
                                                  warmup=recipe.latency.warmup,
                                                  runs=recipe.latency.runs)
    if recipe.report.estimates:
        from mobilegen import estimate

        with timer.step("estimates"):
            out["estimates"] = estimate.report_section(model, example)
    return out


def _precision_artifacts(
    plan: Any, runtime: Any, program: Any, io: ModelIO, example: tuple[Any, ...], profile: Any,
    workdir: Path, param_bytes: int, calibration: list[dict[str, np.ndarray]], timer: StepTimer,
    name: str = "denoiser", log: Path | None = None,
) -> list[Artifact]:
    """The recipe's precision passes for one target, after its fp32 artifacts. A target that
    cannot do a pass gets a non-runnable row saying why, not an error."""
    out: list[Artifact] = []
    for pass_name, spec, _ in plan.specs:
        why = (runtime.supports(spec) if hasattr(runtime, "supports")
               else "this target implements no precision passes")
        if why is not None:
            out.append(Artifact(f"{name}.{spec.tag}", "none", profile.name, profile.runtime,
                                spec.tag, runnable=False,
                                details={"skipped": f"pass {pass_name} not supported: {why}"}))
            continue
        quiet = toolchain_output(log) if log else contextlib.nullcontext()
        with timer.step(f"export:{profile.name}:{spec.tag}"), quiet:
            out += runtime.export_precision(program, io, example, profile, workdir, name,
                                            param_bytes, spec, calibration)
    return out


def _program_for(layout: str, programs: dict[str, Any], model: Any, example: tuple[Any, ...],
                 timer: StepTimer) -> Any:
    """The captured program for a target layout: the shared capture for "default", else the
    layout's rewrite of the model (rewrites/), captured once and cached in `programs`."""
    if layout not in programs:
        from mobilegen.rewrites.ane import apply_layout

        with timer.step(f"capture:{layout}"):
            programs[layout] = capture(apply_layout(model, layout)[0], example)
    return programs[layout]


def _artifact_bytes(root: Path, art: Artifact) -> int:
    # is_file: a Core ML .mlpackage is a folder; its files are listed as companions
    return sum((root / f).stat().st_size for f in [art.file, *art.companions]
               if (root / f).is_file())


def json_safe(obj: Any) -> Any:
    """NaN/inf -> null and numpy scalars -> Python, so report.json is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"mobilegen": __version__, "python": platform.python_version()}
    for pkg in ("torch", "onnx", "onnxscript", "onnxruntime", "numpy", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def host_info() -> dict[str, Any]:
    import os

    return {"machine": platform.machine(), "processor": platform.processor() or "unknown",
            "cpus": os.cpu_count(), "system": platform.system(),
            "python": platform.python_version()}
