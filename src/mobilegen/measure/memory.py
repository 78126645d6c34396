"""Memory of a whole process tree (this process and every descendant: the export's children,
converter subprocesses), sampled from /proc on a background thread.

Two figures per sample: RSS summed over the tree (what `ps`/`top` add up; pages shared between
processes, such as a memory-mapped weights file, count once per process) and PSS summed (shared
pages split between the processes mapping them: the tree's real footprint). Peaks are kept for
the whole run and per named step. Linux only: elsewhere `available()` is False and nothing is
sampled (the report then says the peak was not measured).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

GB = 1024**3


def available() -> bool:
    return Path("/proc/self/smaps_rollup").is_file()


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # exited while we looked
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in (...) may hold spaces
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def tree_pids(root: int) -> list[int]:
    kids = _children_map()
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(kids.get(pid, []))
    return out


def _rollup(pid: int) -> tuple[int, int]:
    """(rss, pss) bytes of one process; (0, 0) when it is gone or unreadable."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return 0, 0
    return rss, pss


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss(pid: int) -> int:
    """RSS bytes of one process from /proc/PID/statm: a counter, ~0.04 ms to read, where
    smaps_rollup walks every page table (~45 ms per GB of a torch process's RSS: at 4 Hz over an
    SD-size child, the sampler would take a core of a 2-core host); 0 when it is gone."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def tree_rss(root: int | None = None) -> int:
    """Sum of RSS bytes over `root` (default: this process) and its descendants (cheap)."""
    return sum(_rss(pid) for pid in tree_pids(root or os.getpid()))


def tree_memory(root: int | None = None) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) in bytes over `root` (default: this process) and descendants."""
    rss = pss = 0
    for pid in tree_pids(root or os.getpid()):
        r, p = _rollup(pid)
        rss, pss = rss + r, pss + p
    return rss, pss


@dataclass(frozen=True)
class Peak:
    rss_bytes: int
    pss_bytes: int

    def to_dict(self) -> dict[str, float]:
        return {"rss_gb": round(self.rss_bytes / GB, 2), "pss_gb": round(self.pss_bytes / GB, 2)}


class TreeSampler:
    """Samples the tree every `interval` seconds until stopped; `begin`/`end` bracket a step so
    its own peak is kept (a step's peak includes whatever earlier steps left resident). RSS is
    read every tick (statm, cheap); PSS (smaps_rollup, costly on big processes) at every step's
    start and end and whenever the RSS has risen PSS_STEP past the RSS of the last PSS reading,
    so the PSS peak is taken near the RSS peak without walking page tables four times a
    second."""

    PSS_STEP = 1.05

    def __init__(self, interval: float = 0.25, root: int | None = None) -> None:
        self.interval, self.root = interval, root or os.getpid()
        self.peak = Peak(0, 0)
        self.steps: dict[str, Peak] = {}
        self._open: dict[str, Peak] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pss_rss = 0  # the tree's RSS when PSS was last read

    def __enter__(self) -> TreeSampler:
        if available():
            self.sample(full=True)
            self._thread = threading.Thread(target=self._loop, name="mobilegen-memory",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.sample(full=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self, full: bool = False) -> None:
        """One reading; `full`: PSS too, whatever the RSS (step boundaries)."""
        rss, pss = tree_rss(self.root), 0
        if full or rss > self._pss_rss * self.PSS_STEP:
            rss, pss = tree_memory(self.root)
            self._pss_rss = rss
        with self._lock:
            self.peak = Peak(max(self.peak.rss_bytes, rss), max(self.peak.pss_bytes, pss))
            for name, p in self._open.items():
                self._open[name] = Peak(max(p.rss_bytes, rss), max(p.pss_bytes, pss))

    def begin(self, name: str) -> None:
        if self._thread is None:
            return
        self.sample(full=True)
        with self._lock:
            self._open[name] = self.steps.get(name, Peak(0, 0))

    def end(self, name: str) -> None:
        if self._thread is None:
            return
        self.sample(full=True)
        with self._lock:
            if name in self._open:
                self.steps[name] = self._open.pop(name)

    @property
    def measured(self) -> bool:
        return self.peak.rss_bytes > 0


def release_freed() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc keeps freed arenas mapped, so a
    freed converter's gigabytes would still count against the next target)."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)
