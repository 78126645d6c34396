"""What long work tells whoever is watching: the steps of an export and the counted work in them.

The stage loop's StepTimer (run.py) calls `step_started` and `step_finished` around every step;
counted work inside a step (latency runs, sampling steps, calibration, distillation) calls
`advance(done, total)`, the same (done, total) shape that `generate()` and `time_fn()` take as
their `progress` callback. Steps may nest (a pipeline export runs two exports inside its own
steps); `advance` belongs to the innermost running step. The CLI renders this (cli/progress.py);
a library caller gets silence by default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Progress(Protocol):
    def step_started(self, name: str) -> None: ...

    def step_finished(self, name: str, seconds: float, ok: bool = True) -> None: ...

    def advance(self, done: int, total: int, note: str = "") -> None: ...


class Silent:
    """Progress that nobody watches."""

    def step_started(self, name: str) -> None:
        return None

    def step_finished(self, name: str, seconds: float, ok: bool = True) -> None:
        return None

    def advance(self, done: int, total: int, note: str = "") -> None:
        return None


class StepNames(Silent):
    """The older protocol: a callable given each step's name when it starts."""

    def __init__(self, on_start: Callable[[str], None]) -> None:
        self.on_start = on_start

    def step_started(self, name: str) -> None:
        self.on_start(name)


def as_progress(progress: Progress | Callable[[str], None] | None) -> Progress:
    if progress is None:
        return Silent()
    if hasattr(progress, "step_started"):
        return progress  # type: ignore[return-value]
    return StepNames(progress)  # type: ignore[arg-type]
