"""`diffusers-onnx`: OUT itself becomes the folder diffusers' `OnnxStableDiffusionPipeline` (and
optimum-onnx's `ORTStableDiffusionPipeline`) load offline:

    OnnxStableDiffusionPipeline.from_pretrained(OUT, provider="CPUExecutionProvider")

model_index.json names each ONNX component `["diffusers", "OnnxRuntimeModel"]`; each of
text_encoder/, unet/, vae_decoder/, vae_encoder/ holds `model.onnx` (its weights inside, or in
`model.onnx.data` beside it above the protobuf limit) and a `config.json` (optimum refuses a
component without one); tokenizer/ and scheduler/ are the ones mobilegen ships anyway. The
mobilegen component folders (text_encoder/, unet/ with their own manifests) hold these files
beside their own: nothing of mobilegen's is renamed.

The contract, as the consumers' code reads it (diffusers 0.42.1 pipeline_onnx_stable_diffusion.py,
optimum-onnx 0.1.0's ORT pipeline: names, dtypes, output order):
- text_encoder: `input_ids` int32 (batch, L) -> `last_hidden_state` (batch, L, D) first,
  `pooler_output` (batch, D) (the state at the first EOS token, as transformers' CLIPTextModel).
- unet: `sample` (batch, 4, h, w), `timestep` float32 (1,) or (batch,), `encoder_hidden_states`
  (batch, L, D) -> `out_sample`. diffusers feeds one timestep for a batch of 2N (guidance), so
  the graph takes the first entry for the whole batch: per-sample timesteps are not supported.
- vae_decoder: `latent_sample` -> `sample`. diffusers divides by a hard-coded 0.18215 before
  the call; a VAE with another scaling (or a shift) gets the correction inside the graph and
  `scaling_factor` 0.18215 in config.json, so both consumers compute the VAE's own latents.
- vae_encoder: `sample` (image in [-1, 1]) -> `latent_sample`: the mode of the latent
  distribution, scaled so that diffusers' `0.18215 * latent_sample` is the UNet's latent
  (diffusers' own converter bakes a random draw into the graph; the mode is deterministic).
Every axis named `batch` is dynamic.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from mobilegen.layouts import LayoutCheck, LayoutResult
from mobilegen.layouts.context import LayoutContext, compare, consumer_decoder

NAME = "diffusers-onnx"
DIFFUSERS_SCALE = 0.18215  # hard-coded in OnnxStableDiffusionPipeline (decode and img2img)
OPSET = 20  # >= 18 for the UNet's GEGLU split (STACK-NOTES); 20 writes the ONNX Gelu op
EXTERNAL_ABOVE_BYTES = int(1.8 * 1024**3)  # protobuf's 2 GB limit, as targets/onnx.py
COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
CONTRACT: dict[str, dict[str, Any]] = {
    "text_encoder": {"inputs": {"input_ids": ("int32", ["batch", "L"])},
                     "outputs": {"last_hidden_state": ("float32", ["batch", "L", "D"]),
                                 "pooler_output": ("float32", ["batch", "D"])}},
    "unet": {"inputs": {"sample": ("float32", ["batch", 4, "h", "w"]),
                        "timestep": ("float32", ["timestep_batch"]),
                        "encoder_hidden_states": ("float32", ["batch", "L", "D"])},
             "outputs": {"out_sample": ("float32", ["batch", 4, "h", "w"])}},
    "vae_decoder": {"inputs": {"latent_sample": ("float32", ["batch", 4, "h", "w"])},
                    "outputs": {"sample": ("float32", ["batch", 3, "H", "W"])}},
    "vae_encoder": {"inputs": {"sample": ("float32", ["batch", 3, "H", "W"])},
                    "outputs": {"latent_sample": ("float32", ["batch", 4, "h", "w"])}},
}


def check(root: Path, swapped: dict[str, Any] | None = None) -> str | None:
    from mobilegen.checkpoints.pipeline_folder import read_json

    vae = read_json(root / "vae" / "config.json")
    unet = read_json(root / "unet" / "config.json")
    for what, value in (("vae latent_channels", vae.get("latent_channels", 4)),
                        ("unet in_channels", unet.get("in_channels", 4))):
        if value != 4:
            return (f"diffusers-onnx needs 4 latent channels (OnnxStableDiffusionPipeline draws "
                    f"(B, 4, H/8, W/8) latents); the pipeline's {what} is {value}")
    return None


def _wrappers(ctx: LayoutContext) -> dict[str, Any]:
    """nn.Modules with the consumers' signatures around the loaded modules."""
    import torch

    te, unet, dec, enc = (ctx.models[k] for k in ("text_encoder", "unet", "decoder",
                                                  "vae_encoder"))
    eos = int(ctx.configs["text_encoder"].eos_token_id)
    dcfg, ecfg = ctx.configs["decoder"], ctx.configs["vae_encoder"]

    class TextEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.te = te

        def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            hidden = self.te(input_ids.long())  # (B, L, D)
            first_eos = (input_ids == eos).int().argmax(-1)  # (B,)
            pooled = hidden[torch.arange(hidden.shape[0]), first_eos]  # (B, D)
            return hidden, pooled

    class Unet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                    encoder_hidden_states: torch.Tensor) -> torch.Tensor:
            t = timestep.reshape(-1)[:1].float().expand(sample.shape[0])  # one t per call
            return self.unet(sample, t, encoder_hidden_states)

    lat = ecfg.latent_channels
    e_mul = ecfg.latent_scaling_factor / DIFFUSERS_SCALE

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = enc

        def forward(self, sample: torch.Tensor) -> torch.Tensor:
            mean = self.enc(sample)[:, :lat]  # the distribution's mode
            return (mean - ecfg.latent_shift_factor) * e_mul

    return {"text_encoder": TextEncoder().eval(), "unet": Unet().eval(),
            "vae_decoder": consumer_decoder(dec, dcfg, DIFFUSERS_SCALE),
            "vae_encoder": Encoder().eval()}


def _examples(ctx: LayoutContext, batch: int) -> dict[str, tuple[Any, ...]]:
    import torch

    te = ctx.configs["text_encoder"]
    unet_c, dec_c = ctx.components["unet"], ctx.components["decoder"]
    g = torch.Generator().manual_seed(batch)
    ids = ctx.models["text_encoder"].example_inputs(batch, seed=batch)[0].int()
    ch, h, w = unet_c["sample_shape"]
    _, hh, ww = dec_c["image_shape"]
    return {
        "text_encoder": (ids,),
        "unet": (torch.randn(batch, ch, h, w, generator=g), torch.tensor([999.0] * batch),
                 torch.randn(batch, te.max_position_embeddings, te.hidden_size, generator=g)),
        "vae_decoder": (torch.randn(batch, ch, h, w, generator=g),),
        "vae_encoder": (torch.rand(batch, 3, hh, ww, generator=g) * 2 - 1,),
    }


def _export(module: Any, args: tuple[Any, ...], path: Path, comp: str) -> bool:
    """-> whether the weights went to model.onnx.data (above the protobuf limit)."""
    import logging

    import torch

    from mobilegen.errors import ExportError

    spec = CONTRACT[comp]
    names = list(spec["inputs"])
    batch = torch.export.Dim("batch", min=1, max=1024)
    dyn: dict[str, Any] = {n: {0: batch} for n in names}
    if comp == "unet":  # diffusers feeds (1,), optimum may feed (batch,)
        dyn["timestep"] = {0: torch.export.Dim("timestep_batch", min=1, max=1024)}
    nbytes = sum(p.numel() * p.element_size() for p in module.parameters())
    external = nbytes > EXTERNAL_ABOVE_BYTES
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sys.stderr), torch.no_grad():
            torch.onnx.export(module, args, str(path), dynamo=True, opset_version=OPSET,
                              input_names=names, output_names=list(spec["outputs"]),
                              dynamic_shapes=tuple(dyn[n] for n in names),  # by position
                              external_data=external, verbose=False)
    except Exception as e:
        raise ExportError(f"{NAME}: torch.onnx.export failed for {comp}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e)}") \
            from e
    _name_axes(path, spec)
    return external


def _name_axes(path: Path, spec: dict[str, Any]) -> None:
    """torch.export calls dynamic axes s0, s1...: give the batch axes the contract's names."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for value in (*model.graph.input, *model.graph.output):
        want = {**spec["inputs"], **spec["outputs"]}.get(value.name)
        dim = value.type.tensor_type.shape.dim
        if want is not None and dim and not dim[0].HasField("dim_value"):
            dim[0].dim_param = want[1][0]
    onnx.save(model, str(path))


def _io_of(path: Path) -> dict[str, Any]:
    """What the saved graph declares: name -> (dtype, shape), inputs and outputs in order."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)

    def one(v: Any) -> list[Any]:
        t = v.type.tensor_type
        shape = [d.dim_param or d.dim_value for d in t.shape.dim]
        return [helper.tensor_dtype_to_np_dtype(t.elem_type).name, shape]

    return {"inputs": {v.name: one(v) for v in model.graph.input},
            "outputs": {v.name: one(v) for v in model.graph.output}}


def _contract_check(comp: str, rel: str, io: dict[str, Any]) -> LayoutCheck:
    spec = CONTRACT[comp]
    problems = []
    for side in ("inputs", "outputs"):
        if list(io[side]) != list(spec[side]):
            problems.append(f"{side} {list(io[side])}, expected {list(spec[side])}")
            continue
        for name, (dtype, shape) in spec[side].items():
            found_dtype, found_shape = io[side][name]
            if found_dtype != dtype:
                problems.append(f"{name} is {found_dtype}, expected {dtype}")
            if isinstance(shape[0], str) and not isinstance(found_shape[0], str):
                problems.append(f"{name}'s first axis is fixed ({found_shape[0]}), expected "
                                "dynamic")
    return LayoutCheck(rel, "names, dtypes, dynamic batch vs the consumers' contract",
                       not problems, None, "; ".join(problems) or "as the contract says")


def write(ctx: LayoutContext) -> LayoutResult:
    import onnxruntime as ort
    import torch

    wrappers = _wrappers(ctx)
    examples, other = _examples(ctx, 2), _examples(ctx, 1)
    files: list[dict[str, Any]] = []
    checks: list[LayoutCheck] = []
    contract: dict[str, Any] = {}
    configs = _configs(ctx)
    for comp in COMPONENTS:
        rel = f"{comp}/model.onnx"
        path = ctx.out.path(rel)
        external = _export(wrappers[comp], examples[comp], path, comp)
        files.append(ctx.file(rel, "onnx", comp))
        if external:
            files.append(ctx.file(f"{rel}.data", "onnx-external-data", comp))
        ctx.out.write_json(f"{comp}/config.json", configs[comp])
        files.append(ctx.file(f"{comp}/config.json", "config", comp))
        io = _io_of(path)
        contract[comp] = io
        checks.append(_contract_check(comp, rel, io))
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for batch, args in ((2, examples[comp]), (1, other[comp])):
            feeds = {n: a.numpy() for n, a in zip(CONTRACT[comp]["inputs"], args, strict=True)}
            if comp == "unet":  # what diffusers feeds: one timestep for the whole batch
                feeds["timestep"] = feeds["timestep"][:1]
            with torch.no_grad():
                want = wrappers[comp](*args)
            want = want if isinstance(want, tuple) else (want,)
            got = sess.run(None, feeds)
            for name, g, w in zip(CONTRACT[comp]["outputs"], got, want, strict=True):
                checks.append(compare(rel, f"onnxruntime vs PyTorch, {name}, batch {batch}",
                                      g, w.numpy()))
    ctx.out.write_json("model_index.json", _model_index(ctx))
    files.append(ctx.file("model_index.json", "model-index", "pipeline"))
    notes = ["diffusers' pipeline draws latents of (B, 4, height / 8, width / 8): pass height = "
             f"width = 8 x {ctx.components['unet']['sample_shape'][1]} (the latent size); the "
             "image comes out at the decoder's own size "
             f"{ctx.components['decoder']['image_shape'][1]}",
             "fp32 of the loaded weights (the component recipes' passes apply to mobilegen's "
             "own artifacts, not to this layout)"]
    dcfg = ctx.configs["decoder"]
    if (dcfg.latent_scaling_factor, dcfg.latent_shift_factor) != (DIFFUSERS_SCALE, 0.0):
        notes.append(f"the VAE's scaling {dcfg.latent_scaling_factor} / shift "
                     f"{dcfg.latent_shift_factor} differ from diffusers' hard-coded 0.18215: "
                     "the correction is inside vae_decoder/ and vae_encoder/ model.onnx")
    return LayoutResult(
        NAME, ".", "diffusers OnnxStableDiffusionPipeline; optimum-onnx ORTStableDiffusionPipeline",
        'OnnxStableDiffusionPipeline.from_pretrained(OUT, provider="CPUExecutionProvider")',
        tuple(files), tuple(checks), tuple(notes), contract)


def _configs(ctx: LayoutContext) -> dict[str, dict[str, Any]]:
    """config.json per component: the source's own (transformers' CLIPTextConfig, diffusers'
    UNet2DConditionModel / AutoencoderKL) with the VAE's scaling set to what the graph expects."""
    from mobilegen.checkpoints.pipeline_folder import read_json

    vae = read_json(ctx.root / "vae" / "config.json")
    vae = {**vae, "scaling_factor": DIFFUSERS_SCALE}
    vae.pop("shift_factor", None)
    return {"text_encoder": read_json(ctx.root / "text_encoder" / "config.json"),
            "unet": read_json(ctx.root / "unet" / "config.json"),
            "vae_decoder": vae, "vae_encoder": vae}


def _model_index(ctx: LayoutContext) -> dict[str, Any]:
    from mobilegen.checkpoints.pipeline_folder import read_json

    src = read_json(ctx.root / "model_index.json")
    scheduler = src.get("scheduler") or ["diffusers", "PNDMScheduler"]
    return {
        "_class_name": "OnnxStableDiffusionPipeline",
        "_diffusers_version": _diffusers_version(),
        **{c: ["diffusers", "OnnxRuntimeModel"] for c in COMPONENTS},
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": scheduler,
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }


def _diffusers_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diffusers")
    except PackageNotFoundError:
        return "0.42.1"  # the version whose pipeline this layout was checked against

