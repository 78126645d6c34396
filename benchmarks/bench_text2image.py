"""Prompt fidelity of a text-to-image export: N balanced prompts (mobilegen.text_digits), drawn
through PyTorch (the export's recipe, the loaded weights) and through every artifact format all
three components produced, each image judged for digit, colour and background, plus the image
PSNR of each format against PyTorch on the same prompts and seeds.

    .venv/bin/mobilegen export recipes/digits-t2i.toml --out out/digits-t2i
    .venv/bin/python benchmarks/bench_text2image.py out/digits-t2i --n 100

Writes benchmarks/results/text2image.json (rows merged by export name).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from mobilegen import text_digits as td

RESULTS = Path(__file__).parent / "results" / "text2image.json"


def torch_runners(recipe_path: Path) -> dict:
    from mobilegen.export.sd_chain import pytorch_runners
    from mobilegen.recipe import load_any_recipe

    prec = load_any_recipe(recipe_path)
    return pytorch_runners({slot: getattr(prec, slot) for slot in prec.slots()})


def artifact_runners(out: Path, manifest: dict, fmt: str, precision: str) -> dict | None:
    from mobilegen.targets import load_for_profile
    from mobilegen.targets.profile import load_target

    runners = {}
    for slot in ("text_encoder", "unet", "decoder"):
        files = [f for f in manifest["files"] if f.get("component") == slot
                 and f["format"] == fmt and f.get("precision") == precision and f.get("runtime")]
        if not files:
            return None
        runners[slot] = load_for_profile(out / files[0]["path"], load_target(files[0]["target"]))
    return runners


def draw(runners: dict, comps: dict, chain: dict, tok, caps: list, steps: int) -> np.ndarray:
    from mobilegen.sampling.prompt_chain import generate_from_prompt

    return np.concatenate([generate_from_prompt(runners, comps, chain, tok, c.text, "",
                                                seed=i, steps=steps, num_images=1)
                           for i, c in enumerate(caps)])


def main() -> None:
    from mobilegen.measure.parity import compare
    from mobilegen.sampling.prompt_chain import load_tokenizer
    from mobilegen.sampling.samplers import images_to_uint8

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("export", type=Path, help="a text-to-image pipeline export folder")
    ap.add_argument("--n", type=int, default=100, help="prompts (10 per digit, balanced)")
    ap.add_argument("--steps", type=int, default=None, help="default: the manifest's")
    args = ap.parse_args()
    manifest = json.loads((args.export / "manifest.json").read_text())
    report = json.loads((args.export / "report.json").read_text())
    chain, comps = manifest["chain"], {c["slot"]: c for c in manifest["components"]}
    tok = load_tokenizer(args.export, chain)
    caps = td.balanced_captions(args.n)
    steps = args.steps or chain["scheduler"]["steps"]
    t0 = time.time()
    reference = draw(torch_runners(Path(report["recipe"]["path"])), comps, chain, tok, caps,
                     steps)
    rows = [{"format": "pytorch", "precision": "fp32",
             **td.score(images_to_uint8(reference), caps).to_dict(),
             "seconds": round(time.time() - t0, 1)}]
    print(rows[-1], flush=True)
    keys = sorted({(f["format"], f["precision"]) for f in manifest["files"]
                   if f.get("component") == "unet" and f.get("runtime")
                   and f["format"] != "companion"})
    for fmt, precision in keys:
        runners = artifact_runners(args.export, manifest, fmt, precision)
        if runners is None:
            continue
        t0 = time.time()
        images = draw(runners, comps, chain, tok, caps, steps)
        rows.append({"format": fmt, "precision": precision,
                     **td.score(images_to_uint8(images), caps).to_dict(),
                     "image_psnr_db": compare(reference, images, 2.0).to_dict()["psnr_db"],
                     "seconds": round(time.time() - t0, 1)})
        print(rows[-1], flush=True)
    doc = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    doc[manifest["recipe"]] = {"prompts": args.n, "steps": steps,
                               "guidance": chain["scheduler"]["guidance_scale"], "rows": rows,
                               "host": "shared, busy 2-core host (timings only)"}
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
