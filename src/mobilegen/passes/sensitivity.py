"""Layer sensitivity for static int8, and the plan that keeps the most sensitive layers float.

Each layer (or block) that static int8 would quantize is quantized alone, with the same options
as the artifact (passes/int8.py), and the model's output is compared with the fp32 ONNX model's
over the validation feeds: the worst per-feed PSNR is that layer's score (lower = more
sensitive). Calibration runs once (onnxruntime's calibration cache) and serves every layer.

The plan starts from everything quantized and keeps the most sensitive layer float, then the
next, until the worst per-step PSNR reaches `target_step_psnr_db` (or nothing is left to keep),
and reports which layers stay float, what that costs in weight bytes, and where it ended.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mobilegen.passes.precision import PrecisionSpec
from mobilegen.targets.onnx_precision import Layer, quantize_static_nodes, static_selection


@dataclass
class LayerScore:
    layer: str  # module path, or the block ("blocks.3") at block granularity
    ops: str  # op types in it ("MatMul x6")
    weights: int  # weight values it holds (int8 saves 3 bytes each)
    step_psnr_db: float  # worst over the validation feeds, only this layer quantized
    mean_psnr_db: float


def _session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def outputs(path: Path, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    session = _session(path)
    return [session.run(None, f)[0] for f in feeds]


def psnrs(ref: list[np.ndarray], got: list[np.ndarray]) -> list[float]:
    from mobilegen.measure.parity import compare

    return [compare(r, g).psnr_db for r, g in zip(ref, got, strict=True)]


def group_of(path: str, granularity: str) -> str:
    """'blocks.3.mlp.fc2' -> itself per layer; 'blocks.3' per block; 'stem.2' -> 'stem'."""
    if granularity == "layer":
        return path
    parts = path.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]


def _weight_counts(model: Any) -> dict[str, int]:
    return {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}


@dataclass
class Study:
    """One fp32 model, its quantizable layers, feeds and reference outputs; quantizes subsets."""

    fp32: Path
    spec: PrecisionSpec
    calibration: list[dict[str, np.ndarray]]
    validation: list[dict[str, np.ndarray]]
    work: Path

    def __post_init__(self) -> None:
        import onnx

        model = onnx.load(str(self.fp32), load_external_data=False)
        self.layers, self.kept = static_selection(model, replace(self.spec, keep_float=()))
        counts = _weight_counts(model)
        node_b = {n.name: n.input[1] for n in model.graph.node if len(n.input) > 1}
        self.weights = {x.node: counts.get(node_b[x.node], 0) for x in self.layers}
        self.reference = outputs(self.fp32, self.validation)
        self.cache = self.work / "calibration.json"
        self.runs = 0

    def quantized(self, layers: list[Layer]) -> tuple[list[float], Path]:
        """Per-feed PSNR with exactly `layers` quantized, and the model's path."""
        self.runs += 1
        out = self.work / f"q{self.runs % 2}.onnx"
        quantize_static_nodes(self.fp32, out, self.spec, [x.node for x in layers],
                              self.calibration, False, self.cache)
        return psnrs(self.reference, outputs(out, self.validation)), out


def layer_sensitivity(study: Study, granularity: str = "layer",
                      run_trials: Callable[[list[list[Any]]], list[list[float]]] | None = None,
                      ) -> list[LayerScore]:
    """One score per layer (or block), most sensitive first. `run_trials` maps each group's
    layers to its per-feed PSNRs (default: one after another here; export/ray_tasks.py runs them
    as Ray tasks)."""
    groups: dict[str, list[Layer]] = {}
    for layer in study.layers:
        groups.setdefault(group_of(layer.path, granularity), []).append(layer)
    run = run_trials or (lambda sets: [study.quantized(m)[0] for m in sets])
    trials = run(list(groups.values()))
    scores = []
    for (name, members), p in zip(groups.items(), trials, strict=True):
        ops = sorted({m.op for m in members})
        scores.append(LayerScore(name, " ".join(f"{o} x{sum(m.op == o for m in members)}"
                                                for o in ops),
                                 sum(study.weights[m.node] for m in members), min(p),
                                 float(np.mean(p))))
    return sorted(scores, key=lambda s: s.step_psnr_db)


def greedy_plan(study: Study, scores: list[LayerScore], target_db: float,
                granularity: str = "layer") -> dict[str, Any]:
    """Keep the most sensitive groups float, one at a time, until the worst step PSNR with the
    rest quantized reaches `target_db`."""
    keep: list[str] = []
    trail = []
    for k in range(len(scores) + 1):
        keep = [s.layer for s in scores[:k]]
        chosen = [x for x in study.layers if group_of(x.path, granularity) not in keep]
        p, _ = study.quantized(chosen)
        trail.append({"kept_float": k, "step_psnr_db": round(min(p), 2)})
        if min(p) >= target_db:
            break
    float_weights = sum(s.weights for s in scores if s.layer in keep)
    return {"target_step_psnr_db": target_db, "met": trail[-1]["step_psnr_db"] >= target_db,
            "keep_float": keep, "achieved_step_psnr_db": trail[-1]["step_psnr_db"],
            "quantized_groups": len(scores) - len(keep), "granularity": granularity,
            "extra_bytes_vs_all_int8": 3 * float_weights, "trail": trail,
            "validation_feeds": len(study.validation)}


def plan_for_target(fp32: Path, spec: PrecisionSpec, calibration: list[dict[str, np.ndarray]],
                    validation: list[dict[str, np.ndarray]] | None = None) -> dict[str, Any]:
    """The plan an int8 static pass with `target_step_psnr_db` uses (layer granularity). Scored
    on `validation`, or on the calibration feeds themselves when none are given (the export pass
    has only those: they are the sampler's own trajectory, stratified over t)."""
    assert spec.target_step_psnr_db is not None
    with tempfile.TemporaryDirectory(prefix="mobilegen-sensitivity-") as tmp:
        study = Study(fp32, spec, calibration, validation or calibration, Path(tmp))
        scores = layer_sensitivity(study)
        plan = greedy_plan(study, scores, spec.target_step_psnr_db)
    plan["scored_on"] = "validation feeds" if validation else "calibration trajectory feeds"
    plan["most_sensitive"] = [asdict(s) for s in scores[:8]]
    return plan
