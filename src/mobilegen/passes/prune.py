"""Structured channel pruning of the VAE decoder (SnapFusion: 50M -> 13M parameters).

Channels are removed, never masked: the result is a smaller VAEDecoder whose widths live in its
config (and, once saved, in its tensor shapes). Three rules keep the network well-formed:

- Residual streams. Channels joined by an identity residual (conv_in -> mid ResNets -> attention
  -> ... up to the next ResNet with a 1x1 shortcut or the next upsampler conv) are one stream:
  every layer that writes it keeps the same channels. A channel's score is the sum of the L1
  norms of its weight rows over all those writers.
- GroupNorm groups. Every norm keeps its group count, and each group keeps the same number of
  its own best channels, so a pruned norm still normalises over (the survivors of) the original
  groups and statistics do not mix across groups.
- Inner widths (a ResNet's conv1 -> norm2 -> conv2, the attention's q/k/v) are ranked on their
  own: conv1's rows, and q+k+v rows together (q and k must share channels for q.k).

The same ratio applies everywhere by default (SnapFusion's uniform pruning); the decoder's final
3-channel output and post_quant_conv are never pruned.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mobilegen.errors import ConfigError
from mobilegen.models.vae_decoder import ResnetWidths, VAEDecoder, VAEDecoderConfig


def _keep_count(width: int, groups: int, ratio: float) -> int:
    """Channels kept per group (at least one)."""
    return max(1, round((width // groups) * (1.0 - ratio)))


@dataclass
class _Plan:
    """Which layer reads and writes which index set, walked once over the config."""

    streams: list[tuple[int, int]]  # per stream: (width, groups)
    inner: dict[str, tuple[int, int]]  # resnet prefix -> (width, groups) of its conv1 output
    resnets: list[tuple[str, int, int]]  # (prefix, in stream, out stream)
    writers: dict[int, list[str]]  # stream -> weight keys whose rows write it
    attention: tuple[str, int] | None  # (prefix, stream) of the mid attention
    upsamplers: list[tuple[str, int, int]]  # (prefix, in stream, out stream)
    final: int  # stream read by conv_norm_out / conv_out


def _plan(cfg: VAEDecoderConfig) -> _Plan:
    streams: list[tuple[int, int]] = []
    writers: dict[int, list[str]] = {}

    def new_stream(width: int, groups: int, writer: str) -> int:
        streams.append((width, groups))
        writers[len(streams) - 1] = [writer]
        return len(streams) - 1

    first = cfg.mid_resnets[0]
    cur = new_stream(first.in_channels, first.groups1, "decoder.conv_in.weight")
    inner: dict[str, tuple[int, int]] = {}
    resnets, upsamplers = [], []
    attention = None

    def resnet(prefix: str, w: ResnetWidths) -> None:
        nonlocal cur
        inner[prefix] = (w.mid_channels, w.groups2)
        if w.in_channels == w.out_channels:  # identity residual: the stream carries on
            writers[cur].append(prefix + "conv2.weight")
            resnets.append((prefix, cur, cur))
        else:
            out = new_stream(w.out_channels, 0, prefix + "conv2.weight")
            writers[out].append(prefix + "conv_shortcut.weight")
            resnets.append((prefix, cur, out))
            cur = out

    for i, w in enumerate(cfg.mid_resnets):
        resnet(f"decoder.mid_block.resnets.{i}.", w)
        if i == 0 and cfg.mid_attention_channels:
            attention = ("decoder.mid_block.attentions.0.", cur)
            writers[cur].append("decoder.mid_block.attentions.0.to_out.0.weight")
    for b, blk in enumerate(cfg.up_resnets):
        for i, w in enumerate(blk):
            resnet(f"decoder.up_blocks.{b}.resnets.{i}.", w)
        if cfg.upsample_channels[b]:
            prefix = f"decoder.up_blocks.{b}.upsamplers.0.conv."
            out = new_stream(cfg.upsample_channels[b], 0, prefix + "weight")
            upsamplers.append((prefix, cur, out))
            cur = out
    # A stream's groups: those of the norms that read it (all equal for a diffusers decoder).
    readers: dict[int, set[int]] = {s: set() for s in range(len(streams))}
    for (_, s_in, _), w in zip(resnets, [*cfg.mid_resnets, *(r for b in cfg.up_resnets
                                                             for r in b)], strict=True):
        readers[s_in].add(w.groups1)
    if attention:
        readers[attention[1]].add(cfg.mid_attention_groups)
    readers[cur].add(cfg.norm_out_groups)
    for s, groups in readers.items():
        width = streams[s][0]
        # norms reading one stream with different group counts: use the coarsest common split
        g = max(d for d in range(1, width + 1) if width % d == 0 and
                all(x % d == 0 for x in groups)) if groups else 1
        streams[s] = (width, g)
    return _Plan(streams, inner, resnets, writers, attention, upsamplers, cur)


def _stream_keeps(plan: _Plan, ratio: float) -> list[int]:
    """Channels kept per group of each stream. A ResNet with a 1x1 shortcut (in != out) must
    still have in != out after pruning: equal widths would build the block without its shortcut
    (an identity where a learned map was; `--ratio 0.75` on the tiny decoder did that). The
    narrower side keeps one more channel per group until the widths differ."""
    keep = [_keep_count(w, g, ratio) for w, g in plan.streams]
    changed = True
    while changed:
        changed = False
        for prefix, s_in, s_out in plan.resnets:
            (_, g_in), (_, g_out) = plan.streams[s_in], plan.streams[s_out]
            if s_in == s_out or g_in * keep[s_in] != g_out * keep[s_out]:
                continue
            grow = next((s for s in (s_out, s_in)
                         if keep[s] < plan.streams[s][0] // plan.streams[s][1]), None)
            if grow is None:
                raise ConfigError(f"pruning {prefix}: its shortcut's widths cannot stay apart")
            keep[grow] += 1
            changed = True
    return keep


def pruned_config(cfg: VAEDecoderConfig, ratio: float) -> VAEDecoderConfig:
    """The decoder's config after pruning `ratio` of every width (no weights needed)."""
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"prune ratio must be in [0, 1), found {ratio}")
    plan = _plan(cfg)
    width = [g * k for (_, g), k in zip(plan.streams, _stream_keeps(plan, ratio), strict=True)]
    inner = {p: g * _keep_count(w, g, ratio) for p, (w, g) in plan.inner.items()}
    it = iter(plan.resnets)

    def resnet(w: ResnetWidths) -> ResnetWidths:
        prefix, s_in, s_out = next(it)
        return dataclasses.replace(w, in_channels=width[s_in], mid_channels=inner[prefix],
                                   out_channels=width[s_out])

    mid = tuple(resnet(w) for w in cfg.mid_resnets)
    up = tuple(tuple(resnet(w) for w in blk) for blk in cfg.up_resnets)
    ups = iter(plan.upsamplers)
    upsample = tuple(width[next(ups)[2]] if u else 0 for u in cfg.upsample_channels)
    attn = max(1, round(cfg.mid_attention_channels * (1 - ratio))) \
        if cfg.mid_attention_channels else 0
    return dataclasses.replace(cfg, mid_resnets=mid, up_resnets=up, upsample_channels=upsample,
                               mid_attention_channels=attn)


def _l1_rows(w: torch.Tensor) -> torch.Tensor:
    return w.detach().abs().reshape(w.shape[0], -1).sum(dim=1)


def _top_per_group(score: torch.Tensor, groups: int, keep: int) -> torch.Tensor:
    """Indices (sorted) of the `keep` best channels inside each of `groups` equal groups."""
    per = score.reshape(groups, -1)
    best = per.topk(keep, dim=1).indices.sort(dim=1).values  # (groups, keep)
    offsets = torch.arange(groups)[:, None] * per.shape[1]
    return (best + offsets).reshape(-1)


def prune_decoder(model: VAEDecoder, ratio: float) -> VAEDecoder:
    """A new, smaller VAEDecoder keeping the L1-best channels of `model` (unchanged)."""
    cfg = model.config
    new_cfg = pruned_config(cfg, ratio)
    plan = _plan(cfg)
    sd = model.state_dict()
    keep: list[torch.Tensor] = []
    for s, ((_, g), k) in enumerate(zip(plan.streams, _stream_keeps(plan, ratio), strict=True)):
        score = sum(_l1_rows(sd[key]) for key in plan.writers[s])
        keep.append(_top_per_group(score, g, k))
    out: dict[str, torch.Tensor] = dict(sd)

    def take(key: str, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> None:
        t = out[key]
        if rows is not None:
            t = t.index_select(0, rows)
        if cols is not None and t.dim() > 1:
            t = t.index_select(1, cols)
        out[key] = t.contiguous()

    def norm(prefix: str, idx: torch.Tensor) -> None:
        take(prefix + "weight", idx)
        take(prefix + "bias", idx)

    take("decoder.conv_in.weight", keep[0])
    take("decoder.conv_in.bias", keep[0])
    for prefix, s_in, s_out in plan.resnets:
        w, g = plan.inner[prefix]
        mid = _top_per_group(_l1_rows(sd[prefix + "conv1.weight"]), g, _keep_count(w, g, ratio))
        a, b = keep[s_in], keep[s_out]
        norm(prefix + "norm1.", a)
        take(prefix + "conv1.weight", mid, a)
        take(prefix + "conv1.bias", mid)
        norm(prefix + "norm2.", mid)
        take(prefix + "conv2.weight", b, mid)
        take(prefix + "conv2.bias", b)
        if prefix + "conv_shortcut.weight" in out:
            take(prefix + "conv_shortcut.weight", b, a)
            take(prefix + "conv_shortcut.bias", b)
    if plan.attention:
        prefix, s = plan.attention
        a = keep[s]
        score = sum(_l1_rows(sd[prefix + f"{n}.weight"]) for n in ("to_q", "to_k", "to_v"))
        q = score.topk(new_cfg.mid_attention_channels).indices.sort().values
        norm(prefix + "group_norm.", a)
        for n in ("to_q", "to_k", "to_v"):
            take(prefix + f"{n}.weight", q, a)
            take(prefix + f"{n}.bias", q)
        take(prefix + "to_out.0.weight", a, q)
        take(prefix + "to_out.0.bias", a)
    for prefix, s_in, s_out in plan.upsamplers:
        take(prefix + "weight", keep[s_out], keep[s_in])
        take(prefix + "bias", keep[s_out])
    norm("decoder.conv_norm_out.", keep[plan.final])
    take("decoder.conv_out.weight", None, keep[plan.final])
    pruned = VAEDecoder(new_cfg)
    pruned.load_state_dict(out, strict=True)
    return pruned.eval()


def decoder_costs(model: Any, latent_size: int | None = None) -> dict[str, int]:
    """Parameters and MACs of one decode at `latent_size` (meta-device models work too)."""
    from mobilegen.measure.costs import count_macs, count_params

    device = next(model.parameters()).device
    size = latent_size or model.config.latent_size
    z = torch.zeros(1, model.config.latent_channels, size, size, device=device)
    macs, _ = count_macs(model, (z,))
    return {"params": count_params(model), "macs": macs}


# ---------------------------------------------------------------- commands' library side


def _load_decoder(path: Any) -> Any:
    from mobilegen.checkpoints.loader import load_checkpoint
    from mobilegen.errors import CheckpointError

    loaded = load_checkpoint(path) if not _is_pipeline_root(path) else _load_vae_folder(path)
    if loaded.family != "vae-decoder":
        raise CheckpointError(f"{path}: holds a '{loaded.family}' model, expected a "
                              "'vae-decoder' (a diffusers vae/ folder or a mobilegen checkpoint)")
    return loaded


def _is_pipeline_root(path: Any) -> bool:
    from pathlib import Path

    p = Path(path)
    return p.is_dir() and not (p / "config.json").is_file() and (p / "vae").is_dir()


def _load_vae_folder(path: Any) -> Any:
    from mobilegen.checkpoints.diffusers import load_diffusers_model
    from mobilegen.checkpoints.loader import LoadedModel

    family, cfg, model = load_diffusers_model(path, "vae")
    return LoadedModel(family, cfg, model, source=str(path))


def _refuse_overwrite(src: Any, out: Any, force: bool = False) -> None:
    """`out` must be a new .safetensors path in an existing folder, or a checkpoint mobilegen
    wrote (its header says so); anything else is overwritten only with --force. Never the input."""
    from pathlib import Path

    from mobilegen.checkpoints.loader import is_mobilegen_checkpoint
    from mobilegen.errors import OutputError

    out_path = Path(out)
    src, out = Path(src).resolve(), out_path.resolve()
    if src == out or (src.is_dir() and src in out.parents):
        raise OutputError(f"--out {out}: refusing to write over or inside the input {src}")
    if out.is_dir():
        raise OutputError(f"--out {out}: is a folder, expected a .safetensors file path")
    if not out.parent.is_dir():
        raise OutputError(f"--out {out_path}: its folder {out.parent} does not exist")
    exists = out_path.exists() or out_path.is_symlink()
    if exists and not force and (out_path.is_symlink() or not is_mobilegen_checkpoint(out)):
        raise OutputError(f"--out {out_path}: exists and was not written by mobilegen; "
                          "refusing to overwrite it (--force to replace it)")


def run_prune(checkpoint: Any, ratio: float, out: Any, latent_size: int | None = None,
              seed: int = 0, force: bool = False) -> dict[str, Any]:
    """Prune a decoder checkpoint, check the result runs, save it (atomically) to `out`."""
    from mobilegen.checkpoints.loader import load_checkpoint, save_checkpoint

    _refuse_overwrite(checkpoint, out, force)
    loaded = _load_decoder(checkpoint)
    before = decoder_costs(loaded.model, latent_size)
    pruned = prune_decoder(loaded.model, ratio)
    after = decoder_costs(pruned, latent_size)
    save_checkpoint(out, "vae-decoder", pruned)
    reloaded = load_checkpoint(out).model  # widths come back from the file alone
    z = reloaded.example_inputs(1, seed=seed, image_size=latent_size)
    with torch.no_grad():
        image = reloaded(*z)
        reference = loaded.model(*z)
    return {
        "checkpoint": str(checkpoint), "out": str(out), "ratio": ratio,
        "latent_size": latent_size or loaded.config.latent_size,
        "before": before, "after": after,
        "params_ratio": after["params"] / before["params"],
        "macs_ratio": after["macs"] / before["macs"],
        "image_shape": list(image.shape),
        "psnr_db_vs_original": _psnr(reference, image),
    }


def _psnr(reference: torch.Tensor, test: torch.Tensor) -> float | None:
    """PSNR over images in [-1, 1] (data range 2); None when identical."""
    import math

    from mobilegen.measure.parity import psnr

    value = psnr(reference.numpy(), test.numpy(), 2.0)
    return None if math.isinf(value) else value


def run_distill_decoder(
    teacher_path: Any, student_path: Any, out: Any, steps: int, lr: float = 1e-4,
    batch: int = 2, latent_size: int | None = None, eval_latents: int = 4, seed: int = 0,
    progress: Any = None, force: bool = False, latents: Any = None,
) -> dict[str, Any]:
    """Recover a pruned decoder by matching the original decoder's images (MSE) on random
    latents (SnapFusion's decoder distillation); PSNR vs the teacher on held-out latents before
    and after. The trained student is saved to `out` (atomically).

    `latents`: a safetensors file whose tensor `latents` (N, C, h, w) holds real latents as the
    decoder reads them (e.g. a VAE encoder's outputs on training images): batches are drawn from
    its first N - eval_latents rows and scored on the last eval_latents, so the student learns
    the distribution it will decode instead of a Gaussian."""
    from mobilegen.checkpoints.loader import save_checkpoint
    from mobilegen.passes.distill import distill

    for src in (teacher_path, student_path):
        _refuse_overwrite(src, out, force)
    teacher = _load_decoder(teacher_path).model
    student = _load_decoder(student_path).model
    size = latent_size or student.config.latent_size
    c = student.config.latent_channels
    pool = None if latents is None else _read_latents(latents, c, eval_latents)
    if pool is not None:
        size = int(pool.shape[-1])
        held_out, pool = pool[-eval_latents:], pool[:-eval_latents]
    else:  # held-out latents from a generator the training batches never touch
        held_out = torch.randn(eval_latents, c, size, size,
                               generator=torch.Generator().manual_seed(10_000 + seed))

    def score() -> float | None:
        with torch.no_grad():
            return _psnr(teacher(held_out), student(held_out))

    before = score()

    def batches(step: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        if pool is not None:
            return (pool[torch.randint(0, len(pool), (batch,), generator=gen)],)
        return (torch.randn(batch, c, size, size, generator=gen),)

    result = distill(teacher, student, batches, steps, lr=lr, seed=seed, progress=progress)
    if not all(torch.isfinite(p).all() for p in student.parameters()):
        from mobilegen.errors import MobilegenError

        raise MobilegenError(f"distillation diverged at lr {lr:g} (the weights hold NaN or inf): "
                             "nothing was written; lower --lr")
    after = score()
    save_checkpoint(out, "vae-decoder", student)
    return {"teacher": str(teacher_path), "student": str(student_path), "out": str(out),
            "steps": steps, "lr": lr, "batch": batch, "latent_size": size,
            "latents": "gaussian" if latents is None else str(latents),
            "psnr_db_before": before, "psnr_db_after": after,
            "loss_first": result.losses[0] if result.losses else None,
            "loss_last": result.losses[-1] if result.losses else None,
            "wall_s": result.wall_s}


def _read_latents(path: Any, channels: int, eval_latents: int) -> torch.Tensor:
    """--latents: one float tensor `latents` (N, channels, h, h) with N > eval_latents; checked
    from the header before any tensor is read (no size is trusted blindly)."""
    from safetensors import safe_open

    from mobilegen.checkpoints.guards import regular_file
    from mobilegen.errors import CheckpointError

    path = Path(path)
    try:
        with safe_open(str(regular_file(path)), framework="pt") as f:
            if "latents" not in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                raise CheckpointError(f"{path}: expected a tensor 'latents', found "
                                      f"{sorted(f.keys())[:5]}")
            shape = tuple(f.get_slice("latents").get_shape())
            if (len(shape) != 4 or shape[1] != channels or shape[2] != shape[3]
                    or not eval_latents < shape[0] <= 1_000_000 or shape[2] > 4096):
                raise CheckpointError(
                    f"{path}: tensor 'latents': expected (N > {eval_latents}, {channels}, h, h), "
                    f"found {list(shape)}")
            x = f.get_tensor("latents").float()
    except CheckpointError:
        raise
    except Exception as e:  # the library raises several types for corrupt files
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    if not torch.isfinite(x).all():
        raise CheckpointError(f"{path}: tensor 'latents' holds NaN or inf")
    return x
