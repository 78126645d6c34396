"""Train the embedded default model: a class-conditional STOIC on scikit-learn's digits.

The defaults reproduce checkpoints/stoic-digits.safetensors (see docs/training.md):

    .venv/bin/python scripts/train_digits.py

(The shipped run was `--time-budget 4300`, which on its shared 2-core host fixed the schedule at
`--steps 3900 --cooldown 780`: the defaults.)

Data: load_digits (1797 8x8 images, 0..16) scaled to [-1, 1] and upsampled to 16x16 (bilinear),
via mobilegen.digits_classifier.real_digits_16x16 (the same form the classifier scores).
Training: epsilon-prediction MSE on the continuous VP schedule of mobilegen's samplers,
t ~ U(1e-3, 1), optionally min-SNR-gamma weighted; 10% label dropout to the null label (for
classifier-free guidance), AdamW with warm-up, constant lr and a linear cool-down (or cosine),
EMA of the weights (the EMA weights are what ships). At the end: a 10x10 sample grid per guidance
scale (one row per class) with the numpy sampler, and the digit classifier's accuracy on each
(mobilegen.digits_classifier).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mobilegen import digits_classifier
from mobilegen.checkpoints.loader import save_checkpoint
from mobilegen.models.stoic import Stoic, StoicConfig
from mobilegen.sampling.samplers import (
    SamplerConfig,
    VPSchedule,
    images_to_uint8,
    make_grid,
    sample,
)

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=3900)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--cooldown", type=int, default=780,
                   help="lr schedule: warm-up, constant, then linear to 0 over the last N steps "
                        "(0: cosine to 0 after the warm-up)")
    p.add_argument("--time-budget", type=float, default=0.0,
                   help="seconds: once 80%% of it has passed at step K, cool down over K/4 more "
                        "steps and stop (overrides --steps and --cooldown; the log prints the "
                        "equivalent --steps/--cooldown, which reproduce the run without it)")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--p-uncond", type=float, default=0.1, help="label dropout to the null label")
    p.add_argument("--min-snr", type=float, default=5.0,
                   help="min-SNR-gamma loss weight min(SNR, gamma)/SNR (0: plain MSE)")
    p.add_argument("--shift", type=int, default=0,
                   help="augmentation: random shifts of up to this many 16x16 pixels (0: none)")
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--heads", type=int, default=4)
    # No positional embedding in STOIC: the zero-padded stem convolutions are what tells a token
    # where it is. With 4 extra 3x3 convolutions every token of the 8x8 grid has both borders of
    # each axis inside its receptive field (with 3, the middle tokens see only one).
    p.add_argument("--stem-convs", type=int, default=4)
    p.add_argument("--stem-kernel", type=int, default=3)
    p.add_argument("--decoder", choices=["slicing", "linear"], default="linear")
    p.add_argument("--mlp-ratio", type=float, default=4.0)
    p.add_argument("--time-injection", choices=["add", "adaln"], default="adaln")
    p.add_argument("--time-freq-dim", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the cores are shared)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=1000,
                   help="every N steps: classifier accuracy of the EMA model at --guidance")
    p.add_argument("--save-every", type=int, default=0,
                   help="every N steps: write the EMA model to <out>.step<N>.safetensors")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=4.0, help="the shipped guidance scale")
    p.add_argument("--eval-guidance", type=float, nargs="*",
                   default=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    p.add_argument("--out", type=Path, default=ROOT / "checkpoints" / "stoic-digits.safetensors")
    p.add_argument("--assets", type=Path, default=ROOT / "docs" / "assets")
    return p.parse_args(argv)


def digits_16x16() -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, 16, 16) float32 in [-1, 1] and (N,) int64 labels 0..9."""
    x, y = digits_classifier.real_digits_16x16()
    return torch.from_numpy(x), torch.from_numpy(y)


def lr_at(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    if args.cooldown:  # warm-up, stable, decay (linear to 0 over the last `cooldown` steps)
        return args.lr * min(1.0, (args.steps - step) / args.cooldown)
    frac = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * 0.5 * (1.0 + math.cos(math.pi * frac))


def shifted(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Each image moved by up to k pixels in x and y; the background (-1) fills in."""
    b, _, h, w = x.shape
    padded = F.pad(x, (k, k, k, k), value=-1.0)
    off = torch.randint(0, 2 * k + 1, (b, 2), generator=gen)
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w]
                        for i, (dy, dx) in enumerate(off.tolist())])


def make_config(args: argparse.Namespace) -> StoicConfig:
    return StoicConfig(
        in_channels=1, image_size=16, stride=2, depth=args.depth, width=args.width,
        heads=args.heads, stem_convs=args.stem_convs, stem_kernel=args.stem_kernel,
        mlp_ratio=args.mlp_ratio, conditioning="class", num_classes=10,
        time_injection=args.time_injection, time_freq_dim=args.time_freq_dim,
        decoder=args.decoder,
    )


@torch.no_grad()
def generate(model: Stoic, guidance: float, args: argparse.Namespace,
             per_class: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """per_class samples of each class (class k in row k of a 10-wide grid), numpy sampler."""
    was_training = model.training
    model.eval()

    def denoise(x: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
        out = model(torch.from_numpy(x).float(), torch.from_numpy(t).float(),
                    torch.from_numpy(cond).long())
        return out.numpy()

    labels = np.repeat(np.arange(10, dtype=np.int64), per_class)
    config = SamplerConfig(kind="dpm++2m", steps=args.sample_steps,
                           guidance_scale=guidance, seed=args.seed)
    images = sample(denoise, (len(labels), 1, 16, 16), config, VPSchedule(), cond=labels,
                    null_cond=np.full(len(labels), digits_classifier.NULL_LABEL, dtype=np.int64))
    model.train(was_training)
    return images, labels


def train(args: argparse.Namespace, x0_all: torch.Tensor, y_all: torch.Tensor) -> tuple:
    cfg = make_config(args)
    torch.manual_seed(args.seed)
    model = Stoic(cfg).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    schedule = VPSchedule()
    gen = torch.Generator().manual_seed(args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"STOIC {cfg.width}x{cfg.depth} stem {cfg.stem_convs}x k{cfg.stem_kernel} "
          f"{cfg.time_injection} {cfg.decoder}: {n_params:,} params; {vars(args)}", flush=True)
    clf = digits_classifier.fit_classifier() if args.eval_every else None

    rows, window, ema_loss, start = [], [], None, time.time()
    if args.time_budget:
        args.steps, args.cooldown = 10**9, 0  # fixed once 80% of the budget has passed
    step = -1
    while step + 1 < args.steps:
        step += 1
        if args.time_budget and not args.cooldown and time.time() - start > 0.8 * args.time_budget:
            args.cooldown = max(1, step // 4)
            args.steps = step + args.cooldown
            print(f"time budget: cool-down from step {step} over {args.cooldown} steps; "
                  f"equivalent: --steps {args.steps} --cooldown {args.cooldown}", flush=True)
        idx = torch.randint(0, len(x0_all), (args.batch_size,), generator=gen)
        x0, y = x0_all[idx], y_all[idx]
        if args.shift:
            x0 = shifted(x0, args.shift, gen)
        drop = torch.rand(args.batch_size, generator=gen) < args.p_uncond
        y = torch.where(drop, torch.full_like(y, cfg.num_classes), y)  # null label for CFG
        t = torch.rand(args.batch_size, generator=gen, dtype=torch.float64) * (1 - 1e-3) + 1e-3
        alpha_np, sigma_np = schedule.alpha(t.numpy()), schedule.sigma(t.numpy())
        alpha = torch.from_numpy(alpha_np).float().view(-1, 1, 1, 1)
        sigma = torch.from_numpy(sigma_np).float().view(-1, 1, 1, 1)
        noise = torch.randn(x0.shape, generator=gen)
        x_t = alpha * x0 + sigma * noise
        t_model = torch.from_numpy(schedule.model_time(t.numpy())).float()
        per_sample = (model(x_t, t_model, y) - noise).pow(2).mean(dim=(1, 2, 3))
        if args.min_snr:
            snr = alpha_np**2 / sigma_np**2
            weight = torch.from_numpy(np.minimum(snr, args.min_snr) / snr).float()
            loss = (weight * per_sample).mean()
        else:
            loss = per_sample.mean()

        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema_decay, (1 + step) / (10 + step))  # EMA warmup
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1.0 - decay)

        value = per_sample.mean().item()  # the unweighted eps MSE, comparable across runs
        window.append(value)
        ema_loss = value if ema_loss is None else 0.98 * ema_loss + 0.02 * value
        done = step + 1
        if done % args.log_every == 0 or done == args.steps:
            rows.append((done, sum(window) / len(window), ema_loss))
            window = []
            print(f"step {done:5d}  loss {rows[-1][1]:.4f}  ema {ema_loss:.4f}  "
                  f"lr {lr_at(step, args):.2e}  {time.time() - start:6.0f}s", flush=True)
        if args.save_every and done % args.save_every == 0 and done != args.steps:
            save_checkpoint(args.out.with_name(f"{args.out.stem}.step{done}.safetensors"),
                            "stoic", ema)
        if args.eval_every and done % args.eval_every == 0:
            t0 = time.time()
            images, labels = generate(ema, args.guidance, args)
            acc = digits_classifier.accuracy(clf, images, labels)
            print(f"eval step {done}: EMA accuracy at guidance {args.guidance:g} {acc:.0%} "
                  f"({time.time() - t0:.0f}s)", flush=True)
    return ema, rows, time.time() - start, n_params


def plot_loss(rows: list[tuple], path: Path) -> None:
    """A loss curve drawn with PIL (matplotlib is not a dependency)."""
    from PIL import Image, ImageDraw

    w, h, m = 640, 360, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    steps = [r[0] for r in rows]
    lo, hi = min(min(r[1], r[2]) for r in rows), max(max(r[1], r[2]) for r in rows)
    lo, hi = math.log10(lo), math.log10(hi)  # log scale

    def xy(s: float, v: float) -> tuple[float, float]:
        return (m + (w - 2 * m) * s / steps[-1],
                h - m - (h - 2 * m) * (math.log10(v) - lo) / max(hi - lo, 1e-9))

    d.rectangle([m, m, w - m, h - m], outline="black")
    for k in range(5):  # y ticks
        v = 10 ** (lo + (hi - lo) * k / 4)
        _, yy = xy(0, v)
        d.line([m - 4, yy, m, yy], fill="black")
        d.text((2, yy - 6), f"{v:.3f}", fill="black")
    for k in range(5):  # x ticks
        s = steps[-1] * k / 4
        xx, _ = xy(s, 10**lo)
        d.text((xx - 12, h - m + 6), f"{int(s)}", fill="black")
    d.line([xy(r[0], r[1]) for r in rows], fill=(150, 170, 230), width=1)
    d.line([xy(r[0], r[2]) for r in rows], fill=(200, 30, 30), width=2)
    d.text((m, 15), "STOIC on digits: training loss (eps MSE, log scale)", fill="black")
    d.text((w - m - 210, 15), "blue: per-window mean  red: EMA", fill="black")
    d.text((w // 2 - 15, h - 20), "step", fill="black")
    img.save(path)


def save_grid(images: np.ndarray, path: Path) -> None:
    from PIL import Image

    grid = make_grid(images_to_uint8(images), 10)
    grid_img = Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid)
    grid_img.resize((grid_img.width * 4, grid_img.height * 4), Image.NEAREST).save(path)


def evaluate(model: Stoic, args: argparse.Namespace) -> dict[str, float]:
    """Per guidance scale: a 10x10 grid (row k = class k) and the classifier's accuracy on it."""
    clf = digits_classifier.fit_classifier()
    results = {}
    for g in args.eval_guidance:
        images, labels = generate(model, g, args)
        results[f"{g:g}"] = acc = digits_classifier.accuracy(clf, images, labels)
        save_grid(images, args.assets / f"stoic-digits-samples-g{g:g}.png")
        print(f"guidance {g:g}: classifier accuracy on 100 samples {acc:.0%}", flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.assets.mkdir(parents=True, exist_ok=True)
    x0, y = digits_16x16()
    ema, rows, wall, n_params = train(args, x0, y)

    save_checkpoint(args.out, "stoic", ema)
    with open(args.assets / "stoic-digits-loss.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss", "ema_loss"])
        writer.writerows((s, f"{lo:.6f}", f"{e:.6f}") for s, lo, e in rows)
    plot_loss(rows, args.assets / "stoic-digits-loss.png")

    results = evaluate(ema, args)
    size_mb = args.out.stat().st_size / 1e6
    summary = {"params": n_params, "file_mb": round(size_mb, 2), "train_wall_s": round(wall),
               "final_loss": round(rows[-1][1], 5), "final_ema_loss": round(rows[-1][2], 5),
               "accuracy_by_guidance": results}
    print("summary " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
