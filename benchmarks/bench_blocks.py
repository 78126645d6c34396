"""Per-block latency table for STOIC S=2 N=12 L=512 at 32x32 (random weights) in ONNX Runtime,
the sum-vs-whole check, the operator profile with the attention share, and the device ESTIMATES
with their held-out calibration errors.

    .venv/bin/python benchmarks/bench_blocks.py [--threads 2] [--runs 20]

Writes benchmarks/results/blocks.json (the `blocks` and `estimates` sections report.html renders)
and benchmarks/results/blocks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from mobilegen.measure.blocks import block_table, op_profile
from mobilegen.measure.estimate import ESTIMATE_LABEL, calibrate, estimate_model
from mobilegen.models.stoic import VARIANTS, Stoic
from mobilegen.report.html import latency_markdown

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", default="stoic-s2-n12-l512")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--markdown-only", action="store_true",
                        help="Re-render blocks.md from blocks.json without measuring.")
    args = parser.parse_args()
    if args.markdown_only:
        doc = json.loads((RESULTS / "blocks.json").read_text())
        text = latency_markdown(doc["blocks"], doc["estimates"], doc["header"])
        (RESULTS / "blocks.md").write_text(text)
        print(text)
        return
    torch.manual_seed(0)
    model = Stoic(VARIANTS[args.variant]).eval()
    example = model.example_inputs(1, seed=0, image_size=32)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        table = block_table(model, example, threads=args.threads, warmup=3, runs=args.runs,
                            workdir=Path(tmp))
        blocks = table.to_dict()
        blocks["op_profile"] = op_profile(Path(tmp) / "whole.onnx", example,
                                          threads=args.threads, runs=args.runs)
    calibration = calibrate()
    estimates = {"label": ESTIMATE_LABEL, "calibration": calibration.to_dict(),
                 "rows": [e.to_dict() for e in estimate_model(model, example, calibration)]}
    header = (f"# Per-block table: {args.variant} at 32x32 (random weights)\n\n"
              f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
              f"{platform.machine()} ({torch.get_num_threads()} torch threads available), "
              f"onnxruntime CPU EP, {args.threads} threads, {args.runs} interleaved runs; "
              f"took {time.perf_counter() - t0:.0f} s.")
    RESULTS.mkdir(exist_ok=True)
    doc = {"variant": args.variant, "image_size": 32, "header": header, "blocks": blocks,
           "estimates": estimates}
    (RESULTS / "blocks.json").write_text(json.dumps(doc, indent=2))
    text = latency_markdown(blocks, estimates, header)
    (RESULTS / "blocks.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
