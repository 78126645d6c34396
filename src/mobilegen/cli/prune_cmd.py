from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mobilegen.cli.common import (
    DebugOpt,
    JsonOpt,
    OptionError,
    handle_errors,
    print_json,
    stdout_console,
)


@handle_errors
def prune(
    checkpoint: Annotated[Path, typer.Argument(
        help="VAE decoder: a mobilegen .safetensors, a diffusers vae/ folder or pipeline root.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Pruned .safetensors to write.")],
    ratio: Annotated[float, typer.Option(help="Fraction of channels to remove (uniform).")] = 0.5,
    latent_size: Annotated[int | None, typer.Option(help="Latent size for the MAC count.")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Overwrite --out even when mobilegen did not write it.")] = False,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Structured L1 channel pruning of a VAE decoder; params and MACs before and after."""
    from rich.markup import escape

    from mobilegen.passes.prune import run_prune

    check_latent_size(latent_size)
    info = run_prune(checkpoint, ratio, out, latent_size, force=force)
    if json_output:
        print_json(info)
        return
    b, a = info["before"], info["after"]
    stdout_console().print(escape(
        f"pruned {ratio:.0%} of channels -> {out}\n"
        f"params {b['params']:,} -> {a['params']:,} ({info['params_ratio']:.3f}x)\n"
        f"MACs   {b['macs'] / 1e9:.3f} G -> {a['macs'] / 1e9:.3f} G ({info['macs_ratio']:.3f}x) "
        f"at latent {info['latent_size']}x{info['latent_size']}\n"
        f"reloaded and ran: image {info['image_shape']}, PSNR vs original "
        f"{info['psnr_db_vs_original']:.2f} dB (before any distill-decoder)"), highlight=False)


def check_latent_size(latent_size: int | None) -> None:
    """--latent-size: None (the model's own) or 1..4096; 0 must not mean 'the default'."""
    if latent_size is not None and not 1 <= latent_size <= 4096:
        raise OptionError(f"--latent-size must be in [1, 4096], found {latent_size}")
