"""`mobilegen sample DIR`: images from an export's artifacts alone (numpy + the runtime).

The manifest is untrusted input: every file it names must lie inside DIR and be a regular file,
and its sha256 must match the manifest before the runtime loads it (`--no-hash-check` skips the
hash for very large files and the output says so). Sampler values are bounded before any work."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from mobilegen.cli.common import DebugOpt, JsonOpt, handle_errors, print_json, stdout_console

MAX_STEPS, MAX_THREADS, MAX_IMAGES, MAX_SEED = 1000, 256, 256, 2**63 - 1
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
    if fmt == "pte":  # XNNPACK .pte files first: the only ones this host's runtime runs
        found.sort(key=lambda f: not _xnnpack_profile(f.get("target")))
    return found


def _xnnpack_profile(name: Any) -> bool:
    from mobilegen.targets.profile import list_target_names, load_target

    return name in list_target_names() and load_target(name).partitioner == "xnnpack"


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
        help="Artifact format to run: onnx, ort, tflite, pte (ExecuTorch), or tflite-gpu (a GPU "
             "profile's .tflite on LiteRT's GPU accelerator).")] = "onnx",
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
    num_images: Annotated[int | None, typer.Option(
        help=f"Text-to-image exports: images to draw (1 to {MAX_IMAGES}; default: 1 with "
             "--prompt, written at its native size, else the manifest's).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace an existing --png file that mobilegen did not write.")] = False,
    no_hash_check: Annotated[bool, typer.Option(
        "--no-hash-check", help="Do not check the artifacts' sha256 against the manifest "
        "(for very large files; the output says it was skipped).")] = False,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Generate images from the exported artifacts alone (numpy + the runtime, no PyTorch).

    On a pipeline export the UNet samples latents and the decoder turns them into RGB images."""

    _check_options(steps, threads, png, seed, force)
    if num_images is not None and not 1 <= num_images <= MAX_IMAGES:
        from mobilegen.cli.common import OptionError

        raise OptionError(f"--num-images must be in [1, {MAX_IMAGES}], found {num_images}")
    if num_images is None and prompt is not None:
        num_images = 1  # a prompt asks for one picture of it
    manifest = _read_manifest(outdir / "manifest.json")
    verify = not no_hash_check
    quiet = native_stdout_to_stderr() if json_output else contextlib.nullcontext()
    with quiet:  # runtimes' native logs (QNN's) must not precede the JSON on stdout
        result = _dispatch(outdir, manifest, target, seed, steps, png, threads, verify,
                           (prompt, negative_prompt), num_images)
    result["hash_check"] = "sha256 verified" if verify else "skipped (--no-hash-check)"
    _print(result, json_output)


@contextlib.contextmanager
def native_stdout_to_stderr() -> Iterator[None]:
    """File descriptor 1 points at stderr while the runtimes load and run: onnxruntime-qnn's
    C++ logger writes to stdout, which `--json` keeps for the one JSON document."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _dispatch(outdir: Path, manifest: dict[str, Any], target: str, seed: int | None,
              steps: int | None, png: Path, threads: int, verify: bool,
              prompts: tuple[str | None, str | None],
              num_images: int | None = None) -> dict[str, Any]:
    from mobilegen.errors import MobilegenError

    prompt, negative_prompt = prompts
    try:
        chain = manifest.get("chain")
        if isinstance(chain, dict) and chain.get("kind") == "text-to-image":  # tokenizer ..
            result = _sample_prompt(outdir, manifest, target, seed, steps, png, threads, verify,
                                    (prompt, negative_prompt), num_images)
        elif prompt is not None or negative_prompt is not None or num_images is not None:
            from mobilegen.cli.common import OptionError

            raise OptionError(f"--prompt: {outdir} is not a text-to-image export (it has no "
                              "text encoder)")
        elif "pipeline" in manifest:  # a text-to-image export's UNet: the chain drives it
            raise MobilegenError(f"{outdir / 'manifest.json'}: this component is driven by "
                                 f"its pipeline's chain; sample {outdir.parent} --prompt ...")
        elif "chain" in manifest:  # a pipeline export: UNet sampler, then the VAE decoder
            result = _sample_chain(outdir, manifest, target, seed, steps, png, threads, verify)
        else:
            result = _sample_one(outdir, manifest, target, seed, steps, png, threads, verify)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:  # wrong shape
        raise MobilegenError(f"{outdir / 'manifest.json'}: not a mobilegen manifest "
                             f"({type(e).__name__}: {e})") from None
    return result


# What `sample` writes beside a PNG it made: an existing --png without it is somebody's file.
PNG_TAG = ("Software", "mobilegen")  # sampling.generate.save_grid writes it


def _check_options(steps: int | None, threads: int, png: Path, seed: int | None,
                   force: bool) -> None:
    from mobilegen.cli.common import OptionError

    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise OptionError(f"--steps must be in [1, {MAX_STEPS}], found {steps}")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise OptionError(f"--seed must be in [0, 2**63 - 1], found {seed}")
    if not 1 <= threads <= MAX_THREADS:
        raise OptionError(f"--threads must be in [1, {MAX_THREADS}], found {threads}")
    if png.is_dir():
        raise OptionError(f"--png {png}: is a folder, expected a .png file path")
    if png.suffix.lower() != ".png":
        raise OptionError(f"--png {png}: expected a file name ending in .png")
    if not png.absolute().parent.is_dir():
        raise OptionError(f"--png {png}: its folder {png.absolute().parent} does not exist")
    if (png.exists() or png.is_symlink()) and not force and not _written_by_us(png):
        from mobilegen.errors import OutputError  # exit 1, as prune --out

        raise OutputError(f"--png {png}: the file exists and was not written by mobilegen "
                          "(give --force to replace it)")


def _written_by_us(png: Path) -> bool:
    """Whether `png` is a regular PNG file carrying sample's own text tag."""
    if png.is_symlink() or not png.is_file():
        return False
    try:
        from PIL import Image

        with Image.open(png) as img:
            return bool(img.format == "PNG" and img.info.get(PNG_TAG[0]) == PNG_TAG[1])
    except Exception:  # not an image at all: somebody's file
        return False


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
         _number(s["num_images"], 1, MAX_IMAGES, True)),
        ("sampler.guidance_scale", s["guidance_scale"],
         isinstance(s["guidance_scale"], int | float) and math.isfinite(s["guidance_scale"])
         and 0 <= s["guidance_scale"] <= 1000),
        ("sampler.seed", s["seed"], _number(s["seed"], 0, MAX_SEED, True)),
        ("sample_shape", shape, isinstance(shape, list) and len(shape) == 3 and all(
            isinstance(d, int) and 1 <= d <= 4096 for d in shape) and shape[0] <= 64),
    ]
    for key, value, ok in checks:
        if not ok:
            raise MobilegenError(f"{path}: component '{component.get('name')}': '{key}' is "
                                 f"out of range or of the wrong type ({value!r})")


def _bad(path: Path, key: str, value: Any, expected: str) -> Any:
    from mobilegen.errors import MobilegenError

    text = repr(value)
    return MobilegenError(f"{path}: key '{key}' must be {expected}, found "
                          f"{text if len(text) <= 60 else text[:57] + '...'}")


def _number(value: Any, lo: float, hi: float, integral: bool = False) -> bool:
    kinds = int if integral else int | float
    return not isinstance(value, bool) and isinstance(value, kinds) and lo <= value <= hi


def _check_latent(path: Path, chain: dict[str, Any]) -> None:
    lat = chain["latent"]
    if not _number(lat["scaling_factor"], 1e-6, 1e4):
        raise _bad(path, "chain.latent.scaling_factor", lat["scaling_factor"],
                   "a number in [1e-06, 10000]")
    if not _number(lat["shift_factor"], -1e4, 1e4):
        raise _bad(path, "chain.latent.shift_factor", lat["shift_factor"],
                   "a number in [-10000, 10000]")


def _check_prompt_chain(path: Path, comps: dict[str, Any], chain: dict[str, Any],
                        steps: int | None) -> None:
    """A text-to-image manifest bounded like a single export's sampler (manifests are
    untrusted): the scheduler rebuilt and checked key by key, the token length the text
    encoder's, every count bounded. An explicit --steps that the schedule cannot take is a
    usage error naming the option."""
    from mobilegen.checkpoints.pipeline_folder import MAX_TOKENS
    from mobilegen.cli.common import OptionError
    from mobilegen.errors import ConfigError
    from mobilegen.sampling.discrete import DiscreteSchedule, make_plan

    sched, tok = chain["scheduler"], chain["tokenizer"]
    for key, value, ok, expected in [
        ("steps", sched["steps"], _number(sched["steps"], 1, MAX_STEPS, True),
         f"an integer in [1, {MAX_STEPS}]"),
        ("num_images", sched["num_images"], _number(sched["num_images"], 1, MAX_IMAGES, True),
         f"an integer in [1, {MAX_IMAGES}]"),
        ("guidance_scale", sched["guidance_scale"], _number(sched["guidance_scale"], 0, 1000),
         "a finite number in [0, 1000]"),
        ("seed", sched["seed"], _number(sched["seed"], 0, MAX_SEED, True),
         "an integer in [0, 2**63 - 1]"),
    ]:
        if not ok:
            raise _bad(path, f"chain.scheduler.{key}", value, expected)
    if not isinstance(sched["config"], dict):
        raise _bad(path, "chain.scheduler.config", sched["config"], "an object")
    try:
        schedule = DiscreteSchedule(**sched["config"])
    except ConfigError as e:
        raise _bad(path, "chain.scheduler.config", "...", str(e)) from None
    try:
        make_plan(schedule, sched["steps"])
    except ConfigError as e:
        raise _bad(path, "chain.scheduler.steps", sched["steps"], str(e)) from None
    if steps is not None:
        try:
            make_plan(schedule, steps)
        except ConfigError as e:
            raise OptionError(f"--steps {steps}: {str(e).removeprefix('steps: ')}") from None
    length = comps["text_encoder"]["inputs"][0]["shape"][1]
    if not (_number(tok["max_length"], 1, MAX_TOKENS, True) and tok["max_length"] == length):
        raise _bad(path, "chain.tokenizer.max_length", tok["max_length"],
                   f"the text encoder's token count ({length!r})")
    shape = comps["unet"]["sample_shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and shape[0] <= 64
            and all(_number(d, 1, 4096, True) for d in shape)):
        raise _bad(path, "components.unet.sample_shape", shape, "[C <= 64, H, W <= 4096]")
    _check_latent(path, chain)


def _check_token_ids(outdir: Path, chain: dict[str, Any]) -> None:
    """The manifest's special tokens and ids must be the shipped (sha256-checked) vocabulary's:
    an id of 1e6 would index past the text encoder's embedding table."""
    from mobilegen.checkpoints.guards import read_json_file

    path = outdir / "manifest.json"
    tok = chain["tokenizer"]
    vocab = read_json_file(outdir / tok["files"]["vocab"], outdir)
    if not isinstance(vocab, dict):
        raise _bad(path, "chain.tokenizer.files.vocab", tok["files"]["vocab"],
                   "a JSON vocabulary")
    for role in ("bos", "eos", "pad", "unk"):
        text, idx = tok["tokens"][role], tok["ids"][role]
        if not isinstance(text, str) or text not in vocab or vocab[text] != idx:
            raise _bad(path, f"chain.tokenizer.ids.{role}", idx,
                       f"the shipped vocabulary's id of {str(text)[:30]!r}")
    if not isinstance(tok["lower_case"], bool):
        raise _bad(path, "chain.tokenizer.lower_case", tok["lower_case"], "true or false")


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


def _save(png: Path, images: Any, labels: list[int] | None = None,
          native: bool = False) -> None:
    """Refuse non-finite images (nothing written); write the grid atomically."""
    import numpy as np

    from mobilegen.errors import MobilegenError
    from mobilegen.sampling.generate import save_grid

    if not np.isfinite(images).all():
        raise MobilegenError("the generated images contain NaN or inf: nothing was written")
    tmp = png.absolute().parent / f".{png.name}.tmp-{os.getpid()}.png"
    try:
        save_grid(tmp, images, labels, native)
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
    _check_latent(outdir / "manifest.json", manifest["chain"])
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
                   prompts: tuple[str | None, str | None],
                   num_images: int | None = None) -> dict[str, Any]:
    """A text-to-image export: the shipped tokenizer (files checked like the artifacts), then
    the text encoder, UNet (SD's discrete scheduler) and decoder artifacts of one format."""
    from mobilegen.errors import MobilegenError
    from mobilegen.sampling.prompt_chain import generate_from_prompt, load_tokenizer

    comps = {c["slot"]: c for c in manifest["components"]}
    chain = manifest["chain"]
    _check_prompt_chain(outdir / "manifest.json", comps, chain, steps)  # before any work
    checked = set()
    for f in manifest["files"]:  # tokenizer, scheduler: confined and hashed like artifacts
        if f.get("format") in ("tokenizer", "scheduler"):
            _artifact(outdir, f, [], verify)
            checked.add(f["path"])
    for rel in (chain["tokenizer"]["files"]["vocab"], chain["tokenizer"]["files"]["merges"],
                "scheduler/scheduler_config.json"):
        if rel not in checked:
            raise MobilegenError(f"{outdir / 'manifest.json'}: shipped file '{rel}' is not "
                                 "among the manifest's checked files: refused")
    _check_token_ids(outdir, chain)
    runners, used = {}, []
    for slot in ("text_encoder", "unet", "decoder"):
        files = _matching(manifest["files"], target, slot)
        if not files:
            raise MobilegenError(f"{outdir}: no '{target}' artifact for the {slot}")
        f = next((f for f in files if f["precision"] == "fp32"), files[0])  # fp32 first
        runners[slot] = _load(f, _artifact(outdir, f, manifest["files"], verify), threads,
                              target)
        used.append(f["path"])
    images = generate_from_prompt(runners, comps, chain, load_tokenizer(outdir, chain),
                                  prompts[0], prompts[1], seed=seed, steps=steps,
                                  num_images=num_images)
    _save(png, images, native=num_images == 1)
    sched = chain["scheduler"]
    return {"artifact": " + ".join(used), "artifacts": used, "png": str(png),
            "images": len(images), "image_shape": list(images.shape[1:]),
            "prompt": chain["prompt"] if prompts[0] is None else prompts[0],
            "negative_prompt": chain["negative_prompt"] if prompts[1] is None else prompts[1],
            "scheduler": sched["kind"], "seed": sched["seed"] if seed is None else seed,
            "steps": steps or sched["steps"], "finite": True}
