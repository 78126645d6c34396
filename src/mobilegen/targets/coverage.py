"""Accelerator coverage: what each vendor's own tool, run here on Linux, says about where an
artifact will run on the phone. Every entry has one shape (shared with the QNN HTP target):

    {"accelerator": "nnapi" | "coreml-neuralnetwork" | "coreml-mlprogram" | "litert-gpu" |
                    "coreml-ane" | "coreml-gpu" | "qnn-htp",
     "tool": the vendor tool that said it, "verdict": "full" | "partial" | "none" | "unknown",
     "supported_nodes": int | None, "total_nodes": int | None,
     "unsupported_ops": op types as the tool names them, "note": one line}

plus tool-specific keys (the ORT checker's own YES/MAYBE/NO, its fixed-shape analysis). Nothing
here knows which op a delegate supports: every op named comes from the vendor tool. Where a tool
cannot tell on this host, the verdict is "unknown" and the note says why.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from importlib.resources import files
from pathlib import Path
from typing import Any

from mobilegen.errors import first_line

ORT_TOOL = "onnxruntime check_onnx_model_mobile_usability (mobile_helpers.usability_checker)"
LITERT_TOOL = "ai_edge_litert ModelAnalyzer (gpu_compatibility=True)"
COREML_TOOL = "coremltools (ML program inspection)"
# ORT execution providers the usability checker knows: accelerator key -> (its name, config file)
ORT_EPS = {
    "nnapi": ("NNAPI", None),
    "coreml-neuralnetwork": ("CoreML NeuralNetwork", "coreml_supported_neuralnetwork_ops.md"),
    "coreml-mlprogram": ("CoreML MLProgram", "coreml_supported_mlprogram_ops.md"),
}
# A .tflite the GPU-compatibility rules reject (a PAD with 2x2 paddings: the rules take 4x2 or
# 3x2 only). If the analyzer calls it compatible, its GPU check is not in this build.
LITERT_GPU_CANARY = Path(str(files("mobilegen") / "data" / "coverage" / "litert_gpu_canary.tflite"))


def entry(accelerator: str, tool: str, verdict: str, supported: int | None, total: int | None,
          unsupported: Iterable[str], note: str, **extra: Any) -> dict[str, Any]:
    """One coverage entry in the shared schema."""
    return {"accelerator": accelerator, "tool": tool, "verdict": verdict,
            "supported_nodes": supported, "total_nodes": total,
            "unsupported_ops": sorted(set(unsupported)), "note": note, **extra}


def verdict_of(supported: int, total: int) -> str:
    return "full" if supported == total else "none" if supported == 0 else "partial"


# ---------------------------------------------------------------- ONNX Runtime mobile


def _op_name(op: str) -> str:
    """'ai.onnx:Gather' -> 'Gather'; other domains keep their prefix ('com.microsoft:Gelu')."""
    return op.split(":", 1)[1] if op.startswith("ai.onnx:") else op


def _partitions(model: Any, accelerator: str, fixed: bool) -> Any:
    from onnxruntime.tools.mobile_helpers import usability_checker as uc

    if accelerator == "nnapi":
        return uc.check_nnapi_partitions(model, require_fixed_input_sizes=not fixed)
    return uc.check_coreml_partitions(model, not fixed, ORT_EPS[accelerator][1])


def _ort_entry(model: Any, accelerator: str, dynamic: bool) -> dict[str, Any]:
    as_is = _partitions(model, accelerator, fixed=False)
    fixed = _partitions(model, accelerator, fixed=True) if dynamic else as_is
    ops = [_op_name(o) for o in as_is.unsupported_ops]
    dyn = as_is.nodes_unsupported_due_to_dynamic_input
    note = (f"{as_is.num_partitions} partition(s)"
            + (f"; {dyn} node(s) not taken because an input shape is dynamic" if dyn else "")
            + (f"; {as_is.num_unsupported_nodes_due_to_rank} for tensor rank"
               if as_is.num_unsupported_nodes_due_to_rank else ""))
    return entry(
        accelerator, ORT_TOOL, verdict_of(as_is.num_supported_nodes, as_is.num_nodes),
        as_is.num_supported_nodes, as_is.num_nodes, ops, note,
        checker_verdict=as_is.suitability().name, partitions=as_is.num_partitions,
        fixed_shapes={"verdict": verdict_of(fixed.num_supported_nodes, fixed.num_nodes),
                      "checker_verdict": fixed.suitability().name,
                      "supported_nodes": fixed.num_supported_nodes, "total_nodes": fixed.num_nodes,
                      "unsupported_ops": sorted({_op_name(o) for o in fixed.unsupported_ops})})


def ort_coverage(onnx_path: Path) -> list[dict[str, Any]]:
    """ONNX Runtime's mobile usability checker, per execution provider, on `onnx_path` after
    the basic graph optimizations ORT applies at load (as the checker's own command does). Each
    entry also carries the checker's analysis with the dynamic shapes made fixed."""
    import onnx
    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    from onnxruntime.tools.onnx_model_utils import optimize_model

    with tempfile.TemporaryDirectory(prefix="mobilegen-coverage-") as tmp:
        optimized = Path(tmp) / onnx_path.name
        try:
            optimize_model(onnx_path, optimized, use_external_initializers=True)
            # The checker reads op types and shapes, never a weight's values, and the optimized
            # copy holds every initializer over 1 KB externally: the graph and its small
            # constants are shape-inferred alone (the checker's own ModelProtoWithShapeInfo
            # loads every weight and copies it twice through shape inference: 25 s and ~7 GB
            # for SD-1.5's UNet).
            graph = onnx.load(str(optimized), load_external_data=False)
            model = onnx.shape_inference.infer_shapes(graph, strict_mode=True)
        except Exception as e:  # the checker's own limits (e.g. models past 2 GB): no verdict
            why = f"the checker could not analyse this model: {type(e).__name__}: {first_line(e)}"
            return [entry(acc, ORT_TOOL, "unknown", None, None, (), why) for acc in ORT_EPS]
        dynamic_inputs, _ = uc.check_shapes(model.graph)
        return [_ort_entry(model, acc, bool(dynamic_inputs)) for acc in ORT_EPS]


def mobile_usability(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The checker's verdicts keyed by its EP names (the report's older `mobile_usability`
    view of the same run)."""
    names = {acc: name for acc, (name, _) in ORT_EPS.items()}
    out: dict[str, Any] = {}
    for e in entries:
        if e["accelerator"] in names and "checker_verdict" not in e:  # the checker failed
            out[names[e["accelerator"]]] = {"error": e["note"]}
        elif e["accelerator"] in names:
            out[names[e["accelerator"]]] = {
                "verdict": e["checker_verdict"],
                "verdict_fixed_shapes": e["fixed_shapes"]["checker_verdict"],
                "nodes_supported": f"{e['supported_nodes']}/{e['total_nodes']}",
                "partitions": e["partitions"], "unsupported_ops": e["unsupported_ops"]}
    return out


# ---------------------------------------------------------------- LiteRT GPU delegate


def litert_analyze(path: Path) -> tuple[bool, list[str], list[str]]:
    """(says compatible, the ops it flags, its warning lines) from LiteRT's model analyzer."""
    from ai_edge_litert import _pywrap_analyzer_wrapper as analyzer

    text = analyzer.ModelAnalyzer(str(path), True, True)
    warnings: list[str] = []
    flagged: list[str] = []
    last_op = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("Op#"):  # "Op#3 PAD(T#0, ...) -> [T#4]"
            last_op = stripped.split(" ", 1)[1].split("(", 1)[0]
        elif stripped.startswith("GPU COMPATIBILITY WARNING:"):
            warnings.append(stripped)
            if "has GPU delegate compatibility issues" not in stripped and last_op:
                flagged.append(last_op)
    return "looks compatible with GPU delegate" in text, flagged, warnings


def litert_gpu_coverage(path: Path, op_count: int) -> dict[str, Any]:
    """The LiteRT analyzer's GPU-delegate verdict. The analyzer is first asked about a file its
    GPU rules reject; when it calls that one compatible too, its verdict means nothing in this
    build and the entry says "unknown" (the delegate itself needs a GPU adapter to partition)."""
    compatible, flagged, warnings = litert_analyze(path)
    canary_compatible, _, _ = litert_analyze(LITERT_GPU_CANARY)
    said = "looks compatible with GPU delegate" if compatible else f"{len(warnings)} warning(s)"
    if canary_compatible:
        return entry("litert-gpu", LITERT_TOOL, "unknown", None, op_count, flagged,
                     "this ai-edge-litert build's analyzer has no GPU rules (it calls a 2-D PAD, "
                     "which the rules reject, compatible); it said: " + said, analyzer_said=said)
    if compatible:
        return entry("litert-gpu", LITERT_TOOL, "full", op_count, op_count, [],
                     "the analyzer found no GPU-incompatible op", analyzer_said=said)
    supported = max(op_count - len(flagged), 0)
    return entry("litert-gpu", LITERT_TOOL, verdict_of(supported, op_count), supported, op_count,
                 flagged, "; ".join(warnings)[:300], analyzer_said=said)


# ---------------------------------------------------------------- Core ML


def coreml_coverage(operations: dict[str, int], compute_units: str) -> dict[str, Any]:
    """Core ML decides per op at load time on the device which compute unit runs it; only
    MLComputePlan on macOS can say. Here: the ML program's op types and that statement."""
    accelerator = {"CPU_AND_GPU": "coreml-gpu"}.get(compute_units, "coreml-ane")
    ops = sorted(o for o in operations if o != "const")
    return entry(accelerator, COREML_TOOL, "unknown", None, sum(operations.values()), [],
                 "compute-unit placement needs macOS (MLComputePlan); the ML program's op types "
                 "are listed for review", program_ops=ops, compute_units=compute_units)
