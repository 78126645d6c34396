"""Target profiles (export_targets/*.toml, shipped as package data in mobilegen/data/targets):
where an export goes. One file per device/runtime target; validated on load like recipes."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Literal

from pydantic import Field, StrictBool, ValidationError, model_validator

from mobilegen.errors import RecipeError
from mobilegen.toml_schema import Strict, format_error, read_toml

PROFILES_DIR = Path(str(files("mobilegen") / "data" / "targets"))
# simulate = "auto" (qnn): simulate models up to this many fp32 weight bytes (the digits STOIC is
# 4.4 MB: seconds per call; STOIC S2 N12 L512, 152 MB, takes ~25 s per simulated call, an SD
# UNet far more). Above it the export is compile-only and the artifact says why (qnn.py).
SIMULATE_AUTO_MAX_PARAM_BYTES = 64 * 1024**2




class DeviceSpec(Strict):
    """The phone a profile stands for, as latency ESTIMATES need it (estimate.py): nominal figures
    from vendor specs, not measurements. Peak throughput and per-op overhead are not set here:
    they are fitted to published latencies of this device (estimate.PUBLISHED)."""

    name: str  # must match the device of published calibration points, e.g. "iphone-14-pro"
    bandwidth_gbs: float = Field(gt=0)  # DRAM bandwidth
    weight_bytes: float = Field(2, gt=0)  # bytes per weight at the precision it runs
    act_bytes: float = Field(2, gt=0)  # bytes per activation element


class TargetProfile(Strict):
    name: str
    description: str = ""
    runtime: str  # a key of targets.RUNTIMES
    # The base artifact's precision. ONNX: fp32 only (fp16/int8 come from precision passes);
    # LiteRT: fp16 stores float16 weights; Core ML: the ML program's compute precision;
    # qnn: what HTP computes (w8a16: uint8 weights, uint16 activations; w8a8; fp16).
    precision: Literal["fp32", "fp16", "w8a16", "w8a8"] = "fp32"
    layout: Literal["default", "ane"] = "default"  # ane: channels-first attention (targets/ane.py)
    threads: int = Field(2, ge=1)
    # module passes this device prefers (advice shown by `targets`)
    rewrites: list[str] = Field(default_factory=list)
    # where the app runs it (targets/coverage.py checks it with the vendor's tool)
    accelerator: Literal["cpu", "gpu", "npu", "ane"] = "cpu"
    # exit 3 when the vendor tool says the accelerator does not take the whole graph (default:
    # on for every accelerator profile); a tool that cannot tell on this host is reported only
    require_full_delegation: bool | None = None
    # accelerator forms applied while capturing (targets/accel_rewrites.py), chosen per device
    accel_rewrites: list[Literal["time_sin_only", "label_one_hot", "gelu_tanh",
                                 "layer_norm_decomposed", "group_norm_decomposed"]] = Field(
        default_factory=list)
    # onnxruntime
    opset: int = Field(18, ge=18)  # opset 17 breaks diffusers-style GEGLU (Split num_outputs)
    ort_format: bool = True  # also write the .ort flatbuffer for ORT mobile
    ort_optimization_style: Literal["Fixed", "Runtime"] = "Fixed"
    # the ORT execution provider the app registers (its coverage entry gates the profile)
    execution_provider: Literal["cpu", "nnapi", "coreml-mlprogram",
                                "coreml-neuralnetwork"] = "cpu"
    fixed_shapes: bool = False  # capture at the validation batch: no Shape ops, no dynamic axis
    # litert: the delegate the app should use (the host always validates with XNNPACK on CPU)
    delegate: Literal["xnnpack", "gpu"] = "xnnpack"
    # coreml
    deployment_target: Literal["iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15"] = "iOS17"
    compute_units: Literal["ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY"] = "ALL"
    # qnn (Qualcomm HTP through onnxruntime-qnn, targets/qnn.py)
    htp_arch: Literal["68", "69", "73", "75", "79"] | None = None  # Hexagon generation (required)
    allow_cpu_fallback: StrictBool = False  # false: a node HTP does not take fails the export
    # default: the batch the sampler calls with; 64 as a recipe's validate.batch (a batch of
    # 10^9 compiled a graph until the machine ran out of memory)
    fixed_batch: int | None = Field(None, ge=1, le=64)
    simulate: Literal["auto", "always", "never"] = "auto"  # auto: small models only (qnn.py)
    calibration_feeds: int = Field(0, ge=0)  # trajectory feeds for the profile's quantization
    # executorch (targets/executorch.py): the delegate the .pte is partitioned for, and for
    # "qnn" the Snapdragon the HTP graph is compiled for (SM8650: 8 Gen 3, Hexagon v75)
    partitioner: Literal["xnnpack", "coreml", "qnn", "vulkan"] = "xnnpack"
    qnn_soc: Literal["SM8550", "SM8650", "SM8750"] | None = None
    device: DeviceSpec | None = None  # for estimates; a profile without one gets none
    path: Path | None = Field(None, exclude=True)

    def simulates(self, param_bytes: int) -> bool:
        """Whether a qnn profile runs a model of `param_bytes` fp32 weight bytes in the HTP
        simulator (`simulate`; "auto": up to SIMULATE_AUTO_MAX_PARAM_BYTES)."""
        if self.simulate != "auto":
            return self.simulate == "always"
        return param_bytes <= SIMULATE_AUTO_MAX_PARAM_BYTES

    def feeds_needed(self, param_bytes: int) -> int:
        """Calibration feeds this profile reads for a model of `param_bytes`: a qnn fp16 graph
        is not calibrated, so its feeds serve the simulator's parity check only, and a
        compile-only export (too big to simulate) reads none. Each feed is a PyTorch sampling
        step before any target starts (minutes at SD size): none is computed unread."""
        if self.runtime == "qnn" and self.precision == "fp16" and not self.simulates(param_bytes):
            return 0
        return self.calibration_feeds

    @property
    def full_delegation_required(self) -> bool:
        if self.require_full_delegation is not None:
            return self.require_full_delegation
        return self.accelerator != "cpu"

    @property
    def coverage_accelerator(self) -> str | None:
        """The coverage entry (targets/coverage.py) that says whether this profile's
        accelerator takes the graph; None for a CPU profile."""
        if self.accelerator == "cpu":
            return None
        if self.runtime == "onnxruntime":
            return None if self.execution_provider == "cpu" else self.execution_provider
        if self.runtime == "litert":
            return "litert-gpu" if self.delegate == "gpu" else None
        if self.runtime == "coreml":
            return "coreml-gpu" if self.compute_units == "CPU_AND_GPU" else "coreml-ane"
        if self.runtime == "qnn":
            return "qnn-htp"
        if self.runtime == "executorch":
            from mobilegen.targets.executorch_lower import ACCELERATOR

            return ACCELERATOR[self.partitioner]
        return None

    @model_validator(mode="after")
    def _runtime_keys(self) -> TargetProfile:
        from mobilegen.targets import RUNTIMES

        if self.runtime not in RUNTIMES:
            raise ValueError(f"key 'runtime': unknown runtime '{self.runtime}' "
                             f"(known: {', '.join(RUNTIMES)})")
        for runtime, entry in RUNTIMES.items():
            for key in entry.profile_keys:
                if runtime != self.runtime and key in self.model_fields_set:
                    raise ValueError(f"key '{key}' applies to runtime '{runtime}' only "
                                     f"(this profile's runtime is '{self.runtime}')")
        if self.runtime == "onnxruntime" and self.precision != "fp32":
            raise ValueError("key 'precision': onnxruntime profiles export fp32 (found "
                             f"'{self.precision}'); add the fp16 pass to the recipe instead")
        integer = self.precision in ("w8a16", "w8a8")
        if (self.runtime == "qnn" and self.precision == "fp32") or (
                integer and self.runtime != "qnn"):
            raise ValueError(f"key 'precision': '{self.precision}' with runtime "
                             f"'{self.runtime}' (w8a16 and w8a8 are HTP precisions; a qnn "
                             "profile takes w8a16, w8a8 or fp16)")
        if self.runtime == "qnn" and self.htp_arch is None:
            raise ValueError("key 'htp_arch': a qnn profile names its Hexagon generation "
                             "(68, 69, 73, 75 or 79)")
        if self.runtime == "qnn" and self.precision != "fp16" and not self.calibration_feeds:
            raise ValueError(f"key 'calibration_feeds': {self.precision} needs calibration "
                             "feeds (for example calibration_feeds = 8)")
        if self.layout == "ane" and self.runtime != "coreml":
            raise ValueError(f"key 'layout': 'ane' needs runtime 'coreml' (found '{self.runtime}')")
        from mobilegen.passes import PASSES

        module_passes = [n for n, e in PASSES.items() if e.kind == "module"]
        for r in self.rewrites:
            if r not in module_passes:
                raise ValueError(f"key 'rewrites': unknown rewrite '{r}' "
                                 f"(known: {', '.join(module_passes)})")
        return self


def list_target_names() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def profile_path(name: str) -> Path:
    """Where the profile `name` lives (read at call time: tests point PROFILES_DIR elsewhere)."""
    return PROFILES_DIR / f"{name}.toml"


def load_target(name: str) -> TargetProfile:
    path = profile_path(name)
    try:
        return TargetProfile.model_validate({**read_toml(path), "path": path})
    except ValidationError as e:
        raise RecipeError(format_error(path, e)) from None
