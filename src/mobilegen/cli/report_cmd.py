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
    except (OSError, ValueError, RecursionError) as e:
        raise OutputError(f"{path}: unreadable ({type(e).__name__})") from None
    if not isinstance(report, dict):
        raise OutputError(f"{path}: expected a JSON object (a mobilegen report.json)")
    if report.get("kind") == "pipeline":  # its own report.md is written by the export
        comps = report.get("components")
        names = [f"{out_dir / c}" for c in comps] if isinstance(comps, dict) else []
        raise OutputError(f"{out_dir}: a pipeline export; report and bench take a single "
                          "export: give a component folder"
                          + (f" ({', '.join(names)})" if names else ""))
    for key, kind in (("recipe", dict), ("model", dict), ("artifacts", list), ("status", str)):
        if key not in report:
            raise OutputError(f"{path}: missing key '{key}' (expected a mobilegen report.json)")
        if not isinstance(report[key], kind):
            raise OutputError(f"{path}: key '{key}' must be a {kind.__name__}, found "
                              f"{type(report[key]).__name__}")
    _check_images(path, report)
    return report


def _check_images(path: Path, report: dict[str, Any]) -> None:
    """Images the page inlines must be files inside the folder (never ../../anything)."""
    from mobilegen.errors import OutputError

    grids = report.get("sample_grids") or {}
    if not isinstance(grids, dict) or not all(isinstance(a, dict) for a in report["artifacts"]):
        raise OutputError(f"{path}: 'sample_grids' and 'artifacts' entries must be objects")
    names = list(grids.values()) + [(a.get("end_to_end") or {}).get("grid")
                                    for a in report["artifacts"]
                                    if isinstance(a.get("end_to_end"), dict)]
    root = path.parent.resolve()
    for name in (n for n in names if n is not None):
        if not isinstance(name, str) or Path(name).is_absolute() or \
                not (root / name).resolve().is_relative_to(root):
            raise OutputError(f"{path}: image {name!r} is outside {path.parent}: refused")


def rerender(out_dir: Path) -> list[Path]:
    """Write report.md and report.html next to report.json (each atomically: a temporary file
    renamed over it, so a symlinked report.md is replaced, never written through); returns the
    written paths. A report.md/.html that is not a regular file is refused."""
    from mobilegen.errors import OutputError
    from mobilegen.report.html import render_html
    from mobilegen.report.markdown import render_markdown

    report = load_report(out_dir)
    targets = [out_dir / "report.md", out_dir / "report.html"]
    for t in targets:
        if t.is_symlink() or (t.exists() and not t.is_file()):
            raise OutputError(f"{t}: not a regular file (a link or a folder); refusing to "
                              "write it")
    try:
        texts = [render_markdown(report), render_html(report, out_dir)]
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise OutputError(f"{out_dir / 'report.json'}: not a report mobilegen can render "
                          f"({type(e).__name__}: {e})") from None
    for t, text in zip(targets, texts, strict=True):
        _write_atomic(t, text)
    return targets


def _write_atomic(path: Path, text: str) -> None:
    import os

    from mobilegen.errors import OutputError

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)


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
        from rich.markup import escape

        stdout_console().print(escape("wrote " + ", ".join(str(p) for p in written)),
                               highlight=False)
