"""The text-to-image part of a pipeline export made from a diffusers pipeline folder: the
tokenizer and scheduler config shipped beside the three components (with sha256s), the
manifest's `chain` section (tokenize, encode, sample on SD's discrete scheduler, decode), and
the end-to-end check: the same prompt through PyTorch and through every artifact format all three
components produced, image PSNR against PyTorch, one PNG grid each.

export/chain.py runs the component exports, the one chain check for both kinds of pipeline, and
writes the pipeline's manifest and typed report; it calls this module when the recipe names a
diffusers folder.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Any

from mobilegen.export.staging import StagedOutput, sha256_file

if TYPE_CHECKING:
    from mobilegen.recipe import PipelineRecipe, Recipe


def _ship(out: StagedOutput, src: Any, rel: str, fmt: str) -> dict[str, Any]:
    dst = out.path(rel)
    shutil.copyfile(src, dst)
    return {"path": rel, "bytes": dst.stat().st_size, "sha256": sha256_file(dst), "format": fmt,
            "component": rel.split("/")[0]}


def _write_bpe_files(src: Any, root: Any, out: StagedOutput) -> list[dict[str, Any]]:
    """vocab.json + merges.txt written from a byte-level BPE tokenizer.json."""
    import json

    from mobilegen.checkpoints.pipeline_folder import tokenizer_bpe

    vocab, merges = tokenizer_bpe(src, root)
    out.path("tokenizer/vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    out.path("tokenizer/merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    entries = []
    for name in ("vocab.json", "merges.txt"):
        p = out.path(f"tokenizer/{name}")
        entries.append({"path": f"tokenizer/{name}", "bytes": p.stat().st_size,
                        "sha256": sha256_file(p), "format": "tokenizer",
                        "component": "tokenizer",
                        "note": "written from the folder's tokenizer.json"})
    return entries


def ship_tokenizer_and_scheduler(prec: PipelineRecipe, sequence_length: int,
                                 out: StagedOutput) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Copy tokenizer/ and scheduler/ files into OUT; -> (tokenizer spec, file entries)."""
    from mobilegen.checkpoints.pipeline_folder import (
        TOKENIZER_EXTRA,
        TOKENIZER_FILES,
        tokenizer_spec,
    )
    from mobilegen.sampling.tokenizer import build_tokenizer

    assert prec.diffusers is not None
    src = prec.diffusers / "tokenizer"
    spec = tokenizer_spec(src, sequence_length, root=prec.diffusers)  # confined to the folder
    files = [_ship(out, src / n, f"tokenizer/{n}", "tokenizer")
             for n in (*TOKENIZER_FILES, *TOKENIZER_EXTRA) if (src / n).is_file()]
    if not (src / "vocab.json").is_file():  # a folder with only tokenizer.json: the app's
        files = [*_write_bpe_files(src, prec.diffusers, out), *files]  # vocab + merges
    tok = build_tokenizer(out.path("tokenizer/vocab.json"), out.path("tokenizer/merges.txt"),
                          spec)
    tok.save(str(out.path("tokenizer/tokenizer.json")))  # the same tokenizer, one file
    p = out.path("tokenizer/tokenizer.json")
    files.append({"path": "tokenizer/tokenizer.json", "bytes": p.stat().st_size,
                  "sha256": sha256_file(p), "format": "tokenizer", "component": "tokenizer",
                  "note": "written by the tokenizers library from vocab.json + merges.txt"})
    files.append(_ship(out, prec.diffusers / "scheduler" / "scheduler_config.json",
                       "scheduler/scheduler_config.json", "scheduler"))
    return spec, files


def chain_entry(prec: PipelineRecipe, comps: dict[str, dict[str, Any]],
                tokenizer: dict[str, Any], files: list[dict[str, Any]]) -> dict[str, Any]:
    """What an app needs to go from a prompt to pixels with the three artifacts."""
    from mobilegen.checkpoints.pipeline_folder import scheduler_config
    from mobilegen.sampling.discrete import make_plan, sampler_entry, schedule_from_config
    from mobilegen.sampling.tokenizer import manifest_section

    assert prec.sd is not None and prec.diffusers is not None
    s = prec.sd.sampler
    schedule = schedule_from_config(scheduler_config(prec.diffusers), s.kind, s.karras_sigmas)
    scheduler = {**sampler_entry(make_plan(schedule, s.steps), s.guidance_scale, s.seed),
                 "num_images": s.num_images}
    te, unet, dec = comps["text_encoder"], comps["unet"], comps["decoder"]
    scale, shift = dec["latent_scaling_factor"], dec["latent_shift_factor"]
    guided = s.guidance_scale != 1.0
    tok_files = {"vocab": "tokenizer/vocab.json", "merges": "tokenizer/merges.txt",
                 "tokenizer_json": "tokenizer/tokenizer.json"}
    return {
        "kind": "text-to-image",
        "order": ["tokenizer", "text_encoder", "unet", "decoder"],
        "tokenizer": manifest_section(tokenizer, tok_files),
        "prompt": prec.sd.prompt, "negative_prompt": prec.sd.negative_prompt,
        "text_encoder": {"input": te["inputs"][0]["name"], "output": te["outputs"][0]["name"],
                         "batch": "2N: [prompt x N; negative prompt x N] in one call"
                                  if guided else "N"},
        "conditioning": {"kind": "text", "cond": "text encoder(prompt)",
                         "null": "text encoder(negative prompt; the empty prompt by default)"},
        "latent": {"shape": unet["sample_shape"], "layout": "NCHW", "scaling_factor": scale,
                   "shift_factor": shift, "decoder_input": f"latents / {scale} + {shift}"},
        "scheduler": scheduler,
        "guidance": {"scale": s.guidance_scale,
                     "batch": ("2N: [conditional; null] concatenated, one UNet call per step"
                               if guided else "N: one UNet call per step, no guidance"),
                     "combine": "out = out_null + scale * (out_cond - out_null)"
                                if guided else "out"},
        "unet_input": "latents * constants.c_in[i] at timestep constants.timesteps[i]",
        "decoder_batch": "N: all final latents in one decoder call",
        "image": {"shape": dec["image_shape"], "layout": "NCHW, RGB", "range": [-1.0, 1.0],
                  "to_pixels": "uint8 = clip(round((x + 1) / 2 * 255), 0, 255)"},
        "shipped": [f["path"] for f in files],
    }


def in_chain(slot: str, entry: dict[str, Any]) -> dict[str, Any]:
    """A component's manifest entry as the text-to-image chain uses it: the UNet's own export
    describes a standalone UNet (the VP sampler, a Gaussian context stand-in); in the chain the
    text encoder conditions it and `chain.scheduler` drives it, so those keys point there."""
    if slot != "unet":
        return entry
    out = {k: v for k, v in entry.items() if k not in ("sampler", "guidance", "prediction")}
    shape = (entry.get("conditioning") or {}).get("shape")
    out["conditioning"] = {
        "kind": "text", **({"shape": shape} if shape else {}),
        "cond": "the text encoder's last_hidden_state of the prompt",
        "null": "the same of the negative prompt (the empty prompt by default)",
        "see": "chain.conditioning"}
    ranges = dict(out.get("value_ranges") or {})
    if "encoder_hidden_states" in ranges:
        ranges["encoder_hidden_states"] = "the shipped text encoder's last_hidden_state"
        out["value_ranges"] = ranges
    out["scheduler"] = "chain.scheduler (its `prediction` says epsilon or v)"
    return out


def describe_unet_in_chain(out: StagedOutput, entry: dict[str, Any]) -> None:
    """OUT/unet/manifest.json as the chain feeds the UNet (the text encoder's states, the
    pipeline's scheduler), pointing at the pipeline's manifest; its files are unchanged."""
    import json

    path = out.path("unet/manifest.json")
    manifest = json.loads(path.read_text())
    manifest["components"] = [in_chain("unet", entry)]
    manifest["pipeline"] = {"manifest": "../manifest.json",
                            "note": "this UNet is driven by the pipeline's chain: its "
                                    "conditioning is the text encoder's states and its "
                                    "scheduler is chain.scheduler"}
    out.write_json("unet/manifest.json", manifest)


def pytorch_runners(recipes: dict[str, Recipe],
                    sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """Each component's loaded weights (before any module pass) as a runner with its
    artifact's signature; `sizes` per slot, else each recipe's export size."""
    from mobilegen.export.run import load_model
    from mobilegen.models import get_family
    from mobilegen.sampling.runner import torch_runner

    runners = {}
    for slot, recipe in recipes.items():
        loaded = load_model(recipe)
        size = (sizes or {}).get(slot) or recipe.export_size(loaded.config)
        runners[slot] = torch_runner(loaded.model,
                                     get_family(loaded.family).io_spec(loaded.config, size))
    return runners


def write_layouts(prec: PipelineRecipe, comps: dict[str, dict[str, Any]], chain: dict[str, Any],
                  out: StagedOutput, timer: Any) -> list[Any]:
    """Each consumer layout the recipe names, written into the staging folder and checked."""
    from mobilegen import layouts
    from mobilegen.layouts.context import LayoutContext, load_models

    with timer.step("layouts:load"):
        models, configs = load_models(prec)
    ctx = LayoutContext(prec, out, models, configs, comps, chain["tokenizer"])
    results = []
    for name in prec.layouts:
        with timer.step(f"layout:{name}"):
            results.append(layouts.write(name, ctx))
    return results


def notes(recipes: dict[str, Recipe]) -> list[str]:
    from mobilegen.export.manifest import pipeline_notes

    out = pipeline_notes(recipes)
    out.append("conditioning: the prompt and the negative prompt through the shipped tokenizer "
               "and text encoder; the UNet samples on the pipeline's own discrete scheduler")
    return out
