"""Latency calibration on Qualcomm's published device measurements: the op-class counter, the NNLS
fit and its cross-validation, the provenance of every shipped row, and `mobilegen estimate`."""

from __future__ import annotations

import json
import re
from importlib.resources import files

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from mobilegen.cli.main import app
from mobilegen.measure import latency, latency_fit
from mobilegen.measure.opclasses import OP_CLASSES, ClassCount, OpFeatures, count_features
from mobilegen.targets.profile import load_target

DATA = files("mobilegen") / "data" / "latency"
SD_MODELS = ("stable_diffusion", "controlnet")


@pytest.fixture(scope="module")
def calibration() -> dict:
    return json.loads((DATA / "calibration.json").read_text())


@pytest.fixture(scope="module")
def shipped() -> latency_fit.LatencyModels:
    return latency.load_models()


# ---------------------------------------------------------------- the op-class counter


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))  # (1, 8, 4, 4)
        x = self.dw(x).flatten(2).transpose(1, 2)  # (1, 16, 8)
        q = self.fc(x).view(1, 16, 2, 8).transpose(1, 2)  # (1, 2, 16, 8)
        return nn.functional.scaled_dot_product_attention(q, q, q)


def test_counter_prices_each_class_on_meta() -> None:
    with torch.device("meta"):
        model = _Tiny().eval()
    f = count_features(model, (torch.empty(1, 3, 4, 4, device="meta"),))
    c = f.classes
    assert c["conv"].macs == 8 * 16 * 27 and c["conv"].weight_elems == 8 * 27 + 8
    assert c["dwconv"].macs == 8 * 16 * 9
    assert c["linear"].macs == 16 * 16 * 8
    # q.k^T and weights.v: 2 heads x 16 x 16 scores x head dim 8, twice
    assert c["attn_matmul"].macs == 2 * (2 * 16 * 16 * 8)
    assert c["activation"].nodes == 1  # relu; the batch norm is folded into the conv (no node)
    assert "_native_batch_norm_legit_no_training" not in f.op_types


def test_counter_transposed_conv_macs_follow_the_input() -> None:
    m = nn.ConvTranspose2d(4, 2, 2, 2)
    f = count_features(m, (torch.zeros(1, 4, 3, 3),))
    assert f.classes["conv"].macs == 4 * 9 * 2 * 4  # each input element meets Cout x k x k


# ---------------------------------------------------------------- the fit


def _synthetic(n: int, coef: dict[str, float]) -> latency_fit.CalibrationSet:
    rng = np.random.default_rng(0)
    feats, rows = {}, []
    names = latency_fit.feature_names()
    truth = np.array([coef.get(k, 0.0) for k in names])
    for i in range(n):
        f = OpFeatures()
        for cls in OP_CLASSES:
            f.classes[cls] = ClassCount(macs=int(rng.uniform(0, 5e9)),
                                        weight_elems=int(rng.uniform(0, 2e7)),
                                        act_elems=int(rng.uniform(0, 2e7)),
                                        nodes=int(rng.integers(1, 300)),
                                        spill_elems=int(rng.uniform(0, 1e7)))
        key = f"m{i}/c"
        feats[key] = f
        ms = float(latency_fit.design_row(f, "w8a16") @ truth)
        rows.append(latency_fit.CalRow(f"m{i}", "c", f"fam{i % 6}", "Phone", "qnn_dlc", "w8a16",
                                       ms, f"j{i:08d}", key, False, True))
    return latency_fit.CalibrationSet(rows, feats, "test")


def test_fit_recovers_known_coefficients_and_cv_is_exact() -> None:
    truth = {"conv_gmac": 0.2, "linear_gmac": 0.5, "weight_mb": 0.01, "move_mb": 0.003,
             "mac_knodes": 2.0, "const": 0.3}
    cal = _synthetic(40, truth)
    model = latency_fit.fit_slice(cal, ("Phone", "qnn", "w8a16"))
    assert model is not None and model.rows == 40 and model.families == 6
    for k in latency_fit.feature_names():
        assert model.coefficients[k] == pytest.approx(truth.get(k, 0.0), abs=1e-6), k
    assert model.p90_abs_err < 1e-6  # noise-free rows: every held-out family is predicted


def test_fit_refuses_a_slice_with_too_few_rows() -> None:
    cal = _synthetic(latency_fit.MIN_ROWS - 1, {"const": 1.0})
    assert latency_fit.fit_slice(cal, ("Phone", "qnn", "w8a16")) is None


# ---------------------------------------------------------------- the shipped data


def test_every_row_has_provenance(calibration) -> None:
    assert calibration["qai_hub_models_version"] == "0.65.0"
    devices = calibration["devices"]
    for r in calibration["rows"]:
        assert re.fullmatch(r"j[a-z0-9]{8}", r["job_id"]), r
        assert r["qai_hub_models_version"] == "0.65.0" and r["device"] in devices
        assert r["chipset"] == devices[r["device"]]["chipset"]
        assert r["measured_ms"] > 0 and r["features"] in calibration["features"]
        assert r["held_out"] == r["model"].startswith(SD_MODELS)
    s24 = {r["features"] for r in calibration["rows"] if r["device"] == "Samsung Galaxy S24"
           and not r["held_out"]}
    assert len(s24) >= 60


def test_the_issue_sd_rows_are_there_with_their_job_ids(calibration) -> None:
    got = {(r["device"], r["component"]): (r["measured_ms"], r["job_id"])
           for r in calibration["rows"] if r["model"] == "stable_diffusion_v1_5"
           and r["precision"] == "w8a16" and r["runtime"] == "qnn_context_binary"}
    assert got[("Samsung Galaxy S24", "unet")] == (76.152, "jp2rnnwmg")
    assert got[("Samsung Galaxy S25", "vae")] == (126.555, "jglyrry85")


def test_held_out_rows_are_never_fitted(calibration, shipped) -> None:
    cal = latency_fit.CalibrationSet.from_dict(calibration)
    for key in {r.slice for r in cal.rows}:
        assert not any(r.held_out for r in cal.fit_rows(key))
    for s in shipped.slices.values():
        assert not any(c.name.startswith(SD_MODELS) for c in s.cv)


def test_shipped_coefficients_are_the_fit_of_the_shipped_rows(calibration, shipped) -> None:
    refit = latency_fit.fit_all(latency_fit.CalibrationSet.from_dict(calibration))
    assert refit.slices.keys() == shipped.slices.keys()
    for k, s in refit.slices.items():
        for name, v in s.coefficients.items():
            assert v == pytest.approx(shipped.slices[k].coefficients[name], rel=1e-6, abs=1e-12)
        assert s.median_abs_err == pytest.approx(shipped.slices[k].median_abs_err, abs=1e-9)


def test_sd15_w8a16_held_out_within_25_percent_on_both_phones(shipped) -> None:
    scores = [h for h in shipped.held_out if h.name.startswith("stable_diffusion_v1_5/")
              and "|w8a16" in h.slice_key and "Galaxy" in h.slice_key]
    assert len(scores) == 6
    assert all(abs(h.error) <= 0.25 for h in scores), [(h.name, h.error) for h in scores]


# ---------------------------------------------------------------- the estimate and the CLI


def test_uncalibrated_op_class_gives_no_number(shipped) -> None:
    profile = load_target("snapdragon-8gen3-htp")
    s = shipped.slices["Samsung Galaxy S24|qnn|w8a16"]
    narrowed = latency_fit.SliceModel(**{**s.__dict__, "calibrated_classes": ["conv"]})
    models = latency_fit.LatencyModels(shipped.version, {s.key: narrowed}, [])
    f = OpFeatures()
    f.classes["conv"] = ClassCount(macs=2 * 10**9, nodes=10)
    f.classes["attn_matmul"] = ClassCount(macs=10**9, nodes=2)
    e = latency.estimate_features(f, profile, models)
    assert e.estimate_ms is None and e.band_ms is None and "attn_matmul" in e.reason


def test_cli_json_keys_and_the_no_calibration_path() -> None:
    res = CliRunner().invoke(app, ["estimate", "unet-sd15", "--target", "snapdragon-8gen3-htp",
                                   "--target", "android-gpu", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    npu, gpu = doc["estimates"]
    assert npu["device"] == "Samsung Galaxy S24" and npu["precision"] == "w8a16"
    lo, hi = npu["band_ms"]
    assert lo < npu["estimate_ms"] < hi and npu["rows"] >= latency_fit.MIN_ROWS
    assert {"cv_median_abs_err_pct", "cv_p90_abs_err_pct", "families", "label"} <= npu.keys()
    assert gpu["estimate_ms"] is None and gpu["reason"].startswith("no calibration")
    text = CliRunner().invoke(app, ["estimate", "unet-sd15", "-t", "ios-ane"])
    assert text.exit_code == 0 and "no calibration" in text.output
