import pytest
import torch

from conftest import tiny_config
from mobilegen.errors import ConfigError
from mobilegen.measure.costs import count_macs, count_params, flop_counter_macs
from mobilegen.models.stoic import VARIANTS, Stoic, StoicConfig, io_spec


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"stride": 1},
        {"time_injection": "adaln"},
        {"conditioning": "class", "num_classes": 4},
        {"conditioning": "context", "context_dim": 16, "context_len": 5},
        {"conditioning": "context", "context_dim": 16, "context_len": 5, "context_pool": True,
         "time_injection": "adaln"},
        {"decoder": "linear"},
        {"activation": "silu", "stem_convs": 0, "stem_kernel": 5},
    ],
)
def test_every_option_runs_and_keeps_shape(options):
    torch.manual_seed(0)
    model = Stoic(tiny_config(**options)).eval()
    inputs = model.example_inputs(batch=3)
    out = model(*inputs)
    assert out.shape == inputs[0].shape
    spec = io_spec(model.config)
    assert len(spec.inputs) == len(inputs)
    assert next(tuple(i.shape) for i in inputs)[1:] == spec.inputs[0].shape[1:]


def test_resolution_agnostic_without_positional_embedding():
    model = Stoic(tiny_config()).eval()
    x, t = model.example_inputs(batch=1, image_size=16)
    assert model(x, t).shape == (1, 1, 16, 16)


def test_timestep_changes_output():
    model = Stoic(tiny_config())
    torch.nn.init.normal_(model.conv_out.weight)
    x, _ = model.example_inputs(1)
    a = model(x, torch.tensor([10.0]))
    b = model(x, torch.tensor([900.0]))
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize(
    "bad",
    [{"stride": 3}, {"width": 30, "heads": 4}, {"conditioning": "class"}, {"image_size": 7},
     {"context_pool": True}, {"conditioning": "context", "context_pool": "yes"}],
)
def test_invalid_configs_are_rejected(bad):
    with pytest.raises(ConfigError):
        tiny_config(**bad)


@pytest.mark.parametrize("pool", [False, True])
def test_context_embedding_reads_the_context_without_cross_attention(pool):
    """With every cross-attention output zeroed, only the pooled context embedding (the paper's
    context embedding) can carry the text to the output."""
    torch.manual_seed(0)
    cfg = tiny_config(conditioning="context", context_dim=16, context_len=5,
                      time_injection="adaln", context_pool=pool)
    model = Stoic(cfg).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.cross_attn.to_out.weight.zero_()
            for p in block.adaln.parameters():
                torch.nn.init.normal_(p, std=0.1)
        torch.nn.init.normal_(model.conv_out.weight)
    x, t, ctx = model.example_inputs(batch=2)
    moved = (model(x, t, ctx) - model(x, t, ctx + 1.0)).abs().max().item()
    assert (moved > 1e-3) == pool, moved


def test_from_dict_names_unknown_key():
    with pytest.raises(ConfigError, match="'widht'"):
        StoicConfig.from_dict({"widht": 3})


def test_paper_variants_registered():
    for s in (1, 2):
        for n in (12, 16, 32):
            for w in (512, 768):
                assert f"stoic-s{s}-n{n}-l{w}" in VARIANTS


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_mac_counter_agrees_with_flop_counter_on_every_variant(name):
    # Meta tensors: full-size shapes at no memory or compute cost.
    with torch.device("meta"):
        model = Stoic(VARIANTS[name]).eval()
        inputs = model.example_inputs(1)
    ours, table = count_macs(model, inputs)
    theirs = flop_counter_macs(model, inputs)
    assert theirs > 0
    assert abs(ours - theirs) / theirs < 0.01
    assert sum(r.params for r in table) <= count_params(model)


def test_reference_size_s2_n12_l512():
    # REFERENCE.md: about 38M params and 10.5 GMAC at 32x32; our stem adds a 3x3 L->L conv.
    with torch.device("meta"):
        model = Stoic(VARIANTS["stoic-s2-n12-l512"])
        inputs = model.example_inputs(1)
    macs, _ = count_macs(model, inputs)
    assert 38e6 <= count_params(model) <= 42e6
    assert 10.0e9 <= macs <= 11.5e9
