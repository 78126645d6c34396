from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

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
    """Generate images from the exported artifacts alone (numpy + the runtime, no PyTorch)."""
    import numpy as np

    from mobilegen.errors import MobilegenError
    from mobilegen.generate import generate, save_grid
    from mobilegen.targets import runtime_module

    manifest_path = outdir / "manifest.json"
    if not manifest_path.is_file():
        raise MobilegenError(f"{manifest_path}: not found (is {outdir} an export folder?)")
    manifest = json.loads(manifest_path.read_text())
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
    if json_output:
        print_json(result)
    else:
        stdout_console().print(f"wrote {png} ({result['images']} images from {result['artifact']}, "
                               f"seed {result['seed']}, {result['steps']} steps)", highlight=False)
