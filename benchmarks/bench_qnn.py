"""Snapdragon NPU (Qualcomm HTP through onnxruntime-qnn): what the default NPU recipe gives, and
what SD-size models cost to compile for HTP.

Part 1, the default NPU recipe (recipes/stoic-digits-npu.toml, the trained digits STOIC, W8A16):
per Snapdragon profile the residency (nodes on HTP / total), per-step PSNR against PyTorch fp32
and against the fp32 ONNX (in the HTP simulator), image PSNR of the recipe's sampling run, and the
compile time (quantize + context binary); then the digit classifier's accuracy on samples drawn
through one context binary in the simulator vs the same samples from PyTorch fp32
(mobilegen.digits_classifier).

Part 2, compile-only (random weights, Hexagon v75, W8A16 calibrated on one random example input
by default: a compile benchmark, not a quality one; above 64 MB of weights the QNN target is
compile-only anyway): STOIC S2 N12 L512, the SnapFusion UNet, the SD VAE decoder at 512x512
output, the SD-1.5 text encoder. Each in its own child process, stopped past RSS_LIMIT_GB (the
host is shared): compile time per stage, peak RSS, context binary bytes, residency. The rows go
to benchmarks/results/qnn_compile.json (one row per model, each with its own date and command).

    .venv/bin/python benchmarks/bench_qnn.py [--images 10] [--steps 20] [--arch-profile
        snapdragon-8gen3-htp] [--large stoic,snapfusion,decoder,text | --large none]
        [--skip-recipe] [--decoder-latent 64] [--calibration-feeds 1]

Simulated numbers come from Qualcomm's HTP simulator on this host: the simulator's time is not a
phone's latency and none is reported. Timings are wall clock on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue as queue_mod
import resource
import sys
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
# kind -> (family, variant, latent/image size (None: the config's), compiled batch, what it is)
LARGE = {
    "stoic": ("stoic", "stoic-s2-n12-l512", None, 2, "STOIC S2 N12 L512, 32x32"),
    "snapfusion": ("unet", "snapfusion", 64, 2, "SnapFusion UNet (recipes/unet-snapfusion.toml), "
                   "64x64 latent"),
    "decoder": ("vae-decoder", "sd-vae", None, 1, "SD VAE decoder (recipes/vae-decoder-sd.toml)"),
    "text": ("clip-text", "clip-vit-l14", None, 1, "SD-1.5 text encoder (CLIP ViT-L/14 text), "
             "77 tokens"),
}
RSS_LIMIT_GB = 11.0  # the host is shared (24 GB): a child above this is stopped, and says so


def _compile_job(kind: str, size: int | None, feeds_n: int, queue: Any) -> None:
    from mobilegen.checkpoints.loader import build_random
    from mobilegen.export.run import capture
    from mobilegen.models import get_family
    from mobilegen.targets import qnn
    from mobilegen.targets.base import ExportRequest
    from mobilegen.targets.profile import load_target

    family, variant, default_size, batch, _ = LARGE[kind]
    size = size or default_size
    t0 = time.perf_counter()
    fam = get_family(family)
    model = build_random(family, fam.variants()[variant], seed=0).model
    size = size or getattr(model.config, "image_size", None)
    io = fam.io_spec(model.config, size)
    # captured with a dynamic batch at 2 (a dynamic axis cannot be captured at 1); the QNN
    # target fixes it to `batch`. Calibration: `feeds_n` random example batches (compile-only
    # figures with random weights: the ranges only have to exist)
    example = model.example_inputs(2, seed=0, image_size=size)
    program = capture(model, example)
    feeds = tuple(io.feeds(model.example_inputs(batch, seed=s, image_size=size))
                  for s in range(1, feeds_n + 1))
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
        ctx_bytes = {p.name: p.stat().st_size for p in Path(tmp).glob(f"{kind}_ctx*")}
    queue.put({"kind": kind, "size": size, "batch": batch, "calibration_feeds": feeds_n,
               "params": sum(p.numel() for p in model.parameters()), "capture_s": capture_s,
               "export_s": export_s, "peak_rss_gb": resource.getrusage(
                   resource.RUSAGE_SELF).ru_maxrss / 1024**2, "ctx_bytes": ctx_bytes,
               "details": None if art is None else {k: art.details.get(k) for k in
                                                    ("residency", "compile_s", "not_run")},
               "error": error})


def _rss_gb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024**2
    return 0.0


def _run_child(kind: str, size: int | None, feeds_n: int,
               limit_gb: float = RSS_LIMIT_GB) -> dict[str, Any]:
    """One compile in a fresh process (peak RSS is that process's own), stopped past
    `limit_gb`."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_compile_job, args=(kind, size, feeds_n, queue))
    proc.start()
    seen, stopped = 0.0, False
    while proc.is_alive() and queue.empty():
        try:
            seen = max(seen, _rss_gb(proc.pid))
        except (FileNotFoundError, ProcessLookupError):  # it just ended
            break
        if seen > limit_gb:
            proc.kill()
            stopped = True
            break
        time.sleep(0.5)
    result = None
    if not stopped:
        try:  # read before join: a child with a queued result waits for it to be read
            result = queue.get(timeout=30)
        except queue_mod.Empty:
            result = None
    proc.join()
    if result is None:
        why = (f"stopped at {seen:.1f} GB RSS (limit {limit_gb} GB on this host)"
               if stopped else f"child process exited {proc.exitcode}")
        return {"kind": kind, "error": why}
    return result


def _row(r: dict[str, Any]) -> str:
    name = f"{r['kind']} ({LARGE[r['kind']][4]})"
    if "params" not in r:
        return f"{name} | {r['error']}"
    head = (f"{name}, batch {r['batch']} | {r['params'] / 1e6:.1f}M | {r['capture_s']:.0f}")
    if r["error"]:
        return (f"{head} | failed after {r['export_s']:.0f} s: {r['error']} | "
                f"{r['peak_rss_gb']:.1f} GB")
    res, comp = r["details"]["residency"], r["details"]["compile_s"]
    cpu = f" (CPU: {', '.join(res['cpu_op_types'])})" if res["cpu_nodes"] else ""
    return (f"{head} | {r['export_s']:.0f} | {comp['quantize']:.0f} / "
            f"{comp['context_binary']:.0f} | {r['peak_rss_gb']:.1f} GB | "
            f"{sum(r['ctx_bytes'].values()):,} B | "
            f"{res['htp_nodes']:,}/{res['total_nodes']:,}{cpu}")


def large(kinds: list[str], decoder_latent: int | None, feeds_n: int,
          limit_gb: float = RSS_LIMIT_GB) -> list[dict[str, Any]]:
    print(f"compile-only, random weights, Hexagon v75 (snapdragon-8gen3-htp), W8A16 calibrated "
          f"on {feeds_n} random example input(s); wall times on a shared 2-core host")
    print("model | params | capture s | qnn export s (fp32 ONNX + W8A16 + context) | of which "
          "quantize / context s | peak RSS | context binary (ctx.onnx + qnn.bin) | residency "
          "(HTP/total)")
    rows = []
    for kind in kinds:
        if kind not in LARGE:
            raise SystemExit(f"--large: unknown model '{kind}' (known: {', '.join(LARGE)})")
        r = _run_child(kind, decoder_latent if kind == "decoder" else None, feeds_n, limit_gb)
        print(_row(r), flush=True)
        rows.append(r)
    return rows


def record(rows: list[dict[str, Any]], argv: list[str]) -> Path:
    """benchmarks/results/qnn_compile.json: one row per model, each from the latest run that
    compiled it (with its own date and command: the SD-size models run one at a time)."""
    import datetime as dt
    import json

    out = REPO / "benchmarks" / "results" / "qnn_compile.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out.read_text())["rows"] if out.is_file() else []
    stamp = {"command": " ".join([".venv/bin/python benchmarks/bench_qnn.py", *argv]),
             "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}
    new = {r["kind"]: {**r, **stamp} for r in rows}
    merged = [new.pop(r["kind"], r) for r in old] + list(new.values())
    out.write_text(json.dumps({
        "note": "random weights; compile-only (not simulated); wall times on a shared 2-core "
                "host", "rows": merged}, indent=2) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--arch-profile", default="snapdragon-8gen3-htp")
    ap.add_argument("--large", default="stoic,snapfusion,decoder,text")
    ap.add_argument("--skip-recipe", action="store_true")
    ap.add_argument("--decoder-latent", type=int, default=64)  # 64: SD's 512x512 output
    ap.add_argument("--calibration-feeds", type=int, default=1)
    ap.add_argument("--rss-limit-gb", type=float, default=RSS_LIMIT_GB,
                    help="stop a compile child past this RSS (raise it on a host of your own)")
    args = ap.parse_args()
    if not args.skip_recipe:
        with tempfile.TemporaryDirectory() as tmp:
            result = default_recipe(Path(tmp) / "out")
            classifier_accuracy(result, args.arch_profile, args.images, args.steps)
    if args.large != "none":
        rows = large(args.large.split(","), args.decoder_latent, args.calibration_feeds,
                     args.rss_limit_gb)
        print(f"wrote {record(rows, sys.argv[1:])}")


if __name__ == "__main__":
    main()
