"""The terminal summary (report/summary.py): one line per artifact that fits 80 columns, short
verdicts, long notes as numbered footnotes; the wide layout from 120 columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from mobilegen.report.summary import WIDE, single_summary


def _render(parts, width: int) -> list[str]:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    for p in parts:
        console.print(p, highlight=False)
    return [line.rstrip() for line in console.export_text().splitlines()]


@pytest.fixture(scope="module")
def report(sd_prompt_export: Path) -> dict:
    return json.loads((sd_prompt_export / "out" / "text_encoder" / "report.json").read_text())


@pytest.mark.parametrize("width", [80, 100, 120, 160])
def test_summary_fits_and_keeps_one_line_per_artifact(report, width):
    lines = _render(single_summary(report, width), width)
    assert max(len(line) for line in lines) <= width
    rows = [line for line in lines if line.split(" ")[0].endswith((".onnx", ".ort"))
            or "…" in line.split(" ")[0]]
    assert len(rows) == len(report["artifacts"])  # nothing wraps onto a second line
    header = lines[1]
    assert ("max err" in header) == (width >= WIDE) and "accelerator" in header


def test_long_notes_become_footnotes(report):
    lines = _render(single_summary(report, 80), 80)
    onnx = next(line for line in lines if line.startswith("ort-mobile-cpu/text_encoder.onnx")
                or line.startswith("ort-mobile-cpu/text…"))
    verdict = next(w for w in onnx.split() if w.startswith(("partial", "full", "unknown",
                                                            "none")) or w[-1] in "¹²³")
    assert verdict  # a short verdict in the row ...
    assert any(line.startswith("¹ ") for line in lines)  # ... the checks' notes underneath
