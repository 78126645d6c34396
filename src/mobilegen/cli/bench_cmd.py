"""`mobilegen bench A B ...`: recipes or output folders side by side, ratios against the first."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from mobilegen.cli.common import (
    DebugOpt,
    JsonOpt,
    handle_errors,
    print_json,
    progress_printer,
    stdout_console,
)


def _resolve(item: Path, work: Path) -> tuple[Path, dict[str, Any]]:
    """An output folder is read as is; a recipe (.toml) is exported into `work` first."""
    from mobilegen.cli.report_cmd import load_report
    from mobilegen.errors import RecipeError

    if item.is_dir():
        report = load_report(item)
        _check_bench_fields(item / "report.json", report)
        return item, report
    if item.suffix != ".toml" or not item.is_file():
        raise RecipeError(f"{item}: expected a recipe (.toml) or an output folder with "
                          "report.json")
    from mobilegen.export.run import run_export
    from mobilegen.recipe import load_recipe

    recipe = load_recipe(item)
    out = work / f"{len(list(work.iterdir())):02d}-{recipe.name}"
    result = run_export(recipe, out, progress_printer())
    return out, result.report.to_dict()


def _check_bench_fields(path: Path, report: dict[str, Any]) -> None:
    """The report values bench prints, typed (a tampered report.json is one line)."""
    from mobilegen.errors import OutputError

    def number(v: Any) -> bool:
        return v is None or (isinstance(v, int | float) and not isinstance(v, bool))

    for key in ("gmac", "params"):
        if not number(report["model"].get(key)):
            raise OutputError(f"{path}: key 'model.{key}' must be a number, found "
                              f"{report['model'][key]!r}")
    for i, a in enumerate(report["artifacts"]):
        for key in ("artifact", "target", "precision"):
            if not isinstance(a.get(key), str):
                raise OutputError(f"{path}: key 'artifacts.{i}.{key}' must be a string, found "
                                  f"{a.get(key)!r}" if key in a else
                                  f"{path}: missing key 'artifacts.{i}.{key}'")
        for section, key in (("latency", "median_ms"), ("parity", "psnr_db"),
                             ("parity", "max_abs_error"), (None, "bytes")):
            holder = a if section is None else a.get(section) or {}
            if not isinstance(holder, dict) or not number(holder.get(key)):
                where = key if section is None else f"{section}.{key}"
                found = holder.get(key) if isinstance(holder, dict) else holder
                raise OutputError(f"{path}: key 'artifacts.{i}.{where}' must be a number, "
                                  f"found {found!r}")


def bench_rows(entries: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per artifact (entry, artifact, precision, latency, size, GMAC, parity), with
    ratios against the matching row of the first entry."""
    rows: list[dict[str, Any]] = []
    for label, report in entries:
        gmac = report["model"].get("gmac")
        for a in report["artifacts"]:
            lat = (a.get("latency") or {}).get("median_ms")
            rows.append({
                "entry": label, "artifact": a["artifact"], "target": a["target"],
                "precision": a["precision"], "latency_ms": lat, "bytes": a.get("bytes"),
                "gmac": gmac, "params": report["model"].get("params"),
                "psnr_db": (a.get("parity") or {}).get("psnr_db"),
                "max_abs_error": (a.get("parity") or {}).get("max_abs_error"),
            })
    first = [r for r in rows if r["entry"] == entries[0][0]]
    for r in rows:
        # The baseline row: the same artifact, else the same target and precision, else the
        # first entry's first timed artifact.
        same = ([f for f in first if f["artifact"] == r["artifact"]]
                or [f for f in first if (f["target"], f["precision"]) == (r["target"],
                                                                         r["precision"])])
        base = (same or [f for f in first if f["latency_ms"]] or first or [r])[0]
        for key in ("latency_ms", "bytes", "gmac"):
            num, den = r[key], base[key]
            r[f"{key}_ratio"] = num / den if num and den else None
    return rows


@handle_errors
def bench(
    items: Annotated[list[Path], typer.Argument(
        help="Recipes (.toml; exported first) or output folders; the first is the baseline.")],
    keep: Annotated[Path | None, typer.Option(
        help="Export recipes under this folder (kept) instead of a temporary one.")] = None,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Compare latency, size, GMAC and parity side by side, with ratios against the first."""
    with tempfile.TemporaryDirectory(prefix="mobilegen-bench-") as tmp:
        work = keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        entries = []
        for item in items:
            _, report = _resolve(item, work)
            entries.append((item.name, report))
        rows = bench_rows(entries)
    if json_output:
        print_json({"baseline": entries[0][0], "rows": rows})
        return
    from rich.table import Table

    def ratio(v: float | None) -> str:
        return f" ({v:.2f}x)" if v is not None else ""

    table = Table(title=f"side by side (ratios against {entries[0][0]})")
    for col in ("entry", "artifact", "precision", "median ms", "size MB", "GMAC", "PSNR dB"):
        table.add_column(col, justify="left" if col in ("entry", "artifact") else "right")
    for r in rows:
        table.add_row(
            r["entry"], r["artifact"], r["precision"],
            (f"{r['latency_ms']:.3f}" if r["latency_ms"] else "-") + ratio(r["latency_ms_ratio"]),
            (f"{r['bytes'] / 1e6:.2f}" if r["bytes"] else "-") + ratio(r["bytes_ratio"]),
            (f"{r['gmac']:.3f}" if r["gmac"] is not None else "-") + ratio(r["gmac_ratio"]),
            f"{r['psnr_db']:.1f}" if r["psnr_db"] is not None else "-",
        )
    stdout_console().print(table)
