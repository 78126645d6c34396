"""PyTorch eager vs ONNX Runtime latency for STOIC, against this machine's matmul ceiling.

Prints, in one run on this host: for the default recipe's model and for STOIC S=2 N=12 L=512 at
32x32 (random weights), the median latency in PyTorch eager and in ONNX Runtime (CPU EP, same
threads), their ratio, and the achieved GMAC/s next to the fp32 matrix-multiply ceiling measured
here (a 2048^3 torch.mm, the best a dense kernel can do on these cores).

    .venv/bin/python benchmarks/bench_stoic_latency.py [--threads 2] [--runs 30]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mobilegen.checkpoints.loader import build_random, load_checkpoint
from mobilegen.export.run import capture
from mobilegen.measure.costs import count_macs, time_fn, time_torch
from mobilegen.models.stoic import VARIANTS, io_spec
from mobilegen.recipe import load_recipe
from mobilegen.targets import onnx as onnx_target
from mobilegen.targets.base import ExportRequest
from mobilegen.targets.profile import load_target

REPO_ROOT = Path(__file__).resolve().parents[1]


def matmul_ceiling_gmacs(threads: int, n: int = 2048, runs: int = 10) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    stats = time_fn(lambda: torch.mm(a, b), warmup=3, runs=runs, threads=threads)
    return n**3 / (stats.min_ms / 1000) / 1e9


def bench(name: str, model, cfg, size: int, threads: int, runs: int, ceiling: float) -> dict:
    model.eval()
    inputs = model.example_inputs(1, seed=0, image_size=size)
    macs, _ = count_macs(model, inputs)
    io = io_spec(cfg, size)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        program = capture(model, model.example_inputs(2, seed=0, image_size=size))
        arts = onnx_target.export(ExportRequest(
            program, io, model.example_inputs(2, seed=0, image_size=size),
            load_target("ort-mobile-cpu"), Path(tmp), "m", 0))
        export_s = time.perf_counter() - t0
        run = onnx_target.load(Path(tmp) / arts[0].file, threads)
        feeds = {s.name: t.numpy() for s, t in zip(io.inputs, inputs, strict=True)}
        ort = time_fn(lambda: run(feeds), warmup=5, runs=runs, threads=threads)
    eager = time_torch(model, inputs, warmup=5, runs=runs, threads=threads)
    gmac = macs / 1e9
    return {
        "model": name, "gmac": gmac, "export_s": export_s,
        "eager_ms": eager.median_ms, "ort_ms": ort.median_ms,
        "ratio": eager.median_ms / ort.median_ms,
        "eager_gmacs": gmac / (eager.median_ms / 1000), "ort_gmacs": gmac / (ort.median_ms / 1000),
        "ceiling": ceiling,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30)
    args = p.parse_args()

    ceiling = matmul_ceiling_gmacs(args.threads)
    print(f"fp32 matmul ceiling (2048^3 torch.mm, {args.threads} threads): {ceiling:.1f} GMAC/s")
    rows = []
    recipe = load_recipe(REPO_ROOT / "recipes" / "stoic-digits.toml")
    ckpt = recipe.checkpoint_path()
    if ckpt is not None and ckpt.exists():
        loaded = load_checkpoint(ckpt)
        label = "stoic-digits (trained)"
    else:
        raise SystemExit(f"{ckpt}: the default recipe's checkpoint is missing")
    size = recipe.image_size or loaded.config.image_size
    rows.append(bench(label, loaded.model, loaded.config, size, args.threads, args.runs, ceiling))
    cfg = VARIANTS["stoic-s2-n12-l512"]
    big = build_random("stoic", cfg, seed=0)
    rows.append(bench("stoic-s2-n12-l512 @32x32 (random)", big.model, cfg, 32, args.threads,
                      args.runs, ceiling))

    head = (f"{'model':36} {'GMAC':>7} {'eager ms':>9} {'ORT ms':>8} {'eager/ORT':>9} "
            f"{'eager GMAC/s':>12} {'ORT GMAC/s':>10} {'ORT % ceil':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:36} {r['gmac']:7.3f} {r['eager_ms']:9.2f} {r['ort_ms']:8.2f} "
              f"{r['ratio']:8.2f}x {r['eager_gmacs']:12.1f} {r['ort_gmacs']:10.1f} "
              f"{100 * r['ort_gmacs'] / r['ceiling']:9.0f}%")
    print(f"(batch 1, median of {args.runs} runs after 5 warm-up, {args.threads} threads; "
          "ONNX Runtime CPU EP on the .onnx)")


if __name__ == "__main__":
    main()
