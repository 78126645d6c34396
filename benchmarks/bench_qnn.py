"""Snapdragon NPU (Qualcomm HTP through onnxruntime-qnn): what the default NPU recipe gives, and
what SD-size models cost to compile for HTP.

Part 1, the default NPU recipe (recipes/stoic-digits-npu.toml, the trained digits STOIC, W8A16):
per Snapdragon profile the residency (nodes on HTP / total), per-step PSNR against PyTorch fp32
and against the fp32 ONNX (in the HTP simulator), image PSNR of the recipe's sampling run, and the
compile time (quantize + context binary); then the digit classifier's accuracy on samples drawn
through one context binary in the simulator vs the same samples from PyTorch fp32
(mobilegen.digits_classifier).

Part 2, compile-only (random weights, Hexagon v75, W8A16 calibrated on random example inputs: a
compile benchmark, not a quality one): STOIC S2 N12 L512, the SnapFusion UNet, the SD VAE decoder.
Each in its own child process: compile time per stage, peak RSS, context binary bytes,
residency.

    .venv/bin/python benchmarks/bench_qnn.py [--images 10] [--steps 20] [--arch-profile
        snapdragon-8gen3-htp] [--large stoic,snapfusion,decoder | --large none]

Simulated numbers come from Qualcomm's HTP simulator on this host: the simulator's time is not a
phone's latency and none is reported. Timings are wall clock on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _psnr(v: float | None) -> str:
    return "inf" if v is None else f"{v:.1f}"


def default_recipe(out: Path) -> Any:
    from mobilegen.export.run import run_export
    from mobilegen.recipe import load_recipe

    t0 = time.perf_counter()
    result = run_export(load_recipe(REPO / "recipes" / "stoic-digits-npu.toml"), out)
    print(f"stoic-digits-npu export: {time.perf_counter() - t0:.0f} s wall "
          f"(failures: {result.failures or 'none'})")
    print("profile | residency (HTP/total) | worst step PSNR vs PyTorch fp32 | step PSNR vs fp32 "
          "ONNX (simulator) | image PSNR vs PyTorch fp32 | compile s (quantize + context)")
    for row in result.report.artifacts:
        d = row.details
        if "residency" not in d:
            continue
        res = d["residency"]
        sim = d.get("simulator", {}).get("parity", [])
        vs_onnx = ", ".join(_psnr(s["vs_fp32_onnx"]["psnr_db"]) for s in sim) or "-"
        comp = d["compile_s"]
        e2e = _psnr(row.end_to_end["psnr_db"]) if row.end_to_end else "-"
        step = _psnr(row.parity["psnr_db"]) if row.parity else "-"
        print(f"{row.target} (v{d['htp_arch']}) | {res['htp_nodes']}/{res['total_nodes']} | "
              f"{step} dB | {vs_onnx} dB | {e2e} dB | {comp['quantize']:.1f} + "
              f"{comp['context_binary']:.1f}")
        cyc = d.get("simulator", {}).get("cycles", {})
        if "total" in cyc:
            print(f"    HTP simulator cycles per call (not latency): median {cyc['total']:,}, "
                  f"calls ranged {cyc['total_range'][0]:,}-{cyc['total_range'][1]:,}")
    return result


def classifier_accuracy(result: Any, profile: str, images: int, steps: int) -> None:
    import json

    import numpy as np

    from mobilegen import digits_classifier as dc
    from mobilegen.checkpoints.loader import load_checkpoint
    from mobilegen.models import get_family
    from mobilegen.sampling.generate import generate
    from mobilegen.sampling.runner import torch_runner
    from mobilegen.targets import qnn

    manifest = json.loads((result.out_dir / "manifest.json").read_text())
    component = dict(manifest["components"][0])
    labels = [i % 10 for i in range(images)]
    component["sampler"] = {**component["sampler"], "num_images": images, "steps": steps}
    component["conditioning"] = {**component["conditioning"], "labels": labels}
    loaded = load_checkpoint(REPO / "checkpoints" / "stoic-digits.safetensors", "stoic", None)
    io = get_family("stoic").io_spec(loaded.config, loaded.config.image_size)
    ref = generate(torch_runner(loaded.model, io), component)
    t0 = time.perf_counter()
    npu = generate(qnn.load(result.out_dir / profile / "denoiser_ctx.onnx", 2), component)
    sim_s = time.perf_counter() - t0
    clf = dc.fit_classifier()
    from mobilegen.measure.parity import compare

    acc_ref, acc_npu = dc.accuracy(clf, ref, labels), dc.accuracy(clf, npu, labels)
    agree = float(np.mean(dc.classify(clf, ref) == dc.classify(clf, npu)))
    print(f"classifier ({images} images, {steps} steps, guidance "
          f"{component['sampler']['guidance_scale']}, {profile} context binary in the "
          f"simulator, {sim_s:.0f} s of simulation): PyTorch fp32 accuracy {acc_ref:.2f}, NPU "
          f"W8A16 accuracy {acc_npu:.2f}; same label predicted for {agree:.2f} of samples; "
          f"image PSNR {_psnr(compare(ref, npu, 2.0).psnr_db)} dB")


# ------------------------------------------------------------------ part 2: compile-only
def _large_model(kind: str, latent: int) -> tuple[Any, int]:
    from mobilegen.checkpoints.loader import build_random
    from mobilegen.models import get_family

    if kind == "decoder":
        from mobilegen.models.vae_decoder import VAEDecoderConfig

        return build_random("vae-decoder", VAEDecoderConfig.uniform(), seed=0).model, latent
    if kind == "snapfusion":
        cfg = get_family("unet").variants()["snapfusion"]
        return build_random("unet", cfg, seed=0).model, 64
    cfg = get_family("stoic").variants()["stoic-s2-n12-l512"]
    return build_random("stoic", cfg, seed=0).model, cfg.image_size


def _compile_job(kind: str, latent: int, queue: Any) -> None:
    from mobilegen.export.run import capture
    from mobilegen.targets import qnn
    from mobilegen.targets.base import ExportRequest
    from mobilegen.targets.profile import load_target

    t0 = time.perf_counter()
    model, size = _large_model(kind, latent)
    family = {"decoder": "vae-decoder", "snapfusion": "unet"}.get(kind, "stoic")
    from mobilegen.models import get_family

    io = get_family(family).io_spec(model.config, size)
    batch = 1 if kind == "decoder" else 2  # one image; [cond; null] under guidance
    # captured at batch 2 (a dynamic axis cannot be captured at 1); compiled for `batch`
    example = model.example_inputs(2, seed=0, image_size=size)
    program = capture(model, example)
    feeds = tuple(io.feeds(model.example_inputs(2, seed=s, image_size=size)) for s in (1, 2))
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    capture_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        req = ExportRequest(program=program, io=io, example=example,
                            profile=load_target("snapdragon-8gen3-htp"), workdir=Path(tmp),
                            stem=kind, param_bytes=param_bytes, calibration=feeds,
                            sample_batch=batch)
        t1 = time.perf_counter()
        try:
            (art,) = qnn.export(req)
            error = None
        except Exception as e:  # the benchmark reports the failure line, not a traceback
            art, error = None, f"{type(e).__name__}: {str(e).splitlines()[0]}"
        export_s = time.perf_counter() - t1
        ctx_bytes = sum(p.stat().st_size for p in Path(tmp).glob(f"{kind}_ctx*"))
    queue.put({"kind": kind, "params_m": param_bytes / 4e6, "capture_s": capture_s,
               "export_s": export_s, "peak_rss_gb": resource.getrusage(
                   resource.RUSAGE_SELF).ru_maxrss / 1024**2, "ctx_bytes": ctx_bytes,
               "details": None if art is None else {k: art.details[k] for k in
                                                    ("residency", "compile_s", "not_run")},
               "error": error})


def large(kinds: list[str], latent: int) -> None:
    print("model | params | capture s | qnn export s (fp32 ONNX + W8A16 + context) | of which "
          "quantize / context s | peak RSS | context binary | residency (HTP/total)")
    ctx = mp.get_context("spawn")
    for kind in kinds:
        queue = ctx.Queue()
        proc = ctx.Process(target=_compile_job, args=(kind, latent, queue))
        proc.start()
        proc.join()
        if proc.exitcode != 0 or queue.empty():
            print(f"{kind} | child process exited {proc.exitcode} (killed for memory?)")
            continue
        r = queue.get()
        if r["error"]:
            print(f"{kind} | {r['params_m']:.1f}M | {r['capture_s']:.0f} | failed after "
                  f"{r['export_s']:.0f} s: {r['error']} | peak RSS {r['peak_rss_gb']:.1f} GB")
            continue
        d = r["details"]
        res, comp = d["residency"], d["compile_s"]
        name = f"{kind} (latent {latent})" if kind == "decoder" else kind
        print(f"{name} | {r['params_m']:.1f}M | {r['capture_s']:.0f} | {r['export_s']:.0f} | "
              f"{comp['quantize']:.0f} / {comp['context_binary']:.0f} | "
              f"{r['peak_rss_gb']:.1f} GB | {r['ctx_bytes'] / 1e6:.1f} MB | "
              f"{res['htp_nodes']}/{res['total_nodes']}"
              f"{' (CPU: ' + ', '.join(res['cpu_op_types']) + ')' if res['cpu_nodes'] else ''}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--arch-profile", default="snapdragon-8gen3-htp")
    ap.add_argument("--large", default="stoic,decoder,snapfusion")
    ap.add_argument("--skip-recipe", action="store_true")
    # 64 = SD's 512x512 decoder; its W8A16 calibration held 22 GB (ORT's MinMax calibrator keeps
    # every intermediate output) and was killed for memory on a 24 GB host: 32 = 256x256
    ap.add_argument("--decoder-latent", type=int, default=64)
    args = ap.parse_args()
    if not args.skip_recipe:
        with tempfile.TemporaryDirectory() as tmp:
            result = default_recipe(Path(tmp) / "out")
            classifier_accuracy(result, args.arch_profile, args.images, args.steps)
    if args.large != "none":
        large(args.large.split(","), args.decoder_latent)


if __name__ == "__main__":
    main()
