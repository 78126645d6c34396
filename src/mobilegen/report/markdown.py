"""Rendering a report dict: the rich summary table, and report.md."""

from __future__ import annotations

from typing import Any

from mobilegen.report.coverage import coverage_cell, coverage_markdown


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
            reason = reason.split(";")[0]  # the cell keeps the first clause; JSON has it all
            rows.append({"artifact": a["artifact"], "precision": a["precision"],
                         "size": _mb(a["bytes"]), "parity": "not run: " + reason,
                         "e2e": "-", "latency": "-", "pytorch": "-",
                         "coverage": coverage_cell(a["details"]),
                         "gate": "FAIL" if a.get("gates") else "n/a"})
            continue
        p, lat = a["parity"], a.get("latency")
        e2e = a.get("end_to_end")
        rows.append({
            "artifact": a["artifact"],
            "precision": a["precision"],
            "size": _mb(a["bytes"]),
            "parity": f"{_fmt_psnr(p['psnr_db'])} dB / {p['max_abs_error']:.2e}",
            "e2e": f"{_fmt_psnr(e2e['psnr_db'])} dB" if e2e else "-",
            # a simulated NPU row (qnn) is not timed: the simulator's host time is no latency
            "latency": f"{lat['median_ms']:.2f} ms" if lat else _untimed(a["details"]),
            "pytorch": f"{a['pytorch_latency']['median_ms']:.2f} ms "
                       f"({a['speedup_vs_pytorch']:.2f}x)" if lat else "-",
            "coverage": coverage_cell(a["details"]),
            "gate": "FAIL" if a["gates"] else "pass",
        })
    return rows


def _untimed(details: dict[str, Any]) -> str:
    """The latency cell of a row without latency: a software GPU's host time says what it is
    (targets/litert_gpu.py); a simulated NPU row is not timed."""
    gpu = details.get("gpu_host_time")
    if gpu:
        kind = "SwiftShader host" if gpu["label"].startswith("SwiftShader") else "host GPU"
        return f"{kind} {gpu['median_ms']:.1f} ms (not device latency)"
    return "not timed (simulator)"


COLUMNS = [
    ("artifact", "artifact"), ("precision", "precision"), ("size", "size"),
    ("parity", "step PSNR / max abs err"), ("e2e", "image PSNR"),
    ("latency", "median latency"), ("pytorch", "PyTorch eager (speedup)"),
    ("coverage", "accelerator coverage"), ("gate", "gates"),
]


def rich_table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    m = report["model"]
    title = (f"{report['recipe']['name']}: {m['family']} {m['params'] / 1e6:.2f}M params, "
             f"{m['gmac']:.3f} GMAC at {m['image_size']}x{m['image_size']}")
    table = Table(title=title)
    for key, header in COLUMNS:  # the artifact's name is never cut: other cells wrap instead
        table.add_column(header, no_wrap=key == "artifact")
    for row in summary_rows(report):
        style = "red" if row["gate"] == "FAIL" else None
        table.add_row(*(row[k] for k, _ in COLUMNS), style=style)
    return table


def _psnr_cell(d: dict[str, Any] | None) -> str:
    return "-" if not d else f"{_fmt_psnr(d['psnr_db'])} dB"


def pass_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """One row per pass: module rewrites with their measured deviation (before/after recovery),
    precision passes with the artifacts they produced (their rows carry the numbers)."""
    rows = []
    for p in report.get("passes", []):
        if p["kind"] == "module":
            changed = ", ".join(f"{k} {v}" for k, v in p["changed"].items() if v) or "nothing"
            rec = p.get("recovery")
            after = "-" if not rec else (
                f"{_psnr_cell(rec['deviation_after']['worst'])} / "
                f"{rec['deviation_after']['worst']['cosine']:.4f} ({rec['steps']} steps)")
            worst = p["deviation"]["worst"]
            rows.append({
                "pass": p["name"], "changed": changed,
                "params": f"{_mb(p['param_bytes_before'])} -> {_mb(p['param_bytes_after'])}",
                "deviation": f"{_psnr_cell(worst)} / {worst['cosine']:.4f}",
                "recovered": after, "e2e": _psnr_cell(p.get("end_to_end")),
                "gate": "FAIL" if p.get("gates") else "pass",
            })
            continue
        arts = [a for a in report["artifacts"] if a["precision"] == p["tag"]]
        made = [a["artifact"] for a in arts if a["runnable"]]
        skipped = [a["details"].get("skipped", "") for a in arts if not a["runnable"]]
        ran = [a for a in arts if a["runnable"]]
        worst = min(ran, key=lambda a: a["parity"]["psnr_db"] or float("inf"), default=None)
        e2e = [a["end_to_end"] for a in ran if a.get("end_to_end")]
        worst_e2e = min(e2e, key=lambda d: d["psnr_db"] or float("inf"), default=None)
        rows.append({
            "pass": p["tag"], "changed": ", ".join(made) or "no artifact",
            "params": "-",
            "deviation": "-" if worst is None else
            f"{_psnr_cell(worst['parity'])} / {worst['parity']['cosine']:.4f} (vs fp32)",
            "recovered": "-",
            "e2e": "; ".join(skipped) or (f"{_psnr_cell(worst_e2e)} (vs fp32)"
                                          if worst_e2e else "-"),
            "gate": "FAIL" if any(a.get("gates") for a in arts) else "pass",
        })
    return rows


PASS_COLUMNS = [
    ("pass", "pass"), ("changed", "changed"), ("params", "param bytes"),
    ("deviation", "step PSNR / cosine vs before"), ("recovered", "after recovery"),
    ("e2e", "image PSNR vs original"), ("gate", "gates"),
]


def passes_table(report: dict[str, Any]) -> Any:
    """The Rich table of passes, or None when the recipe ran none."""
    from rich.table import Table

    rows = pass_rows(report)
    if not rows:
        return None
    table = Table(title="passes")
    for _, header in PASS_COLUMNS:
        table.add_column(header)
    for row in rows:
        table.add_row(*(row[k] for k, _ in PASS_COLUMNS),
                      style="red" if row["gate"] == "FAIL" else None)
    return table


def _passes_markdown(report: dict[str, Any]) -> list[str]:
    rows = pass_rows(report)
    if not rows:
        return []
    lines = ["", "## Passes", "",
             "| " + " | ".join(h for _, h in PASS_COLUMNS) + " |",
             "|" + "---|" * len(PASS_COLUMNS)]
    lines += ["| " + " | ".join(r[k] for k, _ in PASS_COLUMNS) + " |" for r in rows]
    lines += ["", "Module passes are measured against the model before the pass at the "
              "validation timesteps, and end to end against the model before any pass (same "
              "seed). Precision artifacts are compared with the fp32 PyTorch model; their rows "
              "are gated by the precision's own limits:", ""]
    for p in report.get("passes", []):
        if p["kind"] == "precision":
            lim = ", ".join(f"{k} {v:g}" for k, v in p["gate_limits"].items() if v is not None)
            lines.append(f"- {p['tag']}: {lim}")
        elif p.get("end_to_end"):
            lines.append(f"- {p['name']}: ![{p['name']}]({p['end_to_end']['grid']})")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    m = report["model"]
    lines = [
        f"# mobilegen report: {report['recipe']['name']}",
        "",
        f"Status: **{report['status']}**. Model: {m['family']} from `{m['source']}` "
        f"(init: {m['init']}), {m['params']:,} params, {m['gmac']:.3f} GMAC at "
        f"{m['image_size']}x{m['image_size']}.",
        *[f"\n**Note:** {n}." for n in m.get("notes", [])],
        "",
        "| " + " | ".join(h for _, h in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in summary_rows(report):
        lines.append("| " + " | ".join(row[k] for k, _ in COLUMNS) + " |")
    lines += ["", "Step parity is the worst over the validation timesteps; image PSNR compares a "
              "full sampling run through the artifact with PyTorch at the same seed (range 2).", ""]
    lines += validation_markdown(report.get("validation"))
    lines += _passes_markdown(report)
    lines += coverage_markdown(report)
    failures = report["gates"]["failures"]
    lines += ["", "## Gates", ""]
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
            if lat.get("from_parity"):  # a big model's (export/validation_scope.py)
                lines[-1] += (f" The first {lat['from_parity']} run(s) of each: the timed last "
                              "parity call.")
        if a.get("parity_per_timestep"):
            lines += ["", "| t | batch | max abs err | cosine | PSNR dB |",
                      "|---|---|---|---|---|"]
            for p in a["parity_per_timestep"]:
                lines.append(f"| {p['t']:g} | {p.get('batch', '')} | {p['max_abs_error']:.2e} | "
                             f"{p['cosine']:.6f} | {_fmt_psnr(p['psnr_db'])} |")
        if a["details"].get("method"):
            lines += ["", f"Conversion: {a['details']['method']}."]
        lines += precision_markdown(a["details"])
        if a.get("end_to_end"):
            lines += ["", f"![samples]({a['end_to_end']['grid']})"]
        if a["details"].get("skipped"):
            lines.append(f"Not produced: {a['details']['skipped']}")
        lines += htp_markdown(a["details"])
        lines += gpu_markdown(a["details"])
        lines += etdump_markdown(a["details"])
    if report.get("sample_grids", {}).get("pytorch"):
        lines += ["", "## PyTorch reference samples", "", "![pytorch](samples-pytorch.png)"]
    if report.get("blocks") or report.get("estimates"):
        from mobilegen.report.html import latency_markdown

        lines += ["", latency_markdown(report.get("blocks"), report.get("estimates"))]
    lines += memory_markdown(report.get("memory"))
    lines += ["", "## Step timings (s)", ""]
    cpu = report.get("timings_cpu_s") or {}  # CPU seconds: what contention does not inflate
    lines += [f"- {k}: {v:.2f}" + (f" (CPU {cpu[k]:.2f})" if k in cpu else "")
              for k, v in report["timings_s"].items()]
    lines += ["", "## Largest modules", "", "| module | params | GMAC |", "|---|---|---|"]
    top = sorted(m["modules"], key=lambda r: -r["macs"])[:12]
    lines += [f"| {r['module']} | {r['params']:,} | {r['macs'] / 1e9:.4f} |" for r in top]
    return "\n".join(lines) + "\n"


def validation_markdown(scope: dict[str, Any] | None) -> list[str]:
    """What a big model's reduced validation left out (export/validation_scope.py)."""
    if not scope or scope.get("scope") != "reduced":
        return []
    return [f"**Validation reduced:** {scope['note']}.", *[f"- {c}" for c in scope["cuts"]], ""]


def memory_markdown(mem: dict[str, Any] | None) -> list[str]:
    """The preflight's estimate (labelled as one) next to the measured peak of the process tree."""
    if not mem or "preflight" not in mem:
        return []
    pre = mem["preflight"]
    lines = ["", "## Memory", "",
             f"Preflight ESTIMATE {pre['estimate_gb']:.2f} GB ({pre['mode']}; limit "
             f"{pre['limit_gb']:.1f} GB from {pre['limit_source']}; set by {pre['peak_target']})."]
    if mem.get("measured"):
        lines.append(f"Measured peak of the whole process tree: RSS {mem['peak']['rss_gb']:.2f} GB,"
                     f" PSS {mem['peak']['pss_gb']:.2f} GB; the estimate's error "
                     f"{mem['estimate_error_pct']:+.1f}% of the RSS peak.")
        top = sorted(mem["per_step"].items(), key=lambda kv: -kv[1]["rss_gb"])[:6]
        lines += [f"- {k}: {v['rss_gb']:.2f} GB" for k, v in top]
    return lines


def precision_markdown(details: dict[str, Any]) -> list[str]:
    """What a precision artifact kept in float and why; fp16 headroom; the sensitivity plan."""
    lines = []
    reasons: dict[str, list[str]] = {}
    for k in details.get("kept_float", []):
        reasons.setdefault(k["reason"], []).append(k["layer"])
    for reason, layers in reasons.items():
        lines += [f"- kept float: {', '.join(layers[:8])}"
                  f"{f' (+{len(layers) - 8} more)' if len(layers) > 8 else ''}: {reason}"]
    if details.get("kept_float_ops"):
        lines.append(f"- kept float (ops): {details['kept_float_ops']}")
    if plan := details.get("sensitivity_plan"):
        lines.append(f"- sensitivity plan: kept {plan['keep_float'] or 'nothing'} float for worst "
                     f"step PSNR >= {plan['target_step_psnr_db']:g} dB (reached "
                     f"{_fmt_psnr(plan['achieved_step_psnr_db'])}, "
                     f"+{plan['extra_bytes_vs_all_int8']:,} B)")
    if safety := details.get("fp16_safety"):
        worst = safety["layers"][0] if safety["layers"] else {"layer": "-", "max_abs": 0}
        lines.append(f"- fp16 safety: kept fp32 {safety['kept_fp32'] or 'nothing'}; largest "
                     f"|activation| {worst['max_abs']:.4g} ({worst['layer']}); inf/NaN in fp16 "
                     f"before the fix: {safety['nonfinite_before'] or 'none'}")
    return ["", *lines] if lines else []


def gpu_markdown(details: dict[str, Any]) -> list[str]:
    """A LiteRT GPU profile's run on LiteRT's GPU accelerator (targets/litert_gpu.py): what ran
    it, the precision it computed in, the fp16 evidence, the labelled host time."""
    gpu = details.get("litert_gpu")
    if gpu is None:
        return []
    if "gpu_run" in gpu or "gpu_run" in details:
        return ["", f"GPU accelerator: {details.get('gpu_run') or gpu['gpu_run']}."]
    lines = ["", f"GPU accelerator: {details.get('host_delegate', '-')}; adapter "
                 f"{gpu.get('adapter') or '-'}."]
    if prec := gpu.get("precision"):
        lines += ["", f"Precision computed: {prec['precision']} ({prec['how']})."]
    if ev := details.get("fp16_evidence"):
        lines += ["", f"fp16 evidence: {ev}."]
    if t := details.get("gpu_host_time"):
        lines += ["", f"{t['label']}: median {t['median_ms']:.2f} ms per call of batch "
                      f"{t['batch']} (p90 {t['p90_ms']:.2f} ms, {t['runs']} runs)."]
    return lines


def etdump_markdown(details: dict[str, Any]) -> list[str]:
    """An XNNPACK .pte's ETDump per-op profile (targets/executorch_profile.py): host CPU ms per
    XNNPACK op kind, beside the per-block table; nothing for other artifacts."""
    prof = details.get("etdump_profile")
    if not prof:
        return []
    call = prof["wrapper_ms_per_run"].get("DELEGATE_CALL (portable/runtime)")
    held = f" of the {call:.2f} ms delegate call" if call else ""
    lines = ["", f"ExecuTorch ETDump per-op profile ({prof['runs']} runs, host CPU): the ops sum "
                 f"to {prof['ops_ms_per_run']:.2f} ms per run{held}.", "",
             "| op | calls per run | ms per run | share of the ops |", "|---|---|---|---|"]
    lines += [f"| {o['op']} | {o['calls']} | {o['ms']:.3f} | {100 * o['share']:.1f}% |"
              for o in prof["ops"]]
    return [*lines, "", prof["note"] + "."]


def htp_markdown(details: dict[str, Any]) -> list[str]:
    """A QNN HTP artifact's residency, fixed shapes, simulator parity and simulator cycles
    (targets/qnn.py); nothing for other artifacts."""
    res = details.get("residency")
    if res is None or "htp_arch" not in details:
        return []
    cpu = ", ".join(f"{n['name']} ({n['op_type']})" for n in res["cpu_nodes"]) or "none"
    shapes = "; ".join(f"{k} {v}" for k, v in details["fixed_shapes"].items())
    lines = ["", f"HTP v{details['htp_arch']} residency: {res['htp_nodes']}/{res['total_nodes']} "
             f"nodes on HTP; on the CPU: {cpu}.", "",
             f"Fixed shapes (batch {details['fixed_batch']}): {shapes}.", "",
             f"Export form: {details.get('export_form', '-')}."]
    if details.get("not_run"):
        lines += ["", f"Not simulated: {details['not_run']}."]
    sim = details.get("simulator")
    if not sim:
        return lines
    lines += ["", "Context binary in the HTP simulator, per step:", "",
              "| t | vs fp32 ONNX: PSNR dB / max abs | vs QDQ on CPU EP: PSNR dB / max abs |",
              "|---|---|---|"]
    for st in sim["parity"]:
        f, q = st["vs_fp32_onnx"], st["vs_qdq_cpu"]
        lines.append(f"| {'-' if st['t'] is None else format(st['t'], '.4g')} | "
                     f"{_fmt_psnr(f['psnr_db'])} / "
                     f"{f['max_abs_error']:.2e} | {_fmt_psnr(q['psnr_db'])} / "
                     f"{q['max_abs_error']:.2e} |")
    cyc = sim["cycles"]
    if "total" in cyc:
        lines += ["", f"Simulator cycles: {cyc['unit']}, the simulator's count, not a phone's "
                  f"latency (a phone's milliseconds need a calibration not done here): total "
                  f"{cyc['total']:,} (calls ranged {cyc['total_range'][0]:,} to "
                  f"{cyc['total_range'][1]:,} on this host).", "",
                  "| block | simulator cycles | share |", "|---|---|---|"]
        node_sum = sum(r["cycles"] for r in cyc["by_block"]) or 1
        lines += [f"| {r['block']} | {r['cycles']:,} | {100 * r['cycles'] / node_sum:.1f}% |"
                  for r in cyc["by_block"]]
    return lines


def batch_table(results: list[Any]) -> Any:
    """One row per recipe of a batch export (export.batch.BatchResult)."""
    from rich.table import Table

    table = Table(title="batch export")
    for col in ("recipe", "status", "artifacts", "worst step PSNR", "worst image PSNR",
                "fastest median", "output / error"):
        table.add_column(col)
    for r in results:
        report = r.report or {}
        if report.get("kind") == "pipeline":  # its components' artifacts; images from its chain
            rows = [a for c in report["components"].values() for a in c["artifacts"]]
            steps = [a["step_psnr_db"] for a in rows if a["runnable"]]
            images = [c["psnr_db"] for c in report["chain"]["rows"]]
            lat = []  # one model's median would stand for the whole pipeline: not shown
        else:
            rows = report.get("artifacts", [])
            steps = [a["parity"]["psnr_db"] for a in rows if a.get("parity")]
            images = [a["end_to_end"]["psnr_db"] for a in rows if a.get("end_to_end")]
            lat = [a["latency"]["median_ms"] for a in rows if a.get("latency")]
        status = report.get("status", "error")
        table.add_row(
            r.recipe.name, status, str(len(rows)),
            _fmt_psnr(min(steps, key=lambda v: float("inf") if v is None else v))
            if steps else "-",
            _fmt_psnr(min(images, key=lambda v: float("inf") if v is None else v))
            if images else "-",
            f"{min(lat):.2f} ms" if lat else "-",
            r.error or str(r.out_dir),
        )
    return table
