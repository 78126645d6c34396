"""The typed result of a pipeline export (export/chain.py): report.json and report.md are rendered
from these, never assembled from dicts; the keys are the ones report.json has always had."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from mobilegen import __version__
from mobilegen.report.results import json_safe

PIPELINE_SCHEMA = 1


class Typed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArtifactSummary(Typed):
    artifact: str  # relative to the pipeline's OUT
    format: str
    precision: str
    runnable: bool
    median_ms: float | None
    step_psnr_db: float | None


class ComponentSummary(Typed):
    """One component's row, its own report.json having the full figures."""

    dir: str
    report: str
    status: str
    family: str
    init: str
    params: int
    gmac: float
    image_size: int | None
    artifacts: list[ArtifactSummary]
    gate_failures: list[str]

    @classmethod
    def of(cls, slot: str, report: dict[str, Any]) -> ComponentSummary:
        m = report["model"]
        return cls(dir=slot, report=f"{slot}/report.json", status=report["status"],
                   family=m["family"], init=m["init"], params=m["params"], gmac=m["gmac"],
                   image_size=m["image_size"],
                   artifacts=[ArtifactSummary(
                       artifact=f"{slot}/{r['artifact']}", format=r["format"],
                       precision=r["precision"], runnable=r["runnable"],
                       median_ms=(r.get("latency") or {}).get("median_ms"),
                       step_psnr_db=(r.get("parity") or {}).get("psnr_db"))
                       for r in report["artifacts"]],
                   gate_failures=report["gates"]["failures"])


class ChainRow(Typed):
    """The chain through one (format, precision) of every component, against PyTorch."""

    format: str
    precision: str
    artifacts: dict[str, str]  # slot -> artifact path under OUT (report.json: <slot>_artifact)
    max_abs_error: float
    mean_abs_error: float
    cosine: float
    psnr_db: float | None  # None: identical (then `identical` is true)
    identical: bool = False
    grid: str
    finite: bool

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": self.format, "precision": self.precision,
                             **{f"{s}_artifact": a for s, a in self.artifacts.items()},
                             "max_abs_error": self.max_abs_error,
                             "mean_abs_error": self.mean_abs_error, "cosine": self.cosine,
                             "psnr_db": self.psnr_db}
        if self.identical:
            d["identical"] = True
        return {**d, "grid": self.grid, "finite": self.finite}


class ChainReport(Typed):
    reference: str
    prompt: str | None = None  # text-to-image only
    negative_prompt: str | None = None
    images: int
    image_shape: list[int]
    pytorch_grid: str
    rows: list[ChainRow]
    unpaired_artifacts: list[str]
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"reference": self.reference}
        if self.prompt is not None:
            d |= {"prompt": self.prompt, "negative_prompt": self.negative_prompt}
        d |= {"images": self.images, "image_shape": self.image_shape,
              "pytorch_grid": self.pytorch_grid, "rows": [r.to_dict() for r in self.rows],
              "unpaired_artifacts": self.unpaired_artifacts}
        return d | ({"note": self.note} if self.note is not None else {})


class PipelineReport(Typed):
    """Everything report.json says about a pipeline export."""

    kind: Literal["pipeline"] = "pipeline"
    recipe: dict[str, str]  # name, path
    components: dict[str, ComponentSummary]
    chain: ChainReport
    layouts: list[dict[str, Any]] = Field(default_factory=list)  # LayoutResult.to_dict()
    # what quantized components calibrated on (export/chain_calibration.py); None: nothing did
    calibration: dict[str, Any] | None = None
    gates: dict[str, Any]  # config + failures (text)
    notes: list[str]
    timings_s: dict[str, float]
    host: dict[str, Any]

    @property
    def failures(self) -> list[str]:
        return list(self.gates["failures"])

    @computed_field  # type: ignore[prop-decorator]
    @property
    def status(self) -> str:
        return "gate_failed" if self.failures else "ok"

    def to_dict(self) -> dict[str, Any]:
        return json_safe({
            "schema_version": PIPELINE_SCHEMA, "kind": self.kind,
            "tool": {"name": "mobilegen", "version": __version__},
            "recipe": self.recipe, "status": self.status,
            "components": {s: c.model_dump() for s, c in self.components.items()},
            "chain": self.chain.to_dict(),
            **({"layouts": self.layouts} if self.layouts else {}),
            **({"calibration": self.calibration} if self.calibration else {}),
            "gates": self.gates, "notes": self.notes, "timings_s": self.timings_s,
            "host": self.host,
        })

    def markdown(self) -> str:
        lines = [f"# Pipeline export: {self.recipe['name']}", "", f"Status: **{self.status}**",
                 "", "## Components", "", "| slot | family | init | params | GMAC | status |",
                 "|---|---|---|---|---|---|"]
        for slot, c in self.components.items():
            lines.append(f"| [{slot}]({c.report}) | {c.family} | {c.init} | {c.params:,} | "
                         f"{c.gmac:.3f} | {c.status} |")
        ch = self.chain
        lines += ["", "## Chain (UNet sampler -> latents / scaling -> decoder)", "",
                  f"Reference: {ch.reference}; {ch.images} images of shape "
                  f"{tuple(ch.image_shape)}; grid [{ch.pytorch_grid}]({ch.pytorch_grid})"
                  + (f"; prompt {ch.prompt!r}, negative {ch.negative_prompt!r}."
                     if ch.prompt is not None else "."),
                  "", "| format | precision | image PSNR dB | max abs err | grid |",
                  "|---|---|---|---|---|"]
        for r in ch.rows:
            psnr = "inf" if r.psnr_db is None else f"{r.psnr_db:.2f}"
            lines.append(f"| {r.format} | {r.precision} | {psnr} | {r.max_abs_error:.3g} | "
                         f"[{r.grid}]({r.grid}) |")
        lines += _layout_lines(self.layouts)
        if self.failures:
            lines += ["", "## Gate failures", ""] + [f"- {f}" for f in self.failures]
        lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _layout_lines(layouts: list[dict[str, Any]]) -> list[str]:
    if not layouts:
        return []
    lines = ["", "## Consumer layouts", "", "| layout | folder | consumer | checks passed |",
             "|---|---|---|---|"]
    for lr in layouts:
        ok = sum(c["passed"] for c in lr["checks"])
        lines.append(f"| {lr['layout']} | {lr['dir']} | {lr['consumer']} | "
                     f"{ok} / {len(lr['checks'])} |")
    return lines
