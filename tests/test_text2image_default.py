"""The shipped trained text-to-image pipeline (src/mobilegen/data/pipelines/digits-t2i): diffusers
loads the folder as it is and draws what mobilegen's PyTorch chain draws; an export to ORT draws
a prompt from its artifacts alone, at its native size; the prompt-fidelity judge scores the
drawings. Small settings: one export to ort-mobile-cpu, 4 sampler steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mobilegen import text_digits as td
from mobilegen.cli.main import app
from mobilegen.recipe import load_any_recipe

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

SHIPPED = Path(__file__).resolve().parents[1] / "src" / "mobilegen" / "data" / "pipelines"
RECIPE = f"""name = "digits-t2i-small"
[pipeline]
diffusers = "{SHIPPED / 'digits-t2i'}"
targets = ["ort-mobile-cpu"]
prompt = "a red seven on a black background"
[pipeline.text_encoder]
latency = {{warmup = 1, runs = 2}}
[pipeline.unet]
validate = {{timesteps = [999.0, 1.0]}}
latency = {{warmup = 1, runs = 2}}
[pipeline.decoder]
latency = {{warmup = 1, runs = 2}}
[sampler]
steps = 4
guidance_scale = 5.0
num_images = 2
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("t2i")
    (root / "r.toml").write_text(RECIPE)
    result = CliRunner().invoke(app, ["export", str(root / "r.toml"), "--out",
                                      str(root / "out"), "--json"])
    assert result.exit_code == 0, result.output
    return root


def _torch_runners(root: Path) -> dict:
    from mobilegen.export.sd_chain import pytorch_runners

    prec = load_any_recipe(root / "r.toml")
    return pytorch_runners({slot: getattr(prec, slot) for slot in prec.slots()},
                           dict.fromkeys(prec.slots(), 8))


def test_shipped_folder_is_small_and_complete() -> None:
    folder = SHIPPED / "digits-t2i"
    total = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert total <= 15 * 2**20, f"{total / 2**20:.1f} MB shipped"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    for rel in ("text_encoder/config.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
                "tokenizer/tokenizer.json", "unet/config.json", "vae/config.json",
                "scheduler/scheduler_config.json", "stoic/denoiser.safetensors"):
        assert (folder / rel).is_file(), rel
    unet = json.loads((folder / "unet/config.json").read_text())
    assert unet["down_block_types"][0] == "DownBlock2D"  # no cross-attention at 8x8


def test_diffusers_draws_what_the_pytorch_chain_draws(exported: Path) -> None:
    from mobilegen.sampling.prompt_chain import generate_from_prompt, load_tokenizer

    out = exported / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    chain, comps = manifest["chain"], {c["slot"]: c for c in manifest["components"]}
    ours = generate_from_prompt(_torch_runners(exported), comps, chain,
                                load_tokenizer(out, chain))
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        SHIPPED / "digits-t2i", safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    noise = np.random.default_rng(0).standard_normal((2, *comps["unet"]["sample_shape"]))
    expected = pipe([chain["prompt"]] * 2, negative_prompt=[""] * 2, height=32, width=32,
                    num_inference_steps=4, guidance_scale=5.0, output_type="np",
                    latents=torch.from_numpy(noise.astype(np.float32))).images
    found = np.clip((ours.transpose(0, 2, 3, 1) + 1) / 2, 0, 1)
    assert float(np.abs(found - expected).max()) <= 1e-4


def test_prompt_through_the_artifacts_draws_the_colours_asked_for(exported: Path,
                                                                   tmp_path: Path) -> None:
    from PIL import Image

    png = tmp_path / "seven.png"
    result = CliRunner().invoke(app, ["sample", str(exported / "out"), "--target", "ort",
                                      "--prompt", "a red seven on a black background",
                                      "--png", str(png), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["images"] == 1
    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape == (32, 32, 3)  # one image, native size
    verdict = td.judge(image)
    assert verdict.colour == "red" and verdict.background == "black"


def test_judge_on_prompts_through_pytorch(exported: Path) -> None:
    """Colour and background as asked on >= 90% of 10 balanced prompts (the digit's own score
    is reported by benchmarks/bench_text2image.py)."""
    from mobilegen.sampling.prompt_chain import generate_from_prompt, load_tokenizer
    from mobilegen.sampling.samplers import images_to_uint8

    out = exported / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    chain, comps = manifest["chain"], {c["slot"]: c for c in manifest["components"]}
    runners, tok = _torch_runners(exported), load_tokenizer(out, chain)
    caps = td.balanced_captions(10)
    images = np.concatenate([generate_from_prompt(runners, comps, chain, tok, c.text, "",
                                                  seed=i, steps=10, num_images=1)
                             for i, c in enumerate(caps)])
    s = td.score(images_to_uint8(images), caps)
    assert s.colour >= 0.9 and s.background >= 0.9, s
