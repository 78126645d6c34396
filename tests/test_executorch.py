"""ExecuTorch target on a tiny STOIC, run in the real `executorch.runtime` (XNNPACK): fp32 parity,
static int8's float paths, the delegation coverage entry, delegates that only lower here, and the
missing-extra error."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from conftest import tiny_capture
from mobilegen.errors import ExportError, TargetUnavailableError
from mobilegen.passes.precision import PrecisionSpec
from mobilegen.targets.base import ExportRequest
from mobilegen.targets.profile import load_target

pytest.importorskip("executorch.runtime")
from mobilegen.targets import executorch as et
from mobilegen.targets import executorch_quant

COVERAGE_KEYS = {"accelerator", "tool", "verdict", "supported_nodes", "total_nodes",
                 "unsupported_ops", "note"}


def _calibration(model, io, n=4):
    return tuple(io.feeds(model.example_inputs(2, seed=10 + i, t=t))
                 for i, t in enumerate(np.linspace(999, 1, n)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, io, example, program = tiny_capture()
    return model, io, example, program, tmp_path_factory.mktemp("executorch")


def _request(tiny, profile="android-cpu-executorch", calibration=()):
    _model, io, example, program, workdir = tiny
    return ExportRequest(program, io, example, load_target(profile), workdir, "denoiser", 0,
                         calibration=calibration)


@pytest.fixture(scope="module")
def fp32(tiny):
    (art,) = et.export(_request(tiny))
    return art


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_fp32_matches_pytorch_in_the_executorch_runtime(tiny, fp32, batch):
    model, io, _, _, workdir = tiny
    inputs = model.example_inputs(batch, seed=5, t=250.0)
    with torch.no_grad():
        ref = model(*inputs).numpy()
    got = et.load(workdir / fp32.file, 2)(io.feeds(inputs))
    assert fp32.runnable and fp32.format == "pte" and fp32.runtime == "executorch"
    assert got.shape == ref.shape and np.abs(ref).max() > 1e-3
    assert np.abs(got - ref).max() <= 1e-5


def test_coverage_entry_in_the_shared_schema(fp32):
    (cov,) = fp32.details["coverage"]
    assert set(cov) >= COVERAGE_KEYS
    assert cov["accelerator"] == "executorch-xnnpack" and "get_delegation_info" in cov["tool"]
    assert 0 < cov["supported_nodes"] <= cov["total_nodes"]
    assert cov["supported_nodes"] == sum(cov["delegated_ops"].values())
    assert cov["total_nodes"] - cov["supported_nodes"] == sum(cov["portable_ops"].values())
    assert cov["unsupported_ops"] == sorted(cov["portable_ops"])
    assert "aten_linear_default" in cov["delegated_ops"]
    # the one node left: the int64 label's cast to float feeding the one-hot lookup
    assert cov["delegated_subgraphs"] == 1
    assert cov["verdict"] == ("full" if not cov["portable_ops"] else "partial")


def test_int8_static_keeps_its_named_float_paths(tiny):
    model, io, example, program, _ = tiny
    spec = PrecisionSpec("int8", "static", keep_float=("blocks.1",))
    converted, details = executorch_quant.quantized_module(
        program, example, spec, list(_calibration(model, io)), io, "denoiser")
    kept = {k["layer"] for k in details["kept_float"]}
    quantized = set(details["quantized_layers"])
    assert any(k.startswith("time_mlp") for k in kept)  # the time path stays float
    assert any(k.startswith("blocks.1") for k in kept) and quantized
    assert not any(q.startswith("blocks.1") for q in quantized)
    by_path = {}
    for n in converted.graph.nodes:
        if n.op == "call_function" and "linear" in str(n.target):
            stack = list((n.meta.get("nn_module_stack") or {}).values())
            weight = n.args[1]
            by_path[stack[-1][0] if stack else ""] = "dequantize" in str(
                getattr(weight, "target", ""))
    for path, is_int8 in by_path.items():
        name = path.removeprefix("L['self'].")
        if any(name == q or name.endswith("." + q) or q in name for q in quantized):
            assert is_int8, path
        if any(name.startswith(k) or k in name for k in kept if k):
            assert not is_int8, path


def test_int8_static_artifact_runs_close_to_fp32(tiny):
    model, io, _, _, workdir = tiny
    req = _request(tiny, calibration=_calibration(model, io))
    (art,) = et.export_precision(req, PrecisionSpec("int8", "static"))
    assert art.precision == "int8-static" and art.details["quantized_layers"]
    inputs = model.example_inputs(2, seed=7, t=500.0)
    with torch.no_grad():
        ref = model(*inputs).numpy()
    got = et.load(workdir / art.file, 2)(io.feeds(inputs))
    err = float(np.mean((got - ref) ** 2))
    assert 0 < err < 0.1 * float(np.mean(ref ** 2))  # quantized (not identical), still close


def test_coreml_lowers_and_says_it_needs_apple_runtime(tiny):
    (art,) = et.export(_request(tiny, "ios-coreml-executorch"))
    (cov,) = art.details["coverage"]
    assert not art.runnable and "Core ML" in art.details["not_run"]
    assert cov["accelerator"] == "executorch-coreml" and cov["supported_nodes"] > 0


def test_static_without_feeds_is_one_line(tiny):
    with pytest.raises(ExportError, match="no calibration feeds"):
        et.export_precision(_request(tiny), PrecisionSpec("int8", "static"))


def test_missing_extra_names_it(monkeypatch):
    from mobilegen.targets import runtime_module

    monkeypatch.setitem(sys.modules, "executorch", None)  # import executorch -> ImportError
    with pytest.raises(TargetUnavailableError, match=r"pip install 'mobilegen\[executorch\]'"):
        runtime_module("executorch")


def test_vulkan_lowers_and_says_the_runtime_lacks_it(tiny):
    (art,) = et.export(_request(tiny, "android-vulkan-executorch"))
    (cov,) = art.details["coverage"]
    assert not art.runnable and "Vulkan" in art.details["not_run"]
    assert cov["accelerator"] == "executorch-vulkan" and cov["supported_nodes"] > 0


def test_qnn_profile_lowers_or_fails_in_one_line(tiny):
    """With onnxruntime-qnn's QNN 2.51 libraries ExecuTorch 1.5.1's QNN AOT fails its device
    config (README); whatever happens, it is an artifact or one line naming QNN."""
    try:
        (art,) = et.export(_request(tiny, "snapdragon-8gen3-executorch"))
    except ExportError as e:
        assert "\n" not in str(e) and "qnn" in str(e).lower()
    else:
        assert art.details["coverage"][0]["accelerator"] == "executorch-qnn-htp"
