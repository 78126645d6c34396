"""Rendering a report dict: the rich summary table, and report.md."""

from __future__ import annotations

from typing import Any


def _fmt_psnr(value: float | None) -> str:
    return "inf (identical)" if value is None else f"{value:.1f}"


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def summary_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """One row per artifact with the columns people read first."""
    rows = []
    for a in report["artifacts"]:
        if not a["runnable"]:
            reason = a["details"].get("skipped") or a["details"].get("not_run", "not runnable")
            rows.append({"artifact": a["artifact"], "precision": a["precision"],
                         "size": _mb(a["bytes"]), "parity": "not run: " + reason,
                         "e2e": "-", "latency": "-", "pytorch": "-", "gate": "n/a"})
            continue
        p, lat = a["parity"], a["latency"]
        e2e = a.get("end_to_end")
        rows.append({
            "artifact": a["artifact"],
            "precision": a["precision"],
            "size": _mb(a["bytes"]),
            "parity": f"{_fmt_psnr(p['psnr_db'])} dB / {p['max_abs_error']:.2e}",
            "e2e": f"{_fmt_psnr(e2e['psnr_db'])} dB" if e2e else "-",
            "latency": f"{lat['median_ms']:.2f} ms",
            "pytorch": f"{a['pytorch_latency']['median_ms']:.2f} ms "
                       f"({a['speedup_vs_pytorch']:.2f}x)",
            "gate": "FAIL" if a["gates"] else "pass",
        })
    return rows


COLUMNS = [
    ("artifact", "artifact"), ("precision", "precision"), ("size", "size"),
    ("parity", "step PSNR / max abs err"), ("e2e", "image PSNR"),
    ("latency", "median latency"), ("pytorch", "PyTorch eager (speedup)"), ("gate", "gates"),
]


def rich_table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    m = report["model"]
    title = (f"{report['recipe']['name']}: {m['family']} {m['params'] / 1e6:.2f}M params, "
             f"{m['gmac']:.3f} GMAC at {m['image_size']}x{m['image_size']}")
    table = Table(title=title)
    for _, header in COLUMNS:
        table.add_column(header)
    for row in summary_rows(report):
        style = "red" if row["gate"] == "FAIL" else None
        table.add_row(*(row[k] for k, _ in COLUMNS), style=style)
    return table


def render_markdown(report: dict[str, Any]) -> str:
    m = report["model"]
    lines = [
        f"# mobilegen report: {report['recipe']['name']}",
        "",
        f"Status: **{report['status']}**. Model: {m['family']} from `{m['source']}` "
        f"(init: {m['init']}), {m['params']:,} params, {m['gmac']:.3f} GMAC at "
        f"{m['image_size']}x{m['image_size']}.",
        "",
        "| " + " | ".join(h for _, h in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in summary_rows(report):
        lines.append("| " + " | ".join(row[k] for k, _ in COLUMNS) + " |")
    lines += ["", "Step parity is the worst over the validation timesteps; image PSNR compares a "
              "full sampling run through the artifact with PyTorch at the same seed (range 2).", ""]
    failures = report["gates"]["failures"]
    lines += ["## Gates", ""]
    lines += [f"- FAILED {f}" for f in failures] or ["- all gates passed"]
    for a in report["artifacts"]:
        lines += ["", f"## {a['artifact']}", ""]
        if a.get("latency"):
            lat, pt = a["latency"], a["pytorch_latency"]
            lines.append(
                f"Latency on this host ({lat['threads']} threads, {lat['runs']} runs after "
                f"{lat['warmup']} warm-up): median {lat['median_ms']:.2f} ms, p90 "
                f"{lat['p90_ms']:.2f} ms, min {lat['min_ms']:.2f} ms. PyTorch eager: median "
                f"{pt['median_ms']:.2f} ms."
            )
        if a.get("parity_per_timestep"):
            lines += ["", "| t | max abs err | cosine | PSNR dB |", "|---|---|---|---|"]
            for p in a["parity_per_timestep"]:
                lines.append(f"| {p['t']:g} | {p['max_abs_error']:.2e} | {p['cosine']:.6f} | "
                             f"{_fmt_psnr(p['psnr_db'])} |")
        if a.get("end_to_end"):
            lines += ["", f"![samples]({a['end_to_end']['grid']})"]
        usability = a["details"].get("mobile_usability")
        if usability:
            lines += ["", "ORT mobile usability (onnxruntime's checker):", ""]
            for ep, v in usability.items():
                if isinstance(v, dict):
                    lines.append(f"- {ep}: {v.get('verdict', '?')} as is, "
                                 f"{v.get('verdict_fixed_shapes', '?')} with fixed shapes; "
                                 f"nodes supported {v.get('nodes_supported', '?')}; unsupported "
                                 f"ops: {', '.join(v.get('unsupported_ops', [])) or 'none'}")
                else:
                    lines.append(f"- {ep}: {v}")
        if a["details"].get("skipped"):
            lines.append(f"Not produced: {a['details']['skipped']}")
    if report.get("sample_grids", {}).get("pytorch"):
        lines += ["", "## PyTorch reference samples", "", "![pytorch](samples-pytorch.png)"]
    lines += ["", "## Step timings (s)", ""]
    lines += [f"- {k}: {v:.2f}" for k, v in report["timings_s"].items()]
    lines += ["", "## Largest modules", "", "| module | params | GMAC |", "|---|---|---|"]
    top = sorted(m["modules"], key=lambda r: -r["macs"])[:12]
    lines += [f"| {r['module']} | {r['params']:,} | {r['macs'] / 1e9:.4f} |" for r in top]
    return "\n".join(lines) + "\n"
