"""VAE decoder: parity with diffusers' AutoencoderKL decoder, diffusers folders, clear loader
errors, `mobilegen inspect`, pruning (counts, round trip) and decoder distillation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mobilegen.checkpoints.diffusers import load_diffusers_model, vae_decoder_part
from mobilegen.checkpoints.loader import build_random, load_checkpoint, save_checkpoint
from mobilegen.cli.main import app
from mobilegen.errors import CheckpointError
from mobilegen.models.vae_decoder import VAEDecoder, VAEDecoderConfig
from mobilegen.passes.prune import decoder_costs, prune_decoder, pruned_config

diffusers = pytest.importorskip("diffusers")

CONFIGS = {
    "two-blocks": dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8),
    "three-blocks-uneven": dict(block_out_channels=(8, 16, 32), layers_per_block=2,
                                norm_num_groups=4, latent_channels=3),
    "sdxl-style-no-quant-conv": dict(block_out_channels=(16, 16), layers_per_block=1,
                                     norm_num_groups=8, use_post_quant_conv=False,
                                     scaling_factor=0.13025),
}
TINY = {"block_out_channels": [16, 32, 32], "layers_per_block": 1, "norm_num_groups": 8,
        "latent_size": 8}


def _autoencoder(kwargs: dict) -> torch.nn.Module:
    n = len(kwargs["block_out_channels"])
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * n,
                                  up_block_types=("UpDecoderBlock2D",) * n, **kwargs).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return ref


def _latent(ref: torch.nn.Module) -> torch.Tensor:
    return torch.randn(2, ref.config.latent_channels, 6, 6, generator=torch.Generator()
                       .manual_seed(1))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parity_with_diffusers(name: str) -> None:
    ref = _autoencoder(CONFIGS[name])
    sd = vae_decoder_part(ref.state_dict())
    cfg = VAEDecoderConfig.from_state_dict(sd, norm_num_groups=ref.config.norm_num_groups)
    ours = VAEDecoder(cfg).eval()
    ours.load_state_dict(sd, strict=True)
    z = _latent(ref)
    with torch.no_grad():
        expected = ref.decode(z).sample
        found = ours(z)
    assert expected.abs().mean() > 1e-2
    assert (found - expected).abs().max().item() <= 1e-4


def test_vae_folder_and_pipeline_root(tmp_path: Path) -> None:
    ref = _autoencoder(CONFIGS["sdxl-style-no-quant-conv"])
    ref.save_pretrained(tmp_path / "pipe" / "vae")
    z = _latent(ref)
    with torch.no_grad():
        expected = ref.decode(z).sample
    for path, component in ((tmp_path / "pipe" / "vae", None), (tmp_path / "pipe", "vae")):
        family, cfg, model = load_diffusers_model(path, component)
        assert family == "vae-decoder" and cfg.latent_scaling_factor == pytest.approx(0.13025)
        with torch.no_grad():
            assert (model(z) - expected).abs().max().item() <= 1e-4


def test_sd_decoder_parameter_count() -> None:
    with torch.device("meta"):
        model = VAEDecoder(VAEDecoderConfig.uniform())
    assert sum(p.numel() for p in model.parameters()) == 49_490_199


def test_loader_errors_are_one_line_and_name_the_problem(tmp_path: Path) -> None:
    ref = _autoencoder(CONFIGS["two-blocks"])
    ref.save_pretrained(tmp_path / "vae")
    # an unsupported class
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"_class_name": "VQModel"}))
    with pytest.raises(CheckpointError, match="_class_name 'VQModel' is not supported"):
        load_checkpoint(bad)
    # a missing weight file
    (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").rename(tmp_path / "moved")
    with pytest.raises(CheckpointError, match=r"no weight file .*diffusion_pytorch_model"):
        load_checkpoint(tmp_path / "vae")
    # tensors that fit no supported layout: the first offending keys are named
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    sd["decoder.mid_block.attentions.0.to_k.weight"] = torch.zeros(8, 32)
    sd["decoder.extra.weight"] = torch.zeros(1)
    save_file(sd, str(tmp_path / "vae" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "vae")
    msg = str(err.value)
    assert "\n" not in msg and "decoder.extra.weight" in msg
    assert "attentions.0.to_k.weight expected (32, 32) found (8, 32)" in msg


def test_inspect_diffusers_folders(tmp_path: Path) -> None:
    _autoencoder(CONFIGS["two-blocks"]).save_pretrained(tmp_path / "pipe" / "vae")
    torch.manual_seed(0)
    diffusers.UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
        norm_num_groups=8, sample_size=8).save_pretrained(tmp_path / "pipe" / "unet")
    runner = CliRunner()
    res = runner.invoke(app, ["inspect", str(tmp_path / "pipe"), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["family"] == "unet" and info["gmac"] > 0
    res = runner.invoke(app, ["inspect", str(tmp_path / "pipe"), "--component", "vae",
                              "--image-size", "4", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["family"] == "vae-decoder" and info["image_size"] == 4
    res = runner.invoke(app, ["inspect", str(tmp_path)])
    assert res.exit_code == 1 and "no config.json" in res.output


def test_prune_sd_decoder_counts() -> None:
    cfg = VAEDecoderConfig.uniform()
    with torch.device("meta"):
        full = decoder_costs(VAEDecoder(cfg))
        half = decoder_costs(VAEDecoder(pruned_config(cfg, 0.5)))
    assert full["params"] == 49_490_199
    assert 12.2e6 < half["params"] < 12.6e6  # SnapFusion: ~12.4M
    assert 0.24 < half["macs"] / full["macs"] < 0.26  # ~1/4 the MACs


def test_prune_keeps_groups_and_is_identity_at_zero() -> None:
    model = build_random("vae-decoder", VAEDecoderConfig.from_dict(TINY)).model
    z = model.example_inputs(1)
    with torch.no_grad():
        assert torch.equal(prune_decoder(model, 0.0)(*z), model(*z))
    pruned = prune_decoder(model, 0.5)
    assert pruned.decoder.mid_block.resnets[0].norm1.num_groups == 8  # groups kept, 2 -> 1 each
    assert pruned.decoder.conv_in.out_channels == 16


def test_prune_cli_round_trip(tmp_path: Path) -> None:
    src = save_checkpoint(tmp_path / "dec.safetensors", "vae-decoder",
                          build_random("vae-decoder", VAEDecoderConfig.from_dict(TINY)).model)
    out = tmp_path / "pruned.safetensors"
    runner = CliRunner()
    res = runner.invoke(app, ["prune", str(src), "--ratio", "0.5", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["after"]["params"] < 0.3 * info["before"]["params"]
    assert info["image_shape"] == [1, 3, 32, 32]
    reloaded = load_checkpoint(out)  # widths from the file, no hand-written config
    assert reloaded.family == "vae-decoder" and reloaded.config.mid_resnets[0].in_channels == 16
    res = runner.invoke(app, ["prune", str(src), "--out", str(src)])
    assert res.exit_code == 1 and "refusing to write over" in res.output


def test_distill_decoder_raises_psnr(tmp_path: Path) -> None:
    cfg = VAEDecoderConfig.from_dict({**TINY, "latent_size": 4})
    teacher = save_checkpoint(tmp_path / "t.safetensors", "vae-decoder",
                              build_random("vae-decoder", cfg).model)
    runner = CliRunner()
    student = tmp_path / "s.safetensors"
    assert runner.invoke(app, ["prune", str(teacher), "--out", str(student)]).exit_code == 0
    res = runner.invoke(app, ["distill-decoder", str(teacher), str(student), "--out",
                              str(tmp_path / "r.safetensors"), "--steps", "60", "--lr", "3e-3",
                              "--batch", "4", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["psnr_db_after"] > info["psnr_db_before"] + 1.0
    assert (tmp_path / "r.safetensors").is_file()
