"""Module passes (gelu_to_silu, relu_attention) with recovery, recipe pass tables, and a pipeline
run with passes writing PassReports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_config, write_recipe, write_tiny_checkpoint

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from mobilegen.checkpoints.loader import build_random  # noqa: E402
from mobilegen.errors import RecipeError  # noqa: E402
from mobilegen.models.attention import AttentionKernel  # noqa: E402
from mobilegen.passes import PASSES, gelu_to_silu, relu_attention  # noqa: E402
from mobilegen.passes.base import RewriteContext  # noqa: E402
from mobilegen.passes.calibration import noised_batches  # noqa: E402
from mobilegen.recipe import load_recipe  # noqa: E402

TIMESTEPS = [999.0, 500.0, 1.0]


def _ctx(model, recovery=None) -> RewriteContext:
    return RewriteContext(TIMESTEPS, lambda t: model.example_inputs(2, seed=1, t=t), recovery)


def _tiny_unet():
    from mobilegen.models.unet import EfficientUNet, UNetConfig

    torch.manual_seed(0)
    cfg = UNetConfig(block_out_channels=(8, 16), down_resnets=(1, 1), down_attentions=(1, 0),
                     mid_resnets=1, mid_attentions=1, up_resnets=(1, 1), up_attentions=(0, 1),
                     cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4,
                     sample_size=8, context_len=4)
    return EfficientUNet(cfg).eval()


def _count(model, kind) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


# ---------------------------------------------------------------- recipe syntax


def _recipe_with(tmp_path: Path, passes: str) -> Path:
    ckpt = write_tiny_checkpoint(tmp_path / "t.safetensors")
    path = write_recipe(tmp_path / "r.toml", ckpt)
    path.write_text(f"passes = {passes}\n" + path.read_text())
    return path


def test_passes_accept_names_and_tables(tmp_path):
    r = load_recipe(_recipe_with(tmp_path, '["gelu_to_silu", {name = "relu_attention", '
                                           'recover_steps = 200}, {name = "int8", '
                                           'mode = "static"}, "fp16"]'))
    assert [p.name for p in r.passes] == ["gelu_to_silu", "relu_attention", "int8", "fp16"]
    configs = [p.config() for p in r.passes]
    assert configs[1].recover_steps == 200 and configs[1].scale == 1.0
    assert configs[2].mode == "static" and configs[0].recover_steps == 0
    assert set(PASSES) == {"gelu_to_silu", "relu_attention", "fp16", "int8", "palettize"}
    assert load_recipe(_recipe_with(tmp_path, "[]")).passes == []


@pytest.mark.parametrize("passes, message", [
    ('[{name = "int8", mod = "static"}]', "key 'passes[0]' (int8): unknown option 'mod'"),
    ('["fp16", {name = "int8", mode = "w4"}]', "key 'passes[1]' (int8): option 'mode'"),
    ('[{name = "relu_attention", recover_steps = -1}]', "option 'recover_steps'"),
    ('[{name = "relu_attentoin"}]', "unknown pass 'relu_attentoin'"),
    ('["fp16", {name = "fp16", min_psnr_db = 20}]', "key 'passes': fp16 is listed twice"),
])
def test_bad_pass_tables_name_file_and_key(tmp_path, passes, message):
    path = _recipe_with(tmp_path, passes)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert message in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- gelu_to_silu


@pytest.mark.parametrize("activation, kind", [("gelu", "gelu"), ("gelu_tanh", "gelu_tanh")])
def test_gelu_to_silu_replaces_only_the_activations(activation, kind):
    model = build_random("stoic", tiny_config(activation=activation), seed=0).model
    silu_before = _count(model, nn.SiLU)
    new, report = gelu_to_silu.run(model, gelu_to_silu.Options(), _ctx(model))
    assert report.changed[kind] == model.config.depth and sum(report.changed.values()) == 2
    assert _count(new, nn.GELU) == 0 and _count(new, nn.SiLU) == silu_before + 2
    assert _count(model, nn.GELU) == 2  # the model before the pass is left as it was
    assert new.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(new.state_dict()[k], v) for k, v in model.state_dict().items())
    assert report.param_bytes_before == report.param_bytes_after
    worst = report.deviation["worst"]
    assert len(report.deviation["per_timestep"]) == 3
    assert worst["max_abs_error"] > 0 and np.isfinite(worst["psnr_db"])


def test_gelu_to_silu_leaves_a_silu_model_alone():
    model = build_random("stoic", tiny_config(activation="silu"), seed=0).model
    _, report = gelu_to_silu.run(model, gelu_to_silu.Options(), _ctx(model))
    assert sum(report.changed.values()) == 0
    assert report.deviation["worst"]["max_abs_error"] == 0.0


def test_geglu_gate_becomes_silu_with_the_same_weights():
    unet = _tiny_unet()
    from mobilegen.models.unet import GEGLU

    n_geglu = _count(unet, GEGLU)
    counts = gelu_to_silu.replace_gelu(unet)
    assert counts == {"gelu": 0, "gelu_tanh": 0, "geglu": n_geglu} and n_geglu == 3
    assert _count(unet, GEGLU) == 0
    swapped = next(m for m in unet.modules() if type(m).__name__ == "SwiGLU")
    x = torch.randn(2, 5, swapped.proj.in_features)
    h, gate = swapped.proj(x).chunk(2, dim=-1)
    torch.testing.assert_close(swapped(x), h * torch.nn.functional.silu(gate))


# ---------------------------------------------------------------- relu_attention


def test_relu_attention_finds_attention_by_convention_in_every_family():
    stoic = build_random("stoic", tiny_config(conditioning="context", context_dim=16,
                                              context_len=3), seed=0).model
    assert relu_attention.to_relu(stoic, 1.0) == {"self_attention": 2, "cross_attention": 2}
    unet = _tiny_unet()
    assert relu_attention.to_relu(unet, 0.5) == {"self_attention": 3, "cross_attention": 3}
    kernels = [m for m in unet.modules() if isinstance(getattr(m, "kernel", None),
                                                       AttentionKernel)]
    assert kernels and all(m.kernel is AttentionKernel.RELU and m.relu_scale == 0.5
                           for m in kernels)
    unet(*unet.example_inputs(1))  # still runs


def test_relu_attention_computes_the_paper_formula():
    model = build_random("stoic", tiny_config(), seed=0).model
    relu_attention.to_relu(model, 1.0)
    attn = model.blocks[0].attn
    x = torch.randn(2, 16, 32)
    b, t, d = x.shape
    h = attn.heads
    q, k, v = (f(x).view(b, t, h, d // h).transpose(1, 2) for f in (attn.to_q, attn.to_k,
                                                                     attn.to_v))
    w = torch.relu(q @ k.transpose(-2, -1) / (d // h) ** 0.5) / t  # 1/L_k, L_k = t keys
    want = attn.to_out((w @ v).transpose(1, 2).reshape(b, t, d))
    torch.testing.assert_close(attn(x), want)


def test_relu_attention_reports_deviation_and_recovery_lowers_it():
    model = build_random("stoic", tiny_config(conditioning="class", num_classes=3), seed=0).model
    component = {"conditioning": {"kind": "class", "labels": [0, 1, 2], "null_label": 3},
                 "sampler": {"schedule": {"beta_min": 0.1, "beta_max": 20.0, "eps": 1e-3,
                                          "time_scale": 1000.0}}}
    x0 = np.random.default_rng(0).uniform(-1, 1, (6, 1, 8, 8)).astype(np.float32)
    ctx = _ctx(model, lambda teacher, batch: noised_batches(x0, component, batch))

    _, bare = relu_attention.run(model, relu_attention.Options(), ctx)
    assert bare.recovery is None and bare.changed["self_attention"] == 2
    before = bare.deviation["worst"]
    assert before["psnr_db"] < 30  # softmax -> ReLU changes the function: reported, not hidden

    opts = relu_attention.Options(recover_steps=40, recover_lr=1e-3, recover_batch=8)
    student, rec = relu_attention.run(model, opts, ctx)
    assert rec.deviation == bare.deviation  # same rewrite, same measurement before recovery
    after = rec.recovery["deviation_after"]["worst"]
    assert rec.recovery["loss_last"] < rec.recovery["loss_first"]
    assert after["psnr_db"] > before["psnr_db"] + 3 and after["cosine"] > before["cosine"]
    assert all(m.kernel is AttentionKernel.SOFTMAX for m in (b.attn for b in model.blocks))
    assert all(m.kernel is AttentionKernel.RELU for m in (b.attn for b in student.blocks))
    assert not any(p.requires_grad is False for p in model.parameters())


# ---------------------------------------------------------------- pipeline


def test_pipeline_with_passes_writes_pass_reports_and_gates_them(tmp_path):
    from mobilegen.export.run import run_export

    ckpt = write_tiny_checkpoint(tmp_path / "t.safetensors", conditioning="class", num_classes=3)
    path = write_recipe(tmp_path / "r.toml", ckpt)
    passes = ('["gelu_to_silu", {name = "relu_attention", recover_steps = 8, '
              'recover_lr = 1e-3, min_psnr_db = 200}, "fp16", {name = "int8", '
              'mode = "weight_only"}]')
    path.write_text(f"passes = {passes}\n" + path.read_text())
    recipe = load_recipe(path)
    steps = []
    result = run_export(recipe, tmp_path / "out",
                        train_progress=lambda s, n, loss: steps.append(s))
    assert [f for f in result.failures if f.startswith("pass relu_attention: min_psnr_db")]
    assert result.report.status == "gate_failed"
    assert steps == list(range(1, 9))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    passes_out = {p["name"] if p["kind"] == "module" else p["tag"]: p for p in report["passes"]}
    assert list(passes_out) == ["gelu_to_silu", "relu_attention", "fp16", "int8-weight_only"]
    relu = passes_out["relu_attention"]
    assert relu["changed"]["self_attention"] == 2 and relu["recovery"]["steps"] == 8
    assert relu["gates"] and "min_psnr_db" in relu["gates"][0]
    for name in ("gelu_to_silu", "relu_attention"):
        e2e = passes_out[name]["end_to_end"]
        assert (tmp_path / "out" / e2e["grid"]).is_file() and "psnr_db" in e2e
    rows = {a["artifact"]: a for a in report["artifacts"]}
    fp16 = rows["ort-mobile-cpu/denoiser.fp16.onnx"]
    assert fp16["precision"] == "fp16" and fp16["gate_limits"]["min_step_psnr_db"] == 40.0
    assert fp16["parity"]["psnr_db"] > 60 and fp16["end_to_end"]["psnr_db"] > 35
    assert not fp16["gates"]
    assert rows["ort-mobile-cpu/denoiser.int8-weight_only.ort"]["runnable"]
    assert "gate_limits" not in rows["ort-mobile-cpu/denoiser.onnx"]  # fp32: the recipe's gates
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Passes" in md and "| relu_attention |" in md and "FAILED pass relu_attention" in md


def test_a_target_without_a_precision_pass_gets_a_row_saying_why(tmp_path):
    from types import SimpleNamespace

    from mobilegen.export.run import StepTimer, _lower
    from mobilegen.export.staging import StagedOutput
    from mobilegen.passes.fp16 import Options
    from mobilegen.passes.precision import PrecisionPlan, PrecisionSpec
    from mobilegen.targets.profile import load_target

    spec = PrecisionSpec("fp16")
    precision = PrecisionPlan([("fp16", spec, Options())], {"fp16": Options().limits("fp16")})
    plan = SimpleNamespace(precision=precision, programs={"default": None}, io=None, example=(),
                           component={"name": "denoiser"}, param_bytes=0, calibration=())
    # Stands in for a target that cannot do fp16: supports() says why.
    target = SimpleNamespace(export=lambda req: [], supports=lambda s: "no fp16 here",
                             export_precision=None)
    with StagedOutput(tmp_path / "out") as out:
        arts = _lower(plan, target, load_target("ort-mobile-cpu"), out,
                      StepTimer(lambda s: None), out.path("logs/toolchain.log"))
    assert len(arts) == 1 and not arts[0].runnable and arts[0].precision == "fp16"
    assert arts[0].details["skipped"] == "pass fp16 not supported: no fp16 here"
    assert arts[0].file == "ort-mobile-cpu/denoiser.fp16"
