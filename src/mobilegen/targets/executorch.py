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
from mobilegen.targets.fixed_batch import fixed_batch_runner

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
    program = lowering.prepared(req.program, _fixed_example(req))
    out = req.workdir / f"{req.stem}.pte"
    details = _write(program, req, out, profile.precision)
    return [_artifact(out, req, profile.precision, details)]


def _fixed_example(req: ExportRequest) -> tuple[Any, ...]:
    return tuple(req.example)


def _write(program: Any, req: ExportRequest, out: Path, precision: str) -> dict[str, Any]:
    profile = req.profile
    with contextlib.redirect_stdout(sys.stderr):  # the AOT compilers print progress on stdout
        _, buffer, cov = lowering.lower(program, profile.partitioner, precision,
                                        profile.qnn_soc, req.stem)
    out.write_bytes(buffer)
    return {"method": f"executorch to_edge_transform_and_lower ({profile.partitioner} "
                      f"partitioner, {precision})", "coverage": [cov],
            "fixed_shapes": {s.name: list(t.shape) for s, t in zip(req.io.inputs, req.example,
                                                                    strict=True)},
            "batch_note": f"captured at batch {int(req.example[0].shape[0])}: the host runner "
                          "splits or pads other batches into calls of that size"}


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
        _method(path, threads=1)
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
    example = _fixed_example(req)
    if spec.kind == "fp16":
        program, details = quant.half(req.program, example)
    else:
        program, details = quant.int8(req.program, example, spec, list(req.calibration), req.io,
                                      req.stem)
    out = req.workdir / (f"{req.stem}.pte" if base else f"{req.stem}.{spec.tag}.pte")
    details = {**details, **_write(program, req, out, spec.tag)}
    return [_artifact(out, req, profile.precision if base else spec.tag, details)]


# ---------------------------------------------------------------- running


def _method(path: Path, threads: int, etdump: bool = False) -> Any:
    from executorch.runtime import Runtime

    if not Path(path).is_file():
        raise ExportError(f"{path}: artifact not found")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            program = Runtime.get().load_program(str(path), enable_etdump=etdump)
            return program, program.load_method("forward")
    except Exception as e:  # the runtime raises RuntimeError with its error code
        raise ExportError(f"{Path(path).name}: {first_line(e)}") from e


def load(path: Path, threads: int) -> Runner:
    """The .pte's forward method as a Runner: named numpy feeds in signature order, any batch
    (split or padded to the file's)."""
    import torch

    _, method = _method(path, threads)
    meta = method.metadata
    batch = int(meta.input_tensor_meta(0).sizes()[0])
    count = meta.num_inputs()

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        if len(feeds) != count:
            raise ExportError(f"{Path(path).name}: expects {count} inputs, got {list(feeds)}")
        args = [torch.from_numpy(np.ascontiguousarray(v)) for v in feeds.values()]
        return method.execute(args)[0].contiguous().numpy()

    return fixed_batch_runner(run, batch)
