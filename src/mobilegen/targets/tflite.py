"""TFLite / LiteRT target: .tflite through litert-torch, run by the LiteRT interpreter (XNNPACK).

litert-torch 0.10 cannot keep a dynamic batch axis (its JAX lowering of `unsqueeze` on the
symbolic batch fails), so the file is converted at the validation batch and `load()`'s runner
splits other batch sizes into calls of that size, padding the last call by repeating its last
sample (samples are independent in every family, so the padding never changes a real output).
Precision variants (fp16 weights; int8 weight-only, dynamic, static) are made from the fp32 file
by ai-edge-quantizer.
"""

from __future__ import annotations

import contextlib
import re
import sys
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mobilegen.errors import ExportError, first_line
from mobilegen.passes.precision import EDGE_REASON, PrecisionSpec, matches
from mobilegen.signature import ModelIO
from mobilegen.targets.base import (
    Artifact,
    ExportRequest,
    Runner,
    base_is_already,
    program_weights,
    release_weights,
)
from mobilegen.targets.coverage import litert_gpu_coverage
from mobilegen.targets.profile import TargetProfile

FORMATS = ("tflite",)  # what export() writes (targets.base.Target)

SIGNATURE = "serving_default"  # litert-torch's default signature; inputs args_0..N, output_0
# A flatbuffer addresses at most 2 GiB. Past that, litert-torch 0.10 stores the weight buffers after
# the flatbuffer and points at them by offset; ai-edge-litert 2.3 loads such files (measured: a
# 2.68 GB fp32 model converted in 211 s, ran with max abs error 1.1e-7 against PyTorch).
FLATBUFFER_LIMIT_BYTES = 2 * 1024**3
# The fp16 safety check interprets the program op by op on the CPU: past this, skipped (as the
# Core ML target's base fp16 check)
FP16_CHECK_MAX_BYTES = 256 * 1024**2
# CPU profiles' files get the GPU's placement too (informational) up to this size; a GPU
# profile's file always does
GPU_CHECK_CPU_PROFILE_MAX_BYTES = 512 * 1024**2


def large_model_note(nbytes: int) -> str | None:
    """What an app team must know about a file past the flatbuffer limit (None below it)."""
    if nbytes <= FLATBUFFER_LIMIT_BYTES:
        return None
    return (f"{nbytes / 1024**3:.2f} GiB: past the 2 GiB flatbuffer limit, so the weights sit "
            "after the flatbuffer, addressed by buffer offsets; the app's LiteRT runtime must read "
            "that layout (ai-edge-litert 2.3 does; older TF Lite runtimes cannot)")


def export(req: ExportRequest) -> list[Artifact]:
    """The profile's base artifact: fp32, or fp16 weights where the profile asks for fp16."""
    program, io, example, profile = req.program, req.io, req.example, req.profile
    workdir, stem, param_bytes = req.workdir, req.stem, req.param_bytes
    # the fp16 evidence below reads the program again (small models on a GPU profile)
    release = req.consume_program and not (runs_on_gpu(profile)
                                           and param_bytes <= FP16_CHECK_MAX_BYTES)
    if profile.precision == "fp32":
        out = workdir / f"{stem}.tflite"
        _convert(program, example, out, param_bytes, stem, release)
        art = _artifact(out, io, example, profile, "fp32",
                        {"method": "litert_torch.convert (fp32)"})
    else:
        with tempfile.TemporaryDirectory(prefix="mobilegen-tflite-") as tmp:
            fp32 = Path(tmp) / f"{stem}.tflite"
            _convert(program, example, fp32, param_bytes, stem, release)
            out = workdir / f"{stem}.{profile.precision}.tflite"
            details = _quantize(fp32, out, PrecisionSpec(kind="fp16"), [], io, example)
        art = _artifact(out, io, example, profile, profile.precision, details)
    if runs_on_gpu(profile):
        art.details.update(_fp16_evidence(req, art.details))
    return [art]


def runs_on_gpu(profile: TargetProfile) -> bool:
    """A LiteRT profile for the phone's GPU: validated on LiteRT's GPU accelerator
    (targets/litert_gpu.py) where this host has a Vulkan driver."""
    return profile.delegate == "gpu" or profile.accelerator == "gpu"


def _fp16_evidence(req: ExportRequest, details: dict[str, Any]) -> dict[str, Any]:
    """Phones run the GPU in fp16. Where the run here computed in f32 (no shader-f16 on the
    adapter, or no driver), the fp16 safety check (passes/fp16_safety.py: the model in fp16
    arithmetic in PyTorch, headroom to 65504 per layer) is the fp16 evidence, gated by
    min_fp16_headroom. It checks only: the GPU delegate has no per-layer fp32 (the app's
    enforce_f32 is whole-model), so a layer it would keep is a finding, not a fix."""
    from mobilegen.passes.fp16_safety import safe_fp16_spec

    used = details.get("litert_gpu", {}).get("precision", {}).get("precision", "unknown")
    if used == "f16":
        return {"fp16_evidence": "the GPU accelerator computed in fp16 here (see litert_gpu)"}
    if req.param_bytes > FP16_CHECK_MAX_BYTES:
        return {"fp16_evidence": f"the GPU ran {used} here; the fp16 safety check was skipped "
                f"({req.param_bytes / 1e6:.0f} MB of fp32 weights; `mobilegen sensitivity` runs "
                "it on its own)"}
    feeds = list(req.calibration) or [req.io.feeds(req.example)]
    _, summary = safe_fp16_spec(req.program, PrecisionSpec("fp16"), feeds)
    return {"fp16_safety": summary,
            "fp16_evidence": f"the GPU ran {used} here (phones default to fp16): fp16 "
                             "arithmetic checked in PyTorch instead (fp16_safety)"}


def supports(spec: PrecisionSpec) -> str | None:
    """None if this target can produce `spec`, else why not (shown in the report row)."""
    if spec.kind == "int8" and spec.mode == "static" and spec.calibration_method != "minmax":
        return (f"LiteRT static int8 calibrates min/max ranges only: ai-edge-quantizer 0.10 has "
                f"no {spec.calibration_method} calibration (use calibration_method = \"minmax\")")
    if spec.kind in ("fp16", "int8"):
        return None
    return (f"{spec.kind} is a Core ML weight compression; LiteRT has no palettized weight "
            "format (use int8 weight_only for a smaller .tflite)")


def export_precision(req: ExportRequest, spec: PrecisionSpec) -> list[Artifact]:
    """{stem}.{tag}.tflite from the fp32 .tflite (converted here when `export` did not leave
    one, e.g. for an fp16 profile); inputs and outputs stay float32."""
    program, io, example, profile = req.program, req.io, req.example, req.profile
    workdir, stem, param_bytes = req.workdir, req.stem, req.param_bytes
    calibration = list(req.calibration)
    reason = supports(spec)
    if reason:
        raise ExportError(f"{profile.name}: {reason}")
    if spec.kind == "int8" and spec.mode == "static" and not calibration:
        raise ExportError(f"int8 static for {stem}: no calibration feeds were collected")
    out = workdir / f"{stem}.{spec.tag}.tflite"
    if spec.kind == "fp16" and profile.precision == "fp16":
        return [base_is_already(stem, spec.tag, profile, f"{stem}.fp16.tflite",
                                "has fp16 weights")]
    fp32 = workdir / f"{stem}.tflite"
    if profile.precision == "fp32" and fp32.is_file():
        details = _quantize(fp32, out, spec, calibration, io, example, program)
    else:
        with tempfile.TemporaryDirectory(prefix="mobilegen-tflite-") as tmp:
            fp32 = Path(tmp) / f"{stem}.tflite"
            _convert(program, example, fp32, param_bytes, stem)
            details = _quantize(fp32, out, spec, calibration, io, example, program)
    return [_artifact(out, io, example, profile, spec.tag, details)]


# ---------------------------------------------------------------- conversion


def _convert(program: Any, example: tuple[Any, ...], out: Path, param_bytes: int,
             stem: str, release: bool = False) -> None:
    """Lower the captured program at the example's (fixed) shapes (any size: see
    FLATBUFFER_LIMIT_BYTES). `release`: the caller reads the program no more, so its weights
    are freed once litert-torch has copied them (_weights_released_once_lowered)."""
    import litert_torch

    module = program.module()  # the same capture every target lowers from
    with contextlib.suppress(NotImplementedError, RuntimeError):
        module.eval()  # litert-torch warns about (and keeps) training mode otherwise
    try:
        with contextlib.redirect_stdout(sys.stderr), _finite_weights_read_only(), \
                no_pre_convert_decompositions(), \
                _weights_released_once_lowered(program if release else None):
            edge = litert_torch.convert(module, tuple(example))  # prints progress on stdout
            edge.export(str(out))
    except Exception as e:
        first = first_line(e)
        raise ExportError(f"litert_torch.convert failed for {stem}: {first}") from e


@contextlib.contextmanager
def no_pre_convert_decompositions() -> Any:
    """litert-torch 0.10 runs the core-ATen decompositions twice: once right after its
    torch.export (export_torch_signature) and again when it lowers to MLIR (pre_lower_decomp,
    a superset of the first table). Each is a full AOTAutograd retrace. The first is skipped
    here, as litert-torch's own V2 converter skips it (`run_decompositions=False`); its FX
    passes then run on the un-decomposed graph, as they do in V2. Measured on SD-1.5's UNet
    topology at widths 160-640 (220M parameters): convert 48.9 -> 41.7 s, the .tflite
    byte-identical (`cmp`)."""
    from litert_torch._convert import core

    export_signature = core.export_torch_signature

    def without_first_decomposition(sig: Any, **kwargs: Any) -> Any:
        return export_signature(sig, **{**kwargs, "run_decompositions": False})

    core.export_torch_signature = without_first_decomposition
    try:
        yield
    finally:
        core.export_torch_signature = export_signature


@contextlib.contextmanager
def _finite_weights_read_only() -> Any:
    """litert-torch 0.10 clamps every float weight it inlines to its dtype's range, in place
    (inline_consts._clamp_inf_values: only an inf changes). On a capture whose weights are
    mapped from its file (export/isolated.load_capture) the in-place write copies every page:
    12.7 s for SD-1.5's UNet. A weight without an inf is passed on unwritten (read once by
    isinf), the same values; one with an inf goes to litert-torch's clamp."""
    import torch
    from litert_torch.backend import inline_consts

    clamp = inline_consts._clamp_inf_values

    def clamp_if_inf(tensor: torch.Tensor) -> torch.Tensor:
        if torch.is_floating_point(tensor) and not bool(torch.isinf(tensor).any()):
            return tensor
        return clamp(tensor)

    inline_consts._clamp_inf_values = clamp_if_inf
    try:
        yield
    finally:
        inline_consts._clamp_inf_values = clamp


@contextlib.contextmanager
def _weights_released_once_lowered(program: Any | None) -> Any:
    """litert-torch 0.10 copies every weight into the MLIR module it lowers to (DenseElementsAttr)
    and its TFLite passes then add about one more copy, while the torch tensors stay alive
    beside both until convert() returns (its own list of exported programs holds them). Given
    the caller's `program` (which nobody reads afterwards), each weight the lowering inlined is
    released as soon as the MLIR module holds its copy, as litert-torch's own V2 converter does
    for delete_in_memory_params: the storage resized to nothing where torch owns it, else (a
    capture read back by torch.export.load) every tensor object holding it emptied. Measured
    on a reduced-width SD UNet, 0.82 GB of weights (benchmarks/bench_litert_memory.py): the
    conversion's peak 3.30 -> 2.59 GB, the file byte-identical."""
    if program is None:
        yield
        return
    import torch
    from litert_torch.backend import export as backend_export

    inner = backend_export.exported_program_to_mlir

    def lower_then_release(exported_program: Any, *args: Any, **kwargs: Any) -> Any:
        weights = program_weights(program) + program_weights(exported_program)
        lowered = inner(exported_program, *args, **kwargs)
        # a weight still passed as a graph input (not inlined) is read at run time: kept
        inputs = {t.untyped_storage().data_ptr() for t in lowered.state_dict.values()
                  if isinstance(t, torch.Tensor)}
        release_weights(weights, keep=inputs)
        return lowered

    backend_export.exported_program_to_mlir = lower_then_release
    try:
        yield
    finally:
        backend_export.exported_program_to_mlir = inner


def _quantize(src: Path, dst: Path, spec: PrecisionSpec, calibration: list[dict[str, np.ndarray]],
              io: ModelIO, example: tuple[Any, ...], program: Any = None) -> dict[str, Any]:
    from ai_edge_quantizer import quantizer, recipe
    from ai_edge_quantizer.recipe import AlgorithmName, TFLOperationName

    qt = quantizer.Quantizer(str(src))
    calib_result = None
    extra: dict[str, Any] = {}
    if spec.kind == "fp16":
        qt.add_weight_only_config(regex=".*", operation_name=TFLOperationName.ALL_SUPPORTED,
                                  num_bits=16, algorithm_key=AlgorithmName.FLOAT_CASTING)
        method = "ai-edge-quantizer float casting: fp16 weights, fp32 compute and I/O"
    elif spec.mode == "weight_only":
        qt.load_quantization_recipe(recipe.weight_only_wi8_afp32())
        method = "ai-edge-quantizer weight_only_wi8_afp32: int8 per-channel weights, fp32 compute"
    elif spec.mode == "dynamic":
        qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        method = ("ai-edge-quantizer dynamic_wi8_afp32: int8 per-channel weights, activations "
                  "quantized per call")
    else:
        if program is None:
            raise ExportError(f"{spec.tag} for {src.name}: static int8 needs the captured program")
        qt, calib_result, method, extra = _static(src, spec, calibration, io, example, program)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            qt.quantize(calib_result).export_model(str(dst), overwrite=True)
    except Exception as e:
        first = first_line(e)
        raise ExportError(f"{spec.tag} quantization failed for {src.name}: {first}") from e
    return {"method": method, **extra}


def _static(src: Path, spec: PrecisionSpec, calibration: list[dict[str, np.ndarray]],
            io: ModelIO, example: tuple[Any, ...], program: Any) -> tuple[Any, Any, str, dict]:
    """The static quantizer for `spec`, its activation ranges, method line and details; with
    `spec.target_step_psnr_db`, after the sensitivity plan has chosen what else stays float."""
    batch = int(example[0].shape[0])
    groups = [[_signature_feeds(chunk, io, src) for chunk in _chunks(feed, io, batch)]
              for feed in calibration]
    feeds = [chunk for group in groups for chunk in group]
    full = static_plan(program, spec)
    calib_result = calibrate_min_max(_static_quantizer(src, full["layers"], spec), src, feeds)
    checks: dict[str, Any] = {}
    if spec.target_step_psnr_db is not None:
        sens = sensitivity_plan(src, spec, full, groups, calib_result)
        checks["sensitivity_plan"] = sens
        spec = replace(spec, keep_float=(*spec.keep_float, *sens["keep_float"]))
    plan = static_plan(program, spec)
    method = (f"ai-edge-quantizer static W8A{spec.activation_bits}: FULLY_CONNECTED and "
              "CONV_2D (per-channel symmetric int8 weights, activation ranges: the min and "
              f"max over all {len(feeds)} calibration calls along sampling trajectories)")
    details = {"kept_float": plan["kept"], "quantized_layers": plan["quantized"],
               "kept_float_ops": "every op other than FULLY_CONNECTED and CONV_2D: adds, "
                                 "norms, softmax, BATCH_MATMUL of attention, sin/cos", **checks}
    return _static_quantizer(src, plan["layers"], spec), calib_result, method, details


def _static_quantizer(src: Path, layers: list[Any], spec: PrecisionSpec) -> Any:
    """An ai-edge-quantizer Quantizer with static int8 on exactly `layers` (StaticLayer)."""
    from ai_edge_quantizer import quantizer
    from ai_edge_quantizer.recipe import TFLOperationName

    qt = quantizer.Quantizer(str(src))
    for op in (TFLOperationName.FULLY_CONNECTED, TFLOperationName.CONV_2D):
        regex = "|".join(sorted({x.node for x in layers if x.op == op.value})) or "^$"
        qt.add_static_config(regex=regex, operation_name=op,
                             activation_num_bits=spec.activation_bits, weight_num_bits=8)
    return qt


@dataclass(frozen=True)
class StaticLayer:
    """One layer static int8 may quantize, as passes.sensitivity reads a layer: `node` is its
    pattern over litert-torch tensor names, `op` the TFLite op, `path` the module path."""

    node: str
    op: str
    path: str


class LiteStudy:
    """passes.sensitivity's Study over a .tflite: quantizes a subset of layers (ai-edge-quantizer,
    the ranges calibrated once) and scores it in the LiteRT interpreter against the fp32 file,
    one PSNR per calibration feed (its batch-sized calls joined)."""

    def __init__(self, src: Path, spec: PrecisionSpec, layers: list[StaticLayer],
                 weights: dict[str, int], groups: list[list[dict[str, np.ndarray]]],
                 calib_result: Any, work: Path) -> None:
        self.src, self.spec, self.layers, self.weights = src, spec, layers, weights
        self.validation, self.calib, self.work, self.runs = groups, calib_result, work, 0
        self.reference = _outputs(src, groups)

    def quantized(self, layers: list[StaticLayer]) -> tuple[list[float], Path]:
        from mobilegen.passes.sensitivity import psnrs

        self.runs += 1
        out = self.work / f"q{self.runs % 2}.tflite"
        with contextlib.redirect_stdout(sys.stderr):
            _static_quantizer(self.src, layers, self.spec).quantize(self.calib).export_model(
                str(out), overwrite=True)
        return psnrs(self.reference, _outputs(out, self.validation)), out


def _outputs(path: Path, groups: list[list[dict[str, np.ndarray]]]) -> list[np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path), num_threads=2).get_signature_runner(SIGNATURE)
    name = next(iter(runner.get_output_details()))
    return [np.concatenate([runner(**call)[name] for call in group]) for group in groups]


def sensitivity_plan(src: Path, spec: PrecisionSpec, full: dict[str, Any],
                     groups: list[list[dict[str, np.ndarray]]], calib_result: Any,
                     ) -> dict[str, Any]:
    """passes.sensitivity's layer scores and greedy plan, measured in LiteRT: which of the
    layers of `full` (static_plan before the plan's own choices) stay float for the worst
    per-feed PSNR to reach `spec.target_step_psnr_db`, scored on the calibration trajectory
    feeds as the ONNX target scores."""
    from mobilegen.passes.sensitivity import greedy_plan, layer_sensitivity

    assert spec.target_step_psnr_db is not None
    with tempfile.TemporaryDirectory(prefix="mobilegen-tflite-sensitivity-") as tmp:
        study = LiteStudy(src, spec, full["layers"], full["weights"], groups, calib_result,
                          Path(tmp))
        scores = layer_sensitivity(study)
        plan = greedy_plan(study, scores, spec.target_step_psnr_db)
    plan["scored_on"] = "calibration trajectory feeds (LiteRT interpreter)"
    plan["most_sensitive"] = [asdict(s) for s in scores[:8]]
    return plan


def calibrate_min_max(qt: Any, src: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Activation ranges for `qt`'s recipe: the min and max of each tensor over ALL `feeds`.

    ai-edge-quantizer 0.10's own `Quantizer.calibrate` merges calls by a moving average
    (0.95 old + 0.05 new, qsv_utils.moving_average_update), so its range is that of roughly the
    last 20 calls: trajectory feeds arrive from t=1000 down to t=0, and the large activations of
    the noisy early steps were clipped (digits STOIC: the calibrated range of a block's to_out
    output was [-1.7, 2.0] where the sampling run reaches [-6.9, 7.0]; image 28.4 dB at W8A8 and
    28.7 dB at W8A16, 45.6 / 60.5 dB with min/max, measured). The same Calibrator, given a
    running min/max as its update, is what ONNX Runtime's MinMax calibrator computes."""
    from ai_edge_quantizer import calibrator, recipe_manager

    def running_min_max(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        return {**new, "min": np.minimum(old["min"], new["min"]),
                "max": np.maximum(old["max"], new["max"])}

    recipes = recipe_manager.RecipeManager()
    recipes.load_quantization_recipe(qt.get_quantization_recipe())
    calib = calibrator.Calibrator(str(src), num_threads=2, qsv_update_func=running_min_max)
    calib.calibrate({SIGNATURE: feeds}, recipes)
    return calib.get_model_qsvs()


def static_plan(program: Any, spec: PrecisionSpec) -> dict[str, Any]:
    """What static int8 quantizes and leaves float, from the captured program (the same rule as
    the ONNX target): linear/conv layers off the image path (time/conditioning), the stem and
    head outside the residual trunk (without residual adds: the first and the last two weight
    layers), and `spec.keep_float` stay float. Returns the quantized layers
    (StaticLayer: a pattern over litert-torch tensor names), their weight counts, and the kept
    layers with reasons."""
    graph = program.module().graph
    image = next(n for n in graph.nodes if n.op == "placeholder")
    reach = {image}
    for n in graph.nodes:  # values only: sym_size(x) carries the batch size, not the image
        if (n.op == "call_function" and "sym_size" not in str(n.target)
                and any(a in reach for a in n.all_input_nodes)):
            reach.add(n)
    weighted = [n for n in graph.nodes if n.op == "call_function"
                and getattr(n.target, "__name__", "").split(".")[0] in ("linear", "conv2d")]
    stack = {n: [p for p, _ in (n.meta.get("nn_module_stack") or {}).values() if p]
             for n in weighted}
    path = {n: stack[n][-1] if stack[n] else "" for n in weighted}
    on_image = [n for n in weighted if n in reach]
    outside = _outside_trunk(graph, reach)
    # Without residual Adds: the first layer and the last two, as LiteRT quantizes a
    # FULLY_CONNECTED's output too, so the predicted noise itself would be int8 (digits STOIC
    # with min/max ranges: decoder_proj quantized gave 12.3 dB image PSNR against 45.6, measured).
    edges = ({n for n in on_image if n in outside} if outside
             else {on_image[0], *on_image[-2:]} if on_image else set())
    kept = [{"layer": path[n], "reason": "time/conditioning path (depends only on t and the "
             "label or context)"} for n in weighted if n not in reach]
    kept += [{"layer": path[n], "reason": EDGE_REASON if outside else "first weight layer / "
              "output head (the model has no residual Add)"} for n in on_image if n in edges]
    kept += [{"layer": path[n], "reason": "kept float by the recipe or the sensitivity plan"}
             for n in on_image if matches(path[n], spec.keep_float) and n not in edges]
    chosen = [n for n in on_image if n not in edges and not matches(path[n], spec.keep_float)]
    layers = [StaticLayer(module_regex(stack[n]), "CONV_2D" if "conv" in str(n.target)
                          else "FULLY_CONNECTED", path[n]) for n in chosen]
    return {"quantized": [path[n] for n in chosen], "kept": kept, "layers": layers,
            "weights": {x.node: _numel(n.args[1]) for x, n in zip(layers, chosen, strict=True)}}


def _outside_trunk(graph: Any, reach: set[Any]) -> set[Any]:
    """The ONNX target's stem/head rule (onnx_precision.stem_and_head) on the FX graph: what
    both inputs of the first residual add (both inputs on the image path) are computed from,
    and everything after the last one. Empty without residual adds."""
    adds = [n for n in graph.nodes if n.op == "call_function"
            and str(n.target).startswith("aten.add") and len(n.all_input_nodes) == 2
            and all(a in reach for a in n.all_input_nodes)]
    if not adds:
        return set()
    first, last = adds[0], adds[-1]
    a, b = first.all_input_nodes
    outside = _fx_ancestors(a) & _fx_ancestors(b)
    tail = {last}
    for n in list(graph.nodes)[list(graph.nodes).index(last) + 1:]:
        if any(i in tail for i in n.all_input_nodes):
            tail.add(n)
            outside.add(n)
    return outside


def _fx_ancestors(node: Any) -> set[Any]:
    found: set[Any] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n not in found:
            found.add(n)
            stack.extend(n.all_input_nodes)
    return found


def _numel(node: Any) -> int:
    val = getattr(node, "meta", {}).get("val")
    return int(val.numel()) if val is not None else 0


def module_regex(stack: list[str]) -> str:
    """A module, given as the module paths of its call stack (["blocks.0", "blocks.0.attn",
    "blocks.0.attn.to_q"]), as a pattern over litert-torch tensor names, which name each called
    module `<Class>_<its last path part>` ("StoicBlock_0/Attention_attn/linear.Linear_to_q")."""
    segs = [rf"[^/;]*_{re.escape(p.rsplit('.', 1)[-1])}" for p in stack]
    return r"(?:^|/)" + "/".join(segs) + r"(?:;|/|$)"


# ---------------------------------------------------------------- inspection


def operators(path: Path) -> tuple[dict[str, int], list[str]]:
    """Operator use counts in the flatbuffer, and the ops outside the TFLite builtin set
    (custom ops by their custom code, unknown builtin codes by number)."""
    from ai_edge_litert import schema_py_generated as fb

    buf = path.read_bytes()
    model = fb.Model.GetRootAs(buf, 0)
    code_names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    names: list[str] = []
    custom: list[str] = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())  # schema v3a keeps both fields
        name = code_names.get(code, f"UNKNOWN_BUILTIN_{code}")
        if name == "CUSTOM":
            name = f"CUSTOM:{(oc.CustomCode() or b'?').decode()}"
        if name.startswith(("CUSTOM:", "UNKNOWN_BUILTIN_")):
            custom.append(name)
        names.append(name)
    counts: Counter[str] = Counter()
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for j in range(graph.OperatorsLength()):
            counts[names[graph.Operators(j).OpcodeIndex()]] += 1
    return dict(sorted(counts.items())), sorted(set(custom))


def _artifact(out: Path, io: ModelIO, example: tuple[Any, ...], profile: TargetProfile,
              precision: str, details: dict[str, Any]) -> Artifact:
    ops, custom = operators(out)
    batch = int(example[0].shape[0])
    details = {
        **details,
        "operators": ops,
        "custom_ops": custom,
        "fixed_shapes": {spec.name: list(t.shape) for spec, t in zip(io.inputs, example,
                                                                      strict=True)},
        "batch_note": (f"litert-torch cannot keep a dynamic batch: the file takes batch {batch}; "
                       "the host runner splits or pads other batches into calls of that size"),
        "input_order": [f"args_{i} = {n}" for i, n in enumerate(io.input_names)],
        "host_delegate": "XNNPACK (CPU)",
        "app_delegate": profile.delegate,
    }
    if note := large_model_note(out.stat().st_size):
        details["large_model_layout"] = note
    details["coverage"] = [_gpu_coverage(out, sum(ops.values()), io, example, profile, details)]
    return Artifact(out.name, "tflite", profile.name, "litert", precision, details=details)


def _gpu_coverage(out: Path, op_count: int, io: ModelIO, example: tuple[Any, ...],
                  profile: TargetProfile, details: dict[str, Any]) -> dict[str, Any]:
    """The `litert-gpu` coverage entry: from LiteRT's GPU accelerator where this host has a
    Vulkan driver (targets/litert_gpu.py; a GPU profile also records the precision it computed
    in), else the analyzer's (targets/coverage.py), whose note then says why the accelerator
    was not asked."""
    from mobilegen.targets import litert_gpu
    from mobilegen.targets.vulkan_driver import find_driver

    gpu_profile = runs_on_gpu(profile)
    driver = find_driver()
    big = out.stat().st_size > GPU_CHECK_CPU_PROFILE_MAX_BYTES and not gpu_profile
    if not driver.found or big:
        fallback = litert_gpu_coverage(out, op_count)
        why = driver.reason if not driver.found else (
            f"past {GPU_CHECK_CPU_PROFILE_MAX_BYTES >> 20} MB on a CPU profile")
        fallback["note"] = f"GPU accelerator not run ({why}); analyzer: {fallback['note']}"
        if gpu_profile:
            details["litert_gpu"] = {"gpu_run": f"not run: {why}"}
        return fallback
    feeds = _signature_feeds(io.feeds(example), io, out) if gpu_profile else None
    found = litert_gpu.check(out, op_count, feeds)
    if gpu_profile:
        details["litert_gpu"] = found.details
    return found.coverage


# ---------------------------------------------------------------- running


def _chunks(feeds: dict[str, np.ndarray], io: ModelIO, batch: int) -> list[dict[str, np.ndarray]]:
    """Split feeds along the batch axis into pieces of exactly `batch` (the last one padded by
    repeating its final sample)."""
    n = len(feeds[io.input_names[0]])
    out = []
    for start in range(0, n, batch):
        piece = {}
        for name in io.input_names:
            part = feeds[name][start:start + batch]
            if len(part) < batch:
                pad = np.repeat(part[-1:], batch - len(part), axis=0)
                part = np.concatenate([part, pad], axis=0)
            piece[name] = part
        out.append(piece)
    return out


def _signature_feeds(feeds: dict[str, np.ndarray], io: ModelIO, path: Path,
                     dtypes: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Our names -> args_i, cast to the file's input dtypes (int64 labels become int32)."""
    if dtypes is None:
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=str(path)).get_signature_runner(SIGNATURE)
        dtypes = {k: v["dtype"] for k, v in runner.get_input_details().items()}
    return {f"args_{i}": np.ascontiguousarray(feeds[n]).astype(dtypes[f"args_{i}"], copy=False)
            for i, n in enumerate(io.input_names)}


def load(path: Path, threads: int, accelerator: str = "cpu") -> Runner:
    """A runner taking our named feeds at any batch size: the LiteRT interpreter (XNNPACK), or
    with accelerator "gpu" LiteRT's GPU accelerator (targets/litert_gpu.py) where this host has
    a Vulkan driver; without one, XNNPACK, and the runner's `row_details` say why."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: artifact not found")
    if accelerator == "gpu":
        from mobilegen.targets.litert_gpu import GpuWorkerError
        from mobilegen.targets.vulkan_driver import find_driver

        driver = find_driver()
        why = driver.reason
        if driver.found:
            try:
                return GpuBatchedRunner(path, driver)
            except GpuWorkerError as e:
                why = str(e)
        runner = _xnnpack(path, threads)
        runner.gpu_unavailable = why
        runner.row_details = {"host_delegate": "XNNPACK (CPU)",
                              "gpu_run": f"not run on the GPU accelerator: {why}; validated "
                                         "on XNNPACK (CPU) instead"}
        return runner
    return _xnnpack(path, threads)


def _xnnpack(path: Path, threads: int) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    runner = interpreter.get_signature_runner(SIGNATURE)
    inputs = runner.get_input_details()
    dtypes = {k: v["dtype"] for k, v in inputs.items()}
    output = next(iter(runner.get_output_details()))
    # One call on zeros now: XNNPACK is applied (and announces itself on stderr) at the first
    # invoke, which belongs to loading, not to the caller's first timed or validated run. Not
    # for a big model (export/validation_scope.py): its validation times nothing and runs the
    # parity calls first, which warm it; the call would cost one full inference (10 s of the
    # 20 s open of SD-1.5's UNet).
    from mobilegen.export.validation_scope import BIG_MODEL_BYTES

    if path.stat().st_size <= BIG_MODEL_BYTES:
        runner(**{k: np.zeros(v["shape"], v["dtype"]) for k, v in inputs.items()})
    batch = int(inputs["args_0"]["shape"][0])
    return _Batched(path, lambda call: runner(**call)[output], dtypes, batch)


class _Batched:
    """Our named feeds (in signature order: x, t, [y | context]) at any batch, as calls of the
    file's fixed batch (the last padded by repeating its final sample)."""

    def __init__(self, path: Path, call: Any, dtypes: dict[str, Any], batch: int) -> None:
        self.path, self.call, self.dtypes, self.batch = path, call, dtypes, batch
        self.names = [f"args_{i}" for i in range(len(dtypes))]
        self.row_details: dict[str, Any] = {}
        self.gpu_unavailable = ""

    def chunks(self, feeds: dict[str, np.ndarray]) -> list[tuple[dict[str, np.ndarray], int]]:
        ordered = list(feeds)
        if len(ordered) != len(self.names):
            raise ExportError(f"{self.path.name}: expects {len(self.names)} inputs, got {ordered}")
        n, batch = len(feeds[ordered[0]]), self.batch
        out = []
        for start in range(0, n, batch):
            call = {}
            for arg, key in zip(self.names, ordered, strict=True):
                part = feeds[key][start:start + batch]
                if len(part) < batch:
                    part = np.concatenate([part, np.repeat(part[-1:], batch - len(part), 0)])
                call[arg] = np.ascontiguousarray(part).astype(self.dtypes[arg], copy=False)
            out.append((call, min(batch, n - start)))
        return out

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        outs = [self.call(call)[:keep] for call, keep in self.chunks(feeds)]
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)


class GpuBatchedRunner(_Batched):
    """LiteRT's GPU accelerator as a Runner (litert_gpu.GpuRunner in its child process), with
    `host_time` (timed inside the child) and the `row_details` the export records."""

    def __init__(self, path: Path, driver: Any) -> None:
        from mobilegen.targets.litert_gpu import GpuRunner

        self.gpu = GpuRunner(path, driver)
        dtypes = {k: np.dtype(v["dtype"]) for k, v in self.gpu.inputs.items()}
        super().__init__(path, self.gpu, dtypes, int(self.gpu.inputs["args_0"]["shape"][0]))
        where = "SwiftShader, software Vulkan on this host's CPU" if self.gpu.software else (
            "this host's Vulkan GPU")
        self.host_time_label = (
            "SwiftShader host time: LiteRT's GPU accelerator on a software Vulkan driver on the "
            "host CPU, not device latency" if self.gpu.software else
            "host GPU time (this machine's Vulkan GPU), not a phone's latency")
        self.row_details = {"host_delegate": f"LiteRT GPU accelerator ({self.gpu.accelerators}; "
                                             f"WebGPU/Dawn on {where})",
                            "gpu_runner": self.gpu.describe()}

    def host_time(self, feeds: dict[str, np.ndarray], warmup: int, runs: int) -> dict[str, Any]:
        """Median / p90 / min ms of one call of the file's batch (feeds padded to it), run and
        read back inside the accelerator's process."""
        call, _ = self.chunks(feeds)[0]
        ms = sorted(self.gpu.host_time(call, warmup, runs))
        return {"median_ms": float(np.median(ms)), "p90_ms": ms[min(len(ms) - 1,
                round(0.9 * (len(ms) - 1)))], "min_ms": ms[0], "runs": runs, "warmup": warmup,
                "batch": self.batch, "label": self.host_time_label}

    def close(self) -> None:
        self.gpu.close()
