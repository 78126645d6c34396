"""`mobilegen sample DIR`: images from an export's artifacts alone (numpy + the runtime).

The manifest is untrusted input: every file it names must lie inside DIR and be a regular file,
and its sha256 must match the manifest before the runtime loads it (`--no-hash-check` skips the
hash for very large files and the output says so). Sampler values are bounded before any work."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from mobilegen.cli.common import DebugOpt, JsonOpt, handle_errors, print_json, stdout_console

MAX_STEPS, MAX_THREADS = 1000, 256
# --target names other than a file format: what they run (targets/litert_gpu.py)
GPU_TARGETS = {"tflite-gpu": "tflite"}


def _matching(files: list[dict[str, Any]], target: str,
              slot: str | None = None) -> list[dict[str, Any]]:
    """The manifest's artifacts for `--target` (of one pipeline slot); for a GPU target, the
    files of GPU profiles first."""
    fmt = GPU_TARGETS.get(target, target)
    found = [f for f in files if f["format"] == fmt
             and (slot is None or f.get("component") == slot)]
    if target in GPU_TARGETS:
        found.sort(key=lambda f: not _gpu_profile(f.get("target")))
    return found


def _gpu_profile(name: Any) -> bool:
    from mobilegen.targets.profile import list_target_names, load_target
    from mobilegen.targets.tflite import runs_on_gpu

    return name in list_target_names() and runs_on_gpu(load_target(name))


def _load(entry: dict[str, Any], path: Path, threads: int, target: str) -> Any:
    """The artifact's runner; `tflite-gpu` runs on LiteRT's GPU accelerator or fails saying
    why (no Vulkan driver...): the user asked for the GPU, XNNPACK would not be it."""
    from mobilegen.errors import MobilegenError
    from mobilegen.targets import runtime_module

    if target not in GPU_TARGETS:
        return runtime_module(entry["runtime"]).load(path, threads)
    from mobilegen.export.toolchain_log import toolchain_output

    with toolchain_output(Path(os.devnull)):  # the accelerator's process logs on its fd 2
        runner = runtime_module("litert").load(path, threads, accelerator="gpu")
    if not hasattr(runner, "host_time"):
        raise MobilegenError(f"--target {target}: LiteRT's GPU accelerator cannot run here: "
                             f"{runner.gpu_unavailable}")
    return runner


@handle_errors
def sample(
    outdir: Annotated[Path, typer.Argument(help="An export output folder (has manifest.json).")],
    target: Annotated[str, typer.Option(
        help="Artifact format to run: onnx, ort, tflite, or tflite-gpu (a GPU profile's "
             ".tflite on LiteRT's GPU accelerator).")] = "onnx",
    seed: Annotated[int | None, typer.Option(help="Override the manifest's seed.")] = None,
    steps: Annotated[int | None, typer.Option(
        help=f"Override the manifest's step count (1 to {MAX_STEPS}).")] = None,
    png: Annotated[Path, typer.Option(help="Where to write the sample grid (.png).")] = Path(
        "samples.png"
    ),
    threads: Annotated[int, typer.Option(help="Runtime threads.")] = 2,
    prompt: Annotated[str | None, typer.Option(
        help="Text-to-image exports: the prompt (default: the manifest's).")] = None,
    negative_prompt: Annotated[str | None, typer.Option(
        help="Text-to-image exports: the guidance's null branch (default: the manifest's, "
             "usually empty).")] = None,
    no_hash_check: Annotated[bool, typer.Option(
        "--no-hash-check", help="Do not check the artifacts' sha256 against the manifest "
        "(for very large files; the output says it was skipped).")] = False,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Generate images from the exported artifacts alone (numpy + the runtime, no PyTorch).

    On a pipeline export the UNet samples latents and the decoder turns them into RGB images."""
    from mobilegen.errors import MobilegenError

    _check_options(steps, threads, png)
    manifest = _read_manifest(outdir / "manifest.json")
    verify = not no_hash_check
    try:
        chain = manifest.get("chain")
        if isinstance(chain, dict) and chain.get("kind") == "text-to-image":  # tokenizer ..
            result = _sample_prompt(outdir, manifest, target, seed, steps, png, threads, verify,
                                    (prompt, negative_prompt))
        elif prompt is not None or negative_prompt is not None:
            from mobilegen.cli.common import OptionError

            raise OptionError(f"--prompt: {outdir} is not a text-to-image export (it has no "
                              "text encoder)")
        elif "chain" in manifest:  # a pipeline export: UNet sampler, then the VAE decoder
            result = _sample_chain(outdir, manifest, target, seed, steps, png, threads, verify)
        else:
            result = _sample_one(outdir, manifest, target, seed, steps, png, threads, verify)
    except (KeyError, TypeError, ValueError, IndexError) as e:  # a manifest of the wrong shape
        raise MobilegenError(f"{outdir / 'manifest.json'}: not a mobilegen manifest "
                             f"({type(e).__name__}: {e})") from None
    result["hash_check"] = "sha256 verified" if verify else "skipped (--no-hash-check)"
    _print(result, json_output)


def _check_options(steps: int | None, threads: int, png: Path) -> None:
    from mobilegen.cli.common import OptionError

    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise OptionError(f"--steps must be in [1, {MAX_STEPS}], found {steps}")
    if not 1 <= threads <= MAX_THREADS:
        raise OptionError(f"--threads must be in [1, {MAX_THREADS}], found {threads}")
    if png.is_dir():
        raise OptionError(f"--png {png}: is a folder, expected a .png file path")
    if png.suffix.lower() != ".png":
        raise OptionError(f"--png {png}: expected a file name ending in .png")
    if not png.absolute().parent.is_dir():
        raise OptionError(f"--png {png}: its folder {png.absolute().parent} does not exist")


def _read_manifest(path: Path) -> dict[str, Any]:
    from mobilegen.errors import MobilegenError

    if not path.is_file():
        raise MobilegenError(f"{path}: not found (is {path.parent} an export folder?)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise MobilegenError(f"{path}: not valid JSON ({type(e).__name__})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list) or \
            not isinstance(manifest.get("components"), list) or not manifest["components"]:
        raise MobilegenError(f"{path}: not a mobilegen manifest (needs 'files' and "
                             "'components' lists)")
    return manifest


def _check_sampler(path: Path, component: dict[str, Any]) -> None:
    """The manifest's sampler values, bounded like a recipe's: NaN guidance would write NaN
    images, a huge num_images or shape would allocate without end."""
    from mobilegen.errors import MobilegenError

    s = component["sampler"]
    shape = component["sample_shape"]
    checks = [
        ("sampler.steps", s["steps"], isinstance(s["steps"], int) and 1 <= s["steps"] <= MAX_STEPS),
        ("sampler.num_images", s["num_images"],
         isinstance(s["num_images"], int) and 1 <= s["num_images"] <= 256),
        ("sampler.guidance_scale", s["guidance_scale"],
         isinstance(s["guidance_scale"], int | float) and math.isfinite(s["guidance_scale"])
         and 0 <= s["guidance_scale"] <= 1000),
        ("sampler.seed", s["seed"], isinstance(s["seed"], int)),
        ("sample_shape", shape, isinstance(shape, list) and len(shape) == 3 and all(
            isinstance(d, int) and 1 <= d <= 4096 for d in shape) and shape[0] <= 64),
    ]
    for key, value, ok in checks:
        if not ok:
            raise MobilegenError(f"{path}: component '{component.get('name')}': '{key}' is "
                                 f"out of range or of the wrong type ({value!r})")


def _artifact(outdir: Path, entry: dict[str, Any], files: list[dict[str, Any]],
              verify: bool) -> Path:
    """The artifact's path, confined to `outdir`, a regular file, its sha256 (and its
    companions') as the manifest says."""
    from mobilegen.errors import MobilegenError
    from mobilegen.export.staging import sha256_file

    root = outdir.resolve()
    companions = [f for f in files if f.get("format") == "companion"
                  and str(f["path"]).startswith(str(entry["path"]))]
    for f in [entry, *companions]:
        rel = f["path"]
        p = (outdir / rel).resolve() if isinstance(rel, str) else None
        if p is None or not p.is_relative_to(root) or Path(rel).is_absolute():
            raise MobilegenError(f"{outdir / 'manifest.json'}: file '{rel}' is outside "
                                 f"{outdir}: refused")
        if not p.is_file():
            raise MobilegenError(f"{outdir / rel}: missing or not a regular file")
        if verify and sha256_file(p) != f["sha256"]:
            raise MobilegenError(f"{outdir / rel}: sha256 differs from the manifest (the file "
                                 "was changed after export): refused")
    return outdir / entry["path"]


def _sample_one(outdir: Path, manifest: dict[str, Any], target: str, seed: int | None,
                steps: int | None, png: Path, threads: int, verify: bool) -> dict[str, Any]:
    from mobilegen.errors import MobilegenError
    from mobilegen.sampling.generate import generate

    manifest_path = outdir / "manifest.json"
    files = _matching(manifest["files"], target)
    if not files:
        have = sorted({f["format"] for f in manifest["files"] if f["format"] != "companion"})
        raise MobilegenError(f"{outdir}: no '{target}' artifact (have: {', '.join(have)})")
    component = manifest["components"][0]
    if "sampler" not in component:  # e.g. a VAE decoder export: it decodes, it does not sample
        raise MobilegenError(f"{manifest_path}: component '{component['name']}' "
                             f"({component['family']}) has no sampler to run")
    _check_sampler(manifest_path, component)
    path = _artifact(outdir, files[0], manifest["files"], verify)
    runner = _load(files[0], path, threads, target)
    images = generate(runner, component, seed=seed, steps=steps)
    _save(png, images, component["conditioning"].get("labels"))
    return {"artifact": files[0]["path"], "png": str(png), "images": len(images),
            "seed": component["sampler"]["seed"] if seed is None else seed,
            "steps": steps or component["sampler"]["steps"], "finite": True}


def _save(png: Path, images: Any, labels: list[int] | None = None) -> None:
    """Refuse non-finite images (nothing written); write the grid atomically."""
    import numpy as np

    from mobilegen.errors import MobilegenError
    from mobilegen.sampling.generate import save_grid

    if not np.isfinite(images).all():
        raise MobilegenError("the generated images contain NaN or inf: nothing was written")
    tmp = png.absolute().parent / f".{png.name}.tmp-{os.getpid()}.png"
    try:
        save_grid(tmp, images, labels)
        os.replace(tmp, png)
    finally:
        tmp.unlink(missing_ok=True)


def _print(result: dict[str, Any], json_output: bool) -> None:
    from rich.markup import escape

    if json_output:
        print_json(result)
    else:
        stdout_console().print(escape(
            f"wrote {result['png']} ({result['images']} images from {result['artifact']}, seed "
            f"{result['seed']}, {result['steps']} steps; {result['hash_check']})"),
            highlight=False)


def _sample_chain(outdir: Path, manifest: dict[str, Any], target: str, seed: int | None,
                  steps: int | None, png: Path, threads: int, verify: bool) -> dict[str, Any]:
    """Run a pipeline manifest's chain from its artifacts: sample latents with the UNet artifact,
    scale them, decode them with the decoder artifact, write the RGB grid."""
    from mobilegen.errors import MobilegenError
    from mobilegen.sampling.generate import generate_chain

    comps = {c["slot"]: c for c in manifest["components"]}
    _check_sampler(outdir / "manifest.json", comps["unet"])
    runners, used = {}, []
    for slot in ("unet", "decoder"):
        files = _matching(manifest["files"], target, slot)
        if not files:
            have = sorted({f["format"] for f in manifest["files"]
                           if f.get("component") == slot and f["format"] != "companion"})
            raise MobilegenError(f"{outdir}: no '{target}' artifact for the {slot} "
                                 f"(have: {', '.join(have)})")
        f = next((f for f in files if f["precision"] == "fp32"), files[0])  # fp32 first
        path = _artifact(outdir, f, manifest["files"], verify)
        runners[slot] = _load(f, path, threads, target)
        used.append(f["path"])
    images = generate_chain(runners["unet"], runners["decoder"], comps["unet"],
                            comps["decoder"], manifest["chain"], seed=seed, steps=steps)
    _save(png, images)
    sched = manifest["chain"]["scheduler"]
    return {"artifact": " + ".join(used), "artifacts": used, "png": str(png),
            "images": len(images), "image_shape": list(images.shape[1:]),
            "seed": sched["seed"] if seed is None else seed, "steps": steps or sched["steps"],
            "finite": True}


def _sample_prompt(outdir: Path, manifest: dict[str, Any], target: str, seed: int | None,
                   steps: int | None, png: Path, threads: int, verify: bool,
                   prompts: tuple[str | None, str | None]) -> dict[str, Any]:
    """A text-to-image export: the shipped tokenizer (files checked like the artifacts), then
    the text encoder, UNet (SD's discrete scheduler) and decoder artifacts of one format."""
    from mobilegen.errors import MobilegenError
    from mobilegen.sampling.prompt_chain import generate_from_prompt, load_tokenizer

    comps = {c["slot"]: c for c in manifest["components"]}
    runners, used = {}, []
    for slot in ("text_encoder", "unet", "decoder"):
        files = _matching(manifest["files"], target, slot)
        if not files:
            raise MobilegenError(f"{outdir}: no '{target}' artifact for the {slot}")
        f = next((f for f in files if f["precision"] == "fp32"), files[0])  # fp32 first
        runners[slot] = _load(f, _artifact(outdir, f, manifest["files"], verify), threads,
                              target)
        used.append(f["path"])
    checked = set()
    for f in manifest["files"]:  # vocab, merges: confined and hashed before they are read
        if f.get("format") == "tokenizer":
            _artifact(outdir, f, [], verify)
            checked.add(f["path"])
    chain = manifest["chain"]
    for rel in (chain["tokenizer"]["files"]["vocab"], chain["tokenizer"]["files"]["merges"]):
        if rel not in checked:
            raise MobilegenError(f"{outdir / 'manifest.json'}: tokenizer file '{rel}' is not "
                                 "among the manifest's checked files: refused")
    images = generate_from_prompt(runners, comps, chain, load_tokenizer(outdir, chain),
                                  prompts[0], prompts[1], seed=seed, steps=steps)
    _save(png, images)
    sched = chain["scheduler"]
    return {"artifact": " + ".join(used), "artifacts": used, "png": str(png),
            "images": len(images), "image_shape": list(images.shape[1:]),
            "prompt": chain["prompt"] if prompts[0] is None else prompts[0],
            "negative_prompt": chain["negative_prompt"] if prompts[1] is None else prompts[1],
            "scheduler": sched["kind"], "seed": sched["seed"] if seed is None else seed,
            "steps": steps or sched["steps"], "finite": True}
