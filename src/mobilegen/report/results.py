"""Typed results of an export. report.json is rendered from these (`to_dict`), never assembled
from dicts with temporary keys; readers of an old report.json still see the same keys."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mobilegen import __version__

REPORT_SCHEMA = 2  # 2: artifacts carry accelerator coverage (details.coverage)


@dataclass
class ArtifactResult:
    """One row of the report: an artifact, its parity against PyTorch, latency and gates."""

    artifact: str  # path relative to the output folder
    format: str
    target: str
    precision: str
    runnable: bool
    bytes: int
    details: dict[str, Any]
    gate_limits: dict[str, float | None] | None = None  # fp16/int8 rows: their own limits
    parity_per_timestep: list[dict[str, Any]] | None = None
    parity: dict[str, Any] | None = None  # the worst over timesteps
    latency: dict[str, Any] | None = None
    pytorch_latency: dict[str, Any] | None = None
    speedup_vs_pytorch: float | None = None
    end_to_end: dict[str, Any] | None = None  # image PSNR of a sampling run + its grid
    gates: list[str] = field(default_factory=list)  # this row's failed gates

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"artifact": self.artifact, "format": self.format,
                               "target": self.target, "precision": self.precision,
                               "runnable": self.runnable, "bytes": self.bytes,
                               "details": self.details}
        for key in ("gate_limits", "parity_per_timestep", "parity", "latency",
                    "pytorch_latency", "speedup_vs_pytorch", "end_to_end"):
            if (value := getattr(self, key)) is not None:
                out[key] = value
        out["gates"] = self.gates
        return out


@dataclass
class ExportReport:
    """Everything report.json says about one export."""

    recipe: dict[str, Any]  # name, path
    model: dict[str, Any]  # family, source, config, params, MACs, per-module costs, notes
    artifacts: list[ArtifactResult]
    passes: list[dict[str, Any]]
    gates: dict[str, Any]  # config + failures (text)
    sample_grids: dict[str, str]
    sections: dict[str, Any]  # optional [report] sections: blocks, estimates
    timings_s: dict[str, float]
    host: dict[str, Any]
    # step -> CPU seconds (the process and its reaped children): beside the wall seconds, so a
    # timing taken on a shared host can be read
    timings_cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def failures(self) -> list[str]:
        return list(self.gates["failures"])

    @property
    def status(self) -> str:
        return "gate_failed" if self.failures else "ok"

    def to_dict(self) -> dict[str, Any]:
        return json_safe({
            "schema_version": REPORT_SCHEMA,
            "tool": {"name": "mobilegen", "version": __version__},
            "recipe": self.recipe,
            "status": self.status,
            "model": self.model,
            "artifacts": [a.to_dict() for a in self.artifacts],
            "passes": self.passes,
            "gates": self.gates,
            "sample_grids": self.sample_grids,
            **self.sections,
            "timings_s": self.timings_s,
            "timings_cpu_s": self.timings_cpu_s,
            "host": self.host,
        })


def json_safe(obj: Any) -> Any:
    """NaN/inf -> null and numpy scalars -> Python, so report.json is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
