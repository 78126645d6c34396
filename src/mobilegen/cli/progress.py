"""What a person sees while an export works. Everything here goes to stderr; stdout keeps the
results (the summary table, or the one `--json` document).

- On a terminal: a Rich live display with one line per subject (the model, each target, each
  artifact), a spinner on the running step, elapsed time per step, per line and in total, and a
  progress bar with done/total for counted work (latency runs, sampling steps, calibration,
  distillation). It keeps drawing while converters run: it writes to its own copy of the terminal's
  descriptor, which the toolchain log redirection (export/toolchain_log.py) does not touch.
- Not on a terminal (CI, pipes), and with `--verbose`: one plain line per finished step with its
  duration, no control characters. `--verbose` also lets the converters print to the terminal as
  they run (MOBILEGEN_TOOLCHAIN_OUTPUT=show, for this command only), which is why it draws no
  live display: their output would tear it.
- `--quiet`: nothing; only errors and the final summary.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from mobilegen.export.progress import Progress, Silent

SHOW_TOOLCHAIN = "MOBILEGEN_TOOLCHAIN_OUTPUT"


def seconds_text(s: float) -> str:
    if s < 10:
        return f"{s:.2f}s"
    if s < 60:
        return f"{s:.1f}s"
    return f"{int(s // 60)}m{s % 60:04.1f}s"


def split_step(name: str) -> tuple[str, str]:
    """A step name -> (the line it belongs to, what it does): 'validate:ort/d.onnx' ->
    ('ort/d.onnx', 'validate'); 'export:android-cpu:fp16' -> ('android-cpu', 'export fp16');
    'load' -> ('model', 'load')."""
    if ":" not in name:
        return "model", name
    action, subject = name.split(":", 1)
    subject, _, rest = subject.partition(":")
    return subject, f"{action} {rest}".strip()


class PlainSteps(Silent):
    """One line per finished step: its duration, then its name. A failed step prints nothing
    (the error line that follows says what went wrong)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def step_finished(self, name: str, seconds: float, ok: bool = True) -> None:
        if ok:
            self.stream.write(f"{seconds:8.2f} s  {name}\n")
            self.stream.flush()


@dataclass
class _Step:
    name: str
    action: str
    started: float
    seconds: float | None = None  # None while running
    ok: bool = True
    done: int = 0
    total: int = 0
    note: str = ""

    def elapsed(self, now: float) -> float:
        return self.seconds if self.seconds is not None else now - self.started


@dataclass
class _Line:
    subject: str
    spinner: Any
    steps: list[_Step] = field(default_factory=list)


class LiveSteps:
    """The Rich live display; a context manager (start/stop drawing).

    A background thread redraws it 8 times a second, except while counted work runs: then
    `advance` redraws it between two counted calls, so that no drawing thread competes with a
    timed latency call for the host's cores."""

    INTERVAL = 1 / 8

    def __init__(self, console: Any) -> None:
        from rich.live import Live

        self.lines: dict[str, _Line] = {}
        self.running: list[_Step] = []
        self.t0 = self.drawn = time.perf_counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.live = Live(console=console, get_renderable=self.render, auto_refresh=False,
                         redirect_stdout=False, redirect_stderr=True)
        self.ticker = threading.Thread(target=self._tick, daemon=True, name="mobilegen-progress")

    def __enter__(self) -> LiveSteps:
        self.live.start(refresh=True)
        self.ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.ticker.join()
        self.live.transient = not self.lines  # nothing ran (a cached result): leave no trace
        self.live.stop()

    def _tick(self) -> None:
        while not self.stop.wait(self.INTERVAL):
            with self.lock:
                counting = bool(self.running and self.running[-1].total)
            if not counting:
                self._draw()

    def _draw(self) -> None:
        self.drawn = time.perf_counter()
        self.live.refresh()

    def step_started(self, name: str) -> None:
        from rich.spinner import Spinner

        subject, action = split_step(name)
        with self.lock:
            line = self.lines.get(subject)
            if line is None:
                line = self.lines[subject] = _Line(subject, Spinner("dots", style="cyan"))
            step = _Step(name, action, time.perf_counter())
            line.steps.append(step)
            self.running.append(step)

    def step_finished(self, name: str, seconds: float, ok: bool = True) -> None:
        with self.lock:
            for i in range(len(self.running) - 1, -1, -1):
                if self.running[i].name == name:
                    step = self.running.pop(i)
                    step.seconds, step.ok = seconds, ok
                    break

    def advance(self, done: int, total: int, note: str = "") -> None:
        with self.lock:
            if self.running:
                step = self.running[-1]
                step.done, step.total, step.note = done, total, note
        if done == 1 or time.perf_counter() - self.drawn >= self.INTERVAL:
            self._draw()  # at once when counting starts, then 8 times a second

    def render(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        now = time.perf_counter()
        grid = Table.grid(padding=(0, 1))
        grid.add_column(width=1)
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(justify="right", no_wrap=True)
        grid.add_column(no_wrap=True, overflow="ellipsis")
        grid.add_column(no_wrap=True)
        with self.lock:
            for line in self.lines.values():
                grid.add_row(*self._row(line, now))
        grid.add_row("", Text("total", style="bold"), seconds_text(now - self.t0), "", "")
        return grid

    def _row(self, line: _Line, now: float) -> list[Any]:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        running = [s for s in line.steps if s.seconds is None]
        if running:
            icon: Any = line.spinner
        else:
            icon = (Text("✓", style="green") if all(s.ok for s in line.steps)
                    else Text("✗", style="red"))
        steps = Text()
        for s in line.steps:
            count = f" {s.done}/{s.total}" if s.total else ""
            style = "yellow" if s.seconds is None else ("dim" if s.ok else "red")
            steps.append(f"{s.action}{count} {seconds_text(s.elapsed(now))}  ", style=style)
        bar: Any = ""
        if running and running[-1].total:
            cur = running[-1]
            bar = Table.grid(padding=(0, 1))
            bar.add_row(ProgressBar(total=cur.total, completed=cur.done, width=24),
                        Text(f"{cur.done}/{cur.total} {cur.note}".rstrip()))
        total = sum(s.elapsed(now) for s in line.steps)
        return [icon, line.subject, seconds_text(total), steps, bar]


def _terminal_console() -> Any:
    """A console on a private copy of stderr's descriptor, so the display keeps drawing while
    toolchain_output points descriptor 2 at logs/toolchain.log."""
    from rich.console import Console

    stream = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding="utf-8",
                       errors="replace")
    return Console(file=stream, stderr=False)


@contextmanager
def export_progress(quiet: bool = False, verbose: bool = False) -> Iterator[Progress]:
    """The progress an export reports to, chosen by the options and by whether stderr is a
    terminal."""
    if quiet:
        yield Silent()
        return
    if verbose:
        before = os.environ.get(SHOW_TOOLCHAIN)
        os.environ[SHOW_TOOLCHAIN] = "show"
        try:
            yield PlainSteps(sys.stderr)
        finally:
            if before is None:
                os.environ.pop(SHOW_TOOLCHAIN, None)
            else:
                os.environ[SHOW_TOOLCHAIN] = before
        return
    if not sys.stderr.isatty():
        yield PlainSteps(sys.stderr)
        return
    console = _terminal_console()
    try:
        with LiveSteps(console) as live:
            yield live
    finally:
        console.file.close()


def timing_line(timings: dict[str, float], cached: bool = False, top: int = 6) -> str | None:
    """The report's step times as one line, slowest first (the rest counted, not named)."""
    if not timings:
        return None
    ordered = sorted(timings.items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{name} {seconds_text(s)}" for name, s in ordered[:top])
    more = f", {len(ordered) - top} more" if len(ordered) > top else ""
    when = " (when the cached result was exported)" if cached else ""
    return (f"step times{when}, slowest first: {shown}{more}; "
            f"sum {seconds_text(sum(timings.values()))}")
