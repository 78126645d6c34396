"""Linear latency models fitted on Qualcomm's published device measurements (qai-hub-models).

One model per (device, runtime, precision), the way SnapFusion's latency table and nn-Meter add
per-operator costs:

    ms = sum over op classes c of (a_c * GMAC_c + b_c * MB_c) + k * (nodes / 1000) + d

with MB_c the weight and activation bytes of class c at the precision's element sizes, every
coefficient >= 0 (non-negative least squares), each row weighted by 1 / measured ms so that the
fit minimises relative, not absolute, error (squared, or its absolute value: FitMethod.robust).
The error every estimate carries is the leave-one-family-out cross-validation: each family
(a model and its sizes together: ResNet-18/50/101, Swin-T/S/B, ...) is predicted by a fit that
never saw it. Rows flagged `held_out` (stable diffusion, controlnet) are never in any fit: they
are the test.
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
# The two term sets ("v1": the first model; "v2": concatenation free, layer norm and layout-copy
# nodes priced apart, no spill term).
FEATURE_SETS = {
    "v1": ("conv_gmac", "dwconv_gmac", "linear_gmac", "attn_matmul_gmac", "weight_mb",
           "spill_mb", "move_mb", "pointwise_mb", "mac_knodes", "other_knodes", "const"),
    "v2": ("conv_gmac", "dwconv_gmac", "linear_gmac", "attn_matmul_gmac", "weight_mb",
           "move_mb", "pointwise_mb", "norm_mb", "mac_knodes", "move_knodes", "other_knodes",
           "const"),
    # the per-node roofline (Roofline): the GMAC of the compute-bound MAC nodes per class; the
    # weight MB of the memory-bound MAC nodes and of every other op; the activation MB of the
    # memory-bound MAC nodes; then v2's rest
    "r1": ("conv_gmac", "dwconv_gmac", "linear_gmac", "attn_matmul_gmac", "weight_mb",
           "mac_act_mb", "move_mb", "pointwise_mb", "norm_mb", "mac_knodes", "move_knodes",
           "other_knodes", "const"),
}
ROOFLINE_SETS = frozenset({"r1"})
ROOF_ITERS = 30  # alternations of node bounds and refits (fixed before scoring, never tuned)


@dataclass(frozen=True)
class FitMethod:
    """How the slices of one precision are fitted."""

    terms: str  # a FEATURE_SETS key
    # a quantized precision: its device's float model rescaled per term group (transfer_fit)
    transfer: bool = False
    # minimise the absolute relative error (L1, by IRLS) instead of its square, for the float
    # model transferred from and for the factors: one far-off row pulls every coefficient less
    robust: bool = False
    # a transfer whose factors are fitted on this precision's rows and the other quantized
    # precision's together: the MAC-class factors per precision, the rest and the constant shared
    pooled: bool = False
    # one fit over the device's float, w8a8 and w8a16 rows: MAC coefficients and the constant per
    # precision, the byte and node coefficients shared (bytes at each precision's element sizes)
    joint: bool = False


# Each precision's method: the pick of a rule stated before scoring, among pre-listed candidates,
# by the leave-one-family-out score of the S24 and S25 slices (README, "Device latency
# estimates", with the nested-CV figure of each choice; scripts/latency_candidates.py), fourth
# round (90 architectures): float the per-node roofline (F3), w8a8 the pooled transfer of the v2
# float model (Q7), w8a16 the robust joint fit over the three precisions (Q17: of the two of the
# seventeen whose six held-out SD-1.5 w8a16 estimates lie within 25%, the lower score; the SD rows
# are a guard in that choice, not an untouched test).
METHODS = {"float": FitMethod("r1"),
           "w8a8": FitMethod("v2", transfer=True, pooled=True),
           "w8a16": FitMethod("v2", joint=True, robust=True)}
QUANTIZED = ("w8a8", "w8a16")
JOINT_PRECISIONS = ("float", "w8a8", "w8a16")
PRECISION_FEATURES = {p: m.terms for p, m in METHODS.items()}
# the classes whose activation bytes make up move_mb / pointwise_mb in each set
MOVE_CLASSES = {"v1": ("data_movement", "pool_resize", "concat"),
                "v2": ("data_movement", "pool_resize")}  # v2: HTP writes a concat in place
POINTWISE_CLASSES = {"v1": ("elementwise", "activation", "softmax", "norm"),
                     "v2": ("elementwise", "activation", "softmax")}
# the groups of terms a quantized slice rescales from its device's float model (transfer_fit):
# each MAC class, the rest (bytes and nodes), the constant
TRANSFER_GROUPS = {**{c: [f"{c}_gmac"] for c in MAC_CLASSES}, "rest": [], "const": ["const"]}
TRANSFER_RIDGE = 0.3  # chosen by the cross-validation (README), among 0, 0.01, 0.03, 0.1, 0.3, 1, 3
# robust fits: a row's IRLS weight is 1 / max(|relative residual|, ROBUST_FLOOR), so rows within
# 5% weigh alike and the weights stay finite; ROBUST_ITERS reweightings (deterministic)
ROBUST_FLOOR = 0.05
ROBUST_ITERS = 40


def feature_names(precision: str) -> list[str]:
    """The model's terms for a precision (PRECISION_FEATURES)."""
    return list(FEATURE_SETS[PRECISION_FEATURES[precision]])


def _terms(feats: OpFeatures, precision: str, fset: str) -> dict[str, float]:
    wb, ab = ELEMENT_BYTES[precision]
    cls = feats.classes
    mac_nodes = sum(cls[c].nodes for c in MAC_CLASSES) / 1e3
    move_nodes = cls["data_movement"].nodes / 1e3 if fset != "v1" else 0.0
    return {**{f"{c}_gmac": cls[c].macs / 1e9 for c in MAC_CLASSES},
            "weight_mb": sum(c.weight_elems for c in cls.values()) * wb / 1e6,
            "spill_mb": sum(c.spill_elems for c in cls.values()) * ab / 1e6,
            "move_mb": sum(cls[c].act_elems for c in MOVE_CLASSES[fset]) * ab / 1e6,
            "pointwise_mb": sum(cls[c].act_elems for c in POINTWISE_CLASSES[fset]) * ab / 1e6,
            "norm_mb": cls["norm"].act_elems * ab / 1e6,
            "mac_knodes": mac_nodes, "move_knodes": move_nodes,
            "other_knodes": feats.nodes / 1e3 - mac_nodes - move_nodes, "const": 1.0}


def design_row(feats: OpFeatures, precision: str, fset: str | None = None,
               coef: np.ndarray | None = None) -> np.ndarray:
    """One row of the design matrix in the order of the set's names: GMAC per MAC class; MB of
    weights (every class); of activations in tensors too large for on-chip memory (`spill`, v1);
    of layout copies / pooling / resize (`move`; v1 counts concatenation here too, v2 leaves it
    out: HTP writes each input into the output in place); of elementwise / activation / softmax
    ops (`pointwise`; v1 adds layer norms, v2 prices them apart as `norm`: a reduction over each
    token's channels, far slower per byte; group norm is elementwise in both); thousands of
    nodes of MAC ops, of layout copies (v2) and of the rest; 1. A roofline set (r1) needs the
    coefficients `coef` to tell each MAC node's bound (None: every node priced as both)."""
    fset = fset or PRECISION_FEATURES[precision]
    if fset in ROOFLINE_SETS:
        return Roofline([(feats, precision)]).design(coef)[0]
    terms = _terms(feats, precision, fset)
    return np.array([terms[n] for n in FEATURE_SETS[fset]])


def used_classes(feats: OpFeatures) -> set[str]:
    return {c for c in OP_CLASSES if feats.classes[c].nodes > 0}


def _mac_node_arrays(feats: OpFeatures) -> tuple[np.ndarray, ...]:
    """(class index, GMAC, weight Melems, activation Melems, count) of every distinct MAC node;
    features without per-node counts (built by hand) give one node per MAC class, its totals."""
    nodes = sorted(feats.mac_nodes.items()) or [
        ((c, feats.classes[c].macs, feats.classes[c].weight_elems, feats.classes[c].act_elems), 1)
        for c in MAC_CLASSES if feats.classes[c].nodes]
    cls = np.array([MAC_CLASSES.index(k[0]) for k, _ in nodes], dtype=int)
    arr = np.array([[k[1] / 1e9, k[2] / 1e6, k[3] / 1e6, n] for k, n in nodes]).reshape(-1, 4)
    return (cls, *arr.T)


class Roofline:
    """The per-node roofline design (term set r1) of a list of (features, precision) items,
    vectorised over their MAC nodes. A MAC node n of class c costs
    max(a_c * GMAC_n, b_w * weight MB_n + b_a * activation MB_n), its compute or its memory
    time, whichever is larger; every other op as in v2 (non-MAC weight MB at b_w, move /
    pointwise / norm MB, the per-node overheads, the constant). `joint`: MAC prices and the
    constant per JOINT_PRECISIONS entry, the rest shared."""

    def __init__(self, items: list[tuple[OpFeatures, str]], joint: bool = False):
        self.n, self.joint = len(items), joint
        parts, rest = [], np.zeros((self.n, 8))
        for i, (feats, prec) in enumerate(items):
            cls, g, w, a, cnt = _mac_node_arrays(feats)
            wb, ab = ELEMENT_BYTES[prec]
            parts.append((np.full(len(cls), i), cls, g, w * wb, a * ab, cnt))
            v2 = _terms(feats, prec, "v2")
            rest[i] = [v2["weight_mb"] - float(cnt @ (w * wb)), v2["move_mb"],
                       v2["pointwise_mb"], v2["norm_mb"], v2["mac_knodes"], v2["move_knodes"],
                       v2["other_knodes"], 1.0]
        self.item, self.cls, self.g, self.w, self.a, self.cnt = (
            np.concatenate(c) for c in zip(*parts, strict=True))
        self.item, self.cls = self.item.astype(int), self.cls.astype(int)
        self.rest = rest
        self.p = np.array([JOINT_PRECISIONS.index(p) for _, p in items])

    def per_item(self, c: np.ndarray) -> np.ndarray:
        """Each item's r1 coefficients from the fitted vector."""
        k = len(FEATURE_SETS["r1"])
        if not self.joint:
            return np.broadcast_to(c, (self.n, k))
        nm, np_ = len(MAC_CLASSES), len(JOINT_PRECISIONS)
        mac = c[:np_ * nm].reshape(np_, nm)[self.p]
        const = c[-np_:][self.p][:, None]
        shared = np.broadcast_to(c[np_ * nm:-np_], (self.n, k - nm - 1))
        return np.hstack([mac, shared, const])

    def design(self, c: np.ndarray | None) -> np.ndarray:
        """Rows in r1 order (joint: expanded); c None prices every MAC node as both bounds."""
        if c is None:
            comp = mem = np.ones(len(self.g), bool)
        else:
            ci = self.per_item(c)
            tc = ci[self.item, self.cls] * self.g
            tm = ci[self.item, 4] * self.w + ci[self.item, 5] * self.a
            comp = tc >= tm
            mem = ~comp
        nm, n = len(MAC_CLASSES), self.n
        macs = np.bincount(self.item * nm + self.cls, self.cnt * self.g * comp,
                           minlength=n * nm).reshape(n, nm)
        wmb = self.rest[:, 0] + np.bincount(self.item, self.cnt * self.w * mem, minlength=n)
        amb = np.bincount(self.item, self.cnt * self.a * mem, minlength=n)
        x = np.hstack([macs, wmb[:, None], amb[:, None], self.rest[:, 1:]])
        if not self.joint:
            return x
        np_ = len(JOINT_PRECISIONS)
        mac, const = np.zeros((n, np_ * nm)), np.zeros((n, np_))
        for j in range(np_):
            mac[self.p == j, nm * j:nm * (j + 1)] = x[self.p == j, :nm]
            const[self.p == j, j] = 1.0
        return np.hstack([mac, x[:, nm:-1], const])

    def predict(self, c: np.ndarray) -> np.ndarray:
        return self.design(c) @ c


def _roof_loss(pred: np.ndarray, y: np.ndarray, loss: str) -> float:
    r = pred / y
    if loss == "log":
        return float(np.sum(np.log(np.maximum(r, 1e-9)) ** 2))
    return float(np.sum(np.abs(r - 1))) if loss == "l1" else float(np.sum((r - 1) ** 2))


def roofline_fit(roof: Roofline, y: np.ndarray, loss: str = "rel",
                 polish: Any = None) -> np.ndarray:
    """Coefficients >= 0 of the roofline on relative error (loss "rel": squared, "l1":
    absolute, "log": log(pred / measured) squared, `polish` then refining each NNLS refit).
    The max makes it no linear problem: the first fit prices every MAC node as both bounds;
    then ROOF_ITERS times each node's bound is read off the current coefficients and the
    coefficients refitted by NNLS with those bounds (for "l1" one IRLS step); the iterate with
    the lowest true objective is returned (deterministic)."""
    c = nnls_fit(roof.design(None), y, robust=loss == "l1")
    best, best_c = _roof_loss(roof.predict(c), y, loss), c
    for _ in range(ROOF_ITERS):
        a = roof.design(c)
        if loss == "l1":
            w = 1.0 / np.maximum(np.abs(a @ c / y - 1), ROBUST_FLOOR)
            c = _nnls(a / y[:, None] * np.sqrt(w)[:, None], np.sqrt(w))
        else:
            c = nnls_fit(a, y)
            if polish is not None:
                c = polish(a, y, c)
        got = _roof_loss(roof.predict(c), y, loss)
        if got < best:
            best, best_c = got, c
    return best_c


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


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin ||a c - b|| over c >= 0, the columns scaled to unit norm for the solver."""
    from scipy.optimize import nnls

    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(a / scale, b, maxiter=50 * a.shape[1])
    return coef / scale


def solve_nnls(a: np.ndarray, b: np.ndarray, n_rows: int, robust: bool) -> np.ndarray:
    """NNLS on a relative system (row i of the first n_rows: (x_i @ c) / y_i ~ 1; any rows
    after them are a ridge). Robust: iteratively reweighted so that the first n_rows' sum of
    |relative error| is minimised instead of its square; the ridge rows keep weight 1."""
    coef = _nnls(a, b)
    if not robust:
        return coef
    w = np.ones(len(b))
    for _ in range(ROBUST_ITERS):
        w[:n_rows] = 1.0 / np.maximum(np.abs(a[:n_rows] @ coef - b[:n_rows]), ROBUST_FLOOR)
        coef = _nnls(a * np.sqrt(w)[:, None], b * np.sqrt(w))
    return coef


def nnls_fit(x: np.ndarray, y: np.ndarray, robust: bool = False) -> np.ndarray:
    """Coefficients >= 0 minimising the relative squared error sum(((x @ c) / y - 1) ** 2), or
    with `robust` the relative absolute error sum(|(x @ c) / y - 1|)."""
    return solve_nnls(x / y[:, None], np.ones(len(y)), len(y), robust)


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
    # a quantized slice: the factors its device's float model was rescaled by (transfer_fit)
    float_scales: dict[str, float] = field(default_factory=dict)
    # ... and that float model (fitted with this slice's loss, so not always the float slice's)
    float_base: dict[str, float] = field(default_factory=dict)

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
        coef = np.array([self.coefficients[n] for n in feature_names(self.precision)])
        return float(design_row(feats, self.precision, coef=coef) @ coef)

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "runtime": self.runtime, "precision": self.precision,
                "coefficients": self.coefficients, "rows": self.rows,
                "families": self.families, "calibrated_classes": self.calibrated_classes,
                "gmac_range": list(self.gmac_range), "op_types": self.op_types,
                "float_scales": self.float_scales, "float_base": self.float_base,
                "cv_median_abs_err_pct": round(100 * self.median_abs_err, 1),
                "cv_p90_abs_err_pct": round(100 * self.p90_abs_err, 1),
                "cv": [{**asdict(c), "error_pct": round(100 * c.error, 1)} for c in self.cv]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SliceModel:
        cv = [CVRow(c["name"], c["family"], c["measured_ms"], c["predicted_ms"])
              for c in d["cv"]]
        return cls(d["device"], d["runtime"], d["precision"], d["coefficients"], d["rows"],
                   d["families"], d["calibrated_classes"], tuple(d["gmac_range"]),
                   d["op_types"], cv, d.get("float_scales", {}), d.get("float_base", {}))


def _design(rows: list[CalRow], feats: dict[str, OpFeatures], fset: str | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """The rows' design in term set `fset` (default: each row's precision's set; a linear set)."""
    x = np.stack([design_row(feats[r.features], r.precision, fset) for r in rows])
    return x, np.array([r.measured_ms for r in rows])


def transfer_fit(base: np.ndarray, x: np.ndarray, y: np.ndarray, names: list[str],
                 robust: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A quantized slice from its device's float model `base`: the float model's terms at the
    quantized element sizes, grouped (TRANSFER_GROUPS: one group per MAC class, the byte and node
    terms together, the constant), each group rescaled by one factor >= 0. The factors minimise
    the relative squared (`robust`: absolute) error on the quantized rows plus
    TRANSFER_RIDGE * sum((s - 1) ** 2),
    a pull toward "costs as in float at these element sizes" that keeps a factor from
    collapsing where the quantized rows cannot tell two groups apart. Six numbers are fitted
    instead of twelve: the small quantized slices borrow the float slice's op-class structure.
    Returns (coefficients, the factors in TRANSFER_GROUPS order)."""
    idx = transfer_index(names)
    contrib = x * base
    z = np.stack([contrib[:, idx == g].sum(axis=1) for g in range(len(TRANSFER_GROUPS))], 1)
    k = z.shape[1]
    a = np.vstack([z / y[:, None], np.sqrt(TRANSFER_RIDGE) * np.eye(k)])
    b = np.concatenate([np.ones(len(y)), np.sqrt(TRANSFER_RIDGE) * np.ones(k)])
    scales = solve_nnls(a, b, len(y), robust)
    return base * scales[idx], scales


def transfer_index(names: list[str]) -> np.ndarray:
    """The TRANSFER_GROUPS position of every term."""
    groups = list(TRANSFER_GROUPS.values())
    rest = list(TRANSFER_GROUPS).index("rest")
    return np.array([next((i for i, g in enumerate(groups) if n in g), rest)
                     for n in names])


def _solve_factors(z: np.ndarray, y: np.ndarray, robust: bool) -> np.ndarray:
    """Group factors >= 0 on relative error plus TRANSFER_RIDGE * sum((s - 1) ** 2)."""
    k = z.shape[1]
    a = np.vstack([z / y[:, None], np.sqrt(TRANSFER_RIDGE) * np.eye(k)])
    b = np.concatenate([np.ones(len(y)), np.sqrt(TRANSFER_RIDGE) * np.ones(k)])
    return solve_nnls(a, b, len(y), robust)


def _joint_expand(i: int, x: np.ndarray) -> np.ndarray:
    """A v2 design block of precision JOINT_PRECISIONS[i] in the joint fit's columns: MAC terms
    and the constant in that precision's own columns, the byte and node terms shared."""
    nm, n = len(MAC_CLASSES), len(x)
    k = len(JOINT_PRECISIONS)
    mac, const = np.zeros((n, k * nm)), np.zeros((n, k))
    mac[:, nm * i:nm * (i + 1)], const[:, i] = x[:, :nm], x[:, -1]
    return np.hstack([mac, x[:, nm:-1], const])


def _fit(cal: CalibrationSet, key: tuple[str, str, str], excl: frozenset[str] = frozenset()
         ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Fit one slice by its precision's METHODS entry on every fit row whose family is not in
    `excl` (held out of every precision the method reads). Returns (coefficients, the transfer
    factors or None, the float model they rescale or None)."""
    dev, rt, precision = key
    method = METHODS[precision]

    def rows(p: str) -> list[CalRow]:
        return [r for r in cal.fit_rows((dev, rt, p)) if r.family not in excl]

    if method.terms in ROOFLINE_SETS:
        got = rows(precision)
        roof = Roofline([(cal.features[r.features], r.precision) for r in got])
        y = np.array([r.measured_ms for r in got])
        return roofline_fit(roof, y, "l1" if method.robust else "rel"), None, None
    x, y = _design(rows(precision), cal.features, method.terms)
    if method.joint:
        blocks, ys = [], []
        for i, p in enumerate(JOINT_PRECISIONS):
            got = rows(p)
            if got:
                xp, yp = _design(got, cal.features, method.terms)
                blocks.append(_joint_expand(i, xp))
                ys.append(yp)
        c = nnls_fit(np.vstack(blocks), np.concatenate(ys), method.robust)
        i, nm, k = JOINT_PRECISIONS.index(precision), len(MAC_CLASSES), len(JOINT_PRECISIONS)
        rest = c[k * nm:k * nm + x.shape[1] - nm - 1]
        return np.concatenate([c[nm * i:nm * (i + 1)], rest, [c[-k + i]]]), None, None
    float_rows = _float_rows(cal, key, excl)
    if float_rows is None:
        return nnls_fit(x, y, method.robust), None, None
    # the float model a transfer rescales: refitted in the transfer's own (linear) term set on
    # the float rows, whatever the float slice's own method
    base = nnls_fit(*_design(float_rows, cal.features, method.terms), robust=method.robust)
    names = feature_names(precision)
    if not method.pooled:
        coef, scales = transfer_fit(base, x, y, names, method.robust)
        return coef, scales, base
    idx = transfer_index(names)
    groups = len(TRANSFER_GROUPS)

    def z(xx: np.ndarray) -> np.ndarray:
        contrib = xx * base
        return np.stack([contrib[:, idx == g].sum(axis=1) for g in range(groups)], 1)

    other = rows(next(q for q in QUANTIZED if q != precision))
    nm = len(MAC_CLASSES)
    zq = z(x)
    a, yy = np.hstack([zq[:, :nm], 0 * zq[:, :nm], zq[:, nm:]]), y
    if other:
        yo = np.array([r.measured_ms for r in other])
        zo = z(np.stack([design_row(cal.features[r.features], r.precision, method.terms)
                         for r in other]))
        a = np.vstack([a, np.hstack([0 * zo[:, :nm], zo[:, :nm], zo[:, nm:]])])
        yy = np.concatenate([y, yo])
    s = _solve_factors(a, yy, method.robust)
    scales = np.concatenate([s[:nm], s[2 * nm:]])
    return base * scales[idx], scales, base


def _float_rows(cal: CalibrationSet, key: tuple[str, str, str],
                excl: frozenset[str] = frozenset()) -> list[CalRow] | None:
    """The float rows a quantized slice transfers from (its families `excl` left out); None for a
    float slice, for a precision not fitted by transfer (METHODS) or when the device's float
    slice is too small to fit on its own."""
    if key[2] == "float" or not METHODS[key[2]].transfer:
        return None
    rows = cal.fit_rows((key[0], key[1], "float"))
    if len(rows) < MIN_ROWS or len({r.family for r in rows}) < MIN_FAMILIES:
        return None
    return [r for r in rows if r.family not in excl]


def fit_slice(cal: CalibrationSet, key: tuple[str, str, str]) -> SliceModel | None:
    """Fit one (device, runtime, precision) and cross-validate it leaving one family out (out of
    every row its method reads: the float rows a quantized slice transfers from, the other
    precisions of a pooled or joint fit); None when the slice has too few rows or families to
    say anything."""
    rows = cal.fit_rows(key)
    families = sorted({r.family for r in rows})
    if len(rows) < MIN_ROWS or len(families) < MIN_FAMILIES:
        return None
    names = feature_names(key[2])
    coef, scales, base_coef = _fit(cal, key)
    cv = []
    for fam in families:
        c, _, _ = _fit(cal, key, frozenset({fam}))
        for r in rows:
            if r.family == fam:
                pred = float(design_row(cal.features[r.features], r.precision, coef=c) @ c)
                cv.append(CVRow(r.name, fam, r.measured_ms, pred))
    counts = {c: sum(1 for r in rows if c in used_classes(cal.features[r.features]))
              for c in OP_CLASSES}
    gmacs = [cal.features[r.features].macs / 1e9 for r in rows]
    return SliceModel(key[0], key[1], key[2], dict(zip(names, map(float, coef), strict=True)),
                      len(rows), len(families),
                      [c for c in OP_CLASSES if counts[c] >= MIN_CLASS_ROWS],
                      (min(gmacs), max(gmacs)),
                      sorted({op for r in rows for op in cal.features[r.features].op_types}),
                      sorted(cv, key=lambda c: c.name),
                      {} if scales is None else
                      dict(zip(TRANSFER_GROUPS, map(float, scales), strict=True)),
                      {} if base_coef is None else
                      dict(zip(names, map(float, base_coef), strict=True)))


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
        return {"qai_hub_models_version": self.version,
                "features": {p: feature_names(p) for p in ELEMENT_BYTES},
                "methods": {p: asdict(m) for p, m in METHODS.items()},
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
    """One table per term set; a transferred slice's factors in the last column, and the float
    model they rescale on the row below it (robust methods fit it with their own loss)."""
    lines: list[str] = []
    for fset, names in FEATURE_SETS.items():
        slices = [s for s in models.slices.values() if PRECISION_FEATURES[s.precision] == fset]
        if not slices:
            continue
        precisions = ", ".join(sorted({s.precision for s in slices}))
        lines += [*([""] if lines else []), f"terms {fset} ({precisions})",
                  "| slice | " + " | ".join(names) + " | float factors |",
                  "|---|" + "---:|" * len(names) + "---|"]
        for s in slices:
            scales = ", ".join(f"{k} {v:.2f}" for k, v in s.float_scales.items()) or "-"
            lines.append(f"| {s.key} | " + " | ".join(f"{s.coefficients[n]:.4g}" for n in names)
                         + f" | {scales} |")
            if s.float_base:
                loss = "robust " if METHODS[s.precision].robust else ""
                lines.append(f"| ({loss}float model it rescales) | "
                             + " | ".join(f"{s.float_base[n]:.4g}" for n in names) + " | - |")
    return "\n".join(lines)
