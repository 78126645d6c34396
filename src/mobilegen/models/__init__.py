"""Model families: name -> (config class, module class). Recipes and checkpoints name a family."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from mobilegen.errors import ConfigError


@dataclass(frozen=True)
class Family:
    name: str
    module: str  # import path, loaded lazily so `mobilegen --help` stays fast
    config_class: str
    model_class: str

    def config_type(self) -> Any:
        return getattr(importlib.import_module(self.module), self.config_class)

    def model_type(self) -> Any:
        return getattr(importlib.import_module(self.module), self.model_class)

    def build(self, config: Any) -> Any:
        return self.model_type()(config)

    def config_from_dict(self, d: dict[str, Any]) -> Any:
        return self.config_type().from_dict(d)

    def io_spec(self, config: Any, image_size: int | None = None) -> Any:
        return importlib.import_module(self.module).io_spec(config, image_size)

    def component_entry(self, config: Any, recipe: Any, image_size: int) -> dict[str, Any]:
        """The family's part of the manifest's component entry (see export/manifest.py)."""
        return importlib.import_module(self.module).component_entry(config, recipe, image_size)

    def variants(self) -> dict[str, Any]:
        return getattr(importlib.import_module(self.module), "VARIANTS", {})


FAMILIES: dict[str, Family] = {
    "stoic": Family("stoic", "mobilegen.models.stoic", "StoicConfig", "Stoic"),
    # SD-family UNet with per-stage block counts (SD-1.5, SnapFusion) and SD's VAE decoder;
    # the names match what diffusers_format maps UNet2DConditionModel / AutoencoderKL to.
    "unet": Family("unet", "mobilegen.models.unet", "UNetConfig", "EfficientUNet"),
    "vae-decoder": Family("vae-decoder", "mobilegen.models.vae_decoder", "VAEDecoderConfig",
                          "VAEDecoder"),
    # the encoder half of AutoencoderKL: image -> latent distribution (img2img, diffusers' ONNX
    # folder's vae_encoder)
    "vae-encoder": Family("vae-encoder", "mobilegen.models.vae_encoder", "VAEEncoderConfig",
                          "VAEEncoder"),
    # CLIP's text encoder (transformers' CLIPTextModel names): token ids -> last hidden state
    "clip-text": Family("clip-text", "mobilegen.models.clip_text", "CLIPTextConfig",
                        "CLIPTextEncoder"),
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family '{name}' (known: {', '.join(FAMILIES)})")
    return FAMILIES[name]
