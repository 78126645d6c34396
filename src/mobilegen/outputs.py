"""Atomic output folders: everything is written into a hidden staging folder beside the target and
swapped in only when complete, so an interrupted or failed run leaves the previous contents intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

from mobilegen.errors import OutputError

OWNER_MARK = "report.json"  # a folder holding this was written by mobilegen and may be replaced


class StagedOutput:
    def __init__(self, out_dir: str | Path) -> None:
        self.out = Path(out_dir).absolute()
        if self.out.exists() and not self.out.is_dir():
            raise OutputError(f"output path is a file, not a folder: {self.out}")
        if self.out.is_dir() and any(self.out.iterdir()) and not (self.out / OWNER_MARK).exists():
            raise OutputError(
                f"refusing to replace {self.out}: it is not empty and was not written by mobilegen"
            )
        parent = self.out.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create output folder {parent}: {e.strerror}") from e
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"output folder is not writable: {parent}")
        self.staging = parent / f".{self.out.name}.staging-{os.getpid()}"
        self.committed = False

    def __enter__(self) -> StagedOutput:
        shutil.rmtree(self.staging, ignore_errors=True)
        try:
            self.staging.mkdir()
        except OSError as e:  # root passes os.access checks on read-only mounts
            raise OutputError(f"cannot write in {self.staging.parent}: {e.strerror}") from e
        return self

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

    def write_json(self, relative: str, data: Any) -> Path:
        p = self.path(relative)
        p.write_text(json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")
        return p

    def commit(self) -> Path:
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
