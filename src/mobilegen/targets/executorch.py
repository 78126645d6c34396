"""ExecuTorch target: .pte programs lowered from the shared capture with
`to_edge_transform_and_lower` and the profile's partitioner (XNNPACK, Core ML, Qualcomm QNN,
Vulkan), run on this host by `executorch.runtime`.

What runs here: the pip runtime (executorch 1.5.1) registers the XnnpackBackend, QnnBackend and
OpenvinoBackend only. XNNPACK .pte files are validated like every runnable artifact (parity per
timestep, the sampling run's image PSNR, host latency, gates). Core ML .pte files need Apple's
runtime (macOS/iOS) and Vulkan .pte files a runtime built with the Vulkan backend: both are
lowered and their delegation coverage reported, marked not runnable with that reason. A QNN .pte
runs only where QNN's HTP libraries load (see `qnn_runtime_note`).

The .pte is captured at the example's batch (executorch_lower.py says why); other batch sizes are
split or padded by the runner, as for LiteRT.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mobilegen.errors import ExportError, first_line
from mobilegen.passes.precision import PrecisionSpec
from mobilegen.targets import executorch_lower as lowering
from mobilegen.targets.base import Artifact, ExportRequest, Runner
from mobilegen.targets.executorch_io import method_args
from mobilegen.targets.fixed_batch import multi_batch_runner

FORMATS = ("pte",)  # what export() writes (targets.base.Target)
HOST_BACKENDS = ("XnnpackBackend", "QnnBackend", "OpenvinoBackend")  # the pip runtime's
NOT_RUN = {
    "coreml": "the Core ML delegate runs in Apple's Core ML runtime (macOS/iOS); this host's "
              "executorch runtime has no CoreMLBackend: lowered and its delegation checked only",
    "vulkan": "the pip executorch runtime is built without the Vulkan backend (registered here: "
              "XnnpackBackend, QnnBackend, OpenvinoBackend): lowered and its delegation checked "
              "only",
}


def export(req: ExportRequest) -> list[Artifact]:
    """{stem}.pte at the profile's precision (fp32, or fp16 where the profile asks)."""
    profile = req.profile
    if profile.precision == "fp16" and profile.partitioner == "xnnpack":
        return export_precision(req, PrecisionSpec("fp16"), base=True)
    module = req.program.module()
    coded = _float_coded(module, req)
    out = req.workdir / f"{req.stem}.pte"
    details = _write(module, coded, req, out, profile.precision, tuple(req.example))
    return [_artifact(out, req, profile.precision, details)]


def _float_coded(module: Any, req: ExportRequest) -> tuple[int, ...]:
    """XNNPACK profiles take integer inputs that are only cast to float as float32
    (executorch_lower.float_code_inputs); other delegates take integers as they are."""
    if req.profile.partitioner != "xnnpack":
        return ()
    return lowering.float_code_inputs(module, tuple(req.example))


def _write(module: Any, coded: tuple[int, ...], req: ExportRequest, out: Path,
           precision: str, example: tuple[Any, ...]) -> dict[str, Any]:
    """Lower `module` (its example in the dtypes it takes) to {out}, one method per batch."""
    profile = req.profile
    batch_axis = all(s.shape and s.shape[0] == "batch" for s in req.io.inputs)
    programs = lowering.fixed_programs(module, example, batch_axis, coded)
    with contextlib.redirect_stdout(sys.stderr):  # the AOT compilers print progress on stdout
        _, buffer, cov = lowering.lower(programs, profile.partitioner, precision,
                                        profile.qnn_soc, req.stem)
    out.write_bytes(buffer)
    names = [s.name for s in req.io.inputs]
    deploy = deploy_entry(programs, names, coded, profile.partitioner)
    methods = {name: m["batch"] for name, m in deploy["methods"].items()}
    details: dict[str, Any] = {
        "method": f"executorch to_edge_transform_and_lower ({profile.partitioner} "
                  f"partitioner, {precision})", "coverage": [cov],
        "methods": methods,
        "fixed_shapes": {s.name: list(t.shape) for s, t in zip(req.io.inputs, req.example,
                                                                strict=True)},
        "batch_note": "methods by batch: " + ", ".join(f"{k} = {v}" for k, v in methods.items())
                      + "; the host runner splits other batches into calls of those sizes"}
    if coded:
        details["float_coded_inputs"] = [names[i] for i in coded]
    details["deploy"] = deploy
    return details


def deploy_entry(programs: dict[str, Any], names: list[str], coded: tuple[int, ...],
                 backend: str) -> dict[str, Any]:
    """What the manifest tells an app about a .pte: its methods, each method's input names,
    shapes and dtypes (float-coded integers say so), and the runtime it needs."""
    methods = {}
    for method, program in programs.items():
        methods[method] = {"batch": int(program.example_inputs[0][0].shape[0]), "inputs": [
            {"name": n, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
            for n, t in zip(names, program.example_inputs[0], strict=True)]}
    entry: dict[str, Any] = {
        "backend": backend, "methods": methods,
        "batch_note": "load the method whose batch fits (Module::load_method / "
                      "Program.load_method); a guided step is one call of batch 2 or two of 1"}
    if coded:
        entry["float_coded_inputs"] = [names[i] for i in coded]
        entry["float_coded_note"] = (
            "pass these integer inputs as floats of the dtype `methods` gives, holding the same "
            "integers (exact below 2**24 in float32, 2**11 in float16): XNNPACK has no integer "
            "ops, and the graph's only use of them was a cast to float")
    return entry


def _artifact(out: Path, req: ExportRequest, precision: str,
              details: dict[str, Any]) -> Artifact:
    backend = req.profile.partitioner
    runnable = backend in ("xnnpack", "qnn")
    if backend == "xnnpack":
        from mobilegen.targets.executorch_profile import etdump_profile

        details["etdump_profile"] = etdump_profile(out, list(req.example))
    if backend == "qnn":
        why = qnn_runtime_note(out)
        runnable = why is None
        if why:
            details["not_run"] = why
    elif not runnable:
        details["not_run"] = NOT_RUN[backend]
    return Artifact(out.name, "pte", req.profile.name, "executorch", precision,
                    runnable=runnable, details=details)


def qnn_runtime_note(path: Path) -> str | None:
    """None when this host's runtime loads the QNN .pte (QNN's HTP simulator), else the
    runtime's own error, in one line."""
    try:
        _method(path)
    except ExportError as e:
        return f"the executorch runtime could not load this QNN .pte here: {e}"
    return None


# ---------------------------------------------------------------- precision passes


def supports(spec: PrecisionSpec) -> str | None:
    """None if this target can produce `spec`, else why not (shown in the report row)."""
    if spec.kind == "palettize":
        return (f"{spec.kind} is a Core ML weight compression; XNNPACK has no palettized weight "
                "format (use int8 weight_only or dynamic)")
    if spec.kind == "int8" and spec.activation_bits != 8:
        return "XNNPACK's PT2E quantizer computes int8 activations only (W8A8)"
    if spec.kind == "int8" and spec.calibration_method != "minmax":
        return ("the XNNPACK quantizer's observers are min/max: no "
                f"{spec.calibration_method} calibration (use calibration_method = \"minmax\")")
    return None


def export_precision(req: ExportRequest, spec: PrecisionSpec, base: bool = False) -> list[Artifact]:
    """fp16: the capture in half precision (fp32 inputs and output, cast at the edges). int8:
    the XNNPACK PT2E quantizer (executorch_quant.py); static on the trajectory calibration feeds
    with the static rule's float layers, dynamic, or weight-only as dynamic. XNNPACK profiles
    only: another delegate's precision is its profile's."""
    from mobilegen.targets import executorch_quant as quant

    profile = req.profile
    if profile.partitioner != "xnnpack":  # a row saying why, not a failed export
        return [Artifact(f"{req.stem}.{spec.tag}", "none", profile.name, "executorch", spec.tag,
                         runnable=False, details={"skipped": (
                             f"precision passes run on XNNPACK profiles only; this profile "
                             f"lowers to {profile.partitioner} at {profile.precision}")})]
    reason = supports(spec)
    if reason:
        raise ExportError(f"{profile.name}: {reason}")
    if spec.kind == "fp16":
        module, coded, example, details = quant.half(req.program, tuple(req.example), req.io)
    else:
        module, details = quant.int8(req.program, tuple(req.example), spec,
                                     list(req.calibration), req.io, req.stem)
        coded, example = _float_coded(module, req), tuple(req.example)
    out = req.workdir / (f"{req.stem}.pte" if base else f"{req.stem}.{spec.tag}.pte")
    details = {**details, **_write(module, coded, req, out, spec.tag, example)}
    return [_artifact(out, req, profile.precision if base else spec.tag, details)]


# ---------------------------------------------------------------- running


def _program(path: Path, etdump: bool = False) -> Any:
    from executorch.runtime import Runtime

    if not Path(path).is_file():
        raise ExportError(f"{path}: artifact not found")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return Runtime.get().load_program(str(path), enable_etdump=etdump)
    except Exception as e:  # the runtime raises RuntimeError with its error code
        raise ExportError(f"{Path(path).name}: {first_line(e)}") from e


def _method(path: Path, name: str = "forward") -> Any:
    return _load(_program(path), path, name)


def load(path: Path, threads: int) -> Runner:
    """The .pte's methods as one Runner: named numpy feeds in signature order, any batch, split
    into calls of the methods' batch sizes (largest first; the last call padded only when no
    method fits). Integer feeds for float32 inputs (float-coded labels, token ids) are cast."""
    program = _program(path)
    runs: dict[int, Runner] = {}
    for name in sorted(program.method_names):
        method = _load(program, path, name)
        meta = method.metadata
        count = meta.num_inputs()

        def run(feeds: dict[str, np.ndarray], method: Any = method,
                count: int = count) -> np.ndarray:
            if len(feeds) != count:
                raise ExportError(f"{Path(path).name}: expects {count} inputs, got {list(feeds)}")
            out = method.execute(method_args(method, list(feeds.values())))[0]
            return out.float().contiguous().numpy()

        runs[int(meta.input_tensor_meta(0).sizes()[0])] = run
    return multi_batch_runner(runs)


def _load(program: Any, path: Path, name: str) -> Any:
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return program.load_method(name)
    except Exception as e:  # the runtime raises RuntimeError with its error code
        raise ExportError(f"{Path(path).name}: method {name}: {first_line(e)}") from e
