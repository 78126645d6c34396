from __future__ import annotations

from typing import Any

from mobilegen.cli.common import DebugOpt, JsonOpt, handle_errors, print_json, stdout_console


def describe(profile: Any) -> dict[str, Any]:
    """One profile as a plain dict: what it produces and what it needs installed."""
    from importlib.util import find_spec

    from mobilegen.targets import RUNTIMES

    entry = RUNTIMES[profile.runtime]
    specifics = {key: getattr(profile, key) for key in entry.profile_keys}
    return {
        "name": profile.name, "description": profile.description, "runtime": profile.runtime,
        "produces": entry.produces, "precision": profile.precision,
        "layout": profile.layout, "threads": profile.threads, "rewrites": list(profile.rewrites),
        **specifics,
        "extra": entry.extra, "installed": find_spec(entry.needs) is not None,
    }


@handle_errors
def targets(json_output: JsonOpt = False, debug: DebugOpt = False) -> None:
    """List the export target profiles (export_targets/) and what each produces."""
    from mobilegen.targets.profile import list_target_names, load_target

    rows = [describe(load_target(name)) for name in list_target_names()]
    if json_output:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(title="export target profiles")
    for col in ("name", "runtime", "produces", "precision", "layout", "device settings",
                "prefers", "installed"):
        table.add_column(col)
    for r in rows:
        device = ", ".join(f"{k}={r[k]}" for k in ("delegate", "deployment_target",
                                                      "compute_units", "opset") if k in r)
        installed = "yes" if r["installed"] else f"no: pip install 'mobilegen[{r['extra']}]'"
        table.add_row(r["name"], r["runtime"], r["produces"], r["precision"], r["layout"],
                      device, ", ".join(r["rewrites"]) or "-", installed)
    stdout_console().print(table)
