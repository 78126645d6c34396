from __future__ import annotations

from mobilegen.cli.common import DebugOpt, JsonOpt, handle_errors, print_json, stdout_console


@handle_errors
def recipes(json_output: JsonOpt = False, debug: DebugOpt = False) -> None:
    """List the shipped recipes."""
    from mobilegen.recipe import RECIPES_DIR, list_recipes, load_recipe

    rows = []
    for path in list_recipes():
        r = load_recipe(path)
        rows.append({"name": r.name, "path": str(path.relative_to(RECIPES_DIR.parent)),
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
