"""`mobilegen export / sample / inspect / recipes` end to end on a tiny class-conditional STOIC,
through the real CLI (Typer's runner), the real onnxruntime and the real files it writes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import write_recipe, write_tiny_checkpoint
from mobilegen.cli.main import app
from mobilegen.export.staging import sha256_file, write_marker

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export shared by the read-only checks below."""
    root = tmp_path_factory.mktemp("export")
    ckpt = write_tiny_checkpoint(root / "tiny.safetensors", conditioning="class", num_classes=3)
    recipe = write_recipe(root / "tiny.toml", ckpt)
    out = root / "out"
    result = invoke("export", recipe, "--out", out, "--json")
    return result, out, recipe, ckpt


def test_export_prints_one_json_document(exported):
    result, out, *_ = exported
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["status"] == "ok" and doc["out_dir"] == str(out)
    assert doc["schema_version"] == 2
    assert doc["model"]["family"] == "stoic" and doc["model"]["params"] > 0
    assert doc["model"]["gmac"] > 0
    # [report] sections are opt-in; report.html is always written
    assert "blocks" not in doc and "estimates" not in doc and (out / "report.html").is_file()


def test_every_artifact_is_validated_and_timed(exported):
    _, out, *_ = exported
    report = json.loads((out / "report.json").read_text())
    rows = {r["artifact"]: r for r in report["artifacts"]}
    assert set(rows) == {"ort-mobile-cpu/denoiser.onnx", "ort-mobile-cpu/denoiser.ort"}
    for row in rows.values():
        assert [p["t"] for p in row["parity_per_timestep"]] == [999.0, 500.0, 1.0]
        assert row["parity"]["max_abs_error"] < 1e-4 and row["parity"]["psnr_db"] > 60
        lat = row["latency"]
        assert lat["runs"] == 3 and lat["threads"] == 2 and 0 < lat["min_ms"] <= lat["median_ms"]
        assert row["pytorch_latency"]["median_ms"] > 0
        assert row["speedup_vs_pytorch"] == pytest.approx(
            row["pytorch_latency"]["median_ms"] / lat["median_ms"])
        e2e = row["end_to_end"]
        assert e2e["psnr_db"] is None or e2e["psnr_db"] > 40
        assert (out / e2e["grid"]).is_file()
        assert row["gates"] == []
    assert (out / "samples-pytorch.png").is_file()
    assert "| ort-mobile-cpu/denoiser.onnx |" in (out / "report.md").read_text()


def test_manifest_tells_an_app_everything(exported):
    _, out, recipe, ckpt = exported
    m = json.loads((out / "manifest.json").read_text())
    for f in m["files"]:
        path = out / f["path"]
        assert path.stat().st_size == f["bytes"] and sha256_file(path) == f["sha256"]
    comp = m["components"][0]
    assert [t["name"] for t in comp["inputs"]] == ["x", "t", "y"]
    assert comp["inputs"][0]["dtype"] == "float32" and comp["inputs"][0]["shape"][0] == "batch"
    s = comp["sampler"]
    assert s["kind"] == "dpm++2m" and s["steps"] == 4 and s["guidance_scale"] == 1.5
    assert len(s["constants"]["t"]) == 5 and s["constants"]["schedule"]["beta_max"] == 20.0
    assert comp["conditioning"]["null_label"] == 3
    assert m["provenance"]["checkpoint_sha256"] == sha256_file(ckpt)
    assert m["provenance"]["recipe_sha256"] == sha256_file(recipe)
    assert "onnxruntime" in m["provenance"]["versions"]


def test_no_staging_folder_is_left(exported):
    _, out, *_ = exported
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("fmt", ["onnx", "ort"])
def test_sample_reproduces_the_exports_run_from_artifacts_alone(exported, tmp_path, fmt):
    _, out, *_ = exported
    png = tmp_path / "s.png"
    result = invoke("sample", out, "--target", fmt, "--png", png, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["images"] == 4 and doc["finite"] and doc["seed"] == 0
    # same seed, same artifact: the grid the export saved for that artifact
    saved = Image.open(out / f"ort-mobile-cpu_denoiser.{fmt}-samples.png")
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(saved))
    other = tmp_path / "other.png"
    assert invoke("sample", out, "--target", fmt, "--png", other, "--seed", 7).exit_code == 0
    assert not np.array_equal(np.asarray(Image.open(other)), np.asarray(Image.open(png)))


def test_sample_needs_an_export_folder(tmp_path):
    result = invoke("sample", tmp_path)
    assert result.exit_code == 1 and "manifest.json: not found" in result.stderr


def test_failed_gate_exits_3_with_a_complete_report(tmp_path, tiny_ckpt):
    recipe = write_recipe(tmp_path / "r.toml", tiny_ckpt, gates="max_latency_ms = 0.000001")
    out = tmp_path / "out"
    result = invoke("export", recipe, "--out", out)
    assert result.exit_code == 3
    assert "gate failed" in result.stderr and "max_latency_ms" in result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "gate_failed"
    failure = report["gates"]["failures"][0]
    assert "max_latency_ms" in failure and "needs <= 1e-06" in failure and "off by" in failure
    assert (out / "manifest.json").is_file()


def test_bad_checkpoint_fails_cleanly_and_keeps_previous_output(tmp_path, exported):
    _, good_out, *_ = exported
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text(json.dumps({"previous": True}))  # an earlier export
    write_marker(out)  # ... by mobilegen (a foreign folder is refused before the checkpoint loads)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((good_out / "ort-mobile-cpu" / "denoiser.onnx").read_bytes()[:100])
    recipe = write_recipe(tmp_path / "r.toml", bad)
    result = invoke("export", recipe, "--out", out)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.safetensors" in lines[0]
    assert json.loads((out / "report.json").read_text()) == {"previous": True}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_missing_checkpoint_and_unknown_key_are_one_line_errors(tmp_path):
    missing = write_recipe(tmp_path / "m.toml", tmp_path / "nope.safetensors")
    r = invoke("export", missing, "--out", tmp_path / "o1")
    assert r.exit_code != 0 and "nope.safetensors" in r.stderr
    assert not (tmp_path / "o1").exists()
    unknown = write_recipe(tmp_path / "u.toml", tmp_path / "x.safetensors",
                           extra="colour = 3\n")
    r = invoke("export", unknown, "--out", tmp_path / "o2")
    assert r.exit_code == 2 and "latency.colour" in r.stderr and "u.toml" in r.stderr
    assert not (tmp_path / "o2").exists()


def test_export_refuses_to_replace_a_folder_it_did_not_write(tmp_path, tiny_recipe):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    r = invoke("export", tiny_recipe, "--out", out)
    assert r.exit_code == 1 and "not written by mobilegen" in r.stderr
    assert (out / "notes.txt").read_text() == "keep me"


def test_inspect_json(tiny_ckpt):
    r = invoke("inspect", tiny_ckpt, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["family"] == "stoic" and doc["config"]["num_classes"] == 3
    assert doc["params"] > 0 and doc["gmac"] > 0
    assert any(m["macs"] > 0 for m in doc["modules"])


def test_recipes_lists_the_default():
    r = invoke("recipes", "--json")
    assert r.exit_code == 0
    names = [x["name"] for x in json.loads(r.stdout)]
    assert "stoic-digits" in names


def test_help_does_not_import_torch():
    code = "import sys, mobilegen.cli.main; print(sorted(m for m in ('torch', 'onnx', " \
           "'onnxruntime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
