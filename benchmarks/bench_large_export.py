"""Export the SD-1.5-size UNet (random weights, 859.5M params) to each target; wall time and peak
memory per target.

Each target runs in its own subprocess (build the model, capture with torch.export, lower with the
target's module) so its peak RSS (ru_maxrss) is its own. Heavy: several GB of RAM per target and
minutes of CPU; run it alone.

    .venv/bin/python benchmarks/bench_large_export.py [--recipe recipes/unet-sd15.toml]
        [--targets ort-mobile-cpu android-cpu android-gpu ios-gpu] [--out DIR]

The model (and its random-weight config) comes from the recipe; recipes/unet-tiny.toml makes a
quick smoke run of the same code.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_TARGETS = ["ort-mobile-cpu", "android-cpu", "android-gpu", "ios-gpu"]


def worker(target: str, out: Path, recipe_path: Path) -> dict:
    """One target, in this process: build, capture, export; report times and peak RSS."""
    from mobilegen.export.run import capture, load_model
    from mobilegen.models import get_family
    from mobilegen.recipe import load_recipe
    from mobilegen.targets import runtime_module
    from mobilegen.targets.base import ExportRequest
    from mobilegen.targets.profile import load_target

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    recipe = load_recipe(recipe_path)
    loaded = load_model(recipe)
    model = loaded.model.eval()
    image_size = recipe.image_size or loaded.config.image_size
    io = get_family(loaded.family).io_spec(loaded.config, image_size)
    params = sum(p.numel() for p in model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    times["build_s"] = time.perf_counter() - t0
    # batch 2 (a guidance pair): torch.export specializes a dynamic axis whose example is 1
    example = model.example_inputs(2, image_size=image_size)
    t0 = time.perf_counter()
    program = capture(model, example)
    times["capture_s"] = time.perf_counter() - t0
    profile = load_target(target)
    workdir = out / target
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result: dict = {"target": target, "model": recipe.name, "params": params,
                    "param_bytes": param_bytes}
    try:
        req = ExportRequest(program, io, example, profile, workdir, "model", param_bytes)
        arts = runtime_module(profile.runtime).export(req)
        files = [p for p in workdir.rglob("*") if p.is_file()]
        result.update(status="ok", artifacts=[a.file for a in arts],
                      runnable=[a.runnable for a in arts],
                      bytes=sum(p.stat().st_size for p in files))
    except Exception as e:  # reported, not hidden: the table shows the target's error line
        result.update(status="error", error=f"{type(e).__name__}: {str(e).splitlines()[0]}")
    times["export_s"] = time.perf_counter() - t0
    result.update({k: round(v, 1) for k, v in times.items()})
    result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", default=DEFAULT_TARGETS)
    ap.add_argument("--recipe", type=Path, default=Path("recipes/unet-sd15.toml"))
    # artifacts are GBs: a scratch folder outside the repo; only the summary lands in results/
    ap.add_argument("--out", type=Path,
                    default=Path(tempfile.gettempdir()) / "mobilegen-large-export")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.out, args.recipe)))
        return
    rows = []
    for target in args.targets:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", target, "--out", str(args.out),
             "--recipe", str(args.recipe)],
            capture_output=True, text=True,
        )
        wall = time.perf_counter() - t0
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            row = {"target": target, "status": f"crashed (exit {proc.returncode})", "error": tail}
        else:
            row = json.loads(lines[-1])
        row["wall_s"] = round(wall, 1)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / "large_export.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"{'target':16} {'status':10} {'wall s':>7} {'capture s':>9} {'export s':>8} "
          f"{'peak RSS GB':>11} {'bytes GB':>8}  artifacts / error")
    for r in rows:
        what = ", ".join(r.get("artifacts", [])) or r.get("error", "")
        size = f"{r['bytes'] / 1e9:.2f}" if "bytes" in r else "-"
        print(f"{r['target']:16} {r['status'][:10]:10} {r['wall_s']:7.1f} "
              f"{r.get('capture_s', float('nan')):9.1f} {r.get('export_s', float('nan')):8.1f} "
              f"{r.get('peak_rss_gb', float('nan')):11.2f} {size:>8}  {what}")


if __name__ == "__main__":
    main()
