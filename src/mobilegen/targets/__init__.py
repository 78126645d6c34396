"""Export targets: the registry of runtimes. A profile (export_targets/*.toml, package data in
mobilegen/data/targets) names a runtime; each runtime is one module implementing the `Target`
protocol (targets/base.py). Adding a runtime: one module here, one entry below, one profile file.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from mobilegen.errors import TargetUnavailableError
from mobilegen.targets.base import Runner, Target

if TYPE_CHECKING:
    from mobilegen.targets.profile import TargetProfile


@dataclass(frozen=True)
class RuntimeEntry:
    module: str  # implements targets.base.Target
    needs: str  # the import that must work
    extra: str  # the pip extra that provides it
    profile_keys: tuple[str, ...]  # profile keys that only mean something for this runtime
    produces: str = ""  # what `mobilegen targets` says an export writes


RUNTIMES: dict[str, RuntimeEntry] = {
    "onnxruntime": RuntimeEntry("mobilegen.targets.onnx", "onnxruntime", "onnx",
                                ("opset", "ort_format", "ort_optimization_style",
                                 "execution_provider", "fixed_shapes"),
                                ".onnx (+ .ort and its required-operators config)"),
    "litert": RuntimeEntry("mobilegen.targets.tflite", "litert_torch", "tflite", ("delegate",),
                           ".tflite (fixed validation batch)"),
    "coreml": RuntimeEntry("mobilegen.targets.coreml", "coremltools", "coreml",
                           ("deployment_target", "compute_units"),
                           ".mlpackage (ML program; dynamic batch)"),
    "qnn": RuntimeEntry("mobilegen.targets.qnn", "onnxruntime_qnn", "qnn",
                        ("htp_arch", "allow_cpu_fallback", "fixed_batch", "simulate",
                         "calibration_feeds"),
                        "QNN context binary _ctx.onnx + _ctx_qnn.bin for htp_arch (+ the QDQ "
                        ".onnx it was compiled from; fixed batch)"),
    "executorch": RuntimeEntry("mobilegen.targets.executorch", "executorch", "executorch",
                               ("partitioner", "qnn_soc"),
                               ".pte for the profile's ExecuTorch partitioner (XNNPACK, Core ML, "
                               "QNN, Vulkan; fixed validation batch)"),
}


def runtime_module(runtime: str) -> Target:
    entry = RUNTIMES[runtime]
    try:
        importlib.import_module(entry.needs)
    except ImportError as e:
        raise TargetUnavailableError(
            f"runtime '{runtime}' needs the '{entry.needs}' package: "
            f"pip install 'mobilegen[{entry.extra}]'"
        ) from e
    return cast(Target, importlib.import_module(entry.module))


def load_for_profile(path: Path, profile: TargetProfile) -> Runner:
    """The host runner of an artifact made for `profile`: a LiteRT GPU profile's runs on
    LiteRT's GPU accelerator (targets/litert_gpu.py; XNNPACK, saying why, without a Vulkan
    driver), every other through its runtime's `load`."""
    target = runtime_module(profile.runtime)
    if profile.runtime == "litert" and (profile.delegate == "gpu" or profile.accelerator == "gpu"):
        return target.load(path, profile.threads, accelerator="gpu")  # type: ignore[call-arg]
    return target.load(path, profile.threads)
