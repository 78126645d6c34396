"""Shared CLI pieces: option aliases, the one error table, and the output layer."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer

from mobilegen.errors import EXIT_USAGE, MobilegenError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output folder.")]

P = ParamSpec("P")
R = TypeVar("R")


class OptionError(MobilegenError):
    """A command-line option with an impossible value: one line naming it, exit 2 (a Click
    range error would print a usage box instead of one line)."""

    exit_code = EXIT_USAGE


def stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def stdout_console() -> Any:
    from rich.console import Console

    # Rich falls back to 80 columns when piped (CI logs); the summary table needs more.
    return Console() if sys.stdout.isatty() else Console(width=160)


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Map MobilegenError (and Ctrl-C / SIGTERM) to one line on stderr and its exit code."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from rich.markup import escape

        from mobilegen.errors import EXIT_GATE
        from mobilegen.export.staging import INTERRUPT

        debug = bool(kwargs.get("debug"))
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            _interrupted()
        except Exception as e:
            # A signal that landed inside a library (torch.onnx.export) may come back as that
            # library's own error: the interrupt still wins.
            if INTERRUPT.is_set():
                _interrupted()
            if debug or not isinstance(e, MobilegenError):
                raise
            prefix = "gate failed" if e.exit_code == EXIT_GATE else "error"
            # user text (paths, keys like [model.config]) is not Rich markup: escape it
            stderr_console().print(f"[bold red]{prefix}:[/] {escape(str(e))}", highlight=False,
                                   soft_wrap=True)
            raise typer.Exit(e.exit_code) from None

    return wrapper


def _interrupted() -> NoReturn:
    from mobilegen.errors import EXIT_INTERRUPTED

    stderr_console().print("interrupted: the output folder was left as it was")
    raise typer.Exit(EXIT_INTERRUPTED) from None


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, allow_nan=False) + "\n")


def progress_printer() -> Callable[[str], None]:
    """Step names on stderr when it is a terminal; quiet in CI."""
    if not sys.stderr.isatty():
        return lambda step: None
    console = stderr_console()
    return lambda step: console.print(f"[dim]· {step}[/]")


@contextmanager
def distill_progress() -> Iterator[Callable[[int, int, float], None] | None]:
    """A Rich progress bar on stderr for pass recovery (distillation); None (quiet) in CI."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("recovery"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]:.3e}"), TimeRemainingColumn(),
                  console=stderr_console(), transient=True) as bar:
        tasks: dict[int, Any] = {}

        def update(step: int, steps: int, loss: float) -> None:
            if step == 1 or steps not in tasks:  # a new distillation run starts a new bar
                tasks[steps] = bar.add_task("recovery", total=steps, loss=loss)
            bar.update(tasks[steps], completed=step, loss=loss)

        yield update
