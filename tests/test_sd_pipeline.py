"""Prompt -> image from a diffusers pipeline folder: a tiny random SD pipeline written by the test
(tests/sd_pipeline_fixture.py) is exported (text encoder, UNet, decoder to ORT; tokenizer and
scheduler shipped) and sampled from a prompt with the artifacts alone; the PyTorch chain is
checked against diffusers' own StableDiffusionPipeline on the same folder and noise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mobilegen.cli.main import app
from mobilegen.errors import RecipeError
from mobilegen.export.staging import sha256_file
from mobilegen.recipe import load_any_recipe
from sd_pipeline_fixture import PROMPT_RECIPE as RECIPE
from sd_pipeline_fixture import SD15_SCHEDULER, write_tiny_pipeline

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")



def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Written once per module; tests that change it work on a copy."""
    return write_tiny_pipeline(tmp_path_factory.mktemp("pipe") / "pipe")


@pytest.fixture(scope="module")
def exported(sd_prompt_export: Path) -> Path:
    return sd_prompt_export  # conftest: one export shared with the bad-input corpus


def test_export_ships_every_part_under_one_manifest(exported: Path, tmp_path: Path) -> None:
    out = exported / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    assert [c["slot"] for c in manifest["components"]] == ["text_encoder", "unet", "decoder"]
    chain = manifest["chain"]
    assert chain["order"] == ["tokenizer", "text_encoder", "unet", "decoder"]
    files = {f["path"]: f for f in manifest["files"]}
    for rel in ("tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer.json",
                "scheduler/scheduler_config.json", "text_encoder/ort-mobile-cpu/text_encoder.ort"):
        assert files[rel]["sha256"] == sha256_file(out / rel), rel
    tok = chain["tokenizer"]
    assert tok["max_length"] == 77 and tok["lower_case"] is True
    assert tok["ids"]["bos"] != tok["ids"]["eos"] == tok["ids"]["pad"]
    # the manifest's scheduler is diffusers' DPM-Solver++ on the folder's own config
    ref = diffusers.DPMSolverMultistepScheduler.from_config(SD15_SCHEDULER)
    ref.set_timesteps(4)
    consts = chain["scheduler"]["constants"]
    assert consts["timesteps"] == [float(t) for t in ref.timesteps]
    np.testing.assert_allclose(consts["sigmas"], ref.sigmas.numpy(), rtol=1e-6)
    report = json.loads((out / "report.json").read_text())
    rows = {r["format"]: r for r in report["chain"]["rows"]}
    assert set(rows) == {"onnx", "ort"} and report["status"] == "ok"
    for r in rows.values():  # prompt -> image through the artifacts vs the PyTorch chain
        assert r["psnr_db"] is None or r["psnr_db"] >= 60.0, r
        assert r["max_abs_error"] <= 1e-3 and r["finite"]
    te = json.loads((out / "text_encoder" / "report.json").read_text())
    for art in te["artifacts"]:
        assert art["parity"]["max_abs_error"] <= 1e-4, art
    # the UNet's own manifest describes it as the chain feeds it: the text encoder's states
    # and the pipeline's scheduler, not the standalone export's Gaussian stand-in and VP sampler
    unet = json.loads((out / "unet" / "manifest.json").read_text())
    (entry,) = unet["components"]
    assert entry["conditioning"]["kind"] == "text" and entry["conditioning"]["shape"] == [77, 32]
    assert "sampler" not in entry and entry["scheduler"].startswith("chain.scheduler")
    assert "stand-in" not in json.dumps(entry)
    assert unet["pipeline"]["manifest"] == "../manifest.json"
    alone = invoke("sample", out / "unet", "--png", tmp_path / "u.png")
    assert alone.exit_code != 0 and "driven by its pipeline's chain" in alone.output
    assert [f["path"] for f in unet["files"]] == [
        f["path"].removeprefix("unet/") for f in manifest["files"]
        if f["component"] == "unet" and f["path"].startswith("unet/")]
    # report.json is the typed result's rendering (report/pipeline.py)
    assert report["kind"] == "pipeline" and set(report["components"]) == {
        "text_encoder", "unet", "decoder"}
    assert {"unet_artifact", "text_encoder_artifact", "grid"} <= set(report["chain"]["rows"][0])


def test_pytorch_chain_equals_diffusers_pipeline(exported: Path) -> None:
    """The chain's reference (our modules, our numpy scheduler, our tokenizer) against
    diffusers' StableDiffusionPipeline on the same folder, prompt and initial noise."""
    from mobilegen.export.sd_chain import pytorch_runners
    from mobilegen.sampling.prompt_chain import generate_from_prompt, load_tokenizer

    out = exported / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    chain, comps = manifest["chain"], {c["slot"]: c for c in manifest["components"]}
    prec = load_any_recipe(exported / "r.toml")
    runners = pytorch_runners({slot: getattr(prec, slot) for slot in prec.slots()},
                              dict.fromkeys(prec.slots(), 8))
    ours = generate_from_prompt(runners, comps, chain, load_tokenizer(out, chain))
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        exported / "pipe", safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    noise = np.random.default_rng(0).standard_normal((2, *comps["unet"]["sample_shape"]))
    expected = pipe(["a photo of the cat"] * 2, negative_prompt=[""] * 2, height=16, width=16,
                    num_inference_steps=4, guidance_scale=7.5, output_type="np",
                    latents=torch.from_numpy(noise.astype(np.float32))).images
    found = np.clip((ours.transpose(0, 2, 3, 1) + 1) / 2, 0, 1)
    assert float(np.abs(expected).mean()) > 1e-2
    assert float(np.abs(found - expected).max()) <= 1e-4


def test_sample_from_a_prompt_with_the_artifacts_alone(exported: Path, tmp_path: Path) -> None:
    out = exported / "out"
    same = invoke("sample", out, "--target", "onnx", "--png", tmp_path / "same.png", "--json")
    assert same.exit_code == 0, same.output
    doc = json.loads(same.output)
    assert doc["prompt"] == "a photo of the cat" and doc["scheduler"] == "dpm++2m"
    # the manifest's own prompt, seed and steps reproduce the export's chain grid byte for byte
    assert (tmp_path / "same.png").read_bytes() == (out / "chain-onnx-fp32.png").read_bytes()
    other = invoke("sample", out, "--target", "ort", "--prompt", "a blue dog",
                   "--negative-prompt", "painting", "--steps", "3", "--seed", "5",
                   "--png", tmp_path / "dog.png", "--json")
    assert other.exit_code == 0, other.output
    assert json.loads(other.output)["steps"] == 3
    assert (tmp_path / "dog.png").read_bytes() != (tmp_path / "same.png").read_bytes()


def test_tampered_tokenizer_is_refused(exported: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported / "out", copy)
    with (copy / "tokenizer" / "merges.txt").open("a") as f:
        f.write("c at</w>\n")
    result = invoke("sample", copy, "--png", tmp_path / "x.png")
    assert result.exit_code == 1 and "sha256 differs" in result.output
    assert not (tmp_path / "x.png").exists()


def test_prompt_option_needs_a_text_to_image_export(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(
        {"files": [], "components": [{"name": "x"}]}))
    result = invoke("sample", tmp_path / "out", "--prompt", "a cat", "--png", tmp_path / "a.png")
    assert result.exit_code == 2 and "not a text-to-image export" in result.output


@pytest.mark.parametrize(("edit", "message"), [
    (lambda root: (root / "pipe" / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({**SD15_SCHEDULER, "thresholding": True})), "key 'sampler'"),
    (lambda root: (root / "pipe" / "model_index.json").unlink(), "no model_index.json"),
    (lambda root: (root / "r.toml").write_text(RECIPE.replace(
        "[pipeline.unet]\n", "[pipeline.unet]\nmodel = {family = 'unet'}\n")),
     "unknown key 'pipeline.unet.model'"),
    (lambda root: (root / "r.toml").write_text(RECIPE.replace(
        "latency = {warmup = 1, runs = 2}", "latency = {colour = 1}", 1)),
     "[pipeline.text_encoder]"),
    (lambda root: _widen_text_encoder(root), "cross-attends to width"),
])
def test_bad_pipeline_folders_fail_at_load(tmp_path: Path, pipeline_folder: Path, edit,
                                           message) -> None:
    import shutil

    root = tmp_path / "case"
    shutil.copytree(pipeline_folder, root / "pipe")
    (root / "r.toml").write_text(RECIPE)
    edit(root)
    with pytest.raises(RecipeError) as err:
        load_any_recipe(root / "r.toml")
    assert message in str(err.value) and "\n" not in str(err.value)


def _widen_text_encoder(root: Path) -> None:
    path = root / "pipe" / "text_encoder" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "hidden_size": 48}))
