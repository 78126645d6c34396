"""report.html is self-contained and `mobilegen report DIR` re-renders from report.json."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from mobilegen.cli.main import app
from mobilegen.report.html import Bars, latency_markdown, render_html


def make_output_dir(root: Path, name: str, latency_ms: float, bytes_: int = 284_284) -> Path:
    """An output folder shaped like an export's (report.json keys as `mobilegen export` writes
    them), with real PNG sample grids."""
    out = root / name
    out.mkdir(parents=True)
    for png, color in (("samples-pytorch.png", (200, 30, 30)), ("grid.png", (30, 30, 200))):
        Image.new("RGB", (16, 16), color).save(out / png)
    lat = {"median_ms": latency_ms, "p90_ms": latency_ms * 1.2, "min_ms": latency_ms * 0.9,
           "mean_ms": latency_ms, "runs": 3, "warmup": 1, "threads": 2}
    parity = {"max_abs_error": 3.9e-7, "mean_abs_error": 1.9e-7, "cosine": 1.0, "psnr_db": 116.8}
    report = {
        "schema_version": 1, "recipe": {"name": name, "path": f"{name}.toml"}, "status": "ok",
        "model": {"family": "stoic", "source": "tiny.safetensors", "init": "checkpoint",
                  "params": 37290, "gmac": 0.00058, "image_size": 8,
                  "modules": [{"module": "blocks.0", "params": 12704, "macs": 212992},
                              {"module": "stem", "params": 9000, "macs": 150000}]},
        "artifacts": [{
            "artifact": "ort-mobile-cpu/denoiser.onnx", "format": "onnx",
            "target": "ort-mobile-cpu", "precision": "fp32", "runnable": True, "bytes": bytes_,
            "details": {}, "parity": parity, "parity_per_timestep": [{"t": 999.0, **parity}],
            "latency": lat, "pytorch_latency": lat, "speedup_vs_pytorch": 1.0,
            "end_to_end": {**parity, "psnr_db": 94.1, "grid": "grid.png"}, "gates": [],
        }],
        "passes": [], "gates": {"config": {}, "failures": []},
        "sample_grids": {"pytorch": "samples-pytorch.png"}, "timings_s": {"load": 1.0},
        "host": {"machine": "x86_64", "cpus": 2, "system": "Linux"},
        "blocks": {
            "op_profile": {"runs": 5, "attention_share": 0.3, "attention_core_share": 0.2,
                           "attention_proj_share": 0.1, "attribution": "by namespace",
                           "top_ops": [{"op": "Gemm", "ms": 1.0, "share": 0.6}]},
            "runtime": "onnxruntime-cpu", "threads": 1, "runs": 40, "warmup": 5,
            "rows": [{"block": "blocks.0", "kind": "StoicBlock", "count": 2,
                      "input_shapes": "1x16x32, 1x32", "macs": 212992, "params": 12704,
                      "latency_ms": 0.09, "p90_ms": 0.1, "min_ms": 0.08, "total_ms": 0.18},
                     {"block": "rest", "kind": "rest", "count": 1, "input_shapes": "1x1x8x8, 1",
                      "macs": 154688, "params": 11754, "latency_ms": 0.05, "p90_ms": 0.06,
                      "min_ms": 0.04, "total_ms": 0.05}],
            "raw_sum_ms": 0.23, "call_overhead_ms": 0.02, "sum_ms": 0.19, "whole_ms": 0.18,
            "whole_min_ms": 0.15, "whole_macs": 580672, "error_pct": 5.6, "error_min_pct": 4.0,
        },
        "estimates": {"label": "ESTIMATE (test)", "calibration": {
            "held_out": [{"device": "iphone-14-pro", "model": "m", "published_ms": 116,
                          "estimate_ms": 107, "error_pct": -7.8}],
            "fitted": [], "devices": {"iphone-14-pro": {"peak_gmacs": 3557.0,
                                                         "bandwidth_gbs": 51.2,
                                                         "overhead_us": 441.0}}},
            "rows": [{"profile": "ios-ane", "device": "iphone-14-pro", "latency_ms": 12.0,
                      "calibration_error_pct": 45.0, "per_block_ms": {}}]},
    }
    (out / "report.json").write_text(json.dumps(report))
    return out


def test_html_is_offline_and_inlines_images(tmp_path: Path) -> None:
    out = make_output_dir(tmp_path, "a", 0.64)
    report = json.loads((out / "report.json").read_text())
    page = render_html(report, out)
    assert "http://" not in page and "https://" not in page
    srcs = re.findall(r"src='([^']*)'", page)
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    decoded = {base64.b64decode(s.split(",", 1)[1]) for s in srcs}
    assert decoded == {(out / "samples-pytorch.png").read_bytes(), (out / "grid.png").read_bytes()}
    assert page.count("<svg") == 2  # latency per artifact, where the time goes
    assert "StoicBlock" in page and "ESTIMATE (test)" in page and "±45%" in page
    # Estimates live in their own section, after the measured tables.
    assert page.index("Device estimates") > page.index("Where the time goes")


def test_missing_image_is_reported_not_linked(tmp_path: Path) -> None:
    out = make_output_dir(tmp_path, "a", 0.64)
    (out / "grid.png").unlink()
    page = render_html(json.loads((out / "report.json").read_text()), out)
    assert "missing image grid.png" in page and "src='grid.png'" not in page


def test_bars_scale_with_values(tmp_path: Path) -> None:
    bars = Bars("t", "ms", [("a", 1.0), ("b", 4.0)])
    widths = [int(w) for w in re.findall(r'<rect x="\d+" y="\d+" width="(\d+)"', bars.svg())]
    assert widths[1] == pytest.approx(4 * widths[0], rel=0.02)
    png = bars.png(tmp_path / "bars.png")
    assert Image.open(png).size == (bars.width, bars.height)


def test_report_command_rerenders(tmp_path: Path) -> None:
    out = make_output_dir(tmp_path, "a", 0.64)
    result = CliRunner().invoke(app, ["report", str(out), "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads(result.stdout)["written"]
    assert sorted(Path(p).name for p in written) == ["report.html", "report.md"]
    assert "# mobilegen report: a" in (out / "report.md").read_text()
    assert "data:image/png;base64," in (out / "report.html").read_text()


def test_report_command_on_a_folder_without_report(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 1
    assert "report.json: not found" in result.output


def test_latency_markdown_keeps_estimates_in_their_own_section(tmp_path: Path) -> None:
    report = json.loads((make_output_dir(tmp_path, "a", 0.64) / "report.json").read_text())
    text = latency_markdown(report["blocks"], report["estimates"])
    measured, _, estimated = text.partition("## Device estimates: ESTIMATE (test)")
    assert "| blocks.0 | StoicBlock | 2 |" in measured and "error +5.6% on medians" in measured
    assert "~12.0" in estimated and "±45%" in estimated and "~" not in measured
    assert "Device estimates" not in latency_markdown(report["blocks"], None)
