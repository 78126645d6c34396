"""The `mobilegen` command: wires the command groups; each lives in its own module."""

from __future__ import annotations

import signal
from types import FrameType

import typer

from mobilegen.cli import export_cmd, inspect_cmd, recipes_cmd, sample_cmd

app = typer.Typer(
    name="mobilegen",
    help="Trained efficient diffusion checkpoints -> validated mobile artifacts "
    "(ONNX Runtime mobile).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("export")(export_cmd.export)
app.command("inspect")(inspect_cmd.inspect)
app.command("recipes")(recipes_cmd.recipes)
app.command("sample")(sample_cmd.sample)


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the staging folder's cleanup like Ctrl-C


def main() -> None:
    signal.signal(signal.SIGTERM, _sigterm)
    app()
