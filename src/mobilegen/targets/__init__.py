"""Export targets. A profile (export_targets/*.toml) names a runtime; each runtime is one module
with `export(...) -> list[Artifact]` and `load(path, profile) -> Runner`. SDK imports stay inside
those functions so a missing SDK fails only the target that needs it, with a clear message."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from mobilegen.errors import TargetUnavailableError

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]

RUNTIMES: dict[str, tuple[str, str, str]] = {
    # runtime -> (module, the import it needs, the pip extra that provides it)
    "onnxruntime": ("mobilegen.targets.onnx", "onnxruntime", "onnx"),
    "litert": ("mobilegen.targets.tflite", "litert_torch", "tflite"),
    "coreml": ("mobilegen.targets.coreml", "coremltools", "coreml"),
}


@dataclass
class Artifact:
    file: str  # path relative to the output folder
    format: str  # "onnx", "ort", ...
    target: str  # profile name
    runtime: str
    precision: str
    companions: list[str] = field(default_factory=list)  # files that must ship beside `file`
    runnable: bool = True  # False where the host cannot run it (the reason goes in details)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def base_is_already(stem: str, tag: str, profile: Any, base_file: str, what: str) -> Artifact:
    """The row for a precision pass the profile's base artifact already has (fp16 on an fp16
    profile): no second copy, and the pipeline's convention for rows without a file."""
    return Artifact(f"{stem}.{tag}", "none", profile.name, profile.runtime, tag, runnable=False,
                    details={"skipped": f"the base {base_file} already {what} (profile "
                                        "precision); no second copy"})


def runtime_module(runtime: str) -> ModuleType:
    module, needs, extra = RUNTIMES[runtime]
    try:
        importlib.import_module(needs)
    except ImportError as e:
        raise TargetUnavailableError(
            f"runtime '{runtime}' needs the '{needs}' package: pip install 'mobilegen[{extra}]'"
        ) from e
    return importlib.import_module(module)
