import pickle

import pytest
import torch

from conftest import tiny_config, write_tiny_checkpoint
from mobilegen.checkpoints.loader import load_checkpoint, save_checkpoint
from mobilegen.errors import CheckpointError


def test_safetensors_round_trip_carries_config(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "m.safetensors", conditioning="class", num_classes=3)
    loaded = load_checkpoint(path)
    assert loaded.family == "stoic"
    assert loaded.config == tiny_config(conditioning="class", num_classes=3)
    again = load_checkpoint(path)
    x = loaded.model.example_inputs(2)
    assert torch.equal(loaded.model(*x), again.model(*x))


def test_pt_with_config_loads_through_weights_only(tmp_path):
    loaded = load_checkpoint(write_tiny_checkpoint(tmp_path / "m.safetensors"))
    pt = tmp_path / "m.pt"
    torch.save({"family": "stoic", "config": loaded.config.to_dict(),
                "state_dict": loaded.model.state_dict()}, pt)
    assert load_checkpoint(pt).config == loaded.config


def test_bare_state_dict_needs_config_from_recipe(tmp_path):
    loaded = load_checkpoint(write_tiny_checkpoint(tmp_path / "m.safetensors"))
    pt = tmp_path / "bare.ckpt"
    torch.save(loaded.model.state_dict(), pt)
    with pytest.raises(CheckpointError, match=r"no 'mobilegen\.family'"):
        load_checkpoint(pt)
    assert load_checkpoint(pt, "stoic", loaded.config.to_dict()).config == loaded.config


class Evil:
    def __reduce__(self):
        return (print, ("executed",))


def test_pickle_with_code_is_refused_without_running_it(tmp_path, capsys):
    pt = tmp_path / "evil.pt"
    with open(pt, "wb") as f:
        pickle.dump({"state_dict": {"w": Evil()}}, f)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(pt)
    assert "executed" not in capsys.readouterr().out


def test_missing_empty_and_truncated_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(empty)
    good = write_tiny_checkpoint(tmp_path / "m.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: not a readable safetensors"):
        load_checkpoint(cut)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello, not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(text)


def test_mismatched_tensors_are_named(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "m.safetensors")
    wider = tiny_config(width=64, heads=2).to_dict()
    with pytest.raises(CheckpointError, match=r"shape mismatches \(first: stem.0.weight expected"):
        load_checkpoint(path, config=wider)
    deeper = tiny_config(depth=3).to_dict()
    with pytest.raises(CheckpointError, match=r"missing \(first: blocks.2"):
        load_checkpoint(path, config=deeper)


def test_non_finite_weights_are_refused(tmp_path):
    from mobilegen.checkpoints.loader import build_random

    model = build_random("stoic", tiny_config()).model
    with torch.no_grad():
        model.conv_out.bias[0] = float("nan")
    path = save_checkpoint(tmp_path / "nan.safetensors", "stoic", model)
    with pytest.raises(CheckpointError, match=r"conv_out\.bias' contains NaN"):
        load_checkpoint(path)


def test_half_precision_checkpoint_loads_as_float32(tmp_path):
    from mobilegen.checkpoints.loader import build_random

    model = build_random("stoic", tiny_config()).model.half()
    model.config = tiny_config()
    path = save_checkpoint(tmp_path / "half.safetensors", "stoic", model)
    loaded = load_checkpoint(path)
    assert loaded.source_dtype == "float16"
    assert next(loaded.model.parameters()).dtype == torch.float32


def test_load_assigns_file_tensors_and_keeps_constructor_buffers(tmp_path):
    """Weights are the file's tensors (no random-initialised copy first); the non-persistent
    causal mask of clip_text, absent from the file, keeps its constructed value."""
    from mobilegen.checkpoints.loader import build_random
    from mobilegen.models.clip_text import CLIPTextConfig

    cfg = CLIPTextConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=8,
                         bos_token_id=0, eos_token_id=1, pad_token_id=2)
    ref = build_random("clip-text", cfg, seed=3)
    path = save_checkpoint(tmp_path / "clip.safetensors", "clip-text", ref.model)
    got = load_checkpoint(path)
    assert not any(p.is_meta for p in got.model.parameters())
    assert torch.equal(got.model.causal_mask, ref.model.causal_mask)
    ids = torch.tensor([[0, 5, 9, 1, 2, 2, 2, 2]])
    with torch.no_grad():
        assert torch.equal(got.model(ids), ref.model(ids))
