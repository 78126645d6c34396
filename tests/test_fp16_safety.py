"""fp16 safety: a model with a layer whose activations pass fp16's 65504 is caught by the
PyTorch fp16-arithmetic check (NaN output), and its fp16 ONNX artifact keeps that layer in fp32
(checked in the graph, and run by the real onnxruntime against fp32 PyTorch)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from mobilegen.export.run import capture  # noqa: E402
from mobilegen.measure.parity import compare  # noqa: E402
from mobilegen.passes.fp16_safety import FP16_MAX, check_fp16  # noqa: E402
from mobilegen.passes.precision import PrecisionSpec  # noqa: E402
from mobilegen.signature import ModelIO, TensorSpec  # noqa: E402
from mobilegen.targets import onnx as onnx_target  # noqa: E402
from mobilegen.targets import onnx_precision  # noqa: E402
from mobilegen.targets.base import ExportRequest  # noqa: E402
from mobilegen.targets.profile import load_target  # noqa: E402


class Hot(torch.nn.Module):
    """`up` reaches ~2e5 (fp16 overflows at 65504); the norm brings it back to ~1."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.up = torch.nn.Linear(8, 16)
        self.norm = torch.nn.LayerNorm(16)
        self.down = torch.nn.Linear(16, 8)
        with torch.no_grad():
            self.up.weight.mul_(1e5)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.down(self.norm(self.up(x))) + 0.001 * t[:, None]


IO = ModelIO((TensorSpec("x", ("batch", 8), "float32", "input"),
              TensorSpec("t", ("batch",), "float32", "time")),
             (TensorSpec("y", ("batch", 8), "float32", "output"),))


@pytest.fixture(scope="module")
def hot(tmp_path_factory):
    model = Hot().eval()
    example = (torch.randn(4, 8, generator=torch.Generator().manual_seed(1)), torch.ones(4))
    work = tmp_path_factory.mktemp("fp16")
    profile = load_target("ort-mobile-cpu").model_copy(update={"ort_format": False})
    req = ExportRequest(capture(model, example), IO, example, profile, work, "hot", 1000)
    onnx_target.export(req)
    with torch.inference_mode():
        ref = model(*example).numpy()
    return model, example, req, ref


def test_the_check_finds_the_overflowing_layer_and_fixes_it(hot):
    _, example, req, _ = hot
    safety = check_fp16(req.program, [IO.feeds(example)])
    worst = safety.layers[0]
    assert worst.layer == "up" and worst.max_abs > FP16_MAX and worst.headroom < 1.0
    assert worst.nonfinite_fp16 and "up" in safety.nonfinite_before
    assert safety.step_psnr_before_db < 10  # NaN output (PSNR of NaN compares as not >= 10)
    assert safety.kept_fp32 == ["up"]
    assert safety.step_psnr_after_db > 40 and safety.min_headroom_after > 2.0
    assert not safety.notes
    report = safety.to_dict()
    assert report["layers"][0]["layer"] == "up" and report["layers_total"] >= 3


def _gemm_weight_types(path) -> dict[str, int]:
    import onnx

    m = onnx.load(str(path))
    inits = {i.name: i.data_type for i in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    out = {}
    for n in m.graph.node:
        if n.op_type == "Gemm":
            w = n.input[1]
            while w not in inits and w in producer:  # through a Cast
                w = producer[w].input[0]
            out[onnx_precision.layer_path(n)] = inits.get(w)
    return out


def test_fp16_artifact_keeps_the_layer_fp32(hot):
    """onnxruntime's CPU EP saturates the fp16 Gemm output instead of making inf, so the host
    run of a plain conversion looks fine (the issue's point); the graph shows what a phone would
    compute in fp16, and the fixed artifact runs `up` in fp32."""
    import onnx

    _, example, req, ref = hot
    plain = req.workdir / "plain.fp16.onnx"
    onnx_precision.convert(req.workdir / "hot.onnx", plain, PrecisionSpec("fp16"), [], False)
    assert _gemm_weight_types(plain)["up"] == onnx.TensorProto.FLOAT16
    art = onnx_target.export_precision(req, PrecisionSpec("fp16"))[0]
    assert art.details["fp16_safety"]["kept_fp32"] == ["up"]
    assert art.details["fp32_layers"] == ["up"] and art.details["fp32_layer_nodes"] >= 1
    types = _gemm_weight_types(req.workdir / art.file)
    assert types["up"] == onnx.TensorProto.FLOAT and types["down"] == onnx.TensorProto.FLOAT16
    fixed = onnx_target.load(req.workdir / art.file, 1)(IO.feeds(example))
    assert np.isfinite(fixed).all() and compare(ref, fixed).psnr_db > 40


def test_a_model_without_overflow_keeps_nothing(hot):
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))

    class Small(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = model[0]

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.lin(x) + t[:, None]

    example = hot[1]
    safety = check_fp16(capture(Small().eval(), example), [IO.feeds(example)])
    assert safety.kept_fp32 == [] and not safety.nonfinite_before
    assert safety.layers[0].headroom > 1000 and safety.step_psnr_after_db > 50


def _mil_ops(package) -> list[tuple[str, str, int]]:
    """(op type, output name, output dtype) of each non-const op of a saved ML program."""
    import coremltools as ct

    spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    main = spec.mlProgram.functions["main"]
    return [(op.type, op.outputs[0].name, op.outputs[0].type.tensorType.dataType)
            for op in main.block_specializations[main.opset].operations if op.type != "const"]


def test_coreml_fp16_keeps_the_layer_fp32(hot, tmp_path):
    """Core ML fp16 (FP16ComputePrecision): the overflowing layer's linear and the norm reading
    its output stay fp32 in the saved program, the next layer is fp16; the profile's fp16 base
    and the fp16 pass on an fp32 profile both carry the fix, and say so in their details.
    (Prediction needs macOS: the program is inspected.)"""
    pytest.importorskip("coremltools")
    from coremltools.proto import MIL_pb2

    from mobilegen.targets import coreml

    fp16, fp32 = MIL_pb2.DataType.FLOAT16, MIL_pb2.DataType.FLOAT32
    _, example, req, _ = hot
    gpu = load_target("ios-gpu")
    assert gpu.precision == "fp16"
    plain = coreml._convert(req.program, IO, gpu, "fp16", "hot", example)
    plain.save(str(tmp_path / "plain.mlpackage"))
    assert [d for t, _, d in _mil_ops(tmp_path / "plain.mlpackage") if t == "linear"] == [
        fp16, fp16]
    base = req.__class__(req.program, IO, example, gpu, tmp_path, "hot", 1000)
    fp32_profile = gpu.model_copy(update={"precision": "fp32"})
    arts = [coreml.export(base)[0], coreml.export_precision(
        req.__class__(req.program, IO, example, fp32_profile, tmp_path, "hot", 1000),
        PrecisionSpec("fp16"))[0]]
    for art in arts:
        d = art.details
        assert d["fp16_safety"]["kept_fp32"] == ["up"] and d["fp32_layers"] == ["up"]
        assert "layer_norm" in d["fp32_layer_ops"]
        ops = _mil_ops(tmp_path / art.file)
        assert [dt for t, _, dt in ops if t == "linear"] == [fp32, fp16]  # up, down
        assert [dt for t, _, dt in ops if t == "layer_norm"] == [fp32]
        assert ops[-1][1] == "y" and ops[-1][2] == fp32


def test_coreml_fp16_base_of_a_large_model_says_the_check_was_skipped(hot, tmp_path):
    pytest.importorskip("coremltools")
    from mobilegen.targets import coreml

    _, example, req, _ = hot
    big = coreml.BASE_FP16_CHECK_MAX_BYTES + 1
    art = coreml.export(req.__class__(req.program, IO, example, load_target("ios-gpu"), tmp_path,
                                      "hot", big))[0]
    assert "fp16_safety" not in art.details and "sensitivity" in art.details[
        "fp16_safety_skipped"]
    assert art.details["fp32_layers"] == []
