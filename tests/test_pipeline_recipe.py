"""Pipeline recipes (UNet + VAE decoder chained) through the real CLI: one export of the shipped
tiny pipeline with the real onnxruntime, its top-level manifest and report, `mobilegen sample`
on it, and the one-line errors of bad pipeline recipes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import write_recipe
from mobilegen.cli.main import app
from mobilegen.export.staging import sha256_file
from mobilegen.recipe import RECIPES_DIR, PipelineRecipe, load_any_recipe, load_recipe

runner = CliRunner()
TINY = RECIPES_DIR / "sd-tiny-pipeline.toml"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "out"
    result = invoke("export", TINY, "--out", out, "--json")
    return result, out


def test_export_writes_both_components_and_one_report(exported):
    result, out = exported
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["kind"] == "pipeline" and doc["status"] == "ok" and doc["out_dir"] == str(out)
    assert doc["cache"]["hit"] is False  # pipeline exports bypass the cache
    for slot, family in (("unet", "unet"), ("decoder", "vae-decoder")):
        comp = doc["components"][slot]
        assert comp["family"] == family and comp["status"] == "ok" and comp["params"] > 0
        own = json.loads((out / slot / "report.json").read_text())  # each keeps its own report
        assert own["model"]["family"] == family
        assert (out / slot / "manifest.json").is_file()
    assert (out / "report.md").read_text().startswith("# Pipeline export: sd-tiny-pipeline")
    assert not list(out.parent.glob(".out.staging-*"))


def test_manifest_chain_says_how_to_feed_the_decoder(exported):
    _, out = exported
    m = json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "pipeline" and [c["slot"] for c in m["components"]] == ["unet", "decoder"]
    unet = load_recipe(RECIPES_DIR / "unet-tiny.toml")
    chain = m["chain"]
    assert chain["latent"]["shape"] == [4, 8, 8]
    assert chain["latent"]["scaling_factor"] == pytest.approx(0.18215)
    assert chain["latent"]["shift_factor"] == 0.0
    sched = chain["scheduler"]
    assert (sched["kind"], sched["steps"], sched["time_spacing"]) == (
        unet.sampler.kind, unet.sampler.steps, unet.sampler.time_spacing)
    assert sched["guidance_scale"] == unet.sampler.guidance_scale == 2.0
    assert len(sched["constants"]["model_t"]) == sched["steps"] + 1
    assert chain["guidance"]["batch"].startswith("2N")
    assert chain["conditioning"]["kind"] == "context" and chain["conditioning"]["shape"] == [8, 16]
    assert chain["image"]["shape"] == [3, 32, 32] and chain["image"]["range"] == [-1.0, 1.0]
    # every file path is relative to OUT and its hash matches what is on disk
    paths = {f["path"] for f in m["files"]}
    assert {"unet/ort-mobile-cpu/unet.onnx", "decoder/ort-mobile-cpu/vae_decoder.onnx"} <= paths
    for f in m["files"]:
        assert not f["path"].startswith("/") and f["component"] in ("unet", "decoder")
        assert sha256_file(out / f["path"]) == f["sha256"]


def test_report_runs_the_chain_through_pytorch_and_the_artifacts(exported):
    _, out = exported
    chain = json.loads((out / "report.json").read_text())["chain"]
    assert {(r["format"], r["precision"]) for r in chain["rows"]} == {("onnx", "fp32"),
                                                                     ("ort", "fp32")}
    for r in chain["rows"]:
        assert r["finite"] and (r["psnr_db"] is None or r["psnr_db"] > 60)
        assert r["max_abs_error"] < 1e-3
        assert Image.open(out / r["grid"]).mode == "RGB"
    assert (out / chain["pytorch_grid"]).is_file() and chain["image_shape"] == [3, 32, 32]


def test_sample_runs_the_chain_from_the_artifacts(exported, tmp_path):
    _, out = exported
    png = tmp_path / "s.png"
    r = invoke("sample", out, "--png", png, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["finite"] and doc["images"] == 2 and doc["image_shape"] == [3, 32, 32]
    assert doc["artifacts"] == ["unet/ort-mobile-cpu/unet.onnx",
                                "decoder/ort-mobile-cpu/vae_decoder.onnx"]
    img = np.asarray(Image.open(png))
    assert img.ndim == 3 and img.shape[2] == 3
    # same artifacts, seed and steps as the export's own chain run: the same pixels
    assert np.array_equal(img, np.asarray(Image.open(out / "chain-onnx-fp32.png")))
    other = tmp_path / "seed1.png"
    assert invoke("sample", out, "--png", other, "--seed", "1").exit_code == 0
    assert not np.array_equal(img, np.asarray(Image.open(other)))
    r = invoke("sample", out, "--target", "tflite")
    assert r.exit_code == 1 and "no 'tflite' artifact for the unet" in r.output


def test_shipped_pipeline_recipes_load():
    for name in ("sd-tiny-pipeline", "snapfusion-pipeline"):
        p = load_any_recipe(RECIPES_DIR / f"{name}.toml")
        assert isinstance(p, PipelineRecipe) and p.name == name
        assert (p.unet.model.family, p.decoder.model.family) == ("unet", "vae-decoder")
    r = invoke("recipes", "--json")
    rows = {x["name"]: x for x in json.loads(r.stdout)}
    assert rows["snapfusion-pipeline"]["components"] == {"unet": "unet-snapfusion",
                                                         "decoder": "vae-decoder-sd"}


def _decoder(tmp_path, extra: str) -> str:
    text = (RECIPES_DIR / "vae-decoder-tiny.toml").read_text()
    (tmp_path / "dec.toml").write_text(text.replace("latent_size = 8", "latent_size = 8\n" + extra))
    return "dec.toml"


@pytest.mark.parametrize("case, message", [
    ("missing", "key 'pipeline.decoder': component recipe not found"),
    ("wrong-family", "key 'pipeline.unet': expected a 'unet' recipe, vae-decoder-tiny.toml has "
                     "model.family 'vae-decoder'"),
    ("channels", "latent channels differ: the denoiser gives 4, decoder latent_channels is 3"),
    ("size", "latent size differs: UNet samples 8x8, decoder reads 16x16"),
    ("unknown-key", "unknown key 'pipeline.vae'"),
    ("no-decoder", "missing key 'pipeline.decoder'"),
])
def test_bad_pipeline_recipes_are_one_line_usage_errors(tmp_path, case, message):
    unet, dec = str(RECIPES_DIR / "unet-tiny.toml"), str(RECIPES_DIR / "vae-decoder-tiny.toml")
    narrow = _decoder(tmp_path, "latent_channels = 3")
    slots = {"missing": f'unet = "{unet}"\ndecoder = "nope.toml"',
             "wrong-family": f'unet = "{dec}"\ndecoder = "{dec}"',
             "channels": f'unet = "{unet}"\ndecoder = "{narrow}"',
             "size": f'unet = "{unet}"\ndecoder = "{dec}"',
             "unknown-key": f'unet = "{unet}"\ndecoder = "{dec}"\nvae = "{dec}"',
             "no-decoder": f'unet = "{unet}"'}[case]
    if case == "size":
        text = (RECIPES_DIR / "vae-decoder-tiny.toml").read_text()
        (tmp_path / "d16.toml").write_text(text.replace("latent_size = 8", "latent_size = 16"))
        slots = f'unet = "{unet}"\ndecoder = "d16.toml"'
    recipe = tmp_path / "bad.toml"
    recipe.write_text(f'name = "bad"\n[pipeline]\n{slots}\n')
    r = invoke("export", recipe, "--out", tmp_path / "out")
    assert r.exit_code == 2, r.output
    line = r.stderr.strip()
    assert "\n" not in line and str(recipe) in line and message in line, line
    assert not (tmp_path / "out").exists()


# slow: the pipeline export is checked by test_export_writes_both_components_and_one_report, a
# -j 2 batch's results and worst exit by test_cache_and_batch's
# test_batch_runs_in_parallel_and_exits_with_the_worst
@pytest.mark.slow
def test_a_pipeline_recipe_is_one_item_of_a_batch(tmp_path):
    from types import SimpleNamespace

    from mobilegen.report.markdown import batch_table

    # fails at load; the batch still exports the pipeline beside it
    broken = write_recipe(tmp_path / "broken.toml", tmp_path / "gone.safetensors")
    r = invoke("export", TINY, broken, "-j", "2", "--out", tmp_path / "out", "--json")
    assert r.exit_code == 1, r.output  # the worst of ok and error
    pipe, bad = json.loads(r.stdout)["results"]
    assert pipe["exit_code"] == 0 and pipe["error"] is None
    assert pipe["report"]["kind"] == "pipeline" and pipe["report"]["status"] == "ok"
    out = tmp_path / "out" / "sd-tiny-pipeline"
    assert pipe["out_dir"] == str(out) and (out / "manifest.json").is_file()
    assert json.loads((out / "manifest.json").read_text())["kind"] == "pipeline"
    assert bad["exit_code"] == 1 and "gone.safetensors" in bad["error"]
    assert not (tmp_path / "out" / "tiny").exists()
    # the batch table shows the pipeline's artifacts and its chain's worst image PSNR
    rows = [SimpleNamespace(recipe=Path(x["recipe"]), out_dir=Path(x["out_dir"]), error=x["error"],
                            report=x["report"]) for x in (pipe, bad)]
    table = batch_table(rows)
    cells = [list(col.cells) for col in table.columns]
    n = sum(len(c["artifacts"]) for c in pipe["report"]["components"].values())
    worst = min(c["psnr_db"] for c in pipe["report"]["chain"]["rows"])
    assert cells[1] == ["ok", "error"] and cells[2] == [str(n), "0"]
    assert cells[4][0] == f"{worst:.1f}"
