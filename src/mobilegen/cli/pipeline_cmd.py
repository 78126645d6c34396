"""The output layer of pipeline exports (`mobilegen export PIPELINE.toml`); export_cmd dispatches
here so single-recipe exports stay as they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mobilegen.cli.common import print_json, progress_printer, stdout_console


def export_pipeline(prec: Any, out: Path | None, json_output: bool) -> None:
    import sys

    from mobilegen.errors import GateFailedError
    from mobilegen.export.chain import run_pipeline_export

    out_dir = out or Path("out") / prec.name
    result = run_pipeline_export(prec, out_dir, progress_printer(), argv=sys.argv)
    show(result.report, result.out_dir, json_output)
    if result.failures:
        raise GateFailedError(f"{len(result.failures)} gate(s) failed: "
                              + "; ".join(result.failures))


def show(report: dict[str, Any], out_dir: Path, json_output: bool) -> None:
    if json_output:
        print_json({"out_dir": str(out_dir), "cache": {"hit": False, "key": None}, **report})
        return
    import json

    from mobilegen.report.summary import Footnotes, artifact_rows, render

    notes, rows = Footnotes(), []
    for slot in report["components"]:  # each component's own report has the full figures
        own = json.loads((out_dir / slot / "report.json").read_text())
        rows += artifact_rows(own["artifacts"], notes, prefix=f"{slot}/")
    chain = []
    for r in report["chain"]["rows"]:
        psnr = "inf" if r["psnr_db"] is None else f"{r['psnr_db']:.2f}"
        chain.append(f"chain {r['format']}/{r['precision']}: image PSNR {psnr} dB vs PyTorch "
                     f"({r['grid']})")
    console = stdout_console()
    title = f"{report['recipe']['name']} (pipeline): {report['status']}"
    for part in render(title, rows, notes, console.width, chain):
        console.print(part, highlight=False)
    console.print(f"wrote {out_dir}/ (manifest.json, report.json, report.md; unet/, decoder/; "
                  "pipeline exports bypass the cache)", highlight=False)
