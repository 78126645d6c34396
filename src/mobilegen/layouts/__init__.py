"""Output layouts: a text-to-image export written, beside mobilegen's own manifest, in the folder
shape and with the I/O contract that an existing consumer loads as it is.

- `mobilegen` (OUT): `mobilegen sample`, the manifest; always written.
- `diffusers-onnx` (OUT itself): diffusers' OnnxStableDiffusionPipeline, optimum's ORT pipeline.
- `litert-sd` (OUT/litert-sd): litert-torch's stable_diffusion example pipeline.
- `apple-coreml` (OUT/apple-coreml): Apple ml-stable-diffusion's Swift pipeline resources.

A pipeline recipe chooses (`[pipeline] layout = "diffusers-onnx"`, or a list): a layout is a
contract of the whole pipeline folder (diffusers' model_index.json spans every component), not
of one component's target profile. `check` runs at recipe load on the folder's configs, so a
pipeline a consumer cannot take (litert-sd's fixed 320-wide time embedding) is refused before any
export work; `write` runs after the component exports and the chain check.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT = "mobilegen"
# name -> module under mobilegen.layouts (imported when used: each pulls its SDK)
LAYOUTS: dict[str, str] = {"diffusers-onnx": "diffusers_onnx", "litert-sd": "litert_sd",
                           "apple-coreml": "apple_coreml"}
KNOWN = (DEFAULT, *LAYOUTS)


@dataclass(frozen=True)
class LayoutCheck:
    """One check of a layout's artifact against its contract or against PyTorch."""

    artifact: str  # path relative to OUT
    check: str  # what was compared ("ort vs pytorch", "spec vs Apple's Swift contract", ...)
    passed: bool
    max_abs_error: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class LayoutResult:
    layout: str
    dir: str  # relative to OUT ("." for OUT itself)
    consumer: str
    load: str  # the line a user types to load it
    files: tuple[dict[str, Any], ...]  # manifest file entries (path relative to OUT)
    checks: tuple[LayoutCheck, ...]
    notes: tuple[str, ...] = ()
    contract: dict[str, Any] = field(default_factory=dict)  # names, shapes, dtypes per model

    @property
    def failures(self) -> list[str]:
        return [f"layout:{self.layout}/{c.artifact}: {c.check}: {c.detail}"
                for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["files"] = list(self.files)
        d["checks"] = [asdict(c) for c in self.checks]
        d["notes"] = list(self.notes)
        return d


def parse(value: str | list[str] | None, where: str) -> tuple[str, ...]:
    """`layout` as a recipe gives it -> the extra layouts in order (mobilegen's is implied)."""
    from mobilegen.errors import RecipeError

    names = [value] if isinstance(value, str) else list(value or [])
    for name in names:
        if name not in KNOWN:
            raise RecipeError(f"{where}: key 'pipeline.layout': unknown layout {name!r} "
                              f"(known: {', '.join(KNOWN)})")
    if len(set(names)) != len(names):
        raise RecipeError(f"{where}: key 'pipeline.layout': a layout is named twice: {names}")
    return tuple(n for n in names if n != DEFAULT)


def module(name: str) -> Any:
    return importlib.import_module(f"mobilegen.layouts.{LAYOUTS[name]}")


def check(name: str, root: Path, swapped: dict[str, Any] | None = None) -> str | None:
    """Why the diffusers pipeline folder `root` (with the recipe's checkpoint swaps: slot ->
    (family, file, config)) cannot take layout `name` (None: it can)."""
    return module(name).check(root, swapped or {})


def write(name: str, ctx: Any) -> LayoutResult:
    return module(name).write(ctx)
