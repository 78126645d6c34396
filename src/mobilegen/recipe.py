"""Recipes (what to export) and target profiles (where to), validated on load.

Both are TOML files parsed into frozen pydantic models that forbid unknown keys, so a typo is an
error naming the file and the key, found before any work starts.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mobilegen.errors import RecipeError
from mobilegen.targets.profile import list_target_names
from mobilegen.toml_schema import Strict, format_error, read_toml

RECIPES_DIR = Path(str(files("mobilegen") / "data" / "recipes"))  # shipped recipes
Finite = Annotated[float, Field(allow_inf_nan=False)]
MAX_IMAGE_SIZE = 4096  # pixels (or latents) per side; 10^5 would allocate ~80 GB


class ModelSpec(Strict):
    family: str
    checkpoint: str | None = None  # relative to the recipe file
    init: Literal["checkpoint", "random"] = "checkpoint"
    variant: str | None = None  # a named variant of the family (with init = "random")
    config: dict[str, Any] | None = None  # explicit architecture, overrides the stored one
    seed: int = 0  # for init = "random"

    @model_validator(mode="after")
    def _source(self) -> ModelSpec:
        if self.init == "checkpoint" and not self.checkpoint:
            raise ValueError("init = 'checkpoint' needs model.checkpoint")
        if self.init == "random" and not (self.variant or self.config):
            raise ValueError("init = 'random' needs model.variant or [model.config]")
        return self


class SamplerSpec(Strict):
    kind: Literal["dpm++2m", "ddim", "euler-maruyama"] = "dpm++2m"
    steps: int = Field(20, ge=1, le=1000)
    guidance_scale: float = Field(1.0, ge=0.0, le=1000.0, allow_inf_nan=False)
    time_spacing: Literal["uniform", "logsnr"] = "logsnr"
    seed: int = Field(0, ge=0, le=2**63 - 1)
    num_images: int = Field(8, ge=1, le=256)
    # class labels to sample (cycled); default 0..num_classes-1; the upper bound is the model's
    # (checked when the export reads them: manifest.component_entry)
    labels: list[Annotated[int, Field(ge=0)]] | None = Field(None, min_length=1, max_length=256)


class ValidateSpec(Strict):
    timesteps: list[Annotated[float, Field(ge=0.0, le=1000.0, allow_inf_nan=False)]] = Field(
        default_factory=lambda: [999.0, 750.0, 500.0, 250.0, 50.0, 1.0],  # model-time inputs
        min_length=1, max_length=64)
    batch: int = Field(2, ge=1, le=64)
    end_to_end: bool = True
    # "reduced": above 1 GiB of fp32 weights, a smaller validation that still gates (parity at the
    # highest and lowest timestep, no sampling run, the parity calls as latency warm-up;
    # export/validation_scope.py), reported as such; "full": the above at any size
    big_models: Literal["reduced", "full"] = "reduced"


class LatencySpec(Strict):
    warmup: int = Field(3, ge=0, le=10_000)
    runs: int = Field(20, ge=1, le=100_000)
    batch: int = Field(1, ge=1, le=256)


class ReportSpec(Strict):
    """Optional report sections. Both cost export time, so recipes opt in."""

    # Export and time each distinct block alone, plus onnxruntime's operator profile of the whole
    # model (seconds for STOIC, minutes for an SD-size UNet with many distinct blocks).
    blocks: bool = False
    # Device latency ESTIMATES for target profiles with a calibrated device (estimate.py); about
    # ten seconds to calibrate, and always printed apart from measured figures.
    estimates: bool = False


class Gates(Strict):
    """Quality and latency gates; a failed gate exits 3. Defaults keep parity honest."""

    # NaN would make every comparison false (a gate that silently passes): values are finite
    min_psnr_db: Finite | None = 30.0  # end-to-end image PSNR vs PyTorch, same seed
    min_step_psnr_db: Finite | None = 40.0  # worst single-step output PSNR over timesteps
    min_cosine: Finite | None = 0.999  # worst single-step cosine similarity
    max_abs_error: Finite | None = None  # worst single-step max abs error
    max_latency_ms: Finite | None = None  # median host latency of each artifact


class PassSpec(Strict):
    """One entry of `passes`: a bare name ("fp16") or a table ({name = "int8", mode = "static"}).

    `options` holds the table's other keys; load_recipe checks them against the pass's own typed
    Options (mobilegen.passes) and `config()` returns that typed object."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_toml(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and "name" in value and "options" not in value:
            return {"name": value["name"], "options": {k: v for k, v in value.items()
                                                       if k != "name"}}
        return value

    def config(self) -> Any:
        from mobilegen.passes import PASSES

        return PASSES[self.name].options(self.options)


class Recipe(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    model: ModelSpec
    targets: list[str] = Field(default_factory=lambda: ["ort-mobile-cpu"], min_length=1)
    # in order; bare names or tables with options
    passes: list[PassSpec] = Field(default_factory=list)
    # export/validation resolution; default: the model's own. The family checks the rest (a
    # multiple of the STOIC stride, of 2^(stages-1) for a UNet) in export_size.
    image_size: int | None = Field(None, ge=1, le=MAX_IMAGE_SIZE)
    sampler: SamplerSpec = SamplerSpec()
    validation: ValidateSpec = Field(ValidateSpec(), alias="validate")  # TOML key: validate
    latency: LatencySpec = LatencySpec()
    report: ReportSpec = ReportSpec()
    gates: Gates = Gates()
    path: Path | None = Field(None, exclude=True)  # where it was loaded from

    def export_size(self, cfg: Any) -> int:
        """The resolution to export at: `image_size`, checked against the model's config
        (`cfg.size_problem(size)`), or the model's own."""
        if self.image_size is None:
            return int(cfg.image_size)
        problem = cfg.size_problem(self.image_size) if hasattr(cfg, "size_problem") else None
        if problem:
            raise RecipeError(f"{self.path}: key 'image_size': {problem}")
        return self.image_size

    def checkpoint_path(self) -> Path | None:
        if not self.model.checkpoint:
            return None
        p = Path(self.model.checkpoint).expanduser()
        base = self.path.parent if self.path else Path.cwd()
        return p if p.is_absolute() else (base / p).resolve()


def resolve_recipe(arg: str | Path) -> Path:
    """A recipe file as given, or a shipped recipe by name (`stoic-digits`), so an installed
    wheel can export its own recipes from any folder. A file that exists always wins."""
    path = Path(arg)
    if path.exists() or path.suffix == ".toml" or len(path.parts) != 1:
        return path
    shipped = RECIPES_DIR / f"{path.name}.toml"
    return shipped if shipped.is_file() else path


def load_recipe(path: str | Path, data: dict[str, Any] | None = None) -> Recipe:
    """`data`: the recipe's content when it does not come from `path` alone (a component of a
    diffusers pipeline recipe); `path` is still the file it is reported and hashed as."""
    path = resolve_recipe(path) if data is None else Path(path)
    data = read_toml(path) if data is None else data
    if "pipeline" in data:  # bench, inspect --recipe and passes take one model
        raise RecipeError(f"{path}: a pipeline recipe ([pipeline]); this command takes a "
                          "single-model recipe (export and sample take pipelines)")
    try:
        recipe = Recipe.model_validate({**data, "path": path.resolve()})
    except ValidationError as e:
        raise RecipeError(format_error(path, e)) from None
    from mobilegen.models import FAMILIES

    if recipe.model.family not in FAMILIES:
        raise RecipeError(
            f"{path}: key 'model.family': unknown family '{recipe.model.family}' "
            f"(known: {', '.join(FAMILIES)})"
        )
    known_targets = list_target_names()
    for t in recipe.targets:
        if t not in known_targets:
            raise RecipeError(
                f"{path}: key 'targets': unknown target '{t}' (known: {', '.join(known_targets)})"
            )
        from mobilegen.targets.profile import load_target

        load_target(t)  # a profile that does not validate fails now, not after the capture
    from mobilegen.passes import PASSES

    for i, p in enumerate(recipe.passes):
        if p.name not in PASSES:
            raise RecipeError(
                f"{path}: key 'passes': unknown pass '{p.name}' "
                f"(known: {', '.join(PASSES) or 'none'})"
            )
        try:
            p.config()
        except ValidationError as e:
            e0 = e.errors()[0]
            key = ".".join(str(k) for k in e0["loc"])
            what = (f"unknown option '{key}'" if e0["type"] == "extra_forbidden"
                    else f"option '{key}': {e0['msg']} (found {e0.get('input')!r})")
            raise RecipeError(f"{path}: key 'passes[{i}]' ({p.name}): {what}") from None
    from mobilegen.passes.precision import precision_plan

    try:
        precision_plan(recipe)
    except ValueError as e:
        raise RecipeError(f"{path}: key 'passes': {e}") from None
    return recipe


def list_recipes() -> list[Path]:
    return sorted(RECIPES_DIR.glob("*.toml"))


# ------------------------------------------------------------------ pipeline recipes (UNet + VAE)
# A pipeline recipe names two component recipes (relative to itself) and says nothing about how
# to export them: each component keeps its own targets, passes, gates and sampler. The UNet's
# [sampler] drives the chain.
PIPELINE_SLOTS: dict[str, str] = {"unet": "unet", "decoder": "vae-decoder"}  # slot -> family


class PipelineSlots(Strict):
    unet: str
    decoder: str


class PipelineGates(Strict):
    min_psnr_db: Finite | None = 30.0  # chain image PSNR, artifacts vs PyTorch, same seed


class PipelineFile(Strict):
    """What a pipeline recipe's TOML may hold."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    pipeline: PipelineSlots
    gates: PipelineGates = PipelineGates()


class SDSamplerSpec(Strict):
    """The sampler of a diffusers pipeline recipe, on SD's discrete schedule (sampling/discrete)."""

    kind: Literal["ddim", "dpm++2m", "euler", "euler-ancestral"] = "dpm++2m"
    steps: int = Field(20, ge=1, le=1000)  # and what the schedule takes (checked at load)
    guidance_scale: float = Field(7.5, ge=0.0, le=1000.0, allow_inf_nan=False)
    seed: int = Field(0, ge=0, le=2**63 - 1)  # numpy's default_rng takes no negative seed
    num_images: int = Field(2, ge=1, le=64)
    karras_sigmas: bool | None = None  # None: the scheduler config's use_karras_sigmas


class SDPipelineSpec(Strict):
    prompt: str
    negative_prompt: str
    calibration_prompts: list[str]
    sampler: SDSamplerSpec


class PipelineRecipe(BaseModel):
    """A validated pipeline recipe with its component recipes loaded."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    description: str
    path: Path
    unet: Recipe
    decoder: Recipe
    gates: PipelineGates
    # a diffusers pipeline folder (`[pipeline] diffusers = ...`): text encoder, tokenizer and
    # SD's discrete scheduler join the chain; None for a UNet + decoder pair
    text_encoder: Recipe | None = None
    diffusers: Path | None = None
    sd: SDPipelineSpec | None = None
    layouts: tuple[str, ...] = ()  # consumer layouts beside mobilegen's (mobilegen/layouts)
    chunk_unet: bool | None = None  # apple-coreml's UNet split (None: by size)

    def slots(self) -> tuple[str, ...]:
        """The component slots in chain order (also the folders under OUT)."""
        return ("text_encoder", "unet", "decoder") if self.text_encoder else ("unet", "decoder")


def load_pipeline_recipe(path: str | Path) -> PipelineRecipe:
    path = Path(path)
    data = read_toml(path)
    if isinstance(data.get("pipeline"), dict) and "diffusers" in data["pipeline"]:
        return _load_sd_pipeline(path, data)
    try:
        spec = PipelineFile.model_validate(data)
    except ValidationError as e:
        raise RecipeError(format_error(path, e)) from None
    parts: dict[str, Recipe] = {}
    for slot, family in PIPELINE_SLOTS.items():
        rel = Path(getattr(spec.pipeline, slot)).expanduser()
        comp = rel if rel.is_absolute() else (path.resolve().parent / rel)
        if not comp.is_file():
            raise RecipeError(f"{path}: key 'pipeline.{slot}': component recipe not found: {comp}")
        raw = read_toml(comp)
        if "pipeline" in raw:
            raise RecipeError(f"{path}: key 'pipeline.{slot}': {comp.name} is itself a pipeline "
                              "recipe (expected a single-component recipe)")
        parts[slot] = load_recipe(comp)
        found = parts[slot].model.family
        if found != family:
            raise RecipeError(f"{path}: key 'pipeline.{slot}': expected a '{family}' recipe, "
                              f"{comp.name} has model.family '{found}'")
    unet_cfg, dec_cfg = _static_config(parts["unet"]), _static_config(parts["decoder"])
    if unet_cfg is not None and dec_cfg is not None:  # checkpoint configs: checked at export
        check_chain(path, parts["unet"], unet_cfg, parts["decoder"], dec_cfg)
    return PipelineRecipe(name=spec.name, description=spec.description, path=path.resolve(),
                          unet=parts["unet"], decoder=parts["decoder"], gates=spec.gates)


def _static_config(recipe: Recipe) -> Any | None:
    """The component's architecture when the recipe alone fixes it (random init, or an explicit
    [model.config]); None when only the checkpoint knows."""
    from mobilegen.errors import ConfigError
    from mobilegen.models import get_family

    family, spec = get_family(recipe.model.family), recipe.model
    try:
        if spec.config is not None:
            return family.config_from_dict(dict(spec.config))
        if spec.init == "random":
            return family.variants().get(spec.variant)
    except (ConfigError, TypeError, ValueError) as e:
        raise RecipeError(f"{recipe.path}: key 'model.config': {e}") from None
    return None


def check_chain(path: Path, unet: Recipe, unet_cfg: Any, decoder: Recipe, dec_cfg: Any) -> None:
    """The denoiser's output latents must be what the decoder reads: same channels, same size.
    (A STOIC denoiser predicts in its input's channels.)"""
    out_channels = getattr(unet_cfg, "out_channels", None) or unet_cfg.in_channels
    if out_channels != dec_cfg.latent_channels:
        raise RecipeError(
            f"{path}: key 'pipeline': latent channels differ: the denoiser gives "
            f"{out_channels}, decoder latent_channels is {dec_cfg.latent_channels}")
    u_size = unet.image_size or unet_cfg.image_size
    d_size = decoder.image_size or dec_cfg.image_size
    if u_size != d_size:
        raise RecipeError(
            f"{path}: key 'pipeline': latent size differs: UNet samples {u_size}x{u_size}, "
            f"decoder reads {d_size}x{d_size}")


# ----------------------------------------------- pipeline recipes from a diffusers pipeline folder
# `[pipeline] diffusers = "DIR"` (model_index.json): text encoder, UNet and VAE decoder become
# component recipes of their own (targets / passes / gates per `[pipeline.<slot>]` table), the
# tokenizer ships beside them and SD's discrete scheduler (scheduler/scheduler_config.json, the
# sampler kind from `[sampler]`) drives the chain from a prompt.
SD_SLOT_FOLDERS = {"text_encoder": ("clip-text", "text_encoder"), "unet": ("unet", "unet"),
                   "decoder": ("vae-decoder", "vae")}


class SDPipelineSlots(Strict):
    diffusers: str  # the pipeline folder, relative to the recipe
    targets: list[str] = Field(default_factory=lambda: ["ort-mobile-cpu"],  # every component's
                               min_length=1)
    prompt: str = "a photo of a cat"  # what the export's end-to-end check draws
    negative_prompt: str = ""  # the null branch of guidance, through the same text encoder
    # what static int8 / W8A16 components calibrate on: the chain run on these prompts, every
    # component's own calls recorded (export/chain_calibration.py); empty: the prompt above
    calibration_prompts: list[str] = Field(default_factory=list, max_length=256)
    # mobilegen checkpoints (relative to the recipe) that replace a folder component: a STOIC
    # with context conditioning reading the text encoder's states in place of unet/, a pruned
    # (and distilled) decoder in place of vae/'s decoder
    denoiser_checkpoint: str | None = None
    decoder_checkpoint: str | None = None
    # the consumer folder shapes written beside mobilegen's own (mobilegen/layouts): a name or
    # a list, e.g. "diffusers-onnx" or ["diffusers-onnx", "litert-sd"]
    layout: str | list[str] = "mobilegen"
    # apple-coreml: split the UNet into UnetChunk1 + UnetChunk2 as Apple's --chunk-unet does;
    # unset: only when its fp16 weights pass 1 GiB (mobilegen/layouts/apple_coreml.py)
    chunk_unet: bool | None = None
    # per-component recipe keys (targets, passes, image_size, validate, latency, report, gates)
    text_encoder: dict[str, Any] = Field(default_factory=dict)
    unet: dict[str, Any] = Field(default_factory=dict)
    decoder: dict[str, Any] = Field(default_factory=dict)


class SDPipelineFile(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    pipeline: SDPipelineSlots
    sampler: SDSamplerSpec = SDSamplerSpec()
    gates: PipelineGates = PipelineGates()


def _load_sd_pipeline(path: Path, data: dict[str, Any]) -> PipelineRecipe:
    from mobilegen.checkpoints.pipeline_folder import read_model_index
    from mobilegen.errors import CheckpointError

    try:
        spec = SDPipelineFile.model_validate(data)
    except ValidationError as e:
        raise RecipeError(format_error(path, e)) from None
    rel = Path(spec.pipeline.diffusers).expanduser()
    root = rel if rel.is_absolute() else (path.resolve().parent / rel).resolve()
    if root.name == "model_index.json" and root.is_file():  # the folder's index named instead
        root = root.parent
    swaps = {slot: _swap_checkpoint(path, key, getattr(spec.pipeline, key), family)
             for slot, key, family in (("unet", "denoiser_checkpoint", "stoic"),
                                       ("decoder", "decoder_checkpoint", "vae-decoder"))
             if getattr(spec.pipeline, key) is not None}
    try:
        read_model_index(root)  # every file and folder it names resolves inside root
        size = _sd_check_configs(root, swaps.get("unet"))
    except CheckpointError as e:
        raise RecipeError(f"{path}: key 'pipeline.diffusers': {e}") from None
    from mobilegen import layouts

    chosen = layouts.parse(spec.pipeline.layout, str(path))
    for name in chosen:
        try:
            why = layouts.check(name, root, swaps)
        except CheckpointError as e:
            why = str(e)
        if why:
            raise RecipeError(f"{path}: key 'pipeline.layout': {why}")
    from mobilegen.checkpoints.pipeline_folder import scheduler_config
    from mobilegen.errors import ConfigError
    from mobilegen.sampling.discrete import make_plan, schedule_from_config

    try:  # the sampler kind reads the pipeline's scheduler config: refused keys fail here
        schedule = schedule_from_config(scheduler_config(root), spec.sampler.kind,
                                        spec.sampler.karras_sigmas,
                                        str(root / "scheduler" / "scheduler_config.json"))
    except (ConfigError, CheckpointError) as e:
        raise RecipeError(f"{path}: key 'sampler': {e}") from None
    try:  # the step count must give a plan that works on this schedule (no repeated step)
        make_plan(schedule, spec.sampler.steps)
    except ConfigError as e:
        raise RecipeError(f"{path}: key 'sampler.steps': {e}") from None
    parts: dict[str, Recipe] = {}
    for slot, (family, folder) in SD_SLOT_FOLDERS.items():
        own = dict(getattr(spec.pipeline, slot))
        for key in ("name", "model", "sampler"):
            if key in own:
                raise RecipeError(f"{path}: unknown key 'pipeline.{slot}.{key}' (the folder "
                                  "fixes the model; [sampler] is the pipeline's)")
        model = ({"family": swaps[slot][0], "checkpoint": str(swaps[slot][1])} if slot in swaps
                 else {"family": family, "checkpoint": str(root / folder)})
        comp: dict[str, Any] = {
            "name": f"{spec.name}-{slot.replace('_', '-')}", "targets": spec.pipeline.targets,
            "model": model,
            **({"image_size": size} if slot != "text_encoder"
               else {"validate": {"timesteps": [1.0, 2.0, 3.0]}}),  # three prompts
            **own}
        if slot == "unet":  # the chain samples with the real scheduler and text encoder
            comp["validate"] = {"end_to_end": False, **comp.get("validate", {})}
        try:
            parts[slot] = load_recipe(path, comp)
        except RecipeError as e:
            raise RecipeError(str(e).replace(f"{path}: ", f"{path}: [pipeline.{slot}] ", 1)) \
                from None
    sd = SDPipelineSpec(prompt=spec.pipeline.prompt,
                        negative_prompt=spec.pipeline.negative_prompt,
                        calibration_prompts=spec.pipeline.calibration_prompts,
                        sampler=spec.sampler)
    return PipelineRecipe(name=spec.name, description=spec.description, path=path.resolve(),
                          unet=parts["unet"], decoder=parts["decoder"], gates=spec.gates,
                          text_encoder=parts["text_encoder"], diffusers=root, sd=sd,
                          layouts=chosen, chunk_unet=spec.pipeline.chunk_unet)


def _swap_checkpoint(path: Path, key: str, value: str, family: str) -> tuple[str, Path, Any]:
    """`pipeline.<key>`: a mobilegen checkpoint of `family` -> (family, file, config); its
    header is read, no tensor."""
    from mobilegen.checkpoints.loader import read_header
    from mobilegen.errors import CheckpointError, ConfigError

    rel = Path(value).expanduser()
    file = rel if rel.is_absolute() else (path.resolve().parent / rel)
    try:
        found, cfg = read_header(file)
        if found != family or cfg is None:
            raise CheckpointError(f"{file}: expected a mobilegen '{family}' checkpoint, found "
                                  f"family {found!r}")
    except (CheckpointError, ConfigError) as e:
        raise RecipeError(f"{path}: key 'pipeline.{key}': {e}") from None
    if family == "stoic" and cfg.conditioning != "context":
        raise RecipeError(f"{path}: key 'pipeline.{key}': the STOIC must read text states "
                          f"(conditioning 'context'), found '{cfg.conditioning}'")
    return family, file.resolve(), cfg


def _sd_check_configs(root: Path, denoiser: tuple[str, Path, Any] | None = None) -> int:
    """The text encoder's states must be what the denoiser cross-attends to (width and token
    count); the scheduler config must be readable. Returns the denoiser's latent size. Reads
    configs only. `denoiser`: a STOIC replacing unet/ (family, file, config)."""
    from mobilegen.checkpoints.diffusers import check_vae_config, unet_config_from_diffusers
    from mobilegen.checkpoints.pipeline_folder import read_json, text_encoder_config, tokenizer_spec
    from mobilegen.errors import CheckpointError

    te_path, unet_path = root / "text_encoder" / "config.json", root / "unet" / "config.json"
    te = text_encoder_config(read_json(te_path, root), str(te_path))
    vae_path = root / "vae" / "config.json"
    check_vae_config(read_json(vae_path, root), str(vae_path))
    # the tokenizer is read, checked and built now: not after every component is exported
    tokenizer_spec(root / "tokenizer", te.max_position_embeddings, te.vocab_size, root)
    if denoiser is not None:
        cfg, what = denoiser[2], f"the STOIC {denoiser[1].name}"
        width, tokens, size = cfg.context_dim, cfg.context_len, cfg.image_size
    else:
        cfg = unet_config_from_diffusers(read_json(unet_path, root), str(unet_path))
        what = "the UNet"
        width, tokens, size = cfg.cross_attention_dim, cfg.context_len, cfg.image_size
    if width != te.hidden_size:
        raise CheckpointError(f"{what} cross-attends to width {width}, the text encoder gives "
                              f"{te.hidden_size}")
    if tokens != te.max_position_embeddings:
        raise CheckpointError(f"{what} reads {tokens} tokens, the text encoder gives "
                              f"{te.max_position_embeddings}")
    return int(size)


def load_any_recipe(path: str | Path) -> Recipe | PipelineRecipe:
    """A pipeline recipe when the file has a [pipeline] table, else a single-component recipe."""
    path = resolve_recipe(path)
    if "pipeline" in read_toml(path):
        return load_pipeline_recipe(path)
    return load_recipe(path)
