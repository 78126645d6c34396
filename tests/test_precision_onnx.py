"""Precision passes on the ONNX Runtime target (fp16, int8 weight-only / dynamic / static) on a
tiny STOIC, run by the real onnxruntime; and the timestep-stratified calibration feeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_config

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mobilegen.checkpoints.loader import build_random  # noqa: E402
from mobilegen.errors import ExportError  # noqa: E402
from mobilegen.export.run import capture  # noqa: E402
from mobilegen.measure.parity import Parity, compare  # noqa: E402
from mobilegen.models.stoic import io_spec  # noqa: E402
from mobilegen.passes.calibration import calibration_feeds, feed_times  # noqa: E402
from mobilegen.passes.precision import PrecisionSpec  # noqa: E402
from mobilegen.sampling.runner import torch_runner  # noqa: E402
from mobilegen.targets import onnx as onnx_target  # noqa: E402
from mobilegen.targets.base import ExportRequest  # noqa: E402
from mobilegen.targets.profile import load_target  # noqa: E402

TIMESTEPS = (999.0, 500.0, 1.0)
# Documented tolerances on this tiny model (worst step PSNR vs fp32 PyTorch, dB); measured
# ~75 dB (fp16), ~45-50 dB (weight-only and dynamic int8).
FP16_MIN_STEP_PSNR = 60.0
INT8_WEIGHT_ONLY_MIN_STEP_PSNR = 38.0
INT8_DYNAMIC_MIN_STEP_PSNR = 35.0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = tiny_config(conditioning="class", num_classes=3)
    model = build_random("stoic", cfg, seed=0).model
    example = model.example_inputs(2, seed=0)
    io = io_spec(cfg)
    work = tmp_path_factory.mktemp("precision")
    profile = load_target("ort-mobile-cpu").model_copy(update={"ort_format": False})
    program = capture(model, example)
    onnx_target.export(ExportRequest(program, io, example, profile, work, "den", 1000))
    component = {
        "inputs": [t.to_dict() for t in io.inputs], "sample_shape": [1, 8, 8],
        "conditioning": {"kind": "class", "labels": [0, 1, 2], "null_label": 3},
        "sampler": {"kind": "dpm++2m", "steps": 10, "guidance_scale": 1.5,
                    "time_spacing": "logsnr", "seed": 0, "num_images": 3,
                    "schedule": {"beta_min": 0.1, "beta_max": 20.0, "eps": 1e-3,
                                 "time_scale": 1000.0}},
    }
    return model, io, example, program, profile, work, component


def _convert(setup, spec, calibration=()):
    _model, io, example, program, profile, work, _ = setup
    arts = onnx_target.export_precision(ExportRequest(
        program, io, example, profile, work, "den", 1000, calibration=tuple(calibration)),
        spec)
    assert [a.format for a in arts] == ["onnx"] and arts[0].precision == spec.tag
    return work / arts[0].file, arts[0]


def _worst_parity(setup, path: Path) -> Parity:
    model, io = setup[0], setup[1]
    run = onnx_target.load(path, 2)
    out = []
    for t in TIMESTEPS:
        inputs = model.example_inputs(2, seed=1, t=t)
        with torch.inference_mode():
            ref = model(*inputs).numpy()
        out.append(compare(ref, run({s.name: x.numpy() for s, x in zip(io.inputs, inputs,
                                                                       strict=True)})))
    return Parity.worst(out)


def _init_types(path: Path) -> dict[int, int]:
    m = onnx.load(str(path))
    types: dict[int, int] = {}
    for i in m.graph.initializer:
        types[i.data_type] = types.get(i.data_type, 0) + 1
    return types


def _init_bytes(path: Path) -> int:
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(i).nbytes for i in onnx.load(str(path)).graph.initializer)


def test_fp16_keeps_io_fp32_and_fragile_ops_fp32(setup):
    path, art = _convert(setup, PrecisionSpec("fp16"))
    m = onnx.load(str(path))
    float32 = onnx.TensorProto.FLOAT
    assert all(v.type.tensor_type.elem_type in (float32, onnx.TensorProto.INT64)
               for v in (*m.graph.input, *m.graph.output))
    assert _init_types(path).get(onnx.TensorProto.FLOAT16, 0) > 10  # weights are half
    assert {"LayerNormalization", "Softmax", "Sin", "Cos"} <= set(art.details["fp32_ops"])
    assert art.details["fp32_timestep_nodes"] >= 3
    # The timestep sinusoids read t in fp32 directly: no fp32 -> fp16 -> fp32 round trip.
    producer = {o: n for n in m.graph.node for o in n.output}
    for node in (n for n in m.graph.node if n.op_type in ("Sin", "Cos")):
        feeder = producer[node.input[0]]
        assert feeder.op_type == "Mul", feeder.op_type
    assert _worst_parity(setup, path).psnr_db >= FP16_MIN_STEP_PSNR


def test_int8_weight_only_stores_int8_weights_and_stays_close(setup):
    fp32 = setup[5] / "den.onnx"
    path, art = _convert(setup, PrecisionSpec("int8", "weight_only"))
    m = onnx.load(str(path))
    weighted = [n for n in m.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")
                and n.input[1].endswith("_dq")]
    assert art.details["quantized_weights"] == len({n.input[1] for n in weighted}) >= 12
    assert _init_types(path)[onnx.TensorProto.INT8] >= 2 * art.details["quantized_weights"]
    assert not any(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") for n in m.graph.node)
    # Weight bytes (the file also holds graph metadata, which tiny models are dominated by).
    assert _init_bytes(path) < 0.4 * _init_bytes(fp32)
    assert path.stat().st_size < fp32.stat().st_size
    assert _worst_parity(setup, path).psnr_db >= INT8_WEIGHT_ONLY_MIN_STEP_PSNR


def test_int8_dynamic_quantizes_matmuls(setup):
    path, art = _convert(setup, PrecisionSpec("int8", "dynamic"))
    ops = set(art.details["operators"])
    assert "ai.onnx:DynamicQuantizeLinear" in ops and "ai.onnx:ConvInteger" not in ops
    assert _worst_parity(setup, path).psnr_db >= INT8_DYNAMIC_MIN_STEP_PSNR


def test_calibration_covers_the_trajectory(setup):
    model, io, *_, component = setup
    feeds = calibration_feeds(torch_runner(model, io), component, count=5)
    times = feed_times(feeds, component)
    assert len(set(times)) == 5
    assert max(times) > 900 and min(times) < 100  # from pure noise to almost clean
    assert times == sorted(times, reverse=True)
    assert all(f["x"].shape == (6, 1, 8, 8) for f in feeds)  # guidance: [cond; null]


def test_int8_static_needs_calibration_then_quantizes_activations(setup):
    model, io, *_, component = setup
    with pytest.raises(ExportError, match="no calibration feeds"):
        _convert(setup, PrecisionSpec("int8", "static"))
    feeds = calibration_feeds(torch_runner(model, io), component, count=4)
    path, art = _convert(setup, PrecisionSpec("int8", "static"), feeds)
    assert art.details["calibration_feeds"] == 4
    m = onnx.load(str(path))
    q_inputs = {n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear"}
    assert any(not name.endswith("weight") for name in q_inputs)  # activations, not just weights
    parity = _worst_parity(setup, path)
    assert np.isfinite(parity.max_abs_error) and parity.cosine > 0.9


def test_ort_format_of_a_quantized_model(setup):
    _model, io, example, program, profile, work, _ = setup
    arts = onnx_target.export_precision(ExportRequest(program, io, example, profile.model_copy(
        update={"ort_format": True}), work, "den", 1000), PrecisionSpec("int8", "dynamic"))
    ort_art = arts[1]
    assert ort_art.format == "ort" and ort_art.runnable, ort_art.details
    assert ort_art.file == "den.int8-dynamic.ort" and (work / ort_art.file).is_file()
    assert _worst_parity(setup, work / ort_art.file).psnr_db >= INT8_DYNAMIC_MIN_STEP_PSNR


def test_unsupported_precision_says_why():
    assert onnx_target.supports(PrecisionSpec("fp16")) is None
    assert onnx_target.supports(PrecisionSpec("int8", "static")) is None
    assert "palettiz" in onnx_target.supports(PrecisionSpec("palettize", bits=4))
