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


class Gates(_Strict):
    """Quality and latency gates; a failed gate exits 3. Defaults keep parity honest."""

    min_psnr_db: float | None = 30.0  # end-to-end image PSNR vs PyTorch, same seed
    min_step_psnr_db: float | None = 40.0  # worst single-step output PSNR over timesteps
    min_cosine: float | None = 0.999  # worst single-step cosine similarity
    max_abs_error: float | None = None  # worst single-step max abs error
    max_latency_ms: float | None = None  # median host latency of each artifact


class Recipe(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    model: ModelSpec
    targets: list[str] = ["ort-mobile-cpu"]
    passes: list[str] = []
    image_size: int | None = None  # export/validation resolution; default: the model's own
    sampler: SamplerSpec = SamplerSpec()
    validation: ValidateSpec = Field(ValidateSpec(), alias="validate")  # TOML key: validate
    latency: LatencySpec = LatencySpec()
    gates: Gates = Gates()
    path: Path | None = Field(None, exclude=True)  # where it was loaded from

    def checkpoint_path(self) -> Path | None:
        if not self.model.checkpoint:
            return None
        p = Path(self.model.checkpoint).expanduser()
        base = self.path.parent if self.path else Path.cwd()
        return p if p.is_absolute() else (base / p).resolve()


class TargetProfile(_Strict):
    name: str
    description: str = ""
    runtime: Literal["onnxruntime"]
    precision: Literal["fp32"] = "fp32"
    threads: int = Field(2, ge=1)
    opset: int = Field(18, ge=18)  # opset 17 breaks diffusers-style GEGLU (Split num_outputs)
    ort_format: bool = True  # also write the .ort flatbuffer for ORT mobile
    ort_optimization_style: Literal["Fixed", "Runtime"] = "Fixed"
    path: Path | None = Field(None, exclude=True)


def _format_error(path: Path, err: ValidationError) -> str:
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"]) or "(top level)"
    if e["type"] == "extra_forbidden":
        return f"{path}: unknown key '{key}'"
    if e["type"] == "missing":
        return f"{path}: missing key '{key}'"
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
    try:
        recipe = Recipe.model_validate({**_read_toml(path), "path": path.resolve()})
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

    for p in recipe.passes:
        if p not in PASSES:
            raise RecipeError(
                f"{path}: key 'passes': unknown pass '{p}' (known: {', '.join(PASSES) or 'none'})"
            )
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
