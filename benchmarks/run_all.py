"""Run the benchmark scripts one after another and keep what they printed.

    .venv/bin/python benchmarks/run_all.py [NAME ...]      # default: every script in LIGHT + HEAVY

Each script runs alone (the figures are latencies: nothing else of ours should share the cores)
and writes nothing itself to this runner; its stdout, exit status, wall time, the date and the
machine go to benchmarks/results/<name>.json, and benchmarks/results/SUMMARY.md collects the
latest output of every script that has run, each under its own date and machine line.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# Minutes each on 2 cores.
LIGHT = ["bench_stoic_latency", "bench_cache", "bench_stoic_cost", "bench_blocks", "bench_passes",
         "bench_static_int8"]
# SD-size models: several GB of RAM and tens of minutes each; `make bench` runs them too.
HEAVY = ["bench_unet_vae", "bench_large_export", "bench_qnn", "bench_litert_gpu"]


def machine() -> str:
    cores = os.cpu_count()
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    return f"{platform.machine()}, {cores} cores, {mem:.0f} GiB RAM, {platform.system()}"


def run(name: str) -> dict:
    script = ROOT / "benchmarks" / f"{name}.py"
    if not script.is_file():
        raise SystemExit(f"{script}: no such benchmark (known: {', '.join(LIGHT + HEAVY)})")
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True)
    result = {
        "script": f"benchmarks/{name}.py",
        "started_utc": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "wall_s": round(time.perf_counter() - t0, 1),
        "returncode": proc.returncode,
        "stdout": proc.stdout,
        "stderr_tail": proc.stderr.strip().splitlines()[-5:] if proc.returncode else [],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def write_summary() -> Path:
    parts = ["# Benchmark results", "",
             "Written by `benchmarks/run_all.py` (`make bench`); each section is the latest run of "
             "one script, with its date and machine. Figures are from that run only.", ""]
    for name in LIGHT + HEAVY:
        path = RESULTS / f"{name}.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        status = "ok" if r["returncode"] == 0 else f"FAILED (exit {r['returncode']})"
        parts += [f"## {r['script']}", "",
                  f"{r['started_utc']} on {r['machine']}; wall {r['wall_s']} s; {status}", "",
                  "```", r["stdout"].rstrip(), *r["stderr_tail"], "```", ""]
    out = RESULTS / "SUMMARY.md"
    out.write_text("\n".join(parts))
    return out


def main() -> int:
    names = sys.argv[1:] or LIGHT + HEAVY
    worst = 0
    for name in names:
        print(f"== {name}", flush=True)
        r = run(name)
        print(r["stdout"], end="", flush=True)
        if r["returncode"]:
            print(f"{name} FAILED (exit {r['returncode']}): " + " / ".join(r["stderr_tail"]))
            worst = worst or r["returncode"]
    print(f"wrote {write_summary()}")
    return worst


if __name__ == "__main__":
    raise SystemExit(main())
