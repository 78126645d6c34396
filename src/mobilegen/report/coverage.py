"""The accelerator coverage of a report's artifacts (details["coverage"], written by
targets/coverage.py and the QNN target) as rows and cells, for report.md, report.html and the
summary table alike."""

from __future__ import annotations

from typing import Any

COVERAGE_COLUMNS = [
    ("artifact", "artifact"), ("accelerator", "accelerator"), ("verdict", "verdict"),
    ("nodes", "nodes on it"), ("blocking", "blocking ops (as the tool names them)"),
    ("tool", "tool / note"),
]


def _nodes(e: dict[str, Any]) -> str:
    if e.get("supported_nodes") is None:
        return "-" if e.get("total_nodes") is None else f"? / {e['total_nodes']}"
    return f"{e['supported_nodes']}/{e['total_nodes']}"


def coverage_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """One row per (artifact, accelerator check)."""
    rows = []
    for a in report["artifacts"]:
        for e in a.get("details", {}).get("coverage") or []:
            fixed = e.get("fixed_shapes")
            extra = ""
            if fixed and fixed.get("verdict") != e["verdict"]:
                extra = (f" (fixed shapes: {fixed['verdict']} {fixed['supported_nodes']}/"
                         f"{fixed['total_nodes']})")
            rows.append({
                "artifact": a["artifact"], "accelerator": e["accelerator"],
                "verdict": e["verdict"] + extra, "nodes": _nodes(e),
                "blocking": ", ".join(e.get("unsupported_ops") or []) or "-",
                "tool": f"{e.get('tool', '?')}: {e.get('note', '')}".rstrip(": "),
            })
    return rows


def coverage_cell(details: dict[str, Any]) -> str:
    """The summary table's cell: each check's verdict, with node counts where partial."""
    parts = []
    for e in details.get("coverage") or []:
        v = e["verdict"]
        parts.append(f"{e['accelerator']} {_nodes(e) if v in ('partial', 'none') else v}")
    return "; ".join(parts) or "-"


def coverage_markdown(report: dict[str, Any]) -> list[str]:
    rows = coverage_rows(report)
    if not rows:
        return []
    lines = ["", "## Where it runs (accelerator coverage)", "",
             "What each vendor's own tool says, run on this host: full = the accelerator takes "
             "every node; unknown = the tool cannot tell here (the note says why).", "",
             "| " + " | ".join(h for _, h in COVERAGE_COLUMNS) + " |",
             "|" + "---|" * len(COVERAGE_COLUMNS)]
    return lines + ["| " + " | ".join(r[k] for k, _ in COVERAGE_COLUMNS) + " |" for r in rows]
