"""Refusals that must happen before a checkpoint is read into memory: only regular files, zip
archives whose declared sizes fit the file, and configs whose parameters fit the file's bytes
(estimated on the meta device, so an absurd config costs no memory)."""

from __future__ import annotations

import json
import os
import stat
import zipfile
from pathlib import Path
from typing import Any

from mobilegen.errors import CheckpointError

MIN_PARAM_BYTES = 2  # fp16/bf16: the smallest floating dtype a weight may have
ZIP_RATIO = 8  # declared uncompressed bytes may exceed the archive by this factor (+ slack)
SLACK = 64 << 20


def regular_file(path: Path) -> Path:
    """`path` when it is a regular file (a symlink to one is fine). A device (/dev/zero), FIFO or
    socket would hang a reader or mislead it, so it is refused."""
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror})") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{path}: not a regular file (devices, FIFOs and sockets are "
                              "refused)")
    return path


MAX_JSON_BYTES = 64 << 20  # SD's largest JSON (tokenizer.json) is ~4 MB; a 200 MB one is refused


def _trusted_roots(root: Path) -> list[Path]:
    """Where files under `root` may resolve: `root` itself and, for a Hugging Face hub cache
    snapshot (`models--ORG--NAME/snapshots/REV/...`, whose files are symlinks into the same
    repository's `blobs/`), that repository's blobs folder and nothing else."""
    real = root.resolve()
    roots = [real]
    for folder in (real, *real.parents):
        if folder.parent.name == "snapshots" and (folder.parent.parent / "blobs").is_dir():
            roots.append((folder.parent.parent / "blobs").resolve())
            break
    return roots


def confined(root: Path, path: Path) -> Path:
    """`path` (under `root`) when it resolves inside `root`: a symlink out of the folder (to
    another model, to a file elsewhere on the machine) is refused, so nothing from outside is
    read or shipped as if it were the folder's."""
    real = path.resolve()
    if not any(real == r or real.is_relative_to(r) for r in _trusted_roots(root)):
        raise CheckpointError(f"{path}: resolves to {real}, outside {root}: refused (files "
                              "and folders must lie inside the folder)")
    return path


def check_tree(root: Path, names: tuple[str, ...]) -> None:
    """Every entry `names` lists under `root`, and everything inside those folders, resolves
    inside `root` (symlinked folders are checked, never descended)."""
    for name in names:
        top = confined(root, root / name)
        if not top.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            for entry in (*dirnames, *filenames):
                p = Path(dirpath) / entry
                if p.is_symlink():
                    confined(root, p)


def read_json_file(path: Path, root: Path | None = None) -> object:
    """JSON from a checkpoint folder: a regular file (inside `root` when given), at most
    MAX_JSON_BYTES, UTF-8, not nested beyond what the parser can take. One CheckpointError
    naming the file otherwise."""
    if root is not None:
        confined(root, path)
    size = regular_file(path).stat().st_size
    if size > MAX_JSON_BYTES:
        raise CheckpointError(f"{path}: {size / 2**20:,.0f} MiB is larger than any config or "
                              f"tokenizer file ({MAX_JSON_BYTES >> 20} MiB at most): refused")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except RecursionError:
        raise CheckpointError(f"{path}: unreadable JSON (nested too deeply)") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        why = err.strerror if isinstance(err, OSError) else f"{type(err).__name__}: {err}"
        raise CheckpointError(f"{path}: unreadable JSON ({why})") from None


def check_archive(path: Path) -> None:
    """A torch zip checkpoint whose members declare far more bytes than the archive holds (a zip
    bomb) is refused before anything is inflated."""
    if not zipfile.is_zipfile(path):
        return  # a legacy pickle: torch.load(weights_only=True) reads it without inflating
    try:
        with zipfile.ZipFile(path) as z:
            declared = sum(info.file_size for info in z.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({err})") from None
    size = path.stat().st_size
    if declared > ZIP_RATIO * size + SLACK:
        raise CheckpointError(
            f"{path}: refused: its archive members declare {declared / 2**30:.2f} GiB "
            f"uncompressed from a {size / 2**20:.1f} MiB file (a zip bomb?)")


def check_param_bytes(source: Any, family: str, shell: Any, file_bytes: int) -> None:
    """`shell` (built on the meta device from the config) must not need more bytes than the
    checkpoint files hold, even in fp16: a config that says depth=100000 beside 4 MB of weights
    is refused before anything is allocated."""
    params = sum(t.numel() for t in shell.state_dict().values())
    need = params * MIN_PARAM_BYTES
    if need > file_bytes + (1 << 20):
        raise CheckpointError(
            f"{source}: the {family} config describes {params:,} parameters (at least "
            f"{need / 2**20:,.1f} MiB) but the checkpoint holds {file_bytes / 2**20:,.1f} MiB: "
            "the config does not belong to these weights")
