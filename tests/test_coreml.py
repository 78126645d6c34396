"""Core ML target on a tiny STOIC: the .mlpackage is produced, reloaded and its program inspected.
Prediction needs macOS: off macOS the artifact must say so and carry no parity number."""

from __future__ import annotations

import platform

import numpy as np
import pytest
import torch

from conftest import tiny_capture
from mobilegen.errors import ExportError
from mobilegen.passes.precision import PrecisionSpec
from mobilegen.targets.base import ExportRequest
from mobilegen.targets.profile import TargetProfile, load_target

pytest.importorskip("coremltools")
from mobilegen.targets import coreml

ON_MAC = platform.system() == "Darwin"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, io, example, program = tiny_capture()
    profile = load_target("ios-gpu")
    workdir = tmp_path_factory.mktemp("coreml")
    (art,) = coreml.export(ExportRequest(program, io, example, profile, workdir, "denoiser", 0))
    variants = {}
    for spec in (PrecisionSpec("int8"), PrecisionSpec("palettize", bits=4)):
        (v,) = coreml.export_precision(ExportRequest(
            program, io, example, profile, workdir, "denoiser", 0), spec)
        variants[spec.tag] = v
    return model, io, program, example, workdir, art, variants


def test_package_is_an_fp16_ml_program_with_the_signature(exported):
    *_, workdir, art, _ = exported
    d = art.details
    assert (workdir / art.file).is_dir() and art.format == "mlpackage"
    assert all((workdir / f).is_file() for f in art.companions)
    assert any(f.endswith("weight.bin") for f in art.companions)
    assert d["package_bytes"] == sum((workdir / f).stat().st_size for f in art.companions)
    assert [i["name"] for i in d["inputs"]] == ["x", "t", "y"]
    assert d["inputs"][0]["shape_range"][0] == [1, 4096]  # the dynamic batch survived
    assert d["inputs"][2]["dtype"] == "int32"  # int64 labels become int32 in Core ML
    assert d["outputs"] == [{"name": "eps", "dtype": "float32", "shape": []}]
    assert {"linear", "softmax", "layer_norm", "conv"} <= set(d["operations"])
    assert d["constants"]["float16"] > 10  # weights stored in fp16
    # the sinusoidal timestep path stays fp32 (t * freqs reaches ~1000)
    assert {"sin", "cos", "mul"} <= set(d["fp32_ops"]) and "linear" not in d["fp32_ops"]
    assert d["deployment_target"] == "iOS17" and d["compute_units"] == "CPU_AND_GPU"


@pytest.mark.skipif(ON_MAC, reason="off macOS only: prediction is impossible there")
def test_off_macos_parity_is_not_run_and_says_why(exported):
    *_, workdir, art, _ = exported
    assert art.runnable is False
    assert "macOS" in art.details["not_run"] and "no parity" in art.details["not_run"]
    assert "parity" not in art.details
    with pytest.raises(ExportError, match="macOS"):
        coreml.load(workdir / art.file, 2)


@pytest.mark.skipif(not ON_MAC, reason="Core ML prediction needs macOS")
def test_on_macos_prediction_matches_pytorch(exported):
    model, io, *_, workdir, art, _ = exported
    inputs = model.example_inputs(3, seed=3)
    with torch.no_grad():
        ref = model(*inputs).numpy()
    got = coreml.load(workdir / art.file, 2)(io.feeds(inputs))
    assert np.abs(got - ref).max() < 1e-2 * max(1.0, float(np.abs(ref).max()))


@pytest.mark.parametrize(("tag", "op"), [("int8-weight_only", "constexpr_affine_dequantize"),
                                         ("palettize4", "constexpr_lut_to_dense")])
def test_weight_compression_variants(exported, tag, op):
    *_, art, variants = exported
    v = variants[tag]
    assert v.file == f"denoiser.{tag}.mlpackage" and v.precision == tag
    assert v.details["constants"].get(op, 0) > 0
    assert v.details["package_bytes"] < art.details["package_bytes"]
    assert [i["name"] for i in v.details["inputs"]] == ["x", "t", "y"]


def test_fp32_profile_keeps_fp32_weights(exported, tmp_path):
    _, io, program, example, *_ = exported
    profile = TargetProfile(name="mac-fp32", runtime="coreml", precision="fp32",
                            deployment_target="macOS14")
    (art,) = coreml.export(ExportRequest(program, io, example, profile, tmp_path, "denoiser", 0))
    assert art.details["constants"].get("float16", 0) == 0
    assert art.details["constants"]["float32"] > 10


def test_activation_quantization_is_refused_with_a_reason():
    assert "macOS" in coreml.supports(PrecisionSpec("int8", "static"))
    assert coreml.supports(PrecisionSpec("int8", "dynamic")) is not None
    assert coreml.supports(PrecisionSpec("palettize", bits=9)) is not None
    assert coreml.supports(PrecisionSpec("fp16")) is None


def test_palettize_is_a_recipe_pass_with_options_and_gates(tmp_path):
    """The Core ML palettization is reachable from a recipe: its plan row, its bits option
    (checked on load), and every other runtime says why it cannot do it."""
    from conftest import write_recipe, write_tiny_checkpoint
    from mobilegen.errors import RecipeError
    from mobilegen.passes.precision import precision_plan
    from mobilegen.recipe import load_recipe
    from mobilegen.targets import onnx as onnx_target
    from mobilegen.targets import tflite

    ckpt = write_tiny_checkpoint(tmp_path / "t.safetensors")
    path = write_recipe(tmp_path / "r.toml", ckpt)
    path.write_text('passes = [{name = "palettize", bits = 6, min_step_psnr_db = 20}]\n'
                    + path.read_text())
    plan = precision_plan(load_recipe(path))
    ((name, spec, _),) = plan.specs
    assert name == "palettize" and spec.tag == "palettize6"
    assert plan.limits["palettize6"]["min_step_psnr_db"] == 20
    assert coreml.supports(spec) is None
    assert "Core ML" in onnx_target.supports(spec) and "Core ML" in tflite.supports(spec)
    path.write_text(path.read_text().replace("bits = 6", "bits = 9"))
    with pytest.raises(RecipeError, match=r"passes\[0\].*bits"):
        load_recipe(path)


def test_group_norm_keeps_a_dynamic_batch():
    """coremltools' own group norm fails on a symbolic batch ("Cannot add const [is0, ...]"),
    which made every VAE convert twice and lose its dynamic batch; targets/coreml_fixes.py writes
    the batch as -1 in its reshapes."""
    import coremltools as ct

    from mobilegen.targets import coreml_fixes

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GroupNorm(4, 8),
                                torch.nn.SiLU()).eval()
    x = torch.randn(2, 3, 8, 8)
    program = torch.export.export(model, (x,), dynamic_shapes=(
        {0: torch.export.Dim("batch", min=1, max=64)},)).run_decompositions({})
    inputs = [ct.TensorType(name="x", shape=(ct.RangeDim(1, 64), 3, 8, 8))]
    coreml_fixes.apply()
    coreml_fixes.apply()  # idempotent: the fix wraps coremltools' function once
    mlmodel = ct.convert(program, convert_to="mlprogram", inputs=inputs,
                         minimum_deployment_target=ct.target.iOS17,
                         compute_precision=ct.precision.FLOAT32)
    spec = mlmodel.get_spec()
    batch = spec.description.input[0].type.multiArrayType.shapeRange.sizeRanges[0]
    assert (batch.lowerBound, batch.upperBound) == (1, 64)
    ops = [op for f in mlmodel._mil_program.functions.values() for op in f.operations]
    shapes = [tuple(op.shape.val) for op in ops if op.op_type == "reshape"
              and op.shape.val is not None]
    assert shapes == [(-1, 4, 2, 8, 8), (-1, 8, 8, 8)], shapes
    assert {"reduce_mean", "sqrt", "real_div"} <= {op.op_type for op in ops}


def test_fp16_overflow_fast_path_answers_as_coremltools():
    """targets/coreml_fixes.py answers FP16ComputePrecision.fp16_overflow from a constant's
    largest magnitude when it lies within fp16's range, else defers to coremltools' own test:
    the same answer for values within, past 65504, inf (ignored by coremltools) and NaN."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Program
    from coremltools.converters.mil.mil.passes.defs.quantization import FP16ComputePrecision

    from mobilegen.targets import coreml_fixes

    cases = {"small": [1.0, -2.0], "past": [1.0, -70000.0], "edge": [65504.0, -65504.0],
             "inf": [np.inf, 3.0], "inf_and_past": [np.inf, 1e5], "nan": [np.nan, 1.0]}
    ops = {}

    @mb.program(input_specs=[mb.TensorSpec(shape=(2,))])
    def prog(x):
        for name, values in cases.items():
            y = mb.add(x=x, y=np.array(values, dtype=np.float32), name=name)
            ops[name] = y.op
        return y

    assert isinstance(prog, Program)
    coreml_fixes.apply()
    patched = FP16ComputePrecision.fp16_overflow
    original = patched.__wrapped__  # coremltools' own
    got = {n: patched(op) for n, op in ops.items()}
    assert got == {n: original(op) for n, op in ops.items()}
    assert got == {"small": False, "past": True, "edge": False, "inf": False,
                   "inf_and_past": True, "nan": False}
