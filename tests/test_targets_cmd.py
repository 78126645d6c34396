"""Target profiles: the `targets` command, profile validation, a missing SDK, and one export to
ONNX Runtime, LiteRT and Core ML at once."""

from __future__ import annotations

import importlib
import json
import platform

import pytest
from typer.testing import CliRunner

from conftest import write_recipe
from mobilegen.cli.main import app
from mobilegen.errors import RecipeError, TargetUnavailableError
from mobilegen.targets import profile as profile_mod
from mobilegen.targets import runtime_module

runner = CliRunner()


def test_targets_json_lists_every_profile_with_what_it_produces():
    result = runner.invoke(app, ["targets", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(rows) >= {"ios-ane", "ios-gpu", "android-cpu", "android-gpu", "ort-mobile-cpu"}
    assert rows["ios-ane"]["runtime"] == "coreml" and rows["ios-ane"]["layout"] == "ane"
    assert rows["ios-ane"]["precision"] == "fp16" and rows["ios-ane"]["extra"] == "coreml"
    assert ".mlpackage" in rows["ios-gpu"]["produces"]
    assert ".tflite" in rows["android-cpu"]["produces"] and rows["android-gpu"]["delegate"] == "gpu"
    assert ".ort" in rows["ort-mobile-cpu"]["produces"]
    assert "delegate" not in rows["ios-gpu"]  # only the profile's own runtime's settings


def test_targets_table_for_people():
    result = runner.invoke(app, ["targets"])
    assert result.exit_code == 0
    assert "ios-ane" in result.stdout and "CPU_AND_NE" in result.stdout


@pytest.mark.parametrize(("body", "message"), [
    ('runtime = "coreml"\ndelegate = "gpu"', "key 'delegate' applies to runtime 'litert' only"),
    ('runtime = "litert"\nlayout = "ane"', "key 'layout': 'ane' needs runtime 'coreml'"),
    ('runtime = "onnxruntime"\nprecision = "fp16"', "onnxruntime profiles export fp32"),
    ('runtime = "coreml"\nrewrites = ["gelu2silu"]', "unknown rewrite 'gelu2silu'"),
    ('runtime = "coreml"\ndeployment_target = "iOS12"', "key 'deployment_target'"),
    ('runtime = "litert"\ncolour = 1', "unknown key 'colour'"),
])
def test_bad_profiles_are_one_line_errors_naming_the_key(tmp_path, monkeypatch, body, message):
    (tmp_path / "bad.toml").write_text(f'name = "bad"\n{body}\n')
    monkeypatch.setattr(profile_mod, "PROFILES_DIR", tmp_path)
    with pytest.raises(RecipeError) as err:
        profile_mod.load_target("bad")
    assert message in str(err.value) and "bad.toml" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("runtime", "sdk", "extra"), [("litert", "litert_torch", "tflite"),
                                                       ("coreml", "coremltools", "coreml")])
def test_missing_sdk_names_the_extra(monkeypatch, runtime, sdk, extra):
    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name == sdk:
            raise ModuleNotFoundError(f"No module named '{sdk}'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(TargetUnavailableError, match=rf"pip install 'mobilegen\[{extra}\]'"):
        runtime_module(runtime)


@pytest.fixture(scope="module")
def three_targets(tmp_path_factory):
    from conftest import write_tiny_checkpoint

    tmp = tmp_path_factory.mktemp("three")
    ckpt = write_tiny_checkpoint(tmp / "tiny.safetensors", conditioning="class", num_classes=3)
    recipe = write_recipe(tmp / "tiny.toml", ckpt)
    text = recipe.read_text().replace('targets = ["ort-mobile-cpu"]',
                                      'targets = ["ort-mobile-cpu", "android-cpu", "ios-ane"]')
    recipe.write_text(text)
    out = tmp / "out"
    result = runner.invoke(app, ["export", str(recipe), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), out


def test_one_report_has_rows_for_all_three_targets(three_targets):
    report, _ = three_targets
    rows = {r["artifact"]: r for r in report["artifacts"]}
    assert {"ort-mobile-cpu/denoiser.onnx", "android-cpu/denoiser.tflite",
            "ios-ane/denoiser.mlpackage"} <= set(rows)
    tfl = rows["android-cpu/denoiser.tflite"]
    assert tfl["runnable"] and tfl["parity"]["max_abs_error"] < 1e-4
    assert tfl["end_to_end"]["psnr_db"] is None or tfl["end_to_end"]["psnr_db"] > 40
    assert tfl["latency"]["median_ms"] > 0
    # the ANE layout is for ios-ane only: LiteRT keeps Linear projections
    assert tfl["details"]["operators"]["FULLY_CONNECTED"] >= 8
    ane = rows["ios-ane/denoiser.mlpackage"]
    assert ane["details"]["layout"] == "ane"
    assert ane["details"]["operations"]["conv"] > 3  # q/k/v/out became 1x1 convolutions
    if platform.system() != "Darwin":
        assert not ane["runnable"] and "parity" not in ane and "latency" not in ane
    assert ane["bytes"] == ane["details"]["package_bytes"]
    timings = report["timings_s"]
    assert {"capture", "capture:ane", "export:android-cpu", "export:ios-ane"} <= set(timings)


def test_manifest_hashes_the_package_files(three_targets):
    _, out = three_targets
    manifest = json.loads((out / "manifest.json").read_text())
    paths = {f["path"] for f in manifest["files"]}
    assert "android-cpu/denoiser.tflite" in paths
    assert any(p.startswith("ios-ane/denoiser.mlpackage/") and p.endswith("weight.bin")
               for p in paths)
    assert all((out / p).is_file() for p in paths)
