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

from mobilegen import __version__
from mobilegen.export import chain_calibration, sd_chain
from mobilegen.export.gates import check
from mobilegen.export.staging import StagedOutput, sha256_file
from mobilegen.recipe import PipelineRecipe, Recipe, check_chain
from mobilegen.report.provenance import host_info, library_versions
from mobilegen.report.results import json_safe

SCHEMA = 1
SLOTS = ("unet", "decoder")  # also the component folders under OUT


@dataclass
class PipelineResult:
    out_dir: Path
    report: dict[str, Any]  # report.json as written
    failures: list[str] = field(default_factory=list)


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
            with timer.step("chain"):
                chain_report = sd_chain.run_chain(
                    recipes, reports, {s: _runnable(reports[s]) for s in slots}, comps, chain,
                    out)
        else:
            chain = chain_entry(unet_c, dec_c)
            with timer.step("chain"):
                chain_report = _run_chain(prec, recipes, reports, unet_c, dec_c, chain, out)
        layout_results = []
        if prec.layouts:  # consumer folder shapes beside mobilegen's (mobilegen/layouts)
            layout_results = sd_chain.write_layouts(prec, comps, chain, out, timer)
            for lr in layout_results:
                failures += lr.failures
                shipped += list(lr.files)
        for row in chain_report["rows"]:
            failure = check(f"chain:{row['format']}/{row['precision']}", "min_psnr_db",
                            row["psnr_db"], prec.gates.min_psnr_db, True)
            if failure is not None:
                failures.append(str(failure))
        manifest = _pipeline_manifest(prec, comps, chain, layout_results, manifests, shipped,
                                      argv)
        report = {
            "schema_version": SCHEMA,
            "kind": "pipeline",
            "tool": {"name": "mobilegen", "version": __version__},
            "recipe": {"name": prec.name, "path": str(prec.path)},
            "status": "gate_failed" if failures else "ok",
            "components": {s: _component_summary(s, reports[s]) for s in slots},
            "chain": chain_report,
            **({"calibration": chain_calibration.summary(prec, calibration)}
               if calibration else {}),
            **({"layouts": [lr.to_dict() for lr in layout_results]} if layout_results else {}),
            "gates": {"config": prec.gates.model_dump(), "failures": failures},
            "notes": (_notes(recipes, unet_c, dec_c) if prec.sd is None
                      else sd_chain.notes(recipes)),
            "timings_s": timer.times,
            "host": host_info(),
        }
        report = json_safe(report)
        out.write_json("manifest.json", manifest)
        out.write_json("report.json", report)
        out.path("report.md").write_text(render_markdown(report))
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


def _run_chain(
    prec: PipelineRecipe, recipes: dict[str, Recipe], reports: dict[str, dict[str, Any]],
    unet_c: dict[str, Any], dec_c: dict[str, Any], chain: dict[str, Any], out: StagedOutput,
) -> dict[str, Any]:
    """The chain through PyTorch (the loaded weights) and through each (format, precision) pair
    that both components produced and the host can run; image PSNR of each against PyTorch."""
    from mobilegen.export.run import load_model
    from mobilegen.measure.parity import compare
    from mobilegen.models import get_family
    from mobilegen.sampling.generate import generate_chain, save_grid
    from mobilegen.sampling.runner import torch_runner
    from mobilegen.targets import load_for_profile
    from mobilegen.targets.profile import load_target

    torch_runners = {}
    for slot, recipe in recipes.items():
        loaded = load_model(recipe)
        size = reports[slot]["model"]["image_size"]
        io = get_family(loaded.family).io_spec(loaded.config, size)
        torch_runners[slot] = torch_runner(loaded.model, io)
    reference = generate_chain(torch_runners["unet"], torch_runners["decoder"], unet_c, dec_c,
                               chain)
    save_grid(out.path("chain-pytorch.png"), reference)
    runtimes = {row["artifact"]: (row["target"]) for s in SLOTS for row in reports[s]["artifacts"]}
    u_arts, d_arts = _runnable(reports["unet"]), _runnable(reports["decoder"])
    rows = []
    for key in [k for k in u_arts if k in d_arts]:
        runners = {}
        for slot, art in (("unet", u_arts[key]), ("decoder", d_arts[key])):
            profile = load_target(runtimes[art])
            runners[slot] = load_for_profile(out.staging / slot / art, profile)
        images = generate_chain(runners["unet"], runners["decoder"], unet_c, dec_c, chain)
        grid = f"chain-{key[0]}-{key[1]}.png"
        save_grid(out.path(grid), images)
        rows.append({"format": key[0], "precision": key[1],
                     "unet_artifact": f"unet/{u_arts[key]}",
                     "decoder_artifact": f"decoder/{d_arts[key]}",
                     **compare(reference, images, 2.0).to_dict(), "grid": grid,
                     "finite": bool(np.isfinite(images).all())})
    skipped = sorted(f"{f}/{p}" for f, p in set(u_arts) ^ set(d_arts))
    out_doc = {"reference": "PyTorch, the loaded weights (before any module passes)",
               "images": int(reference.shape[0]), "image_shape": list(reference.shape[1:]),
               "pytorch_grid": "chain-pytorch.png", "rows": rows,
               "unpaired_artifacts": skipped}
    if not rows:  # e.g. Core ML only, off macOS: say so rather than pass a gate on nothing
        out_doc["note"] = ("no artifact format that both components produced runs on this host: "
                           "the chain ran through PyTorch only")
    return out_doc


def _component_summary(slot: str, report: dict[str, Any]) -> dict[str, Any]:
    m = report["model"]
    return {"dir": slot, "report": f"{slot}/report.json", "status": report["status"],
            "family": m["family"], "init": m["init"], "params": m["params"], "gmac": m["gmac"],
            "image_size": m["image_size"],
            "artifacts": [{"artifact": f"{slot}/{r['artifact']}", "format": r["format"],
                           "precision": r["precision"], "runnable": r["runnable"],
                           "median_ms": (r.get("latency") or {}).get("median_ms"),
                           "step_psnr_db": (r.get("parity") or {}).get("psnr_db")}
                          for r in report["artifacts"]],
            "gate_failures": report["gates"]["failures"]}


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


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Pipeline export: {report['recipe']['name']}", "",
             f"Status: **{report['status']}**", "", "## Components", "",
             "| slot | family | init | params | GMAC | status |", "|---|---|---|---|---|---|"]
    for slot, c in report["components"].items():
        lines.append(f"| [{slot}]({c['report']}) | {c['family']} | {c['init']} | "
                     f"{c['params']:,} | {c['gmac']:.3f} | {c['status']} |")
    ch = report["chain"]
    lines += ["", "## Chain (UNet sampler -> latents / scaling -> decoder)", "",
              f"Reference: {ch['reference']}; {ch['images']} images of shape "
              f"{tuple(ch['image_shape'])}; grid [{ch['pytorch_grid']}]({ch['pytorch_grid']})"
              + (f"; prompt {ch['prompt']!r}, negative {ch['negative_prompt']!r}."
                 if "prompt" in ch else "."),
              "", "| format | precision | image PSNR dB | max abs err | grid |",
              "|---|---|---|---|---|"]
    for r in ch["rows"]:
        psnr = "inf" if r["psnr_db"] is None else f"{r['psnr_db']:.2f}"
        lines.append(f"| {r['format']} | {r['precision']} | {psnr} | "
                     f"{r['max_abs_error']:.3g} | [{r['grid']}]({r['grid']}) |")
    if report["gates"]["failures"]:
        lines += ["", "## Gate failures", ""] + [f"- {f}" for f in report["gates"]["failures"]]
    lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"
