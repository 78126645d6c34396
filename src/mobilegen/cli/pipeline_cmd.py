"""The output layer of pipeline exports (`mobilegen export PIPELINE.toml`); export_cmd dispatches
here so single-recipe exports stay as they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mobilegen.cli.common import print_json, progress_printer, stdout_console


def export_pipeline(loaded: list[Any], out: Path | None, json_output: bool) -> None:
    import sys

    from mobilegen.errors import GateFailedError, RecipeError
    from mobilegen.export.chain import run_pipeline_export
    from mobilegen.recipe import PipelineRecipe

    if len(loaded) != 1:
        first = next(r for r in loaded if isinstance(r, PipelineRecipe))
        raise RecipeError(f"{first.path}: a pipeline recipe is exported on its own "
                          f"(found {len(loaded)} recipes on the command line)")
    prec = loaded[0]
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
    from rich.table import Table

    table = Table(title=f"{report['recipe']['name']} (pipeline): {report['status']}")
    for col in ("component", "artifact", "median ms", "step PSNR dB", "gates"):
        table.add_column(col)
    for slot, c in report["components"].items():
        for a in c["artifacts"]:
            ms = "-" if a["median_ms"] is None else f"{a['median_ms']:.2f}"
            psnr = "inf" if a["step_psnr_db"] is None else f"{a['step_psnr_db']:.1f}"
            table.add_row(slot, a["artifact"], ms, psnr if a["runnable"] else "-",
                          "fail" if c["gate_failures"] else "ok")
    console = stdout_console()
    console.print(table)
    for r in report["chain"]["rows"]:
        psnr = "inf" if r["psnr_db"] is None else f"{r['psnr_db']:.2f}"
        console.print(f"chain {r['format']}/{r['precision']}: image PSNR {psnr} dB vs PyTorch "
                      f"({r['grid']})", highlight=False)
    console.print(f"wrote {out_dir}/ (manifest.json, report.json, report.md; unet/, decoder/; "
                  "pipeline exports bypass the cache)", highlight=False)
