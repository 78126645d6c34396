"""The pre-listed ways to fit the quantized latency slices, scored once, and the choice among them.

Each candidate says how the w8a8 and the w8a16 QNN slices of a device are fitted (the float slice
is the shipped v2 NNLS model throughout). Every one is scored by leave-one-family-out (LOFO)
cross-validation on the Galaxy S24 and S25, with the same exclusion rule everywhere
(CalibrationSet.fit_rows: not held out, job passed, every layer on the NPU). The choice:

- per quantized precision, the candidate with the lowest score, the mean over the two phones of
  (median + p90) / 2 of its LOFO |error|;
- for w8a16 only among the candidates whose six SD-1.5 w8a16 estimates (fitted on every
  non-held-out row; the SD rows are never fitted) lie within 25% of the measured figures: the
  SD rows are a guard in this choice.

Third round (issue 23, after the zoo grew to 87 architectures, and again at 90): the same twelve
candidates and the same rule, re-scored on the new rows. The float slice's method is chosen the
same way, written down before it was scored (`--float`): F1 v2 NNLS (squared relative error,
what shipped before) or F2 v2 robust (absolute relative error), the lower mean over the S24 and
S25 float slices of (LOFO median + p90) / 2 (no SD guard: SD-1.5 has no float QNN row on the
phones).

Fourth round (issue 23, written down here before any of them was scored): a per-node roofline,
nn-Meter's kernel-level idea in the simplest form that keeps one inspectable price per term.
Every MAC node n (conv, dwconv, linear, attention matmul; `OpFeatures.mac_nodes`, counted per
node on the meta device) costs max(a_c * GMAC_n, b_w * weight MB_n + b_a * activation MB_n):
its class's compute time or its memory time, whichever is larger (a compute-bound node's bytes
are hidden behind its MACs, a memory-bound node's MACs behind its bytes); the rest is v2's
(non-MAC weight bytes at b_w, move / pointwise / norm MB, the three per-node overheads, the
constant). 13 coefficients >= 0, no hyperparameter: fitted by alternating a node's bound
(compute or memory, by the current coefficients; the first fit prices every MAC node as both)
with the NNLS refit, lf.ROOF_ITERS (30) times, keeping the iterate with the lowest true objective
(for the robust loss each refit is one IRLS step; for the log loss an L-BFGS polish of each
refit). Added candidates, scored by the same rule as the others:

- float (`--float`): F3 roofline, squared relative error; F4 roofline, robust (L1); F5 v2, log
  loss (the multiplicative error: log(pred / measured) squared; tried before only for the
  quantized slices); F6 roofline, log loss. The pick is the lowest score among F1-F6.
- quantized: Q13 roofline on the slice's own rows; Q14 the same, robust; Q15 roofline joint over
  the device's three precisions (compute prices and the constant per precision, bandwidths and
  node overheads shared, bytes at each precision's element sizes, as Q5); Q16 the same, robust;
  Q17 v2 joint (Q5), robust. The pick among Q1-Q17 by the rule above (w8a16 with the SD guard).

`--nested` also scores the choosing itself: each family is held out of everything, the rule
picks a candidate on the other families (their own LOFO), and that candidate predicts the family.
Its error is what the procedure, not one lucky candidate, gets out of sample.

    PYTHONPATH=src python scripts/latency_candidates.py [--nested] [--float]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from importlib.resources import files

import numpy as np
from scipy.optimize import minimize

from mobilegen.measure import latency_fit as lf

DEVICES = ("Samsung Galaxy S24", "Samsung Galaxy S25")
QUANT = ("w8a8", "w8a16")
SD_GOAL = 0.25
Predict = Callable[[lf.CalRow], float]
Fit = Callable[[lf.CalibrationSet, str, str, frozenset[str]], Predict]


def _rows(cal: lf.CalibrationSet, dev: str, prec: str, excl: frozenset[str]) -> list[lf.CalRow]:
    return [r for r in cal.fit_rows((dev, "qnn", prec)) if r.family not in excl]


def _x(cal: lf.CalibrationSet, rows: list[lf.CalRow], fset: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([lf.design_row(cal.features[r.features], r.precision, fset) for r in rows])
    return x, np.array([r.measured_ms for r in rows])


def _linear(cal: lf.CalibrationSet, coef: np.ndarray, fset: str) -> Predict:
    return lambda r: float(lf.design_row(cal.features[r.features], r.precision, fset) @ coef)


def _log_fit(a: np.ndarray, y: np.ndarray, start: np.ndarray, ridge: float = 0.0) -> np.ndarray:
    """c >= 0 minimising sum(log((a @ c) / y) ** 2) + ridge * sum((c - 1) ** 2), from `start`."""
    s = np.linalg.norm(a / y[:, None], axis=0)
    s[s == 0] = 1.0
    b = a / y[:, None] / s

    def f(u: np.ndarray) -> tuple[float, np.ndarray]:
        p = np.maximum(b @ u, 1e-9)
        lg = np.log(p)
        d = u / s - 1.0
        return float(lg @ lg + ridge * d @ d), b.T @ (2 * lg / p) + ridge * 2 * d / s

    res = minimize(f, start * s + 1e-6, jac=True, method="L-BFGS-B",
                   bounds=[(0, None)] * len(start))
    return res.x / s


def _groups(names: list[str], split_rest: bool) -> np.ndarray:
    """TRANSFER_GROUPS positions; with split_rest the byte terms get a group of their own."""
    idx = lf.transfer_index(names)
    if split_rest:
        idx = np.where([n.endswith("_mb") for n in names], idx.max() + 1, idx)
    return idx


def _factors(z: np.ndarray, y: np.ndarray, loss: str) -> np.ndarray:
    """Group factors >= 0 with the ridge toward 1 (lf.TRANSFER_RIDGE) under one loss."""
    k, rid = z.shape[1], np.sqrt(lf.TRANSFER_RIDGE)
    a = np.vstack([z / y[:, None], rid * np.eye(k)])
    b = np.concatenate([np.ones(len(y)), rid * np.ones(k)])
    s = lf.solve_nnls(a, b, len(y), robust=loss == "l1")
    return _log_fit(z, y, s, lf.TRANSFER_RIDGE) if loss == "log" else s


def transfer(loss: str = "rel", split_rest: bool = False, pooled: bool = False,
             robust_base: bool = False, fset: str = "v2") -> Fit:
    """The float model's term groups rescaled by factors fitted on the quantized rows; pooled:
    the w8a8 and w8a16 rows fitted together, MAC-class factors per precision, the rest and the
    constant shared."""
    def fit(cal: lf.CalibrationSet, dev: str, prec: str, excl: frozenset[str]) -> Predict:
        names = list(lf.FEATURE_SETS[fset])
        base = lf.nnls_fit(*_x(cal, _rows(cal, dev, "float", excl), fset), robust=robust_base)
        g = _groups(names, split_rest)
        k = int(g.max()) + 1

        def z(x: np.ndarray) -> np.ndarray:
            c = x * base
            return np.stack([c[:, g == j].sum(axis=1) for j in range(k)], 1)

        x, y = _x(cal, _rows(cal, dev, prec, excl), fset)
        if not pooled:
            s = _factors(z(x), y, loss)
        else:
            other = "w8a16" if prec == "w8a8" else "w8a8"
            xo, yo = _x(cal, _rows(cal, dev, other, excl), fset)
            nm, zq, zo = len(lf.MAC_CLASSES), z(x), z(xo)
            a = np.vstack([np.hstack([zq[:, :nm], 0 * zq[:, :nm], zq[:, nm:]]),
                           np.hstack([0 * zo[:, :nm], zo[:, :nm], zo[:, nm:]])])
            s = _factors(a, np.concatenate([y, yo]), loss)
            s = np.concatenate([s[:nm], s[2 * nm:]])
        return _linear(cal, base * s[g], fset)
    return fit


def direct(fset: str = "v1", robust: bool = False) -> Fit:
    """NNLS on the slice's own rows."""
    def fit(cal: lf.CalibrationSet, dev: str, prec: str, excl: frozenset[str]) -> Predict:
        return _linear(cal, lf.nnls_fit(*_x(cal, _rows(cal, dev, prec, excl), fset), robust),
                       fset)
    return fit


def joint(loss: str = "rel") -> Fit:
    """One v2 fit over a device's float, w8a8 and w8a16 rows: MAC coefficients and constant per
    precision, the byte and node coefficients shared (bytes at each precision's sizes)."""
    precs = ("float", "w8a8", "w8a16")

    def expand(i: int, x: np.ndarray) -> np.ndarray:
        nm, n = len(lf.MAC_CLASSES), len(x)
        mac, const = np.zeros((n, 3 * nm)), np.zeros((n, 3))
        mac[:, nm * i:nm * (i + 1)], const[:, i] = x[:, :nm], x[:, -1]
        return np.hstack([mac, x[:, nm:-1], const])

    def fit(cal: lf.CalibrationSet, dev: str, prec: str, excl: frozenset[str]) -> Predict:
        parts = [_x(cal, _rows(cal, dev, p, excl), "v2") for p in precs]
        a = np.vstack([expand(i, x) for i, (x, _) in enumerate(parts)])
        y = np.concatenate([y for _, y in parts])
        c = lf.nnls_fit(a, y)
        if loss == "log":
            c = _log_fit(a, y, c)
        i = precs.index(prec)
        return lambda r: float(expand(i, lf.design_row(cal.features[r.features], r.precision,
                                                       "v2")[None])[0] @ c)
    return fit



def roofline(loss: str = "rel", joint_fit: bool = False) -> Fit:
    """The per-node roofline on the slice's rows, or (joint_fit) on the device's three
    precisions' rows together."""
    def fit(cal: lf.CalibrationSet, dev: str, prec: str, excl: frozenset[str]) -> Predict:
        precs = lf.JOINT_PRECISIONS if joint_fit else (prec,)
        rows = [r for p in precs for r in _rows(cal, dev, p, excl)]
        roof = lf.Roofline([(cal.features[r.features], r.precision) for r in rows], joint_fit)
        c = lf.roofline_fit(roof, np.array([r.measured_ms for r in rows]), loss,
                            _log_fit if loss == "log" else None)
        return lambda r: float(lf.Roofline([(cal.features[r.features], r.precision)],
                                           joint_fit).predict(c)[0])
    return fit


def joint_robust() -> Fit:
    """Q5 with the robust (L1) loss."""
    precs = ("float", "w8a8", "w8a16")

    def fit(cal: lf.CalibrationSet, dev: str, prec: str, excl: frozenset[str]) -> Predict:
        parts = [_x(cal, _rows(cal, dev, p, excl), "v2") for p in precs]
        a = np.vstack([lf._joint_expand(i, x) for i, (x, _) in enumerate(parts)])
        c = lf.nnls_fit(a, np.concatenate([y for _, y in parts]), robust=True)
        i = precs.index(prec)
        return lambda r: float(lf._joint_expand(i, lf.design_row(cal.features[r.features],
                                                                 r.precision, "v2")[None])[0] @ c)
    return fit


def log_direct(fset: str = "v2") -> Fit:
    """The slice's own rows, minimising sum(log(pred / measured) ** 2) (from the NNLS fit)."""
    def fit(cal: lf.CalibrationSet, dev: str, prec: str, excl: frozenset[str]) -> Predict:
        x, y = _x(cal, _rows(cal, dev, prec, excl), fset)
        return _linear(cal, _log_fit(x, y, lf.nnls_fit(x, y)), fset)
    return fit


def _both(f: Fit) -> dict[str, Fit]:
    return dict.fromkeys(QUANT, f)


# the list, in the order it was written and scored (Q12 was added after Q1-Q11 had been scored)
CANDIDATES: dict[str, dict[str, Fit]] = {
    "Q1 before: w8a8 v2 transfer, w8a16 v1 direct": {"w8a8": transfer(), "w8a16": direct()},
    "Q2 v2 transfer": _both(transfer()),
    "Q3 v2 transfer, log loss": _both(transfer("log")),
    "Q4 v2 transfer, bytes and nodes apart (7 factors)": _both(transfer(split_rest=True)),
    "Q5 joint fit over the three precisions": _both(joint()),
    "Q6 joint fit, log loss": _both(joint("log")),
    "Q7 pooled transfer (w8a8 + w8a16 share rest and constant)": _both(transfer(pooled=True)),
    "Q8 v2 transfer, robust (L1) factors": _both(transfer("l1")),
    "Q9 robust float base + robust factors": _both(transfer("l1", robust_base=True)),
    "Q10 pooled transfer, robust factors": _both(transfer("l1", pooled=True)),
    "Q11 v1 direct, robust": _both(direct(robust=True)),
    "Q12 v2 + spill term, transfer, robust factors": _both(transfer("l1", fset="v2s")),
    # fourth round (listed before scoring)
    "Q13 roofline per node, own rows": _both(roofline()),
    "Q14 roofline per node, own rows, robust": _both(roofline("l1")),
    "Q15 roofline per node, joint over the three precisions": _both(roofline(joint_fit=True)),
    "Q16 roofline per node, joint, robust": _both(roofline("l1", joint_fit=True)),
    "Q17 joint fit over the three precisions, robust": _both(joint_robust()),
}


# the float slice's two candidates (third round, --float)
FLOAT_CANDIDATES: dict[str, Fit] = {"F1 v2 NNLS (squared)": direct("v2"),
                                    "F2 v2 robust (L1)": direct("v2", robust=True),
                                    # fourth round (listed before scoring)
                                    "F3 roofline per node": roofline(),
                                    "F4 roofline per node, robust (L1)": roofline("l1"),
                                    "F5 v2, log loss": log_direct(),
                                    "F6 roofline per node, log loss": roofline("log")}


_ERRS: dict[tuple[int, str, str, frozenset[str]], dict[str, float]] = {}


def _errors(cal: lf.CalibrationSet, f: Fit, dev: str, prec: str,
            excl: frozenset[str]) -> dict[str, float]:
    """The relative error of every row of the slice, by a fit without the families `excl`
    (memoised: the nested choice refits each pair of held-out families many times)."""
    key = (id(f), dev, prec, excl)
    if key not in _ERRS:
        pred = f(cal, dev, prec, excl)
        _ERRS[key] = {r.name: pred(r) / r.measured_ms - 1
                      for r in _rows(cal, dev, prec, frozenset())}
    return _ERRS[key]


def _cv(cal: lf.CalibrationSet, f: Fit, dev: str, prec: str,
        excl: frozenset[str]) -> list[float]:
    rows, errs = _rows(cal, dev, prec, excl), []
    for fam in sorted({r.family for r in rows}):
        e = _errors(cal, f, dev, prec, excl | {fam})
        errs += [e[r.name] for r in rows if r.family == fam]
    return errs


def _med_p90(errs: list[float]) -> tuple[float, float]:
    return lf.percentile_abs(errs, 50), lf.percentile_abs(errs, 90)


def score(cal: lf.CalibrationSet, name: str, prec: str, excl: frozenset[str]) -> float:
    return float(np.mean([sum(_med_p90(_cv(cal, CANDIDATES[name][prec], d, prec, excl))) / 2
                          for d in DEVICES]))


def sd_errors(cal: lf.CalibrationSet, name: str) -> list[tuple[str, str, float]]:
    out = []
    for r in cal.rows:
        if r.held_out and r.model == "stable_diffusion_v1_5" and r.precision == "w8a16" \
                and r.device in DEVICES and r.runtime == "qnn_context_binary":
            pred = CANDIDATES[name]["w8a16"](cal, r.device, "w8a16", frozenset())
            out.append((r.device, r.component, pred(r) / r.measured_ms - 1))
    return out


def choose(cal: lf.CalibrationSet, prec: str, allowed: list[str],
           excl: frozenset[str] = frozenset()) -> str:
    return min(allowed, key=lambda n: score(cal, n, prec, excl))


def score_float(cal: lf.CalibrationSet, nested: bool) -> None:
    """The float candidates' LOFO on both phones, the rule's pick, and its nested LOFO."""
    def fscore(name: str, excl: frozenset[str]) -> float:
        f = FLOAT_CANDIDATES[name]
        return float(np.mean([sum(_med_p90(_cv(cal, f, d, "float", excl))) / 2
                              for d in DEVICES]))

    print("| float candidate | S24 med / p90 | S25 med / p90 | score |\n|---|---:|---:|---:|")
    for name, f in FLOAT_CANDIDATES.items():
        cells = [_med_p90(_cv(cal, f, d, "float", frozenset())) for d in DEVICES]
        print(f"| {name} | " + " | ".join(f"{100 * m:.1f} / {100 * q:.1f}" for m, q in cells)
              + f" | {100 * fscore(name, frozenset()):.1f} |")
    print("chosen:", min(FLOAT_CANDIDATES, key=lambda n: fscore(n, frozenset())))
    if not nested:
        return
    fams = sorted({r.family for d in DEVICES for r in _rows(cal, d, "float", frozenset())})
    errs: dict[str, list[float]] = {d: [] for d in DEVICES}
    picked: dict[str, int] = {}
    for fam in fams:
        excl = frozenset({fam})
        best = min(FLOAT_CANDIDATES, key=lambda n: fscore(n, excl))
        picked[best.split()[0]] = picked.get(best.split()[0], 0) + 1
        for d in DEVICES:
            e = _errors(cal, FLOAT_CANDIDATES[best], d, "float", excl)
            errs[d] += [e[r.name] for r in _rows(cal, d, "float", frozenset()) if r.family == fam]
    for d in DEVICES:
        m, q = _med_p90(errs[d])
        print(f"nested {d[-3:]} float: {len(errs[d])} rows, median {100 * m:.1f}%, "
              f"p90 {100 * q:.1f}%")
    print(f"  picked per outer fold: {picked}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nested", action="store_true", help="also score the choosing (slow)")
    ap.add_argument("--float", action="store_true", help="score the float slice's candidates")
    args = ap.parse_args()
    # "v2s": v2 plus v1's spill term (Q12)
    lf.FEATURE_SETS["v2s"] = (*lf.FEATURE_SETS["v2"][:-1], "spill_mb", "const")
    lf.MOVE_CLASSES["v2s"], lf.POINTWISE_CLASSES["v2s"] = lf.MOVE_CLASSES["v2"], \
        lf.POINTWISE_CLASSES["v2"]
    text = (files("mobilegen") / "data" / "latency" / "calibration.json").read_text()
    cal = lf.CalibrationSet.from_dict(json.loads(text))
    if args.float:
        score_float(cal, args.nested)
        return
    print("| candidate | " + " | ".join(f"{d[-3:]} {p} med / p90" for p in QUANT
                                        for d in DEVICES)
          + " | w8a8 score | w8a16 score | SD-1.5 worst |")
    print("|---|" + "---:|" * 7)
    sd_ok = []
    for name in CANDIDATES:
        cells = [_med_p90(_cv(cal, CANDIDATES[name][p], d, p, frozenset()))
                 for p in QUANT for d in DEVICES]
        worst = max(abs(e) for *_, e in sd_errors(cal, name))
        if worst <= SD_GOAL:
            sd_ok.append(name)
        scores = [np.mean([(m + q) / 2 for m, q in cells[2 * i:2 * i + 2]]) for i in range(2)]
        print(f"| {name} | " + " | ".join(f"{100 * m:.1f} / {100 * q:.1f}" for m, q in cells)
              + f" | {100 * scores[0]:.1f} | {100 * scores[1]:.1f} | {100 * worst:.1f}% |",
              flush=True)
    picks = {"w8a8": choose(cal, "w8a8", list(CANDIDATES)),
             "w8a16": choose(cal, "w8a16", sd_ok)}
    print(f"\nSD-1.5 within {100 * SD_GOAL:.0f}%: {', '.join(n.split()[0] for n in sd_ok)}")
    print(f"chosen: w8a8 {picks['w8a8']}; w8a16 {picks['w8a16']}")
    for name in CANDIDATES:
        if name.split()[0] in ("Q1", "Q8", "Q9"):
            print(name.split()[0], "SD-1.5:", ", ".join(f"{d[-3:]} {c} {100 * e:+.1f}%"
                                                        for d, c, e in sd_errors(cal, name)))
    if not args.nested:
        return
    for prec, allowed in (("w8a8", list(CANDIDATES)), ("w8a16", list(CANDIDATES)),
                          ("w8a16", sd_ok)):
        fams = sorted({r.family for d in DEVICES for r in _rows(cal, d, prec, frozenset())})
        errs: dict[str, list[float]] = {d: [] for d in DEVICES}
        picked: dict[str, int] = {}
        for fam in fams:
            excl = frozenset({fam})
            best = choose(cal, prec, allowed, excl)
            picked[best.split()[0]] = picked.get(best.split()[0], 0) + 1
            for d in DEVICES:
                e = _errors(cal, CANDIDATES[best][prec], d, prec, excl)
                errs[d] += [e[r.name] for r in _rows(cal, d, prec, frozenset())
                            if r.family == fam]
        guard = " (SD guard)" if allowed is sd_ok else ""
        for d in DEVICES:
            m, q = _med_p90(errs[d])
            print(f"nested {d[-3:]} {prec}{guard}: {len(errs[d])} rows, median {100 * m:.1f}%, "
                  f"p90 {100 * q:.1f}%", flush=True)
        print(f"  picked per outer fold: {picked}")


if __name__ == "__main__":
    main()
