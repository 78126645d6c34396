"""Every family through `android-gpu` on LiteRT's own GPU accelerator (targets/litert_gpu.py).

For the default STOIC (recipes/stoic-digits.toml), the tiny UNet and VAE decoder recipes, a tiny
random text-to-image pipeline (tests/sd_pipeline_fixture.py: text encoder, UNet, decoder and the
prompt -> image chain) and any shipped diffusers pipeline under src/mobilegen/data/pipelines/,
one `mobilegen export` each with targets = ["android-gpu"], then per artifact: the accelerator's
verdict (nodes on the GPU / total, or the blocking ops with its reasons), the precision the GPU
computed in, per-step PSNR and image PSNR against PyTorch, and the SwiftShader host time of one
call (software Vulkan on the host CPU: never a phone's latency). Results:
benchmarks/results/litert_gpu.json.

    .venv/bin/python benchmarks/bench_litert_gpu.py [--only stoic-digits ...]

Needs a Vulkan driver (`make setup` installs SwiftShader as root); it stops, saying why, without.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "litert_gpu.json"
PIPELINES = REPO / "src" / "mobilegen" / "data" / "pipelines"
GOAL_DB = 40.0
TEXT_PIPELINE = """name = "{name}"
[pipeline]
diffusers = "{folder}"
prompt = "{prompt}"
targets = ["android-gpu"]
[pipeline.text_encoder]
latency = {{warmup = 1, runs = 5}}
[pipeline.unet]
validate = {{timesteps = [999.0, 500.0, 1.0]}}
latency = {{warmup = 1, runs = 5}}
[pipeline.decoder]
validate = {{timesteps = [0.0]}}
latency = {{warmup = 1, runs = 5}}
[sampler]
kind = "dpm++2m"
steps = {steps}
guidance_scale = 7.5
"""


def _single(tmp: Path, name: str) -> Path:
    """A shipped recipe with targets = ["android-gpu"] (report sections off: they time PyTorch
    blocks, not the GPU), its relative paths made absolute."""
    src = REPO / "recipes" / f"{name}.toml"
    lines = []
    for line in src.read_text().splitlines():
        if line.startswith("targets ="):
            line = 'targets = ["android-gpu"]'
        elif line.startswith("checkpoint ="):
            rel = line.split("=", 1)[1].split("#")[0].strip().strip('"')
            line = f'checkpoint = "{(src.parent / rel).resolve()}"'
        elif line.startswith(("blocks =", "estimates =")):
            line = line.split("=")[0] + "= false"
        lines.append(line)
    out = tmp / f"{name}-gpu.toml"
    out.write_text("\n".join(lines) + "\n")
    return out


def _text_pipeline(tmp: Path, name: str, folder: Path, prompt: str, steps: int) -> Path:
    out = tmp / f"{name}.toml"
    out.write_text(TEXT_PIPELINE.format(name=name, folder=folder, prompt=prompt, steps=steps))
    return out


def _jobs(tmp: Path, only: list[str]) -> list[tuple[str, Path]]:
    sys.path.insert(0, str(REPO / "tests"))
    from sd_pipeline_fixture import write_tiny_pipeline

    jobs = [(n, _single(tmp, n)) for n in ("stoic-digits", "unet-tiny", "vae-decoder-tiny")]
    jobs.append(("sd-tiny-prompt", _text_pipeline(
        tmp, "sd-tiny-prompt", write_tiny_pipeline(tmp / "sd-tiny"), "a photo of the cat", 4)))
    for index in sorted(PIPELINES.glob("*/model_index.json")) if PIPELINES.is_dir() else []:
        name = f"shipped-{index.parent.name}"
        jobs.append((name, _text_pipeline(tmp, name, index.parent, "a photo of a cat", 20)))
    return [(n, p) for n, p in jobs if not only or n in only]


def _rows(out: Path) -> list[dict[str, Any]]:
    """One row per artifact of a single or pipeline export (component reports), plus chains."""
    reports = [out / "report.json", *sorted(out.glob("*/report.json"))]
    rows = []
    for path in reports:
        report = json.loads(path.read_text())
        for a in report.get("artifacts", []):
            d = a["details"]
            gpu = next((e for e in d.get("coverage", []) if e["accelerator"] == "litert-gpu"), {})
            t = d.get("gpu_host_time") or {}
            e2e = a.get("end_to_end") or {}
            rows.append({
                "artifact": f"{path.parent.name}/{a['artifact']}" if path.parent != out
                else a["artifact"],
                "verdict": gpu.get("verdict"), "gpu_nodes": gpu.get("supported_nodes"),
                "total_nodes": gpu.get("total_nodes"), "blocking_ops": gpu.get("unsupported_ops"),
                "reasons": gpu.get("reasons", {}), "runner": d.get("host_delegate"),
                "precision_used": (d.get("litert_gpu", {}).get("precision") or {}).get(
                    "precision"),
                "fp16_min_headroom": (d.get("fp16_safety") or {}).get("min_headroom_after"),
                "step_psnr_db": (a.get("parity") or {}).get("psnr_db"),
                "image_psnr_db": e2e.get("psnr_db"),
                "host_time_median_ms": t.get("median_ms"), "host_time_batch": t.get("batch"),
                "gates": a.get("gates", [])})
        for chain in (report.get("chain") or {}).get("rows", []):
            rows.append({"artifact": f"chain {chain['format']}/{chain['precision']}",
                         "image_psnr_db": chain["psnr_db"]})
    return rows


def _fmt(x: Any, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=[], help="job names to run")
    args = parser.parse_args()
    from mobilegen.targets.vulkan_driver import find_driver

    driver = find_driver()
    if not driver.found:
        raise SystemExit(f"bench_litert_gpu: {driver.reason}")
    results: dict[str, Any] = {"driver": driver.describe(), "goal_image_psnr_db": GOAL_DB,
                               "host": "shared, busy 2-core host (host times are SwiftShader "
                                       "on the host CPU, not device latency)", "jobs": {}}
    exe = Path(sys.executable).parent / "mobilegen"
    with tempfile.TemporaryDirectory(prefix="bench-litert-gpu-") as tmp_name:
        tmp = Path(tmp_name)
        for name, recipe in _jobs(tmp, args.only):
            out = tmp / f"out-{name}"
            t0 = time.perf_counter()
            done = subprocess.run([str(exe), "export", str(recipe), "--out", str(out),
                                   "--no-cache", "-q"], capture_output=True, text=True,
                                  env={**os.environ}, check=False)
            wall = time.perf_counter() - t0
            job: dict[str, Any] = {"exit_code": done.returncode, "wall_s": round(wall, 1)}
            if (out / "report.json").is_file():
                job["rows"] = _rows(out)
            else:
                job["error"] = (done.stderr.strip().splitlines() or ["?"])[-1]
            results["jobs"][name] = job
            print(f"\n{name}: exit {done.returncode}, {wall:.0f} s")
            for r in job.get("rows", []):
                where = (f"{r['verdict']} {r['gpu_nodes']}/{r['total_nodes']}" if r.get("verdict")
                         else "")
                if r.get("blocking_ops"):
                    where += " blocking " + ", ".join(r["blocking_ops"])
                print(f"  {r['artifact']:55s} {where:28s} step {_fmt(r.get('step_psnr_db'))} dB"
                      f"  image {_fmt(r.get('image_psnr_db'))} dB  ran "
                      f"{r.get('precision_used') or '-'}  SwiftShader host "
                      f"{_fmt(r.get('host_time_median_ms'))} ms")
            if "error" in job:
                print(f"  error: {job['error']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
