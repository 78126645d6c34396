"""Atomic output folders: everything is written into a hidden staging folder beside the target and
swapped in only when complete, so an interrupted or failed run leaves the previous contents intact.

Ownership: a finished output folder holds `.mobilegen`, a small JSON marker with the tool name, the
sha256 of its manifest.json and the list of files mobilegen wrote. An existing folder is replaced
only when its marker is intact and it holds nothing else; anything else (a project folder, a file,
a symbolic link) is refused untouched. Leftovers of killed runs (`.NAME.staging-PID`,
`.NAME.old-PID`) whose process is gone are removed by the next run, which says so on stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from mobilegen.errors import OutputError

# Set by the CLI's SIGINT/SIGTERM handlers. A library that swallows the KeyboardInterrupt they
# raise (or turns it into its own error) must not let the run commit or exit with another code.
INTERRUPT = threading.Event()
MARKER = ".mobilegen"  # written only by mobilegen, last, into a complete output folder
TOOL = "mobilegen"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (a process we may not signal still exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_leftovers(folder: Path, pattern: str) -> None:
    """Remove entries of `folder` whose name matches `pattern` (a regex with a `pid` group) and
    whose process is gone; one line on stderr per removal."""
    try:
        entries = list(folder.iterdir())
    except OSError:  # a folder we cannot list holds nothing we could remove
        return
    for p in entries:
        m = re.fullmatch(pattern, p.name)
        if m is None or int(m["pid"]) == os.getpid() or pid_alive(int(m["pid"])):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError as e:
            sys.stderr.write(f"warning: cannot remove leftover {p}: {e.strerror}\n")
            continue
        sys.stderr.write(f"removed leftover {p} (its process {m['pid']} is gone)\n")


def _written_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_symlink() or not p.is_dir())


def write_marker(root: Path) -> None:
    """Record that mobilegen wrote `root`: tool, manifest hash, every file (the marker last)."""
    manifest = root / "manifest.json"
    data = {"tool": TOOL, "manifest_sha256": sha256_file(manifest) if manifest.is_file() else None,
            "files": [f for f in _written_files(root) if f != MARKER]}
    (root / MARKER).write_text(json.dumps(data, indent=1) + "\n")


def foreign_content(root: Path) -> str | None:
    """None when `root` may be replaced (empty, or wholly written by mobilegen); else why not.
    The marker is looked at first: a folder without one is refused without walking it (`--out /`
    would otherwise list the whole file system first)."""
    try:
        if next(root.iterdir(), None) is None:
            return None
    except OSError as e:
        return f"it cannot be listed ({e.strerror})"
    if not (root / MARKER).is_file() or (root / MARKER).is_symlink():
        return f"it has no valid {MARKER} marker, so it was not written by mobilegen"
    present = _written_files(root)
    try:
        marker = json.loads((root / MARKER).read_text())
        tool, listed, digest = marker["tool"], set(marker["files"]), marker["manifest_sha256"]
    except (OSError, ValueError, TypeError, KeyError):
        return f"it has no valid {MARKER} marker, so it was not written by mobilegen"
    manifest = root / "manifest.json"
    found = sha256_file(manifest) if manifest.is_file() and not manifest.is_symlink() else None
    if tool != TOOL or digest != found:
        return f"its {MARKER} marker does not match its manifest.json"
    extra = [f for f in present if f != MARKER and f not in listed]
    if extra:
        return f"'{extra[0]}' was not written by mobilegen"
    return None


class StagingFolder:
    """Paths inside a staging folder (a child process lowering one target writes through this;
    the folder itself belongs to the parent's StagedOutput)."""

    def __init__(self, staging: Path) -> None:
        self.staging = staging

    def path(self, relative: str) -> Path:
        """A path inside the staging folder; refuses names that would escape it."""
        p = (self.staging / relative).resolve()
        if not p.is_relative_to(self.staging.resolve()):
            raise OutputError(f"artifact name escapes the output folder: {relative!r}")
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def dir(self, relative: str) -> Path:
        """A folder inside the staging folder, created."""
        p = self.path(relative)
        p.mkdir(exist_ok=True)
        return p


class StagedOutput(StagingFolder):
    def __init__(self, out_dir: str | Path) -> None:
        self.out = Path(out_dir).absolute()
        if self.out.is_symlink():
            raise OutputError(f"refusing to replace {self.out}: it is a symbolic link "
                              "(give the real folder as --out)")
        if self.out.exists() and not self.out.is_dir():
            raise OutputError(f"output path is a file, not a folder: {self.out}")
        self._check_owner()
        parent = self.out.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create output folder {parent}: {e.strerror}") from e
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"output folder is not writable: {parent}")
        name = re.escape(self.out.name)
        sweep_leftovers(parent, rf"\.{name}\.(staging|old)-(?P<pid>\d+)")
        self.staging = parent / f".{self.out.name}.staging-{os.getpid()}"
        self.committed = False

    def _check_owner(self) -> None:
        for parent in self.out.parents:  # OUT/unet of a pipeline export has its own marker,
            if (parent / MARKER).is_file():  # but replacing it would break the pipeline's
                raise OutputError(f"refusing to write {self.out}: it is inside the mobilegen "
                                  f"export {parent} (choose a folder outside it)")
        if self.out.is_dir() and (why := foreign_content(self.out)) is not None:
            raise OutputError(f"refusing to replace {self.out}: {why}; nothing was touched "
                              "(move it away or choose another --out)")

    def __enter__(self) -> StagedOutput:
        shutil.rmtree(self.staging, ignore_errors=True)
        try:
            self.staging.mkdir()
        except OSError as e:  # root passes os.access checks on read-only mounts
            raise OutputError(f"cannot write in {self.staging.parent}: {e.strerror}") from e
        return self

    def write_json(self, relative: str, data: Any) -> Path:
        p = self.path(relative)
        p.write_text(json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")
        return p

    def commit(self) -> Path:
        if INTERRUPT.is_set():  # an interrupt that a library swallowed still wins
            raise KeyboardInterrupt
        write_marker(self.staging)
        if self.out.is_symlink():  # appeared while we worked: still never replaced
            raise OutputError(f"refusing to replace {self.out}: it is a symbolic link")
        self._check_owner()  # something may have been put there while we worked
        old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
        if self.out.exists():
            os.replace(self.out, old)
        os.replace(self.staging, self.out)
        shutil.rmtree(old, ignore_errors=True)
        self.committed = True
        return self.out

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.committed:
            shutil.rmtree(self.staging, ignore_errors=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
