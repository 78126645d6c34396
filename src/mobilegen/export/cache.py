"""A content-addressed export cache: same inputs, same outputs, no work.

The key hashes everything an export's result depends on: the recipe file, the checkpoint's bytes
(every file a load reads: the file, or a diffusers folder's config and weight files), each target
profile named by the recipe, mobilegen's own source files (an edited checkout must not be served
results of the code before the edit), the libraries' versions, and the host (latency figures
belong to the machine that measured them).

An entry is a complete output folder plus `.cache-index.json`, the sha256 of every file in it.
`lookup` serves an entry only when it holds exactly the indexed files with their hashes and a
readable report; a bad entry is removed (and the export redone, then stored afresh). The cache is
an optimisation: a cache that cannot be written is a warning on stderr, never a failed export.

Location: $MOBILEGEN_CACHE_DIR, else ~/.cache/mobilegen.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from mobilegen.export.manifest import checkpoint_digest
from mobilegen.export.staging import StagedOutput, sha256_file, sweep_leftovers
from mobilegen.recipe import Recipe
from mobilegen.targets.profile import profile_path

KEY_SCHEMA = 2  # 2: entries carry .cache-index.json (every file's sha256)
INDEX = ".cache-index.json"
STATUSES = ("ok", "gate_failed")
LEFTOVER = r"\.[0-9a-f]+\.tmp-(?P<pid>\d+)"  # a store killed mid-copy


def cache_dir() -> Path:
    env = os.environ.get("MOBILEGEN_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "mobilegen"


def _source_digest() -> str:
    package = Path(__file__).resolve().parent.parent
    return _path_digest_of(sorted(package.rglob("*.py")), package)


def _path_digest_of(files: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(root)).encode() + sha256_file(p).encode())
    return h.hexdigest()


def export_key(recipe: Recipe) -> str:
    """The entry name for `recipe`. Refuses (CheckpointError) a checkpoint that is not a regular
    file or a folder: hashing /dev/zero or a FIFO would never end."""
    from mobilegen.report.provenance import host_info, library_versions

    parts: dict[str, Any] = {
        "schema": KEY_SCHEMA,
        "recipe": sha256_file(recipe.path) if recipe.path else recipe.model_dump_json(),
        "targets": {t: sha256_file(profile_path(t)) for t in recipe.targets},
        "versions": library_versions(),
        "source": _source_digest(),
        "host": host_info(),
    }
    ckpt = recipe.checkpoint_path()
    if ckpt is not None and (ckpt.exists() or ckpt.is_symlink()):
        parts["checkpoint"] = checkpoint_digest(ckpt)[0]
    blob = json.dumps(parts, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _entry_files(entry: Path) -> list[str]:
    return sorted(str(p.relative_to(entry)) for p in entry.rglob("*")
                  if (p.is_symlink() or not p.is_dir()) and p.name != INDEX)


def _problem(entry: Path) -> str | None:
    """None when the entry is complete and untouched; else what is wrong with it."""
    try:
        index = json.loads((entry / INDEX).read_text())["files"]
        present = _entry_files(entry)
        if sorted(index) != present:
            return "its files differ from its index"
        for rel in present:
            p = entry / rel
            if p.is_symlink() or not p.is_file() or sha256_file(p) != index[rel]:
                return f"{rel} was changed"
        report = json.loads((entry / "report.json").read_text())
        if not isinstance(report, dict) or report.get("status") not in STATUSES:
            return "report.json is not a mobilegen report"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"unreadable ({type(e).__name__})"
    return None


def lookup(key: str) -> Path | None:
    """A verified entry for `key`, or None. An entry that fails verification is removed (the
    caller exports afresh and stores the new result)."""
    root = cache_dir()
    if root.is_dir():
        sweep_leftovers(root, LEFTOVER)
    entry = root / key
    if not entry.is_dir() or entry.is_symlink():
        return None
    why = _problem(entry)
    if why is None:
        return entry
    _warn(f"cache entry {entry} failed verification ({why}); removed, exporting afresh")
    try:
        shutil.rmtree(entry)
    except OSError as e:
        _warn(f"cannot remove the bad cache entry {entry}: {e.strerror}")
    return None


def restore(entry: Path, out_dir: Path) -> dict[str, Any]:
    """Copy a verified entry into `out_dir` atomically; returns its report."""
    with StagedOutput(out_dir) as out:
        shutil.rmtree(out.staging)
        shutil.copytree(entry, out.staging, ignore=shutil.ignore_patterns(INDEX), symlinks=True)
        report = json.loads((out.staging / "report.json").read_text())
        out.commit()
    return report


def store(key: str, out_dir: Path) -> None:
    """Keep a finished output folder under its key (copied to a temp name, indexed, renamed).
    Never raises for an unwritable cache: the export itself succeeded; one warning on stderr."""
    root = cache_dir()
    tmp = root / f".{key}.tmp-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        sweep_leftovers(root, LEFTOVER)
        if (root / key).exists():
            return
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(out_dir, tmp, symlinks=True)
        index = {rel: sha256_file(tmp / rel) for rel in _entry_files(tmp)}
        (tmp / INDEX).write_text(json.dumps({"files": index}, indent=1) + "\n")
        os.replace(tmp, root / key)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (root / key).is_dir():  # not just another process storing the same key first
            why = e.strerror or str(e).splitlines()[0][:200]
            _warn(f"result not cached: cannot write {root} ({why})")


def _warn(line: str) -> None:
    sys.stderr.write(f"warning: {line}\n")
