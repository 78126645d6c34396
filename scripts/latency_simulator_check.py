"""The HTP simulator's cycle counts as a predictor of Qualcomm's measured phone milliseconds.

For a few small calibration architectures (scripts/latency_zoo.py, random weights on the CPU) this
exports an fp32 ONNX at opset 20, compiles it with onnxruntime-qnn for Hexagon v75 in fp16 (the
`snapdragon-8gen3-htp-fp16` profile's provider options), runs it in the HTP simulator on this
x86 host with QNN's detailed profiling, and compares the simulator's accelerator cycles per call
with the measured Galaxy S24 float QNN milliseconds (data/latency/calibration.json): the Pearson
correlation of log cycles and log ms, the fitted cycles-per-ms rate (one scale, log space) and
the leave-one-out relative error of that one-number estimate. The simulator is slow (about 100x
the host CPU) and its counts vary between calls on a loaded host, so three calls are run per model
and the median and range kept. Prints a table and writes JSON:

    PYTHONPATH=src nice -n 10 python scripts/latency_simulator_check.py [--out FILE] [MODEL ...]
    ... --summarise   # the summary of --out again, without simulating
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import latency_zoo

from mobilegen.targets import qnn
from mobilegen.targets.profile import load_target

DATA = Path(__file__).resolve().parents[1] / "src" / "mobilegen" / "data" / "latency"
DEVICE, PROFILE = "Samsung Galaxy S24", "snapdragon-8gen3-htp-fp16"
# mobilenet-sized CNNs the simulator runs in minutes here (the default set)
DEFAULT = ("quicksrnetsmall", "quicksrnetmedium", "quicksrnetlarge", "mobilenet_v3_small",
           "mobilenet_v3_large", "shufflenet_v2", "squeezenet1_1", "mnasnet05", "mobilenet_v2",
           "yamnet", "resnet18", "resnet50", "googlenet", "densenet121", "regnet",
           "regnet_y_800mf", "efficientnet_b0", "efficientnet_lite4", "dncnn",
           "real_esrgan_general_x4v3")
CALLS = 3


def materialise(model: torch.nn.Module) -> torch.nn.Module:
    """The meta-device zoo model on the CPU with random weights (fan-in scaled, batch norm at
    identity statistics, so activations stay finite in fp16)."""
    gen = torch.Generator().manual_seed(0)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            fan_in = int(np.prod(p.shape[1:])) if p.dim() > 1 else 1
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(fan_in))
            else:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
        for name, b in model.named_buffers():
            if b.is_floating_point():
                b.fill_(1.0 if name.endswith("running_var") else 0.0)
    return model.eval()


def simulate(model_id: str, workdir: Path) -> dict[str, Any]:
    entry = next(e for e in latency_zoo.entries() if e.model_id == model_id)
    meta_model, inputs = entry.build()
    model = materialise(meta_model)
    x = tuple(torch.randn(t.shape) for t in inputs)
    onnx_path = workdir / f"{model_id}.onnx"
    torch.onnx.export(model, x, str(onnx_path), opset_version=qnn.OPSET, dynamo=True,
                      input_names=["x"], output_names=["y"])
    options = qnn.provider_options(load_target(PROFILE))
    ctx = workdir / f"{model_id}_ctx.onnx"
    t0 = time.perf_counter()
    placed = qnn.compile_context(onnx_path, ctx, options)
    compile_s = time.perf_counter() - t0
    csv = workdir / f"{model_id}.csv"
    sess = qnn.session(ctx, {"backend_type": "htp", "profiling_level": "detailed",
                             "profiling_file_path": str(csv)}, fallback=False)
    feed = {sess.get_inputs()[0].name: x[0].numpy()}
    t0 = time.perf_counter()
    for _ in range(CALLS):
        sess.run(None, feed)
    sim_s = (time.perf_counter() - t0) / CALLS
    del sess
    cycles = qnn.parse_cycles(csv, onnx_path)
    return {"model": model_id, "htp_nodes": placed["htp_nodes"],
            "total_nodes": placed["total_nodes"], "cycles": cycles["total"],
            "cycles_range": cycles["total_range"], "compile_s": round(compile_s, 1),
            "host_s_per_call": round(sim_s, 1)}


def measured(model_id: str) -> tuple[float, str] | None:
    cal = json.loads((DATA / "calibration.json").read_text())
    rows = [r for r in cal["rows"] if r["model"] == model_id and r["device"] == DEVICE
            and r["precision"] == "float" and r["runtime"] == "qnn_dlc"]
    return (rows[0]["measured_ms"], rows[0]["job_id"]) if rows else None


def linear_cv_errors() -> dict[str, float]:
    """model id -> the shipped linear model's leave-one-family-out relative error on its S24
    float row (data/latency/coefficients.json), for the same-rows comparison."""
    models = json.loads((DATA / "coefficients.json").read_text())
    cv = models["slices"][f"{DEVICE}|qnn|float"]["cv"]
    return {c["name"].split("/")[0]: c["predicted_ms"] / c["measured_ms"] - 1 for c in cv}


def compare(results: list[dict[str, Any]]) -> dict[str, Any]:
    """log-log correlation; one cycles-per-ms rate (geometric mean of the ratios, i.e. a log-space
    least-squares scale) and its leave-one-out relative errors, beside the linear op-class
    model's leave-one-family-out errors on the same rows."""
    ok = [r for r in results if "cycles" in r and r.get("measured_ms")]
    c = np.array([r["cycles"] for r in ok], dtype=float)
    ms = np.array([r["measured_ms"] for r in ok])
    if len(ok) < 3:
        return {"models": len(ok)}
    logr = np.log(c / ms)
    errs = []
    for i, r in enumerate(ok):
        rate = float(np.exp(np.delete(logr, i).mean()))
        r["loo_estimate_ms"] = round(c[i] / rate, 3)
        r["loo_error_pct"] = round(100 * (c[i] / rate / ms[i] - 1), 1)
        errs.append(abs(c[i] / rate / ms[i] - 1))
    linear = linear_cv_errors()
    lin = [abs(linear[r["model"]]) for r in ok if r["model"] in linear]
    for r in ok:
        if r["model"] in linear:
            r["linear_cv_error_pct"] = round(100 * linear[r["model"]], 1)
    return {"models": len(ok),
            "linear_model_cv_median_abs_err_pct": round(100 * float(np.median(lin)), 1),
            "linear_model_cv_max_abs_err_pct": round(100 * float(np.max(lin)), 1),
            "pearson_log": round(float(np.corrcoef(np.log(c), np.log(ms))[0, 1]), 3),
            "pearson_linear": round(float(np.corrcoef(c, ms)[0, 1]), 3),
            "cycles_per_ms": round(float(np.exp(logr.mean()))),
            "loo_median_abs_err_pct": round(100 * float(np.median(errs)), 1),
            "loo_max_abs_err_pct": round(100 * float(np.max(errs)), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=list(DEFAULT))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/htp_sim_cycles.json"))
    ap.add_argument("--summarise", action="store_true",
                    help="recompute the summary of --out's models without simulating again")
    args = ap.parse_args()
    if args.summarise:
        out = json.loads(args.out.read_text())
        out["summary"] = compare(out["models"])
        args.out.write_text(json.dumps(out, indent=1) + "\n")
        print(json.dumps(out["summary"]))
        return
    results = []
    for mid in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                r = simulate(mid, Path(tmp))
            except Exception as e:  # one model that will not compile or run is reported, not fatal
                r = {"model": mid, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        m = measured(mid)
        if m:
            r["measured_ms"], r["job_id"] = m
        results.append(r)
        print(json.dumps(r), flush=True)
    summary = compare(results)
    out = {"device": DEVICE, "profile": PROFILE, "versions": qnn.versions(),
           "note": "HTP simulator cycles on a shared, loaded x86 host vs Qualcomm AI Hub "
                   "measured ms (qai-hub-models perf.yaml, S24 float QNN DLC)",
           "summary": summary, "models": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
