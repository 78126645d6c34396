"""Device estimates: calibrated on published figures, scored on held-out ones, always labelled."""

from __future__ import annotations

import math

import pytest
import torch

from mobilegen.errors import ConfigError
from mobilegen.measure.costs import count_macs
from mobilegen.measure.estimate import (
    ESTIMATE_LABEL,
    PUBLISHED,
    all_devices,
    calibrate,
    estimate_model,
    op_costs,
    published_model,
)
from mobilegen.models.stoic import VARIANTS, Stoic


@pytest.fixture(scope="module")
def calibration():
    return calibrate()


def test_every_device_is_fitted_and_scored_on_held_out_points(calibration) -> None:
    held = {(h.device, h.model) for h in calibration.held_out}
    assert held == {(p.device, p.model) for p in PUBLISHED if not p.calibrate}
    assert set(calibration.per_device_error_pct) == set(all_devices())
    for h in calibration.held_out:
        assert h.estimate_ms > 0
        assert h.error_pct == pytest.approx(100 * (h.estimate_ms - h.published_ms)
                                            / h.published_ms)
    for name, err in calibration.per_device_error_pct.items():
        mine = [abs(h.error_pct) for h in calibration.held_out if h.device == name]
        assert err == pytest.approx(sum(mine) / len(mine))


def test_fit_reproduces_its_own_calibration_points(calibration) -> None:
    # Two free constants against at most two points: a fit that misses them is a broken fit.
    for f in calibration.fitted:
        assert abs(f.error_pct) < 5.0, f


def test_estimates_carry_label_and_calibration_error(calibration) -> None:
    model = Stoic(VARIANTS["stoic-tiny"]).eval()
    estimates = estimate_model(model, model.example_inputs(1), calibration)
    assert estimates, "ios-ane has a calibrated device"
    for e in estimates:
        assert "ESTIMATE" in e.label and e.label == ESTIMATE_LABEL
        assert math.isfinite(e.calibration_error_pct) and e.calibration_error_pct > 0
        assert e.latency_ms == pytest.approx(sum(e.per_block_ms.values()))
        assert set(e.to_dict()) >= {"label", "calibration_error_pct", "latency_ms"}


def test_op_costs_agree_with_the_mac_counter() -> None:
    model = Stoic(VARIANTS["stoic-tiny"]).eval()
    inputs = model.example_inputs(1)
    total, _ = count_macs(model, inputs)
    ops = op_costs(model, inputs, weight_bytes=2, act_bytes=2)
    assert sum(o.macs for o in ops) == total
    assert all(o.bytes > 0 for o in ops)


def test_published_models_match_reference_counts() -> None:
    # REFERENCE.md: SD-1.5 UNet 859,520,964 params; SD VAE decoder 49,490,199 (with
    # post_quant_conv); the half-width decoder about 12.4M.
    unet, _ = published_model("sd15-unet")
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    dec, _ = published_model("sd-vae-decoder")
    assert sum(p.numel() for p in dec.parameters()) == 49_490_199
    half, _ = published_model("sd-vae-decoder-half")
    assert sum(p.numel() for p in half.parameters()) == pytest.approx(12.4e6, rel=0.01)
    assert next(unet.parameters()).device == torch.device("meta")


def test_unknown_published_model_is_one_line_error() -> None:
    with pytest.raises(ConfigError, match="unknown published model 'sd3'"):
        published_model("sd3")
