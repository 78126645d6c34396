"""The optional-dependency extras that pyproject.toml declares (for the registry test)."""

from __future__ import annotations

import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def read() -> set[str]:
    return set(tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"])
