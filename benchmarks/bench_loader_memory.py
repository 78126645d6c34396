"""Peak RSS of loading one checkpoint: the loader (parameters built on the meta device, the
file's tensors assigned) against the previous way (a random-initialised model, then the file's
tensors copied in). An SD-shaped UNet with random weights is saved once to --dir; each load runs
in its own subprocess so ru_maxrss is that load's alone.

    .venv/bin/python benchmarks/bench_loader_memory.py [--width 160] [--dir /tmp/mg-loader]

--width 320 is SD-1.5's UNet (859.5M parameters, a 3.4 GB file); the default 160 is a
reduced-width SD UNet (same blocks, channels halved). Shared hosts: the figures are RSS, not time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path


def _config(width: int):
    from mobilegen.models.unet import UNetConfig

    return UNetConfig(block_out_channels=(width, 2 * width, 4 * width, 4 * width))


def _load(path: str, mode: str) -> dict:
    from mobilegen.checkpoints.loader import load_checkpoint

    if mode == "assign":
        model = load_checkpoint(path).model
    else:  # the previous path: random init, then the file's tensors copied in
        from safetensors.torch import load_file

        from mobilegen.checkpoints.loader import read_header
        from mobilegen.models import get_family

        family, cfg = read_header(Path(path))
        model = get_family(family).build(cfg)
        model.load_state_dict(load_file(path), strict=True)
    n = sum(p.numel() for p in model.parameters())
    return {"mode": mode, "params": n,
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/mg-loader"))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_load(*args.child)))
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / f"unet-w{args.width}.safetensors"
    if not path.exists():
        from mobilegen.checkpoints.loader import build_random, save_checkpoint

        save_checkpoint(path, "unet", build_random("unet", _config(args.width)).model)
    file_gb = round(path.stat().st_size / 1024**3, 2)
    for mode in ("copy", "assign"):
        out = subprocess.run([sys.executable, __file__, "--child", str(path), mode],
                             capture_output=True, text=True, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        print(json.dumps({**row, "file_gb": file_gb}))


if __name__ == "__main__":
    main()
