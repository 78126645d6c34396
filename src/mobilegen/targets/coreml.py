"""Core ML target: an ML program `.mlpackage` through coremltools, lowered from the captured
ExportedProgram (dynamic batch kept as a shape range).

Core ML prediction needs macOS. Elsewhere the package is reloaded without compiling it and its
program is inspected (operations, inputs/outputs, weight precision, size); the artifact is marked
not runnable with that reason, so no parity number is ever reported for it. On macOS `load()`
predicts and the pipeline checks parity as for any other target.
"""

from __future__ import annotations

import contextlib
import platform
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from mobilegen.errors import ExportError, first_line
from mobilegen.passes.precision import PrecisionSpec, matches
from mobilegen.signature import ModelIO
from mobilegen.targets.base import Artifact, ExportRequest, Runner, base_is_already
from mobilegen.targets.coverage import coreml_coverage
from mobilegen.targets.profile import TargetProfile

FORMATS = ("mlpackage",)  # what export() writes (targets.base.Target)

# fp16 profiles run the fp16 safety check on their base package up to this many fp32 weight
# bytes (the explicit fp16 pass always runs it).
BASE_FP16_CHECK_MAX_BYTES = 256 * 1024**2

NOT_RUN = ("Core ML prediction needs macOS (this host: {system}); no parity was measured: the "
           "package was reloaded and its program, I/O and weights were checked instead")


def can_predict() -> bool:
    return platform.system() == "Darwin"


def export(req: ExportRequest) -> list[Artifact]:
    """{stem}.mlpackage at the profile's compute precision and deployment target."""
    io, profile = req.io, req.profile
    workdir, stem = req.workdir, req.stem
    out = workdir / f"{stem}.mlpackage"
    details: dict[str, Any] = {}
    keep: tuple[str, ...] = ()
    if profile.precision == "fp16" and req.param_bytes > BASE_FP16_CHECK_MAX_BYTES:
        details = {"fp16_safety_skipped": (
            f"{req.param_bytes / 1e6:.0f} MB of fp32 weights: the check runs the model op by op "
            "in fp16 on the CPU (40 s for a 163 MB model on 2 shared cores); `mobilegen "
            "sensitivity RECIPE` runs it on its own")}
    elif profile.precision == "fp16":  # the base artifact computes in fp16: the same check
        keep, details = _fp16_safety(req, PrecisionSpec("fp16"))
    details = {**_convert_and_save(req, profile.precision, keep, out), **details}
    return [_artifact(out, workdir, io, profile, profile.precision, details)]


def _fp16_safety(req: ExportRequest, spec: PrecisionSpec) -> tuple[tuple[str, ...],
                                                                    dict[str, Any]]:
    """The fp16 safety check (passes/fp16_safety.py) on the captured program: the layers to keep
    in fp32 and the check's summary for the artifact's details."""
    from mobilegen.passes.fp16_safety import safe_fp16_spec

    feeds = list(req.calibration) or [req.io.feeds(req.example)]
    safe, summary = safe_fp16_spec(req.program, spec, feeds)
    return safe.keep_float, {"fp16_safety": summary}


def _convert_and_save(req: ExportRequest, precision: str, keep: tuple[str, ...],
                      out: Path) -> dict[str, Any]:
    """Convert the capture at `precision` (the layers in `keep` stay fp32 at fp16), save it to
    `out`; returns the method line and, at fp16, the layers and MIL ops kept fp32."""
    kept_ops: list[str] = []
    _save(_convert(req.program, req.io, req.profile, precision, req.stem, req.example, keep,
                   kept_ops), out)
    details: dict[str, Any] = {"method": f"coremltools.convert (mlprogram, {precision} compute)"}
    if precision == "fp16":
        details.update(fp32_layers=list(keep), fp32_layer_ops=sorted(set(kept_ops)))
    return details


def supports(spec: PrecisionSpec) -> str | None:
    """None if this target can produce `spec`, else why not (shown in the report row)."""
    if spec.kind == "int8" and spec.mode != "weight_only":
        return (f"int8 {spec.mode}: Core ML quantizes activations only by calibrating with "
                "prediction, which needs macOS; use int8 weight_only (linear_quantize_weights)")
    if spec.kind == "palettize" and not 1 <= spec.bits <= 8:
        return f"palettize: bits must be 1..8 (found {spec.bits})"
    return None


def export_precision(req: ExportRequest, spec: PrecisionSpec) -> list[Artifact]:
    """fp16: FLOAT16 compute precision. int8: linear (symmetric, per-channel) int8 weights.
    palettize: k-means look-up tables of `bits` bits per tensor. Weight compression starts from
    the base package (converted here if `export` has not written it)."""
    program, io, example, profile = req.program, req.io, req.example, req.profile
    workdir, stem = req.workdir, req.stem
    reason = supports(spec)
    if reason:
        raise ExportError(f"{profile.name}: {reason}")
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    out = workdir / f"{stem}.{spec.tag}.mlpackage"
    if spec.kind == "fp16" and profile.precision == "fp16":
        return [base_is_already(stem, spec.tag, profile, f"{stem}.mlpackage",
                                "computes in fp16")]
    if spec.kind == "fp16":
        keep, details = _fp16_safety(req, spec)
        details = {**_convert_and_save(req, "fp16", keep, out), **details}
        return [_artifact(out, workdir, io, profile, spec.tag, details)]
    base_path = workdir / f"{stem}.mlpackage"
    if base_path.is_dir():
        base = ct.models.MLModel(str(base_path), skip_model_load=True)
    else:
        base = _convert(program, io, profile, profile.precision, stem, example)
    if spec.kind == "int8":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                         granularity="per_channel")
        method = ("coremltools linear_quantize_weights: int8 symmetric per-channel weights "
                  f"({profile.precision} compute)")
        compress = cto.linear_quantize_weights
    else:
        op = cto.OpPalettizerConfig(mode="kmeans", nbits=spec.bits, granularity="per_tensor")
        method = (f"coremltools palettize_weights: k-means, {spec.bits}-bit look-up table per "
                  f"weight tensor ({profile.precision} compute)")
        compress = cto.palettize_weights
    try:
        with contextlib.redirect_stdout(sys.stderr):
            compressed = compress(base, cto.OptimizationConfig(global_config=op))
    except Exception as e:
        first = first_line(e)
        raise ExportError(f"{spec.tag} compression failed for {stem}: {first}") from e
    _save(compressed, out)
    return [_artifact(out, workdir, io, profile, spec.tag, {"method": method})]


# ---------------------------------------------------------------- conversion


def _convert(program: Any, io: ModelIO, profile: TargetProfile, precision: str, stem: str,
             example: tuple[Any, ...], keep_fp32: tuple[str, ...] = (),
             kept_ops: list[str] | None = None) -> Any:
    """Convert the captured program (dynamic batch). Where coremltools cannot lower a symbolic
    batch (its group norm did, before targets/coreml_fixes.py), re-export the same program at
    the example's fixed shapes and convert that; the package then records it.
    At fp16, the ops of the layers in `keep_fp32` (module paths) stay fp32, named in
    `kept_ops`."""
    import coremltools as ct
    import torch

    from mobilegen.targets import coreml_fixes

    coreml_fixes.apply()  # group norm with a symbolic batch: no second conversion

    def convert(ep: Any) -> Any:
        ep = ep.run_decompositions({})  # coremltools reads ATen-level ops
        if kept_ops is not None:
            kept_ops.clear()  # a second attempt (fixed batch) lists its own
        compute = ct.precision.FLOAT32
        if precision == "fp16":
            compute = ct.transform.FP16ComputePrecision(
                op_selector=Fp16Selector(_fx_paths(ep), keep_fp32, kept_ops))
        with contextlib.redirect_stdout(sys.stderr):
            return ct.convert(
                ep, convert_to="mlprogram",
                minimum_deployment_target=getattr(ct.target, profile.deployment_target),
                compute_precision=compute,
                # without explicit outputs the name is generated and the dtype follows compute
                outputs=[ct.TensorType(name=n, dtype=np.float32) for n in io.output_names],
            )

    try:
        model = convert(program)
    except Exception as dynamic_error:
        try:
            model = convert(torch.export.export(program.module(), tuple(example)))
        except Exception as e:
            first = first_line(e)
            raise ExportError(f"coremltools.convert failed for {stem}: {first}") from e
        reason = str(dynamic_error).splitlines()[0] if str(dynamic_error) else "unknown"
        model.user_defined_metadata["mobilegen.fixed_batch_reason"] = reason[:200]
    return _rename_inputs(model, io)


# Core ML op types that keep a kept layer's output fp32 on its way to the next normalization
# (the fp16 safety check runs norms, softmax and reductions in fp32, so its plan assumes a kept
# layer's large output is normalized in fp32 before any fp16 op reads it).
_MIL_SAME_VALUES = ("reshape", "transpose", "expand_dims", "squeeze", "slice_by_index",
                    "slice_by_size", "identity", "split", "concat")
_MIL_NORMS = ("layer_norm", "batch_norm", "instance_norm", "l2_norm", "softmax", "reduce_mean",
              "reduce_sum", "reduce_max")


def _fx_paths(ep: Any) -> dict[str, str]:
    """FX node name -> the module path that ran it ('' for the root's own ops)."""
    out = {}
    for n in ep.graph.nodes:
        stack = n.meta.get("nn_module_stack") or {}
        out[n.name] = list(stack.values())[-1][0] if stack else ""
    return out


class Fp16Selector:
    """FP16ComputePrecision's op_selector: fp16 except the timestep path (`_fp16_ok`), the ops of
    the `keep` layers, and what carries their output to the next normalization. A MIL op is named
    after the FX node it came from ("linear_3"), or that name plus "_<n>" where the converter made
    it unique or emitted several ops for one node."""

    def __init__(self, paths: dict[str, str], keep: tuple[str, ...],
                 kept: list[str] | None) -> None:
        self.paths, self.keep = paths, keep
        self.kept = kept if kept is not None else []
        self._carries: dict[int, bool] = {}

    def path(self, name: str) -> str | None:
        if name in self.paths:
            return self.paths[name]
        stem, _, suffix = name.rpartition("_")
        while stem and suffix.isdigit():
            if stem in self.paths:
                return self.paths[stem]
            stem, _, suffix = stem.rpartition("_")
        return None

    def carries(self, op: Any) -> bool:
        """Whether `op`'s output is a kept layer's output (the layer's own ops, and value-moving
        ops after them)."""
        key = id(op)
        if key not in self._carries:
            path = self.path(op.name)
            self._carries[key] = bool(self.keep) and (
                (path is not None and matches(path, self.keep))
                or (op.op_type in _MIL_SAME_VALUES and self._fed_by_kept(op)))
        return self._carries[key]

    def _fed_by_kept(self, op: Any) -> bool:
        values = [v for x in op.inputs.values() for v in (x if isinstance(x, (list, tuple))
                                                          else [x])]
        return any(getattr(v, "op", None) is not None and self.carries(v.op) for v in values)

    def __call__(self, op: Any) -> bool:
        keep = self.carries(op) or (op.op_type in _MIL_NORMS and self._fed_by_kept(op))
        if keep and op.op_type != "const":
            self.kept.append(op.name)
        return not keep and _fp16_ok(op)


def _fp16_ok(op: Any, depth: int = 3) -> bool:
    """fp16 everywhere except the sinusoidal timestep path: t * freqs reaches ~1000, where fp16's
    spacing (0.5) scrambles sin/cos. Ops that feed sin/cos within `depth` steps stay fp32."""
    if op.op_type in ("sin", "cos"):
        return False
    if depth == 0:
        return True
    return all(_fp16_ok(child, depth - 1) for out in op.outputs for child in out.child_ops)


def _rename_inputs(model: Any, io: ModelIO) -> Any:
    """The converter names inputs after forward()'s arguments (x, t, cond); use the signature's."""
    import coremltools as ct

    spec = model.get_spec()
    current = [i.name for i in spec.description.input]
    if len(current) != len(io.inputs):
        raise ExportError(f"Core ML program has inputs {current}, expected {io.input_names}")
    if current == io.input_names:
        return model
    for old, new in zip(current, io.input_names, strict=True):
        if old != new:
            ct.utils.rename_feature(spec, old, new)
    return ct.models.MLModel(spec, weights_dir=model.weights_dir, skip_model_load=True)


def _save(model: Any, out: Path) -> None:
    import shutil

    if out.exists():
        shutil.rmtree(out)
    model.save(str(out))


# ---------------------------------------------------------------- inspection


def inspect_package(path: Path) -> dict[str, Any]:
    """Reload the package without compiling it and describe its program."""
    import coremltools as ct
    from coremltools.proto import MIL_pb2

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    if not spec.HasField("mlProgram"):
        raise ExportError(f"{path.name}: not an ML program (found {spec.WhichOneof('Type')})")
    main = spec.mlProgram.functions["main"]
    block = main.block_specializations[main.opset]
    ops: Counter[str] = Counter()
    consts: Counter[str] = Counter()  # const ops by dtype (weights, and shapes/flags)
    for op in block.operations:
        ops[op.type] += 1
        if op.type.startswith("constexpr_"):  # compressed weights: int8 / palettized
            consts[op.type] += 1
        elif op.type == "const":
            dtype = op.outputs[0].type.tensorType.dataType
            consts[MIL_pb2.DataType.Name(dtype).lower()] += 1
    fixed = spec.description.metadata.userDefined.get("mobilegen.fixed_batch_reason")
    extra = {"fixed_batch": {"reason": f"coremltools could not keep a dynamic batch ({fixed})",
                             "note": "the package takes the export batch; load() splits others"}
             } if fixed else {}
    return {
        **extra,
        "spec_version": spec.specificationVersion,
        "opset": main.opset,
        "operations": dict(sorted(ops.items())),
        "constants": dict(sorted(consts.items())),
        "fp32_ops": sorted({op.type for op in block.operations if op.type not in ("const", "cast")
                            and _output_dtype(op) == "fp32"}),
        "inputs": [_feature(f) for f in spec.description.input],
        "outputs": [_feature(f) for f in spec.description.output],
    }


def _output_dtype(op: Any) -> str:
    from coremltools.proto import MIL_pb2

    dtypes = {MIL_pb2.DataType.FLOAT16: "fp16", MIL_pb2.DataType.FLOAT32: "fp32"}
    return dtypes.get(op.outputs[0].type.tensorType.dataType, "other") if op.outputs else "none"


def _feature(f: Any) -> dict[str, Any]:
    from coremltools.proto import FeatureTypes_pb2

    arr = f.type.multiArrayType
    dtype = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(arr.dataType).lower()
    ranges = [[r.lowerBound, r.upperBound] for r in arr.shapeRange.sizeRanges]
    return {"name": f.name, "dtype": dtype,
            "shape": list(arr.shape), **({"shape_range": ranges} if ranges else {})}


def _package_files(path: Path, workdir: Path) -> list[str]:
    return sorted(str(p.relative_to(workdir)) for p in path.rglob("*") if p.is_file())


def _artifact(out: Path, workdir: Path, io: ModelIO, profile: TargetProfile, precision: str,
              details: dict[str, Any]) -> Artifact:
    info = inspect_package(out)
    names = ([i["name"] for i in info["inputs"]], [o["name"] for o in info["outputs"]])
    if names != (io.input_names, io.output_names):
        raise ExportError(f"{out.name}: I/O names {names} differ from the signature "
                          f"{(io.input_names, io.output_names)}")
    files = _package_files(out, workdir)
    details = {**details, **info, "layout": profile.layout,
               "deployment_target": profile.deployment_target,
               "compute_units": profile.compute_units,
               "package_bytes": sum((workdir / f).stat().st_size for f in files),
               "coverage": [coreml_coverage(info["operations"], profile.compute_units)]}
    runnable = can_predict()
    if not runnable:
        details["not_run"] = NOT_RUN.format(system=platform.system())
    return Artifact(out.name, "mlpackage", profile.name, "coreml", precision, files,
                    runnable=runnable, details=details)


# ---------------------------------------------------------------- running (macOS only)


def load(path: Path, threads: int) -> Runner:
    """Core ML prediction (macOS only). `threads` does not apply: Core ML schedules itself."""
    if not can_predict():
        raise ExportError(f"{Path(path).name}: " + NOT_RUN.format(system=platform.system()))
    import coremltools as ct

    model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
    spec = model.get_spec()
    features = [_feature(f) for f in spec.description.input]
    int_inputs = {f["name"] for f in features if f["dtype"] == "int32"}
    # a package converted at a fixed batch (no shape range) takes exactly that batch
    fixed = None if "shape_range" in features[0] else int(features[0]["shape"][0])
    output = spec.description.output[0].name

    def predict(feeds: dict[str, np.ndarray]) -> np.ndarray:
        cast = {k: v.astype(np.int32) if k in int_inputs else v for k, v in feeds.items()}
        return np.asarray(model.predict(cast)[output], dtype=np.float32)

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        n = len(next(iter(feeds.values())))
        if fixed is None or n == fixed:
            return predict(feeds)
        outs = []
        for start in range(0, n, fixed):
            part = {}
            for k, v in feeds.items():
                piece = v[start:start + fixed]
                pad = fixed - len(piece)  # pad the last call by repeating its final sample
                part[k] = np.concatenate([piece, np.repeat(piece[-1:], pad, 0)]) if pad else piece
            outs.append(predict(part)[: min(fixed, n - start)])
        return np.concatenate(outs, axis=0)

    return run
