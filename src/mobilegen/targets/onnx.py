"""ONNX Runtime (mobile) target: .onnx through torch.onnx's dynamo exporter, .ort through
onnxruntime's converter (with its required-operators config for a reduced build), and the mobile
usability checker's verdict per execution provider."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path
from typing import Any

from mobilegen.errors import ExportError, first_line
from mobilegen.passes.precision import PrecisionSpec
from mobilegen.signature import ModelIO
from mobilegen.targets.base import Artifact, ExportRequest, Runner
from mobilegen.targets.coverage import mobile_usability, ort_coverage
from mobilegen.targets.fixed_batch import fixed_batch_runner
from mobilegen.targets.onnx_precision import FeedReader, convert
from mobilegen.targets.profile import TargetProfile

FORMATS = ("onnx", "ort")  # what export() writes (targets.base.Target)

# A protobuf (.onnx without external data, .ort flatbuffer) cannot exceed 2 GiB.
PROTO_LIMIT_BYTES = 2 * 1024**3
EXTERNAL_DATA_ABOVE_BYTES = int(1.8 * 1024**3)


def export(req: ExportRequest) -> list[Artifact]:
    """Lower a captured program (torch.export) to .onnx (+ .ort) in `workdir`."""
    program, io, example, profile = req.program, req.io, req.example, req.profile
    workdir, stem, param_bytes = req.workdir, req.stem, req.param_bytes
    import onnx

    onnx_path = workdir / f"{stem}.onnx"
    external = param_bytes > EXTERNAL_DATA_ABOVE_BYTES
    # a fixed-shape capture has no dynamic axis to name
    write_onnx(program, example, io, onnx_path, profile.opset, external,
               name_axes=not profile.fixed_shapes)
    companions = [f"{stem}.onnx.data"] if external else []
    model = onnx.load(str(onnx_path), load_external_data=False)
    ops = sorted({f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in model.graph.node})
    details: dict[str, Any] = {
        "opset": profile.opset,
        "external_data": external,
        "operators": ops,
    }
    details["coverage"] = ort_coverage(onnx_path)  # the checker per EP (targets/coverage.py)
    details["mobile_usability"] = mobile_usability(details["coverage"])
    artifacts = [
        Artifact(onnx_path.name, "onnx", profile.name, "onnxruntime", profile.precision,
                 companions, details=details)
    ]
    if profile.ort_format:
        artifacts.append(_to_ort(onnx_path, profile, external))
    return artifacts


def write_onnx(program: Any, example: tuple[Any, ...], io: ModelIO, onnx_path: Path, opset: int,
               external: bool, name_axes: bool = True) -> None:
    """The captured program as one .onnx (dynamo exporter) with the signature's input/output
    names (and its names for dynamic axes); targets/qnn.py uses it too (opset 20)."""
    import logging

    import torch

    # The exporter warns about every torchvision op it cannot register; none of ours needs one.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sys.stderr), _without_quadratic_rewrites():
            torch.onnx.export(  # it prints progress on stdout
                program, example, str(onnx_path), dynamo=True, opset_version=opset,
                input_names=io.input_names, output_names=io.output_names,
                external_data=external, verbose=False,
            )
    except Exception as e:
        raise ExportError(f"torch.onnx.export failed for {onnx_path.name.split('.')[0]}: "
                          f"{str(e).splitlines()[0]}") from e
    finally:
        _release_rewriter_graphs()
    if name_axes:
        _name_dynamic_axes(onnx_path, io, external)


# onnxscript's default rewrite rules that match several output nodes: for each candidate node its
# matcher indexes the whole graph again and tries every combination, O(nodes^2). SlicesSplit
# (two Slices covering one input -> one Split) took 7.5 of the optimizer's 10.1 s on a 37M UNet
# of SD-1.5's topology and rewrote nothing there (the same 1,888 nodes without it).
QUADRATIC_RULES = ("SlicesSplit",)


@contextlib.contextmanager
def _without_quadratic_rewrites() -> Any:
    """torch.onnx.export's optimizer (onnxscript.optimizer.optimize_ir, which reads the rule
    list when it runs) without QUADRATIC_RULES; every other pass and rule as it is."""
    try:
        from onnxscript import rewriter
    except ImportError:  # another onnxscript layout: its own rules
        yield
        return
    rules = rewriter._DEFAULT_REWRITE_RULES
    rewriter._DEFAULT_REWRITE_RULES = tuple(
        r for r in rules if getattr(r, "name", None) not in QUADRATIC_RULES)
    try:
        yield
    finally:
        rewriter._DEFAULT_REWRITE_RULES = rules


def _release_rewriter_graphs() -> None:
    """onnxscript's rewrite rules are module-level objects, and each rule's matcher keeps the
    last graph it matched on (`_graph`, `_current_node`, `_match`): after torch.onnx.export
    returns, that graph's initializers, i.e. every weight of the model, stay alive in this
    process (measured on a 40 MB UNet: all 127 weight tensors over 256 KB still referenced
    from onnxscript.rewriter._matcher). Drop those references so the next step starts
    without a copy of the weights."""
    import gc

    try:
        from onnxscript.rewriter import _basics
        from onnxscript.rewriter._matcher import PatternMatcher
    except ImportError:  # another onnxscript layout: nothing of ours to release
        return
    for obj in gc.get_objects():
        if isinstance(obj, PatternMatcher):
            state = vars(obj)
            if "_graph" in state:
                del state["_graph"]  # set again by the next match()
            if "_match" in state:
                obj._match = _basics.MatchResult()  # what match() starts from
            if "_current_node" in state:
                obj._current_node = None


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


def _to_ort(onnx_path: Path, profile: TargetProfile, external: bool,
            precision: str | None = None) -> Artifact:
    stem = onnx_path.stem
    precision = precision or profile.precision
    ort_name = f"{stem}.ort"
    if external or onnx_path.stat().st_size > PROTO_LIMIT_BYTES:
        return Artifact(
            ort_name, "ort", profile.name, "onnxruntime", precision, runnable=False,
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
    _relative_config_paths(onnx_path.parent / config, onnx_path.parent)
    return Artifact(
        ort_name, "ort", profile.name, "onnxruntime", precision, [config],
        details={"optimization_style": profile.ort_optimization_style,
                 "required_operators_config": config},
    )


def _relative_config_paths(config: Path, folder: Path) -> None:
    """The converter notes the absolute (staging) path of each model in the config's comments;
    keep the file name only, so the config is the same wherever and whenever it was made."""
    if config.exists():
        text = config.read_text().replace(str(folder.resolve()) + "/", "").replace(
            str(folder) + "/", "")
        config.write_text(text)


ARENA_OFF_ABOVE_BYTES = 512 * 1024**2


def _weight_bytes(path: Path) -> int:
    """The model file and its external data, if any."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def load(path: Path, threads: int) -> Runner:
    """An onnxruntime session on the CPU EP (reads .onnx and .ort alike)."""
    import onnxruntime as ort

    if not Path(path).is_file():
        raise ExportError(f"{path}: artifact not found")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if _weight_bytes(Path(path)) > ARENA_OFF_ABOVE_BYTES:
        # the CPU arena keeps every activation's high-water mark: a 0.88 GB UNet's session
        # peaked at 7.26 GB with it and 4.04 GB without, at the same speed (measured, batch 2)
        opts.enable_cpu_mem_arena = False
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    output = session.get_outputs()[0].name
    batch = session.get_inputs()[0].shape[0]

    def run(feeds: dict[str, Any]) -> Any:
        return session.run([output], feeds)[0]

    # a fixed-shape file (profile fixed_shapes) takes its export batch: split other batches
    return run if not isinstance(batch, int) else fixed_batch_runner(run, batch)


# ---------------------------------------------------------------- precision passes (fp16, int8)
# The conversions live in targets/onnx_precision.py; this is the Target protocol's side.
_FeedReader = FeedReader  # qnn.py's CalibrationDataReader over feeds


def supports(spec: PrecisionSpec) -> str | None:
    """None if this target can produce `spec`, else why not (shown in the report row)."""
    if spec.kind in ("fp16", "int8"):
        return None
    return (f"{spec.kind} is a Core ML weight compression; ONNX Runtime has no palettized "
            "weight format (use int8 weight_only for a smaller ONNX file)")


def export_precision(req: ExportRequest, spec: PrecisionSpec) -> list[Artifact]:
    """Convert the fp32 .onnx (exported first, by `export`) into `spec`; inputs/outputs stay fp32
    so the same feeds drive every precision. Writes {stem}.{tag}.onnx (+ .ort when asked).
    fp16 first runs the fp16 safety check on the captured program and keeps the layers that
    would overflow in fp32 (passes/fp16_safety.py)."""
    import onnx

    profile, workdir, stem = req.profile, req.workdir, req.stem
    calibration = list(req.calibration)
    fp32 = workdir / f"{stem}.onnx"
    if not fp32.is_file():  # the pipeline always exports fp32 first; a direct caller may not
        export(req)
    external = req.param_bytes > EXTERNAL_DATA_ABOVE_BYTES
    if spec.kind == "int8" and spec.mode == "static" and not calibration:
        raise ExportError(f"int8 static for {stem}: no calibration feeds were collected")
    checks: dict[str, Any] = {}
    if spec.kind == "fp16":
        from mobilegen.passes.fp16_safety import safe_fp16_spec

        feeds = calibration or [req.io.feeds(req.example)]
        spec, checks["fp16_safety"] = safe_fp16_spec(req.program, spec, feeds)
    elif spec.mode == "static" and spec.target_step_psnr_db is not None:
        from dataclasses import replace

        from mobilegen.passes.sensitivity import plan_for_target

        checks["sensitivity_plan"] = plan = plan_for_target(fp32, spec, calibration)
        spec = replace(spec, keep_float=(*spec.keep_float, *plan["keep_float"]))
    out = workdir / f"{stem}.{spec.tag}.onnx"
    try:
        details = convert(fp32, out, spec, calibration, external)
    except Exception as e:  # onnx/onnxruntime raise many types; report one line
        raise ExportError(f"{spec.tag} conversion failed for {fp32.name}: "
                          f"{first_line(e)}") from e
    details.update(checks)
    model = onnx.load(str(out), load_external_data=False)
    details["operators"] = sorted({f"{n.domain or 'ai.onnx'}:{n.op_type}"
                                   for n in model.graph.node})
    companions = [p.name for p in workdir.glob(f"{out.name}.data")]
    artifacts = [Artifact(out.name, "onnx", profile.name, "onnxruntime", spec.tag, companions,
                          details=details)]
    if profile.ort_format:
        try:
            artifacts.append(_to_ort(out, profile, external, precision=spec.tag))
        except ExportError as e:  # a failed .ort is a row that says why, not a failed export
            artifacts.append(Artifact(f"{out.stem}.ort", "ort", profile.name, "onnxruntime",
                                      spec.tag, runnable=False, details={"skipped": str(e)}))
    return artifacts
