from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mobilegen.cli.common import DebugOpt, JsonOpt, handle_errors, print_json, stdout_console


def inspect_checkpoint(path: Path, image_size: int | None,
                       component: str | None = None) -> dict[str, Any]:
    from mobilegen.checkpoints.loader import load_checkpoint
    from mobilegen.measure.costs import count_macs, count_params, group_costs

    loaded = load_checkpoint(path, component=component)
    model, cfg = loaded.model, loaded.config
    size = image_size or cfg.image_size
    macs, table = count_macs(model, model.example_inputs(1, image_size=size))
    return {
        "checkpoint": str(path),
        "family": loaded.family,
        "config": cfg.to_dict(),
        "source_dtype": loaded.source_dtype,
        "params": count_params(model),
        "image_size": size,
        "gmac": macs / 1e9,
        "modules": group_costs(table),
    }


@handle_errors
def inspect(
    checkpoint: Annotated[Path, typer.Argument(
        help="safetensors / .pt / .ckpt checkpoint, or a diffusers folder.")],
    recipe: Annotated[
        Path | None, typer.Option(help="Take the resolution from this recipe.")
    ] = None,
    image_size: Annotated[int | None, typer.Option(help="Resolution for the MAC count.")] = None,
    component: Annotated[str | None, typer.Option(
        help="Of a diffusers pipeline root: 'unet' (default), 'vae' or 'text_encoder'.")] = None,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Family, config, parameters, GMAC and a per-module table of a checkpoint (or of the
    checkpoint a recipe names: a .toml file or a shipped recipe's name, e.g. stoic-digits)."""
    from mobilegen.recipe import load_recipe, resolve_recipe

    named = resolve_recipe(checkpoint)
    if named.suffix == ".toml" and not checkpoint.is_dir():  # a recipe given as the argument
        loaded_recipe = load_recipe(named)
        recipe, ckpt = None, loaded_recipe.checkpoint_path()
        if ckpt is None:
            from mobilegen.errors import RecipeError

            raise RecipeError(f"{named}: a random-init recipe has no checkpoint to inspect")
        image_size = image_size or loaded_recipe.image_size
        checkpoint = ckpt
    if recipe is not None and image_size is None:
        image_size = load_recipe(recipe).image_size
    info = inspect_checkpoint(checkpoint, image_size, component)
    if json_output:
        print_json(info)
        return
    from rich.table import Table

    console = stdout_console()
    console.print(f"[bold]{checkpoint}[/]: family {info['family']}, {info['params']:,} params, "
                  f"{info['gmac']:.4f} GMAC at {info['image_size']}x{info['image_size']}")
    console.print("config: " + ", ".join(f"{k}={v}" for k, v in info["config"].items()),
                  highlight=False)
    table = Table()
    for col in ("module", "params", "GMAC", "% MACs"):
        table.add_column(col, justify="left" if col == "module" else "right")
    total = max(1, sum(r["macs"] for r in info["modules"]))
    for r in info["modules"]:
        table.add_row(r["module"], f"{r['params']:,}", f"{r['macs'] / 1e9:.4f}",
                      f"{100 * r['macs'] / total:.1f}")
    console.print(table)
