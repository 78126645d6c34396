"""`mobilegen report DIR`: re-render report.md and report.html from DIR/report.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from mobilegen.cli.common import DebugOpt, JsonOpt, handle_errors, print_json, stdout_console


def load_report(out_dir: Path) -> dict[str, Any]:
    from mobilegen.errors import OutputError

    path = out_dir / "report.json"
    if not path.is_file():
        raise OutputError(f"{path}: not found (expected an export output folder)")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise OutputError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
    for key in ("recipe", "model", "artifacts", "status"):
        if key not in report:
            raise OutputError(f"{path}: missing key '{key}' (expected a mobilegen report.json)")
    return report


def rerender(out_dir: Path) -> list[Path]:
    """Write report.md and report.html next to report.json; returns the written paths."""
    from mobilegen.report.html import write_html
    from mobilegen.report.markdown import render_markdown

    report = load_report(out_dir)
    md = out_dir / "report.md"
    md.write_text(render_markdown(report), encoding="utf-8")
    return [md, write_html(report, out_dir)]


@handle_errors
def report(
    out_dir: Annotated[Path, typer.Argument(help="An export output folder (has report.json).")],
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Re-render report.md and report.html from an output folder, without re-exporting."""
    written = rerender(out_dir)
    if json_output:
        print_json({"written": [str(p) for p in written]})
    else:
        stdout_console().print("wrote " + ", ".join(str(p) for p in written))
