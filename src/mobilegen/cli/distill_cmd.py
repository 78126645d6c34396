from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mobilegen.cli.common import (
    DebugOpt,
    JsonOpt,
    OptionError,
    distill_progress,
    handle_errors,
    print_json,
    stdout_console,
)
from mobilegen.cli.prune_cmd import check_latent_size


@handle_errors
def distill_decoder(
    teacher: Annotated[Path, typer.Argument(help="The original decoder (checkpoint or folder).")],
    student: Annotated[Path, typer.Argument(help="The pruned decoder (from `mobilegen prune`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Recovered .safetensors to write.")],
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps.")] = 200,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
    batch: Annotated[int, typer.Option(min=1, help="Random latents per step.")] = 2,
    latent_size: Annotated[int | None, typer.Option(help="Latent size to train at.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for latents.")] = 0,
    latents: Annotated[Path | None, typer.Option(
        help="Real latents to distill on: a .safetensors with a tensor 'latents' (N, C, h, w) "
             "as the decoder reads them (default: Gaussian latents).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Overwrite --out even when mobilegen did not write it.")] = False,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Recover a pruned decoder: MSE to the original decoder's images on random latents."""
    import math

    from rich.markup import escape

    from mobilegen.passes.prune import run_distill_decoder

    if not (math.isfinite(lr) and 0 < lr <= 1):
        raise OptionError(f"--lr must be a finite number in (0, 1], found {lr}")
    if not 1 <= steps <= 1_000_000 or not 1 <= batch <= 1024:
        raise OptionError(f"--steps must be in [1, 1000000] and --batch in [1, 1024], found "
                          f"{steps} and {batch}")
    check_latent_size(latent_size)
    with distill_progress() as progress:
        info = run_distill_decoder(teacher, student, out, steps, lr, batch, latent_size,
                                   seed=seed, progress=progress, force=force,
                                   latents=latents)
    if json_output:
        print_json(info)
        return
    stdout_console().print(escape(
        f"distilled {steps} steps in {info['wall_s']:.1f} s -> {out}\n"
        f"PSNR vs original: {info['psnr_db_before']:.2f} dB -> {info['psnr_db_after']:.2f} dB "
        f"(loss {info['loss_first']:.4g} -> {info['loss_last']:.4g})"), highlight=False)
