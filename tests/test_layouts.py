"""Consumer layouts of a text-to-image export, each checked with the consumer's own code: the
tiny random SD pipeline (tests/sd_pipeline_fixture.py) exported with `layout = [...]`, then
- diffusers-onnx: diffusers' own OnnxStableDiffusionPipeline on OUT against diffusers'
  StableDiffusionPipeline on the source folder, same latents and scheduler (image PSNR);
- apple-coreml (UNet chunked): every feature of the saved .mlpackage specs against the contract
  as Apple's Swift source states it (SWIFT_CONTRACT below, file by file), and the two chunks in
  PyTorch against the whole UNet (Core ML cannot predict on Linux).
litert-sd needs a 320-wide UNet: tests/test_layout_consumers.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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

PROMPT = "a photo of the cat"


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


@pytest.fixture(scope="module")
def diffusers_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layouts")
    write_tiny_pipeline(root / "pipe")
    (root / "r.toml").write_text(RECIPE.format(layout='["diffusers-onnx", "apple-coreml"]',
                                                extra="\nchunk_unet = true"))
    result = invoke("export", root / "r.toml", "--out", root / "out", "--json")
    assert result.exit_code == 0, result.output
    return root


def _same_run(pipe, latents: np.ndarray, size: int, **kw):
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe([PROMPT], negative_prompt=[""], height=size, width=size,
                num_inference_steps=4, guidance_scale=7.5, output_type="np",
                latents=latents, **kw).images


def test_diffusers_onnx_pipeline_runs_the_export(diffusers_export: Path, tmp_path: Path) -> None:
    out = diffusers_export / "out"
    index = json.loads((out / "model_index.json").read_text())
    for comp in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
        assert index[comp] == ["diffusers", "OnnxRuntimeModel"]
        assert (out / comp / "model.onnx").is_file() and (out / comp / "config.json").is_file()
    # mobilegen's own manifest is still complete, and lists the layout's files with sha256s
    manifest = json.loads((out / "manifest.json").read_text())
    paths = {f["path"] for f in manifest["files"]}
    assert {"unet/model.onnx", "model_index.json", "vae_encoder/config.json"} <= paths
    assert "unet/manifest.json" in {c["manifest"] for c in manifest["components"]}
    report = json.loads((out / "report.json").read_text())
    layout = report["layouts"][0]
    assert layout["layout"] == "diffusers-onnx" and all(c["passed"] for c in layout["checks"])

    noise = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    source = diffusers.StableDiffusionPipeline.from_pretrained(
        diffusers_export / "pipe", safety_checker=None, requires_safety_checker=False)
    expected = _same_run(source, torch.from_numpy(noise), 16)
    onnx_pipe = diffusers.OnnxStableDiffusionPipeline.from_pretrained(
        out, provider="CPUExecutionProvider")
    # diffusers' ONNX pipeline draws (B, 4, H/8, W/8) latents: 64 px asks for 8x8 latents; the
    # tiny VAE upsamples 2x, so both pipelines give 16x16 images
    found = _same_run(onnx_pipe, noise, 64)
    assert found.shape == expected.shape == (1, 16, 16, 3)
    assert float(np.abs(expected - 0.5).mean()) > 1e-2  # not a flat image
    fp32 = psnr(found, expected)
    print(f"diffusers-onnx fp32: image PSNR {fp32:.1f} dB vs StableDiffusionPipeline")
    assert fp32 >= 40.0

    # fp16 (fp32 I/O), converted with onnxruntime's own tool: reported, not gated
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = tmp_path / "half"
    shutil.copytree(out, half, ignore=shutil.ignore_patterns("*.ort", "*.tflite"))
    for comp in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
        model = convert_float_to_float16(onnx.load(str(half / comp / "model.onnx")),
                                         keep_io_types=True)
        onnx.save(model, str(half / comp / "model.onnx"))
    fp16 = psnr(_same_run(diffusers.OnnxStableDiffusionPipeline.from_pretrained(
        half, provider="CPUExecutionProvider"), noise, 64), expected)
    print(f"diffusers-onnx fp16: image PSNR {fp16:.1f} dB vs StableDiffusionPipeline")
    assert np.isfinite(fp16) and fp16 >= 20.0


def test_diffusers_onnx_img2img_uses_the_vae_encoder(diffusers_export: Path) -> None:
    """The vae_encoder component through diffusers' own img2img pipeline vs the PyTorch
    img2img pipeline on the source weights; diffusers' converter draws from the latent
    distribution inside the graph, this export gives its mode, so the reference takes the
    mode too (`sample_mode="argmax"`)."""
    out = diffusers_export / "out"
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import (
        retrieve_latents,
    )

    vae = diffusers.AutoencoderKL.from_pretrained(diffusers_export / "pipe" / "vae").eval()
    image = np.random.default_rng(1).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
    sess = __import__("onnxruntime").InferenceSession(
        str(out / "vae_encoder" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = 0.18215 * sess.run(None, {"sample": image})[0]  # what diffusers' img2img computes
    with torch.no_grad():
        want = retrieve_latents(vae.encode(torch.from_numpy(image)), sample_mode="argmax")
    want = (want * vae.config.scaling_factor).numpy()
    assert got.shape == want.shape == (1, 4, 8, 8)
    assert float(np.abs(got - want).max()) <= 1e-4 * max(1.0, float(np.abs(want).max()))


def test_vae_encoder_family_matches_diffusers(diffusers_export: Path) -> None:
    from mobilegen.models.vae_encoder import load_model

    folder = diffusers_export / "pipe" / "vae"
    ours = load_model(folder)
    vae = diffusers.AutoencoderKL.from_pretrained(folder).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        want = vae.encode(x).latent_dist.parameters
        got = ours(x)
    assert got.shape == want.shape == (2, 8, 8, 8)
    assert float((got - want).abs().max()) <= 1e-5


@pytest.mark.parametrize(("layout", "message"), [
    ('"onnx-folder"', "unknown layout 'onnx-folder' (known: mobilegen, diffusers-onnx"),
    ('["diffusers-onnx", "diffusers-onnx"]', "a layout is named twice"),
])
def test_bad_layout_fails_at_load(tmp_path: Path, layout: str, message: str) -> None:
    write_tiny_pipeline(tmp_path / "pipe")
    (tmp_path / "r.toml").write_text(RECIPE.format(layout=layout, extra=""))
    with pytest.raises(RecipeError) as err:
        load_any_recipe(tmp_path / "r.toml")
    assert message in str(err.value) and "key 'pipeline.layout'" in str(err.value)


# What apple/ml-stable-diffusion's Swift package (swift/StableDiffusion/, read at commit e12202c)
# reads, per resource; "first" where the Swift code takes the first feature rather than a name.
# L = 77 tokens, D = 32 (the tiny CLIP), latents (4, 8, 8), images (3, 16, 16).
SWIFT_CONTRACT = {
    # pipeline/TextEncoder.swift: inputDescriptionsByName.first, shape (1, L) from the model,
    # fed `ids.map { Float32($0) }`; result.featureValue(for: "last_hidden_state")
    "TextEncoder": {"inputs": [("first", "float32", [1, 77])],
                    "outputs": [("last_hidden_state", "float32", [1, 77, 32])]},
    # pipeline/Unet.swift: "sample", "timestep" (shape [2] for a batch of 2 hidden states,
    # Float32), "encoder_hidden_states"; StableDiffusionPipeline.swift toHiddenStates:
    # [2, 77, D] -> [2, D, 1, 77]; the first output is the noise
    "Unet": {"inputs": [("sample", "float32", [2, 4, 8, 8]), ("timestep", "float32", [2]),
                        ("encoder_hidden_states", "float32", [2, 32, 1, 77])],
             "outputs": [("first", "float32", [2, 4, 8, 8])]},
    # pipeline/Decoder.swift: the first input, latents / scaleFactor; the first output to
    # CGImage+vImage.swift fromShapedArray (maps [-1, 1] to pixels)
    "VAEDecoder": {"inputs": [("first", "float32", [1, 4, 8, 8])],
                   "outputs": [("first", "float32", [1, 3, 16, 16])]},
    # pipeline/Encoder.swift: the first input must equal the image's planar RGB shape; the
    # first output's channels 0..<4 are the mean, 4..<8 the log-variance
    "VAEEncoder": {"inputs": [("first", "float32", [1, 3, 16, 16])],
                   "outputs": [("first", "float32", [1, 8, 8, 8])]},
}
# pipeline/StableDiffusionPipeline+Resources.swift: the file names (compiled: .mlmodelc)
SWIFT_FILES = ["TextEncoder", "UnetChunk1", "UnetChunk2", "VAEDecoder", "VAEEncoder",
               "vocab.json", "merges.txt"]


def _spec_features(path: Path) -> dict[str, list[tuple[str, str, list[int]]]]:
    import coremltools as ct
    from coremltools.proto import FeatureTypes_pb2

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()

    def one(f):
        arr = f.type.multiArrayType
        dtype = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(arr.dataType).lower()
        return (f.name, dtype, [int(d) for d in arr.shape])

    return {"inputs": [one(f) for f in spec.description.input],
            "outputs": [one(f) for f in spec.description.output]}


def _matches(found: list[tuple], want: list[tuple]) -> None:
    for i, (name, dtype, shape) in enumerate(want):
        got = found[i] if name == "first" else next(f for f in found if f[0] == name)
        assert got[1:] == (dtype, shape), (name, got)


def test_apple_coreml_specs_follow_the_swift_contract(diffusers_export: Path) -> None:
    folder = diffusers_export / "out" / "apple-coreml"
    for name in SWIFT_FILES:
        assert (folder / (name if "." in name else f"{name}.mlpackage")).exists(), name
    assert not (folder / "Unet.mlpackage").exists()  # chunked: the chunks only
    specs = {n: _spec_features(folder / f"{n}.mlpackage")
             for n in ("TextEncoder", "UnetChunk1", "UnetChunk2", "VAEDecoder", "VAEEncoder")}
    for name in ("TextEncoder", "VAEDecoder", "VAEEncoder"):
        _matches(specs[name]["inputs"], SWIFT_CONTRACT[name]["inputs"])
        _matches(specs[name]["outputs"], SWIFT_CONTRACT[name]["outputs"])
    # Unet.swift reads "sample" from models.first (chunk 1) and feeds all three inputs to it;
    # ManagedMLModel.swift: chunk 2 gets chunk 1's outputs merged with the original inputs
    c1, c2 = specs["UnetChunk1"], specs["UnetChunk2"]
    _matches(c1["inputs"], SWIFT_CONTRACT["Unet"]["inputs"])
    _matches(c2["outputs"], SWIFT_CONTRACT["Unet"]["outputs"])
    offered = {n: (d, s) for n, d, s in [*SWIFT_CONTRACT["Unet"]["inputs"], *c1["outputs"]]}
    for name, dtype, shape in c2["inputs"]:
        assert offered.get(name) == (dtype, shape), (name, offered.get(name))
    assert {n for n, _, _ in c1["outputs"]}.isdisjoint({"sample", "timestep"})
    # the names Apple's converter gives (torch2coreml.py), which apps' code may look up
    assert [f[0] for f in specs["UnetChunk2"]["outputs"]] == ["noise_pred"]
    assert [f[0] for f in specs["VAEDecoder"]["inputs"]] == ["z"]
    # BPETokenizer+Reading.swift skips '#' lines of merges.txt; the vocab has the specials
    vocab = json.loads((folder / "vocab.json").read_text())
    assert {"<|startoftext|>", "<|endoftext|>"} <= set(vocab)
    report = json.loads((diffusers_export / "out" / "report.json").read_text())
    layout = next(x for x in report["layouts"] if x["layout"] == "apple-coreml")
    assert all(c["passed"] for c in layout["checks"]), layout["checks"]
    checks = {c["check"] for c in layout["checks"]}
    assert "UnetChunk1 -> UnetChunk2 in PyTorch vs the whole UNet" in checks


def test_unet_chunks_equal_the_whole_unet(diffusers_export: Path) -> None:
    """The split run in PyTorch on the source weights: chunk 1 then chunk 2 (fed chunk 1's
    outputs and the context) equals the whole UNet; and diffusers' UNet on the same inputs."""
    from mobilegen.checkpoints.diffusers import load_diffusers_model
    from mobilegen.layouts import unet_chunks

    folder = diffusers_export / "pipe" / "unet"
    _, _, ours = load_diffusers_model(folder)
    c1, c2 = unet_chunks.split(ours)
    assert 0 < unet_chunks.split_point(ours) < 2 * ours.config.num_stages + 2
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    t = torch.tensor([981.0, 981.0])
    ref = diffusers.UNet2DConditionModel.from_pretrained(folder).eval()
    with torch.no_grad():
        whole = ours(x, t, ctx)
        pieces = c2(*c1(x, t, ctx), ctx)
        want = ref(x, t, ctx).sample
    assert float((pieces - whole).abs().max()) == 0.0
    assert float((pieces - want).abs().max()) <= 1e-4
