"""Device latency ESTIMATES (never measurements): a roofline model calibrated on published figures.

Per operator (every Linear, Conv2d and attention kernel that count_macs sees):
    time = max(MACs / peak_macs_per_s, bytes / bandwidth) + overhead_per_op
and a model's estimate is the sum over its operators. Bytes are the operator's weights plus the
activations it reads and writes (for attention also the Tq x Tk score matrix, written and read
back: the term that makes high-resolution attention memory-bound, SnapFusion's finding).

Bandwidth is a nominal vendor figure per device (approximate, not measured). The effective peak and
the per-op overhead are fitted to a few published latencies (../shared/REFERENCE.md); the others
are held out and their relative error is what every estimate carries as `calibration_error`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mobilegen.errors import ConfigError

ESTIMATE_LABEL = "ESTIMATE (roofline model calibrated on published figures; not measured)"


@dataclass(frozen=True)
class OpCost:
    name: str
    macs: int
    bytes: int


@dataclass(frozen=True)
class Device:
    name: str
    profile: str  # the export target profile this device's estimate belongs to
    bandwidth_gbs: float  # nominal DRAM bandwidth (vendor spec, approximate)
    weight_bytes: float  # bytes per weight at the precision the published runs used
    act_bytes: float  # bytes per activation element
    peak_gmacs: float = 0.0  # fitted effective peak, GMAC/s
    overhead_us: float = 0.0  # fitted per-operator overhead


@dataclass(frozen=True)
class PublishedPoint:
    device: str
    model: str  # key into PUBLISHED_MODELS
    latency_ms: float
    source: str
    calibrate: bool  # True: used to fit; False: held out and scored


# Calibration-only devices: older iPhones with published figures but no target profile of their
# own. Nominal memory bandwidth: LPDDR4X 4266 x 64-bit (A14/A15); Core ML on the ANE runs fp16
# weights and activations. Devices that a target profile names come from its [device] table.
CALIBRATION_DEVICES: dict[str, Device] = {
    "iphone-13-pro-max": Device("iphone-13-pro-max", "ios-ane", 34.1, 2, 2),
    "iphone-12-pro-max": Device("iphone-12-pro-max", "ios-ane", 34.1, 2, 2),
}


def profile_devices() -> dict[str, Device]:
    """Device name -> Device for every target profile with a [device] table (export_targets/).
    Profiles without one (no published figures to calibrate on) get no estimate, not a guess."""
    from mobilegen.targets.profile import list_target_names, load_target

    out: dict[str, Device] = {}
    for name in list_target_names():
        spec = load_target(name).device
        if spec is not None:
            out[spec.name] = Device(spec.name, name, spec.bandwidth_gbs, spec.weight_bytes,
                                    spec.act_bytes)
    return out


def all_devices() -> dict[str, Device]:
    return {**CALIBRATION_DEVICES, **profile_devices()}

PUBLISHED: tuple[PublishedPoint, ...] = (
    # SnapFusion, iPhone 14 Pro: fit on the efficient UNet and the full decoder; hold out the
    # pruned decoder and SD-1.5's UNet (an unoptimized baseline: the roofline cannot explain its
    # 7x gap to a UNet of 0.8x the MACs, and the held-out error says so).
    PublishedPoint("iphone-14-pro", "snapfusion-unet", 230, "SnapFusion (iPhone 14 Pro)", True),
    PublishedPoint("iphone-14-pro", "sd-vae-decoder", 369, "SnapFusion (iPhone 14 Pro)", True),
    PublishedPoint("iphone-14-pro", "sd15-unet", 1700, "SnapFusion (iPhone 14 Pro)", False),
    PublishedPoint("iphone-14-pro", "sd-vae-decoder-half", 116, "SnapFusion (iPhone 14 Pro)",
                   False),
    # Older iPhones: only the peak is refitted (on the UNet); the decoder is held out.
    PublishedPoint("iphone-13-pro-max", "snapfusion-unet", 315, "SnapFusion (13 Pro Max)", True),
    PublishedPoint("iphone-13-pro-max", "sd-vae-decoder-half", 148, "SnapFusion (13 Pro Max)",
                   False),
    PublishedPoint("iphone-12-pro-max", "snapfusion-unet", 526, "SnapFusion (12 Pro Max)", True),
    PublishedPoint("iphone-12-pro-max", "sd-vae-decoder-half", 187, "SnapFusion (12 Pro Max)",
                   False),
)


# ---------------------------------------------------------------- costs per operator


def op_costs(model: Any, inputs: tuple[Any, ...], weight_bytes: float,
             act_bytes: float) -> list[OpCost]:
    """MACs and bytes moved per operator for one forward pass (works on the meta device)."""
    from mobilegen.measure import costs

    return [OpCost(op.name, op.macs, op.bytes_moved(weight_bytes, act_bytes))
            for op in costs.op_costs(model, inputs)]


@functools.cache
def published_model(key: str) -> tuple[Any, tuple[Any, ...]]:
    """The published architectures, built on the meta device (no weights, no memory); cached,
    since building SD-1.5's UNet even without weights takes seconds."""
    import torch

    from mobilegen.models import unet, vae_decoder

    meta = torch.device("meta")
    if key in ("sd15-unet", "snapfusion-unet"):  # the families' named variants, by name
        cfg = unet.VARIANTS["sd15" if key == "sd15-unet" else "snapfusion"]
        with meta:
            model = unet.EfficientUNet(cfg)
        x = torch.empty(1, 4, 64, 64, device=meta)
        return model, (x, torch.empty(1, device=meta), torch.empty(1, 77, 768, device=meta))
    if key in ("sd-vae-decoder", "sd-vae-decoder-half"):
        with meta:
            model = vae_decoder.VAEDecoder(
                vae_decoder.VARIANTS["sd-vae" if key == "sd-vae-decoder" else "sd-vae-half"])
        return model, (torch.empty(1, 4, 64, 64, device=meta),)
    raise ConfigError(f"unknown published model '{key}' (known: sd15-unet, snapfusion-unet, "
                      "sd-vae-decoder, sd-vae-decoder-half)")


# ---------------------------------------------------------------- the model and its calibration


def _roofline_ms(ops: list[OpCost], peak_gmacs: np.ndarray, bandwidth_gbs: float,
                 overhead_us: np.ndarray) -> np.ndarray:
    macs = np.array([o.macs for o in ops], dtype=np.float64)
    moved = np.array([o.bytes for o in ops], dtype=np.float64)
    compute = macs[None, :] / (peak_gmacs[:, None] * 1e9)  # (P, ops) seconds
    memory = moved[None, :] / (bandwidth_gbs * 1e9)
    seconds = np.maximum(compute, memory).sum(axis=1)
    return seconds * 1e3 + len(ops) * overhead_us / 1e3


@dataclass(frozen=True)
class HeldOut:
    device: str
    model: str
    published_ms: float
    estimate_ms: float

    @property
    def error_pct(self) -> float:
        return 100.0 * (self.estimate_ms - self.published_ms) / self.published_ms


@dataclass(frozen=True)
class Calibration:
    devices: dict[str, Device]
    fitted: list[HeldOut]  # calibration points with the fit's own estimate
    held_out: list[HeldOut]
    per_device_error_pct: dict[str, float] = field(default_factory=dict)  # mean |held-out| error

    def to_dict(self) -> dict[str, Any]:
        return {
            "devices": {k: asdict(v) for k, v in self.devices.items()},
            "fitted": [{**asdict(h), "error_pct": h.error_pct} for h in self.fitted],
            "held_out": [{**asdict(h), "error_pct": h.error_pct} for h in self.held_out],
            "per_device_error_pct": self.per_device_error_pct,
        }


_COST_CACHE: dict[tuple[str, float, float], list[OpCost]] = {}


def _published_costs(key: str, device: Device) -> list[OpCost]:
    cache_key = (key, device.weight_bytes, device.act_bytes)
    if cache_key not in _COST_CACHE:
        model, inputs = published_model(key)
        _COST_CACHE[cache_key] = op_costs(model, inputs, device.weight_bytes, device.act_bytes)
    return _COST_CACHE[cache_key]


PEAK_GRID = np.geomspace(50.0, 20000.0, 400)  # GMAC/s
# A prior: dispatch costs tens of microseconds per op on phone accelerators; 500 us caps the fit
# so that two calibration points cannot trade all compute for overhead.
OVERHEAD_GRID = np.concatenate([[0.0], np.geomspace(1.0, 500.0, 100)])  # us per op


def calibrate(points: tuple[PublishedPoint, ...] = PUBLISHED) -> Calibration:
    """Fit peak (and, for the first device listed, the per-op overhead) by least squares in log
    latency on the calibration points; score the held-out points with the fitted constants."""
    devices: dict[str, Device] = {}
    known = all_devices()
    shared_overhead: float | None = None
    for name in dict.fromkeys(p.device for p in points):
        if name not in known:
            raise ConfigError(f"published point for device '{name}': no target profile [device] "
                              f"or calibration device of that name (known: {', '.join(known)})")
        dev = known[name]
        fit = [p for p in points if p.device == name and p.calibrate]
        if not fit:
            raise ConfigError(f"device '{name}' has no calibration point")
        costs = [_published_costs(p.model, dev) for p in fit]
        overheads = OVERHEAD_GRID if shared_overhead is None else np.array([shared_overhead])
        best = (math.inf, 0.0, 0.0)
        for o in overheads:
            est = np.stack([_roofline_ms(c, PEAK_GRID, dev.bandwidth_gbs, np.array(o))
                            for c in costs])  # (points, P)
            loss = ((np.log(est) - np.log([[p.latency_ms] for p in fit])) ** 2).sum(axis=0)
            i = int(np.argmin(loss))
            if loss[i] < best[0]:
                best = (float(loss[i]), float(PEAK_GRID[i]), float(o))
        if shared_overhead is None:
            shared_overhead = best[2]  # the architecture's dispatch cost carries over
        devices[name] = Device(dev.name, dev.profile, dev.bandwidth_gbs, dev.weight_bytes,
                               dev.act_bytes, best[1], best[2])
    fitted, held = [], []
    for p in points:
        dev = devices[p.device]
        est = estimate_ops(_published_costs(p.model, dev), dev)
        (fitted if p.calibrate else held).append(HeldOut(p.device, p.model, p.latency_ms, est))
    errors = {name: float(np.mean([abs(h.error_pct) for h in held if h.device == name]))
              for name in devices if any(h.device == name for h in held)}
    return Calibration(devices, fitted, held, errors)


def estimate_ops(ops: list[OpCost], device: Device) -> float:
    return float(_roofline_ms(ops, np.array([device.peak_gmacs]), device.bandwidth_gbs,
                              np.array(device.overhead_us))[0])


@dataclass(frozen=True)
class Estimate:
    profile: str
    device: str
    latency_ms: float
    calibration_error_pct: float  # mean |error| on this device's held-out published points
    per_block_ms: dict[str, float]
    label: str = ESTIMATE_LABEL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_model(model: Any, inputs: tuple[Any, ...], calibration: Calibration,
                   group_depth: int = 2) -> list[Estimate]:
    """Estimates for every profile that has a calibrated device, grouped per block
    (module path prefix, e.g. 'blocks.3')."""
    out = []
    for name, spec in profile_devices().items():
        profile = spec.profile
        dev = calibration.devices.get(name)
        if dev is None:  # a profile device with no published point to calibrate on
            continue
        ops = op_costs(model, inputs, dev.weight_bytes, dev.act_bytes)
        per_block: dict[str, float] = {}
        for op in ops:
            key = ".".join(op.name.split(".")[:group_depth])
            per_block[key] = per_block.get(key, 0.0) + estimate_ops([op], dev)
        out.append(Estimate(profile, name, estimate_ops(ops, dev),
                            calibration.per_device_error_pct.get(name, float("nan")), per_block))
    return out


def report_section(model: Any, inputs: tuple[Any, ...]) -> dict[str, Any]:
    """report.json's `estimates` section, kept apart from every measured figure: `rows` from
    this roofline (Apple profiles), `calibrated` from the fit on Qualcomm's device measurements
    (measure/latency.py; every shipped profile, with "no calibration" where it has none)."""
    from mobilegen.measure import latency

    calibration = calibrate()
    return {"label": ESTIMATE_LABEL, "calibration": calibration.to_dict(),
            "rows": [e.to_dict() for e in estimate_model(model, inputs, calibration)],
            "calibrated": latency.report_section(model, inputs)}
