"""Gates: one check for artifact rows, module passes and the pipeline chain. A failure is a typed
value that knows what it belongs to; its text is the line users see (and CI greps)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mobilegen.recipe import Gates
    from mobilegen.report.results import ArtifactResult


@dataclass(frozen=True)
class GateFailure:
    subject: str  # "cpu/denoiser.onnx", "pass relu_attention", "chain:onnx/fp32", "unet/..."
    gate: str  # "min_psnr_db", ...
    value: float
    limit: float
    higher_is_better: bool

    def __str__(self) -> str:
        op = ">=" if self.higher_is_better else "<="
        return (f"{self.subject}: {self.gate} {self.value:.4g} (needs {op} {self.limit:g}, "
                f"off by {abs(self.value - self.limit):.4g})")


def check(subject: str, gate: str, value: float | None, limit: float | None,
          higher_is_better: bool) -> GateFailure | None:
    """None when the gate is unset or met. A missing value (None) is infinite quality (PSNR of
    identical outputs); NaN always fails."""
    if limit is None:
        return None
    v = math.inf if value is None else float(value)
    bad = v < limit if higher_is_better else v > limit
    return GateFailure(subject, gate, v, limit, higher_is_better) if bad or math.isnan(v) else None


def artifact_failures(row: ArtifactResult, gates: Gates) -> list[GateFailure]:
    """fp16/int8 rows carry their precision's limits (passes/precision_gates.py); the latency
    gate applies to every timed row as written (a simulated NPU row has no latency: qnn.py)."""
    if not row.runnable or row.parity is None:
        return []
    lim: dict[str, Any] = row.gate_limits or gates.model_dump()
    par, art = row.parity, row.artifact
    found = [
        check(art, "min_step_psnr_db", par["psnr_db"], lim["min_step_psnr_db"], True),
        check(art, "min_cosine", par["cosine"], lim["min_cosine"], True),
        check(art, "max_abs_error", par["max_abs_error"], lim["max_abs_error"], False),
    ]
    if row.latency is not None:
        found.append(check(art, "max_latency_ms", row.latency["median_ms"], gates.max_latency_ms,
                           False))
    if row.end_to_end is not None:
        found.append(check(art, "min_psnr_db", row.end_to_end["psnr_db"], lim["min_psnr_db"],
                           True))
    if "fp16_safety" in row.details:  # headroom to 65504 left in fp16 (passes/fp16_safety.py)
        found.append(check(art, "min_fp16_headroom", row.details["fp16_safety"][
            "min_headroom_after"], lim.get("min_fp16_headroom"), True))
    return [f for f in found if f is not None]


@dataclass(frozen=True)
class DelegationFailure(GateFailure):
    """`require_full_delegation`: the vendor tool says the profile's accelerator does not take
    the whole graph. value/limit are supported/total nodes; the text names the blocking ops."""

    accelerator: str = ""
    tool: str = ""
    blocking_ops: tuple[str, ...] = ()

    def __str__(self) -> str:
        nodes = "" if math.isnan(self.value) else f" ({self.value:g}/{self.limit:g} nodes)"
        ops = ", ".join(self.blocking_ops) or "no op named (see the coverage note)"
        return (f"{self.subject}: require_full_delegation: {self.accelerator} does not run the "
                f"whole graph{nodes}; blocking ops: {ops} [{self.tool}]")


def delegation_failures(row: ArtifactResult, accelerator: str | None) -> list[GateFailure]:
    """The row's coverage entry for `accelerator` (targets/coverage.py) must be "full". An
    "unknown" verdict (the tool cannot tell on this host) is reported, not failed; a row without
    coverage (.ort twin of an .onnx, a skipped precision) is not judged; a row with coverage but
    no entry for the accelerator fails (nothing said it runs there)."""
    coverage = row.details.get("coverage")
    if accelerator is None or not coverage:
        return []
    found = [e for e in coverage if e["accelerator"] == accelerator]
    if not found:
        return [DelegationFailure(row.artifact, "require_full_delegation", math.nan, math.nan,
                                  True, accelerator, "no vendor check reported on it")]
    e = found[0]
    if e["verdict"] in ("full", "unknown"):
        return []
    supported = math.nan if e["supported_nodes"] is None else e["supported_nodes"]
    total = math.nan if e["total_nodes"] is None else e["total_nodes"]
    return [DelegationFailure(row.artifact, "require_full_delegation", supported, total, True,
                              accelerator, e["tool"], tuple(e["unsupported_ops"]))]
