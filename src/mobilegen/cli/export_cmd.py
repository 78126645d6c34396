from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mobilegen.cli.common import (
    DebugOpt,
    JsonOpt,
    handle_errors,
    print_json,
    stdout_console,
)
from mobilegen.cli.progress import export_progress, timing_line


@handle_errors
def export(
    recipes: Annotated[list[Path], typer.Argument(help="Recipe TOML(s); see `mobilegen recipes`.")],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Output folder (default out/NAME); with several recipes, the folder "
        "that holds one NAME/ folder per recipe.")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j",  # bounded below: one line, not a box
                                      help="Recipes to export in parallel processes.")] = 1,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Export even when a cached result matches.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress: errors and the final summary only.")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Progress as plain lines, and what the converters print shown "
        "live, on the terminal instead of in logs/toolchain.log.")] = False,
    ray: Annotated[str | None, typer.Option(
        "--ray", help="Ray cluster address (auto, HOST:PORT, ray://HOST:PORT): each recipe is a "
        "Ray task declaring its estimated memory; outputs on the shared file system.")] = None,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Export recipes: load, capture, lower to each target, validate, time, report.

    A pipeline recipe ([pipeline]: a UNet and a VAE decoder) is always exported afresh: it
    bypasses the cache. In a batch it is one item, its components in turn in one worker."""
    from mobilegen.recipe import PipelineRecipe, load_any_recipe

    if quiet and verbose:
        raise typer.BadParameter("--quiet and --verbose exclude each other")
    if jobs < 1:
        from mobilegen.cli.common import OptionError

        raise OptionError(f"--jobs must be >= 1, found {jobs}")
    loaded = [load_any_recipe(r) for r in recipes]  # every recipe validates before work starts
    if len(loaded) == 1 and ray is None and isinstance(loaded[0], PipelineRecipe):
        from mobilegen.cli.pipeline_cmd import export_pipeline

        export_pipeline(loaded[0], out, json_output)
        return
    if len(loaded) == 1 and ray is None:
        _export_one(loaded[0], out or Path("out") / loaded[0].name, no_cache, json_output,
                    quiet, verbose)
        return
    names = [r.name for r in loaded]
    if len(set(names)) != len(names):
        from mobilegen.errors import RecipeError

        dup = next(n for n in names if names.count(n) > 1)
        raise RecipeError(f"two recipes are named '{dup}': their output folders would collide")
    outs = [(out or Path("out")) / n for n in names]
    if len(loaded) == 1:  # with --ray: the folder the local path would write
        outs = [out or Path("out") / names[0]]
    _export_many(recipes, outs, jobs, no_cache, json_output, quiet, verbose, ray)


def _export_one(recipe: Any, out_dir: Path, no_cache: bool, json_output: bool,
                quiet: bool = False, verbose: bool = False) -> None:
    import sys

    from mobilegen.errors import GateFailedError
    from mobilegen.export.single import export_recipe

    with export_progress(quiet, verbose) as progress:
        outcome = export_recipe(recipe, out_dir, use_cache=not no_cache, argv=sys.argv,
                                progress=progress)
    _show(outcome.report, outcome.out_dir, json_output,
          cached=outcome.cache_key if outcome.cached else None)
    if outcome.failures:
        note = " (cached result)" if outcome.cached else ""
        raise GateFailedError(f"{len(outcome.failures)} gate(s) failed: "
                              + "; ".join(outcome.failures) + note)


def _export_many(recipes: list[Path], outs: list[Path], jobs: int, no_cache: bool,
                 json_output: bool, quiet: bool = False, verbose: bool = False,
                 ray: str | None = None) -> None:
    from mobilegen.export.batch import run_batch, worst_exit_code

    items = list(zip(recipes, outs, strict=True))
    with export_progress(quiet, verbose) as progress:  # one line per recipe
        if ray is not None:
            from mobilegen.export.ray_tasks import run_batch_ray

            results = run_batch_ray(items, no_cache, ray, progress)
        else:
            results = run_batch(items, jobs, no_cache, progress)
    code = worst_exit_code(results)
    if json_output:
        print_json({"exit_code": code, "results": [
            {"recipe": str(r.recipe), "out_dir": str(r.out_dir), "exit_code": r.exit_code,
             "error": r.error, "report": r.report} for r in results]})
    else:
        from mobilegen.report.markdown import batch_table

        stdout_console().print(batch_table(results))
    if code != 0:
        raise typer.Exit(code)


def _show(report: dict, out_dir: Path, json_output: bool, cached: str | None = None) -> None:
    from mobilegen.report.markdown import passes_table
    from mobilegen.report.summary import single_summary

    if json_output:
        print_json({"out_dir": str(out_dir), "cache": {"hit": cached is not None, "key": cached},
                    **report})
        return
    console = stdout_console()
    for part in single_summary(report, console.width):  # 80 columns up; wide from 120
        console.print(part, highlight=False)
    if (table := passes_table(report)) is not None:
        console.print(table)
    for line in latency_lines(report):
        console.print(line, highlight=False)
    if timing := timing_line(report.get("timings_s") or {}, cached=cached is not None):
        console.print(timing, highlight=False, soft_wrap=True)
    note = f" (cached result {cached}; --no-cache to redo)" if cached else ""
    console.print(f"wrote {out_dir}/ (manifest.json, report.json, report.md, report.html){note}",
                  highlight=False)


def latency_lines(report: dict) -> list[str]:
    """One line each for the optional per-block table and device estimates; estimates are
    labelled as such and never share a line with a measured figure."""
    lines = []
    if b := report.get("blocks"):
        prof = b.get("op_profile") or {}
        share = (f"; attention {100 * prof['attention_share']:.1f}% of kernel time"
                 if "attention_share" in prof else "")
        lines.append(f"per-block table: {len(b['rows'])} distinct blocks, sum {b['sum_ms']:.2f} ms "
                     f"vs whole model {b['whole_ms']:.2f} ms ({b['error_pct']:+.1f}%){share}")
    for r in (report.get("estimates") or {}).get("rows", []):
        lines.append(f"ESTIMATE {r['profile']} ({r['device']}): ~{r['latency_ms']:.1f} ms, "
                     f"calibration error ±{r['calibration_error_pct']:.0f}% on held-out "
                     "published points (not measured)")
    for r in ((report.get("estimates") or {}).get("calibrated") or {}).get("rows", []):
        if r["estimate_ms"] is not None:  # the uncalibrated profiles are listed in report.md
            lines.append(f"ESTIMATE {r['profile']} ({r['device']}, {r['precision']}): "
                         f"~{r['estimate_ms']:.2f} ms, held-out error median "
                         f"{r['cv_median_abs_err_pct']:.0f}% / p90 {r['cv_p90_abs_err_pct']:.0f}% "
                         f"over {r['rows']} AI Hub rows (not measured)")
    return lines
