"""First export vs cached re-export of the default recipe, in one run on this host.

    .venv/bin/python benchmarks/bench_cache.py [RECIPE]

Uses a private cache folder, so the first run really exports and the second can only hit what the
first stored.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed_export(recipe: Path, out: Path, env: dict[str, str]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mobilegen", "export", str(recipe), "--out",
                           str(out), "--json"], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 3):
        raise SystemExit(f"export failed: {proc.stderr.strip().splitlines()[-1]}")
    return wall, json.loads(proc.stdout)


def main() -> None:
    recipe = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "recipes" / "stoic-digits.toml"
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MOBILEGEN_CACHE_DIR": str(Path(tmp) / "cache")}
        first, doc1 = timed_export(recipe, Path(tmp) / "first", env)
        second, doc2 = timed_export(recipe, Path(tmp) / "second", env)
    assert doc1["cache"]["hit"] is False and doc2["cache"]["hit"] is True
    print(f"recipe: {recipe.name}")
    print(f"first export (no cache):  {first:7.2f} s")
    print(f"cached re-export:         {second:7.2f} s  (cache key {doc2['cache']['key']})")
    print(f"cached / first:           {second / first:7.1%}")


if __name__ == "__main__":
    main()
