"""The shape of the STOIC paper's cost figure: GMAC and parameters against depth N (12/16/32)
and width L (512/768), for stride S=1 and S=2, at 32x32 (MACs counted on the meta device: no
weights are allocated), with host ONNX Runtime latency beside the cheapest configurations until
a time budget is spent.

    .venv/bin/python benchmarks/bench_stoic_cost.py [--budget-s 180] [--threads 2]

Writes benchmarks/results/stoic_cost.json and benchmarks/results/stoic_cost.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from mobilegen.measure.blocks import export_onnx, time_interleaved
from mobilegen.measure.costs import count_macs, count_params
from mobilegen.models.stoic import VARIANTS, Stoic

RESULTS = Path(__file__).parent / "results"
SIZE = 32


def paper_estimate(s: int, n: int, width: int) -> tuple[float, float]:
    """REFERENCE.md's rough formula: params/block 12 L^2, MACs/block 12 T L^2 + 2 T^2 L."""
    t = (SIZE // s) ** 2
    return n * 12 * width**2 / 1e6, n * (12 * t * width**2 + 2 * t * t * width) / 1e9


def count(cfg: object) -> tuple[int, int]:
    with torch.device("meta"):
        model = Stoic(cfg).eval()
        x = torch.empty(1, cfg.in_channels, SIZE, SIZE)
        t = torch.empty(1)
    macs, _ = count_macs(model, (x, t))
    return count_params(model), macs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget-s", type=float, default=180.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    rows = []
    for s in (2, 1):
        for n in (12, 16, 32):
            for width in (512, 768):
                name = f"stoic-s{s}-n{n}-l{width}"
                params, macs = count(VARIANTS[name])
                p_est, g_est = paper_estimate(s, n, width)
                rows.append({"variant": name, "S": s, "N": n, "L": width, "params": params,
                             "gmac": macs / 1e9, "formula_params_m": p_est,
                             "formula_gmac": g_est, "ort_median_ms": None, "ort_min_ms": None})
    start = time.perf_counter()
    for row in sorted(rows, key=lambda r: r["gmac"]):  # cheapest first, until the budget is spent
        if time.perf_counter() - start > args.budget_s:
            break
        torch.manual_seed(0)
        model = Stoic(VARIANTS[row["variant"]]).eval()
        example = model.example_inputs(1, seed=0, image_size=SIZE)
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(model, example, Path(tmp) / "m.onnx")
            stats = time_interleaved([(path, example)], args.threads, 2, args.runs)[0]
        row["ort_median_ms"], row["ort_min_ms"] = stats.median_ms, stats.min_ms
        print(f"timed {row['variant']}: {stats.median_ms:.1f} ms", flush=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    meta = {"measured": stamp, "machine": platform.machine(), "image_size": SIZE,
            "threads": args.threads, "runs": args.runs, "budget_s": args.budget_s}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stoic_cost.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"# STOIC cost against N and L at {SIZE}x{SIZE}", "",
             f"Counted (params, GMAC) and measured (ORT CPU EP, {args.threads} threads, median of "
             f"{args.runs}) on {meta['machine']}, {stamp}; '-' = not timed within the "
             f"{args.budget_s:.0f} s budget. Formula = REFERENCE.md's rough estimate.", "",
             "| S | N | L | params (M) | GMAC | formula params (M) | formula GMAC "
             "| ORT median ms |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat = f"{r['ort_median_ms']:.1f}" if r["ort_median_ms"] is not None else "-"
        lines.append(f"| {r['S']} | {r['N']} | {r['L']} | {r['params'] / 1e6:.1f} | "
                     f"{r['gmac']:.2f} | {r['formula_params_m']:.1f} | {r['formula_gmac']:.2f} | "
                     f"{lat} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "stoic_cost.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
