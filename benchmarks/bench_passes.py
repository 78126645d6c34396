"""What each mobile pass costs and buys, measured on this host with ONNX Runtime.

For the default recipe's STOIC (recipes/stoic-digits.toml; random weights of the same config if its
checkpoint is missing) and for STOIC S=2 N=12 L=512 at 32x32 (random weights), prints one row per
variant: fp32, fp16, int8 weight-only, int8 dynamic, int8 static (softmax attention, GELU); and
fp32 with ReLU attention (with and without a short recovery on the default model) and with
GELU->SiLU. Columns: .onnx size, ONNX Runtime median latency (CPU EP, batch 1), worst step PSNR
over t in {999, 500, 1} and end-to-end image PSNR (a full sampling run, same seed), both against
the base fp32 PyTorch model (softmax, GELU).

    .venv/bin/python benchmarks/bench_passes.py [--threads 2] [--runs 30] [--recover-steps 200]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
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
from mobilegen.targets.base import ExportRequest
from mobilegen.targets.profile import load_target

REPO_ROOT = Path(__file__).resolve().parents[1]

TIMESTEPS = (999.0, 500.0, 1.0)


class Case:
    """One model: its base fp32 PyTorch reference (step outputs and sampled images)."""

    def __init__(self, name: str, recipe: Recipe, loaded: Any, size: int) -> None:
        self.name, self.recipe, self.loaded, self.size = name, recipe, loaded, size
        self.model = loaded.model.eval()
        self.io = io_spec(loaded.config, size)
        self.component = component_entry(recipe, loaded, self.io, size)
        self.inputs = {t: self.model.example_inputs(2, seed=1, t=t, image_size=size)
                       for t in TIMESTEPS}
        with torch.inference_mode():
            self.ref = {t: self.model(*x).numpy() for t, x in self.inputs.items()}
        self.images = generate(torch_runner(self.model, self.io), self.component)

    def feeds(self, inputs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
        return {s.name: t.numpy() for s, t in zip(self.io.inputs, inputs, strict=True)}


def measure(case: Case, path: Path, threads: int, runs: int) -> dict[str, Any]:
    run = onnx_target.load(path, threads)
    step = Parity.worst([compare(case.ref[t], run(case.feeds(case.inputs[t])))
                         for t in TIMESTEPS])
    lat_feeds = case.feeds(case.model.example_inputs(1, image_size=case.size))
    lat = time_fn(lambda: run(lat_feeds), warmup=5, runs=runs, threads=threads)
    e2e = compare(case.images, generate(run, case.component), 2.0)
    return {"mb": path.stat().st_size / 1e6, "ms": lat.median_ms, "step_psnr": step.psnr_db,
            "e2e_psnr": e2e.psnr_db}


def export_fp32(model: Any, case: Case, work: Path, stem: str) -> tuple[Any, Any, Path]:
    example = model.example_inputs(2, seed=0, image_size=case.size)
    program = capture(model, example)
    profile = load_target("ort-mobile-cpu").model_copy(update={"ort_format": False})
    onnx_target.export(ExportRequest(program, case.io, example, profile, work, stem, 0))
    return program, example, work / f"{stem}.onnx"


def bench_case(case: Case, threads: int, runs: int, recover_steps: int) -> list[dict[str, Any]]:
    rows = []
    profile = load_target("ort-mobile-cpu").model_copy(update={"ort_format": False})
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        program, example, fp32 = export_fp32(case.model, case, work, "base")
        rows.append({"variant": "fp32 (softmax, GELU)", "build_s": time.perf_counter() - t0,
                     **measure(case, fp32, threads, runs)})
        calib = calibration_feeds(torch_runner(case.model, case.io), case.component, 8)
        for label, spec in [("fp16", PrecisionSpec("fp16")),
                            ("int8 weight-only", PrecisionSpec("int8", "weight_only")),
                            ("int8 dynamic", PrecisionSpec("int8", "dynamic")),
                            ("int8 static (W8A8)", PrecisionSpec("int8", "static"))]:
            t0 = time.perf_counter()
            arts = onnx_target.export_precision(ExportRequest(
                program, case.io, example, profile, work, "base", 0, calibration=tuple(calib)),
                spec)
            rows.append({"variant": label, "build_s": time.perf_counter() - t0,
                         **measure(case, work / arts[0].file, threads, runs)})

        ctx = RewriteContext(list(TIMESTEPS), lambda t: case.inputs[t])
        rewrites = [("fp32 ReLU attention", relu_attention, relu_attention.Options()),
                    ("fp32 GELU->SiLU", gelu_to_silu, gelu_to_silu.Options())]
        if recover_steps:
            seed = case.component["sampler"]["seed"] + 1
            x0 = generate(torch_runner(case.model, case.io), case.component, seed=seed)
            ctx.recovery_batches = lambda teacher, batch: noised_batches(x0, case.component,
                                                                         batch)
            rewrites += [
                (f"fp32 ReLU attention + {recover_steps} recovery steps", relu_attention,
                 relu_attention.Options(recover_steps=recover_steps, recover_lr=1e-4)),
                (f"fp32 GELU->SiLU + {recover_steps} recovery steps", gelu_to_silu,
                 gelu_to_silu.Options(recover_steps=recover_steps, recover_lr=1e-4)),
            ]
        for k, (label, module, opts) in enumerate(rewrites):
            t0 = time.perf_counter()
            rewritten, _ = module.run(copy.deepcopy(case.model), opts, ctx)
            _, _, path = export_fp32(rewritten, case, work, f"rewrite{k}")
            rows.append({"variant": label, "build_s": time.perf_counter() - t0,
                         **measure(case, path, threads, runs)})
    return rows


def _fmt(v: float) -> str:
    return "inf" if v == float("inf") else f"{v:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--recover-steps", type=int, default=200,
                   help="recovery (distillation) steps for the default model's rewrites; 0: none")
    p.add_argument("--models", choices=["default", "l512", "both"], default="both")
    p.add_argument("--big-runs", type=int, default=10, help="latency runs for the L512 model")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    recipe = load_recipe(REPO_ROOT / "recipes" / "stoic-digits.toml")
    ckpt = recipe.checkpoint_path()
    if ckpt is not None and ckpt.exists():
        loaded, label = load_checkpoint(ckpt), "stoic-digits (trained checkpoint)"
    else:
        from mobilegen.models.stoic import StoicConfig

        cfg = StoicConfig(in_channels=1, image_size=16, depth=5, width=96, heads=4,
                          time_injection="adaln", time_freq_dim=128, conditioning="class",
                          num_classes=10)  # the config the digits checkpoint is trained with
        loaded, label = build_random("stoic", cfg, seed=0), "stoic-digits config (random)"
    cases = []
    if args.models in ("default", "both"):
        cases.append((Case(label, recipe, loaded, recipe.image_size or loaded.config.image_size),
                      args.recover_steps, args.runs))
    if args.models in ("l512", "both"):
        big = Recipe.model_validate({
            "name": "stoic-s2-n12-l512",
            "model": {"family": "stoic", "init": "random", "variant": "stoic-s2-n12-l512"},
            "sampler": {"steps": 8, "num_images": 2},
        })
        cfg = VARIANTS["stoic-s2-n12-l512"]
        cases.append((Case("stoic-s2-n12-l512 @32x32 (random)", big,
                           build_random("stoic", cfg, 0), 32), 0, args.big_runs))

    for case, recover, runs in cases:
        s = case.recipe.sampler
        print(f"\n{case.name}: {sum(p.numel() for p in case.model.parameters()) / 1e6:.2f}M "
              f"params; sampler {s.kind} {s.steps} steps, {s.num_images} images, guidance "
              f"{s.guidance_scale}", flush=True)
        rows = bench_case(case, args.threads, runs, recover)
        head = (f"{'variant':44} {'size MB':>8} {'ORT ms':>8} {'vs fp32':>8} "
                f"{'step PSNR':>9} {'image PSNR':>10} {'build s':>8}")
        print(head)
        print("-" * len(head))
        base = rows[0]["ms"]
        for r in rows:
            print(f"{r['variant']:44} {r['mb']:8.2f} {r['ms']:8.2f} {r['ms'] / base:7.2f}x "
                  f"{_fmt(r['step_psnr']):>9} {_fmt(r['e2e_psnr']):>10} {r['build_s']:8.1f}",
                  flush=True)
    print(f"\n(ONNX Runtime CPU EP on the .onnx, batch 1, median of {args.runs} runs "
          f"({args.big_runs} for L512) after 5 "
          f"warm-up, {args.threads} threads. PSNR in dB against the base fp32 PyTorch model "
          "(softmax, GELU): step = worst over t in {999, 500, 1}; image = full sampling run, "
          "same seed, range 2.)")


if __name__ == "__main__":
    main()
