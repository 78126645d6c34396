"""Linear latency models fitted on Qualcomm's published device measurements (qai-hub-models).

One model per (device, runtime, precision), the way SnapFusion's latency table and nn-Meter add
per-operator costs:

    ms = sum over op classes c of (a_c * GMAC_c + b_c * MB_c) + k * (nodes / 1000) + d

with MB_c the weight and activation bytes of class c at the precision's element sizes, every
coefficient >= 0 (non-negative least squares), each row weighted by 1 / measured ms so that the
fit minimises relative, not absolute, error. The error every estimate carries is the
leave-one-family-out cross-validation: each family (a model and its sizes together: ResNet-18/50/
101, Swin-T/S/B, ...) is predicted by a fit that never saw it. Rows flagged `held_out` (stable
diffusion, controlnet) are never in any fit: they are the test.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mobilegen.measure.opclasses import OP_CLASSES, OpFeatures

MAC_CLASSES = ("conv", "dwconv", "linear", "attn_matmul")
# bytes per (weight, activation) element on the HTP for each published precision ("float" runs
# in fp16 on the NPU)
ELEMENT_BYTES = {"float": (2.0, 2.0), "w8a16": (1.0, 2.0), "w8a8": (1.0, 1.0)}
# the runtimes pooled into one fit: a DLC and a context binary run the same QNN HTP graph
RUNTIME_GROUPS = {"qnn_dlc": "qnn", "qnn_context_binary": "qnn", "tflite": "tflite",
                  "onnx": "onnx"}
MIN_ROWS = 12  # a slice with fewer fitted rows, or fewer families, gets no model
MIN_FAMILIES = 4
MIN_CLASS_ROWS = 3  # an op class is calibrated when at least this many rows exercise it
MOVE_CLASSES = ("data_movement", "pool_resize")
POINTWISE_CLASSES = ("elementwise", "activation")


def feature_names() -> list[str]:
    """The model's terms. Chosen among nine candidate sets by the mean leave-one-family-out
    error over the six Galaxy S24 / S25 QNN slices, never by the held-out SD rows (README)."""
    return ([f"{c}_gmac" for c in MAC_CLASSES]
            + ["weight_mb", "spill_mb", "move_mb", "pointwise_mb", "mac_knodes",
               "other_knodes", "const"])


def design_row(feats: OpFeatures, precision: str) -> np.ndarray:
    """One row of the design matrix: GMAC per MAC class; MB of weights (every class), of
    activations in tensors too large for on-chip memory (`spill`), of layout / pooling /
    resize ops (`move`) and of elementwise / activation ops (`pointwise`); thousands of nodes
    of MAC ops and of the rest; 1."""
    wb, ab = ELEMENT_BYTES[precision]
    cls = feats.classes
    macs = [cls[c].macs / 1e9 for c in MAC_CLASSES]
    weight = sum(c.weight_elems for c in cls.values()) * wb / 1e6
    spill = sum(c.spill_elems for c in cls.values()) * ab / 1e6
    move = sum(cls[c].act_elems for c in MOVE_CLASSES) * ab / 1e6
    pointwise = sum(cls[c].act_elems for c in POINTWISE_CLASSES) * ab / 1e6
    mac_nodes = sum(cls[c].nodes for c in MAC_CLASSES) / 1e3
    other_nodes = feats.nodes / 1e3 - mac_nodes
    return np.array([*macs, weight, spill, move, pointwise, mac_nodes, other_nodes, 1.0])


def used_classes(feats: OpFeatures) -> set[str]:
    return {c for c in OP_CLASSES if feats.classes[c].nodes > 0}


@dataclass(frozen=True)
class CalRow:
    model: str
    component: str
    family: str
    device: str
    runtime: str
    precision: str
    measured_ms: float
    job_id: str
    features: str  # key into CalibrationSet.features
    held_out: bool
    fully_npu: bool  # every layer on the NPU, job passed

    @property
    def slice(self) -> tuple[str, str, str]:
        return (self.device, RUNTIME_GROUPS[self.runtime], self.precision)

    @property
    def name(self) -> str:
        return self.features


@dataclass
class CalibrationSet:
    rows: list[CalRow]
    features: dict[str, OpFeatures]
    version: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CalibrationSet:
        rows = []
        for r in d["rows"]:
            full = (r.get("job_status") == "Passed" and r.get("primary_compute_unit") == "NPU"
                    and r["layers_npu"] == r["layers_total"] > 0)
            rows.append(CalRow(r["model"], r["component"], r["family"], r["device"],
                               r["runtime"], r["precision"], r["measured_ms"], r["job_id"],
                               r["features"], r["held_out"], full))
        feats = {k: OpFeatures.from_dict(v) for k, v in d["features"].items()}
        return cls(rows, feats, d["qai_hub_models_version"])

    def fit_rows(self, key: tuple[str, str, str]) -> list[CalRow]:
        """The rows a slice is fitted on: not held out, fully on the NPU, one per architecture
        (a DLC row preferred over a context binary of the same model)."""
        out: dict[str, CalRow] = {}
        for r in self.rows:
            usable = r.slice == key and not r.held_out and r.fully_npu
            if usable and (r.name not in out or r.runtime == "qnn_dlc"):
                out[r.name] = r
        return list(out.values())


def nnls_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Coefficients >= 0 minimising the relative squared error sum(((x @ c) / y - 1) ** 2)."""
    from scipy.optimize import nnls

    a = x / y[:, None]
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(a / scale, np.ones(len(y)), maxiter=50 * x.shape[1])
    return coef / scale


@dataclass(frozen=True)
class CVRow:
    name: str
    family: str
    measured_ms: float
    predicted_ms: float

    @property
    def error(self) -> float:
        return (self.predicted_ms - self.measured_ms) / self.measured_ms


def percentile_abs(errors: list[float], q: float) -> float:
    return float(np.percentile(np.abs(errors), q)) if errors else float("nan")


@dataclass
class SliceModel:
    device: str
    runtime: str
    precision: str
    coefficients: dict[str, float]
    rows: int
    families: int
    calibrated_classes: list[str]
    gmac_range: tuple[float, float]
    op_types: list[str] = field(default_factory=list)  # aten ops some fitted row used
    cv: list[CVRow] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.device}|{self.runtime}|{self.precision}"

    @property
    def median_abs_err(self) -> float:
        return percentile_abs([c.error for c in self.cv], 50)

    @property
    def p90_abs_err(self) -> float:
        return percentile_abs([c.error for c in self.cv], 90)

    def predict(self, feats: OpFeatures) -> float:
        coef = np.array([self.coefficients[n] for n in feature_names()])
        return float(design_row(feats, self.precision) @ coef)

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "runtime": self.runtime, "precision": self.precision,
                "coefficients": self.coefficients, "rows": self.rows,
                "families": self.families, "calibrated_classes": self.calibrated_classes,
                "gmac_range": list(self.gmac_range), "op_types": self.op_types,
                "cv_median_abs_err_pct": round(100 * self.median_abs_err, 1),
                "cv_p90_abs_err_pct": round(100 * self.p90_abs_err, 1),
                "cv": [{**asdict(c), "error_pct": round(100 * c.error, 1)} for c in self.cv]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SliceModel:
        cv = [CVRow(c["name"], c["family"], c["measured_ms"], c["predicted_ms"])
              for c in d["cv"]]
        return cls(d["device"], d["runtime"], d["precision"], d["coefficients"], d["rows"],
                   d["families"], d["calibrated_classes"], tuple(d["gmac_range"]),
                   d["op_types"], cv)


def _fit(rows: list[CalRow], feats: dict[str, OpFeatures]) -> np.ndarray:
    x = np.stack([design_row(feats[r.features], r.precision) for r in rows])
    return nnls_fit(x, np.array([r.measured_ms for r in rows]))


def fit_slice(cal: CalibrationSet, key: tuple[str, str, str]) -> SliceModel | None:
    """Fit one (device, runtime, precision) and cross-validate it leaving one family out;
    None when the slice has too few rows or families to say anything."""
    rows = cal.fit_rows(key)
    families = sorted({r.family for r in rows})
    if len(rows) < MIN_ROWS or len(families) < MIN_FAMILIES:
        return None
    names = feature_names()
    coef = _fit(rows, cal.features)
    cv = []
    for fam in families:
        train = [r for r in rows if r.family != fam]
        c = _fit(train, cal.features)
        for r in rows:
            if r.family == fam:
                pred = float(design_row(cal.features[r.features], r.precision) @ c)
                cv.append(CVRow(r.name, fam, r.measured_ms, pred))
    counts = {c: sum(1 for r in rows if c in used_classes(cal.features[r.features]))
              for c in OP_CLASSES}
    gmacs = [cal.features[r.features].macs / 1e9 for r in rows]
    return SliceModel(key[0], key[1], key[2], dict(zip(names, map(float, coef), strict=True)),
                      len(rows), len(families),
                      [c for c in OP_CLASSES if counts[c] >= MIN_CLASS_ROWS],
                      (min(gmacs), max(gmacs)),
                      sorted({op for r in rows for op in cal.features[r.features].op_types}),
                      sorted(cv, key=lambda c: c.name))


@dataclass(frozen=True)
class HeldOutScore:
    slice_key: str
    name: str
    runtime: str
    job_id: str
    measured_ms: float
    predicted_ms: float

    @property
    def error(self) -> float:
        return (self.predicted_ms - self.measured_ms) / self.measured_ms


@dataclass
class LatencyModels:
    version: str
    slices: dict[str, SliceModel]
    held_out: list[HeldOutScore]

    def to_dict(self) -> dict[str, Any]:
        return {"qai_hub_models_version": self.version, "features": feature_names(),
                "units": "ms per GMAC (_gmac), per MB (_mb), per 1000 nodes (knodes), ms (const)",
                "slices": {k: s.to_dict() for k, s in self.slices.items()},
                "held_out": [{**asdict(h), "error_pct": round(100 * h.error, 1)}
                             for h in self.held_out]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyModels:
        held = [HeldOutScore(h["slice_key"], h["name"], h["runtime"], h["job_id"],
                             h["measured_ms"], h["predicted_ms"]) for h in d["held_out"]]
        return cls(d["qai_hub_models_version"],
                   {k: SliceModel.from_dict(v) for k, v in d["slices"].items()}, held)


def fit_all(cal: CalibrationSet) -> LatencyModels:
    """Every slice with enough rows; the held-out rows scored by their slice's model."""
    slices = {}
    for key in sorted({r.slice for r in cal.rows if r.precision in ELEMENT_BYTES}):
        model = fit_slice(cal, key)
        if model is not None:
            slices[model.key] = model
    held = []
    for r in cal.rows:
        k = "|".join(r.slice)
        if r.held_out and k in slices:
            held.append(HeldOutScore(k, r.name, r.runtime, r.job_id, r.measured_ms,
                                     slices[k].predict(cal.features[r.features])))
    return LatencyModels(cal.version, slices, held)


def render_cv(models: LatencyModels) -> str:
    lines = ["| device | runtime | precision | rows | families | median abs err | p90 abs err |",
             "|---|---|---|---:|---:|---:|---:|"]
    for s in models.slices.values():
        lines.append(f"| {s.device} | {s.runtime} | {s.precision} | {s.rows} | {s.families} | "
                     f"{100 * s.median_abs_err:.1f}% | {100 * s.p90_abs_err:.1f}% |")
    lines += ["", "| held out (never fitted) | slice | measured ms | estimate ms | error |",
              "|---|---|---:|---:|---:|"]
    for h in models.held_out:
        lines.append(f"| {h.name} ({h.runtime}, job {h.job_id}) | {h.slice_key} | "
                     f"{h.measured_ms:.2f} | {h.predicted_ms:.2f} | {100 * h.error:+.1f}% |")
    return "\n".join(lines)


def render_coefficients(models: LatencyModels) -> str:
    names = feature_names()
    lines = ["| slice | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for k, s in models.slices.items():
        lines.append(f"| {k} | " + " | ".join(f"{s.coefficients[n]:.4g}" for n in names) + " |")
    return "\n".join(lines)
