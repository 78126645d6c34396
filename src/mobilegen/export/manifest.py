"""manifest.json: what an app needs to drive the artifacts (the component entry: inputs, outputs,
conditioning, sampler and its constants) and what CI needs to trust them (files with sha256,
provenance). The component entry also drives the export's own end-to-end check."""

from __future__ import annotations

import shlex
import sys
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mobilegen.export.staging import sha256_file
from mobilegen.models import get_family
from mobilegen.report.provenance import library_versions

if TYPE_CHECKING:
    from mobilegen.checkpoints.loader import LoadedModel
    from mobilegen.recipe import Recipe
    from mobilegen.signature import ModelIO
    from mobilegen.targets.base import Artifact

MANIFEST_SCHEMA = 2  # 2: file entries carry accelerator coverage


def component_entry(recipe: Recipe, loaded: LoadedModel, io: ModelIO, size: int) -> dict[str, Any]:
    """The manifest's description of how to drive the component (also drives e2e parity).

    The family's `component_entry(cfg, recipe, size)` (in its model module) gives what only it
    knows: name, conditioning, sample shape, value ranges, layouts, latent scaling. A component
    with conditioning gets the shared sampler entry; one without (the VAE decoder) gets none."""
    from mobilegen.sampling.generate import sampler_config
    from mobilegen.sampling.samplers import VPSchedule, sampler_constants

    own = get_family(loaded.family).component_entry(loaded.config, recipe, size)
    entry: dict[str, Any] = {"name": own.pop("name"), "family": loaded.family,
                             "inputs": [t.to_dict() for t in io.inputs],
                             "outputs": [t.to_dict() for t in io.outputs], **own}
    cond = own.get("conditioning")
    _check_labels(recipe, loaded, cond)
    if cond is None:  # not a denoiser: nothing to sample
        entry["conditioning"] = {"kind": "none"}
        return entry
    s = recipe.sampler
    schedule = VPSchedule()
    sampler = {"kind": s.kind, "steps": s.steps, "guidance_scale": s.guidance_scale,
               "time_spacing": s.time_spacing, "seed": s.seed, "num_images": s.num_images,
               "schedule": schedule.to_dict()}
    sampler["constants"] = sampler_constants(sampler_config(sampler), schedule)
    guided = cond["kind"] != "none" and s.guidance_scale != 1.0
    entry["prediction"] = "epsilon"
    entry["guidance"] = {"scale": s.guidance_scale,
                         "batch": "2B: [conditional; null] concatenated" if guided else "B"}
    entry["sampler"] = sampler
    return entry


def _check_labels(recipe: Recipe, loaded: LoadedModel, cond: dict[str, Any] | None) -> None:
    """Class labels are bounded by the model's classes, known only once it is loaded."""
    from mobilegen.errors import RecipeError

    if recipe.sampler.labels is None:
        return
    classes = getattr(loaded.config, "num_classes", 0) if (cond or {}).get("kind") == "class" \
        else 0
    if classes == 0:
        raise RecipeError(f"{recipe.path}: key 'sampler.labels': the model is not "
                          "class-conditional (it takes no labels)")
    bad = [label for label in recipe.sampler.labels if not 0 <= label < classes]
    if bad:
        raise RecipeError(f"{recipe.path}: key 'sampler.labels': label {bad[0]} is out of range "
                          f"(the model has {classes} classes: 0..{classes - 1})")


def model_notes(recipe: Recipe, component: dict[str, Any]) -> list[str]:
    """Plain statements a reader must not miss (random weights, checks that did not run)."""
    notes = []
    if recipe.model.init == "random":
        notes.append(f"weights are RANDOM (init = \"random\", seed {recipe.model.seed}): "
                     "sizes and latencies are real, generated images are meaningless")
    if "sampler" not in component:
        notes.append(f"end-to-end sampling parity skipped: {component['name']} has no sampler "
                     "(only per-call parity and latency are checked)")
    return notes


# what an app team needs of each coverage entry (report.json has the tools' notes)
COVERAGE_KEYS = ("accelerator", "verdict", "supported_nodes", "total_nodes", "unsupported_ops")


def pipeline_notes(recipes: dict[str, Recipe]) -> list[str]:
    """What a pipeline report must say about its components (random weights, passes)."""
    out = [f"{s}: weights are RANDOM (init = \"random\"): chain images are meaningless, "
           "parity and latency are real" for s, r in recipes.items() if r.model.init == "random"]
    if any(r.passes for r in recipes.values()):
        out.append("component recipes have passes: the chain's PyTorch reference is the model "
                   "before them, so chain PSNR includes their effect")
    return out


def file_entries(artifacts: list[Artifact], root: Path) -> list[dict[str, Any]]:
    """Every shipped file with its size and sha256 (.ort files also get a content hash)."""
    files = []
    for art in artifacts:
        for rel in [art.file, *art.companions]:
            p = root / rel
            if not p.is_file():  # an .mlpackage folder is hashed through its files (companions)
                continue
            files.append({"path": rel, "bytes": p.stat().st_size, "sha256": sha256_file(p),
                          "format": art.format if rel == art.file else "companion",
                          "target": art.target, "runtime": art.runtime,
                          "precision": art.precision})
            main = rel == art.file or (not (root / art.file).is_file() and rel == art.companions[0])
            if main and art.details.get("coverage"):  # where it runs (targets/coverage.py)
                files[-1]["coverage"] = [{k: e.get(k) for k in COVERAGE_KEYS}
                                         for e in art.details["coverage"]]
            if main and art.details.get("deploy"):  # how an app opens it (targets/qnn.py)
                files[-1]["deploy"] = art.details["deploy"]
            if p.suffix == ".ort":
                from mobilegen.targets.ort_content import ort_content_sha256

                files[-1]["content_sha256"] = ort_content_sha256(p)
                files[-1]["note"] = ("bytes may differ between conversions (a derived table is "
                                     "written in hash-map order); content_sha256 is stable")
    return files


def checkpoint_digest(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """sha256 of a checkpoint as loaded: of the file itself, or, for a diffusers folder, of every
    file a load reads (relative name + sha256 each); with the per-file list."""
    import hashlib

    from mobilegen.checkpoints.loader import checkpoint_files
    from mobilegen.errors import CheckpointError

    files = checkpoint_files(path)
    try:
        hashed = [{"path": str(f.relative_to(path)) if f != path else f.name,
                   "sha256": _cached_sha256(str(f), *_stamp(f))} for f in files]
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if len(files) == 1 and files[0] == path:
        return hashed[0]["sha256"], hashed
    h = hashlib.sha256()
    for f in hashed:
        h.update(f["path"].encode() + f["sha256"].encode())
    return h.hexdigest(), hashed


def _stamp(f: Path) -> tuple[int, int, int]:
    st = f.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


@lru_cache(maxsize=256)
def _cached_sha256(path: str, ino: int, size: int, mtime_ns: int) -> str:
    """One hash per file version per process: the cache key and the manifest read it once."""
    return sha256_file(Path(path))


def build_manifest(recipe: Recipe, component: dict[str, Any], artifacts: list[Artifact],
                   root: Path, argv: list[str] | None) -> dict[str, Any]:
    ckpt = recipe.checkpoint_path()
    digest, ckpt_files = checkpoint_digest(ckpt) if ckpt else (None, [])
    return {
        "schema_version": MANIFEST_SCHEMA,
        "recipe": recipe.name,
        "components": [component],
        "files": file_entries(artifacts, root),
        "provenance": {
            "checkpoint": str(ckpt) if ckpt else "random",
            "checkpoint_sha256": digest,  # a folder: over every file read (checkpoint_files)
            "checkpoint_files": ckpt_files,
            "recipe_sha256": sha256_file(recipe.path) if recipe.path else None,
            "command": shlex.join(argv if argv is not None else sys.argv),
            "versions": library_versions(),
        },
    }
