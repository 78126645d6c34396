"""`mobilegen sensitivity RECIPE`: which layers static int8 hurts, the plan that keeps the most
sensitive ones float until a target is met (with its size, latency and image cost), and the fp16
safety check (per-layer headroom to 65504, inf/NaN, fp16-arithmetic image PSNR)."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from mobilegen.cli.common import DebugOpt, JsonOpt, OptionError, handle_errors, print_json


@dataclass(frozen=True)
class SensitivityRequest:
    recipe: Path
    granularity: str  # "layer" | "block"
    target_step_psnr_db: float
    activation_bits: int
    calibration_method: str
    feeds: int
    png: Path | None
    fp16: bool
    ray: str | None = None  # a Ray cluster address: the per-layer trials run as Ray tasks


@handle_errors
def sensitivity(
    recipe: Annotated[Path, typer.Argument(help="A single-model recipe (path or shipped name).")],
    granularity: Annotated[str, typer.Option(help="layer | block")] = "layer",
    target_psnr_db: Annotated[float, typer.Option(
        "--target-psnr-db", help="Worst per-step PSNR the plan must reach.")] = 45.0,
    activation_bits: Annotated[int, typer.Option(help="8 (W8A8) or 16 (W8A16).")] = 8,
    calibration: Annotated[str, typer.Option(help="minmax | percentile | entropy")] = "minmax",
    feeds: Annotated[int, typer.Option(help="Calibration feeds along the trajectory.")] = 16,
    png: Annotated[Path | None, typer.Option(help="Write the sorted bar plot here.")] = None,
    fp16: Annotated[bool, typer.Option("--fp16/--no-fp16", help="Also the fp16 check.")] = True,
    ray: Annotated[str | None, typer.Option(
        "--ray", help="Ray cluster address (auto, HOST:PORT, ray://HOST:PORT): the per-layer "
        "trials run as Ray tasks; run from a folder on the cluster's shared file system.")] = None,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Per-layer int8 sensitivity, the keep-float plan for a PSNR target, and fp16 headroom."""
    if granularity not in ("layer", "block"):
        raise OptionError(f"--granularity must be layer or block, found {granularity}")
    if activation_bits not in (8, 16) or calibration not in ("minmax", "percentile", "entropy"):
        raise OptionError("--activation-bits must be 8 or 16 and --calibration one of minmax, "
                          f"percentile, entropy (found {activation_bits}, {calibration})")
    if feeds < 1:
        raise OptionError(f"--feeds must be >= 1, found {feeds}")
    if not 0.0 < target_psnr_db <= 200.0:  # NaN fails too
        raise OptionError(f"--target-psnr-db must be in (0, 200] dB, found {target_psnr_db}")
    if png is not None:  # checked before the study, not after it
        if png.is_dir():
            raise OptionError(f"--png {png}: is a folder, expected a .png file path")
        if png.suffix.lower() != ".png":
            raise OptionError(f"--png {png}: expected a file name ending in .png")
    req = SensitivityRequest(recipe, granularity, target_psnr_db, activation_bits, calibration,
                             feeds, png, fp16, ray)
    result = run_sensitivity(req)
    if json_output:
        from mobilegen.report.results import json_safe

        print_json(json_safe(result))
    else:
        render(result)


def _setup(req: SensitivityRequest, work: Path) -> dict[str, Any]:
    """Model, capture, fp32 ONNX, calibration and validation feeds, PyTorch sampling run."""
    from mobilegen.export.manifest import component_entry
    from mobilegen.export.run import capture, load_model
    from mobilegen.models import get_family
    from mobilegen.passes.calibration import calibration_feeds
    from mobilegen.recipe import load_any_recipe
    from mobilegen.sampling.generate import generate
    from mobilegen.sampling.runner import torch_runner
    from mobilegen.targets import onnx as onnx_target
    from mobilegen.targets.base import ExportRequest
    from mobilegen.targets.profile import load_target

    recipe = load_any_recipe(req.recipe)
    if not hasattr(recipe, "model"):
        raise OptionError(f"{req.recipe}: a pipeline recipe; sensitivity takes one model")
    loaded = load_model(recipe)
    model, cfg = loaded.model.eval(), loaded.config
    size = recipe.image_size or cfg.image_size
    io = get_family(loaded.family).io_spec(cfg, size)
    component = component_entry(recipe, loaded, io, size)
    example = model.example_inputs(recipe.validation.batch, seed=0, image_size=size)
    program = capture(model, example)
    profile = load_target("ort-mobile-cpu").model_copy(update={"ort_format": False})
    onnx_target.export(ExportRequest(program, io, example, profile, work, "model", 0))
    sampler = "sampler" in component
    calib = (calibration_feeds(torch_runner(model, io), component, req.feeds) if sampler
             else [io.feeds(example)])
    validation = [io.feeds(model.example_inputs(recipe.validation.batch, seed=1, t=t,
                                                image_size=size))
                  for t in recipe.validation.timesteps]
    images = generate(torch_runner(model, io), component) if sampler else None
    return {"recipe": recipe, "model": model, "io": io, "component": component,
            "program": program, "fp32": work / "model.onnx", "calibration": calib,
            "validation": validation, "images": images, "latency_feeds": io.feeds(
                model.example_inputs(1, image_size=size))}


def run_sensitivity(req: SensitivityRequest) -> dict[str, Any]:
    from mobilegen.passes.precision import PrecisionSpec
    from mobilegen.passes.sensitivity import Study, greedy_plan, layer_sensitivity

    spec = PrecisionSpec("int8", "static", activation_bits=req.activation_bits,
                         calibration_method=req.calibration_method)  # type: ignore[arg-type]
    # with Ray, the work folder (fp32 model, calibration cache) is read by every node: it sits in
    # the current folder, on the shared file system, instead of this machine's /tmp
    with tempfile.TemporaryDirectory(prefix=".mobilegen-sensitivity-",
                                     dir=Path.cwd() if req.ray else None) as tmp:
        ctx = _setup(req, Path(tmp))
        study = Study(ctx["fp32"], spec, ctx["calibration"], ctx["validation"], Path(tmp))
        trials = None
        if req.ray:
            from mobilegen.export.ray_tasks import ray_trials

            trials = ray_trials(study, req.ray)
        scores = layer_sensitivity(study, req.granularity, trials)
        plan = greedy_plan(study, scores, req.target_step_psnr_db, req.granularity)
        plan["costs"] = _plan_costs(study, ctx, plan, req.granularity)
        out: dict[str, Any] = {
            "recipe": ctx["recipe"].name, "spec": {"activation_bits": req.activation_bits,
                                                   "calibration_method": req.calibration_method,
                                                   "granularity": req.granularity},
            "validation_timesteps": list(ctx["recipe"].validation.timesteps),
            "always_float": study.kept, "layers": [asdict(s) for s in scores], "plan": plan}
        if req.fp16:
            out["fp16"] = _fp16_report(ctx)
    if req.png is not None:
        plot(scores, req.target_step_psnr_db, req.png)
        out["png"] = str(req.png)
    return out


def _plan_costs(study: Any, ctx: dict[str, Any], plan: dict[str, Any],
                granularity: str) -> dict[str, Any]:
    """fp32 vs everything quantized vs the plan: file size, ORT latency (batch 1, shared host),
    worst step PSNR and the image PSNR of a full sampling run."""
    from mobilegen.measure.costs import time_fn
    from mobilegen.measure.parity import compare
    from mobilegen.passes.sensitivity import group_of
    from mobilegen.sampling.generate import generate
    from mobilegen.targets import onnx as onnx_target

    rows = {}
    keep = set(plan["keep_float"])
    variants = {"fp32": None, "all int8": study.layers,
                "plan": [x for x in study.layers if group_of(x.path, granularity) not in keep]}
    for name, layers in variants.items():
        if layers is None:
            path, step = ctx["fp32"], float("inf")
        else:
            psnr, q = study.quantized(layers)
            path = q.with_name(f"{name.replace(' ', '_')}.onnx")
            q.replace(path)
            step = min(psnr)
        run = onnx_target.load(path, 2)
        feeds = ctx["latency_feeds"]
        ms = time_fn(lambda r=run, f=feeds: r(f), warmup=3, runs=20, threads=2).median_ms
        row = {"bytes": path.stat().st_size, "ms": ms, "step_psnr_db": step}
        if ctx["images"] is not None:
            row["image_psnr_db"] = compare(ctx["images"], generate(run, ctx["component"]),
                                           2.0).psnr_db
        rows[name] = row
    return rows


def _fp16_report(ctx: dict[str, Any]) -> dict[str, Any]:
    """The fp16 safety check on the calibration feeds, and the image PSNR of a sampling run in
    fp16 arithmetic (PyTorch), before and after keeping the flagged layers in fp32."""
    import torch

    from mobilegen.measure.parity import compare
    from mobilegen.passes.fp16_safety import check_fp16, run_program
    from mobilegen.sampling.generate import generate

    safety = check_fp16(ctx["program"], ctx["calibration"][:8])
    report = safety.to_dict(top=20)
    if ctx["images"] is None:
        return report
    gm = ctx["program"].module()
    for key, keep in (("image_psnr_fp16_db", ()), ("image_psnr_fp16_fixed_db",
                                                    tuple(safety.kept_fp32))):
        def runner(feeds: dict[str, np.ndarray], keep: tuple[str, ...] = keep) -> np.ndarray:
            args = tuple(torch.from_numpy(np.asarray(v)) for v in feeds.values())
            return run_program(gm, [args], half=True, keep=keep)[2][0]

        psnr = compare(ctx["images"], generate(runner, ctx["component"]), 2.0).psnr_db
        report[key] = psnr if np.isfinite(psnr) else None
    return report


def plot(scores: list[Any], target: float, png: Path) -> None:
    """Sorted horizontal bars of per-layer PSNR (most sensitive on top), the target as a line."""
    from PIL import Image, ImageDraw

    rows, bar_h, left, width = len(scores), 14, 230, 420
    top = max([s.step_psnr_db for s in scores if np.isfinite(s.step_psnr_db)] + [target]) + 5
    img = Image.new("RGB", (left + width + 60, rows * bar_h + 40), "white")
    draw = ImageDraw.Draw(img)
    x_of = lambda v: left + int(width * min(v, top) / top)
    for i, s in enumerate(scores):
        y = 10 + i * bar_h
        color = (200, 60, 60) if s.step_psnr_db < target else (70, 120, 190)
        draw.rectangle([left, y, x_of(s.step_psnr_db), y + bar_h - 3], fill=color)
        draw.text((4, y), s.layer[:36], fill="black")
        draw.text((x_of(s.step_psnr_db) + 3, y), f"{s.step_psnr_db:.1f}", fill="black")
    draw.line([x_of(target), 5, x_of(target), rows * bar_h + 12], fill=(0, 0, 0), width=1)
    draw.text((left, rows * bar_h + 16), f"worst step PSNR (dB) with only this layer quantized;"
              f" line = target {target:g} dB", fill="black")
    png.parent.mkdir(parents=True, exist_ok=True)
    img.save(png)


def render(result: dict[str, Any]) -> None:
    from rich.table import Table

    from mobilegen.cli.common import stdout_console

    console = stdout_console()
    table = Table(title=f"{result['recipe']}: int8 static sensitivity (one layer quantized at a "
                        "time; worst step PSNR vs fp32)")
    for col in ("layer", "ops", "weights", "worst dB", "mean dB"):
        table.add_column(col)
    for s in result["layers"]:
        table.add_row(s["layer"], s["ops"], f"{s['weights']:,}", f"{s['step_psnr_db']:.1f}",
                      f"{s['mean_psnr_db']:.1f}")
    console.print(table)
    plan = result["plan"]
    console.print(f"plan (target {plan['target_step_psnr_db']:g} dB, met: {plan['met']}): keep "
                  f"float {plan['keep_float'] or 'nothing'}; reached "
                  f"{plan['achieved_step_psnr_db']:.1f} dB; +{plan['extra_bytes_vs_all_int8']:,}"
                  " bytes vs all int8", highlight=False)
    for name, row in plan["costs"].items():
        image = row.get("image_psnr_db")
        console.print(f"  {name:9} {row['bytes'] / 1e6:7.2f} MB {row['ms']:8.2f} ms (shared "
                      f"host)  step {row['step_psnr_db']:.1f} dB"
                      + (f"  image {image:.1f} dB" if image is not None else ""),
                      highlight=False)
    if "fp16" in result:
        f = result["fp16"]
        console.print(f"fp16: kept fp32 {f['kept_fp32'] or 'nothing'}; least headroom "
                      f"{f['layers'][0]['layer']} x{f['layers'][0]['headroom']:.0f}; inf/NaN in "
                      f"{f['nonfinite_before'] or 'no layer'}; fp16-arithmetic image PSNR "
                      f"{f.get('image_psnr_fp16_db')} dB", highlight=False)
