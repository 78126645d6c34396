"""LiteRT's GPU accelerator on this host (targets/litert_gpu.py), on tiny models with the real
accelerator: placement whole and blocked (an fp16 EMBEDDING_LOOKUP, which the GPU rejects),
parity on the GPU, the require_full_delegation gate, and a host without a driver.

These tests need a Vulkan driver (`make setup` installs SwiftShader as root). Without one they
FAIL with the reason: the GPU path is a part of the build, not an optional extra."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch

from conftest import tiny_capture, write_recipe, write_tiny_checkpoint
from mobilegen.targets.base import ExportRequest
from mobilegen.targets.profile import load_target

pytest.importorskip("litert_torch")
from mobilegen.targets import litert_gpu, tflite
from mobilegen.targets.vulkan_driver import find_driver


@pytest.fixture(scope="module")
def driver():
    found = find_driver()
    if not found.found:
        pytest.fail(f"LiteRT GPU tests need a Vulkan driver: {found.reason}", pytrace=False)
    return found


@pytest.fixture(scope="module")
def gpu_files(driver, tmp_path_factory):
    """The tiny class-conditional STOIC through android-gpu twice: in the profile's accelerator
    form (label_one_hot) and as captured (its label table an fp16 EMBEDDING_LOOKUP)."""
    from mobilegen.export.run import capture
    from mobilegen.targets.accel_rewrites import rewrite_forms

    model, io, example, plain = tiny_capture()
    profile = load_target("android-gpu")
    with rewrite_forms(profile.accel_rewrites):
        formed = capture(model, example)
    out = {}
    for name, program in (("whole", formed), ("blocked", plain)):
        workdir = tmp_path_factory.mktemp(name)
        (art,) = tflite.export(ExportRequest(program, io, example, profile, workdir, "denoiser",
                                             0))
        out[name] = (workdir / art.file, art)
    return model, io, out


def _gpu_entry(art):
    (e,) = [e for e in art.details["coverage"] if e["accelerator"] == "litert-gpu"]
    return e


def test_the_accelerator_takes_the_whole_graph_and_says_what_precision_it_used(gpu_files, driver):
    _, _, files = gpu_files
    _, art = files["whole"]
    e = _gpu_entry(art)
    assert e["tool"] == litert_gpu.TOOL and e["verdict"] == "full", e
    assert e["supported_nodes"] == e["total_nodes"] == sum(art.details["operators"].values())
    assert e["unsupported_ops"] == [] and "is_fully_accelerated() = True" in e["note"]
    prec = art.details["litert_gpu"]["precision"]
    assert prec["precision"] in ("f32", "f16")
    if driver.kind == "swiftshader":  # shaderFloat16 = false: no WebGPU shader-f16
        assert prec["precision"] == "f32" and prec["max_abs_f16_vs_f32"] == 0.0
    if prec["precision"] == "f32":  # fp16 evidence then comes from the fp16 safety check
        assert art.details["fp16_safety"]["min_headroom_after"] > 1
        assert "fp16_safety" in art.details["fp16_evidence"]


def test_an_op_the_gpu_lacks_is_named_with_the_accelerators_reason(gpu_files):
    _, _, files = gpu_files
    _, art = files["blocked"]
    e = _gpu_entry(art)
    assert e["verdict"] == "partial", e
    assert "EMBEDDING_LOOKUP" in e["unsupported_ops"]
    assert "quantization" in e["reasons"]["EMBEDDING_LOOKUP"]
    assert 0 < e["supported_nodes"] < e["total_nodes"] == sum(art.details["operators"].values())


def test_require_full_delegation_fails_naming_the_blocking_ops(gpu_files):
    from mobilegen.export.gates import delegation_failures
    from mobilegen.report.results import ArtifactResult

    _, _, files = gpu_files
    rows = {k: ArtifactResult(f"android-gpu/{k}.tflite", "tflite", "android-gpu", "fp16", True,
                              10, a.details) for k, (_, a) in files.items()}
    assert delegation_failures(rows["whole"], "litert-gpu") == []
    (failure,) = delegation_failures(rows["blocked"], "litert-gpu")
    assert "litert-gpu does not run the whole graph" in str(failure)
    assert "EMBEDDING_LOOKUP" in str(failure) and "CompiledModel" in str(failure)


@pytest.mark.parametrize("batch", [1, 3])
def test_parity_on_the_gpu_accelerator(gpu_files, batch):
    model, io, files = gpu_files
    path, _ = files["whole"]
    runner = tflite.load(path, 2, accelerator="gpu")
    assert isinstance(runner, tflite.GpuBatchedRunner) and runner.gpu.accelerators == "GPU"
    inputs = model.example_inputs(batch, seed=5, t=600.0)
    with torch.no_grad():
        ref = model(*inputs).numpy()  # the one-hot label form is exact for integer labels
    got = runner(io.feeds(inputs))
    cpu = tflite.load(path, 2)(io.feeds(inputs))
    assert got.shape == ref.shape and np.abs(ref).max() > 1e-3
    assert np.abs(got - cpu).max() <= 1e-4 * np.abs(ref).max()  # the same file on XNNPACK
    assert np.abs(got - ref).max() <= 1e-2 * np.abs(ref).max()  # fp16 weights vs PyTorch
    t = runner.host_time(io.feeds(inputs), 1, 3)
    assert t["runs"] == 3 and t["median_ms"] > 0
    assert "not device latency" in t["label"] or "not a phone's latency" in t["label"]
    assert "LiteRT GPU accelerator" in runner.row_details["host_delegate"]
    runner.close()


def test_a_partial_graph_runs_with_cpu_fallback(gpu_files):
    model, io, files = gpu_files
    path, _ = files["blocked"]
    runner = tflite.load(path, 2, accelerator="gpu")
    assert runner.gpu.accelerators == "GPU + CPU fallback"
    inputs = model.example_inputs(2, seed=1, t=300.0)
    with torch.no_grad():
        ref = model(*inputs).numpy()
    assert np.abs(runner(io.feeds(inputs)) - ref).max() <= 1e-2 * np.abs(ref).max()
    runner.close()


def test_the_canary_pad_is_rejected_by_the_gpu_itself(driver):
    from mobilegen.targets.coverage import LITERT_GPU_CANARY

    found = litert_gpu.check(LITERT_GPU_CANARY, 2, None)
    e = found.coverage
    assert e["verdict"] == "partial" and e["unsupported_ops"] == ["PAD"], e
    assert "expected 4x2 or 3x2" in e["reasons"]["PAD"]
    assert (e["supported_nodes"], e["total_nodes"]) == (1, 2)


def test_a_dead_accelerator_process_is_an_error_not_a_crash(driver):
    worker = litert_gpu.GpuWorker(driver)
    worker.proc.kill()
    worker.proc.wait()
    with pytest.raises(litert_gpu.GpuWorkerError, match="process"):
        worker.request(("run", "gpu", {}))


def test_without_a_driver_the_row_says_why_and_nothing_crashes(gpu_files, monkeypatch):
    """A host with no Vulkan driver: coverage 'unknown' naming the reason, the runner falls
    back to XNNPACK and says so (the export goes on)."""
    model, io, files = gpu_files
    path, _ = files["whole"]
    monkeypatch.setitem(os.environ, "VK_ICD_FILENAMES", "/nonexistent/icd.json")
    assert not find_driver().found
    e = litert_gpu.check(path, 10, None).coverage
    assert e["verdict"] == "unknown" and "/nonexistent/icd.json" in e["note"]
    runner = tflite.load(path, 2, accelerator="gpu")
    assert not isinstance(runner, tflite.GpuBatchedRunner)
    assert "not run on the GPU accelerator" in runner.row_details["gpu_run"]
    inputs = model.example_inputs(2, seed=2, t=100.0)
    assert runner(io.feeds(inputs)).shape == (2, 1, 8, 8)


def test_export_through_a_gpu_profile_gates_on_the_accelerator(driver, tmp_path, monkeypatch):
    """`mobilegen export` with android-gpu minus its accelerator form: exit 3 naming
    EMBEDDING_LOOKUP; the row still validated on the GPU (with CPU fallback), its time labelled
    host time and not gated as latency (max_latency_ms = 0.001 would fail any latency)."""
    import shutil

    from typer.testing import CliRunner

    from mobilegen.cli.main import app
    from mobilegen.targets.profile import PROFILES_DIR

    folder = tmp_path / "profiles"
    folder.mkdir()
    for p in PROFILES_DIR.glob("*.toml"):
        shutil.copy(p, folder / p.name)
    raw = (PROFILES_DIR / "android-gpu.toml").read_text().replace(
        'name = "android-gpu"', 'name = "android-gpu-raw"')
    raw = re.sub(r"^accel_rewrites = .*$", "accel_rewrites = []", raw, flags=re.M)
    (folder / "android-gpu-raw.toml").write_text(raw)
    monkeypatch.setattr("mobilegen.targets.profile.PROFILES_DIR", folder)
    ckpt = write_tiny_checkpoint(tmp_path / "t.safetensors", conditioning="class", num_classes=3)
    recipe = write_recipe(tmp_path / "t.toml", ckpt, gates="max_latency_ms = 0.001")
    recipe.write_text(recipe.read_text().replace('["ort-mobile-cpu"]', '["android-gpu-raw"]'))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["export", str(recipe), "--out", str(out), "--no-cache"])
    assert result.exit_code == 3, result.output
    (row,) = json.loads((out / "report.json").read_text())["artifacts"]
    (failure,) = row["gates"]
    assert "require_full_delegation" in failure and "EMBEDDING_LOOKUP" in failure
    assert row.get("latency") is None and row["details"]["gpu_host_time"]["median_ms"] > 0
    assert "GPU + CPU fallback" in row["details"]["host_delegate"]
    assert row["parity"]["psnr_db"] > 60 and row["end_to_end"]["psnr_db"] > 40
    md = (out / "report.md").read_text()
    assert "GPU accelerator: LiteRT GPU accelerator" in md and "Precision computed:" in md
    assert "SwiftShader host" in result.output or "host GPU" in result.output
    # the artifacts alone: `sample --target tflite-gpu` draws through the GPU accelerator
    png = tmp_path / "gpu.png"
    sampled = CliRunner().invoke(app, ["sample", str(out), "--target", "tflite-gpu", "--steps",
                                       "1", "--png", str(png), "--json"])
    assert sampled.exit_code == 0, sampled.output
    assert png.is_file() and "android-gpu-raw/denoiser.fp16.tflite" in sampled.stdout


def test_the_installer_never_fails_the_build_and_says_why(monkeypatch):
    """`make setup` runs `vulkan_driver --install`: without a driver and without apt it returns
    a warning line naming the reason (exit 0), which is what the GPU tests then fail with."""
    from mobilegen.targets import vulkan_driver

    monkeypatch.setitem(os.environ, "VK_ICD_FILENAMES", "/nonexistent/icd.json")
    monkeypatch.setattr(vulkan_driver.shutil, "which", lambda _: None)
    ok, line = vulkan_driver.install()
    assert not ok and line.startswith("warning:") and "apt-get is not available" in line
    assert vulkan_driver.main(["--install"]) == 0
