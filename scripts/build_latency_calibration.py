"""Build mobilegen's latency calibration set from Qualcomm's published device measurements.

Reads the `models/*/perf.yaml` and `devices_and_chipsets.yaml` files of an installed
`qai-hub-models` wheel (data only: install it with
`pip install --no-deps qai-hub-models==0.65.0`; the package is never imported, so its own
dependencies are not needed), builds every architecture scripts/latency_zoo.py knows on the `meta`
device, counts its per-op-class features (mobilegen.measure.opclasses) and writes:

- src/mobilegen/data/latency/calibration.json: one row per measurement on the devices the target
  profiles name, each with its provenance (model, component, device, chipset, runtime, precision,
  measured ms, AI Hub job id, tool versions, qai-hub-models version) and the features of its
  architecture. Stable-diffusion / controlnet rows are flagged `held_out` and never fitted.
- src/mobilegen/data/latency/coefficients.json: the fitted linear models and their
  leave-one-family-out error (mobilegen.measure.latency_fit).

    PYTHONPATH=src python scripts/build_latency_calibration.py [--print]
    PYTHONPATH=src python scripts/build_latency_calibration.py --refit [--print]

`--refit` skips the wheel and the zoo: it refits coefficients.json from the shipped
calibration.json (after a change to the fit, not to the rows or their features).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import latency_zoo

from mobilegen.measure import latency_fit
from mobilegen.measure.opclasses import count_features

DATA = Path(__file__).resolve().parents[1] / "src" / "mobilegen" / "data" / "latency"
# the devices the Snapdragon target profiles correspond to (latency_fit.PROFILE_DEVICES)
DEVICES = ("Samsung Galaxy S24", "Samsung Galaxy S25", "QCS8550 (Proxy)")
# QNN on the NPU (what the Snapdragon profiles compile) and TFLite; the ONNX Runtime rows are left
# out to keep the package data small (no profile prices ORT-on-QNN apart from QNN)
RUNTIMES = ("qnn_dlc", "qnn_context_binary", "tflite")


def wheel_root() -> Path:
    """The installed qai_hub_models folder, found without importing it (its __init__ needs
    qai_hub, which is not installed)."""
    spec = importlib.util.find_spec("qai_hub_models")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("qai-hub-models is not installed: pip install --no-deps "
                         "qai-hub-models==0.65.0")
    return Path(next(iter(spec.submodule_search_locations)))


def device_table(root: Path) -> dict[str, dict[str, Any]]:
    d = yaml.safe_load((root / "devices_and_chipsets.yaml").read_text())
    out = {}
    for name in DEVICES:
        chip = d["devices"][name]["chipset"]
        c = d["chipsets"][chip]
        out[name] = {"chipset": chip, "soc_model": c["soc_model"],
                     "htp_version": c.get("htp_version")}
    return out


def measurements(root: Path, entry: latency_zoo.ZooEntry, devices: dict[str, Any],
                 version: str) -> list[dict[str, Any]]:
    """Every perf.yaml timing of one (model, component) on DEVICES, with its provenance."""
    path = root / "models" / entry.model_id / "perf.yaml"
    perf = yaml.safe_load(path.read_text())
    rows = []
    for precision, pd in (perf.get("precisions") or {}).items():
        comp = ((pd.get("components") or {}).get(entry.component) or {})
        for device, per_rt in (comp.get("performance_metrics") or {}).items():
            if device not in devices:
                continue
            for runtime, m in per_rt.items():
                if runtime not in RUNTIMES or "inference_time_milliseconds" not in m:
                    continue
                lc = m.get("layer_counts", {})
                rows.append({
                    "model": entry.model_id, "component": entry.component,
                    "family": entry.family, "device": device,
                    "chipset": devices[device]["chipset"], "runtime": runtime,
                    "precision": precision,
                    "measured_ms": float(m["inference_time_milliseconds"]),
                    "job_id": m["job_id"], "job_status": m.get("job_status"),
                    "primary_compute_unit": m.get("primary_compute_unit"),
                    "layers_npu": lc.get("npu", 0), "layers_total": lc.get("total", 0),
                    "qairt": m.get("tool_versions", {}).get("qairt"),
                    "qai_hub_models_version": version, "held_out": entry.held_out,
                })
    return rows


def build(root: Path) -> dict[str, Any]:
    version = importlib.metadata.version("qai-hub-models")
    devices = device_table(root)
    rows, features = [], {}
    for entry in latency_zoo.entries():
        found = measurements(root, entry, devices, version)
        if not found:
            print(f"  {entry.model_id}/{entry.component}: no measurement on {DEVICES}")
            continue
        model, inputs = entry.build()
        key = f"{entry.model_id}/{entry.component}"
        features[key] = {"source": entry.source, **count_features(model, inputs).to_dict()}
        for r in found:
            r["features"] = key
        rows += found
    return {"about": "Qualcomm AI Hub measurements (qai-hub-models perf.yaml) of the "
                     "architectures mobilegen builds; features counted by "
                     "mobilegen.measure.opclasses on random-weight models",
            "qai_hub_models_version": version, "devices": devices,
            "source": f"qai-hub-models=={version}: qai_hub_models/models/<model>/perf.yaml, "
                      "precisions.<precision>.components.<component>.performance_metrics."
                      "<device>.<runtime>.inference_time_milliseconds",
            "features": features, "rows": rows}


def dump_lines(data: dict[str, Any]) -> str:
    """Compact JSON with one row (and one architecture) per line: small, and diffs read."""
    def items(d: dict[str, Any]) -> list[str]:
        return [f"{json.dumps(k)}:{json.dumps(v, sort_keys=True, separators=(',', ':'))}"
                for k, v in d.items()]
    head = items({k: v for k, v in data.items() if k not in ("features", "rows")})
    rows = ",\n".join(json.dumps(r, sort_keys=True, separators=(",", ":")) for r in data["rows"])
    feats = ",\n".join(items(data["features"]))
    return ("{" + ",\n".join(head) + ',\n"features":{\n' + feats + '\n},\n"rows":[\n' + rows
            + "\n]}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--print", action="store_true", help="print the coefficient tables")
    ap.add_argument("--refit", action="store_true",
                    help="refit from the shipped calibration.json (no wheel needed)")
    args = ap.parse_args()
    if args.refit:
        data = json.loads((DATA / "calibration.json").read_text())
    else:
        data = build(wheel_root())
        DATA.mkdir(parents=True, exist_ok=True)
        (DATA / "calibration.json").write_text(dump_lines(data))
    models = latency_fit.fit_all(latency_fit.CalibrationSet.from_dict(data))
    (DATA / "coefficients.json").write_text(json.dumps(models.to_dict(), indent=1) + "\n")
    n = len(data["rows"])
    print(f"{n} rows, {len(data['features'])} architectures -> {DATA}")
    print(latency_fit.render_cv(models))
    if args.print:
        print(latency_fit.render_coefficients(models))


if __name__ == "__main__":
    main()
