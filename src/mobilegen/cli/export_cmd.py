from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mobilegen.cli.common import (
    DebugOpt, JsonOpt, OutOpt, handle_errors, print_json, progress_printer, stdout_console,
)


@handle_errors
def export(
    recipe: Annotated[Path, typer.Argument(help="Recipe TOML (see `mobilegen recipes`).")],
    out: OutOpt = None,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Export a recipe: load, capture, lower to each target, validate, time, report."""
    import sys

    from mobilegen.errors import GateFailedError
    from mobilegen.pipeline import run_export
    from mobilegen.recipe import load_recipe

    r = load_recipe(recipe)
    out_dir = out or Path("out") / r.name
    try:
        result = run_export(r, out_dir, progress_printer(), argv=sys.argv)
        report, final = result.report, result.out_dir
    except GateFailedError:
        import json

        final = out_dir
        report = json.loads((out_dir / "report.json").read_text())
        _show(report, final, json_output)
        raise
    _show(report, final, json_output)


def _show(report: dict, out_dir: Path, json_output: bool) -> None:
    from mobilegen.report import rich_table

    if json_output:
        print_json({"out_dir": str(out_dir), **report})
        return
    console = stdout_console()
    console.print(rich_table(report))
    console.print(f"wrote {out_dir}/ (manifest.json, report.json, report.md)", highlight=False)
