"""unet-tiny and vae-decoder-tiny through run_export to ONNX Runtime: parity, latency, manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mobilegen.export.run import run_export
from mobilegen.recipe import RECIPES_DIR, load_recipe


def test_unet_tiny_exports_with_parity_and_e2e(tmp_path: Path) -> None:
    result = run_export(load_recipe(RECIPES_DIR / "unet-tiny.toml"), tmp_path / "out")
    report = result.report.to_dict()
    assert report["status"] == "ok" and report["model"]["family"] == "unet"
    assert any("RANDOM" in n for n in report["model"]["notes"])
    onnx_rows = [r for r in report["artifacts"] if r["format"] == "onnx"]
    assert onnx_rows and onnx_rows[0]["parity"]["max_abs_error"] < 1e-4
    assert onnx_rows[0]["latency"]["median_ms"] > 0
    assert onnx_rows[0]["end_to_end"]["psnr_db"] is None or \
        onnx_rows[0]["end_to_end"]["psnr_db"] > 30
    manifest = json.loads((result.out_dir / "manifest.json").read_text())
    comp = manifest["components"][0]
    assert comp["name"] == "unet" and comp["latent_scaling_factor"] == pytest.approx(0.18215)
    assert comp["conditioning"]["kind"] == "context" and "sampler" in comp
    assert (result.out_dir / "ort-mobile-cpu" / "unet.onnx").is_file()
    assert "RANDOM" in (result.out_dir / "report.md").read_text()


def test_vae_decoder_tiny_exports_without_e2e(tmp_path: Path) -> None:
    result = run_export(load_recipe(RECIPES_DIR / "vae-decoder-tiny.toml"), tmp_path / "out")
    report = result.report.to_dict()
    assert report["status"] == "ok" and report["model"]["family"] == "vae-decoder"
    assert any("end-to-end sampling parity skipped" in n for n in report["model"]["notes"])
    row = next(r for r in report["artifacts"] if r["format"] == "onnx")
    assert row["parity"]["max_abs_error"] < 1e-4 and "end_to_end" not in row
    comp = json.loads((result.out_dir / "manifest.json").read_text())["components"][0]
    assert comp["name"] == "vae_decoder" and "sampler" not in comp
    assert comp["image_shape"] == [3, 32, 32]
    assert comp["latent_scaling_factor"] == pytest.approx(0.18215)
    # `mobilegen sample` refuses a decoder export with one clear line
    from typer.testing import CliRunner

    from mobilegen.cli.main import app

    res = CliRunner().invoke(app, ["sample", str(result.out_dir), "--png",
                                   str(tmp_path / "s.png")])
    assert res.exit_code == 1 and "has no sampler to run" in res.output
