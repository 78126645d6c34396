"""Several recipes at once: each export in its own process (torch, onnxruntime and the converters
keep global state and threads; processes keep runs independent and a crash contained)."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class BatchResult:
    recipe: Path
    out_dir: Path
    exit_code: int
    report: dict[str, Any] | None  # None when the export failed before writing one
    error: str | None  # the child's one-line error


def _run_one(recipe: Path, out_dir: Path, no_cache: bool) -> BatchResult:
    cmd = [sys.executable, "-m", "mobilegen", "export", str(recipe), "--out", str(out_dir),
           "--json"]
    if no_cache:
        cmd.append("--no-cache")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    report = None
    if proc.stdout.strip():
        try:
            report = json.loads(proc.stdout)
        except json.JSONDecodeError:
            report = None
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith(("error", "gate"))]
    error = lines[-1] if lines and proc.returncode != 0 else None
    if proc.returncode != 0 and error is None:
        tail = proc.stderr.strip().splitlines()
        error = tail[-1] if tail else f"exit {proc.returncode}"
    return BatchResult(recipe, out_dir, proc.returncode, report, error)


def run_batch(items: list[tuple[Path, Path]], jobs: int, no_cache: bool) -> list[BatchResult]:
    """(recipe, out_dir) pairs, `jobs` at a time; results in the order given."""
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(lambda it: _run_one(it[0], it[1], no_cache), items))


def worst_exit_code(results: list[BatchResult]) -> int:
    """Worst first: interrupted, error, usage, gate failed, ok (an export that produced nothing
    is worse than one that missed a gate, although the numbers say otherwise)."""
    codes = {r.exit_code for r in results}
    for code in (130, 1, 2, 3):
        if code in codes:
            return code
    return max(codes) if codes else 0
