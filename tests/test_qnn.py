"""The Qualcomm HTP target (targets/qnn.py) with the real onnxruntime-qnn: Qualcomm's HTP graph
preparation and its x86_64 simulator. Tiny models, few simulated calls."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime_qnn")

from conftest import write_tiny_checkpoint


def _tiny_npu_recipe(tmp: Path) -> Path:
    ckpt = write_tiny_checkpoint(tmp / "tiny.safetensors", conditioning="class", num_classes=3)
    path = tmp / "npu.toml"
    path.write_text(textwrap.dedent(f"""\
        name = "tiny-npu"
        targets = ["snapdragon-8gen3-htp"]

        [model]
        family = "stoic"
        checkpoint = "{ckpt}"

        [sampler]
        steps = 3
        num_images = 1
        guidance_scale = 2.0

        [validate]
        timesteps = [999.0, 1.0]

        [gates]
        min_psnr_db = 20.0
        min_step_psnr_db = 25.0
        min_cosine = 0.99
        """))
    return path


@pytest.fixture(scope="module")
def npu_export(tmp_path_factory):
    """One export of a tiny class-conditional STOIC to the v75 profile, recording the request
    the QNN target received (the real target runs)."""
    from mobilegen.export.run import run_export
    from mobilegen.recipe import load_recipe
    from mobilegen.targets import qnn

    tmp = tmp_path_factory.mktemp("npu")
    recipe = load_recipe(_tiny_npu_recipe(tmp))
    seen = []
    real = qnn.export

    def spy(req):
        seen.append(req)
        return real(req)

    mp = pytest.MonkeyPatch()
    mp.setattr(qnn, "export", spy)
    try:
        result = run_export(recipe, tmp / "out")
    finally:
        mp.undo()
    return recipe, result, seen[0]


def test_compiles_and_runs_whole_on_htp_with_fallback_disabled(npu_export):
    _, result, req = npu_export
    assert req.profile.allow_cpu_fallback is False
    (row,) = result.report.artifacts
    d = row.details
    assert row.artifact == "snapdragon-8gen3-htp/denoiser_ctx.onnx" and row.runnable
    assert (result.out_dir / "snapdragon-8gen3-htp/denoiser_ctx_qnn.bin").stat().st_size > 0
    assert d["residency"]["cpu_nodes"] == []
    assert d["residency"]["htp_nodes"] == d["residency"]["total_nodes"] > 50
    (cov,) = d["coverage"]
    assert cov["accelerator"] == "qnn-htp" and cov["verdict"] == "full"
    assert cov["unsupported_ops"] == []
    # fixed shapes: the sampler's batch (1 image x 2 under guidance)
    assert d["fixed_batch"] == 2 and d["fixed_shapes"]["x"][0] == 2
    assert "Gelu" in d["export_form"]
    # validated in the simulator: parity vs PyTorch and vs the fp32 ONNX, an image, no latency
    assert row.parity["psnr_db"] > 25 and row.end_to_end["psnr_db"] > 20
    assert row.latency is None
    steps = d["simulator"]["parity"]
    assert steps and all(s["vs_fp32_onnx"]["cosine"] > 0.99 for s in steps)
    cycles = d["simulator"]["cycles"]
    assert cycles["total"] > 0 and cycles["by_block"][0]["cycles"] > 0
    assert result.failures == []
    md = (result.out_dir / "report.md").read_text()
    assert "Simulator cycles" in md and "not a phone's latency" in md
    assert "not timed (simulator)" in md
    manifest = json.loads((result.out_dir / "manifest.json").read_text())
    entry = next(f for f in manifest["files"] if f["path"].endswith("_ctx.onnx"))
    assert entry["deploy"]["htp_arch"] == "75"
    assert entry["deploy"]["fixed_shapes"]["x"] == [2, 1, 8, 8]
    assert entry["deploy"]["versions"]["qnn_sdk"]


def test_calibration_feeds_come_from_sampling_trajectories(npu_export):
    from mobilegen.checkpoints.loader import load_checkpoint
    from mobilegen.export.manifest import component_entry
    from mobilegen.models import get_family
    from mobilegen.passes.calibration import feed_times, trajectory_feeds
    from mobilegen.sampling.runner import torch_runner

    recipe, _, req = npu_export
    # as many as asked, at most one per denoiser call of the run (dpm++2m: one per step)
    assert len(req.calibration) == min(req.profile.calibration_feeds, recipe.sampler.steps)
    loaded = load_checkpoint(recipe.checkpoint_path(), "stoic", None)
    io = get_family("stoic").io_spec(loaded.config, loaded.config.image_size)
    component = component_entry(recipe, loaded, io, loaded.config.image_size)
    # the calibration run (seed 1): every feed the target got is one of its denoiser calls
    calls = trajectory_feeds(torch_runner(loaded.model, io), component, seed=1)
    for feed in req.calibration:
        assert any(all(np.array_equal(feed[k], c[k]) for k in feed) for c in calls)
    times = feed_times(list(req.calibration), component)
    all_times = feed_times(calls, component)
    assert max(times) == max(all_times) and min(times) == min(all_times)


def test_context_binary_loads_back_and_matches_the_qdq_model(npu_export):
    from mobilegen.targets import qnn

    _, result, req = npu_export
    folder = result.out_dir / "snapdragon-8gen3-htp"
    runner = qnn.load(folder / "denoiser_ctx.onnx", 2)
    feed = qnn.rebatch(req.calibration[0], 2)[0]
    from_binary = runner(feed)
    opts = qnn.provider_options(req.profile)
    qdq = qnn.session(folder / "denoiser.w8a16.onnx", opts, fallback=False)
    from_qdq = qdq.run(None, feed)[0]
    assert from_binary.shape == from_qdq.shape == feed["x"].shape
    np.testing.assert_allclose(from_binary, from_qdq, atol=1e-6)
    # the runner takes any batch (groups of the fixed batch, the last one filled up)
    one = runner({k: v[:1] for k, v in feed.items()})
    np.testing.assert_allclose(one, from_binary[:1], atol=1e-6)


def _erf_request(tmp: Path, **profile_updates):
    """A model with torch.erf (ONNX Erf at any opset): QNN's HTP backend has no Erf."""
    import torch

    from mobilegen.signature import ModelIO, TensorSpec
    from mobilegen.targets.base import ExportRequest
    from mobilegen.targets.profile import load_target

    class ErfNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(16, 32), torch.nn.Linear(32, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.erf(self.a(x)))

    torch.manual_seed(0)
    model = ErfNet().eval()
    example = (torch.randn(2, 16),)
    program = torch.export.export(model, example)
    io = ModelIO((TensorSpec("x", ("batch", 16), "float32"),),
                 (TensorSpec("out", ("batch", 16), "float32"),))
    profile = load_target("snapdragon-8gen2-htp").model_copy(update=profile_updates)
    feeds = tuple({"x": np.random.default_rng(i).standard_normal((2, 16), np.float32)}
                  for i in range(3))
    return ExportRequest(program=program, io=io, example=example, profile=profile,
                         workdir=tmp, stem="erfnet", param_bytes=4 * 1056,
                         calibration=feeds)


def test_unsupported_op_fails_naming_the_op_and_node(tmp_path):
    from mobilegen.errors import EXIT_ERROR, ExportError
    from mobilegen.targets import qnn

    with pytest.raises(ExportError) as e:
        qnn.export(_erf_request(tmp_path))
    msg = str(e.value)
    assert e.value.exit_code == EXIT_ERROR and "\n" not in msg
    assert "unsupported ops: Erf;" in msg and "v73" in msg
    # the node's name as it stands in the quantized model HTP was given
    import onnx

    qdq = onnx.load(str(tmp_path / "erfnet.w8a16.onnx"))
    erf = next(n.name for n in qdq.graph.node if n.op_type == "Erf")
    assert f"nodes: {erf} (Erf)" in msg
    assert not (tmp_path / "erfnet_ctx.onnx").exists()  # nothing half-written


def test_fallback_allowed_reports_residency_instead(tmp_path):
    from mobilegen.targets import qnn

    req = _erf_request(tmp_path, allow_cpu_fallback=True, simulate="never")
    (art,) = qnn.export(req)
    res, (cov,) = art.details["residency"], art.details["coverage"]
    assert cov["verdict"] == "partial" and cov["unsupported_ops"] == ["Erf"]
    assert 0 < res["htp_nodes"] < res["total_nodes"] == cov["total_nodes"]
    assert "Erf" in {n["op_type"] for n in res["cpu_nodes"]}
    assert not art.runnable and "not simulated" in art.details["not_run"]


@pytest.mark.parametrize("consume", [False, True])
def test_a_consumed_capture_loses_its_weights_once_the_onnx_is_written(tmp_path, consume):
    """ExportRequest.consume_program (a child's last use of its capture): HTP reads the weights
    from its fp32 ONNX, so the capture's copy is freed before the compile loads them again (on
    SD-1.5 that copy was 3.4 of the child's 12.1 GB); it still compiles."""
    import dataclasses

    from mobilegen.targets import qnn

    req = _erf_request(tmp_path, allow_cpu_fallback=True, simulate="never")
    req = dataclasses.replace(req, consume_program=consume)
    held = lambda: sum(t.untyped_storage().nbytes() for t in req.program.state_dict.values())
    before = held()
    (art,) = qnn.export(req)
    assert before > 0 and held() == (0 if consume else before)
    assert (tmp_path / art.file).is_file() and art.details["residency"]["htp_nodes"] > 0


def test_qnn_profiles_validate(tmp_path):
    from mobilegen.targets.profile import TargetProfile

    good = TargetProfile.model_validate({"name": "p", "runtime": "qnn", "precision": "w8a16",
                                         "htp_arch": "75", "calibration_feeds": 4,
                                         "accelerator": "npu"})
    assert good.coverage_accelerator == "qnn-htp"
    for bad, key in [
        ({"runtime": "qnn", "precision": "w8a16", "calibration_feeds": 4}, "htp_arch"),
        ({"runtime": "qnn", "precision": "fp32", "htp_arch": "75"}, "precision"),
        ({"runtime": "qnn", "precision": "w8a16", "htp_arch": "75"}, "calibration_feeds"),
        ({"runtime": "onnxruntime", "precision": "w8a16"}, "precision"),
        ({"runtime": "onnxruntime", "htp_arch": "75"}, "htp_arch"),
    ]:
        with pytest.raises(ValueError, match=key):
            TargetProfile.model_validate({"name": "p", **bad})


def test_missing_extra_names_it(monkeypatch):
    from mobilegen.errors import TargetUnavailableError
    from mobilegen.targets import runtime_module

    monkeypatch.setitem(sys.modules, "onnxruntime_qnn", None)  # import fails as if absent
    with pytest.raises(TargetUnavailableError, match=r"mobilegen\[qnn\]"):
        runtime_module("qnn")


# ----------------------------------------------------------------------------- the tiny UNet
# recipes/unet-tiny.toml's UNet with fewer attentions (same stages, ResNets and 8x8 / 4x4 norms)
TINY_UNET = dict(block_out_channels=[16, 32], down_resnets=[2, 1], down_attentions=[0, 1],
                 mid_resnets=1, mid_attentions=1, up_resnets=[2, 3], up_attentions=[1, 0],
                 cross_attention_dim=16, attention_head_dim=2, norm_num_groups=8,
                 sample_size=8, context_len=8)


def test_tiny_unet_w8a16_numbers_hold_in_the_htp_simulator(tmp_path):
    """A tiny UNet at the sampler's batch 2 (one image under guidance): its 8x8 stage has
    GroupNorm -> SiLU -> Conv, which HTP computes wrongly in the exported form (this model
    without qnn_graph's group-view SiLU: simulator vs fp32 ONNX 13.9-16.2 dB, cosine ~0, while
    the same QDQ model on the CPU EP is at 54-57 dB: HTP's execution, not quantization; with
    it 53.8-56.6 dB). Each simulated step must match the fp32 ONNX and the QDQ model on the
    CPU EP, and the quantization-only split is reported."""
    from mobilegen.targets import qnn
    from test_qnn_graph import unet_htp_request

    (art,) = qnn.export(unet_htp_request(TINY_UNET, tmp_path))
    d = art.details
    assert art.runnable and d["residency"]["cpu_nodes"] == [] and d["fixed_batch"] == 2
    steps = d["simulator"]["parity"]
    assert [s["t"] for s in steps] == [999.0, 500.0, 1.0]
    for s in steps:
        assert s["vs_fp32_onnx"]["psnr_db"] > 40 and s["vs_fp32_onnx"]["cosine"] > 0.999, s
        assert s["vs_qdq_cpu"]["psnr_db"] > 45, s  # HTP runs the QDQ model as the CPU EP does
        assert s["qdq_cpu_vs_fp32_onnx"]["psnr_db"] > 40, s
    assert "diagnosis" not in d["simulator"]


def test_htp_divergence_names_htp_not_quantization():
    from mobilegen.targets.qnn import htp_divergence

    def step(htp, quant):
        return {"vs_qdq_cpu": {"psnr_db": htp}, "qdq_cpu_vs_fp32_onnx": {"psnr_db": quant}}

    assert htp_divergence([step(60.0, 41.0), step(None, 45.0)]) is None
    msg = htp_divergence([step(15.3, 40.8), step(52.0, 44.0)])
    assert msg is not None and "15.3 dB" in msg and "40.8 dB" in msg
    assert "calibration ranges do not explain" in msg


# ----------------------------------------------------------------------------- W8A8 and fp16
@pytest.mark.parametrize("profile,arch", [("snapdragon-8gen3-htp-w8a8", "75"),
                                          ("snapdragon-8gen3-htp-fp16", "75"),
                                          ("snapdragon-8gen3-htp-fp16", "73"),
                                          ("snapdragon-8gen3-htp-fp16", "79")])
def test_w8a8_and_fp16_rows_compile_and_simulate(npu_export, tmp_path, profile, arch):
    """The W8A8 and fp16 profiles on the tiny STOIC: whole on HTP, simulated. fp16 takes the
    fp32 ONNX with enable_htp_fp16_precision + the SoC's soc_model (which the EP demands)."""
    import dataclasses

    from mobilegen.targets import qnn
    from mobilegen.targets.profile import load_target

    _, _, req = npu_export
    prof = load_target(profile).model_copy(update={"htp_arch": arch})
    (art,) = qnn.export(dataclasses.replace(req, profile=prof, workdir=tmp_path))
    d = art.details
    assert art.precision == prof.precision and art.runnable
    assert d["residency"]["cpu_nodes"] == [] and d["coverage"][0]["verdict"] == "full"
    steps = d["simulator"]["parity"]
    if prof.precision == "fp16":
        assert d["deploy"]["provider_options"]["soc_model"] == qnn.SOC_MODEL[arch]
        assert all(s["vs_fp32_onnx"]["psnr_db"] > 33 for s in steps), steps
        assert "qdq_cpu_vs_fp32_onnx" not in steps[0]
    else:  # 8-bit activations: coarse on this tiny random-weight model, but HTP runs it as
        # the CPU EP runs the same QDQ model
        assert d["method"].startswith("onnxruntime get_qnn_qdq_config") and "W8A8" in d["method"]
        # measured: 11.7 / 21.6 / 22.6 dB vs fp32 at t = 1000 / 604 / 75, where the same QDQ
        # model on the CPU EP gives 12.7 / 27.4 / 45.8 dB: HTP's 8-bit kernels cost the rest
        assert all(s["vs_fp32_onnx"]["psnr_db"] > 9 for s in steps), steps
        assert all(s["vs_fp32_onnx"]["cosine"] > 0.7 for s in steps), steps
