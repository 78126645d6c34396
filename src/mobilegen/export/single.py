"""Export one recipe through the cache: serve a verified cached result, or run the export and
store it. The CLI and batch workers both call this; neither parses the other's output."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mobilegen.export import cache

if TYPE_CHECKING:
    from mobilegen.export.run import Progress, TrainProgress
    from mobilegen.recipe import Recipe


@dataclass
class Outcome:
    out_dir: Path
    report: dict[str, Any]  # report.json as written
    cache_key: str
    cached: bool  # served from the cache

    @property
    def failures(self) -> list[str]:
        return list(self.report["gates"]["failures"])


def export_recipe(recipe: Recipe, out_dir: Path, *, use_cache: bool = True,
                  argv: list[str] | None = None, progress: Progress | None = None,
                  train_progress: TrainProgress | None = None) -> Outcome:
    from mobilegen.export.run import run_export

    key = cache.export_key(recipe)
    entry = cache.lookup(key) if use_cache else None
    if entry is not None:
        return Outcome(out_dir, cache.restore(entry, out_dir), key, cached=True)
    result = run_export(recipe, out_dir, progress or (lambda step: None), argv=argv,
                        train_progress=train_progress)
    cache.store(key, result.out_dir)  # a gate-failed result is a result too: cached as such
    return Outcome(result.out_dir, result.report.to_dict(), key, cached=False)
