"""The `mobilegen` command: wires the command groups; each lives in its own module."""

from __future__ import annotations

import signal
from types import FrameType

import typer

from mobilegen.cli import (
    bench_cmd,
    distill_cmd,
    estimate_cmd,
    export_cmd,
    inspect_cmd,
    prune_cmd,
    recipes_cmd,
    report_cmd,
    sample_cmd,
    sensitivity_cmd,
    targets_cmd,
)

app = typer.Typer(
    name="mobilegen",
    help="Trained efficient diffusion checkpoints -> validated mobile artifacts "
    "(ONNX Runtime mobile, TFLite/LiteRT, Core ML).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("export")(export_cmd.export)
app.command("inspect")(inspect_cmd.inspect)
app.command("recipes")(recipes_cmd.recipes)
app.command("sample")(sample_cmd.sample)
app.command("targets")(targets_cmd.targets)
app.command("prune")(prune_cmd.prune)
app.command("distill-decoder")(distill_cmd.distill_decoder)
app.command("report")(report_cmd.report)
app.command("bench")(bench_cmd.bench)
app.command("sensitivity")(sensitivity_cmd.sensitivity)
app.command("estimate")(estimate_cmd.estimate)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGINT / SIGTERM: noted first (a library may swallow or rewrap the KeyboardInterrupt,
    and the interrupt must still win: exit 130, nothing committed), then raised so it unwinds
    through the staging folder's cleanup like Ctrl-C."""
    from mobilegen.export.staging import INTERRUPT

    INTERRUPT.set()
    raise KeyboardInterrupt


def main() -> None:
    from mobilegen.export.workers import silence_known_noise

    silence_known_noise()
    signal.signal(signal.SIGTERM, _interrupt)
    # Ctrl-C must unwind the staging folder even when a parent shell started us with SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    app()
