"""Qualcomm Hexagon NPU (HTP) target through ONNX Runtime's QNN execution provider
(`onnxruntime-qnn`, which ships Qualcomm's HTP graph preparation and, on x86_64, its simulator).

One export: the fp32 ONNX from the shared capture at opset 20 (the exporter then writes ONNX's
`Gelu` op, which HTP takes, instead of an `Erf` pattern, which it does not) with every input shape
fixed (an NPU graph has no dynamic axis) -> a QDQ model in the profile's precision (W8A16 by
default: uint8 weights, uint16 activations) calibrated on the model's own sampling trajectories
-> a QNN context binary for the profile's Hexagon generation (`htp_arch`): `X_ctx.onnx` (the
small wrapper an app opens) + `X_ctx_qnn.bin` (the compiled graph).

Residency is what the QNN EP itself assigns to HTP (onnxruntime's graph assignment record), never
a list of ops we guessed. With `allow_cpu_fallback = false` a graph that does not fit whole fails
the export naming the op types and nodes left on the CPU.

Validation runs in the HTP simulator, which is slow (about 100x the host CPU), so small models are
simulated and large ones are compile-only by default (the artifact says so). The simulator's run
time on this host is not a phone's latency and is never reported as latency; QNN's profiling gives
per-op *simulator cycles*, reported as cycles.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mobilegen.errors import ExportError, first_line
from mobilegen.passes.precision import PrecisionSpec
from mobilegen.targets.base import Artifact, ExportRequest, Runner, program_weights, release_weights
from mobilegen.targets.profile import SIMULATE_AUTO_MAX_PARAM_BYTES, TargetProfile

FORMATS = ("qnn-context",)  # what export() writes (targets.base.Target)

# Opset 20: the dynamo exporter writes exact GELU as ONNX Gelu (HTP has it) instead of Erf (HTP
# lacks it, STACK-NOTES): a lossless export form, so no GELU -> SiLU rewrite is needed here.
OPSET = 20
PARITY_FEEDS = 3  # trajectory feeds (spread over t) for the simulator-vs-fp32-ONNX check
# Range headroom for sampled denoisers: one more calibration feed, the noisiest one with its
# image input scaled by this factor. At the first step eps ~ x and the sampler divides eps errors
# by alpha (~0.007 at t = 1), so a noise value beyond the calibrated range is clipped and runs
# away (measured on the digits STOIC: image PSNR -8 dB without, 35-41 dB with 1.5; 1.25 still
# ran away on one seed and 2.0 lost precision elsewhere). 1.5x covers +-5.5 sigma of the initial
# noise for under one bit of the 16-bit activations.
RANGE_HEADROOM = 1.5
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
ACTIVATION_TYPES = {"w8a16": "QUInt16", "w8a8": "QUInt8"}
# QNN's SoC model number per Hexagon generation of the profiles' phones (QnnTypes.h
# QNN_SOC_MODEL_*: SM8550 8 Gen 2 = 43 (v73), SM8650 8 Gen 3 = 57 (v75), SM8750 8 Elite = 69
# (v79)). The EP refuses fp16 without it: "FP16 precision mode is enabled but soc_model is not
# specified. Both parameters must be set together for FP16 precision support." (2.7.0)
SOC_MODEL = {"73": "43", "75": "57", "79": "69"}
# simulate_checks: below this simulator-vs-QDQ-on-CPU PSNR the HTP execution itself differs
HTP_DIVERGES_BELOW_DB = 30.0


def ep_name() -> str:
    import onnxruntime_qnn

    return str(onnxruntime_qnn.EP_NAME)


def versions() -> dict[str, str]:
    import onnxruntime
    import onnxruntime_qnn
    from onnxruntime_qnn import build_and_package_info as info

    return {"onnxruntime": onnxruntime.__version__, "onnxruntime_qnn": onnxruntime_qnn.__version__,
            "qnn_sdk": str(info.qnn_version)}


def _devices() -> list[Any]:
    """The QNN EP's devices, registering its plugin library once per process."""
    import onnxruntime as ort
    import onnxruntime_qnn

    name = ep_name()
    found = [d for d in ort.get_ep_devices() if d.ep_name == name]
    if not found:
        ort.register_execution_provider_library(name, onnxruntime_qnn.get_library_path())
        found = [d for d in ort.get_ep_devices() if d.ep_name == name]
    if not found:
        raise ExportError("onnxruntime-qnn is installed but its QNN execution provider offers "
                          "no device on this host")
    return found


def provider_options(profile: TargetProfile) -> dict[str, str]:
    """What an app passes to the QNN EP for this profile (besides the context file itself)."""
    # graph input quantization / output dequantization on HTP too (the EP's default with CPU
    # fallback allowed leaves them to the CPU EP): fp32 in, fp32 out, nothing on the CPU
    opts = {"backend_type": "htp", "offload_graph_io_quantization": "0"}
    if profile.htp_arch:
        opts["htp_arch"] = profile.htp_arch
    if profile.precision == "fp16":
        opts["enable_htp_fp16_precision"] = "1"
        if profile.htp_arch in SOC_MODEL:
            opts["soc_model"] = SOC_MODEL[profile.htp_arch]
    return opts


def session(model: Path, options: dict[str, str], fallback: bool,
            config: dict[str, str] | None = None) -> Any:
    """An onnxruntime session with the QNN EP (HTP backend; the simulator on x86_64).
    fallback=False: a node the EP does not take fails session creation (no silent CPU run)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "0" if fallback else "1")
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    for key, value in (config or {}).items():
        so.add_session_config_entry(key, value)
    so.add_provider_for_devices(_devices(), options)
    return ort.InferenceSession(str(model), so)


# ----------------------------------------------------------------------------- export
def fixed_batch(req: ExportRequest) -> int:
    """The batch the graph is compiled for: the profile's `fixed_batch`, else the batch the
    sampler calls the model with (2 x images under classifier-free guidance), else the
    example's."""
    if req.profile.fixed_batch is not None:
        return req.profile.fixed_batch
    if req.sample_batch is not None:
        return req.sample_batch
    return int(req.example[0].shape[0])


def export(req: ExportRequest) -> list[Artifact]:
    profile, stem, workdir = req.profile, req.stem, req.workdir
    batch = fixed_batch(req)
    fp32 = fixed_fp32_onnx(req, batch)
    if req.consume_program:  # the ONNX holds the weights now; the compile loads them again
        release_weights(program_weights(req.program))
    feeds = [f for feed in req.calibration for f in rebatch(feed, batch)]  # trajectory
    extra = [f for feed in headroom_feeds(req) for f in rebatch(feed, batch)]
    t0 = time.perf_counter()
    model, method = precision_model(fp32, profile.precision, feeds + extra, _external(fp32))
    quantize_s = time.perf_counter() - t0
    options = provider_options(profile)
    ctx = workdir / f"{stem}_ctx.onnx"
    t0 = time.perf_counter()
    placed = compile_context(model, ctx, options)
    compile_s = time.perf_counter() - t0
    coverage = coverage_entry(placed, profile)
    if placed["cpu_nodes"] and not profile.allow_cpu_fallback:
        for p in (ctx, ctx.with_name(f"{ctx.stem}_qnn.bin")):
            p.unlink(missing_ok=True)
        raise ExportError(residency_error(stem, profile, placed))
    details: dict[str, Any] = {
        "method": method, "htp_arch": profile.htp_arch, "fixed_batch": batch,
        "fixed_shapes": fixed_shapes(fp32), "sources": {"fp32": fp32.name, "compiled": model.name},
        "residency": placed, "coverage": [coverage],
        "calibration_feeds": {"trajectory": len(feeds), "headroom": len(extra)},
        "compile_s": {"quantize": round(quantize_s, 2), "context_binary": round(compile_s, 2)},
        "deploy": deploy_entry(profile, fp32, batch),
        "export_form": export_form(fp32),
    }
    why_not = simulation_skipped(req)
    if why_not is None:
        details["simulated"] = True
        details["simulator"] = simulate_checks(ctx, fp32, model, feeds, profile)
    else:
        details["not_run"] = why_not
    companions = [f"{ctx.stem}_qnn.bin"]
    return [Artifact(ctx.name, "qnn-context", profile.name, "qnn", profile.precision,
                     companions, runnable=why_not is None, details=details)]


def fixed_fp32_onnx(req: ExportRequest, batch: int) -> Path:
    """The shared capture as fp32 ONNX at OPSET, with the batch axis fixed to `batch` and every
    other shape inferred static: {stem}.fp32.onnx."""
    import onnx
    from onnxruntime.tools.make_dynamic_shape_fixed import fix_output_shapes, make_dim_param_fixed

    from mobilegen.targets.onnx import EXTERNAL_DATA_ABOVE_BYTES, write_onnx

    path = req.workdir / f"{req.stem}.fp32.onnx"
    write_onnx(req.program, req.example, req.io, path, OPSET,
               external=req.param_bytes > EXTERNAL_DATA_ABOVE_BYTES)
    model = onnx.load(str(path), load_external_data=False)  # external weights stay in place
    params = {d.dim_param for v in model.graph.input for d in v.type.tensor_type.shape.dim
              if d.dim_param}
    for name in params:  # the only named axis our signatures have is the batch
        make_dim_param_fixed(model.graph, name, batch)
    from mobilegen.targets.qnn_graph import prepare_for_htp, weights_beside

    with weights_beside(path):  # its model check reads external data by relative path
        fix_output_shapes(model)
    prepare_for_htp(model, path.parent)  # lossless graph-form fixes (qnn_graph.py)
    onnx.save(model, str(path))
    return path


def export_form(fp32: Path) -> str:
    """What the lossless export form (OPSET) fixed, counted in this model."""
    import onnx

    gelu = sum(n.op_type == "Gelu" for n in onnx.load(str(fp32), load_external_data=False)
               .graph.node)
    if not gelu:
        return f"opset {OPSET}; the model has no GELU"
    return (f"opset {OPSET}: {gelu} exact GELU as ONNX Gelu nodes, which HTP takes (at opset "
            "18 each is an Erf pattern HTP lacks); no lossy rewrite applied")


def fixed_shapes(path: Path) -> dict[str, list[int]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*graph.input, *graph.output)}


def headroom_feeds(req: ExportRequest) -> list[dict[str, np.ndarray]]:
    """For a sampled denoiser, its noisiest calibration feed with the image input scaled by
    RANGE_HEADROOM (see there); nothing for other models."""
    feeds = list(req.calibration)
    if req.sample_batch is None or len(req.io.inputs) < 2 or not feeds:
        return []
    image, time_input = req.io.input_names[:2]
    noisiest = max(feeds, key=lambda f: float(np.ravel(f[time_input])[0]))
    return [{**noisiest, image: (noisiest[image] * RANGE_HEADROOM).astype(np.float32)}]


def rebatch(feed: dict[str, np.ndarray], batch: int) -> list[dict[str, np.ndarray]]:
    """A feed of any batch as feeds of exactly `batch` rows (the last one filled up by repeating
    rows from its start)."""
    n = len(next(iter(feed.values())))
    out = []
    for start in range(0, n, batch):
        rows = np.arange(batch) % min(batch, n - start) + start
        out.append({k: np.take(v, rows, axis=0) for k, v in feed.items()})
    return out


def _external(fp32: Path) -> bool:
    return fp32.with_name(f"{fp32.name}.data").is_file()


def precision_model(fp32: Path, precision: str, feeds: list[dict[str, np.ndarray]],
                    external: bool = False) -> tuple[Path, str]:
    """The model HTP compiles: a QDQ model (w8a16 / w8a8, calibrated on `feeds`) or, for fp16,
    the fp32 model itself (the EP runs it in fp16 with enable_htp_fp16_precision)."""
    if precision == "fp16":
        return fp32, "fp32 ONNX compiled by QNN in fp16 (enable_htp_fp16_precision)"
    if not feeds:
        raise ExportError(f"{precision} for {fp32.name}: no calibration feeds were collected "
                          "(the profile's calibration_feeds)")
    from onnxruntime.quantization import QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    from mobilegen.targets.onnx_precision import FeedReader  # CalibrationDataReader over feeds

    out = fp32.with_name(fp32.name.replace(".fp32.onnx", f".{precision}.onnx"))
    act = getattr(QuantType, ACTIVATION_TYPES[precision])
    from mobilegen.targets.qnn_graph import ordered_calibration

    try:
        cfg = get_qnn_qdq_config(str(fp32), FeedReader(feeds), activation_type=act,
                                 weight_type=QuantType.QUInt8)
        cfg.use_external_data_format = external  # above 2 GiB a protobuf cannot hold weights
        with ordered_calibration():  # one run's activations held, not all (qnn_graph.py)
            quantize(str(fp32), str(out), cfg)
    except Exception as e:  # onnxruntime.quantization raises many types; one line
        raise ExportError(f"{precision} QDQ quantization failed for {fp32.name}: "
                          f"{first_line(e)}") from e
    return out, (f"onnxruntime get_qnn_qdq_config + quantize: QDQ {precision.upper()} (uint8 "
                 f"weights, {ACTIVATION_TYPES[precision][1:].lower()} activations, MinMax on "
                 f"{len(feeds)} calibration feeds)")


def compile_context(model: Path, ctx: Path, options: dict[str, str]) -> dict[str, Any]:
    """Compile `model` for HTP into a context binary (ctx + ctx_qnn.bin) and return where
    onnxruntime placed each node: the QNN EP's own verdict. CPU fallback is allowed here so the
    record names every node HTP did not take; the caller decides whether that is an error."""
    config = {"ep.context_enable": "1", "ep.context_embed_mode": "0",
              "ep.context_file_path": str(ctx)}
    for stale in (ctx, ctx.with_name(f"{ctx.stem}_qnn.bin")):  # the EP refuses to overwrite
        stale.unlink(missing_ok=True)
    try:
        sess = session(model, options, fallback=True, config=config)
    except Exception as e:
        raise ExportError(f"QNN HTP compile failed for {model.name}: "
                          f"{first_line(e)}") from e
    htp, cpu = [], []
    for sub in sess.get_provider_graph_assignment_info():
        nodes = [{"name": n.name, "op_type": n.op_type} for n in sub.get_nodes()]
        (htp if sub.ep_name == ep_name() else cpu).extend(nodes)
    del sess
    if not ctx.is_file():
        raise ExportError(f"QNN HTP compile wrote no context binary for {model.name}")
    return {"htp_nodes": len(htp), "total_nodes": len(htp) + len(cpu), "cpu_nodes": cpu,
            "cpu_op_types": unsupported_ops(cpu)}


def unsupported_ops(cpu_nodes: list[dict[str, str]]) -> list[str]:
    """Op types HTP did not take. Quantize/DequantizeLinear nodes around an unsupported op fall
    back with it; they are named only when nothing else fell back."""
    real = sorted({n["op_type"] for n in cpu_nodes if n["op_type"] not in QDQ_OPS})
    return real or sorted({n["op_type"] for n in cpu_nodes})


def residency_error(stem: str, profile: TargetProfile, placed: dict[str, Any]) -> str:
    cpu = placed["cpu_nodes"]
    named = [f"{n['name']} ({n['op_type']})" for n in cpu if n["op_type"] not in QDQ_OPS] or [
        f"{n['name']} ({n['op_type']})" for n in cpu]
    more = f" and {len(named) - 8} more" if len(named) > 8 else ""
    return (f"{stem} does not run whole on HTP v{profile.htp_arch} (profile {profile.name}, "
            f"allow_cpu_fallback = false): {len(cpu)} of {placed['total_nodes']} nodes would run "
            f"on the CPU; unsupported ops: {', '.join(placed['cpu_op_types'])}; nodes: "
            f"{', '.join(named[:8])}{more}")


def coverage_entry(placed: dict[str, Any], profile: TargetProfile) -> dict[str, Any]:
    """The shared accelerator-coverage record (targets/coverage.py) for HTP."""
    from mobilegen.targets.coverage import entry, verdict_of

    v = versions()
    on, total = placed["htp_nodes"], placed["total_nodes"]
    return entry("qnn-htp", f"onnxruntime-qnn {v['onnxruntime_qnn']} (QNN SDK {v['qnn_sdk']}): "
                 "onnxruntime's graph assignment record with the HTP backend",
                 verdict_of(on, total), on, total, placed["cpu_op_types"],
                 f"compiled for Hexagon v{profile.htp_arch}; CPU fallback "
                 f"{'allowed' if profile.allow_cpu_fallback else 'disabled'}")


def deploy_entry(profile: TargetProfile, fp32: Path, batch: int) -> dict[str, Any]:
    """What the manifest tells an app about this artifact."""
    return {"htp_arch": profile.htp_arch, "versions": versions(),
            "provider_options": provider_options(profile),
            "session_options": {"session.disable_cpu_ep_fallback":
                                "0" if profile.allow_cpu_fallback else "1"},
            "fixed_shapes": fixed_shapes(fp32),
            "batch_note": f"the graph takes exactly batch {batch} (the batch the sampler calls "
                          "with: 2 x images under classifier-free guidance); call it once per "
                          "step per group of that many rows"}


def simulation_skipped(req: ExportRequest) -> str | None:
    """None when the profile's `simulate` setting says to run this model in the simulator."""
    if req.profile.simulates(req.param_bytes):
        return None
    if req.profile.simulate == "never":
        return "compile-only (profile simulate = 'never'): numbers were not simulated"
    return (f"compile-only: numbers were not simulated; this model's {req.param_bytes / 1e6:.0f} "
            f"MB of fp32 weights exceed {SIMULATE_AUTO_MAX_PARAM_BYTES / 1e6:.0f} MB, where one "
            "HTP simulator call takes minutes on this host (set simulate = 'always' to run it)")


# ----------------------------------------------------------------------------- simulation
def simulate_checks(ctx: Path, fp32: Path, model: Path, feeds: list[dict[str, np.ndarray]],
                    profile: TargetProfile) -> dict[str, Any]:
    """The context binary in the simulator (loaded with the profile's fallback rule) on a few
    trajectory feeds spread over t: parity against the fp32 ONNX and the QDQ model on the CPU
    EP, and QNN's per-op simulator cycles of the first call."""
    from mobilegen.measure.parity import compare

    picked = [feeds[i] for i in sorted({round(k) for k in
                                        np.linspace(0, len(feeds) - 1, PARITY_FEEDS)})]
    fp32_out = [_cpu_run(fp32, f) for f in picked]
    qdq_out = [_cpu_run(model, f) for f in picked]
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "profile.csv"
        opts = {"backend_type": "htp", "profiling_level": "detailed",
                "profiling_file_path": str(csv)}
        sess = session(ctx, opts, fallback=profile.allow_cpu_fallback)
        sim = [sess.run(None, f)[0] for f in picked]
        del sess  # the profile is complete once the session is gone
        cycles = parse_cycles(csv, fp32)
    steps = []
    for f, s, ref, qdq in zip(picked, sim, fp32_out, qdq_out, strict=True):
        t = float(np.ravel(list(f.values())[1])[0]) if len(f) > 1 else None
        step = {"t": t, "vs_fp32_onnx": compare(ref, s).to_dict(),
                "vs_qdq_cpu": compare(qdq, s).to_dict()}
        if model != fp32:  # the QDQ model's own error, on the CPU EP: quantization alone
            step["qdq_cpu_vs_fp32_onnx"] = compare(ref, qdq).to_dict()
        steps.append(step)
    out = {"parity": steps, "cycles": cycles,
           "note": "HTP simulator on this host: parity is numeric; cycles are the simulator's "
                   "cycle counts for one call, not a phone's latency. The error splits into "
                   "quantization (qdq_cpu_vs_fp32_onnx: the QDQ model on the CPU EP) and HTP's "
                   "execution of that model (vs_qdq_cpu: simulator vs CPU EP, same model)"}
    diverges = htp_divergence(steps)
    if diverges:
        out["diagnosis"] = diverges
    return out


def htp_divergence(steps: list[dict[str, Any]]) -> str | None:
    """A one-line diagnosis when the simulator disagrees with the same model on the CPU EP
    (below HTP_DIVERGES_BELOW_DB): HTP computes the graph differently, which calibration ranges
    do not explain. Seen (onnxruntime-qnn 2.7.0, v68-v79 alike, W8A16): a per-channel constant
    Mul/Add -> SiLU -> Conv at 8x8 with batch 2-8 (or 128 channels at batch 1; 16x16 and W8A8
    were right) at 14-18 dB, while the QDQ model on the CPU EP was at 41-66 dB; exposing the Mul
    output as a graph output made it right, so it is HTP's graph preparation. targets/qnn_graph.py
    rewrites the GroupNorm form of it."""
    def worst(key: str) -> float | None:  # psnr_db None: identical outputs
        values = [s[key]["psnr_db"] for s in steps if key in s]
        return min((v for v in values if v is not None), default=None)

    htp, quant = worst("vs_qdq_cpu"), worst("qdq_cpu_vs_fp32_onnx")
    if htp is None or htp >= HTP_DIVERGES_BELOW_DB:
        return None
    q = f"; quantization alone (QDQ model on the CPU EP vs fp32 ONNX) {quant:.1f} dB" \
        if quant is not None else ""
    return (f"the HTP simulator differs from the same model on the CPU EP ({htp:.1f} dB worst "
            f"step){q}: the rest is HTP's execution of the graph (its integer kernels or graph "
            "preparation), which the calibration ranges do not explain")


def _cpu_run(model: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, feed)[0])


_NODE = re.compile(r"^(?P<name>.+?)(_token_\d+)?(:OpId_\d+)? \(cycles\)$")


def parse_cycles(csv: Path, fp32: Path) -> dict[str, Any]:
    """QNN's detailed profile (CSV) of every run in it: accelerator cycles per run and per-op
    cycles grouped by model block (the fp32 ONNX node's module scope) and by op type, as the
    median over runs. The simulator's counts move between identical calls on a loaded host
    (measured 0.38-0.98 G cycles for one v75 binary and input), so the spread is kept."""
    import csv as csv_mod

    rows = list(csv_mod.reader(csv.read_text().splitlines()))
    starts = [i for i, r in enumerate(rows) if len(r) > 6 and r[3] == "CYCLES"
              and r[6].startswith("Accelerator (execute)")]
    if not starts:
        return {"error": "the QNN profile has no execute cycles"}
    scopes, types = _node_scopes(fp32)
    runs = []
    for start in starts:
        by_block: dict[str, int] = {}
        by_type: dict[str, int] = {}
        for r in rows[start + 1:]:
            if len(r) < 7 or r[1] != "NODE":
                break
            m = _NODE.match(r[6])
            name = m["name"] if m else r[6]
            block = scopes.get(name, "(quantize/dequantize, layout)")
            by_block[block] = by_block.get(block, 0) + int(r[2])
            op = types.get(name, "(QNN-inserted)")
            by_type[op] = by_type.get(op, 0) + int(r[2])
        runs.append((int(rows[start][2]), by_block, by_type))

    def median(values: list[int]) -> int:
        return int(np.median(values))

    blocks = {b: median([r[1].get(b, 0) for r in runs]) for b in runs[0][1]}
    ops = {o: median([r[2].get(o, 0) for r in runs]) for o in runs[0][2]}
    totals = [r[0] for r in runs]
    return {"unit": f"HTP simulator cycles per call (QNN detailed profiling; median of "
                    f"{len(runs)} calls)",
            "total": median(totals), "total_range": [min(totals), max(totals)],
            "by_block": [{"block": b, "cycles": c} for b, c in
                         sorted(blocks.items(), key=lambda kv: -kv[1])],
            "by_op_type": dict(sorted(ops.items(), key=lambda kv: -kv[1]))}


def _node_scopes(fp32: Path) -> tuple[dict[str, str], dict[str, str]]:
    """fp32 ONNX node name -> its block (the top module scope the exporter recorded, e.g.
    'blocks.3') and -> its op type."""
    import ast

    import onnx

    scopes, types = {}, {}
    for n in onnx.load(str(fp32), load_external_data=False).graph.node:
        types[n.name] = n.op_type
        meta = {p.key: p.value for p in n.metadata_props}
        names = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        scopes[n.name] = (next((s for s in names[1:-1] if s), "(top level)") if names
                          else "(no module scope recorded)")
    return scopes, types


# ----------------------------------------------------------------------------- Target protocol
def supports(spec: PrecisionSpec) -> str | None:
    return ("the QNN target takes its precision from the profile (precision = 'w8a16', 'w8a8' "
            "or 'fp16'); list one profile per precision instead of a precision pass")


def export_precision(req: ExportRequest, spec: PrecisionSpec) -> list[Artifact]:
    raise ExportError(f"qnn: {supports(spec)}")


def load(path: Path, threads: int) -> Runner:
    """The context binary in the HTP simulator, as a Runner. The graph takes one fixed batch;
    a call with another batch runs in groups of that size (the last group filled up)."""
    if not Path(path).is_file():
        raise ExportError(f"{path}: artifact not found")
    from mobilegen.targets.fixed_batch import fixed_batch_runner

    sess = session(Path(path), {"backend_type": "htp"}, fallback=True)
    output = sess.get_outputs()[0].name
    return fixed_batch_runner(lambda feeds: sess.run([output], feeds)[0],
                              int(sess.get_inputs()[0].shape[0]))
