"""The memory preflight (export/preflight.py) and targets lowered in child processes
(export/isolated.py): a too-low limit refuses before any work with one line naming both figures
(exit 1, nothing written); forced isolation gives the same validated artifacts as in process, and
the report puts the estimate next to the measured peak of the whole process tree."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import write_recipe

runner = CliRunner()


def _export(recipe, out, monkeypatch, **env):
    from mobilegen.cli.main import app

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return runner.invoke(app, ["export", str(recipe), "--out", str(out), "--no-cache", "--json"])


@pytest.fixture
def two_target_recipe(tmp_path, tiny_ckpt):
    path = write_recipe(tmp_path / "two.toml", tiny_ckpt)
    path.write_text(path.read_text().replace('targets = ["ort-mobile-cpu"]',
                                             'targets = ["ort-mobile-cpu", "android-cpu"]'))
    return path


def test_a_limit_below_the_estimate_refuses_with_both_figures(two_target_recipe, tmp_path,
                                                              monkeypatch):
    out = tmp_path / "out"
    result = _export(two_target_recipe, out, monkeypatch, MOBILEGEN_MEMORY_LIMIT_GB="0.3")
    assert result.exit_code == 1, result.output
    line = result.output.strip().splitlines()[-1]
    assert "memory preflight" in line and "needs an estimated" in line
    assert "0.3 GB is available (MOBILEGEN_MEMORY_LIMIT_GB)" in line
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no staging left


def test_a_bad_limit_value_is_one_line(two_target_recipe, tmp_path, monkeypatch):
    result = _export(two_target_recipe, tmp_path / "out", monkeypatch,
                     MOBILEGEN_MEMORY_LIMIT_GB="lots")
    assert result.exit_code == 1
    assert "MOBILEGEN_MEMORY_LIMIT_GB must be a number of GB, found 'lots'" in result.output


def test_isolated_targets_match_in_process_and_report_estimate_and_peak(
        two_target_recipe, tiny_recipe, tmp_path, monkeypatch):
    plain = _export(tiny_recipe, tmp_path / "a", monkeypatch)  # ort-mobile-cpu only
    assert plain.exit_code == 0, plain.output
    iso = _export(two_target_recipe, tmp_path / "b", monkeypatch, MOBILEGEN_ISOLATE_TARGETS="1")
    assert iso.exit_code == 0, iso.output
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in "ab")
    assert a["memory"]["preflight"]["mode"] == "in process"
    assert b["memory"]["preflight"]["mode"] == "one target per child process"
    errors = lambda r: {x["artifact"]: x["parity"]["max_abs_error"] for x in r["artifacts"]
                        if x["runnable"]}
    assert set(errors(b)) == {"ort-mobile-cpu/denoiser.onnx", "ort-mobile-cpu/denoiser.ort",
                              "android-cpu/denoiser.tflite"}
    same = {k: v for k, v in errors(b).items() if k.startswith("ort")}
    assert errors(a) == pytest.approx(same, abs=1e-6)  # the same capture, lowered elsewhere
    assert b["artifacts"][2]["end_to_end"]["psnr_db"] > 30  # sampled through in the child
    mem = b["memory"]
    assert mem["measured"] and mem["peak"]["rss_gb"] > 0.2  # torch alone is more than that
    assert "target:android-cpu" in mem["per_step"] and "export:android-cpu" in mem["per_step"]
    assert mem["estimate_error_pct"] == pytest.approx(
        100 * (mem["preflight"]["estimate_gb"] - mem["peak"]["rss_gb"]) / mem["peak"]["rss_gb"],
        abs=2.0)
    assert "ESTIMATE" in mem["preflight"]["note"]
    assert (tmp_path / "b" / "android-cpu" / "denoiser.tflite").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mobilegen-capture-")]
    md = (tmp_path / "b" / "report.md").read_text()
    assert "Memory" in md and "estimate" in md


def test_meta_device_weight_bytes_match_the_built_model():
    from mobilegen.checkpoints.loader import build_random
    from mobilegen.export.preflight import recipe_param_bytes
    from mobilegen.models import get_family
    from mobilegen.recipe import Recipe

    cfg = get_family("unet").variants()["unet-tiny"]
    model = build_random("unet", cfg).model
    recipe = Recipe.model_validate({"name": "t", "targets": ["ort-mobile-cpu"],
                                    "model": {"family": "unet", "init": "random",
                                              "variant": "unet-tiny"}})
    assert recipe_param_bytes(recipe) == sum(p.numel() * 4 for p in model.parameters())


def test_a_saved_capture_reads_back_mapped_with_the_same_weights(tmp_path):
    """export/isolated.load_capture maps each weight record of the .pt2 instead of copying it:
    the same values, the same outputs as torch.export.load, and storages that are file mappings
    (not resizable: release_weights empties the tensors instead)."""
    import torch

    from mobilegen.export.isolated import _save_captures, load_capture

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)).eval()
    x = torch.randn(2, 3, 8, 8)
    saved = _save_captures({"default": torch.export.export(model, (x,))}, tmp_path)
    plain, mapped = torch.export.load(str(saved["default"])), load_capture(saved["default"])
    assert set(mapped.state_dict) == set(plain.state_dict)
    for name, tensor in plain.state_dict.items():
        assert torch.equal(mapped.state_dict[name], tensor)
        assert not mapped.state_dict[name].untyped_storage().resizable()
    assert torch.equal(mapped.module()(x), plain.module()(x))


def test_an_isolated_big_model_times_its_last_parity_call_as_latency(
        tiny_recipe, tmp_path, monkeypatch):
    """A big model's last parity call (at the latency batch) is the first latency run, in the
    child and for PyTorch in the parent (export/validation_scope.py)."""
    from mobilegen.export import validation_scope

    monkeypatch.setattr(validation_scope, "BIG_MODEL_BYTES", 1)  # the tiny STOIC counts as big
    result = _export(tiny_recipe, tmp_path / "out", monkeypatch, MOBILEGEN_ISOLATE_TARGETS="1")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["memory"]["preflight"]["mode"] == "one target per child process"
    onnx = next(a for a in report["artifacts"] if a["artifact"].endswith(".onnx"))
    assert [(p["t"], p["batch"]) for p in onnx["parity_per_timestep"]] == [(999.0, 2), (1.0, 1)]
    assert onnx["parity"]["psnr_db"] is None or onnx["parity"]["psnr_db"] > 40
    assert onnx["latency"]["from_parity"] == 1 and onnx["latency"]["runs"] == 3
    assert onnx["pytorch_latency"]["from_parity"] == 1
    wall, cpu = report["timings_s"], report["timings_cpu_s"]
    assert wall["save-capture"] > 0 and wall["reference"] > 0 and set(wall) == set(cpu)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mobilegen-capture-")]


def test_an_untimed_target_lowers_beside_a_timed_ones_lowering(tiny_ckpt, tmp_path, monkeypatch):
    """Isolated, a Core ML target (not run on Linux: nothing of it is timed) gets its own child
    beside ORT's; ORT's child waits for it to end before its parity and latency run. The same
    artifacts, in recipe order, and the pair in the report's memory section."""
    import platform

    if platform.system() == "Darwin":
        pytest.skip("Core ML predicts on macOS: its target is timed there")
    recipe = write_recipe(tmp_path / "pair.toml", tiny_ckpt)
    recipe.write_text(recipe.read_text().replace('targets = ["ort-mobile-cpu"]',
                                                 'targets = ["ort-mobile-cpu", "ios-gpu"]'))
    result = _export(recipe, tmp_path / "out", monkeypatch, MOBILEGEN_ISOLATE_TARGETS="1")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    pre = report["memory"]["preflight"]
    assert pre["beside"] == [["ort-mobile-cpu", "ios-gpu"]]
    assert pre["mode"].endswith("beside each other: ort-mobile-cpu + ios-gpu")
    assert pre["estimate_gb"] == max(pre["isolated_gb"], pre["beside_gb"]) > 0
    assert [a["artifact"] for a in report["artifacts"]] == [
        "ort-mobile-cpu/denoiser.onnx", "ort-mobile-cpu/denoiser.ort", "ios-gpu/denoiser.mlpackage"]
    onnx = report["artifacts"][0]
    assert onnx["parity"]["max_abs_error"] < 1e-4 and onnx["latency"]["median_ms"] > 0
    wall = report["timings_s"]
    assert {"target:ort-mobile-cpu+ios-gpu", "wait-beside:ort-mobile-cpu",
            "export:ios-gpu", "validate:ort-mobile-cpu/denoiser.onnx"} <= set(wall)
    assert (tmp_path / "out" / "ios-gpu" / "denoiser.mlpackage").is_dir()


def test_pairs_fit_the_limit_and_need_a_measured_lowering():
    """export/preflight.pair_beside: SD-1.5's UNet (3.44 GB) pairs ORT's lowering with Core ML
    under 12 GB, not under 11; HTP (no lowering factor measured) is never the timed side."""
    import platform

    from mobilegen.export.preflight import pair_beside

    if platform.system() == "Darwin":
        pytest.skip("Core ML predicts on macOS: nothing is untimed there")
    sd = 3_438_083_856
    targets = ("ort-mobile-cpu", "android-cpu", "ios-gpu", "snapdragon-8gen3-htp-fp16")
    pairs, gb = pair_beside(sd, targets, 12.0)
    assert pairs == (("ort-mobile-cpu", "ios-gpu"),) and 11.0 < gb <= 12.0
    assert pair_beside(sd, targets, 11.0) == ((), 0.0)
    assert pair_beside(sd, ("snapdragon-8gen3-htp-fp16", "ios-gpu"), 100.0) == ((), 0.0)


def test_a_precision_row_keeps_the_children_one_after_another(monkeypatch):
    """export/preflight.check pairs nothing when a precision pass's lowering would overlap (no
    lowering factor was measured for it), nor under MOBILEGEN_TARGETS_BESIDE=0."""
    import platform

    from mobilegen.export.preflight import check
    from mobilegen.recipe import Recipe

    if platform.system() == "Darwin":
        pytest.skip("Core ML predicts on macOS: nothing is untimed there")
    monkeypatch.setenv("MOBILEGEN_ISOLATE_TARGETS", "1")
    monkeypatch.setenv("MOBILEGEN_MEMORY_LIMIT_GB", "100")
    base = {"name": "t", "targets": ["ort-mobile-cpu", "ios-gpu"],
            "model": {"family": "unet", "init": "random", "variant": "unet-tiny"}}
    assert check(Recipe.model_validate(base), 10**8).beside == (("ort-mobile-cpu", "ios-gpu"),)
    int8 = Recipe.model_validate({**base, "passes": [{"name": "int8", "mode": "dynamic"}]})
    assert check(int8, 10**8).beside == ()
    monkeypatch.setenv("MOBILEGEN_TARGETS_BESIDE", "0")
    assert check(Recipe.model_validate(base), 10**8).beside == ()


def _lower_or_fail(job):
    """A stand-in child body for _beside's ordering (the real one is export.run.lower_target):
    the timed job waits for the untimed one as lower_target does; the untimed one fails."""
    from mobilegen.errors import ExportError
    from mobilegen.export.isolated import TargetOutcome, wait_until_quiet

    if job.target == "untimed":
        raise ExportError("untimed: broke")
    wait_until_quiet()
    return TargetOutcome([], {"x": 1.0}, {"x": 1.0}, {})


def test_a_failing_untimed_child_releases_the_timed_one_and_is_raised(tmp_path):
    from mobilegen.errors import ExportError
    from mobilegen.export.isolated import TargetJob, _beside

    job = lambda name: TargetJob(tmp_path / "plan.pkl", ("k", tmp_path / "k.pt2"), name,
                                 tmp_path, tmp_path / "log")
    with pytest.raises(ExportError, match="untimed: broke"):
        _beside(job("timed"), job("untimed"), _lower_or_fail)
