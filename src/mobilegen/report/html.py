"""report.html: one self-contained file (inline CSS, inline SVG plots, images as data URIs).

Nothing in it reaches the network, so it opens offline and can be mailed as one attachment.
Optional report.json sections it renders when present: `blocks` (blocks.BlockTable.to_dict() plus
`op_profile`) and `estimates` (estimate.py; shown in their own, labelled section, never in the
measured tables).
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.est{background:#fff7e0;border:1px solid #e0c060;padding:.6em 1em}.fail{color:#b00}
.ok{color:#070}img.grid{max-width:100%;height:auto;image-rendering:crisp-edges;
image-rendering:pixelated;border:1px solid #ccc;background:#000}
figure{display:block;margin:.8em 0 1.2em}figcaption{font-size:.9em;color:#444;max-width:1000px}
"""
PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#9d755d")


@dataclass(frozen=True)
class Bars:
    """A horizontal bar chart: one bar per (label, value); drawn as SVG and (for checks) PNG."""

    title: str
    unit: str
    items: list[tuple[str, float]]
    width: int = 760
    row: int = 22
    label_w: int = 260

    @property
    def height(self) -> int:
        return 34 + self.row * len(self.items) + 10

    def _geometry(self) -> list[tuple[str, float, int, int, int]]:
        top = max((v for _, v in self.items), default=0.0) or 1.0
        span = self.width - self.label_w - 90
        return [(label, v, self.label_w, 34 + i * self.row, max(1, round(span * v / top)))
                for i, (label, v) in enumerate(self.items)]

    def svg(self) -> str:
        parts = [f'<svg width="{self.width}" '
                 f'height="{self.height}" role="img" aria-label="{html.escape(self.title)}">',
                 f'<text x="4" y="18" font-size="14" font-weight="bold">'
                 f'{html.escape(self.title)}</text>']
        for i, (label, v, x, y, w) in enumerate(self._geometry()):
            color = PALETTE[i % len(PALETTE)]
            parts += [
                f'<text x="{x - 6}" y="{y + 15}" font-size="12" text-anchor="end">'
                f'{html.escape(label)}</text>',
                f'<rect x="{x}" y="{y + 3}" width="{w}" height="{self.row - 6}" fill="{color}"/>',
                f'<text x="{x + w + 4}" y="{y + 15}" font-size="12">{_num(v)} {self.unit}</text>',
            ]
        return "\n".join([*parts, "</svg>"])

    def png(self, path: Path) -> Path:
        """The same geometry drawn with PIL, to look at the chart without a browser."""
        from PIL import Image, ImageDraw

        img = Image.new("RGB", (self.width, self.height), "white")
        draw = ImageDraw.Draw(img)
        draw.text((4, 6), self.title, fill="black")
        for i, (label, v, x, y, w) in enumerate(self._geometry()):
            draw.text((x - 6 - 6 * len(label), y + 5), label, fill="black")
            draw.rectangle([x, y + 3, x + w, y + self.row - 3], fill=PALETTE[i % len(PALETTE)])
            draw.text((x + w + 4, y + 5), f"{_num(v)} {self.unit}", fill="black")
        img.save(path)
        return path


def _num(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _data_uri(path: Path) -> str | None:
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def latency_bars(report: dict[str, Any]) -> Bars:
    items = [(f"{a['artifact']} [{a['precision']}]", a["latency"]["median_ms"])
             for a in report["artifacts"] if a.get("latency")]
    return Bars("Host latency per artifact (median, measured)", "ms", items)


def time_bars(report: dict[str, Any]) -> Bars:
    """Where the time goes: the measured block table if present, else MAC share per module."""
    blocks = report.get("blocks")
    if blocks:
        items = [(f"{r['block']} x{r['count']}" if r["count"] > 1 else r["block"], r["total_ms"])
                 for r in blocks["rows"]]
        return Bars(f"Where the time goes: per-block ORT latency x count (measured, "
                    f"{blocks['threads']} threads)", "ms", items)
    mods = sorted(report["model"].get("modules", []), key=lambda r: -r["macs"])[:12]
    return Bars("Where the compute goes: MACs per module (counted, not timed)", "MMAC",
                [(r["module"], r["macs"] / 1e6) for r in mods])


def render_html(report: dict[str, Any], out_dir: Path) -> str:
    """The report page; images referenced by report.json are read from `out_dir` and inlined."""
    e = html.escape
    name = e(report["recipe"]["name"])
    out: list[str] = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>mobilegen report: {name}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>mobilegen report: {name}</h1>",
        *_summary(report),
        *_artifacts_section(report),
        *coverage_html(report),
        "<h2>Where the time goes</h2>",
        time_bars(report).svg(),
        *_blocks_section(report.get("blocks")),
        *_estimates_section(report.get("estimates")),
        *_samples_section(report, out_dir),
    ]
    failures = report.get("gates", {}).get("failures", [])
    out.append("<h2>Gates</h2>")
    out.append("".join(f"<p class='fail'>FAILED {e(f)}</p>" for f in failures)
               or "<p class='ok'>all gates passed</p>")
    out.append("</body></html>")
    return "\n".join(out)


def _summary(report: dict[str, Any]) -> list[str]:
    e = html.escape
    m = report["model"]
    host = report.get("host", {})
    return [
        f"<p>Status: <b class='{'ok' if report['status'] == 'ok' else 'fail'}'>"
        f"{e(report['status'])}</b>. Model: {e(m['family'])} from <code>{e(str(m['source']))}"
        f"</code>, {m.get('params', 0):,} params, {m.get('gmac', 0):.3f} GMAC at "
        f"{m.get('image_size', '?')}x{m.get('image_size', '?')}.</p>",
        f"<p>Measured on this host: {e(str(host.get('machine', '?')))}, "
        f"{host.get('cpus', '?')} CPUs, {e(str(host.get('system', '?')))}.</p>",
    ]


def _artifacts_section(report: dict[str, Any]) -> list[str]:
    rows = []
    for a in report["artifacts"]:
        lat = a.get("latency") or {}
        par = a.get("parity") or {}
        e2e = a.get("end_to_end") or {}
        rows.append([
            a["artifact"], a["target"], a["precision"], f"{a.get('bytes', 0) / 1e6:.2f} MB",
            f"{lat['median_ms']:.3f}" if lat else "-", f"{lat['p90_ms']:.3f}" if lat else "-",
            f"{par['psnr_db']:.1f}" if par.get("psnr_db") is not None else "-",
            f"{par['max_abs_error']:.2e}" if par.get("max_abs_error") is not None else "-",
            f"{e2e['psnr_db']:.1f}" if e2e.get("psnr_db") is not None else "-",
            "yes" if a.get("runnable", True) else "no (not runnable here)",
        ])
    out = ["<h2>Artifacts: latency, size, parity (measured)</h2>",
           _table(["artifact", "target", "precision", "size", "median ms", "p90 ms",
                   "step PSNR dB", "max abs err", "image PSNR dB", "ran here"], rows)]
    bars = latency_bars(report)
    if bars.items:
        out.append(bars.svg())
    return out


def _blocks_section(blocks: dict[str, Any] | None) -> list[str]:
    if not blocks:
        return []
    e = html.escape
    out = [f"<p>Each distinct block exported on its own at its real input shape and timed "
           f"in {e(blocks['runtime'])} ({blocks['threads']} threads, median of "
           f"{blocks['runs']} runs after {blocks['warmup']} warm-up).</p>",
           _table(["block", "kind", "count", "input shapes", "GMAC", "params", "median ms",
                   "x count ms"],
                  [[r["block"], r["kind"], r["count"], r["input_shapes"],
                    f"{r['macs'] / 1e9:.4f}", f"{r['params']:,}", f"{r['latency_ms']:.3f}",
                    f"{r['total_ms']:.3f}"] for r in blocks["rows"]]),
           f"<p>Table sum (less {blocks['call_overhead_ms']:.3f} ms of per-call overhead "
           f"for each extra part): {blocks['sum_ms']:.3f} ms; whole model measured: "
           f"{blocks['whole_ms']:.3f} ms; error {blocks['error_pct']:+.1f}% (on per-run "
           f"minima {blocks['error_min_pct']:+.1f}%).</p>"]
    prof = blocks.get("op_profile")
    if prof:
        out.append(f"<p>onnxruntime profiler, whole model: attention "
                   f"{100 * prof['attention_share']:.1f}% of kernel time (core "
                   f"{100 * prof['attention_core_share']:.1f}%, projections "
                   f"{100 * prof['attention_proj_share']:.1f}%). {e(prof['attribution'])}.</p>")
        out.append(_table(["op type", "ms", "share"],
                          [[o["op"], f"{o['ms']:.3f}", f"{100 * o['share']:.1f}%"]
                           for o in prof["top_ops"]]))
    return out


def _estimates_section(est: dict[str, Any] | None) -> list[str]:
    if not est:
        return []
    out = ["<h2>Device estimates (ESTIMATES, not measurements)</h2>"]
    cal = est.get("calibrated")
    if cal:
        out += [f"<div class='est'><p>{html.escape(cal['label'])}.</p>",
                _table(["target", "calibrated on", "estimate ms", "band ms (CV p90)",
                        "CV median |err|", "rows behind it"],
                       [_calibrated_cells(r) for r in cal["rows"]]), "</div>"]
    out += [f"<div class='est'><p>Apple profiles: {html.escape(est['label'])}.</p>",
           _table(["target", "device", "estimate ms", "calibration error (held-out)"],
                  [[r["profile"], r["device"], f"~{r['latency_ms']:.1f}",
                    f"±{r['calibration_error_pct']:.0f}%"] for r in est["rows"]])]
    held = est.get("calibration", {}).get("held_out", [])
    if held:
        out.append(_table(["held-out device", "model", "published ms", "estimate ms", "error"],
                          [[h["device"], h["model"], h["published_ms"],
                            f"{h['estimate_ms']:.1f}", f"{h['error_pct']:+.1f}%"]
                           for h in held]))
    out.append("</div>")
    return out


def _calibrated_cells(r: dict[str, Any]) -> list[str]:
    """One calibrated estimate as table cells (shared by the HTML and Markdown reports)."""
    on = f"{r['device']} ({r['runtime']}, {r['precision']})" if r["device"] else "-"
    if r["estimate_ms"] is None:
        return [r["profile"], on, "no calibration", r["reason"].removeprefix("no calibration: "),
                "", str(r["rows"] or "")]
    lo, hi = r["band_ms"]
    return [r["profile"], on, f"~{r['estimate_ms']:.2f}", f"{lo:.2f}-{hi:.2f}",
            f"{r['cv_median_abs_err_pct']:.0f}%", f"{r['rows']} ({r['families']} families)"]


def _sampling_run(report: dict[str, Any], out_dir: Path) -> str:
    """What every sample grid of this export shows, from the manifest beside the report (the
    report alone does not hold the sampler); '' when there is none."""
    import json

    try:
        comp = json.loads((out_dir / "manifest.json").read_text())["components"][0]
        s = comp["sampler"]
    except (OSError, ValueError, KeyError, IndexError):
        return ""
    size = report["model"].get("image_size", "?")
    labels = (comp.get("conditioning") or {}).get("labels")
    per_row = (f"; one column per class label ({', '.join(map(str, labels))})"
               if labels and len(labels) <= 16 else "")
    return (f"{s['num_images']} samples of {size}x{size} px, {s['kind']} {s['steps']} steps, "
            f"guidance {s['guidance_scale']}, seed {s['seed']}{per_row}")


def sample_grids(report: dict[str, Any], run: str) -> list[tuple[str, str]]:
    """(file, caption) for every sample grid the report names: the PyTorch reference, each
    artifact's run of the same sampler (same seed and noise), each module pass's run."""
    run = f" {run}." if run else ""
    grids = [(path, f"PyTorch reference ({name}):{run}")
             for name, path in report.get("sample_grids", {}).items()]
    for a in report["artifacts"]:
        e2e = a.get("end_to_end") or {}
        if e2e.get("grid"):
            psnr = "" if e2e.get("psnr_db") is None else f"; image PSNR {e2e['psnr_db']:.1f} dB"
            grids.append((e2e["grid"], f"{a['artifact']} ({a['precision']}), the same run "
                          f"through the artifact in its runtime{psnr} vs PyTorch."))
    for p in report.get("passes", []):
        e2e = p.get("end_to_end") or {}
        if e2e.get("grid"):
            psnr = "" if e2e.get("psnr_db") is None else f"; image PSNR {e2e['psnr_db']:.1f} dB"
            grids.append((e2e["grid"], f"After pass {p.get('name', '?')}, the same run in "
                          f"PyTorch{psnr} vs {e2e.get('against', 'the model before')}."))
    return grids


def _display_size(path: Path) -> tuple[int, int]:
    """An integer upscale (never smoothed: CSS pixelated) to about 1000 x 480 CSS pixels, so a
    row of 16x16 digits is readable; a large grid stays at its own size."""
    from PIL import Image

    with Image.open(path) as img:
        w, h = img.size
    k = max(1, min(1000 // max(w, 1), 480 // max(h, 1)))
    return w * k, h * k


def _samples_section(report: dict[str, Any], out_dir: Path) -> list[str]:
    e = html.escape
    out = ["<h2>Samples</h2>"]
    run = _sampling_run(report, out_dir)
    for name, caption in sample_grids(report, run):
        uri = _data_uri(out_dir / name)
        if uri is None:
            body = f"<p class='fail'>missing image {e(name)}</p>"
        else:
            w, h = _display_size(out_dir / name)
            body = (f"<img class='grid' src='{uri}' width='{w}' height='{h}' "
                    f"alt='{e(caption)}'>")
        out.append(f"<figure>{body}<figcaption>{e(caption)} <code>{e(name)}</code>"
                   "</figcaption></figure>")
    return out


def coverage_html(report: dict[str, Any]) -> list[str]:
    """The accelerator coverage section (report/coverage.py): what each vendor's tool says."""
    from mobilegen.report.coverage import COVERAGE_COLUMNS, coverage_rows

    rows = coverage_rows(report)
    if not rows:
        return []
    return ["<h2>Where it runs (accelerator coverage, from the vendors' tools)</h2>",
            "<p>full: the accelerator takes every node; unknown: the tool cannot tell on this "
            "host (the note says why).</p>",
            _table([h for _, h in COVERAGE_COLUMNS], [[r[k] for k, _ in COVERAGE_COLUMNS]
                                                      for r in rows])]


def write_html(report: dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / "report.html"
    path.write_text(render_html(report, out_dir), encoding="utf-8")
    return path


def latency_markdown(blocks: dict[str, Any] | None, estimates: dict[str, Any] | None,
                     header: str = "## Per-block latency") -> str:
    """The `blocks` and `estimates` sections as Markdown (for report.md and the benchmarks);
    either may be None (a recipe can ask for one without the other)."""
    lines = [] if blocks is None else [
        header, "", "| block | kind | count | input shapes | GMAC | params | median ms | "
        "x count ms |", "|---|---|---|---|---|---|---|---|"]
    for r in (blocks or {}).get("rows", []):
        lines.append(f"| {r['block']} | {r['kind']} | {r['count']} | {r['input_shapes']} | "
                     f"{r['macs'] / 1e9:.3f} | {r['params']:,} | {r['latency_ms']:.2f} | "
                     f"{r['total_ms']:.2f} |")
    if blocks is not None:
        lines += _block_summary(blocks)
    if not estimates:
        return "\n".join(lines) + "\n"
    cal = estimates.get("calibrated")
    if cal:
        lines += ["", f"## Calibrated device estimates: {cal['label']}", "",
                  "| target | calibrated on | estimate ms | band ms (CV p90) | CV median abs err "
                  "| rows behind it |", "|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join(_calibrated_cells(r)) + " |" for r in cal["rows"]]
    lines += ["", f"## Device estimates: {estimates['label']}", "",
              "Apple profiles (no published Apple device measurements to calibrate on):", "",
              "| target | device | estimate ms | calibration error (mean abs, held-out) |",
              "|---|---|---|---|"]
    lines += [f"| {r['profile']} | {r['device']} | ~{r['latency_ms']:.1f} | "
              f"±{r['calibration_error_pct']:.0f}% |" for r in estimates["rows"]]
    lines += ["", "Calibration (published figures; fitted = used to fit, held-out = scored):", "",
              "| device | model | role | published ms | estimate ms | error |",
              "|---|---|---|---|---|---|"]
    cal = estimates["calibration"]
    for role in ("fitted", "held_out"):
        lines += [f"| {h['device']} | {h['model']} | {role} | {h['published_ms']} | "
                  f"{h['estimate_ms']:.1f} | {h['error_pct']:+.1f}% |" for h in cal[role]]
    lines += ["", "Fitted constants: " + "; ".join(
        f"{k}: peak {d['peak_gmacs']:.0f} GMAC/s, bandwidth {d['bandwidth_gbs']} GB/s (nominal), "
        f"overhead {d['overhead_us']:.0f} us/op" for k, d in cal["devices"].items())]
    return "\n".join(lines) + "\n"


def _block_summary(blocks: dict[str, Any]) -> list[str]:
    lines = ["", f"Sum of table (raw {blocks['raw_sum_ms']:.2f} ms, less "
              f"{blocks['call_overhead_ms']:.3f} ms per extra session call): "
              f"{blocks['sum_ms']:.2f} ms; whole model measured {blocks['whole_ms']:.2f} ms; "
              f"error {blocks['error_pct']:+.1f}% on medians, {blocks['error_min_pct']:+.1f}% "
              "on per-run minima.", ""]
    prof = blocks.get("op_profile")
    if prof:
        lines += [f"onnxruntime profiler (whole model, {prof['runs']} runs): attention "
                  f"{100 * prof['attention_share']:.1f}% of kernel time (core "
                  f"{100 * prof['attention_core_share']:.1f}%, q/k/v/out projections "
                  f"{100 * prof['attention_proj_share']:.1f}%).", "", "| op | ms | share |",
                  "|---|---|---|"]
        lines += [f"| {o['op']} | {o['ms']:.3f} | {100 * o['share']:.1f}% |"
                  for o in prof["top_ops"]]
    return lines
