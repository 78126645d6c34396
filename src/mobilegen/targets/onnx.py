"""ONNX Runtime (mobile) target: .onnx through torch.onnx's dynamo exporter, .ort through
onnxruntime's converter (with its required-operators config for a reduced build), and the mobile
usability checker's verdict per execution provider."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from mobilegen.errors import ExportError
from mobilegen.recipe import TargetProfile
from mobilegen.signature import ModelIO
from mobilegen.targets import Artifact, Runner

# A protobuf (.onnx without external data, .ort flatbuffer) cannot exceed 2 GiB.
PROTO_LIMIT_BYTES = 2 * 1024**3
EXTERNAL_DATA_ABOVE_BYTES = int(1.8 * 1024**3)


def export(
    program: Any, io: ModelIO, example: tuple[Any, ...], profile: TargetProfile,
    workdir: Path, stem: str, param_bytes: int,
) -> list[Artifact]:
    """Lower a captured program (torch.export) to .onnx (+ .ort) in `workdir`."""
    import logging

    import onnx
    import torch

    # The exporter warns about every torchvision op it cannot register; none of ours needs one.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    onnx_path = workdir / f"{stem}.onnx"
    external = param_bytes > EXTERNAL_DATA_ABOVE_BYTES
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the exporter prints progress on stdout
            torch.onnx.export(
                program, example, str(onnx_path), dynamo=True, opset_version=profile.opset,
                input_names=io.input_names, output_names=io.output_names,
                external_data=external, verbose=False,
            )
    except Exception as e:
        raise ExportError(f"torch.onnx.export failed for {stem}: {str(e).splitlines()[0]}") from e
    _name_dynamic_axes(onnx_path, io, external)
    companions = [f"{stem}.onnx.data"] if external else []
    model = onnx.load(str(onnx_path), load_external_data=False)
    ops = sorted({f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in model.graph.node})
    details: dict[str, Any] = {
        "opset": profile.opset,
        "external_data": external,
        "operators": ops,
        "mobile_usability": mobile_usability(onnx_path),
    }
    artifacts = [
        Artifact(onnx_path.name, "onnx", profile.name, "onnxruntime", profile.precision,
                 companions, details=details)
    ]
    if profile.ort_format:
        artifacts.append(_to_ort(onnx_path, profile, external))
    return artifacts


def _name_dynamic_axes(path: Path, io: ModelIO, external: bool) -> None:
    """torch.export names dynamic axes s0, s13...; rename them to the signature's names."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    specs = {t.name: t for t in (*io.inputs, *io.outputs)}
    for value in (*model.graph.input, *model.graph.output):
        spec = specs.get(value.name)
        if spec is None:
            continue
        for dim, want in zip(value.type.tensor_type.shape.dim, spec.shape, strict=False):
            if isinstance(want, str):
                dim.ClearField("dim_value")
                dim.dim_param = want
    onnx.save(model, str(path))  # external tensors stay where they are (not loaded)


def _to_ort(onnx_path: Path, profile: TargetProfile, external: bool) -> Artifact:
    stem = onnx_path.stem
    ort_name = f"{stem}.ort"
    if external or onnx_path.stat().st_size > PROTO_LIMIT_BYTES:
        return Artifact(
            ort_name, "ort", profile.name, "onnxruntime", profile.precision, runnable=False,
            details={"skipped": "the .ort flatbuffer is limited to 2 GiB and this model's "
                                "weights are larger; ship the .onnx with external data"},
        )
    cmd = [
        sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(onnx_path),
        "--output_dir", str(onnx_path.parent),
        "--optimization_style", profile.ort_optimization_style,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not (onnx_path.parent / ort_name).exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ExportError(f"ORT format conversion failed for {onnx_path.name}: {tail[0]}")
    config = f"{stem}.required_operators.config"
    if profile.ort_optimization_style == "Runtime":
        config = f"{stem}.required_operators.with_runtime_opt.config"
    return Artifact(
        ort_name, "ort", profile.name, "onnxruntime", profile.precision, [config],
        details={"optimization_style": profile.ort_optimization_style,
                 "required_operators_config": config},
    )


_VERDICT = re.compile(r"Model should perform well with (.+?) (as is|if modified to have fixed "
                      r"input shapes): (YES|NO|MAYBE)")
_COVER = re.compile(r"(\d+) partitions with a total of (\d+)/(\d+) nodes can be handled by the "
                    r"(.+?) EP")
_UNSUPPORTED = re.compile(r"Unsupported ops: (.+)")


def mobile_usability(onnx_path: Path) -> dict[str, Any]:
    """Run onnxruntime's check_onnx_model_mobile_usability and keep its verdict per EP."""
    cmd = [sys.executable, "-m", "onnxruntime.tools.check_onnx_model_mobile_usability",
           str(onnx_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    result: dict[str, Any] = {}
    current: dict[str, Any] | None = None
    for line in text.splitlines():
        if m := _COVER.search(line):
            ep = m.group(4)
            current = result.setdefault(ep, {})
            current.setdefault("nodes_supported", f"{m.group(2)}/{m.group(3)}")
            current.setdefault("partitions", int(m.group(1)))
        elif (m := _UNSUPPORTED.search(line)) and current is not None:
            current.setdefault("unsupported_ops", m.group(1).strip().split(","))
        elif m := _VERDICT.search(line):
            key = "verdict" if m.group(2) == "as is" else "verdict_fixed_shapes"
            result.setdefault(m.group(1), {})[key] = m.group(3)
    if proc.returncode != 0 or not result:
        return {"error": f"usability check failed (exit {proc.returncode})"}
    return result


def load(path: Path, threads: int) -> Runner:
    """An onnxruntime session on the CPU EP (reads .onnx and .ort alike)."""
    import onnxruntime as ort

    if not Path(path).is_file():
        raise ExportError(f"{path}: artifact not found")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    output = session.get_outputs()[0].name

    def run(feeds: dict[str, Any]) -> Any:
        return session.run([output], feeds)[0]

    return run
