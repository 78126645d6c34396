"""`apple-coreml` (OUT/apple-coreml): the resources folder of Apple's ml-stable-diffusion Swift
package (`StableDiffusionPipeline(resourcesAt:)`), as .mlpackage; Xcode (or `xcrun coremlcompiler
compile X.mlpackage .`) compiles each to the .mlmodelc the package opens.

The contract, as Apple's Swift source reads it (apple/ml-stable-diffusion, swift/StableDiffusion/):
- pipeline/StableDiffusionPipeline+Resources.swift: the files TextEncoder, Unet or UnetChunk1 +
  UnetChunk2 (the chunks win when both exist), VAEDecoder, optional VAEEncoder, vocab.json,
  merges.txt in one folder.
- pipeline/TextEncoder.swift: the first input, shape (1, L) read from the model, fed the token
  ids as Float32 (`Float32($0)`); the output looked up by name `last_hidden_state` (1, L, D).
- pipeline/StableDiffusionPipeline.swift: prompt embeddings concatenated [negative; prompt] and
  transposed to (B, D, 1, L) (`toHiddenStates`); one batched UNet call when the model's `sample`
  batch is >= 2.
- pipeline/Unet.swift: inputs by name `sample`, `timestep` (shape [2] for a batch of 2, Float32),
  `encoder_hidden_states`; the first output taken, converted to Float32 (Apple names it
  `noise_pred`). ManagedMLModel.swift: chunk 2 gets chunk 1's outputs merged with the original
  inputs.
- pipeline/Decoder.swift: the first input, fed `latents / scaleFactor + shiftFactor`
  (Configuration's decoderScaleFactor, default 0.18215; Apple names the input `z`); the first
  output to CGImage+vImage.swift's `fromShapedArray`, which maps [-1, 1] to pixels (`image`).
- pipeline/Encoder.swift: the first input an image (1, 3, H, W) in [-1, 1] (Apple: `x`); the first
  output the latent distribution's 8 channels, mean then log-variance; the draw times
  encoderScaleFactor (default 0.18215) is the latent.
- tokenizer/BPETokenizer+Reading.swift: merges.txt lines starting with '#' are skipped;
  BPETokenizer.swift pads with `<|endoftext|>`.
- Its schedulers (Scheduler.swift, DPMSolverMultistepScheduler.swift) are built with SD-1.x's
  defaults (scaled_linear 0.00085 .. 0.012, 1000 steps), epsilon prediction: refused otherwise.
A VAE whose scaling is not 0.18215 (or has a shift) gets the correction inside VAEDecoder and
VAEEncoder, so the Swift defaults give the VAE's own latents. Shapes are fixed; compute is fp16
(the Neural Engine's), I/O fp32, except the text encoder's token ids, which are read at fp32.
Core ML cannot run on Linux: what is checked here is every saved feature against the contract and
the two chunks in PyTorch against the whole UNet.
"""

from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mobilegen.layouts import LayoutCheck, LayoutResult
from mobilegen.layouts.context import LayoutContext, compare, consumer_decoder

NAME = "apple-coreml"
DIR = "apple-coreml"
SWIFT_SCALE = 0.18215  # Configuration.decoderScaleFactor / encoderScaleFactor defaults
CHUNK_ABOVE_BYTES = 1024**3  # Apple's README: chunks of < 1 GB of weights for iOS ANE
BATCH = 2  # [negative; prompt] in one UNet call


def check(root: Path, swapped: dict[str, Any] | None = None) -> str | None:
    from mobilegen.checkpoints.pipeline_folder import read_json
    from mobilegen.layouts.context import sd_schedule_problem

    vae = read_json(root / "vae" / "config.json")
    if vae.get("latent_channels", 4) != 4:
        return ("apple-coreml needs 4 latent channels (Encoder.swift slices the moments at 4 and "
                f"8); the pipeline's vae latent_channels is {vae.get('latent_channels')}")
    return sd_schedule_problem(root, NAME, "Apple's Swift schedulers")


def contract(ctx: LayoutContext, chunked: bool) -> dict[str, dict[str, list[Any]]]:
    """model -> inputs / outputs as (name, dtype, shape), in the order Swift relies on."""
    seq = ctx.components["text_encoder"]["sequence_length"]
    dim = ctx.configs["text_encoder"].hidden_size
    ch, h, w = ctx.components["unet"]["sample_shape"]
    _, hh, ww = ctx.components["decoder"]["image_shape"]
    f32 = "float32"
    unet_in = [("sample", f32, [BATCH, ch, h, w]), ("timestep", f32, [BATCH]),
               ("encoder_hidden_states", f32, [BATCH, dim, 1, seq])]
    out = {"TextEncoder": {"inputs": [("input_ids", f32, [1, seq])],
                           "outputs": [("last_hidden_state", f32, [1, seq, dim])]},
           "VAEDecoder": {"inputs": [("z", f32, [1, ch, h, w])],
                          "outputs": [("image", f32, [1, 3, hh, ww])]},
           "VAEEncoder": {"inputs": [("x", f32, [1, 3, hh, ww])],
                          "outputs": [("latent", f32, [1, 2 * ch, h, w])]}}
    if chunked:  # chunk 2's inputs are checked against chunk 1's outputs (_merge_check)
        out["UnetChunk1"] = {"inputs": unet_in, "outputs": []}
        out["UnetChunk2"] = {"inputs": [], "outputs": [("noise_pred", f32, [BATCH, ch, h, w])]}
    else:
        out["Unet"] = {"inputs": unet_in, "outputs": [("noise_pred", f32, [BATCH, ch, h, w])]}
    return out


def _wrappers(ctx: LayoutContext) -> dict[str, Any]:
    import torch

    te, unet, dec, enc = (ctx.models[k] for k in ("text_encoder", "unet", "decoder",
                                                  "vae_encoder"))
    dcfg, ecfg = ctx.configs["decoder"], ctx.configs["vae_encoder"]
    e_mul = ecfg.latent_scaling_factor / SWIFT_SCALE
    lat = ecfg.latent_channels

    class TextEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.te = te

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.te(input_ids.to(torch.int32).long())

    class Unet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                    encoder_hidden_states: torch.Tensor) -> torch.Tensor:
            return self.unet(sample, timestep, encoder_hidden_states.squeeze(2).transpose(1, 2))

    class VAEEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = enc

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            moments = self.enc(x)  # mean, log-variance of the VAE's own latents
            mean = (moments[:, :lat] - ecfg.latent_shift_factor) * e_mul
            return torch.cat([mean, moments[:, lat:] + 2 * math.log(e_mul)], dim=1)

    return {"TextEncoder": TextEncoder().eval(), "Unet": Unet().eval(),
            "VAEDecoder": consumer_decoder(dec, dcfg, SWIFT_SCALE),
            "VAEEncoder": VAEEncoder().eval()}


def _chunk_wrappers(unet_wrapper: Any) -> tuple[Any, Any]:
    """UnetChunk1 (the UNet's inputs, ANE layout) and UnetChunk2 (chunk 1's states + the
    hidden states) around the PyTorch split (layouts/unet_chunks.py)."""
    import torch

    from mobilegen.layouts import unet_chunks

    c1, c2 = unet_chunks.split(unet_wrapper.unet)

    class UnetChunk1(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = c1

        def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                    encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self.c1(sample, timestep, encoder_hidden_states.squeeze(2).transpose(1, 2))

    class UnetChunk2(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c2 = c2

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            *states, ehs = args
            return self.c2(*states, ehs.squeeze(2).transpose(1, 2))

    return UnetChunk1().eval(), UnetChunk2().eval()


def _convert(name: str, module: Any, args: tuple[Any, ...], in_names: list[str],
             out_names: list[str], path: Path) -> None:
    """torch.export -> ML program (iOS 16, the Swift package's floor), fp16 compute with fp32
    I/O; a cast of an input to int (the token ids) stays fp32 so that ids above 2048 are
    exact."""
    import shutil

    import coremltools as ct
    import torch

    from mobilegen.errors import ExportError, first_line

    def fp16(op: Any) -> bool:
        return not (op.op_type == "cast" and any(
            getattr(v, "name", None) in in_names for v in op.inputs.values()))

    try:
        with contextlib.redirect_stdout(sys.stderr), torch.no_grad():
            ep = torch.export.export(module, tuple(args)).run_decompositions({})
            model = ct.convert(
                ep, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                inputs=[ct.TensorType(name=n, shape=tuple(a.shape), dtype=np.float32)
                        for n, a in zip(in_names, args, strict=True)],
                outputs=[ct.TensorType(name=n, dtype=np.float32) for n in out_names],
                compute_precision=ct.transform.FP16ComputePrecision(op_selector=fp16))
    except Exception as e:
        raise ExportError(f"{NAME}: coremltools.convert failed for {name}: {first_line(e)}") \
            from e
    if path.exists():
        shutil.rmtree(path)
    model.save(str(path))


def _features(path: Path) -> dict[str, list[tuple[str, str, list[int]]]]:
    from mobilegen.targets.coreml import inspect_package

    info = inspect_package(path)
    return {side: [(f["name"], f["dtype"], [int(d) for d in f["shape"]]) for f in info[side]]
            for side in ("inputs", "outputs")}


def _contract_check(rel: str, found: dict[str, list[Any]], want: dict[str, list[Any]]
                    ) -> LayoutCheck:
    problems = []
    for side in ("inputs", "outputs"):
        for i, (name, dtype, shape) in enumerate(want[side]):
            got = found[side][i] if i < len(found[side]) else None
            if got != (name, dtype, shape):
                problems.append(f"{side}[{i}] is {got}, expected {(name, dtype, shape)}")
    return LayoutCheck(rel, "features vs Apple's Swift contract", not problems, None,
                       "; ".join(problems) or "names, shapes, dtypes as the Swift code reads")


def _merge_check(c1: dict[str, list[Any]], c2: dict[str, list[Any]]) -> LayoutCheck:
    """Each chunk-2 input is a chunk-1 output or an original input, at its shape and dtype
    (ManagedMLModel.swift merges the two, outputs first)."""
    offered = {n: (d, s) for n, d, s in [*c1["inputs"], *c1["outputs"]]}
    offered.update({n: (d, s) for n, d, s in c1["outputs"]})
    problems = [f"{n} {d} {s} is not offered (chunk 1 gives {offered.get(n)})"
                for n, d, s in c2["inputs"] if offered.get(n) != (d, s)]
    return LayoutCheck(f"{DIR}/UnetChunk2.mlpackage",
                       "chunk 2's inputs = chunk 1's outputs + the original inputs",
                       not problems, None, "; ".join(problems) or
                       f"{len(c2['inputs'])} inputs, each offered by chunk 1 or the caller")


def _ids_check(rel: str, path: Path) -> LayoutCheck:
    """Every op reading `input_ids` is a cast to int32 computed at fp32 (fp16 holds integers
    exactly only up to 2048; CLIP's vocabulary has 49,408)."""
    import coremltools as ct

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    main = spec.mlProgram.functions["main"]
    ops = main.block_specializations[main.opset].operations
    readers = [op for op in ops for arg in op.inputs.values()
               for b in arg.arguments if b.name == "input_ids"]
    bad = [op.type for op in readers if op.type != "cast"]
    ok = bool(readers) and not bad
    return LayoutCheck(rel, "token ids read at fp32", ok, None,
                       f"read by {[op.type for op in readers]}" + (f"; not casts: {bad}"
                                                                  if bad else ""))


def _examples(ctx: LayoutContext, spec: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    import torch

    g = torch.Generator().manual_seed(0)
    ids = ctx.models["text_encoder"].example_inputs(1, seed=0)[0].float()
    out: dict[str, tuple[Any, ...]] = {"TextEncoder": (ids,)}
    for name in ("VAEDecoder", "VAEEncoder", "Unet"):
        shapes = [shape for _, _, shape in spec.get(name, spec.get("UnetChunk1"))["inputs"]]
        out[name] = tuple(torch.randn(*s, generator=g) for s in shapes)
    out["Unet"] = (out["Unet"][0], torch.tensor([981.0] * BATCH), out["Unet"][2])
    out["VAEEncoder"] = (out["VAEEncoder"][0].clamp(-1, 1),)
    return out


def _write_packages(ctx: LayoutContext, wrappers: dict[str, Any], chunked: bool
                    ) -> tuple[list[dict[str, Any]], list[LayoutCheck], dict[str, Any]]:
    """Convert and save every package; -> (file entries, checks, saved features by model)."""
    import torch

    spec = contract(ctx, chunked)
    ex = _examples(ctx, spec)
    jobs = [(n, wrappers[n], ex[n], [i[0] for i in spec[n]["inputs"]],
             [o[0] for o in spec[n]["outputs"]]) for n in ("TextEncoder", "VAEDecoder",
                                                          "VAEEncoder")]
    checks: list[LayoutCheck] = []
    unet_in = ["sample", "timestep", "encoder_hidden_states"]
    if chunked:
        from mobilegen.layouts.unet_chunks import STATE

        c1, c2 = _chunk_wrappers(wrappers["Unet"])
        with torch.no_grad():
            states = c1(*ex["Unet"])
            whole = wrappers["Unet"](*ex["Unet"]).numpy()
            pieces = c2(*states, ex["Unet"][2]).numpy()
        checks.append(compare(f"{DIR}/UnetChunk2.mlpackage",
                              "UnetChunk1 -> UnetChunk2 in PyTorch vs the whole UNet", pieces,
                              whole))
        names = [f"{STATE}{i}" for i in range(len(states))]
        jobs += [("UnetChunk1", c1, ex["Unet"], unet_in, names),
                 ("UnetChunk2", c2, (*states, ex["Unet"][2]), [*names, unet_in[2]],
                  ["noise_pred"])]
    else:
        jobs.append(("Unet", wrappers["Unet"], ex["Unet"], unet_in, ["noise_pred"]))
    files: list[dict[str, Any]] = []
    found: dict[str, Any] = {}
    for name, module, args, ins, outs in jobs:
        rel = f"{DIR}/{name}.mlpackage"
        _convert(name, module, args, ins, outs, ctx.out.path(rel))
        found[name] = _features(ctx.out.path(rel))
        files += ctx.tree(rel, "mlpackage", name)
    return files, checks, found


def write(ctx: LayoutContext) -> LayoutResult:
    ctx.out.path(DIR).mkdir(parents=True, exist_ok=True)
    wrappers = _wrappers(ctx)
    nbytes = 2 * sum(p.numel() for p in wrappers["Unet"].parameters())  # fp16 weights
    chunked = ctx.prec.chunk_unet if ctx.prec.chunk_unet is not None \
        else nbytes > CHUNK_ABOVE_BYTES
    spec = contract(ctx, chunked)
    files, checks, found = _write_packages(ctx, wrappers, chunked)
    for name, want in spec.items():
        rel = f"{DIR}/{name}.mlpackage"
        checks.append(_contract_check(rel, found[name], want))
    checks.append(_ids_check(f"{DIR}/TextEncoder.mlpackage",
                             ctx.out.path(f"{DIR}/TextEncoder.mlpackage")))
    if chunked:
        checks.append(_merge_check(found["UnetChunk1"], found["UnetChunk2"]))
    for n in ("vocab.json", "merges.txt"):
        ctx.out.path(f"{DIR}/{n}").write_bytes(ctx.out.path(f"tokenizer/{n}").read_bytes())
        files.append(ctx.file(f"{DIR}/{n}", "tokenizer", "tokenizer"))
    dcfg = ctx.configs["decoder"]
    notes = ["Xcode compiles each .mlpackage to the .mlmodelc the Swift package loads (or "
             "`xcrun coremlcompiler compile X.mlpackage OUTDIR`); Core ML cannot run on Linux, "
             "so no prediction of these packages was made here",
             f"UNet {'in two chunks' if chunked else 'whole'}: fp16 weights "
             f"{nbytes / 2**20:.1f} MiB, limit {CHUNK_ABOVE_BYTES / 2**20:.0f} MiB"
             + ("" if ctx.prec.chunk_unet is None else " ([pipeline] chunk_unet set)"),
             f"fixed shapes: UNet batch {BATCH} ([negative; prompt], guidance on); the image "
             f"comes out at the decoder's size {ctx.components['decoder']['image_shape'][1]}",
             "its schedulers are Apple's own on SD's schedule; the recipe's [sampler] applies "
             "to mobilegen's chain, not to the Swift pipeline"]
    if (dcfg.latent_scaling_factor, dcfg.latent_shift_factor) != (SWIFT_SCALE, 0.0):
        notes.append(f"the VAE's scaling {dcfg.latent_scaling_factor} / shift "
                     f"{dcfg.latent_shift_factor}: corrected inside VAEDecoder / VAEEncoder, so "
                     "the Swift defaults (0.18215) apply")
    return LayoutResult(
        NAME, DIR, "Apple ml-stable-diffusion Swift package (StableDiffusionPipeline)",
        "StableDiffusionPipeline(resourcesAt: <OUT/apple-coreml compiled to .mlmodelc>, "
        "controlNet: [], configuration: MLModelConfiguration())",
        tuple(files), tuple(checks), tuple(notes),
        {k: {s: [list(t) for t in v[s]] for s in v} for k, v in found.items()})
