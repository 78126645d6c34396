"""Recipes (what to export) and target profiles (where to), validated on load.

Both are TOML files parsed into frozen pydantic models that forbid unknown keys, so a typo is an
error naming the file and the key, found before any work starts.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mobilegen.errors import RecipeError

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPES_DIR = REPO_ROOT / "recipes"
TARGETS_DIR = REPO_ROOT / "export_targets"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ModelSpec(_Strict):
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


class SamplerSpec(_Strict):
    kind: Literal["dpm++2m", "ddim", "euler-maruyama"] = "dpm++2m"
    steps: int = Field(20, ge=1, le=1000)
    guidance_scale: float = Field(1.0, ge=0.0)
    time_spacing: Literal["uniform", "logsnr"] = "logsnr"
    seed: int = 0
    num_images: int = Field(8, ge=1, le=256)
    labels: list[int] | None = None  # class labels to sample (cycled); default 0..num_classes-1


class ValidateSpec(_Strict):
    timesteps: list[float] = [999.0, 750.0, 500.0, 250.0, 50.0, 1.0]  # model-time inputs
    batch: int = Field(2, ge=1)
    end_to_end: bool = True


class LatencySpec(_Strict):
    warmup: int = Field(3, ge=0)
    runs: int = Field(20, ge=1)
    batch: int = Field(1, ge=1)


class ReportSpec(_Strict):
    """Optional report sections. Both cost export time, so recipes opt in."""

    # Export and time each distinct block alone, plus onnxruntime's operator profile of the whole
    # model (seconds for STOIC, minutes for an SD-size UNet with many distinct blocks).
    blocks: bool = False
    # Device latency ESTIMATES for target profiles with a calibrated device (estimate.py); about
    # ten seconds to calibrate, and always printed apart from measured figures.
    estimates: bool = False


class Gates(_Strict):
    """Quality and latency gates; a failed gate exits 3. Defaults keep parity honest."""

    min_psnr_db: float | None = 30.0  # end-to-end image PSNR vs PyTorch, same seed
    min_step_psnr_db: float | None = 40.0  # worst single-step output PSNR over timesteps
    min_cosine: float | None = 0.999  # worst single-step cosine similarity
    max_abs_error: float | None = None  # worst single-step max abs error
    max_latency_ms: float | None = None  # median host latency of each artifact


class PassSpec(_Strict):
    """One entry of `passes`: a bare name ("fp16") or a table ({name = "int8", mode = "static"}).

    `options` holds the table's other keys; load_recipe checks them against the pass's own typed
    Options (mobilegen.passes) and `config()` returns that typed object."""

    name: str
    options: dict[str, Any] = {}

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


class Recipe(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    model: ModelSpec
    targets: list[str] = ["ort-mobile-cpu"]
    passes: list[PassSpec] = []  # in order; bare names or tables with options
    image_size: int | None = None  # export/validation resolution; default: the model's own
    sampler: SamplerSpec = SamplerSpec()
    validation: ValidateSpec = Field(ValidateSpec(), alias="validate")  # TOML key: validate
    latency: LatencySpec = LatencySpec()
    report: ReportSpec = ReportSpec()
    gates: Gates = Gates()
    path: Path | None = Field(None, exclude=True)  # where it was loaded from

    def checkpoint_path(self) -> Path | None:
        if not self.model.checkpoint:
            return None
        p = Path(self.model.checkpoint).expanduser()
        base = self.path.parent if self.path else Path.cwd()
        return p if p.is_absolute() else (base / p).resolve()


# Keys that only mean something for one runtime; setting one for another runtime is an error.
RUNTIME_KEYS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("opset", "ort_format", "ort_optimization_style"),
    "litert": ("delegate",),
    "coreml": ("deployment_target", "compute_units"),
}


class DeviceSpec(_Strict):
    """The phone a profile stands for, as latency ESTIMATES need it (estimate.py): nominal figures
    from vendor specs, not measurements. Peak throughput and per-op overhead are not set here:
    they are fitted to published latencies of this device (estimate.PUBLISHED)."""

    name: str  # must match the device of published calibration points, e.g. "iphone-14-pro"
    bandwidth_gbs: float = Field(gt=0)  # DRAM bandwidth
    weight_bytes: float = Field(2, gt=0)  # bytes per weight at the precision it runs
    act_bytes: float = Field(2, gt=0)  # bytes per activation element


class TargetProfile(_Strict):
    name: str
    description: str = ""
    runtime: Literal["onnxruntime", "litert", "coreml"]
    # The base artifact's precision. ONNX: fp32 only (fp16/int8 come from precision passes);
    # LiteRT: fp16 stores float16 weights; Core ML: the ML program's compute precision.
    precision: Literal["fp32", "fp16"] = "fp32"
    layout: Literal["default", "ane"] = "default"  # ane: channels-first attention (rewrites/ane.py)
    threads: int = Field(2, ge=1)
    rewrites: list[str] = []  # module passes this device prefers (advice shown by `targets`)
    # onnxruntime
    opset: int = Field(18, ge=18)  # opset 17 breaks diffusers-style GEGLU (Split num_outputs)
    ort_format: bool = True  # also write the .ort flatbuffer for ORT mobile
    ort_optimization_style: Literal["Fixed", "Runtime"] = "Fixed"
    # litert: the delegate the app should use (the host always validates with XNNPACK on CPU)
    delegate: Literal["xnnpack", "gpu"] = "xnnpack"
    # coreml
    deployment_target: Literal["iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15"] = "iOS17"
    compute_units: Literal["ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY"] = "ALL"
    device: DeviceSpec | None = None  # for estimates; a profile without one gets none
    path: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _runtime_keys(self) -> TargetProfile:
        for runtime, keys in RUNTIME_KEYS.items():
            for key in keys:
                if runtime != self.runtime and key in self.model_fields_set:
                    raise ValueError(f"key '{key}' applies to runtime '{runtime}' only "
                                     f"(this profile's runtime is '{self.runtime}')")
        if self.runtime == "onnxruntime" and self.precision != "fp32":
            raise ValueError("key 'precision': onnxruntime profiles export fp32 (found "
                             f"'{self.precision}'); add the fp16 pass to the recipe instead")
        if self.layout == "ane" and self.runtime != "coreml":
            raise ValueError(f"key 'layout': 'ane' needs runtime 'coreml' (found '{self.runtime}')")
        from mobilegen.passes import PASSES

        module_passes = [n for n, e in PASSES.items() if e.kind == "module"]
        for r in self.rewrites:
            if r not in module_passes:
                raise ValueError(f"key 'rewrites': unknown rewrite '{r}' "
                                 f"(known: {', '.join(module_passes)})")
        return self


def _format_error(path: Path, err: ValidationError) -> str:
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"]) or "(top level)"
    if e["type"] == "extra_forbidden":
        return f"{path}: unknown key '{key}'"
    if e["type"] == "missing":
        return f"{path}: missing key '{key}'"
    if not e["loc"] and e["type"] == "value_error":  # a whole-model check; its message names keys
        return f"{path}: {e['msg'].removeprefix('Value error, ')}"
    found = e.get("input")
    shown = "" if isinstance(found, dict) else f" (found {found!r})"
    return f"{path}: key '{key}': {e['msg']}{shown}"


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError(f"{path}: file not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: not valid TOML ({e})") from e


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    data = _read_toml(path)
    if "pipeline" in data:  # bench, inspect --recipe and passes take one model
        raise RecipeError(f"{path}: a pipeline recipe ([pipeline]); this command takes a "
                          "single-model recipe (export and sample take pipelines)")
    try:
        recipe = Recipe.model_validate({**data, "path": path.resolve()})
    except ValidationError as e:
        raise RecipeError(_format_error(path, e)) from None
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
    from mobilegen.passes.apply import precision_plan

    try:
        precision_plan(recipe)
    except ValueError as e:
        raise RecipeError(f"{path}: key 'passes': {e}") from None
    return recipe


def list_target_names() -> list[str]:
    return sorted(p.stem for p in TARGETS_DIR.glob("*.toml"))


def load_target(name: str) -> TargetProfile:
    path = TARGETS_DIR / f"{name}.toml"
    try:
        return TargetProfile.model_validate({**_read_toml(path), "path": path})
    except ValidationError as e:
        raise RecipeError(_format_error(path, e)) from None


def list_recipes() -> list[Path]:
    return sorted(RECIPES_DIR.glob("*.toml"))


# ------------------------------------------------------------------ pipeline recipes (UNet + VAE)
# A pipeline recipe names two component recipes (relative to itself) and says nothing about how
# to export them: each component keeps its own targets, passes, gates and sampler. The UNet's
# [sampler] drives the chain.
PIPELINE_SLOTS: dict[str, str] = {"unet": "unet", "decoder": "vae-decoder"}  # slot -> family


class PipelineSlots(_Strict):
    unet: str
    decoder: str


class PipelineGates(_Strict):
    min_psnr_db: float | None = 30.0  # chain image PSNR, artifacts vs PyTorch, same seed


class PipelineFile(_Strict):
    """What a pipeline recipe's TOML may hold."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    pipeline: PipelineSlots
    gates: PipelineGates = PipelineGates()


class PipelineRecipe(BaseModel):
    """A validated pipeline recipe with its component recipes loaded."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    description: str
    path: Path
    unet: Recipe
    decoder: Recipe
    gates: PipelineGates


def load_pipeline_recipe(path: str | Path) -> PipelineRecipe:
    path = Path(path)
    try:
        spec = PipelineFile.model_validate(_read_toml(path))
    except ValidationError as e:
        raise RecipeError(_format_error(path, e)) from None
    parts: dict[str, Recipe] = {}
    for slot, family in PIPELINE_SLOTS.items():
        rel = Path(getattr(spec.pipeline, slot)).expanduser()
        comp = rel if rel.is_absolute() else (path.resolve().parent / rel)
        if not comp.is_file():
            raise RecipeError(f"{path}: key 'pipeline.{slot}': component recipe not found: {comp}")
        raw = _read_toml(comp)
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
    """The UNet's output latents must be what the decoder reads: same channels, same size."""
    if unet_cfg.out_channels != dec_cfg.latent_channels:
        raise RecipeError(
            f"{path}: key 'pipeline': latent channels differ: UNet out_channels is "
            f"{unet_cfg.out_channels}, decoder latent_channels is {dec_cfg.latent_channels}")
    u_size = unet.image_size or unet_cfg.image_size
    d_size = decoder.image_size or dec_cfg.image_size
    if u_size != d_size:
        raise RecipeError(
            f"{path}: key 'pipeline': latent size differs: UNet samples {u_size}x{u_size}, "
            f"decoder reads {d_size}x{d_size}")


def load_any_recipe(path: str | Path) -> Recipe | PipelineRecipe:
    """A pipeline recipe when the file has a [pipeline] table, else a single-component recipe."""
    path = Path(path)
    if "pipeline" in _read_toml(path):
        return load_pipeline_recipe(path)
    return load_recipe(path)
