"""Where a result came from: library versions and the host, as recorded in manifests and reports."""

from __future__ import annotations

import os
import platform
from typing import Any

from mobilegen import __version__

VERSIONED = ("torch", "onnx", "onnxscript", "onnxruntime", "numpy", "safetensors")


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"mobilegen": __version__, "python": platform.python_version()}
    for pkg in VERSIONED:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def host_info() -> dict[str, Any]:
    return {"machine": platform.machine(), "processor": platform.processor() or "unknown",
            "cpus": os.cpu_count(), "system": platform.system(),
            "python": platform.python_version()}
