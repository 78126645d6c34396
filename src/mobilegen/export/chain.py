"""A pipeline export: a UNet and a VAE decoder exported together, and how an app chains them.

Each component goes through `export.run.run_export` into its own folder (OUT/unet, OUT/decoder) with
its own report and manifest. Above them sit one manifest whose `chain` section says how to feed
the decoder from the sampler, and one report whose end-to-end row runs that chain through PyTorch
and through the artifacts. The whole OUT is staged and replaces the old one only when complete.

Pipeline exports bypass the export cache: a cache entry is one component's folder, and a chain
result is cheap next to the component exports it sits on.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobilegen.export import chain_calibration, sd_chain
from mobilegen.export.gates import check
from mobilegen.export.staging import StagedOutput, sha256_file
from mobilegen.recipe import PipelineRecipe, Recipe, check_chain
from mobilegen.report.pipeline import ChainReport, ChainRow, ComponentSummary, PipelineReport
from mobilegen.report.provenance import host_info, library_versions

SCHEMA = 1  # manifest.json of a pipeline export


@dataclass
class PipelineResult:
    out_dir: Path
    typed: PipelineReport
    failures: list[str] = field(default_factory=list)

    @property
    def report(self) -> dict[str, Any]:
        """report.json as written."""
        return self.typed.to_dict()


def run_pipeline_export(
    prec: PipelineRecipe, out_dir: Path, progress: Any = lambda s: None,
    argv: list[str] | None = None,
) -> PipelineResult:
    from mobilegen.export.run import StepTimer, run_export

    timer = StepTimer(progress)
    slots = prec.slots()  # + text_encoder for a diffusers pipeline folder (export/sd_chain.py)
    recipes = {s: getattr(prec, s) for s in slots}
    with timer.step("check-chain"):
        _check_checkpoint_chain(prec)
    failures: list[str] = []
    reports: dict[str, dict[str, Any]] = {}
    manifests: dict[str, dict[str, Any]] = {}
    with StagedOutput(out_dir) as out:
        calibration: dict[str, list[Any]] = {}
        if prec.sd is not None and (count := chain_calibration.needs_calibration(recipes)):
            with timer.step("calibrate-chain"):  # real text states and latents, not stand-ins
                calibration = chain_calibration.record(prec, recipes, out, count)
        for slot in slots:
            # a component's failed gate is reported below; any error ends the export and the
            # staging folder goes with it
            with timer.step(f"export:{slot}"):
                result = run_export(recipes[slot], out.staging / slot, progress, argv=argv,
                                    calibration=calibration.get(slot))
            reports[slot] = result.report.to_dict()
            manifests[slot] = json.loads((out.staging / slot / "manifest.json").read_text())
            failures += [f"{slot}/{f}" for f in reports[slot]["gates"]["failures"]]
        unet_c, dec_c = manifests["unet"]["components"][0], manifests["decoder"]["components"][0]
        comps = {s: manifests[s]["components"][0] for s in slots}
        shipped: list[dict[str, Any]] = []
        if prec.sd is not None:  # prompt -> image: tokenizer, text encoder, SD's scheduler
            tok, shipped = sd_chain.ship_tokenizer_and_scheduler(
                prec, comps["text_encoder"]["sequence_length"], out)
            chain = sd_chain.chain_entry(prec, comps, tok, shipped)
            sd_chain.describe_unet_in_chain(out, comps["unet"])
        else:
            chain = chain_entry(unet_c, dec_c)
        with timer.step("chain"):
            chain_report = run_chain(prec, recipes, reports, comps, chain, out)
        layout_results = []
        if prec.layouts:  # consumer folder shapes beside mobilegen's (mobilegen/layouts)
            layout_results = sd_chain.write_layouts(prec, comps, chain, out, timer)
            for lr in layout_results:
                failures += lr.failures
                shipped += list(lr.files)
        for row in chain_report.rows:
            failure = check(f"chain:{row.format}/{row.precision}", "min_psnr_db",
                            row.psnr_db, prec.gates.min_psnr_db, True)
            if failure is not None:
                failures.append(str(failure))
        manifest = _pipeline_manifest(prec, comps, chain, layout_results, manifests, shipped,
                                      argv)
        report = PipelineReport(
            recipe={"name": prec.name, "path": str(prec.path)},
            components={s: ComponentSummary.of(s, reports[s]) for s in slots},
            chain=chain_report, layouts=[lr.to_dict() for lr in layout_results],
            calibration=(chain_calibration.summary(prec, calibration) if calibration
                         else None),
            gates={"config": prec.gates.model_dump(), "failures": failures},
            notes=(_notes(recipes, unet_c, dec_c) if prec.sd is None
                   else sd_chain.notes(recipes)),
            timings_s=timer.times, host=host_info())
        out.write_json("manifest.json", manifest)
        out.write_json("report.json", report.to_dict())
        out.path("report.md").write_text(report.markdown())
        final = out.commit()
    return PipelineResult(final, report, failures)


def _pipeline_manifest(prec: PipelineRecipe, comps: dict[str, dict[str, Any]],
                       chain: dict[str, Any], layout_results: list[Any],
                       manifests: dict[str, dict[str, Any]], shipped: list[dict[str, Any]],
                       argv: list[str] | None) -> dict[str, Any]:
    """The pipeline's manifest.json: components as the chain feeds them, the chain, layouts,
    every file (components' and shipped), provenance."""
    slots = prec.slots()
    return {
        "schema_version": SCHEMA,
        "kind": "pipeline",
        "recipe": prec.name,
        "components": [{**(comps[s] if prec.sd is None else sd_chain.in_chain(s, comps[s])),
                        "slot": s, "dir": s, "manifest": f"{s}/manifest.json"}
                       for s in slots],
        "chain": chain,
        **({"layouts": {lr.layout: {k: v for k, v in lr.to_dict().items()
                                   if k not in ("files", "checks")}
                        for lr in layout_results}} if layout_results else {}),
        "files": [{**f, "path": f"{s}/{f['path']}", "component": s}
                  for s in slots for f in manifests[s]["files"]] + shipped,
        "provenance": {
            "pipeline_recipe_sha256": sha256_file(prec.path),
            "components": {s: manifests[s]["provenance"] for s in slots},
            "command": shlex.join(argv if argv is not None else sys.argv),
            "versions": library_versions(),
        },
    }


def _check_checkpoint_chain(prec: PipelineRecipe) -> None:
    """Recipes whose architecture only the checkpoint knows were not checked at load time: load
    the config now (this reads the weights once more), before any export work."""
    from mobilegen.recipe import _static_config

    cfgs = {s: _static_config(r) for s, r in (("unet", prec.unet), ("decoder", prec.decoder))}
    if all(c is not None for c in cfgs.values()):
        return  # checked by load_pipeline_recipe
    from mobilegen.export.run import load_model

    for slot, recipe in (("unet", prec.unet), ("decoder", prec.decoder)):
        if cfgs[slot] is None:
            cfgs[slot] = load_model(recipe).config
    check_chain(prec.path, prec.unet, cfgs["unet"], prec.decoder, cfgs["decoder"])


def chain_entry(unet: dict[str, Any], decoder: dict[str, Any]) -> dict[str, Any]:
    """What an app needs to chain the two artifacts. The decoder's scaling factor wins: it belongs
    to the VAE (the UNet's copy is informational)."""
    sampler = unet["sampler"]
    guided = unet["conditioning"]["kind"] != "none" and sampler["guidance_scale"] != 1.0
    scale, shift = decoder["latent_scaling_factor"], decoder["latent_shift_factor"]
    return {
        "order": ["unet", "decoder"],
        "latent": {"shape": unet["sample_shape"], "layout": "NCHW",
                   "scaling_factor": scale, "shift_factor": shift,
                   "decoder_input": f"latents / {scale} + {shift}"},
        "scheduler": sampler,
        "guidance": {
            "scale": sampler["guidance_scale"],
            "batch": ("2N: [conditional; null] concatenated, one UNet call per step" if guided
                      else "N: one UNet call per step, no guidance"),
            "combine": "eps = eps_null + scale * (eps_cond - eps_null)" if guided else "eps",
        },
        "conditioning": unet["conditioning"],
        "decoder_batch": "N: all final latents in one decoder call",
        "image": {"shape": decoder["image_shape"], "layout": "NCHW, RGB", "range": [-1.0, 1.0],
                  "to_pixels": "uint8 = clip(round((x + 1) / 2 * 255), 0, 255)"},
    }


def _runnable(report: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(format, precision) -> artifact path of a component's runnable artifacts."""
    out: dict[tuple[str, str], str] = {}
    for row in report["artifacts"]:
        if row["runnable"]:
            out.setdefault((row["format"], row["precision"]), row["artifact"])
    return out


def run_chain(prec: PipelineRecipe, recipes: dict[str, Recipe],
              reports: dict[str, dict[str, Any]], comps: dict[str, dict[str, Any]],
              chain: dict[str, Any], out: StagedOutput) -> ChainReport:
    """The chain through PyTorch (the loaded weights, before any module pass) and through each
    (format, precision) that every component produced and the host runs; image PSNR of each
    against PyTorch, one PNG grid each. A UNet + decoder pair samples on its VP sampler with its
    conditioning; a text-to-image pipeline goes from the prompt (sampling/prompt_chain.py)."""
    from mobilegen.measure.parity import compare
    from mobilegen.sampling.generate import generate_chain, save_grid
    from mobilegen.sampling.prompt_chain import generate_from_prompt, load_tokenizer
    from mobilegen.targets import load_for_profile
    from mobilegen.targets.profile import load_target

    slots = prec.slots()
    if prec.sd is not None:
        tokenizer = load_tokenizer(out.staging, chain)

        def generate(runners: dict[str, Any]) -> np.ndarray:
            return generate_from_prompt(runners, comps, chain, tokenizer)
    else:
        def generate(runners: dict[str, Any]) -> np.ndarray:
            return generate_chain(runners["unet"], runners["decoder"], comps["unet"],
                                  comps["decoder"], chain)

    sizes = {slot: reports[slot]["model"]["image_size"] for slot in slots}
    reference = generate(sd_chain.pytorch_runners(recipes, sizes))
    save_grid(out.path("chain-pytorch.png"), reference)
    targets = {row["artifact"]: row["target"] for s in slots for row in reports[s]["artifacts"]}
    arts = {s: _runnable(reports[s]) for s in slots}
    rows = []
    for key in [k for k in arts["unet"] if all(k in arts[s] for s in slots)]:
        runners = {s: load_for_profile(out.staging / s / arts[s][key],
                                       load_target(targets[arts[s][key]])) for s in slots}
        images = generate(runners)
        grid = f"chain-{key[0]}-{key[1]}.png"
        save_grid(out.path(grid), images)
        rows.append(ChainRow(format=key[0], precision=key[1],
                             artifacts={s: f"{s}/{arts[s][key]}" for s in slots},
                             **compare(reference, images, 2.0).to_dict(), grid=grid,
                             finite=bool(np.isfinite(images).all())))
    every = set().union(*arts.values())
    return ChainReport(
        reference="PyTorch, the loaded weights (before any module passes)",
        **({"prompt": chain["prompt"], "negative_prompt": chain["negative_prompt"]}
           if prec.sd is not None else {}),
        images=int(reference.shape[0]), image_shape=list(reference.shape[1:]),
        pytorch_grid="chain-pytorch.png", rows=rows,
        unpaired_artifacts=sorted(f"{f}/{p}" for f, p in every
                                  if not all((f, p) in arts[s] for s in slots)),
        # e.g. Core ML only, off macOS: say so rather than pass a gate on nothing
        note=None if rows else (f"no artifact format that all {len(slots)} components produced "
                                "runs on this host: the chain ran through PyTorch only"))


def _notes(recipes: dict[str, Recipe], unet_c: dict[str, Any], dec_c: dict[str, Any]) -> list[str]:
    from mobilegen.export.manifest import pipeline_notes

    notes = pipeline_notes(recipes)
    if unet_c.get("latent_scaling_factor") != dec_c["latent_scaling_factor"]:
        notes.append(f"the UNet config says latent_scaling_factor "
                     f"{unet_c.get('latent_scaling_factor')}, the decoder "
                     f"{dec_c['latent_scaling_factor']}: the chain uses the decoder's")
    notes.append("conditioning is a seeded Gaussian stand-in for text-encoder states "
                 "(no text encoder ships with the pipeline)")
    return notes
