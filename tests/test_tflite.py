"""TFLite / LiteRT target on a tiny STOIC: one conversion shared by the module, run in the real
LiteRT interpreter (XNNPACK); precision variants made by ai-edge-quantizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_capture
from mobilegen.errors import ExportError
from mobilegen.passes.precision import PrecisionSpec
from mobilegen.targets.base import ExportRequest
from mobilegen.targets.profile import load_target

pytest.importorskip("litert_torch")
from mobilegen.targets import tflite


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, io, example, program = tiny_capture()
    profile = load_target("android-cpu")
    workdir = tmp_path_factory.mktemp("tflite")
    (art,) = tflite.export(ExportRequest(program, io, example, profile, workdir, "denoiser", 0))
    variants = {}
    for spec in (PrecisionSpec("fp16"), PrecisionSpec("int8"), PrecisionSpec("int8", "dynamic")):
        (v,) = tflite.export_precision(ExportRequest(
            program, io, example, profile, workdir, "denoiser", 0), spec)
        variants[spec.tag] = v
    return model, io, program, example, profile, workdir, art, variants


def _run(model, io, path, batch, seed=3, t=500.0):
    inputs = model.example_inputs(batch, seed=seed, t=t)
    with torch.no_grad():
        ref = model(*inputs).numpy()
    got = tflite.load(path, 2)(io.feeds(inputs))
    return ref, got


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_fp32_matches_pytorch_at_any_batch(exported, batch):
    model, io, _, _, _, workdir, art, _ = exported
    ref, got = _run(model, io, workdir / art.file, batch)
    assert got.shape == ref.shape
    assert np.abs(ref).max() > 1e-3  # a model whose output is ~0 would prove nothing
    assert np.abs(got - ref).max() <= 1e-5


def test_report_lists_operators_and_fixed_shapes(exported):
    *_, art, _ = exported
    d = art.details
    assert art.format == "tflite" and art.runtime == "litert" and art.precision == "fp32"
    assert {"FULLY_CONNECTED", "SOFTMAX", "BATCH_MATMUL"} <= set(d["operators"])
    assert all(isinstance(n, int) and n > 0 for n in d["operators"].values())
    assert d["custom_ops"] == []
    assert d["fixed_shapes"] == {"x": [2, 1, 8, 8], "t": [2], "y": [2]}
    assert d["input_order"] == ["args_0 = x", "args_1 = t", "args_2 = y"]


@pytest.mark.parametrize(("tag", "tol"), [("fp16", 1e-3), ("int8-weight_only", 2e-2),
                                          ("int8-dynamic", 5e-2)])
def test_precision_variants_are_smaller_and_close(exported, tag, tol):
    model, io, *_, workdir, art, variants = exported
    v = variants[tag]
    assert v.file == f"denoiser.{tag}.tflite" and v.precision == tag
    assert (workdir / v.file).stat().st_size < 0.8 * (workdir / art.file).stat().st_size
    ref, got = _run(model, io, workdir / v.file, 3)
    err = np.abs(got - ref).max()
    assert 0 < err <= tol * np.abs(ref).max() * 10  # changed, but still the same function
    assert "DEQUANTIZE" in v.details["operators"] or tag == "int8-dynamic"


def test_static_int8_quantizes_weight_ops_only_and_keeps_float_paths_float(exported):
    model, io, program, example, profile, workdir, *_ = exported
    calib = [io.feeds(model.example_inputs(2, seed=s, t=t))
             for s, t in enumerate((999.0, 750.0, 500.0, 250.0, 1.0))]
    req = ExportRequest(program, io, example, profile, workdir, "denoiser", 0,
                        calibration=tuple(calib))
    (v,) = tflite.export_precision(req, PrecisionSpec("int8", "static"))
    assert "5 calibration calls" in v.details["method"] and "W8A8" in v.details["method"]
    assert "QUANTIZE" in v.details["operators"]
    kept = {k["layer"]: k["reason"] for k in v.details["kept_float"]}
    assert kept["time_mlp.0"].startswith("time/conditioning") and "stem.0" in kept
    # the ONNX target's rule: the stem (every conv before the first residual add) and the head
    assert kept["stem.2"].startswith("stem/head") and kept["conv_out"].startswith("stem/head")
    assert "blocks.1.mlp.fc2" in v.details["quantized_layers"]
    assert "blocks.0.mlp.fc1" not in kept and "blocks.0.mlp.fc1" in v.details["quantized_layers"]
    assert not any(p.startswith("time_mlp") or "adaln" in p for p in v.details["quantized_layers"])
    # No quantized BATCH_MATMUL / softmax / norm math: attention and adds stay float.
    ops = v.details["operators"]
    assert ops.get("BATCH_MATMUL", 0) >= 2 and ops["FULLY_CONNECTED"] >= 12
    for t in (999.0, 1.0):
        ref, got = _run(model, io, workdir / v.file, 2, seed=7, t=t)
        assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()
    (a16,) = tflite.export_precision(req, PrecisionSpec("int8", "static", activation_bits=16))
    assert a16.precision == "int8-static-a16" and "W8A16" in a16.details["method"]
    ref, got = _run(model, io, workdir / a16.file, 2, seed=7, t=500.0)
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
    with pytest.raises(ExportError, match="no calibration feeds"):
        tflite.export_precision(ExportRequest(
            program, io, example, profile, workdir, "denoiser", 0), PrecisionSpec("int8",
            "static"))


@pytest.mark.parametrize("bits", [8, 16])
def test_static_ranges_cover_every_calibration_call_not_only_the_last(exported, bits):
    # Trajectory feeds come from t=1000 down to t=0. ai-edge-quantizer's own calibrate() keeps a
    # moving average of min/max (0.95 old + 0.05 new), so the first, large call was forgotten and
    # its activations clipped at W8A8 and W8A16 alike (relative error 0.19 either way, measured).
    model, io, program, example, profile, workdir, *_ = exported
    big = io.feeds(model.example_inputs(2, seed=0, t=999.0))
    big["x"] = big["x"] * 4.0
    calib = [big] + [io.feeds(model.example_inputs(2, seed=s, t=1.0)) for s in range(1, 25)]
    req = ExportRequest(program, io, example, profile, workdir, "denoiser", 0,
                        calibration=tuple(calib))
    (v,) = tflite.export_precision(req, PrecisionSpec("int8", "static", activation_bits=bits))
    assert "min and max over all 25 calibration calls" in v.details["method"]
    ref = tflite.load(workdir / "denoiser.tflite", 1)(big)
    got = tflite.load(workdir / v.file, 1)(big)
    assert np.abs(got - ref).max() < (0.04 if bits == 8 else 0.015) * np.abs(ref).max()


def test_static_sensitivity_plan_keeps_layers_float_until_the_target(exported):
    from mobilegen.measure.parity import compare

    model, io, program, example, profile, workdir, art, _ = exported
    calib = [io.feeds(model.example_inputs(2, seed=s, t=t))
             for s, t in enumerate((999.0, 500.0, 1.0))]
    req = ExportRequest(program, io, example, profile, workdir, "denoiser", 0,
                        calibration=tuple(calib))
    (v,) = tflite.export_precision(req, PrecisionSpec("int8", "static", target_step_psnr_db=58.0))
    plan = v.details["sensitivity_plan"]
    assert plan["trail"][0]["step_psnr_db"] < 58.0  # all quantized misses it: the plan must act
    assert plan["met"] and plan["keep_float"] and plan["achieved_step_psnr_db"] >= 58.0
    assert plan["most_sensitive"][0]["layer"] == plan["keep_float"][0]
    kept = {k["layer"]: k["reason"] for k in v.details["kept_float"]}
    for layer in plan["keep_float"]:
        assert "sensitivity plan" in kept[layer] and layer not in v.details["quantized_layers"]
    assert v.details["quantized_layers"]  # the rest is still int8
    fp32, int8 = tflite.load(workdir / art.file, 1), tflite.load(workdir / v.file, 1)
    worst = min(compare(fp32(f), int8(f)).psnr_db for f in calib)
    assert worst >= 58.0 and abs(worst - plan["achieved_step_psnr_db"]) < 0.5


def test_module_regex_matches_litert_tensor_names():
    import re

    names = {("stem", "stem.2"): "Stoic/container.Sequential_stem/conv.Conv2d_2;2",
             ("blocks.0", "blocks.0.attn", "blocks.0.attn.to_q"):
                 "Stoic/StoicBlock_0/Attention_attn/linear.Linear_to_q;;x",
             ("blocks.1", "blocks.1.adaln", "blocks.1.adaln.1"):
                 "Stoic/StoicBlock_1/container.Sequential_adaln/linear.Linear_1"}
    for stack, name in names.items():
        assert re.search(tflite.module_regex(list(stack)), name), stack
    assert not re.search(tflite.module_regex(["blocks.1", "blocks.1.attn", "blocks.1.attn.to_q"]),
                         names[("blocks.0", "blocks.0.attn", "blocks.0.attn.to_q")])
    assert not re.search(tflite.module_regex(["blocks.1"]), "Stoic/StoicBlock_10/Mlp_mlp")
    assert not re.search(tflite.module_regex(["stem", "stem.2"]), "Stoic/StoicBlock_2/x")


def test_palettization_is_refused_with_a_reason():
    why = tflite.supports(PrecisionSpec("palettize", bits=4))
    assert why is not None and "Core ML" in why
    assert tflite.supports(PrecisionSpec("fp16")) is None
    why = tflite.supports(PrecisionSpec("int8", "static", calibration_method="percentile"))
    assert why is not None and "percentile" in why and "min/max" in why
    assert tflite.supports(PrecisionSpec("int8", "static")) is None


def test_fp16_profile_base_artifact_is_fp16(exported, tmp_path):
    model, io, program, example, *_ = exported
    (art,) = tflite.export(ExportRequest(
        program, io, example, load_target("android-gpu"), tmp_path, "denoiser", 0))
    assert art.file == "denoiser.fp16.tflite" and art.precision == "fp16"
    assert art.details["app_delegate"] == "gpu"
    assert not (tmp_path / "denoiser.tflite").exists()  # the fp32 source stayed in a temp dir
    ref, got = _run(model, io, tmp_path / art.file, 2)
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max() * 10


def test_files_past_the_flatbuffer_limit_are_described_not_refused(exported):
    # A >2 GiB conversion takes minutes (benchmarks/bench_large_export.py does the SD-1.5 UNet);
    # here: small files carry no note, large ones say what the app's runtime must support.
    art = exported[6]
    assert "large_model_layout" not in art.details
    assert tflite.large_model_note(tflite.FLATBUFFER_LIMIT_BYTES) is None
    note = tflite.large_model_note(3 * 1024**3)
    assert note is not None and "3.00 GiB" in note and "buffer offsets" in note


def test_fp16_pass_on_an_fp16_profile_makes_no_second_copy(exported, tmp_path):
    _, io, program, example, *_ = exported
    (row,) = tflite.export_precision(ExportRequest(
        program, io, example, load_target("android-gpu"), tmp_path, "denoiser", 0),
        PrecisionSpec("fp16"))
    assert not row.runnable and "already has fp16 weights" in row.details["skipped"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("reloaded", [False, True])
def test_a_consumed_capture_loses_its_weights_once_lowered_and_the_file_is_the_same(
        exported, tmp_path, reloaded):
    """ExportRequest.consume_program (a child's last use of its capture): the capture's weights
    are freed once litert-torch has copied them into MLIR, whether torch owns their storage or
    torch.export.load read them from a .pt2 (not resizable); the file still matches PyTorch."""
    model, io, program, example, profile, *_ = exported
    mine = tiny_capture()[3]  # a capture of its own: the fixture's is shared
    if reloaded:
        torch.export.save(mine, str(tmp_path / "c.pt2"))
        mine = torch.export.load(str(tmp_path / "c.pt2"))
    held = lambda ep: sum(t.untyped_storage().nbytes() for t in ep.state_dict.values())
    before = held(mine)
    (got,) = tflite.export(ExportRequest(mine, io, example, profile, tmp_path, "denoiser", 0,
                                         consume_program=True))
    assert before > 0 and held(mine) == 0
    ref, out = _run(model, io, tmp_path / got.file, 2)
    assert np.abs(out - ref).max() <= 1e-5
    assert held(program) >= before  # a capture not consumed keeps its weights


def test_finite_weights_are_not_written_by_the_inf_clamp(monkeypatch):
    """litert-torch clamps each inlined weight in place; on a capture mapped from its file that
    write copies every page. Inside tflite._finite_weights_read_only a finite weight is passed
    on without litert-torch's clamp being called; one with an inf goes to it."""
    from litert_torch.backend import inline_consts

    clamped = []
    clamp = inline_consts._clamp_inf_values

    def spy(tensor):
        clamped.append(tensor)
        return clamp(tensor)

    monkeypatch.setattr(inline_consts, "_clamp_inf_values", spy)
    finite, inf = torch.arange(6.0), torch.tensor([1.0, float("inf"), -float("inf")])
    with tflite._finite_weights_read_only():
        assert inline_consts._clamp_inf_values(finite) is finite
        assert inline_consts._clamp_inf_values(inf).tolist() == [
            1.0, torch.finfo(torch.float32).max, torch.finfo(torch.float32).min]
    assert len(clamped) == 1 and clamped[0] is inf and finite.tolist() == [0, 1, 2, 3, 4, 5]
    assert inline_consts._clamp_inf_values is spy  # restored
