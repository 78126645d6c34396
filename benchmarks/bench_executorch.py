"""ExecuTorch target goals (issue 24), on the embedded default STOIC (digits) and the shipped
text-to-image pipeline's components (digits-t2i):

- XNNPACK fp32 .pte: worst max abs error over the recipe's timesteps and image PSNR of the
  recipe's sampling run against PyTorch; host latency against ONNX Runtime (CPU EP) on the same
  model, same batch, same threads, one runtime alive at a time;
- XNNPACK int8 static (trajectory calibration feeds, the shared keep-float rule), fp16 and int8
  dynamic: image PSNR and latency against fp32, at batch 1 (the .pte's batch-1 method) and at
  the validation batch, the files taking turns over interleaved rounds;
- delegation coverage (get_delegation_info): XNNPACK on the STOIC and each pipeline component;
  Core ML, Vulkan and QNN partitioners on the STOIC (QNN: the error, if it fails).

    nice -n 10 .venv/bin/python benchmarks/bench_executorch.py [--runs 30] [--rounds 5]

Timings are host CPU times on whatever machine runs this (say whether it was shared).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mobilegen.errors import MobilegenError
from mobilegen.export.run import capture, load_model
from mobilegen.measure.costs import time_fn
from mobilegen.measure.parity import compare
from mobilegen.models import get_family
from mobilegen.passes.calibration import calibration_feeds
from mobilegen.passes.precision import PrecisionSpec
from mobilegen.recipe import load_pipeline_recipe, load_recipe, resolve_recipe
from mobilegen.sampling.generate import generate
from mobilegen.sampling.runner import torch_runner
from mobilegen.targets import executorch as et
from mobilegen.targets import onnx as onnx_target
from mobilegen.targets.accel_rewrites import rewrite_forms
from mobilegen.targets.base import ExportRequest
from mobilegen.targets.profile import load_target


class Case:
    def __init__(self, recipe: Any) -> None:
        self.recipe = recipe
        loaded = load_model(recipe)
        self.model = loaded.model.eval()
        self.size = recipe.export_size(loaded.config)
        self.io = get_family(loaded.family).io_spec(loaded.config, self.size)
        self.example = self.model.example_inputs(recipe.validation.batch, seed=0,
                                                 image_size=self.size)
        self.programs: dict[tuple[str, ...], Any] = {}

    def program(self, rewrites: tuple[str, ...]) -> Any:
        if rewrites not in self.programs:
            with rewrite_forms(list(rewrites)):
                self.programs[rewrites] = capture(self.model, self.example)
        return self.programs[rewrites]

    def request(self, profile_name: str, work: Path, stem: str, calib: tuple = ()) -> Any:
        profile = load_target(profile_name)
        return ExportRequest(self.program(tuple(profile.accel_rewrites)), self.io, self.example,
                             profile, work, stem, 0, calibration=calib)


def worst_step_error(case: Case, runner: Any) -> float:
    import torch

    worst = 0.0
    for t in case.recipe.validation.timesteps:
        inputs = case.model.example_inputs(case.recipe.validation.batch, seed=1, t=t,
                                           image_size=case.size)
        with torch.inference_mode():
            ref = case.model(*inputs).numpy()
        worst = max(worst, float(np.abs(runner(case.io.feeds(inputs)) - ref).max()))
    return worst


def latency(runner: Any, feeds: dict[str, np.ndarray], runs: int, threads: int) -> float:
    return time_fn(lambda: runner(feeds), 5, runs, threads).median_ms


def interleaved(files: dict[str, tuple[str, Path]], feeds: dict[str, np.ndarray], runs: int,
                threads: int, rounds: int) -> dict[str, list[float]]:
    """Median ms per round for each file, the files taking turns in every round (one runtime
    alive at a time), so a load change on the host hits them all alike."""
    out: dict[str, list[float]] = {k: [] for k in files}
    for _ in range(rounds):
        for name, (kind, path) in files.items():
            runner = onnx_target.load(path, threads) if kind == "onnx" else et.load(path, threads)
            out[name].append(latency(runner, feeds, runs, threads))
            del runner
    return out


def stoic_rows(runs: int, threads: int, rounds: int, work: Path) -> None:
    case = Case(load_recipe(resolve_recipe("stoic-digits")))
    component = _component(case)
    t0 = time.perf_counter()
    (fp32,) = et.export(case.request("android-cpu-executorch", work, "denoiser"))
    print(f"XNNPACK fp32 .pte lowered in {time.perf_counter() - t0:.1f} s", flush=True)
    torch_images = generate(torch_runner(case.model, case.io), component)
    pte = et.load(work / fp32.file, threads)
    err = worst_step_error(case, pte)
    psnr = compare(torch_images, generate(pte, component), 2.0).psnr_db
    calib = tuple(calibration_feeds(torch_runner(case.model, case.io), component, 20))
    (int8,) = et.export_precision(case.request("android-cpu-executorch", work, "denoiser",
                                               calib), PrecisionSpec("int8", "static"))
    (fp16,) = et.export_precision(case.request("android-cpu-executorch", work, "denoiser"),
                                  PrecisionSpec("fp16"))
    (dyn,) = et.export_precision(case.request("android-cpu-executorch", work, "denoiser"),
                                 PrecisionSpec("int8", "dynamic"))
    onnx_target.export(ExportRequest(case.program(()), case.io, case.example,
                                     load_target("ort-mobile-cpu"), work, "ref", 0))
    print(f"\n{'default STOIC':34} {'value':>12}  goal")
    print(f"{'XNNPACK fp32 worst max abs error':34} {err:12.2e}  <= 1e-5")
    print(f"{'XNNPACK fp32 image PSNR (dB)':34} {psnr:12.1f}  >= 100")
    for name, art, goal in (("int8 static", int8, ">= 35"), ("fp16", fp16, "reported"),
                            ("int8 dynamic", dyn, "reported")):
        images = generate(et.load(work / art.file, threads), component)
        print(f"{'XNNPACK ' + name + ' image PSNR':34} "
              f"{compare(torch_images, images, 2.0).psnr_db:12.1f}  {goal}", flush=True)
    files = {"ort": ("onnx", work / "ref.onnx"), "pte fp32": ("pte", work / fp32.file),
             "pte int8 static": ("pte", work / int8.file), "pte fp16": ("pte", work / fp16.file),
             "pte int8 dynamic": ("pte", work / dyn.file)}
    for batch in (1, case.recipe.validation.batch):
        feeds = case.io.feeds(case.model.example_inputs(batch, seed=2, image_size=case.size))
        ms = interleaved(files, feeds, runs, threads, rounds)
        ratio = {k: statistics.median(a / b for a, b in zip(v, ms["pte fp32"], strict=True))
                 for k, v in ms.items()}
        med = {k: statistics.median(v) for k, v in ms.items()}
        print(f"latency batch {batch} (ms, median of {rounds} interleaved rounds of {runs} runs; "
              "ratio: median per-round ratio to pte fp32)")
        for k in files:
            print(f"  {k:18} {med[k]:8.2f} ms  {ratio[k]:5.2f}x pte fp32", flush=True)
        print(f"  goals: pte fp32 <= 1.2x ORT: {1 / ratio['ort']:.2f}x; "
              f"int8 static faster than fp32: {ratio['pte int8 static']:.2f}x", flush=True)
    _coverage_line("STOIC XNNPACK fp32", fp32)
    _coverage_line("STOIC XNNPACK int8 static", int8)
    _coverage_line("STOIC XNNPACK fp16", fp16)
    _coverage_line("STOIC XNNPACK int8 dynamic", dyn)
    for profile in ("ios-coreml-executorch", "android-vulkan-executorch",
                    "snapdragon-8gen3-executorch"):
        try:
            (art,) = et.export(case.request(profile, work, profile))
            _coverage_line(f"STOIC {profile}", art)
        except MobilegenError as e:
            print(f"{'STOIC ' + profile:44} failed: {e}", flush=True)


def _component(case: Case) -> dict[str, Any]:
    from mobilegen.export.manifest import component_entry

    class _Loaded:  # component_entry reads these from the loaded checkpoint
        family = case.recipe.model.family
        config = case.model.config

    return component_entry(case.recipe, _Loaded(), case.io, case.size)


def _coverage_line(name: str, art: Any) -> None:
    (cov,) = art.details["coverage"]
    print(f"{name:44} {cov['accelerator']:22} {cov['verdict']:8} "
          f"{cov['supported_nodes']}/{cov['total_nodes']} nodes; {cov['note']}", flush=True)


def pipeline_rows(threads: int, work: Path) -> None:
    pipe = load_pipeline_recipe(resolve_recipe("digits-t2i"))
    for slot in pipe.slots():
        case = Case(getattr(pipe, slot))
        (art,) = et.export(case.request("android-cpu-executorch", work, slot))
        err = worst_step_error(case, et.load(work / art.file, threads)) if slot == "unet" else (
            _one_error(case, et.load(work / art.file, threads)))
        _coverage_line(f"digits-t2i {slot} XNNPACK fp32 (max abs {err:.1e})", art)


def _one_error(case: Case, runner: Any) -> float:
    import torch

    with torch.inference_mode():
        ref = case.model(*case.example).numpy()
    return float(np.abs(runner(case.io.feeds(case.example)) - ref).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-executorch-") as tmp:
        stoic_rows(args.runs, args.threads, args.rounds, Path(tmp))
        pipeline_rows(args.threads, Path(tmp))


if __name__ == "__main__":
    main()
