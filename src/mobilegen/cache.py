"""A content-addressed export cache: same inputs, same outputs, no work.

The key hashes everything an export's result depends on: the recipe file, the checkpoint's bytes
(every file of a diffusers folder), each target profile named by the recipe, mobilegen's own
source files (an edited checkout must not be served results of the code before the edit), the
libraries' versions, and the host (latency figures belong to the machine that measured them). An
entry is a complete output folder; it is verified against its own manifest's sha256 list before it
is reused, and copied into place through the same staging-and-swap as a fresh export.

Location: $MOBILEGEN_CACHE_DIR, else ~/.cache/mobilegen.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from mobilegen.outputs import StagedOutput, sha256_file
from mobilegen.recipe import TARGETS_DIR, Recipe

KEY_SCHEMA = 1


def cache_dir() -> Path:
    env = os.environ.get("MOBILEGEN_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "mobilegen"


def _path_digest(path: Path) -> str:
    if path.is_dir():  # a diffusers folder: every file, by relative name
        return _path_digest_of(sorted(q for q in path.rglob("*") if q.is_file()), path)
    return sha256_file(path)


def _source_digest() -> str:
    package = Path(__file__).resolve().parent
    return _path_digest_of(sorted(package.rglob("*.py")), package)


def _path_digest_of(files: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(root)).encode() + sha256_file(p).encode())
    return h.hexdigest()


def export_key(recipe: Recipe) -> str:
    from mobilegen.pipeline import host_info, library_versions

    parts: dict[str, Any] = {
        "schema": KEY_SCHEMA,
        "recipe": sha256_file(recipe.path) if recipe.path else recipe.model_dump_json(),
        "targets": {t: sha256_file(TARGETS_DIR / f"{t}.toml") for t in recipe.targets},
        "versions": library_versions(),
        "source": _source_digest(),
        "host": host_info(),
    }
    ckpt = recipe.checkpoint_path()
    if ckpt is not None and ckpt.exists():
        parts["checkpoint"] = _path_digest(ckpt)
    blob = json.dumps(parts, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _verified(entry: Path) -> bool:
    """Complete and untouched: report + manifest present, every listed file has its sha256."""
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
        if not (entry / "report.json").is_file():
            return False
        return all(sha256_file(entry / f["path"]) == f["sha256"] for f in manifest["files"])
    except (OSError, ValueError, KeyError):
        return False


def lookup(key: str) -> Path | None:
    entry = cache_dir() / key
    return entry if entry.is_dir() and _verified(entry) else None


def restore(entry: Path, out_dir: Path) -> dict[str, Any]:
    """Copy a verified entry into `out_dir` atomically; returns its report."""
    with StagedOutput(out_dir) as out:
        shutil.rmtree(out.staging)
        shutil.copytree(entry, out.staging)
        final = out.commit()
    return json.loads((final / "report.json").read_text())


def store(key: str, out_dir: Path) -> None:
    """Keep a finished output folder under its key (copied to a temp name, then renamed)."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    entry, tmp = root / key, root / f".{key}.tmp-{os.getpid()}"
    if entry.exists():
        return
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(out_dir, tmp)
    try:
        os.replace(tmp, entry)
    except OSError:  # another process stored the same key first
        shutil.rmtree(tmp, ignore_errors=True)
