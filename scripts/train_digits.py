"""Train the embedded default model: a class-conditional STOIC on scikit-learn's digits.

The defaults reproduce checkpoints/stoic-digits.safetensors (see docs/training.md):

    .venv/bin/python scripts/train_digits.py

Data: load_digits (1797 8x8 images, 0..16) scaled to [-1, 1] and upsampled to 16x16 (bilinear).
Training: epsilon-prediction MSE on the continuous VP schedule of mobilegen.sampling,
t ~ U(1e-3, 1),
10% label dropout to the null label (for classifier-free guidance), AdamW with warmup + cosine,
EMA of the weights (the EMA weights are what ships). At the end: a 10x10 sample grid (one row per
class) with the numpy sampler and a digit classifier's accuracy on the samples.
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.svm import SVC

from mobilegen.checkpoints import save_checkpoint
from mobilegen.models.stoic import Stoic, StoicConfig
from mobilegen.sampling import SamplerConfig, VPSchedule, images_to_uint8, make_grid, sample

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--p-uncond", type=float, default=0.1, help="label dropout to the null label")
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--heads", type=int, default=4)
    # No positional embedding in STOIC: the zero-padded stem convolutions are what tells a token
    # where it is, so the stem must see far enough to reach the middle of the 8x8 token grid.
    p.add_argument("--stem-convs", type=int, default=3)
    p.add_argument("--time-injection", choices=["add", "adaln"], default="adaln")
    p.add_argument("--time-freq-dim", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--out", type=Path, default=ROOT / "checkpoints" / "stoic-digits.safetensors")
    p.add_argument("--assets", type=Path, default=ROOT / "docs" / "assets")
    return p.parse_args()


def digits_16x16() -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, 16, 16) float32 in [-1, 1] and (N,) int64 labels 0..9."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0  # 0..16 -> [-1, 1]
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    return x, torch.tensor(d.target, dtype=torch.int64)


def digit_classifier() -> SVC:
    """An SVC on the real 8x8 digits (0..16); ~99% on held-out real digits."""
    d = load_digits()
    return SVC(gamma=0.001, C=10.0).fit(d.data, d.target)


def to_8x8_features(images: np.ndarray) -> np.ndarray:
    """Generated (N, 1, 16, 16) in [-1, 1] -> (N, 64) on the digits' 0..16 scale."""
    x = F.avg_pool2d(torch.from_numpy(np.asarray(images, dtype=np.float32)), 2)
    return ((x.clamp(-1, 1) + 1.0) * 8.0).reshape(len(x), 64).numpy()


def lr_at(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * 0.5 * (1.0 + math.cos(math.pi * frac))


def train(args: argparse.Namespace, x0_all: torch.Tensor, y_all: torch.Tensor) -> tuple:
    cfg = StoicConfig(
        in_channels=1, image_size=16, stride=2, depth=args.depth, width=args.width,
        heads=args.heads, stem_convs=args.stem_convs, conditioning="class", num_classes=10,
        time_injection=args.time_injection, time_freq_dim=args.time_freq_dim, decoder="slicing",
    )
    torch.manual_seed(args.seed)
    model = Stoic(cfg).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    schedule = VPSchedule()
    gen = torch.Generator().manual_seed(args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"STOIC {cfg.width}x{cfg.depth} {cfg.time_injection}: {n_params:,} params", flush=True)

    rows, window, ema_loss, start = [], [], None, time.time()
    for step in range(args.steps):
        idx = torch.randint(0, len(x0_all), (args.batch_size,), generator=gen)
        x0, y = x0_all[idx], y_all[idx]
        drop = torch.rand(args.batch_size, generator=gen) < args.p_uncond
        y = torch.where(drop, torch.full_like(y, cfg.num_classes), y)  # null label for CFG
        t = torch.rand(args.batch_size, generator=gen, dtype=torch.float64) * (1 - 1e-3) + 1e-3
        alpha = torch.from_numpy(schedule.alpha(t.numpy())).float().view(-1, 1, 1, 1)
        sigma = torch.from_numpy(schedule.sigma(t.numpy())).float().view(-1, 1, 1, 1)
        noise = torch.randn(x0.shape, generator=gen)
        x_t = alpha * x0 + sigma * noise
        t_model = torch.from_numpy(schedule.model_time(t.numpy())).float()
        loss = F.mse_loss(model(x_t, t_model, y), noise)

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

        value = loss.item()
        window.append(value)
        ema_loss = value if ema_loss is None else 0.98 * ema_loss + 0.02 * value
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            rows.append((step + 1, sum(window) / len(window), ema_loss))
            window = []
            elapsed = time.time() - start
            print(f"step {step + 1:5d}  loss {rows[-1][1]:.4f}  ema {ema_loss:.4f}  "
                  f"lr {lr_at(step, args):.2e}  {elapsed:6.0f}s", flush=True)
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


@torch.no_grad()
def evaluate(model: Stoic, args: argparse.Namespace) -> tuple[np.ndarray, float]:
    """10x10 grid (row k = class k) with the numpy sampler; classifier accuracy on it."""
    def denoise(x: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
        out = model(torch.from_numpy(x).float(), torch.from_numpy(t).float(),
                    torch.from_numpy(cond).long())
        return out.numpy()

    labels = np.repeat(np.arange(10, dtype=np.int64), 10)  # rows of the grid
    config = SamplerConfig(kind="dpm++2m", steps=args.sample_steps,
                           guidance_scale=args.guidance, seed=args.seed)
    images = sample(denoise, (100, 1, 16, 16), config, VPSchedule(), cond=labels,
                    null_cond=np.full(100, 10, dtype=np.int64))
    acc = float((digit_classifier().predict(to_8x8_features(images)) == labels).mean())
    return images, acc


def main() -> None:
    args = parse_args()
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

    from PIL import Image

    images, acc = evaluate(ema, args)
    grid = make_grid(images_to_uint8(images), 10)
    grid_img = Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid)
    grid_img.resize((grid_img.width * 4, grid_img.height * 4), Image.NEAREST).save(
        args.assets / "stoic-digits-samples.png")
    size_mb = args.out.stat().st_size / 1e6
    print(f"params {n_params:,}  file {size_mb:.2f} MB  train wall {wall:.0f}s  "
          f"final loss {rows[-1][1]:.4f} (ema {rows[-1][2]:.4f})  "
          f"classifier accuracy on samples {acc:.1%}", flush=True)


if __name__ == "__main__":
    main()
