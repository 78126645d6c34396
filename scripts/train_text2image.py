"""Train the shipped tiny text-to-image pipeline on coloured digits (mobilegen.text_digits).

Writes a diffusers pipeline folder (model_index.json, text_encoder/, tokenizer/, unet/, vae/,
scheduler/) plus mobilegen's text-conditional STOIC (stoic/denoiser.safetensors, config in its
metadata) that reads the same text encoder. Nothing is downloaded. Stages, each seeded:

1. vae: AutoencoderKL 32x32x3 <-> 4x8x8 (reconstruction MSE + L1, KL weight 1e-6); its
   scaling_factor is set to 1 / std of the training latents, as SD's 0.18215 was.
2. clip: the CLIP text encoder pretrained contrastively against a small image tower on the same
   (image, caption) pairs, as SD's CLIP was on the web's; the image tower is discarded.
3. t2i: the UNet trained from scratch on the latents, reading the frozen text encoder (epsilon
   prediction on SD's scaled-linear schedule, min-SNR-5 weighting, 10% empty captions for
   classifier-free guidance). Its EMA 0.999 ships.
4. stoic: the text-conditional STOIC alone, the same way, with the paper's context embedding
   beside cross-attention. Its EMA 0.999 ships.
5. decoder: the VAE decoder pruned by half and distilled back (SnapFusion's decoder recipe).

The defaults are the shipped run: `python scripts/train_text2image.py --out DIR`.
docs/training.md says what differs from SD's recipe and why.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mobilegen import text_digits as td

SCHEDULER = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.42.1",
             "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
             "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
             "steps_offset": 1, "trained_betas": None, "clip_sample": False,
             "prediction_type": "epsilon"}
TEXT_DIM = 64
WORDS = sorted({"a", "on", "background", *td.DIGIT_WORDS, *td.COLOURS, *td.BACKGROUNDS})


# ------------------------------------------------------------------------------ tokenizer
def write_tokenizer(folder: Path) -> dict[str, int]:
    """A CLIP byte-level BPE: every byte alone and as a word end, one merge chain per caption
    word (so each becomes one token), the two specials; vocab.json, merges.txt, tokenizer.json."""
    import transformers

    from mobilegen.sampling.word_bpe import word_bpe

    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = word_bpe(WORDS)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                     model_max_length=77)
    tok.save_pretrained(folder)  # tokenizer_config.json, special_tokens_map.json, tokenizer.json
    return vocab


def tokenize(tok, texts: list[str]) -> torch.Tensor:
    return tok(texts, padding="max_length", max_length=77, truncation=True,
               return_tensors="pt").input_ids


# ------------------------------------------------------------------------------ helpers
class Schedule:
    """A learning rate: warm-up, constant, then a linear cool-down over the last `cooldown`
    steps; `--time-budget` may start the cool-down early (at 80% of the budget)."""

    def __init__(self, lr: float, steps: int, warmup: int, cooldown: int, budget: float | None):
        self.lr, self.steps, self.warmup, self.cooldown, self.budget = (
            lr, steps, warmup, cooldown, budget)
        self.start = time.time()
        self.cool_from = steps - cooldown
        self.end = steps

    def __call__(self, step: int) -> float:
        if self.budget and self.cool_from == self.steps - self.cooldown and \
                time.time() - self.start > 0.8 * self.budget and step < self.cool_from:
            self.cool_from = step
            self.end = step + max(self.cooldown // 4, 1)
            print(f"  time budget: cooling down from step {step} to {self.end}", flush=True)
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if step < self.cool_from:
            return self.lr
        return self.lr * max(self.end - step, 0) / max(self.end - self.cool_from, 1)


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p, 1.0 - decay)


def pool(n: int, seed: int) -> tuple[torch.Tensor, list[td.Caption]]:
    images, caps = td.dataset_batch(np.random.default_rng(seed), n)
    return torch.from_numpy(images), caps


# ------------------------------------------------------------------------------ stage 1: VAE
def make_vae():
    import diffusers

    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, norm_num_groups=16, sample_size=32)


def train_vae(args, out: Path) -> None:
    torch.manual_seed(args.seed)
    vae = make_vae().train()
    print(f"vae: {sum(p.numel() for p in vae.parameters()):,} params", flush=True)
    images, _ = pool(args.pool, args.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    sched = Schedule(args.vae_lr, args.vae_steps, 100, args.vae_cooldown, args.vae_budget)
    g = torch.Generator().manual_seed(args.seed)
    t0, step = time.time(), 0
    while step < sched.end:
        for group in opt.param_groups:
            group["lr"] = sched(step)
        x = images[torch.randint(0, len(images), (args.vae_batch,), generator=g)]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=g)).sample
        kl = post.kl().mean() / x[0].numel()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-6 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 100 == 0:
            psnr = 10 * math.log10(4.0 / max(F.mse_loss(rec, x).item(), 1e-12))
            print(f"  vae step {step:5d} loss {loss.item():.4f} psnr {psnr:.1f} dB "
                  f"({time.time() - t0:.0f} s)", flush=True)
        step += 1
    vae.eval()
    with torch.no_grad():
        lat = torch.cat([vae.encode(images[i:i + 256]).latent_dist.sample(generator=g)
                         for i in range(0, min(4096, len(images)), 256)])
        rec = torch.cat([vae.decode(vae.encode(images[i:i + 256]).latent_dist.mean).sample
                         for i in range(0, min(1024, len(images)), 256)])
    vae.register_to_config(scaling_factor=float(1.0 / lat.std()))
    psnr = 10 * math.log10(4.0 / F.mse_loss(rec.clamp(-1, 1), images[:len(rec)]).item())
    print(f"vae: scaling_factor {vae.config.scaling_factor:.5f}, reconstruction PSNR "
          f"{psnr:.2f} dB on 1,024 pool images, {step} steps, {time.time() - t0:.0f} s")
    vae.save_pretrained(out / "vae")
    (out / "vae" / "train_log.json").write_text(json.dumps(
        {"steps": step, "seconds": round(time.time() - t0, 1), "recon_psnr_db": round(psnr, 2),
         "scaling_factor": vae.config.scaling_factor}))


# ------------------------------------------------------------------------------ models
def make_text_encoder(vocab: dict[str, int]):
    import transformers

    cfg = transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=TEXT_DIM, intermediate_size=2 * TEXT_DIM,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
        hidden_act="quick_gelu", bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])
    return transformers.CLIPTextModel(cfg)


def make_unet():
    import diffusers

    # SnapFusion's spirit: no cross-attention at the highest resolution (8x8); text enters at 4x4
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
        cross_attention_dim=TEXT_DIM, attention_head_dim=4, norm_num_groups=16)


def make_stoic(context_pool: bool):
    from mobilegen.models.stoic import Stoic, StoicConfig

    cfg = StoicConfig(in_channels=4, image_size=8, stride=1, stem_kernel=3, stem_convs=2,
                      depth=4, width=96, heads=4, time_injection="adaln", time_freq_dim=96,
                      conditioning="context", context_dim=TEXT_DIM, context_len=77,
                      context_pool=context_pool, decoder="linear", activation="gelu")
    return Stoic(cfg)


# ------------------------------------------------------------------------------ stage 2: CLIP
class ImageTower(torch.nn.Module):
    """CLIP's image side at digit scale: four strided convs, pooled, projected to the text
    encoder's embedding width. Only the contrastive stage uses it."""

    def __init__(self, dim: int):
        super().__init__()
        layers, c_in = [], 3
        for c_out in (32, 64, 96, 128):
            layers += [torch.nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
                       torch.nn.GroupNorm(8, c_out), torch.nn.SiLU()]
            c_in = c_out
        self.body = torch.nn.Sequential(*layers)
        self.proj = torch.nn.Linear(c_in * 4, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.body(x).flatten(1))


def train_clip(args, out: Path) -> None:
    """Symmetric InfoNCE between pooled text states and image embeddings. Only 100 captions
    exist, so a batch repeats them: every pair with the same caption is a positive (the target
    rows are spread over them), never a false negative."""
    import transformers

    torch.manual_seed(args.seed + 6)
    vocab = write_tokenizer(out / "tokenizer")
    tok = transformers.CLIPTokenizer.from_pretrained(out / "tokenizer")
    te, tower = make_text_encoder(vocab).train(), ImageTower(TEXT_DIM).train()
    text_proj = torch.nn.Linear(TEXT_DIM, TEXT_DIM, bias=False)
    print(f"text encoder: {sum(p.numel() for p in te.parameters()):,} params", flush=True)
    images, caps = pool(args.pool, args.seed + 7)
    ids_all = tokenize(tok, [c.text for c in caps])
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))
    params = [*te.parameters(), *tower.parameters(), *text_proj.parameters(), logit_scale]
    opt = torch.optim.AdamW(params, lr=args.clip_lr, weight_decay=0.01)
    sched = Schedule(args.clip_lr, args.clip_steps, 100, args.clip_steps // 5, None)
    g = torch.Generator().manual_seed(args.seed + 8)
    t0 = time.time()
    for step in range(args.clip_steps):
        for group in opt.param_groups:
            group["lr"] = sched(step)
        idx = torch.randint(0, len(images), (args.clip_batch,), generator=g)
        ids = ids_all[idx]
        uniq, inverse = torch.unique(ids, dim=0, return_inverse=True)
        text = F.normalize(text_proj(te(uniq).pooler_output), dim=-1)[inverse]
        img = F.normalize(tower(images[idx]), dim=-1)
        logits = logit_scale.exp().clamp(max=100.0) * img @ text.T
        same = (inverse[:, None] == inverse[None, :]).float()
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 100 == 0:
            print(f"  clip step {step:5d} loss {loss.item():.4f} ({time.time() - t0:.0f} s)",
                  flush=True)
    te.eval()
    acc = clip_retrieval(te, tower.eval(), text_proj, tok, args.seed + 9)
    print(f"clip: held-out caption retrieval {acc:.1%} (of 100 captions), "
          f"{time.time() - t0:.0f} s", flush=True)
    te.save_pretrained(out / "text_encoder")
    (out / "text_encoder" / "train_log.json").write_text(json.dumps(
        {"steps": args.clip_steps, "seconds": round(time.time() - t0, 1),
         "heldout_caption_retrieval": round(acc, 4)}))


def clip_retrieval(te, tower, text_proj, tok, seed: int, n: int = 1000) -> float:
    """Held-out images: the fraction whose nearest of all 100 captions is their own."""
    captions = [td.Caption(d, c, b) for d in range(10) for c in td.COLOURS
                for b in td.BACKGROUNDS]
    images, caps = pool(n, seed)
    with torch.no_grad():
        text = F.normalize(text_proj(te(tokenize(tok, [c.text for c in captions]))
                                     .pooler_output), dim=-1)
        img = F.normalize(tower(images), dim=-1)
        best = (img @ text.T).argmax(1)
    return float(np.mean([captions[int(b)] == c for b, c in zip(best, caps, strict=True)]))


# ------------------------------------------------------------------------------ stage 3: t2i
class LatentData:
    """What the denoiser stages read: the frozen VAE's latent moments of the pool, the frozen
    text encoder's states of every caption (computed once; last row: the empty prompt), and SD's
    scaled-linear schedule with min-SNR-5 weights (epsilon prediction)."""

    def __init__(self, args, out: Path, seed: int):
        import diffusers
        import transformers

        tok = transformers.CLIPTokenizer.from_pretrained(out / "tokenizer")
        te = transformers.CLIPTextModel.from_pretrained(out / "text_encoder").eval()
        vae = diffusers.AutoencoderKL.from_pretrained(out / "vae").eval()
        images, caps = pool(args.pool, seed)
        captions = sorted({c.text for c in caps})
        with torch.no_grad():
            self.moments = torch.cat([vae.encode(images[i:i + 512]).latent_dist.parameters
                                      for i in range(0, len(images), 512)])
            self.table = te(tokenize(tok, [*captions, ""])).last_hidden_state
        self.cap_idx = torch.tensor([captions.index(c.text) for c in caps])
        self.empty = len(captions)
        self.scale = float(vae.config.scaling_factor)
        betas = torch.linspace(SCHEDULER["beta_start"] ** 0.5, SCHEDULER["beta_end"] ** 0.5,
                               1000, dtype=torch.float64) ** 2
        self.abar = torch.cumprod(1.0 - betas, 0).float()
        snr = self.abar / (1.0 - self.abar)
        self.weight = torch.clamp(snr, max=5.0) / snr

    def batch(self, n: int, g: torch.Generator):
        """(z_t, t, states, noise, weight) of n random pool images; 10% empty prompts."""
        idx = torch.randint(0, len(self.moments), (n,), generator=g)
        mean, logvar = self.moments[idx].chunk(2, dim=1)
        z = (mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=g)) * self.scale
        rows = self.cap_idx[idx].clone()
        rows[torch.rand(n, generator=g) < 0.1] = self.empty  # classifier-free guidance
        t = torch.randint(0, 1000, (n,), generator=g)
        noise = torch.randn(z.shape, generator=g)
        a = self.abar[t].view(-1, 1, 1, 1)
        return a.sqrt() * z + (1 - a).sqrt() * noise, t, self.table[rows], noise, self.weight[t]


def train_t2i(args, out: Path) -> None:
    """The UNet. The shipped run trained it beside a cross-attention-only STOIC (one optimiser,
    one gradient clip over both), so that STOIC is still built and trained here to reproduce the
    UNet; it is not saved. The shipped STOIC comes from stage `stoic`."""
    torch.manual_seed(args.seed + 1)
    data = LatentData(args, out, args.seed + 2)  # before the models, as in the shipped run
    unet, stoic = make_unet(), make_stoic(context_pool=False)
    print(f"unet: {sum(p.numel() for p in unet.parameters()):,} params", flush=True)
    models = torch.nn.ModuleList([unet, stoic]).train()
    ema = copy.deepcopy(models).eval().requires_grad_(False)
    opt = torch.optim.AdamW(models.parameters(), lr=args.lr, betas=(0.9, 0.99),
                            weight_decay=0.0)
    sched = Schedule(args.lr, args.steps, 200, args.steps // 5, args.budget)
    g = torch.Generator().manual_seed(args.seed + 3)
    t0, step = time.time(), 0
    while step < sched.end:
        for group in opt.param_groups:
            group["lr"] = sched(step)
        zt, t, states, noise, w = data.batch(args.batch, g)
        l_unet = ((unet(zt, t, states).sample - noise) ** 2).mean((1, 2, 3))
        l_stoic = ((stoic(zt, t.float(), states) - noise) ** 2).mean((1, 2, 3))
        loss = (w * (l_unet + l_stoic)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(models.parameters(), 1.0)
        opt.step()
        ema_update(ema, models, 0.999 if step > 500 else 0.0)
        if step % 100 == 0:
            print(f"  t2i step {step:5d} unet {l_unet.mean().item():.4f} lr {sched(step):.2e} "
                  f"({time.time() - t0:.0f} s)", flush=True)
        if args.save_every and step and step % args.save_every == 0:
            save_t2i(ema[0], out, step, time.time() - t0)
        if step == args.stop_at:  # the shipped run: see --stop-at
            break
        step += 1
    save_t2i(ema[0], out, step, time.time() - t0)


def train_stoic(args, out: Path) -> None:
    """The text-conditional STOIC, alone, on the same latents and frozen text states, with the
    context embedding (StoicConfig.context_pool) beside cross-attention."""
    from mobilegen.checkpoints.loader import save_checkpoint

    torch.manual_seed(args.seed + 10)
    data = LatentData(args, out, args.seed + 2)
    stoic = make_stoic(context_pool=True).train()
    print(f"stoic: {sum(p.numel() for p in stoic.parameters()):,} params", flush=True)
    ema = copy.deepcopy(stoic).eval().requires_grad_(False)
    opt = torch.optim.AdamW(stoic.parameters(), lr=args.stoic_lr, betas=(0.9, 0.99),
                            weight_decay=0.0)
    sched = Schedule(args.stoic_lr, args.stoic_steps, 200, args.stoic_steps // 5, None)
    g = torch.Generator().manual_seed(args.seed + 11)
    t0 = time.time()
    for step in range(args.stoic_steps):
        for group in opt.param_groups:
            group["lr"] = sched(step)
        zt, t, states, noise, w = data.batch(args.stoic_batch, g)
        loss_each = ((stoic(zt, t.float(), states) - noise) ** 2).mean((1, 2, 3))
        loss = (w * loss_each).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(stoic.parameters(), 1.0)
        opt.step()
        ema_update(ema, stoic, 0.999 if step > 500 else 0.0)
        if step % 100 == 0:
            print(f"  stoic step {step:5d} loss {loss_each.mean().item():.4f} "
                  f"lr {sched(step):.2e} ({time.time() - t0:.0f} s)", flush=True)
        if args.save_every and step and step % args.save_every == 0:
            save_checkpoint(out / "stoic" / f"step{step}.safetensors", "stoic", ema)
    (out / "stoic").mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "stoic" / "denoiser.safetensors", "stoic", ema)
    (out / "stoic" / "train_log.json").write_text(json.dumps(
        {"steps": args.stoic_steps, "seconds": round(time.time() - t0, 1)}))
    print(f"  saved the STOIC's EMA weights after {args.stoic_steps} steps", flush=True)


def save_t2i(unet: torch.nn.Module, out: Path, step: int, seconds: float) -> None:
    unet.save_pretrained(out / "unet")
    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2))
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "PNDMScheduler"], "safety_checker": [None, None],
        "feature_extractor": [None, None], "requires_safety_checker": False}, indent=2))
    (out / "train_log.json").write_text(json.dumps({"t2i_steps": step,
                                                    "t2i_seconds": round(seconds, 1)}))
    print(f"  saved the EMA weights at step {step}", flush=True)


# ------------------------------------------------------------------------------ stage 5: decoder
def prune_and_distill(args, out: Path) -> None:
    """SnapFusion's decoder recipe on the trained VAE: `mobilegen prune --ratio 0.5`, then
    `mobilegen distill-decoder` on real latents (the VAE encoder's samples of pool images, as
    the decoder reads them), into vae_pruned/decoder.safetensors."""
    import subprocess
    import sys
    import tempfile

    import diffusers
    from safetensors.torch import save_file

    vae = diffusers.AutoencoderKL.from_pretrained(out / "vae").eval()
    images, _ = pool(args.distill_latents, args.seed + 4)
    g = torch.Generator().manual_seed(args.seed + 5)
    with torch.no_grad():
        lat = torch.cat([vae.encode(images[i:i + 512]).latent_dist.sample(generator=g)
                         for i in range(0, len(images), 512)])
    (out / "vae_pruned").mkdir(exist_ok=True)
    cli = [str(Path(sys.executable).parent / "mobilegen")]
    with tempfile.TemporaryDirectory() as tmp:
        save_file({"latents": lat.contiguous()}, f"{tmp}/latents.safetensors")
        subprocess.run([*cli, "prune", str(out / "vae"), "--ratio", "0.5", "--out",
                        f"{tmp}/pruned.safetensors", "--force"], check=True)
        subprocess.run([*cli, "distill-decoder", str(out / "vae"), f"{tmp}/pruned.safetensors",
                        "--out", str(out / "vae_pruned" / "decoder.safetensors"), "--force",
                        "--steps", str(args.distill_steps), "--lr", "1e-3", "--batch", "32",
                        "--latents", f"{tmp}/latents.safetensors", "--json"], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stage", default="all",
                    choices=["all", "vae", "clip", "t2i", "stoic", "decoder"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool", type=int, default=30000, help="rendered training images")
    # the shipped VAE's schedule: its run had a 720 s budget that started a 100-step cool-down at
    # step 1,337; these two defaults give that same schedule without a clock
    ap.add_argument("--vae-steps", type=int, default=1437)
    ap.add_argument("--vae-cooldown", type=int, default=100)
    ap.add_argument("--vae-batch", type=int, default=32)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--vae-budget", type=float, default=None, help="seconds (cools down early)")
    ap.add_argument("--clip-steps", type=int, default=1500)
    ap.add_argument("--clip-batch", type=int, default=256)
    ap.add_argument("--clip-lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--budget", type=float, default=None, help="seconds (cools down early)")
    ap.add_argument("--save-every", type=int, default=1000)
    # the shipped UNet and STOIC are the EMA at step 4,000 of the 8,000-step schedule (96% of
    # 100 prompts right on all three): the run was stopped there, before the cool-down, to free
    # the shared host; stopping changes nothing before it, so this default reproduces it
    ap.add_argument("--stop-at", type=int, default=4000, help="stop after this step's save "
                    "(0: run the whole schedule)")
    ap.add_argument("--stoic-steps", type=int, default=6000)
    ap.add_argument("--stoic-batch", type=int, default=64)
    ap.add_argument("--stoic-lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--distill-steps", type=int, default=800)
    ap.add_argument("--distill-latents", type=int, default=4096)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage in ("all", "vae"):
        train_vae(args, args.out)
    if args.stage in ("all", "clip"):
        train_clip(args, args.out)
    if args.stage in ("all", "t2i"):
        train_t2i(args, args.out)
    if args.stage in ("all", "stoic"):
        train_stoic(args, args.out)
    if args.stage in ("all", "decoder"):
        prune_and_distill(args, args.out)


if __name__ == "__main__":
    main()
