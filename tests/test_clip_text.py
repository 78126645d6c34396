"""The clip-text family against transformers' own CLIPTextModel on the same weights, its export
to every host-runnable target, and the tokenizer built with `tokenizers` against transformers'
CLIPTokenizer on the same vocab and merges."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from mobilegen.checkpoints.loader import load_checkpoint
from mobilegen.checkpoints.pipeline_folder import tokenizer_spec
from mobilegen.errors import CheckpointError, ConfigError
from mobilegen.models.clip_text import VARIANTS, CLIPTextConfig, CLIPTextEncoder
from mobilegen.sampling.tokenizer import build_tokenizer, tokenize
from sd_pipeline_fixture import write_text_encoder, write_tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PROMPTS = ["a photo of the cat", "A RED   car on the beach!", "", "painting of a dog, 1999",
           " ".join(["the blue cat"] * 40)]  # longer than 77 tokens: truncated


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clip")
    vocab = write_tokenizer(root / "tokenizer")
    write_text_encoder(root / "text_encoder", vocab)
    write_text_encoder(root / "text_encoder_gelu", vocab, hidden_act="gelu", seed=1)
    return root


@pytest.mark.parametrize("sub", ["text_encoder", "text_encoder_gelu"])
def test_parity_with_transformers(folders: Path, sub: str) -> None:
    ref = transformers.CLIPTextModel.from_pretrained(folders / sub).eval()
    loaded = load_checkpoint(folders / sub)
    assert loaded.family == "clip-text"
    assert loaded.config.hidden_act == ("gelu" if sub.endswith("gelu") else "quick_gelu")
    for seed in range(3):
        (ids,) = loaded.model.example_inputs(3, seed=seed)
        with torch.no_grad():
            expected = ref(input_ids=ids).last_hidden_state
            found = loaded.model(ids)
        assert expected.abs().mean() > 1e-2
        assert (found - expected).abs().max().item() <= 1e-4


def test_pipeline_root_component_and_bad_config(folders: Path, tmp_path: Path) -> None:
    (folders / "model_index.json").write_text("{}")
    try:
        assert load_checkpoint(folders, component="text_encoder").family == "clip-text"
    finally:
        (folders / "model_index.json").unlink()
    bad = tmp_path / "te"
    bad.mkdir()
    cfg = json.loads((folders / "text_encoder" / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "hidden_act": "relu"}))
    (bad / "model.safetensors").write_bytes((folders / "text_encoder" / "model.safetensors")
                                            .read_bytes())
    with pytest.raises(CheckpointError, match="hidden_act"):
        load_checkpoint(bad)
    with pytest.raises(ConfigError, match="unknown clip-text config key 'colour'"):
        CLIPTextConfig.from_dict({"colour": 1})


def test_capture_has_no_data_dependent_masking() -> None:
    """One torch.export capture, and the ONNX graph holds the causal mask as a constant: no
    IsNaN / Where / comparison ops (what QNN HTP choked on in transformers' own export)."""
    onnx = pytest.importorskip("onnx")
    model = CLIPTextEncoder(VARIANTS["clip-text-tiny"]).eval()
    example = model.example_inputs(2)
    ep = torch.export.export(model, example)
    onx = torch.onnx.export(ep, example, dynamo=True, verbose=False).model_proto
    ops = {n.op_type for n in onx.graph.node}
    assert not ops & {"IsNaN", "Where", "Equal", "Less", "Greater", "Trilu"}, ops
    assert "Softmax" in ops and "Gather" in ops
    assert onnx.checker.check_model(onx) is None


def test_tokenizer_matches_transformers(folders: Path) -> None:
    spec = tokenizer_spec(folders / "tokenizer", 77)
    assert spec["ids"]["bos"] != spec["ids"]["eos"] and spec["lower_case"]
    ours = tokenize(build_tokenizer(folders / "tokenizer" / "vocab.json",
                                    folders / "tokenizer" / "merges.txt", spec), PROMPTS)
    ref = transformers.CLIPTokenizer.from_pretrained(folders / "tokenizer")
    expected = np.array(ref(PROMPTS, padding="max_length", max_length=77,
                            truncation=True).input_ids, dtype=np.int64)
    np.testing.assert_array_equal(ours, expected)
    assert ours.shape == (len(PROMPTS), 77) and ours.dtype == np.int64
    assert ours[0, 0] == spec["ids"]["bos"] and ours[-1, -1] == spec["ids"]["eos"]
    assert (ours[0] != spec["ids"]["eos"]).sum() > 2  # real merges happened, not bytes only


def test_tokenizer_folder_errors(folders: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=re.escape("no tokenizer files (expected vocab.json")):
        tokenizer_spec(tmp_path, 77)
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(CheckpointError, match=re.escape("missing vocab.json")):
        tokenizer_spec(tmp_path, 77)
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(CheckpointError, match=re.escape("bos token '<|startoftext|>' is not in")):
        tokenizer_spec(tmp_path, 77)


def test_export_to_every_host_target(folders: Path, tmp_path: Path) -> None:
    """ORT (.onnx + .ort) and LiteRT run here: parity <= 1e-4; Core ML is converted and reloaded
    (prediction needs macOS: the row says so)."""
    from mobilegen.export.run import run_export
    from mobilegen.recipe import load_recipe

    recipe = tmp_path / "te.toml"
    recipe.write_text(f'name = "te"\ntargets = ["ort-mobile-cpu", "android-cpu", "ios-gpu"]\n'
                      f'[model]\nfamily = "clip-text"\ncheckpoint = "{folders / "text_encoder"}"\n'
                      '[validate]\ntimesteps = [1.0, 2.0]\n[latency]\nwarmup = 1\nruns = 2\n')
    result = run_export(load_recipe(recipe), tmp_path / "out")
    rows = result.report.artifacts
    runnable = [r for r in rows if r.runnable]
    assert {r.format for r in runnable} >= {"onnx", "ort", "tflite"}, [r.format for r in rows]
    for r in runnable:
        assert r.parity["max_abs_error"] <= 1e-4, (r.artifact, r.parity)
    assert any(r.format == "mlpackage" for r in rows)
    assert not result.failures, result.failures
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    comp = manifest["components"][0]
    assert comp["family"] == "clip-text" and comp["inputs"][0]["dtype"] == "int64"
    assert "sampler" not in comp


def test_snapdragon_htp_takes_the_whole_text_encoder(folders: Path, tmp_path: Path) -> None:
    """The Snapdragon NPU target (QNN HTP through onnxruntime-qnn; Qualcomm's simulator on
    x86_64): with CPU fallback disabled, every node of the tiny text encoder is on HTP and the
    W8A16 context binary stays close to PyTorch."""
    pytest.importorskip("onnxruntime_qnn")
    from mobilegen.export.run import run_export
    from mobilegen.recipe import load_recipe

    recipe = tmp_path / "te.toml"
    recipe.write_text(f'name = "te-htp"\ntargets = ["snapdragon-8gen3-htp"]\n'
                      f'[model]\nfamily = "clip-text"\ncheckpoint = "{folders / "text_encoder"}"\n'
                      '[validate]\ntimesteps = [1.0, 2.0]\n[latency]\nwarmup = 1\nruns = 2\n')
    result = run_export(load_recipe(recipe), tmp_path / "out")
    assert not result.failures, result.failures
    (row,) = [r for r in result.report.artifacts if r.runnable]
    coverage = {c["accelerator"]: c for c in row.details["coverage"]}
    assert coverage["qnn-htp"]["verdict"] == "full", coverage
    assert row.parity["cosine"] >= 0.999, row.parity
