"""What the parent of an isolated export (export/isolated.py) still holds while its children lower:
its own RSS and PSS, and the CPU tensors still alive in it, at the moment each child starts, next
to the whole process tree's peak. Once the capture is saved and the model dropped, the parent
should hold no weights; a lingering reference shows here as tensors alive and an RSS that grows
with the model.

The model is an SD-shaped UNet with reduced widths (random weights; the block structure of
SD-1.5, `--widths` per stage), so a run takes minutes, not the hour SD-1.5 itself takes here.

    PYTHONPATH=src nice -n 10 .venv/bin/python benchmarks/bench_isolated_parent.py \
        [--widths 96,192,384,384] [--size 32] [--targets ort-mobile-cpu] [--label after]

Run it with PYTHONPATH pointing at another tree's src (e.g. an older commit unpacked with
`git archive`) and another --label to compare. Rows land in
benchmarks/results/isolated_parent.json, keyed by label.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GB = 1024**3
RESULTS = Path(__file__).resolve().parent / "results" / "isolated_parent.json"


def _live_cpu_tensor_bytes() -> tuple[int, int]:
    """(count, bytes) of the plain CPU tensors over 1 MB alive in this process."""
    import torch

    gc.collect()
    big = [o for o in gc.get_objects()
           if type(o) in (torch.Tensor, torch.nn.Parameter) and o.device.type == "cpu"
           and o.numel() * o.element_size() > 1 << 20]
    return len(big), sum(o.untyped_storage().nbytes() for o in big)


def worker(widths: list[int], size: int, targets: list[str], out: Path) -> dict:
    from mobilegen.export import isolated
    from mobilegen.export.run import run_export
    from mobilegen.measure.memory import _rollup
    from mobilegen.recipe import load_recipe

    seen: list[dict] = []
    lower_in_child = isolated._in_child

    def recording(job, lower):  # the parent's own state as each child starts
        rss, pss = _rollup(os.getpid())
        count, nbytes = _live_cpu_tensor_bytes()
        seen.append({"target": job.target, "parent_rss_gb": round(rss / GB, 3),
                     "parent_pss_gb": round(pss / GB, 3), "tensors_over_1mb": count,
                     "tensor_gb": round(nbytes / GB, 3)})
        return lower_in_child(job, lower)

    isolated._in_child = recording
    os.environ["MOBILEGEN_ISOLATE_TARGETS"] = "1"
    data = {"name": "sd-shaped-mid", "targets": targets,
            "model": {"family": "unet", "init": "random",
                      "config": {"block_out_channels": widths, "sample_size": size}},
            "validate": {"timesteps": [999.0], "batch": 2, "end_to_end": False},
            "latency": {"warmup": 0, "runs": 1}, "sampler": {"steps": 2, "num_images": 1}}
    path = out / "recipe.toml"
    path.write_text(json.dumps(data))
    t0 = time.perf_counter()
    report = run_export(load_recipe(path, data), out / "export").report.to_dict()
    mem = report["memory"]
    return {"params": report["model"]["params"],
            "param_gb": round(mem["preflight"]["param_bytes"] / GB, 3),
            "wall_s": round(time.perf_counter() - t0, 1), "at_child_start": seen,
            "export_peak": mem["peak"], "per_step": mem["per_step"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="96,192,384,384")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--targets", nargs="+", default=["ort-mobile-cpu"])
    ap.add_argument("--label", default="current")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    if args.worker:
        print(json.dumps(worker(widths, args.size, args.targets, args.worker)))
        return
    from mobilegen.measure.memory import TreeSampler

    with tempfile.TemporaryDirectory(prefix="mobilegen-parent-") as tmp:
        proc = subprocess.Popen([sys.executable, __file__, "--worker", tmp, "--widths",
                                 args.widths, "--size", str(args.size), "--targets",
                                 *args.targets], stdout=subprocess.PIPE, text=True)
        with TreeSampler(interval=0.25, root=proc.pid) as tree:
            stdout, _ = proc.communicate()
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"the export worker failed (exit {proc.returncode})")
    row = {**json.loads(lines[-1]), "widths": widths, "size": args.size,
           "targets": args.targets, "whole_tree_peak_rss_gb": round(tree.peak.rss_bytes / GB, 2),
           "whole_tree_peak_pss_gb": round(tree.peak.pss_bytes / GB, 2),
           "src": os.environ.get("PYTHONPATH", ""), "date_utc": time.strftime(
               "%Y-%m-%d %H:%M UTC", time.gmtime()),
           "host": "shared 2-core host (a training run and other exports alongside)"}
    doc = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"rows": {}}
    doc["rows"][args.label] = row
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    for s in row["at_child_start"]:
        print(f"{args.label:8} child {s['target']:16} parent RSS {s['parent_rss_gb']:.2f} GB "
              f"PSS {s['parent_pss_gb']:.2f} GB, {s['tensors_over_1mb']} tensors "
              f"({s['tensor_gb']:.2f} GB) alive; model {row['param_gb']:.2f} GB fp32")
    print(f"{args.label:8} whole tree peak RSS {row['whole_tree_peak_rss_gb']:.2f} GB, "
          f"wall {row['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
