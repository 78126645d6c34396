"""SD-1.5 UNet vs SnapFusion UNet, and the full vs 50%-pruned VAE decoder, on this host.

Prints, in one run: per model (random weights, batch 1) the median latency in PyTorch eager and in
ONNX Runtime (CPU EP, same threads), the ONNX export time and the exporting process's peak RSS;
then the SD-1.5 / SnapFusion UNet ratio (the paper: 7.4x on iPhone 14 Pro, 1,700 -> 230 ms) and
the full / pruned decoder ratio (the paper: 3.2x, 369 -> 116 ms). Each model runs in its own
child process so its peak memory is its own and the 3.4 GB UNets never share the machine.

    .venv/bin/python benchmarks/bench_unet_vae.py [--threads 2] [--runs 3] [--decoder-latent 64]

Heavy: ~3.4 GB of weights per SD-size UNet and several minutes on 2 cores; run one at a time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path
from typing import Any


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def _job(kind: str, name: str, latent: int, threads: int, runs: int, queue: Any) -> None:
    import torch

    from mobilegen.checkpoints.loader import build_random
    from mobilegen.export.run import capture
    from mobilegen.measure.costs import count_macs, count_params, time_fn, time_torch
    from mobilegen.models import get_family
    from mobilegen.recipe import load_recipe
    from mobilegen.targets.profile import load_target

    REPO_ROOT = Path(__file__).resolve().parents[1]
    from mobilegen.targets import onnx as onnx_target
    from mobilegen.targets.base import ExportRequest

    torch.set_num_threads(threads)
    if kind == "decoder":
        from mobilegen.models.vae_decoder import VAEDecoderConfig
        from mobilegen.passes.prune import pruned_config

        cfg = VAEDecoderConfig.uniform()
        cfg = pruned_config(cfg, 0.5) if name.endswith("pruned-50%") else cfg
        family = "vae-decoder"
    else:
        recipe = load_recipe(REPO_ROOT / "recipes" / f"{name}.toml")
        family = recipe.model.family
        cfg = get_family(family).config_from_dict(recipe.model.config)
    model = build_random(family, cfg, seed=0).model
    inputs = model.example_inputs(1, seed=0, image_size=latent)
    macs, _ = count_macs(model, inputs)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rss_model = _peak_rss_gb()
    io = get_family(family).io_spec(cfg, latent)
    profile = load_target("ort-mobile-cpu").model_copy(update={"ort_format": False})
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        example = model.example_inputs(2, seed=0, image_size=latent)  # batch 2 keeps it dynamic
        program = capture(model, example)
        arts = onnx_target.export(ExportRequest(
            program, io, example, profile, Path(tmp), "m", param_bytes))
        export_s = time.perf_counter() - t0
        rss_export = _peak_rss_gb()
        del program
        t0 = time.perf_counter()
        run = onnx_target.load(Path(tmp) / arts[0].file, threads)
        session_s = time.perf_counter() - t0
        feeds = {s.name: t.numpy() for s, t in zip(io.inputs, inputs, strict=True)}
        ort = time_fn(lambda: run(feeds), warmup=1, runs=runs, threads=threads)
        data_gb = sum(f.stat().st_size for f in Path(tmp).iterdir()) / 1e9
    eager = time_torch(model, inputs, warmup=1, runs=runs, threads=threads)
    queue.put({"model": name, "params": count_params(model), "gmac": macs / 1e9,
               "latent": latent, "export_s": export_s, "session_s": session_s,
               "onnx_gb": data_gb, "external_data": arts[0].details["external_data"],
               "peak_rss_model_gb": rss_model, "peak_rss_export_gb": rss_export,
               "eager_ms": eager.median_ms, "ort_ms": ort.median_ms})


def run_child(*args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_job, args=(*args, queue))
    proc.start()
    proc.join()  # the result is a small dict: the queue cannot fill up and block the child
    if proc.exitcode != 0:
        raise SystemExit(f"benchmark job {args[1]} failed (exit code {proc.exitcode})")
    return queue.get(timeout=10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--unet-latent", type=int, default=64)
    p.add_argument("--decoder-latent", type=int, default=64)
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args()

    jobs = [("unet", "unet-sd15", args.unet_latent), ("unet", "unet-snapfusion", args.unet_latent),
            ("decoder", "vae-decoder-sd", args.decoder_latent),
            ("decoder", "vae-decoder-sd-pruned-50%", args.decoder_latent)]
    rows = []
    for kind, name, latent in jobs:
        rows.append(run_child(kind, name, latent, args.threads, args.runs))
        r = rows[-1]
        print(f"done {name}: eager {r['eager_ms']:.0f} ms, ORT {r['ort_ms']:.0f} ms", flush=True)

    head = (f"{'model':26} {'params':>12} {'GMAC':>8} {'eager ms':>9} {'ORT ms':>9} "
            f"{'export s':>8} {'ONNX GB':>7} {'peak RSS GB':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:26} {r['params']:12,} {r['gmac']:8.1f} {r['eager_ms']:9.0f} "
              f"{r['ort_ms']:9.0f} {r['export_s']:8.1f} {r['onnx_gb']:7.2f} "
              f"{r['peak_rss_export_gb']:11.2f}")
    sd, snap, full, pruned = rows
    for label, a, b, paper in (("SD-1.5 UNet / SnapFusion UNet", sd, snap, "7.4x"),
                               ("full / 50%-pruned decoder", full, pruned, "3.2x")):
        print(f"{label}: ORT {a['ort_ms'] / b['ort_ms']:.2f}x, PyTorch "
              f"{a['eager_ms'] / b['eager_ms']:.2f}x, MACs {a['gmac'] / b['gmac']:.2f}x "
              f"(paper, iPhone 14 Pro: {paper})")
    print(f"SD-1.5 UNet -> ONNX (external data {sd['external_data']}): {sd['export_s']:.1f} s "
          f"(torch.export + torch.onnx dynamo), peak RSS {sd['peak_rss_export_gb']:.2f} GB "
          f"(after building the model: {sd['peak_rss_model_gb']:.2f} GB), "
          f"{sd['onnx_gb']:.2f} GB on disk; ORT session creation {sd['session_s']:.1f} s")
    print(f"(batch 1, random weights, median of {args.runs} runs after 1 warm-up, "
          f"{args.threads} threads; UNet latent {args.unet_latent}x{args.unet_latent}, decoder "
          f"latent {args.decoder_latent}x{args.decoder_latent}; ONNX Runtime CPU EP on the .onnx)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
