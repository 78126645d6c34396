"""A big model's validation (export/validation_scope.py) is smaller, still real and gated, and
said so in the report; work nobody reads is not done (a qnn fp16 compile-only profile's
calibration feeds, a real forward pass just to count MACs); every step's CPU seconds are
reported beside its wall seconds."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import write_recipe
from mobilegen.export import validation_scope
from mobilegen.recipe import load_recipe

GIB = 1024**3


def test_scope_keeps_small_models_and_full_recipes_and_cuts_big_ones(tiny_recipe):
    recipe = load_recipe(tiny_recipe)  # timesteps 999, 500, 1; end_to_end; warmup 1
    small = validation_scope.scope(recipe, GIB // 2)
    assert not small.reduced and small.recipe is recipe
    assert small.to_dict(GIB // 2)["scope"] == "as the recipe asks"

    big = validation_scope.scope(recipe, 4 * GIB)
    assert big.reduced
    assert big.recipe.validation.timesteps == [999.0, 1.0]  # the highest and lowest t
    assert not big.recipe.validation.end_to_end and big.recipe.latency.warmup == 0
    assert big.recipe.latency.runs == recipe.latency.runs  # timed runs stay the recipe's
    entry = big.to_dict(4 * GIB)
    assert entry["scope"] == "reduced" and len(entry["cuts"]) == 4
    assert "999, 500, 1" in entry["cuts"][0] and "big_models" in entry["note"]
    # the last parity call runs at the latency batch and is the first timed latency run
    assert big.latency_from == 1.0 and big.batches == {1.0: recipe.latency.batch}
    assert entry["parity_batches"] == {"999": recipe.validation.batch,
                                       "1": recipe.latency.batch}
    assert "first of the 3 latency run(s)" in entry["cuts"][3]

    full = recipe.model_copy(update={"validation": recipe.validation.model_copy(
        update={"big_models": "full"})})
    assert not validation_scope.scope(full, 4 * GIB).reduced


def test_a_big_models_export_reports_its_reduced_validation(tiny_recipe, tmp_path, monkeypatch):
    from mobilegen.cli.main import app

    monkeypatch.setattr(validation_scope, "BIG_MODEL_BYTES", 1)  # the tiny STOIC counts as big
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["export", str(tiny_recipe), "--out", str(out),
                                      "--no-cache", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["validation"]["scope"] == "reduced"
    onnx = next(a for a in report["artifacts"] if a["artifact"].endswith(".onnx"))
    assert [p["t"] for p in onnx["parity_per_timestep"]] == [999.0, 1.0]
    assert [p["batch"] for p in onnx["parity_per_timestep"]] == [2, 1]  # latency's batch last
    assert onnx["parity"]["psnr_db"] is None or onnx["parity"]["psnr_db"] > 40  # still gated
    assert "end_to_end" not in onnx and onnx["latency"]["warmup"] == 0
    # the last parity call is the first of the 3 runs, for the artifact and for PyTorch
    assert onnx["latency"]["runs"] == 3 and onnx["latency"]["from_parity"] == 1
    assert onnx["pytorch_latency"]["runs"] == 3 and onnx["pytorch_latency"]["from_parity"] == 1
    assert not report["sample_grids"]
    assert "Validation reduced" in (out / "report.md").read_text()
    cpu, wall = report["timings_cpu_s"], report["timings_s"]
    assert set(cpu) == set(wall) and "reference" in wall and "count" in wall
    assert cpu["export:ort-mobile-cpu"] > 0  # the exporter ran in this process


def test_qnn_fp16_compile_only_needs_no_calibration_feeds(tmp_path):
    from mobilegen.export.run import calibration_count
    from mobilegen.targets.profile import SIMULATE_AUTO_MAX_PARAM_BYTES, load_target

    fp16, w8a16 = load_target("snapdragon-8gen3-htp-fp16"), load_target("snapdragon-8gen3-htp")
    big, small = 4 * GIB, SIMULATE_AUTO_MAX_PARAM_BYTES // 2
    assert not fp16.simulates(big) and fp16.simulates(small)
    assert fp16.feeds_needed(big) == 0  # compile-only and not calibrated: nothing reads them
    assert fp16.feeds_needed(small) == fp16.calibration_feeds > 0  # the simulator's parity
    assert w8a16.feeds_needed(big) == w8a16.calibration_feeds > 0  # calibrates its ranges
    path = write_recipe(tmp_path / "r.toml", tmp_path / "unused.safetensors")
    path.write_text(path.read_text().replace('"ort-mobile-cpu"', '"snapdragon-8gen3-htp-fp16"'))
    recipe = load_recipe(path)
    assert calibration_count(recipe, 0, big) == 0
    assert calibration_count(recipe, 0) == fp16.calibration_feeds  # size unknown: the profile's


@pytest.mark.parametrize("family,variant", [("unet", "unet-tiny"), ("stoic", None)])
def test_counting_on_the_meta_device_matches_a_real_forward(family, variant):
    from mobilegen.checkpoints.loader import build_random
    from mobilegen.measure.costs import count_macs, on_meta
    from mobilegen.models import get_family

    variants = get_family(family).variants()
    model = build_random(family, variants[variant or sorted(variants)[0]]).model
    inputs = model.example_inputs(1)
    twin, meta_inputs = on_meta(model, inputs)
    assert all(p.is_meta for p in twin.parameters())
    assert all(not p.is_meta for p in model.parameters())  # the model itself is untouched
    real, meta = count_macs(model, inputs), count_macs(twin, meta_inputs)
    assert real == meta and real[0] > 0
