"""Strict TOML-backed schemas: a frozen pydantic base that forbids unknown keys, and errors that
name the file and the key (`FILE: unknown key 'latency.colour'`)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from mobilegen.errors import RecipeError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def format_error(path: Path, err: ValidationError) -> str:
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"]) or "(top level)"
    if e["type"] == "extra_forbidden":
        return f"{path}: unknown key '{key}'"
    if e["type"] == "missing":
        return f"{path}: missing key '{key}'"
    if not e["loc"] and e["type"] == "value_error":  # a whole-model check; its message names keys
        return f"{path}: {e['msg'].removeprefix('Value error, ')}"
    found = e.get("input")
    text = repr(found)
    text = text if len(text) <= 80 else text[:77] + "..."
    shown = "" if isinstance(found, dict) else f" (found {text})"
    return f"{path}: key '{key}': {e['msg']}{shown}"


def read_toml(path: Path) -> dict[str, Any]:
    if path.is_dir() and (path / "model_index.json").is_file():  # said as what to write
        raise RecipeError(f"{path}: a diffusers pipeline folder, not a recipe: write a .toml "
                          f"holding name = \"...\" and a [pipeline] table with diffusers = "
                          f"\"{path}\" (targets and [sampler] optional; README: \"Prompt to "
                          "image\") and export that")
    if path.is_dir():
        raise RecipeError(f"{path}: a folder, not a recipe file (.toml)")
    if not path.is_file():
        raise RecipeError(f"{path}: file not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: not valid TOML ({e})") from e
    except RecursionError:  # tomllib recurses per nesting level: a 5000-deep array
        raise RecipeError(f"{path}: not valid TOML (arrays or tables nested too deeply)") from None
    except OSError as e:  # unreadable (permissions), or a folder named like a recipe
        raise RecipeError(f"{path}: cannot read ({e.strerror})") from None
