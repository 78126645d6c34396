"""Device latency ESTIMATES from the models fitted on Qualcomm's published measurements.

A target profile maps to one calibrated (device, runtime, precision) slice of
data/latency/coefficients.json (built by scripts/build_latency_calibration.py from qai-hub-models'
perf.yaml files; latency_fit.py fits it). The estimate carries the device it is calibrated on,
the rows and families behind it and its held-out band: the median and 90th-percentile |error| of
the leave-one-family-out cross-validation. Where the profile has no calibrated slice, or the
model uses an op class the slice never saw, or its size is far outside the calibrated range, the
estimate says why and gives no number: it never extrapolates silently.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from typing import Any

from mobilegen.measure.latency_fit import LatencyModels, SliceModel
from mobilegen.measure.opclasses import OpFeatures, count_features

LABEL = ("ESTIMATE (linear op-class model fitted on Qualcomm AI Hub device measurements, "
         "qai-hub-models perf.yaml; not measured here)")
# The phone each Hexagon generation's profile is calibrated on (qai-hub-models'
# devices_and_chipsets.yaml: soc 57 / 69 / 43, htp_version 75 / 79 / 73).
HTP_DEVICES = {"75": "Samsung Galaxy S24", "79": "Samsung Galaxy S25", "73": "QCS8550 (Proxy)"}
# a profile's precision -> the perf.yaml precision it was measured at ("float" runs fp16 on HTP)
PRECISIONS = {"w8a16": "w8a16", "w8a8": "w8a8", "fp16": "float"}
RANGE_FACTOR = 2.0  # a model this many times outside the calibrated GMAC range gets no number


@functools.cache
def load_models() -> LatencyModels:
    text = (files("mobilegen") / "data" / "latency" / "coefficients.json").read_text()
    return LatencyModels.from_dict(json.loads(text))


@dataclass(frozen=True)
class Calibrated:
    """Where a profile's estimate comes from: a slice, or why there is none."""

    slice: SliceModel | None
    reason: str = ""


def profile_slice(profile: Any, models: LatencyModels | None = None) -> Calibrated:
    """The calibrated slice of a TargetProfile (runtime qnn: its htp_arch's phone and its
    precision). The qai-hub-models TFLite rows ran on the NPU (QNN delegate), so LiteRT's GPU
    and CPU profiles have no calibration; neither have Core ML and ONNX Runtime CPU/NNAPI."""
    models = models or load_models()
    if profile.runtime != "qnn":
        if profile.runtime == "litert":
            return Calibrated(None, f"no calibration: the qai-hub-models TFLite rows ran on the "
                                    f"NPU, not the {profile.accelerator.upper()} this profile uses")
        if profile.runtime == "coreml":
            return Calibrated(None, "no calibration: no comparable published per-model Apple "
                                    "device measurements; Apple profiles keep the roofline "
                                    "estimate (measure/estimate.py) and its held-out error")
        return Calibrated(None, f"no calibration for runtime '{profile.runtime}' "
                                "(no published device measurements of it were found)")
    device = HTP_DEVICES.get(profile.htp_arch or "")
    precision = PRECISIONS.get(profile.precision)
    if device is None or precision is None:
        return Calibrated(None, f"no calibration for htp_arch {profile.htp_arch} at "
                                f"{profile.precision} (calibrated: v"
                                + ", v".join(sorted(HTP_DEVICES)) + "; w8a16, w8a8, fp16)")
    key = f"{device}|qnn|{precision}"
    if key not in models.slices:
        return Calibrated(None, f"no calibration: too few measured rows for {key}")
    return Calibrated(models.slices[key])


@dataclass(frozen=True)
class DeviceEstimate:
    profile: str
    device: str | None  # the phone the slice was measured on
    runtime: str | None
    precision: str | None
    estimate_ms: float | None  # None: no calibration (see `reason`)
    band_ms: tuple[float, float] | None  # estimate -/+ the CV's 90th-percentile |error|
    cv_median_abs_err_pct: float | None
    cv_p90_abs_err_pct: float | None
    rows: int  # fitted measurements behind the slice
    families: int
    gmacs: float
    reason: str = ""
    uncalibrated_ops: list[str] = field(default_factory=list)  # aten ops no fitted row used
    source: str = ""
    label: str = LABEL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gate(feats: OpFeatures, s: SliceModel) -> str:
    """Why this model is outside what the slice calibrates ('' when inside)."""
    from mobilegen.measure.latency_fit import used_classes

    outside = sorted(used_classes(feats) - set(s.calibrated_classes))
    if outside:
        return (f"no calibration: op classes {', '.join(outside)} are not in the "
                f"{s.rows} calibrated rows (calibrated: {', '.join(s.calibrated_classes)})")
    g, (lo, hi) = feats.macs / 1e9, s.gmac_range
    if g > hi * RANGE_FACTOR or g < lo / RANGE_FACTOR:
        return (f"no calibration: {g:.3g} GMAC is outside the calibrated range "
                f"{lo:.3g}-{hi:.4g} GMAC (x{RANGE_FACTOR:g} either side)")
    return ""


def estimate_features(feats: OpFeatures, profile: Any,
                      models: LatencyModels | None = None) -> DeviceEstimate:
    models = models or load_models()
    cal = profile_slice(profile, models)
    g = feats.macs / 1e9
    if cal.slice is None:
        return DeviceEstimate(profile.name, None, None, None, None, None, None, None, 0, 0, g,
                              cal.reason)
    s = cal.slice
    src = f"qai-hub-models=={models.version}, {s.rows} rows / {s.families} families"
    unseen = sorted(set(feats.op_types) - set(s.op_types))
    head = (profile.name, s.device, s.runtime, s.precision)
    med, p90 = round(100 * s.median_abs_err, 1), round(100 * s.p90_abs_err, 1)
    why = _gate(feats, s)
    if why:
        return DeviceEstimate(*head, None, None, med, p90, s.rows, s.families, g, why, unseen,
                              src)
    ms = s.predict(feats)
    band = (round(ms * max(0.0, 1 - p90 / 100), 3), round(ms * (1 + p90 / 100), 3))
    return DeviceEstimate(*head, round(ms, 3), band, med, p90, s.rows, s.families, g, "",
                          unseen, src)


def estimate_model(model: Any, inputs: tuple[Any, ...], profiles: list[Any]) -> list[
        DeviceEstimate]:
    """One estimate per profile; the model's features are counted once, on whatever device
    the model and inputs are (`meta` allocates nothing)."""
    feats = count_features(model, inputs)
    return [estimate_features(feats, p) for p in profiles]


def report_section(model: Any, inputs: tuple[Any, ...]) -> dict[str, Any]:
    """report.json's `estimates.calibrated`: one row per shipped target profile (those without
    a calibration say why, with no number)."""
    from mobilegen.targets.profile import list_target_names, load_target

    profiles = [load_target(n) for n in list_target_names()]
    models = load_models()
    return {"label": LABEL, "qai_hub_models_version": models.version,
            "rows": [r.to_dict() for r in estimate_model(model, inputs, profiles)]}
