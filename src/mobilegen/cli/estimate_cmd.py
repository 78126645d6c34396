"""`mobilegen estimate RECIPE|CHECKPOINT --target PROFILE`: calibrated device latency estimates
without exporting (what an architecture search queries per candidate)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from mobilegen.cli.common import DebugOpt, JsonOpt, handle_errors, print_json, stdout_console


@dataclass(frozen=True)
class EstimateSource:
    """The model an estimate is for, with the input its forward pass is counted at."""

    what: str  # the recipe or checkpoint, as given
    family: str
    weights: str  # "random (built on meta)" or the checkpoint path
    image_size: int
    model: Any
    inputs: tuple[Any, ...]


def load_source(arg: Path) -> EstimateSource:
    """A recipe (a .toml or a shipped recipe's name) or a checkpoint. A random-init recipe is
    built on the meta device, so an SD-1.5-sized UNet costs no memory."""
    import torch

    from mobilegen.checkpoints.loader import load_checkpoint
    from mobilegen.export.run import load_model
    from mobilegen.recipe import load_recipe, resolve_recipe

    named = resolve_recipe(arg)
    if named.suffix == ".toml" and not arg.is_dir():
        recipe = load_recipe(named)
        if recipe.model.init == "random":
            with torch.device("meta"):
                loaded = load_model(recipe)
            weights = "random (built on meta)"
        else:
            loaded = load_model(recipe)
            weights = str(recipe.checkpoint_path())
        size = recipe.export_size(loaded.config)
    else:
        loaded = load_checkpoint(arg)
        weights, size = str(arg), int(loaded.config.image_size)
    device = next(iter(loaded.model.parameters())).device
    inputs = tuple(x.to(device) for x in loaded.model.example_inputs(1, image_size=size))
    return EstimateSource(str(arg), loaded.family, weights, size, loaded.model, inputs)


def _render(src: EstimateSource, rows: list[Any]) -> None:
    from rich.table import Table

    console = stdout_console()
    console.print(f"[bold]{src.what}[/]: {src.family}, weights {src.weights}, "
                  f"{src.image_size}x{src.image_size}, {rows[0].gmacs:.4g} GMAC", highlight=False)
    table = Table(title=rows[0].label)
    for col in ("profile", "calibrated on", "estimate ms", "band ms (CV p90)", "CV median |err|",
                "rows"):
        table.add_column(col, justify="left" if col in ("profile", "calibrated on") else "right")
    for r in rows:
        on = f"{r.device} ({r.runtime}, {r.precision})" if r.device else "-"
        if r.estimate_ms is None:
            table.add_row(r.profile, on, "no calibration", r.reason.removeprefix(
                "no calibration: "), "", str(r.rows or ""))
            continue
        table.add_row(r.profile, on, f"{r.estimate_ms:.2f}",
                      f"{r.band_ms[0]:.2f}-{r.band_ms[1]:.2f}", f"{r.cv_median_abs_err_pct:.0f}%",
                      f"{r.rows} ({r.families} families)")
    console.print(table)
    unseen = sorted({op for r in rows for op in r.uncalibrated_ops})
    if unseen:
        console.print(f"ops no calibration row used (priced by their class): {', '.join(unseen)}",
                      highlight=False)


@handle_errors
def estimate(
    source: Annotated[Path, typer.Argument(
        help="A recipe (.toml or a shipped recipe's name) or a checkpoint.")],
    target: Annotated[list[str], typer.Option(
        "--target", "-t", help="Target profile (repeatable), e.g. snapdragon-8gen3-htp.")],
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Estimated device latency per target profile, from linear models fitted on Qualcomm AI
    Hub's published phone measurements, with the held-out (leave-one-family-out) error band.
    A profile, runtime or precision with no calibration, or a model outside what was
    calibrated, prints "no calibration" and no number (exit 0)."""
    from mobilegen.measure import latency
    from mobilegen.targets.profile import load_target

    profiles = [load_target(t) for t in target]
    src = load_source(source)
    rows = latency.estimate_model(src.model, src.inputs, profiles)
    if json_output:
        print_json({"source": src.what, "family": src.family, "weights": src.weights,
                    "image_size": src.image_size, "estimates": [r.to_dict() for r in rows]})
        return
    _render(src, rows)
