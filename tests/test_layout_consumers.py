"""The litert-sd and apple-coreml layouts, each checked with the consumer's own code, on one export
of a tiny SD pipeline whose UNet has SD-1.x's 320-wide first stage (litert-torch's pipeline feeds
a (1, 320) time embedding):
- litert-sd: litert-torch's own `run_tflite_pipeline` on OUT/litert-sd, against the same function
  driven by diffusers / transformers PyTorch modules on the source folder (same seed, sampler,
  tokenizer): the PNGs it writes are compared pixel for pixel;
- apple-coreml: every feature name, shape and dtype of the saved .mlpackage specs against the
  contract Apple's Swift package reads (tests/apple_swift_contract.py cites the files), and the
  two UNet chunks run in PyTorch against the whole UNet.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from mobilegen.cli.main import app
from mobilegen.errors import RecipeError
from mobilegen.recipe import load_any_recipe
from sd_pipeline_fixture import LAYOUT_RECIPE as RECIPE
from sd_pipeline_fixture import write_tiny_pipeline

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch")

PROMPT = "a photo of the cat"


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("consumers")
    write_tiny_pipeline(root / "pipe", unet="sd-time")
    (root / "r.toml").write_text(RECIPE.format(layout='["litert-sd"]', extra=""))
    result = invoke("export", root / "r.toml", "--out", root / "out", "--json")
    assert result.exit_code == 0, result.output
    return root


def _reference_model(pipe: Path, tokenizer_dir: Path) -> SimpleNamespace:
    """litert-torch's pipeline's three calls, served by diffusers / transformers modules on the
    source weights; the UNet's own time projection is replaced by the embedding the pipeline
    passes (what diffusion.tflite takes)."""
    import transformers
    from litert_torch.generative.examples.stable_diffusion.tokenizer import Tokenizer

    te = transformers.CLIPTextModel.from_pretrained(pipe / "text_encoder").eval()
    unet = diffusers.UNet2DConditionModel.from_pretrained(pipe / "unet").eval()
    vae = diffusers.AutoencoderKL.from_pretrained(pipe / "vae").eval()
    fed: dict[str, torch.Tensor] = {}

    class Fed(torch.nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return fed["emb"].expand(t.shape[0], -1)

    unet.time_proj = Fed()

    def clip(tokens: np.ndarray, signature_name: str) -> np.ndarray:
        assert signature_name == "encode" and tokens.dtype == np.int32
        with torch.no_grad():
            return te(torch.from_numpy(tokens).long()[None]).last_hidden_state.numpy()

    def diffusion(latents, context, time_embedding, signature_name: str) -> np.ndarray:
        assert signature_name == "diffusion"
        fed["emb"] = torch.as_tensor(np.asarray(time_embedding))
        with torch.no_grad():
            return unet(torch.from_numpy(latents), torch.zeros(latents.shape[0]),
                        torch.from_numpy(context)).sample.numpy()

    def decoder(latents: np.ndarray, signature_name: str) -> np.ndarray:
        assert signature_name == "decode"
        with torch.no_grad():
            return vae.decode(torch.from_numpy(latents) / vae.config.scaling_factor).sample.numpy()

    return SimpleNamespace(tokenizer=Tokenizer(str(tokenizer_dir)), clip=clip,
                           diffusion=diffusion, decoder=decoder)


def _tflite_model(folder: Path):
    """Their StableDiffusion object. Its __init__ calls litert_torch.model.TfLiteModel, which
    litert-torch 0.10.0 no longer has; the same attributes are set with the wheel's loader."""
    from litert_torch.generative.examples.stable_diffusion import pipeline
    from litert_torch.generative.examples.stable_diffusion.tokenizer import Tokenizer
    from litert_torch.model import Model

    model = object.__new__(pipeline.StableDiffusion)
    model.tokenizer = Tokenizer(str(folder))
    model.clip = Model.load(str(folder / "clip.tflite"))
    model.diffusion = Model.load(str(folder / "diffusion.tflite"))
    model.decoder = Model.load(str(folder / "decoder.tflite"))
    return model


def test_litert_sd_pipeline_runs_the_export(export: Path, tmp_path: Path) -> None:
    from litert_torch.generative.examples.stable_diffusion import pipeline
    from PIL import Image

    out = export / "out"
    folder = out / "litert-sd"
    for name in ("clip.tflite", "diffusion.tflite", "decoder.tflite", "vocab.json",
                 "merges.txt"):
        assert (folder / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    (layout,) = report["layouts"]
    assert layout["layout"] == "litert-sd"
    assert all(c["passed"] for c in layout["checks"]), layout["checks"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert "litert-sd/diffusion.tflite" in {f["path"] for f in manifest["files"]}

    kw = dict(prompt=PROMPT, uncond_prompt="", cfg_scale=7.5, height=64, width=64,
              sampler="k_euler", n_inference_steps=4, seed=3)
    pipeline.run_tflite_pipeline(_tflite_model(folder), output_path=str(tmp_path / "t.png"),
                                 **kw)
    pipeline.run_tflite_pipeline(_reference_model(export / "pipe", folder),
                                 output_path=str(tmp_path / "r.png"), **kw)
    got = np.asarray(Image.open(tmp_path / "t.png"), np.int16)
    want = np.asarray(Image.open(tmp_path / "r.png"), np.int16)
    assert got.shape == want.shape == (16, 16, 3)
    assert want.std() > 2.0  # not a flat image
    diff = np.abs(got - want)
    same = (tmp_path / "t.png").read_bytes() == (tmp_path / "r.png").read_bytes()
    print(f"litert-sd: PNG byte-identical {same}; pixels differing {int((diff > 0).sum())} of "
          f"{diff.size}, max difference {int(diff.max())} levels")
    assert int(diff.max()) <= 1  # float rounding may flip a truncation at most one level


def test_litert_sd_refuses_a_unet_not_320_wide(tmp_path: Path) -> None:
    write_tiny_pipeline(tmp_path / "pipe")  # first width 16
    (tmp_path / "r.toml").write_text(RECIPE.format(layout='"litert-sd"', extra=""))
    with pytest.raises(RecipeError) as err:
        load_any_recipe(tmp_path / "r.toml")
    msg = str(err.value)
    assert "key 'pipeline.layout'" in msg and "first width is 320" in msg
    assert "block_out_channels[0] is 16" in msg and "\n" not in msg
