from __future__ import annotations

from mobilegen.cli.common import DebugOpt, JsonOpt, handle_errors, print_json, stdout_console


@handle_errors
def recipes(json_output: JsonOpt = False, debug: DebugOpt = False) -> None:
    """List the shipped recipes."""
    from mobilegen.recipe import RECIPES_DIR, PipelineRecipe, list_recipes, load_any_recipe

    rows = []
    for path in list_recipes():
        r = load_any_recipe(path)
        rel = str(path.relative_to(RECIPES_DIR.parent))
        if isinstance(r, PipelineRecipe):  # a UNet + decoder chain: show what it is made of
            parts = (r.unet, r.decoder)
            rows.append({"name": r.name, "path": rel,
                         "family": "pipeline: " + " + ".join(p.model.family for p in parts),
                         "init": "/".join(dict.fromkeys(p.model.init for p in parts)),
                         "targets": list(dict.fromkeys(t for p in parts for t in p.targets)),
                         "description": r.description,
                         "components": {"unet": r.unet.name, "decoder": r.decoder.name}})
            continue
        rows.append({"name": r.name, "path": rel,
                     "family": r.model.family, "init": r.model.init, "targets": r.targets,
                     "description": r.description})
    if json_output:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(title="shipped recipes")
    for col in ("name", "family", "init", "targets", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["family"], r["init"], ", ".join(r["targets"]), r["description"])
    stdout_console().print(table)
