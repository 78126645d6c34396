"""Static int8 on ONNX Runtime, STOIC S=2 N=12 L=512 at 32x32 (random weights, as bench_passes.py
builds it): what each layer type costs, what the static artifact reaches, which kernels ORT runs,
and the latency of fp32 / static W8A8 / weight-only (MatMulNBits), in blocks of calls, one
session alive at a time.

    .venv/bin/python benchmarks/bench_static_int8.py [--rounds 20] [--threads 2] [--no-sensitivity]

Step PSNR: worst over t in {999, 500, 1} (random x, batch 2) against fp32 PyTorch, as in
bench_passes.py. The per-type rows quantize one layer type (all 12 blocks) alone, or the second
stem conv alone, with the artifact's options (passes/sensitivity.py Study).
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_passes import TIMESTEPS, _cases

from mobilegen.export.run import capture
from mobilegen.measure.parity import compare
from mobilegen.passes.calibration import calibration_feeds
from mobilegen.passes.precision import PrecisionSpec
from mobilegen.passes.sensitivity import Study
from mobilegen.sampling.runner import torch_runner
from mobilegen.targets import onnx as onnx_target
from mobilegen.targets.base import ExportRequest
from mobilegen.targets.profile import load_target


def per_type(case, fp32: Path, calib: list, work: Path) -> None:
    val = [case.feeds(case.inputs[t]) for t in TIMESTEPS]
    study = Study(fp32, PrecisionSpec("int8", "static"), calib, val, work)
    groups: dict[str, list] = {"stem.2 (kept float by the stem rule)": []}
    for layer in study.layers:
        groups.setdefault(re.sub(r"^blocks\.\d+\.", "blocks.*.", layer.path), []).append(layer)
    import onnx

    from mobilegen.targets.onnx_precision import Layer, layer_path

    model = onnx.load(str(fp32), load_external_data=False)
    groups["stem.2 (kept float by the stem rule)"] = [
        Layer(n.name, n.op_type, "stem.2") for n in model.graph.node if layer_path(n) == "stem.2"]
    print(f"\n{'quantized alone (W8A8 MinMax)':40} {'layers':>6}  step PSNR at t=999/500/1")
    for name, members in groups.items():
        p, _ = study.quantized(members)
        print(f"{name:40} {len(members):6}  " + " / ".join(f"{x:.1f}" for x in p), flush=True)


def time_blocks(paths: dict[str, Path], feeds: dict[str, np.ndarray], threads: int,
                rounds: int, per_block: int = 5) -> dict[str, list[float]]:
    """Latency samples per variant, one session alive at a time: blocks of `per_block` calls
    (after 2 warm-up calls) cycling over the variants, so drift is shared. Two live sessions
    would not do: an idle ORT session's worker threads spin after each call and take the cores
    from the next session's call (interleaving calls of three live sessions measured fp32 at
    200 ms and static at 0.65x; one session at a time, 150 ms and 0.39x)."""
    ms: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(max(1, rounds // per_block)):
        for k, p in paths.items():
            run = onnx_target.load(p, threads)
            for _ in range(2):
                run(feeds)
            for _ in range(per_block):
                t0 = time.perf_counter()
                run(feeds)
                ms[k].append(1000 * (time.perf_counter() - t0))
            del run
    return ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-sensitivity", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    case = _cases("l512")[0][0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        profile = load_target("ort-mobile-cpu").model_copy(update={"ort_format": False})
        example = case.model.example_inputs(2, seed=0, image_size=case.size)
        calib = calibration_feeds(torch_runner(case.model, case.io), case.component, 16)
        req = ExportRequest(capture(case.model, example), case.io, example, profile, work,
                            "base", 0, tuple(calib))
        onnx_target.export(req)
        paths = {"fp32": work / "base.onnx"}
        for name, spec in (("static W8A8", PrecisionSpec("int8", "static")),
                           ("weight-only", PrecisionSpec("int8", "weight_only"))):
            art = onnx_target.export_precision(req, spec)[0]
            paths[name] = work / art.file
            if "ort_cpu_kernels" in art.details:
                k = art.details["ort_cpu_kernels"]
                print(f"{name}: ORT CPU kernels {k['int8']}, float fallbacks "
                      f"{len(k['float_fallback'])}; kept float "
                      f"{[x['layer'] for x in art.details['kept_float'] if 'stem' in x['reason']]}")
        for k, p in paths.items():
            run = onnx_target.load(p, args.threads)
            steps = [compare(case.ref[t], run(case.feeds(case.inputs[t]))).psnr_db
                     for t in TIMESTEPS]
            print(f"{k:12} step PSNR t=999/500/1: " + " / ".join(f"{x:.1f}" for x in steps))
            del run
        feeds = case.feeds(case.model.example_inputs(1, image_size=case.size))
        ms = time_blocks(paths, feeds, args.threads, args.rounds)
        base = float(np.median(ms["fp32"]))
        for k, v in ms.items():
            print(f"{k:12} median {np.median(v):8.1f} ms  {np.median(v) / base:.2f}x fp32 "
                  f"(min {np.min(v) / np.min(ms['fp32']):.2f}x)")
        if not args.no_sensitivity:
            per_type(case, paths["fp32"], calib, work)
    print(f"\n(ONNX Runtime CPU EP as the target loads it, {args.threads} threads, batch 1, "
          f"{args.rounds} calls each in blocks of 5, one session alive at a time)")


if __name__ == "__main__":
    main()
