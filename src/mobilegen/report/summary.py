"""The export summary a person reads in a terminal: one line per artifact with the figures they
act on (precision, size, step / image PSNR, latency, accelerator verdict, gate), verdicts kept
short ("full", "partial 30/310", "unknown"), every longer note a numbered footnote under the
table. Designed for 80 columns; terminals of WIDE columns or more (and piped output, which Rich
renders at 160) get the wide layout with the PyTorch-eager comparison and max error as well.
report.md holds everything in full."""

from __future__ import annotations

from typing import Any

WIDE = 120  # columns from which the wide layout is used
SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


class Footnotes:
    """Numbered notes; one number per distinct text."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return str(self.texts.index(text) + 1).translate(SUPERSCRIPT)

    def lines(self) -> list[str]:
        return [f"{str(i).translate(SUPERSCRIPT)} {t}" for i, t in enumerate(self.texts, 1)]


def _verdict(e: dict[str, Any]) -> str:
    v = e["verdict"]
    if v in ("partial", "none") and e.get("supported_nodes") is not None:
        return f"{v} {e['supported_nodes']}/{e['total_nodes']}"
    return str(v)


def _coverage(details: dict[str, Any], notes: Footnotes) -> str:
    """The first check's short verdict; the others and every tool note go to a footnote."""
    checks = details.get("coverage") or []
    if not checks:
        return "-"
    first = checks[0]
    cell = _verdict(first)
    if len(checks) > 1 or first.get("note"):  # which accelerator(s), and what the tool said
        said = {e.get("note") for e in checks}
        parts = [f"{e['accelerator']} {_verdict(e)}"
                 + (f" ({e['note']})" if e.get("note") and len(said) > 1 else "") for e in checks]
        common = f": {said.pop()}" if len(said) == 1 and first.get("note") else ""
        cell += notes.mark("; ".join(parts) + common)
    return cell


def _psnr(value: float | None) -> str:
    return "inf" if value is None else f"{value:.1f}"


def artifact_rows(artifacts: list[dict[str, Any]], notes: Footnotes,
                  prefix: str = "") -> list[dict[str, str]]:
    rows = []
    for a in artifacts:
        row = {"artifact": prefix + a["artifact"], "precision": a["precision"],
               "size": f"{a['bytes'] / 1e6:.2f}", "coverage": _coverage(a["details"], notes),
               "gate": "FAIL" if a.get("gates") else ("pass" if a["runnable"] else "n/a"),
               "step": "-", "err": "-", "image": "-", "ms": "-", "eager": "-"}
        if not a["runnable"]:
            why = a["details"].get("skipped") or a["details"].get("not_run", "not runnable")
            row["step"] = "not run" + notes.mark(why)
        else:
            p, lat, e2e = a["parity"], a.get("latency"), a.get("end_to_end")
            row.update(step=_psnr(p["psnr_db"]), err=f"{p['max_abs_error']:.1e}",
                       image=_psnr(e2e["psnr_db"]) if e2e else "-")
            if lat:
                row["ms"] = f"{lat['median_ms']:.2f}"
                row["eager"] = (f"{a['pytorch_latency']['median_ms']:.2f} "
                                f"({a['speedup_vs_pytorch']:.1f}x)")
            elif (gpu := a["details"].get("gpu_host_time")):  # LiteRT GPU on SwiftShader
                row["ms"] = "-" + notes.mark(
                    f"not timed: SwiftShader host {gpu['median_ms']:.1f} ms per call on the "
                    "software Vulkan driver is no device latency")
            else:  # a simulated NPU row is not timed: the simulator's host time is no latency
                row["ms"] = "-" + notes.mark("not timed: the HTP simulator's host time is no "
                                             "latency")
        rows.append(row)
    return rows


NARROW_COLUMNS = [("artifact", "artifact", "left"), ("precision", "prec", "left"),
                  ("size", "MB", "right"), ("step", "step dB", "right"),
                  ("image", "img dB", "right"), ("ms", "ms", "right"),
                  ("coverage", "accelerator", "left"), ("gate", "gate", "left")]
WIDE_COLUMNS = [*NARROW_COLUMNS[:4], ("err", "max err", "right"), *NARROW_COLUMNS[4:6],
                ("eager", "PyTorch ms (x)", "right"), *NARROW_COLUMNS[6:]]


def _shorten(text: str, width: int) -> str:
    """Cut the middle, keeping the target folder at the start and the format at the end."""
    if len(text) <= width or width < 8:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def render(title: str, rows: list[dict[str, str]], notes: Footnotes, width: int,
           extra: list[str] | None = None) -> list[Any]:
    """Rich renderables: the table for `width` columns, then `extra` lines and the footnotes."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    columns = WIDE_COLUMNS if width >= WIDE else NARROW_COLUMNS
    longest = max((len(r["artifact"]) for r in rows), default=8)

    def table(artifact_width: int) -> Any:
        t = Table(title=title, box=None, pad_edge=False, padding=(0, 1, 0, 0),
                  title_justify="left", header_style="bold underline")
        for _, header, justify in columns:
            t.add_column(header, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        for r in rows:
            cells = [_shorten(r[k], artifact_width) if k == "artifact" else r[k]
                     for k, _, _ in columns]
            t.add_row(*cells, style="red" if r["gate"] == "FAIL" else None)
        return t

    probe = Console(width=1000, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    artifact_width = longest
    while True:  # the widest table that fits: only the artifact column gives way
        probe.begin_capture()
        probe.print(table(artifact_width))
        drawn = max(len(line) for line in probe.end_capture().splitlines()[1:] or [""])
        if drawn <= width or artifact_width <= 12:
            break
        artifact_width -= drawn - width
    probe.file.close()
    out: list[Any] = [table(artifact_width)]
    out += [Text(line) for line in extra or []]
    out += [Text(line, style="dim") for line in notes.lines()]
    return out


def single_summary(report: dict[str, Any], width: int) -> list[Any]:
    m = report["model"]
    title = (f"{report['recipe']['name']}: {m['family']} {m['params'] / 1e6:.2f}M params, "
             f"{m['gmac']:.3f} GMAC at {m['image_size']}x{m['image_size']}")
    notes = Footnotes()
    return render(title, artifact_rows(report["artifacts"], notes), notes, width)
