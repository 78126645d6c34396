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
    assert c["softmax"].nodes == 1  # the fused attention's score softmax, priced as eager
    assert "_native_batch_norm_legit_no_training" not in f.op_types


def test_counter_classes_norms_softmax_and_concat() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln, self.gn = nn.LayerNorm(8), nn.GroupNorm(2, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.gn(x.view(1, 4, 2, 8)).view(1, 8, 8)
            z = torch.cat([self.ln(x), y], dim=1)
            return torch.softmax(z, dim=-1)

    f = count_features(M().eval(), (torch.zeros(1, 8, 8),))
    c = f.classes
    assert c["norm"].nodes == 1 and c["norm"].act_elems == 2 * 64 + 16  # in, out, mean, rstd
    assert c["elementwise"].nodes == 1  # group norm (no calibration row uses it)
    assert c["concat"].nodes == 1 and c["concat"].act_elems == 64 + 64 + 128
    assert c["softmax"].nodes == 1 and c["data_movement"].nodes == 0


def test_counter_prices_a_lookup_by_the_rows_it_reads() -> None:
    """Gathering one row of a large activation (a masked-LM head's [MASK] row) moves that row,
    not the whole tensor; a lookup in a weight table reads its rows as weights."""
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Embedding(1000, 16)

        def forward(self, x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
            return x[torch.zeros(1, dtype=torch.long), i] + self.table(i).sum()

    x = torch.zeros(1, 512, 2048)  # 1M elements: a spilling tensor if it were read whole
    f = count_features(M().eval(), (x, torch.tensor([3])))
    dm = f.classes["data_movement"]
    assert f.op_types["index"] == 1 and f.op_types["embedding"] == 1
    # index: its index tensors (1 + 1) plus the row read and written (2 x 2048); embedding:
    # its ids (1) and the row written (16), the row read counted as weights
    assert dm.act_elems == 2 + 2 * 2048 + 1 + 16
    assert dm.weight_elems == 16 and dm.spill_elems == 0


def test_counter_transposed_conv_macs_follow_the_input() -> None:
    m = nn.ConvTranspose2d(4, 2, 2, 2)
    f = count_features(m, (torch.zeros(1, 4, 3, 3),))
    assert f.classes["conv"].macs == 4 * 9 * 2 * 4  # each input element meets Cout x k x k


# ---------------------------------------------------------------- the fit


def _synthetic(n: int, coef: dict[str, float], precision: str = "w8a16",
               factors: dict[str, float] | None = None) -> latency_fit.CalibrationSet:
    """n noise-free rows of `precision` from known coefficients; with `factors` (a quantized
    precision), also n float rows of the same architectures, the quantized ones then priced
    as the float model's term groups times those factors (latency_fit.transfer_fit)."""
    rng = np.random.default_rng(0)
    feats, rows = {}, []
    # a transfer rescales a v2 float model (the float slice's own method is the roofline)
    names = latency_fit.FEATURE_SETS["v2"] if factors else latency_fit.feature_names(precision)
    truth = np.array([coef.get(k, 0.0) for k in names])
    scale = np.ones(len(names))
    if factors:
        groups = list(latency_fit.TRANSFER_GROUPS)
        scale = np.array([factors.get(groups[g], 1.0)
                          for g in latency_fit.transfer_index(names)])
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
        ms = float(latency_fit.design_row(f, precision) @ (truth * scale))
        rows.append(latency_fit.CalRow(f"m{i}", "c", f"fam{i % 6}", "Phone", "qnn_dlc", precision,
                                       ms, f"j{i:08d}", key, False, True))
        if factors:
            fl = float(latency_fit.design_row(f, "float", "v2") @ truth)
            rows.append(latency_fit.CalRow(f"m{i}", "c", f"fam{i % 6}", "Phone", "qnn_dlc",
                                           "float", fl, f"k{i:08d}", key, False, True))
    return latency_fit.CalibrationSet(rows, feats, "test")


def test_fit_recovers_known_coefficients_and_cv_is_exact() -> None:
    truth = {"conv_gmac": 0.2, "linear_gmac": 0.5, "weight_mb": 0.01, "move_mb": 0.003,
             "mac_knodes": 2.0, "const": 0.3}
    cal = _synthetic(40, truth)
    model = latency_fit.fit_slice(cal, ("Phone", "qnn", "w8a16"))
    assert model is not None and model.rows == 40 and model.families == 6
    for k in latency_fit.feature_names("w8a16"):
        assert model.coefficients[k] == pytest.approx(truth.get(k, 0.0), abs=1e-6), k
    assert model.p90_abs_err < 1e-6  # noise-free rows: every held-out family is predicted


def test_quantized_slice_transfers_the_float_model_with_its_factors(monkeypatch) -> None:
    truth = {"conv_gmac": 0.2, "linear_gmac": 0.5, "attn_matmul_gmac": 0.4, "weight_mb": 0.01,
             "move_mb": 0.003, "norm_mb": 0.05, "mac_knodes": 2.0, "move_knodes": 9.0,
             "const": 0.3}
    factors = {"conv": 0.25, "linear": 1.3, "rest": 0.7}
    cal = _synthetic(40, truth, "w8a8", factors)
    key = ("Phone", "qnn", "w8a8")
    fl = latency_fit.fit_slice(cal, ("Phone", "qnn", "float"))
    ridged = latency_fit.fit_slice(cal, key)
    monkeypatch.setattr(latency_fit, "TRANSFER_RIDGE", 0.0)
    q = latency_fit.fit_slice(cal, key)
    assert fl is not None and q is not None and ridged is not None and not fl.float_scales
    # (the float slice itself is the roofline, r1: it need not give v2's coefficients back; the
    # v2 float model the transfer rescales does, checked on q.float_base below)
    got = q.float_scales
    assert list(got) == list(latency_fit.TRANSFER_GROUPS)
    for k in ("conv", "linear", "attn_matmul", "rest", "const"):  # (no dwconv term: no factor)
        # without the ridge, noise-free rows give the factors back exactly
        assert got[k] == pytest.approx(factors.get(k, 1.0), abs=1e-6), (k, got)
    assert q.coefficients["conv_gmac"] == pytest.approx(0.2 * 0.25, rel=1e-6)
    assert q.coefficients["move_knodes"] == pytest.approx(9.0 * 0.7, rel=1e-6)
    # the float model the factors rescale travels with the slice (noise-free: the truth)
    assert q.float_base["norm_mb"] == pytest.approx(0.05, rel=1e-6)
    assert q.p90_abs_err < 1e-6
    # the ridge pulls the factors toward 1 (costs as in float) at a small price in error
    def dist(m: latency_fit.SliceModel) -> float:
        return sum((v - 1.0) ** 2 for v in m.float_scales.values())

    assert dist(ridged) < dist(q) and ridged.median_abs_err < 0.1


def test_robust_fit_is_not_pulled_by_one_far_off_row() -> None:
    truth = {"conv_gmac": 0.2, "linear_gmac": 0.5, "weight_mb": 0.01, "mac_knodes": 2.0,
             "const": 0.3}
    cal = _synthetic(40, truth, "w8a16")
    x = np.stack([latency_fit.design_row(cal.features[r.features], "w8a16") for r in cal.rows])
    y = np.array([r.measured_ms for r in cal.rows])
    y[3] *= 5.0  # one row measured 5x what its features say
    want = np.array([truth.get(k, 0.0) for k in latency_fit.feature_names("w8a16")])
    robust = latency_fit.nnls_fit(x, y, robust=True)
    plain = latency_fit.nnls_fit(x, y)
    # the L1 fit gives the other 39 rows back within 0.2%; the squared loss moves them ~10x more
    others = np.arange(len(y)) != 3

    def worst(c: np.ndarray) -> float:
        return float(np.max(np.abs((x @ c)[others] / (x @ want)[others] - 1)))

    assert worst(robust) < 0.002 and worst(plain) > 5 * worst(robust)
    assert robust[-1] == pytest.approx(0.3, rel=0.05)  # the constant, pulled to 0.2 by the square


def test_every_transferred_precision_shares_the_float_terms(shipped) -> None:
    # a transfer rescales the float model refitted in its own linear term set on the float rows
    # (the float slice itself is the per-node roofline, r1, which a linear transfer cannot read)
    for precision, method in latency_fit.METHODS.items():
        if method.transfer:
            assert method.terms not in latency_fit.ROOFLINE_SETS, precision
    # a transferred slice is readable as its float model times one factor per term group
    groups = list(latency_fit.TRANSFER_GROUPS)
    transferred = [s for s in shipped.slices.values() if s.float_scales]
    assert {s.precision for s in transferred} == {
        p for p, m in latency_fit.METHODS.items() if m.transfer}
    for s in transferred:
        names = latency_fit.feature_names(s.precision)
        for n, g in zip(names, latency_fit.transfer_index(names), strict=True):
            want = s.float_base[n] * s.float_scales[groups[g]]
            assert s.coefficients[n] == pytest.approx(want, rel=1e-9, abs=1e-15), (s.key, n)


def _three_precisions(n: int, rest: dict[str, float], mac: dict[str, dict[str, float]],
                      const: dict[str, float]) -> latency_fit.CalibrationSet:
    """n architectures measured at float, w8a8 and w8a16 from one v2 model: byte and node
    coefficients shared, MAC coefficients and the constant per precision (the joint fit's form)."""
    base = _synthetic(n, {}, "float")
    names = latency_fit.FEATURE_SETS["v2"]
    rows = []
    for r in base.rows:
        for p in latency_fit.JOINT_PRECISIONS:
            c = {**rest, **mac[p], "const": const[p]}
            x = latency_fit.design_row(base.features[r.features], p, "v2")
            ms = float(x @ np.array([c.get(k, 0.0) for k in names]))
            rows.append(latency_fit.CalRow(r.model, "c", r.family, "Phone", "qnn_dlc", p, ms,
                                           f"{r.job_id}{p}", r.features, False, True))
    return latency_fit.CalibrationSet(rows, base.features, "test")


def test_w8a16_joint_fit_recovers_per_precision_macs_and_shared_rest() -> None:
    assert latency_fit.METHODS["w8a16"].joint
    rest = {"weight_mb": 0.01, "move_mb": 0.003, "norm_mb": 0.05, "mac_knodes": 2.0}
    mac = {"float": {"conv_gmac": 0.2, "linear_gmac": 0.5},
           "w8a8": {"conv_gmac": 0.05, "linear_gmac": 0.6},
           "w8a16": {"conv_gmac": 0.1, "linear_gmac": 0.45}}
    const = {"float": 0.3, "w8a8": 0.2, "w8a16": 0.25}
    cal = _three_precisions(latency_fit.MIN_ROWS, rest, mac, const)
    model = latency_fit.fit_slice(cal, ("Phone", "qnn", "w8a16"))
    assert model is not None and not model.float_scales
    want = {**rest, **mac["w8a16"], "const": const["w8a16"]}
    for k in latency_fit.feature_names("w8a16"):
        assert model.coefficients[k] == pytest.approx(want.get(k, 0.0), abs=1e-6), k
    assert model.p90_abs_err < 1e-6


def test_w8a8_pooled_transfer_shares_the_rest_factor_with_w8a16() -> None:
    """w8a8 and w8a16 priced as the float model with their own MAC factors and one shared
    rest factor: the pooled transfer gives the w8a8 factors back (no ridge, noise-free)."""
    assert latency_fit.METHODS["w8a8"].pooled
    rest = {"weight_mb": 0.01, "move_mb": 0.003, "mac_knodes": 2.0}
    mac_f = {"conv_gmac": 0.2, "linear_gmac": 0.5}
    mac = {"float": mac_f, "w8a8": {k: v * 0.3 for k, v in mac_f.items()},
           "w8a16": {k: v * 0.6 for k, v in mac_f.items()}}
    # the same rest factor 0.7 and constant factor 1 at both quantized precisions
    cal = _three_precisions(30, rest, mac, {"float": 0.3, "w8a8": 0.3, "w8a16": 0.3})
    for r in list(cal.rows):
        if r.precision != "float":
            f = cal.features[r.features]
            x = latency_fit.design_row(f, r.precision, "v2")
            names = latency_fit.FEATURE_SETS["v2"]
            c = {**{k: 0.7 * v for k, v in rest.items()}, **mac[r.precision], "const": 0.3}
            cal.rows[cal.rows.index(r)] = latency_fit.CalRow(
                r.model, r.component, r.family, r.device, r.runtime, r.precision,
                float(x @ np.array([c.get(k, 0.0) for k in names])), r.job_id, r.features,
                False, True)
    ridge = latency_fit.TRANSFER_RIDGE
    try:
        latency_fit.TRANSFER_RIDGE = 0.0
        model = latency_fit.fit_slice(cal, ("Phone", "qnn", "w8a8"))
    finally:
        latency_fit.TRANSFER_RIDGE = ridge
    assert model is not None
    got = model.float_scales
    for g, want in (("conv", 0.3), ("linear", 0.3), ("rest", 0.7), ("const", 1.0)):
        assert got[g] == pytest.approx(want, abs=1e-6), (g, got)


def test_term_sets_price_concat_and_layer_norm_apart() -> None:
    f = OpFeatures()
    f.classes["concat"] = ClassCount(act_elems=10**6, nodes=1)
    f.classes["norm"] = ClassCount(act_elems=2 * 10**6, nodes=1)
    f.classes["data_movement"] = ClassCount(act_elems=0, nodes=4)
    v1 = dict(zip(latency_fit.FEATURE_SETS["v1"], latency_fit.design_row(f, "float", "v1"),
                  strict=True))
    v2 = dict(zip(latency_fit.FEATURE_SETS["v2"], latency_fit.design_row(f, "float", "v2"),
                  strict=True))
    assert v1["move_mb"] == 2.0 and v1["pointwise_mb"] == 4.0  # fp16: 2 bytes per element
    assert v2["move_mb"] == 0.0 and v2["norm_mb"] == 4.0 and v2["pointwise_mb"] == 0.0
    assert v2["move_knodes"] == 0.004 and v2["other_knodes"] == 0.002


def test_fit_on_the_fewest_rows_a_slice_may_have() -> None:
    """MIN_ROWS rows of MIN_FAMILIES families are enough: a direct fit and a transfer from the
    float model both come back exact on noise-free rows."""
    n = latency_fit.MIN_ROWS
    truth = {"conv_gmac": 0.2, "linear_gmac": 0.5, "weight_mb": 0.01, "mac_knodes": 2.0,
             "const": 0.3}
    model = latency_fit.fit_slice(_synthetic(n, truth), ("Phone", "qnn", "w8a16"))
    assert model is not None and model.rows == n and model.families >= latency_fit.MIN_FAMILIES
    assert model.coefficients["linear_gmac"] == pytest.approx(0.5, rel=1e-6)
    factors = {"conv": 0.3, "linear": 1.2, "rest": 0.8}
    cal = _synthetic(n, {**truth, "norm_mb": 0.05}, "w8a8", factors)
    base = latency_fit.nnls_fit(*latency_fit._design(
        cal.fit_rows(("Phone", "qnn", "float")), cal.features, "v2"))
    x, y = latency_fit._design(cal.fit_rows(("Phone", "qnn", "w8a8")), cal.features)
    ridge = latency_fit.TRANSFER_RIDGE
    try:
        latency_fit.TRANSFER_RIDGE = 0.0
        _, got = latency_fit.transfer_fit(base, x, y, latency_fit.feature_names("w8a8"))
    finally:
        latency_fit.TRANSFER_RIDGE = ridge
    want = [factors.get(g, 1.0) for g in latency_fit.TRANSFER_GROUPS]
    for g, a, b in zip(latency_fit.TRANSFER_GROUPS, got, want, strict=True):
        if g in ("conv", "linear", "rest", "const"):  # (the truth has no dwconv / attention
            assert a == pytest.approx(b, abs=1e-6), g  # term: no factor to recover there)


def test_roofline_prices_each_mac_node_at_its_bound() -> None:
    """r1: a MAC node costs max(compute, memory); the bounds come from the coefficients."""
    f = OpFeatures()
    f.classes["conv"] = ClassCount(macs=3 * 10**9, weight_elems=10**6, act_elems=2 * 10**6,
                                   nodes=2)
    f.mac_nodes = {("conv", 2 * 10**9, 0, 10**6): 1, ("conv", 10**9, 10**6, 10**6): 1}
    names = latency_fit.FEATURE_SETS["r1"]
    c = dict.fromkeys(names, 0.0)
    c.update(conv_gmac=1.0, weight_mb=1.0, mac_act_mb=1.0)  # fp16: node 1 2.0 vs 2 MB, node 2
    coef = np.array([c[n] for n in names])  # 1.0 vs 4 MB
    x = latency_fit.design_row(f, "float", "r1", coef)
    assert x @ coef == pytest.approx(2.0 + 4.0)
    both = latency_fit.design_row(f, "float", "r1")  # no coefficients: every node both bounds
    assert both @ coef == pytest.approx(3.0 + 2.0 + 4.0)


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
    assert len(s24) >= 80  # 81 architectures (goal: 60)
    # one measurement per (model, component, device, runtime, precision), each its own job
    keys = [(r["model"], r["component"], r["device"], r["runtime"], r["precision"])
            for r in calibration["rows"]]
    assert len(set(keys)) == len(keys)
    assert len({r["job_id"] for r in calibration["rows"]}) == len(keys)
    for key, f in calibration["features"].items():
        assert f["source"] and f["macs"] > 0 and f["nodes"] > 0, key


def test_quantized_phone_slices_have_the_grown_row_counts(shipped) -> None:
    """The quantized QNN slices on the phones grew from 30-32 rows to 44-51 (issue 23); the w8a8
    slices now see attention in three fully-NPU rows (ViT, SegFormer, YOLO-World's text
    encoder), so a transformer gets a w8a8 estimate."""
    for dev in ("Samsung Galaxy S24", "Samsung Galaxy S25"):
        for precision, rows in (("w8a8", 44), ("w8a16", 51)):
            s = shipped.slices[f"{dev}|qnn|{precision}"]
            assert s.rows >= rows and s.families >= 24, (s.key, s.rows, s.families)
            assert {"attn_matmul", "softmax", "norm"} <= set(s.calibrated_classes), s.key


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
