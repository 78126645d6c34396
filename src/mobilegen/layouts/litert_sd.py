"""`litert-sd` (OUT/litert-sd): the three .tflite files and the tokenizer files that litert-torch's
own Stable Diffusion example pipeline runs (`litert_torch.generative.examples.stable_diffusion
.pipeline.run_tflite_pipeline`, litert-torch 0.10.0):

    clip.tflite       signature `encode`:    args_0 int32 (1, 77) tokens -> (1, 77, D) context
    diffusion.tflite  signature `diffusion`: args_0 latents (2, 4, h, w) (the pipeline repeats
                      them), args_1 context (2, 77, D) with the conditional branch first, args_2
                      the (1, 320) time embedding made outside the model by its
                      `util.get_time_embedding` (cos then sin of t * 10000^(-i/160)) -> the
                      predicted noise (2, 4, h, w)
    decoder.tflite    signature `decode`:    args_0 latents (1, 4, h, w) -> image (1, 3, H, W) in
                      [-1, 1]; the VAE's 1 / scaling_factor (SD's 0.18215) is inside
    vocab.json, merges.txt: read by its `tokenizer.Tokenizer(dir)` (pads to 77 with EOS)

What its code fixes, so what `check` refuses before any export work (one line, naming why):
- the time embedding is 320 wide with SD's frequencies: the UNet's first width must be 320,
  `flip_sin_to_cos` true and `freq_shift` 0 (the UNet's own sinusoids are then the same);
- its samplers (k_euler, k_euler_ancestral, k_lms) hard-code SD-1.x's training schedule
  (scaled_linear, 0.00085 .. 0.012, 1000 steps) and epsilon prediction;
- tokens are 77 long and latents have 4 channels.
The UNet must be mobilegen's UNet family (the denoiser swapped for a STOIC has no time-embedding
entry). Shapes are fixed (litert-torch keeps no dynamic axis): the pipeline's `height` and
`width` must be 8 x the latent size; the image comes out at the decoder's own size.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from mobilegen.layouts import LayoutCheck, LayoutResult
from mobilegen.layouts.context import LayoutContext, compare, consumer_decoder

NAME = "litert-sd"
DIR = "litert-sd"
TIME_DIM = 320  # util.get_time_embedding: 160 frequencies, cos then sin
TOKENS = 77  # tokenizer.Tokenizer.max_length
SIGNATURES = ("encode", "diffusion", "decode")
FILES = {"encode": "clip.tflite", "diffusion": "diffusion.tflite", "decode": "decoder.tflite"}


def check(root: Path, swapped: dict[str, Any] | None = None) -> str | None:
    from mobilegen.checkpoints.pipeline_folder import read_json
    from mobilegen.layouts.context import sd_schedule_problem

    if swapped and "unet" in swapped:
        return (f"litert-sd needs an SD UNet (its diffusion signature takes the time embedding "
                f"made outside the model); the pipeline's denoiser is a {swapped['unet'][0]}")
    unet = read_json(root / "unet" / "config.json")
    width = (unet.get("block_out_channels") or [320])[0]
    if width != TIME_DIM:
        return (f"litert-sd needs a UNet whose first width is {TIME_DIM} (litert-torch's SD "
                f"pipeline feeds a fixed (1, {TIME_DIM}) time embedding); "
                f"unet/config.json block_out_channels[0] is {width}")
    for key, want in (("flip_sin_to_cos", True), ("freq_shift", 0),
                      ("time_embedding_type", "positional")):
        if unet.get(key, want) != want:
            return (f"litert-sd needs unet/config.json {key} = {want!r} (litert-torch's time "
                    f"embedding is cos then sin of SD's frequencies); found {unet.get(key)!r}")
    why = sd_schedule_problem(root, NAME, "litert-torch's samplers")
    if why:
        return why
    te = read_json(root / "text_encoder" / "config.json")
    if te.get("max_position_embeddings") != TOKENS:
        return (f"litert-sd needs {TOKENS}-token prompts (litert-torch's tokenizer pads to "
                f"{TOKENS}); text_encoder/config.json max_position_embeddings is "
                f"{te.get('max_position_embeddings')}")
    vae = read_json(root / "vae" / "config.json")
    if vae.get("latent_channels", 4) != 4 or unet.get("in_channels", 4) != 4:
        return "litert-sd needs 4 latent channels (its pipeline draws (1, 4, H/8, W/8) noise)"
    return None


def _wrappers(ctx: LayoutContext) -> dict[str, Any]:
    import torch

    from mobilegen.errors import ExportError

    te, unet, dec = (ctx.models[k] for k in ("text_encoder", "unet", "decoder"))
    if not hasattr(unet, "forward_time_features"):
        raise ExportError(f"{NAME}: the UNet ({type(unet).__name__}) has no entry taking the "
                          "time embedding")

    class Clip(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.te = te

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.te(tokens.long())  # (1, 77, D)

    class Diffusion(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, latents: torch.Tensor, context: torch.Tensor,
                    time_embedding: torch.Tensor) -> torch.Tensor:
            return self.unet.forward_time_features(latents, time_embedding, context)

    return {"encode": Clip().eval(), "diffusion": Diffusion().eval(),
            "decode": consumer_decoder(dec, ctx.configs["decoder"], 1.0)}


def _examples(ctx: LayoutContext) -> dict[str, tuple[Any, ...]]:
    import torch
    from litert_torch.generative.examples.stable_diffusion import util

    te = ctx.configs["text_encoder"]
    ch, h, w = ctx.components["unet"]["sample_shape"]
    g = torch.Generator().manual_seed(0)
    ids = ctx.models["text_encoder"].example_inputs(1, seed=0)[0].int()
    return {"encode": (ids,),
            "diffusion": (torch.randn(2, ch, h, w, generator=g),
                          torch.randn(2, TOKENS, te.hidden_size, generator=g),
                          util.get_time_embedding(500.0)),
            "decode": (torch.randn(1, ch, h, w, generator=g),)}


def _convert(name: str, module: Any, args: tuple[Any, ...], path: Path) -> None:
    import litert_torch

    from mobilegen.errors import ExportError, first_line
    from mobilegen.targets.tflite import no_pre_convert_decompositions

    try:
        with contextlib.redirect_stdout(sys.stderr), __import__("torch").no_grad(), \
                no_pre_convert_decompositions():
            litert_torch.signature(name, module, args).convert().export(str(path))
    except Exception as e:
        raise ExportError(f"{NAME}: litert_torch.convert failed for {name}: {first_line(e)}") \
            from e


def _signature_check(rel: str, name: str, path: Path, args: tuple[Any, ...]) -> LayoutCheck:
    """The saved signature as the pipeline calls it: `name`, inputs args_0.. with its shapes and
    dtypes (int32 tokens, float32 otherwise)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    sigs = interp.get_signature_list()
    if name not in sigs:
        return LayoutCheck(rel, "signature vs litert-torch's SD pipeline", False, None,
                           f"signatures {list(sigs)}, expected {name!r}")
    runner = interp.get_signature_runner(name)
    details = runner.get_input_details()
    problems = []
    for i, a in enumerate(args):
        d = details.get(f"args_{i}")
        want = (list(a.shape), str(a.numpy().dtype))
        found = None if d is None else (list(d["shape"]), d["dtype"].__name__)
        if found != want:
            problems.append(f"args_{i} is {found}, expected {want}")
    if len(details) != len(args):
        problems.append(f"{len(details)} inputs, expected {len(args)}")
    return LayoutCheck(rel, "signature vs litert-torch's SD pipeline", not problems, None,
                       "; ".join(problems) or f"{name}: " + ", ".join(
                           f"args_{i} {list(a.shape)} {a.numpy().dtype}"
                           for i, a in enumerate(args)))


def _time_check(ctx: LayoutContext) -> LayoutCheck:
    """litert-torch's time embedding vs the UNet's own sinusoids, over the training range. The
    formulas agree; float32 rounding of the frequencies (pow vs exp) grows with t."""
    import numpy as np
    import torch
    from litert_torch.generative.examples.stable_diffusion import util

    ts = [0.0, 1.0, 250.0, 500.0, 999.0]
    theirs = np.concatenate([util.get_time_embedding(t).numpy() for t in ts])
    ours = ctx.models["unet"].time_features(torch.tensor(ts)).numpy()
    err = float(np.abs(theirs - ours).max())
    limit = 1e-3
    return LayoutCheck("litert-sd/diffusion.tflite",
                       "util.get_time_embedding vs the UNet's own sinusoids, t in 0..999",
                       err <= limit, err, f"max abs difference {err:.3g} (limit {limit})")


def write(ctx: LayoutContext) -> LayoutResult:
    import torch
    from litert_torch.model import Model

    ctx.out.path(DIR).mkdir(parents=True, exist_ok=True)
    wrappers, examples = _wrappers(ctx), _examples(ctx)
    files: list[dict[str, Any]] = []
    checks = [_time_check(ctx)]
    contract: dict[str, Any] = {}
    for name in SIGNATURES:
        rel = f"{DIR}/{FILES[name]}"
        path = ctx.out.path(rel)
        _convert(name, wrappers[name], examples[name], path)
        files.append(ctx.file(rel, "tflite", name))
        checks.append(_signature_check(rel, name, path, examples[name]))
        with torch.no_grad():
            want = wrappers[name](*examples[name]).numpy()
        got = Model.load(str(path))(*(a.numpy() for a in examples[name]), signature_name=name)
        checks.append(compare(rel, f"LiteRT ({name}) vs PyTorch", got, want))
        contract[FILES[name]] = {"signature": name, "inputs": [
            {"name": f"args_{i}", "shape": list(a.shape), "dtype": str(a.numpy().dtype)}
            for i, a in enumerate(examples[name])], "output_shape": list(want.shape)}
    files += _tokenizer_files(ctx)
    ch, h, _ = ctx.components["unet"]["sample_shape"]
    notes = [f"run_tflite_pipeline(model, prompt, out_png, height={8 * h}, width={8 * h}, ...): "
             f"height and width are 8 x the latent size {h} (the pipeline draws (1, {ch}, H/8, "
             f"W/8) noise); the image comes out at the decoder's size "
             f"{ctx.components['decoder']['image_shape'][1]}",
             "litert-torch 0.10.0's StableDiffusion class loads with litert_torch.model."
             "TfLiteModel, which that wheel no longer has: load each file with litert_torch."
             "model.Model.load and set the class's clip / diffusion / decoder / tokenizer",
             "no encoder.tflite: the example's image-encoder conversion is commented out "
             "upstream (img2img is not part of this layout)",
             "its samplers (k_euler, k_euler_ancestral, k_lms) are its own, on SD's schedule; "
             "the recipe's [sampler] applies to mobilegen's chain, not to this pipeline",
             "fp32 of the loaded weights (the component recipes' passes apply to mobilegen's "
             "own artifacts, not to this layout)"]
    return LayoutResult(
        NAME, DIR, "litert-torch's stable_diffusion example (run_tflite_pipeline)",
        "run_tflite_pipeline(model, prompt, output_path, height=..., width=...) with "
        "clip/diffusion/decoder = litert_torch.model.Model.load(OUT/litert-sd/*.tflite), "
        "tokenizer = Tokenizer(OUT/litert-sd)",
        tuple(files), tuple(checks), tuple(notes), contract)


def _tokenizer_files(ctx: LayoutContext) -> list[dict[str, Any]]:
    """vocab.json and merges.txt beside the models; merges.txt with the header line and final
    newline that the example's reader drops (it skips the first and the last line)."""
    import shutil

    shutil.copyfile(ctx.out.path("tokenizer/vocab.json"), ctx.out.path(f"{DIR}/vocab.json"))
    text = ctx.out.path("tokenizer/merges.txt").read_text(encoding="utf-8")
    if not text.startswith("#"):
        text = "#version: 0.2\n" + text
    if not text.endswith("\n"):
        text += "\n"
    ctx.out.path(f"{DIR}/merges.txt").write_text(text, encoding="utf-8")
    return [ctx.file(f"{DIR}/{n}", "tokenizer", "tokenizer") for n in ("vocab.json",
                                                                        "merges.txt")]
