from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from mobilegen.cli.common import DebugOpt, JsonOpt, handle_errors, print_json, stdout_console


@handle_errors
def sample(
    outdir: Annotated[Path, typer.Argument(help="An export output folder (has manifest.json).")],
    target: Annotated[str, typer.Option(help="Artifact format to run: onnx or ort.")] = "onnx",
    seed: Annotated[int | None, typer.Option(help="Override the manifest's seed.")] = None,
    steps: Annotated[int | None, typer.Option(help="Override the manifest's step count.")] = None,
    png: Annotated[Path, typer.Option(help="Where to write the sample grid.")] = Path(
        "samples.png"
    ),
    threads: Annotated[int, typer.Option(help="Runtime threads.")] = 2,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Generate images from the exported artifacts alone (numpy + the runtime, no PyTorch).

    On a pipeline export the UNet samples latents and the decoder turns them into RGB images."""
    import numpy as np

    from mobilegen.errors import MobilegenError
    from mobilegen.sampling.generate import generate, save_grid
    from mobilegen.targets import runtime_module

    manifest_path = outdir / "manifest.json"
    if not manifest_path.is_file():
        raise MobilegenError(f"{manifest_path}: not found (is {outdir} an export folder?)")
    manifest = json.loads(manifest_path.read_text())
    if "chain" in manifest:  # a pipeline export: UNet sampler, then the VAE decoder
        result = _sample_chain(outdir, manifest, target, seed, steps, png, threads)
        _print(result, json_output)
        return
    files = [f for f in manifest["files"] if f["format"] == target]
    if not files:
        have = sorted({f["format"] for f in manifest["files"] if f["format"] != "companion"})
        raise MobilegenError(f"{outdir}: no '{target}' artifact (have: {', '.join(have)})")
    component = manifest["components"][0]
    if "sampler" not in component:  # e.g. a VAE decoder export: it decodes, it does not sample
        raise MobilegenError(f"{manifest_path}: component '{component['name']}' "
                             f"({component['family']}) has no sampler to run")
    runner = runtime_module(files[0]["runtime"]).load(outdir / files[0]["path"], threads)
    images = generate(runner, component, seed=seed, steps=steps)
    save_grid(png, images, component["conditioning"].get("labels"))
    result = {"artifact": files[0]["path"], "png": str(png), "images": len(images),
              "seed": component["sampler"]["seed"] if seed is None else seed,
              "steps": steps or component["sampler"]["steps"],
              "finite": bool(np.isfinite(images).all())}
    _print(result, json_output)


def _print(result: dict[str, Any], json_output: bool) -> None:
    if json_output:
        print_json(result)
    else:
        stdout_console().print(f"wrote {result['png']} ({result['images']} images from "
                               f"{result['artifact']}, seed {result['seed']}, "
                               f"{result['steps']} steps)", highlight=False)


def _sample_chain(outdir: Path, manifest: dict[str, Any], target: str, seed: int | None,
                  steps: int | None, png: Path, threads: int) -> dict[str, Any]:
    """Run a pipeline manifest's chain from its artifacts: sample latents with the UNet artifact,
    scale them, decode them with the decoder artifact, write the RGB grid."""
    import numpy as np

    from mobilegen.errors import MobilegenError
    from mobilegen.sampling.generate import generate_chain, save_grid
    from mobilegen.targets import runtime_module

    comps = {c["slot"]: c for c in manifest["components"]}
    runners, used = {}, []
    for slot in ("unet", "decoder"):
        files = [f for f in manifest["files"]
                 if f.get("component") == slot and f["format"] == target]
        if not files:
            have = sorted({f["format"] for f in manifest["files"]
                           if f.get("component") == slot and f["format"] != "companion"})
            raise MobilegenError(f"{outdir}: no '{target}' artifact for the {slot} "
                                 f"(have: {', '.join(have)})")
        f = next((f for f in files if f["precision"] == "fp32"), files[0])  # fp32 first
        runners[slot] = runtime_module(f["runtime"]).load(outdir / f["path"], threads)
        used.append(f["path"])
    images = generate_chain(runners["unet"], runners["decoder"], comps["unet"],
                            comps["decoder"], manifest["chain"], seed=seed, steps=steps)
    save_grid(png, images)
    sched = manifest["chain"]["scheduler"]
    return {"artifact": " + ".join(used), "artifacts": used, "png": str(png),
            "images": len(images), "image_shape": list(images.shape[1:]),
            "seed": sched["seed"] if seed is None else seed, "steps": steps or sched["steps"],
            "finite": bool(np.isfinite(images).all())}
