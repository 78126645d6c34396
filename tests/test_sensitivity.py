"""`mobilegen sensitivity`: per-layer int8 sensitivity on a tiny STOIC with the real onnxruntime,
the keep-float plan meeting its target, the plot, the fp16 report, and bad options."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from mobilegen.cli.main import app
from mobilegen.passes.sensitivity import group_of


def test_group_of():
    assert group_of("blocks.3.mlp.fc2", "layer") == "blocks.3.mlp.fc2"
    assert group_of("blocks.3.mlp.fc2", "block") == "blocks.3"
    assert group_of("stem.2", "block") == "stem"


def test_sensitivity_table_plan_and_plot(tiny_recipe, tmp_path):
    png = tmp_path / "sens.png"
    res = CliRunner().invoke(app, ["sensitivity", str(tiny_recipe), "--json", "--feeds", "4",
                                   "--target-psnr-db", "60", "--png", str(png)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    layers = out["layers"]
    assert len(layers) >= 12 and all("blocks" in x["layer"] or "stem" in x["layer"]
                                     for x in layers)
    psnr = [x["step_psnr_db"] for x in layers]
    assert psnr == sorted(psnr)  # most sensitive first
    reasons = {k["reason"].split(" (")[0] for k in out["always_float"]}
    assert {"time/conditioning path", "stem/head outside the residual trunk"} <= reasons
    plan = out["plan"]
    assert plan["met"] and plan["achieved_step_psnr_db"] >= 60
    assert plan["keep_float"] == [x["layer"] for x in layers[:len(plan["keep_float"])]]
    costs = plan["costs"]
    assert costs["plan"]["step_psnr_db"] >= 60 > costs["all int8"]["step_psnr_db"] or not \
        plan["keep_float"]
    assert costs["all int8"]["bytes"] < costs["fp32"]["bytes"]
    assert costs["all int8"]["bytes"] <= costs["plan"]["bytes"]
    assert "image_psnr_db" in costs["plan"] and costs["fp32"]["ms"] > 0
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    fp16 = out["fp16"]
    assert fp16["kept_fp32"] == [] and fp16["min_headroom_after"] > 2
    assert fp16["image_psnr_fp16_db"] is None or fp16["image_psnr_fp16_db"] > 30


def test_block_granularity_text_output(tiny_recipe):
    res = CliRunner().invoke(app, ["sensitivity", str(tiny_recipe), "--granularity", "block",
                                   "--feeds", "2", "--no-fp16", "--activation-bits", "16"])
    assert res.exit_code == 0, res.output
    assert "blocks.0" in res.stdout and "plan (target 45 dB" in res.stdout


@pytest.mark.parametrize("args", [["--granularity", "row"], ["--activation-bits", "4"],
                                  ["--calibration", "mse"], ["--feeds", "0"]])
def test_bad_options_exit_2(tiny_recipe, args):
    res = CliRunner().invoke(app, ["sensitivity", str(tiny_recipe), *args])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
