"""What each precision pass costs and buys, before (the previous conversions, rebuilt here) and
after (what targets/onnx.py and targets/tflite.py do now), in one run on this host.

For the default recipe's trained STOIC (recipes/stoic-digits.toml) and for STOIC S=2 N=12 L=512 at
32x32 (random weights), one row per variant: .onnx size, ONNX Runtime median latency (CPU EP,
batch 1), worst step PSNR over t in {999, 500, 1} (random x, batch 2) and end-to-end image PSNR
(the recipe's full sampling run, same seed), both against fp32 PyTorch; for the digits model
also the digit classifier's accuracy on each variant's samples (mobilegen.digits_classifier) and
LiteRT rows. Optionally (--rewrites) the GELU->SiLU / ReLU-attention rewrites as before.

    .venv/bin/python benchmarks/bench_passes.py [--threads 2] [--runs 30] [--models both]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobilegen.checkpoints.loader import build_random, load_checkpoint
from mobilegen.export.manifest import component_entry
from mobilegen.export.run import capture
from mobilegen.measure.costs import time_fn
from mobilegen.measure.parity import Parity, compare
from mobilegen.models.stoic import VARIANTS, io_spec
from mobilegen.passes import gelu_to_silu, relu_attention
from mobilegen.passes.base import RewriteContext
from mobilegen.passes.calibration import calibration_feeds, noised_batches
from mobilegen.passes.precision import PrecisionSpec
from mobilegen.recipe import Recipe, load_recipe
from mobilegen.sampling.generate import generate
from mobilegen.sampling.runner import torch_runner
from mobilegen.targets import onnx as onnx_target
from mobilegen.targets import onnx_precision
from mobilegen.targets import tflite as tflite_target
from mobilegen.targets.base import ExportRequest
from mobilegen.targets.profile import load_target

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "bench_passes.json"
TIMESTEPS = (999.0, 500.0, 1.0)


class Case:
    """One model: its base fp32 PyTorch reference (step outputs and sampled images)."""

    def __init__(self, name: str, recipe: Recipe, loaded: Any, size: int, digits: bool) -> None:
        self.name, self.recipe, self.loaded, self.size = name, recipe, loaded, size
        self.model = loaded.model.eval()
        self.io = io_spec(loaded.config, size)
        self.component = component_entry(recipe, loaded, self.io, size)
        self.inputs = {t: self.model.example_inputs(2, seed=1, t=t, image_size=size)
                       for t in TIMESTEPS}
        with torch.inference_mode():
            self.ref = {t: self.model(*x).numpy() for t, x in self.inputs.items()}
        self.images = generate(torch_runner(self.model, self.io), self.component)
        self.classifier = None
        if digits:
            from mobilegen import digits_classifier as dc

            self.classifier = dc.fit_classifier()
            self.labels = np.resize(np.array(self.component["conditioning"]["labels"]),
                                    len(self.images))
            self.fp32_accuracy = dc.accuracy(self.classifier, self.images, self.labels)

    def feeds(self, inputs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
        return {s.name: t.numpy() for s, t in zip(self.io.inputs, inputs, strict=True)}


def measure(case: Case, run: Any, path: Path, threads: int, runs: int) -> dict[str, Any]:
    step = Parity.worst([compare(case.ref[t], run(case.feeds(case.inputs[t])))
                         for t in TIMESTEPS])
    lat_feeds = case.feeds(case.model.example_inputs(1, image_size=case.size))
    lat = time_fn(lambda: run(lat_feeds), warmup=5, runs=runs, threads=threads)
    images = generate(run, case.component)
    row = {"mb": path.stat().st_size / 1e6, "ms": lat.median_ms, "step_psnr": step.psnr_db,
           "e2e_psnr": compare(case.images, images, 2.0).psnr_db}
    if case.classifier is not None:
        from mobilegen import digits_classifier as dc

        row["accuracy"] = dc.accuracy(case.classifier, images, case.labels)
    return row


def legacy(kind: str, src: Path, dst: Path, calib: list[dict[str, np.ndarray]]) -> None:
    """The conversions as they were before issue 12 (for the 'before' rows)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if kind == "weight_only":  # DequantizeLinear on every MatMul/Gemm/Conv weight, fp32 compute
        model = onnx.load(str(src))
        onnx_precision._dequantize_linear_weights(model)
        onnx.save(model, str(dst))
        return
    skip = onnx_precision.timestep_path(onnx.load(str(src)))  # u8 QDQ on every weight op
    quantize_static(str(src), str(dst), onnx_precision.FeedReader(calib[:8]),
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul", "Gemm", "Conv"],
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, nodes_to_exclude=skip)


def ort_variants(case: Case, big: bool) -> list[tuple[str, Any]]:
    static = PrecisionSpec("int8", "static")
    out: list[tuple[str, Any]] = [
        ("before: int8 weight-only (DequantizeLinear)", "weight_only"),
        ("before: int8 static (u8, all weight ops, 8 feeds)", "static"),
        ("fp16 (+ fp16 safety)", PrecisionSpec("fp16")),
        ("int8 weight-only (MatMulNBits)", PrecisionSpec("int8", "weight_only")),
        ("int8 dynamic", PrecisionSpec("int8", "dynamic")),
        ("int8 static W8A8", static),
        ("int8 static W8A8 percentile", replace(static, calibration_method="percentile")),
        ("int8 static W8A16", replace(static, activation_bits=16)),
    ]
    if big:  # random weights: latency and step PSNR are the questions (fp16/W8A16 compute in
        # fp32 on this CPU, and the fp16 check interprets the graph op by op)
        return [v for v in out if "fp16" not in v[0] and "W8A16" not in v[0]]
    out.append(("int8 static W8A8 + plan (step >= 45 dB)",
                replace(static, target_step_psnr_db=45.0)))
    return out


def bench_ort(case: Case, work: Path, threads: int, runs: int, big: bool) -> list[dict]:
    profile = load_target("ort-mobile-cpu").model_copy(update={"ort_format": False})
    example = case.model.example_inputs(2, seed=0, image_size=case.size)
    program = capture(case.model, example)
    calib = calibration_feeds(torch_runner(case.model, case.io), case.component, 16)
    req = ExportRequest(program, case.io, example, profile, work, "base", 0, tuple(calib))
    t0 = time.perf_counter()
    onnx_target.export(req)
    fp32 = work / "base.onnx"
    rows = [{"variant": "fp32", "runtime": "ort", "build_s": time.perf_counter() - t0,
             **measure(case, onnx_target.load(fp32, threads), fp32, threads, runs)}]
    print(_line(rows[0], rows[0]["ms"]), flush=True)
    for label, spec in ort_variants(case, big):
        t0 = time.perf_counter()
        if isinstance(spec, str):
            path = work / f"legacy-{spec}.onnx"
            legacy(spec, fp32, path, calib)
            details: dict[str, Any] = {}
        else:
            art = onnx_target.export_precision(req, spec)[0]
            path, details = work / art.file, art.details
        row = {"variant": label, "runtime": "ort", "build_s": time.perf_counter() - t0,
               **measure(case, onnx_target.load(path, threads), path, threads, runs)}
        for key in ("sensitivity_plan", "fp16_safety"):
            if key in details:
                row[key] = details[key]
        rows.append(row)
        print(_line(row, rows[0]["ms"]), flush=True)
    return rows


def bench_litert(case: Case, work: Path, threads: int, runs: int) -> list[dict]:
    """LiteRT (XNNPACK) rows for the digits model: fp32, static before/after, W8A16."""
    from ai_edge_quantizer import quantizer
    from ai_edge_quantizer.recipe import TFLOperationName

    profile = load_target("android-cpu")
    example = case.model.example_inputs(2, seed=0, image_size=case.size)
    program = capture(case.model, example)
    calib = calibration_feeds(torch_runner(case.model, case.io), case.component, 16)
    req = ExportRequest(program, case.io, example, profile, work, "lite", 0, tuple(calib))
    tflite_target.export(req)
    fp32 = work / "lite.tflite"
    rows = [{"variant": "fp32", "runtime": "litert", "build_s": 0.0,
             **measure(case, tflite_target.load(fp32, threads), fp32, threads, runs)}]
    print(_line(rows[0], rows[0]["ms"]), flush=True)
    # before: every op inside a submodule, W8A8 (the previous rule)
    qt = quantizer.Quantizer(str(fp32))
    qt.add_static_config(regex=".*/.*", operation_name=TFLOperationName.ALL_SUPPORTED,
                         activation_num_bits=8, weight_num_bits=8)
    feeds = [tflite_target._signature_feeds(c, case.io, fp32) for f in calib
             for c in tflite_target._chunks(f, case.io, 2)]
    before = work / "lite.before.tflite"
    qt.quantize(qt.calibrate({tflite_target.SIGNATURE: feeds}, num_threads=2)).export_model(
        str(before), overwrite=True)
    variants = [("before: int8 static (all ops in submodules)", before, None),
                ("int8 static W8A8", None, PrecisionSpec("int8", "static")),
                ("int8 static W8A16", None, PrecisionSpec("int8", "static", activation_bits=16))]
    for label, path, spec in variants:
        t0 = time.perf_counter()
        if spec is not None:
            path = work / tflite_target.export_precision(req, spec)[0].file
        row = {"variant": label, "runtime": "litert", "build_s": time.perf_counter() - t0,
               **measure(case, tflite_target.load(path, threads), path, threads, runs)}
        rows.append(row)
        print(_line(row, rows[0]["ms"]), flush=True)
    return rows


def bench_rewrites(case: Case, work: Path, threads: int, runs: int,
                   recover_steps: int) -> list[dict]:
    profile = load_target("ort-mobile-cpu").model_copy(update={"ort_format": False})
    ctx = RewriteContext(list(TIMESTEPS), lambda t: case.inputs[t])
    rewrites = [("fp32 ReLU attention", relu_attention, relu_attention.Options()),
                ("fp32 GELU->SiLU", gelu_to_silu, gelu_to_silu.Options())]
    if recover_steps:
        seed = case.component["sampler"]["seed"] + 1
        x0 = generate(torch_runner(case.model, case.io), case.component, seed=seed)
        ctx.recovery_batches = lambda teacher, batch: noised_batches(x0, case.component, batch)
        rewrites += [
            (f"fp32 ReLU attention + {recover_steps} recovery steps", relu_attention,
             relu_attention.Options(recover_steps=recover_steps, recover_lr=1e-4)),
            (f"fp32 GELU->SiLU + {recover_steps} recovery steps", gelu_to_silu,
             gelu_to_silu.Options(recover_steps=recover_steps, recover_lr=1e-4)),
        ]
    rows = []
    for k, (label, module, opts) in enumerate(rewrites):
        t0 = time.perf_counter()
        rewritten, _ = module.run(copy.deepcopy(case.model), opts, ctx)
        example = rewritten.example_inputs(2, seed=0, image_size=case.size)
        req = ExportRequest(capture(rewritten, example), case.io, example, profile, work,
                            f"rewrite{k}", 0)
        onnx_target.export(req)
        path = work / f"rewrite{k}.onnx"
        rows.append({"variant": label, "runtime": "ort", "build_s": time.perf_counter() - t0,
                     **measure(case, onnx_target.load(path, threads), path, threads, runs)})
    return rows


def _fmt(v: float) -> str:
    return "inf" if v == float("inf") else f"{v:.1f}"


def _line(r: dict[str, Any], base_ms: float) -> str:
    acc = f"{100 * r['accuracy']:5.0f}%" if "accuracy" in r else "     -"
    return (f"{r['runtime']:6} {r['variant']:50} {r['mb']:7.2f} {r['ms']:8.2f} "
            f"{r['ms'] / base_ms:6.2f}x {_fmt(r['step_psnr']):>9} {_fmt(r['e2e_psnr']):>10} "
            f"{acc} {r['build_s']:7.1f}")


def _cases(which: str) -> list[tuple[Case, bool, int]]:
    cases = []
    if which in ("default", "both"):
        recipe = load_recipe(REPO_ROOT / "recipes" / "stoic-digits.toml")
        loaded = load_checkpoint(REPO_ROOT / "checkpoints" / "stoic-digits.safetensors")
        cases.append((Case("stoic-digits (trained checkpoint)", recipe, loaded,
                           loaded.config.image_size, digits=True), False, 0))
    if which in ("l512", "both"):
        big = Recipe.model_validate({
            "name": "stoic-s2-n12-l512",
            "model": {"family": "stoic", "init": "random", "variant": "stoic-s2-n12-l512"},
            "sampler": {"steps": 8, "num_images": 2},
        })
        cases.append((Case("stoic-s2-n12-l512 @32x32 (random)", big,
                           build_random("stoic", VARIANTS["stoic-s2-n12-l512"], 0), 32,
                           digits=False), True, 1))
    return cases


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--big-runs", type=int, default=10, help="latency runs for the L512 model")
    p.add_argument("--models", choices=["default", "l512", "both"], default="both")
    p.add_argument("--no-litert", action="store_true")
    p.add_argument("--rewrites", action="store_true", help="also the module rewrites (slow)")
    p.add_argument("--recover-steps", type=int, default=200)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for case, big, _ in _cases(args.models):
        runs = args.big_runs if big else args.runs
        s = case.recipe.sampler
        print(f"\n{case.name}: {sum(q.numel() for q in case.model.parameters()) / 1e6:.2f}M "
              f"params; sampler {s.kind} {s.steps} steps, {s.num_images} images, guidance "
              f"{s.guidance_scale}" + (f"; fp32 samples classified right: "
                                       f"{100 * case.fp32_accuracy:.0f}%" if not big else ""))
        print(f"{'rt':6} {'variant':50} {'MB':>7} {'ms':>8} {'vs fp32':>7} {'step PSNR':>9} "
              f"{'image PSNR':>10} {'digits':>6} {'build s':>7}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            rows = bench_ort(case, Path(tmp), args.threads, runs, big)
            if not big and not args.no_litert:
                rows += bench_litert(case, Path(tmp), args.threads, runs)
            if args.rewrites and not big:
                rows += bench_rewrites(case, Path(tmp), args.threads, runs, args.recover_steps)
        results[case.name] = {"rows": rows, "fp32_accuracy": getattr(case, "fp32_accuracy",
                                                                       None)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, default=float))
    print(f"\n(CPU EP / XNNPACK, batch 1, median after 5 warm-up, {args.threads} threads, on "
          "shared cores. PSNR in dB against fp32 PyTorch: step = worst over t in {999, 500, 1};"
          " image = full sampling run, same seed, range 2. digits = samples the digit "
          f"classifier assigns to their label.) -> {RESULTS}")


if __name__ == "__main__":
    main()
