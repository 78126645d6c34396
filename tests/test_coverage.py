"""Accelerator coverage and the accelerator forms, on tiny models with the real vendor tools:
onnxruntime's mobile usability checker, LiteRT's analyzer, onnxruntime to run what was exported.
"""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_recipe, write_tiny_checkpoint

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mobilegen.export.gates import delegation_failures  # noqa: E402
from mobilegen.export.run import capture  # noqa: E402
from mobilegen.report.results import ArtifactResult  # noqa: E402
from mobilegen.targets import coverage  # noqa: E402
from mobilegen.targets import onnx as onnx_target  # noqa: E402
from mobilegen.targets.accel_rewrites import ACCEL_REWRITES, rewrite_forms  # noqa: E402
from mobilegen.targets.profile import PROFILES_DIR, list_target_names, load_target  # noqa: E402


def _onnx_with(tmp_path: Path, op: str) -> Path:
    """X (2, 8) -> op -> Relu -> Y, fixed shapes."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])])
    path = tmp_path / f"{op}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_an_op_an_ep_lacks_is_reported_with_that_op(tmp_path):
    entries = {e["accelerator"]: e for e in coverage.ort_coverage(_onnx_with(tmp_path, "Cos"))}
    assert set(entries) == {"nnapi", "coreml-neuralnetwork", "coreml-mlprogram"}
    nnapi = entries["nnapi"]  # the checker's NNAPI table has no Cos
    assert nnapi["verdict"] == "partial" and nnapi["unsupported_ops"] == ["Cos"]
    assert (nnapi["supported_nodes"], nnapi["total_nodes"]) == (1, 2)
    assert entries["coreml-mlprogram"]["verdict"] == "full"  # the ML program EP takes Cos
    assert nnapi["tool"].startswith("onnxruntime check_onnx_model_mobile_usability")


def test_the_gate_names_the_blocking_op(tmp_path):
    cov = coverage.ort_coverage(_onnx_with(tmp_path, "Cos"))
    row = ArtifactResult("p/m.onnx", "onnx", "p", "fp32", True, 10, {"coverage": cov})
    (failure,) = delegation_failures(row, "nnapi")
    assert "require_full_delegation" in str(failure) and "Cos" in str(failure)
    assert "(1/2 nodes)" in str(failure)
    assert delegation_failures(row, "coreml-mlprogram") == []
    assert delegation_failures(row, None) == []  # a CPU profile is not judged
    # coverage without the accelerator's entry: nothing said it runs there
    assert "no vendor check" in str(delegation_failures(row, "qnn-htp")[0])


def test_unknown_is_reported_not_failed():
    cov = [coverage.coreml_coverage({"conv": 3, "const": 9}, "CPU_AND_NE")]
    assert cov[0]["verdict"] == "unknown" and "macOS" in cov[0]["note"]
    assert cov[0]["program_ops"] == ["conv"]
    row = ArtifactResult("a/m.mlpackage", "mlpackage", "a", "fp16", False, 10, {"coverage": cov})
    assert delegation_failures(row, "coreml-ane") == []


def test_litert_analyzer_gpu_verdict_is_trusted_only_if_it_rejects_the_canary():
    pytest.importorskip("ai_edge_litert")
    canary = coverage.LITERT_GPU_CANARY
    compatible, flagged, _ = coverage.litert_analyze(canary)
    e = coverage.litert_gpu_coverage(canary, 2)
    if compatible:  # ai-edge-litert 2.3.0: the analyzer has no GPU rules compiled in
        assert e["verdict"] == "unknown" and "no GPU rules" in e["note"]
    else:  # a build with the rules names the PAD
        assert "PAD" in flagged and e["verdict"] == "partial"


def test_every_shipped_profile_names_its_accelerator():
    for name in list_target_names():
        raw = tomllib.loads((PROFILES_DIR / f"{name}.toml").read_text())
        assert raw.get("accelerator") in {"cpu", "gpu", "npu", "ane"}, name
        p = load_target(name)
        assert p.full_delegation_required == (p.accelerator != "cpu"), name


# ---------------------------------------------------------------- the accelerator forms


class _Time(torch.nn.Module):
    def forward(self, t):
        args = t[:, None] * torch.exp(-torch.arange(8.0) * 1.15)  # up to ~1000, as in STOIC
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _module(name):
    """(module, example input, the ONNX op the form removes, its stated max deviation)."""
    g = torch.Generator().manual_seed(0)
    if name == "time_sin_only":
        return _Time(), (torch.tensor([999.0, 1.0, 500.5]),), "Cos", 1e-4
    if name == "label_one_hot":
        return torch.nn.Embedding(11, 8), (torch.tensor([0, 3, 10]),), "Gather", 0.0
    if name == "gelu_tanh":
        return torch.nn.GELU(), (torch.linspace(-6, 6, 97)[None],), "Gelu", 5e-4
    if name == "layer_norm_decomposed":
        return (torch.nn.LayerNorm(16), (torch.randn(2, 5, 16, generator=g) * 3 + 1,),
                "LayerNormalization", 1e-5)
    return (torch.nn.GroupNorm(4, 16), (torch.randn(2, 16, 3, 3, generator=g) * 3 + 1,),
            "GroupNormalization", 1e-5)


@pytest.mark.parametrize("name", ACCEL_REWRITES)
def test_each_form_matches_in_pytorch_and_in_onnxruntime(name, tmp_path):
    module, example, removed, tol = _module(name)
    module.eval()
    with torch.inference_mode():
        ref = module(*example).numpy()
        with rewrite_forms([name]):
            rewritten = module(*example).numpy()
    assert np.abs(rewritten - ref).max() <= tol
    with rewrite_forms([name]):
        program = capture(module, example, dynamic=False)
    path = tmp_path / "m.onnx"
    torch.onnx.export(program, example, str(path), dynamo=True, opset_version=20,
                      external_data=False)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert removed not in ops and "Erf" not in ops, ops
    run = onnx_target.load(path, 1)
    names = [i.name for i in onnx.load(str(path)).graph.input]
    out = run({n: t.numpy() for n, t in zip(names, example, strict=True)})
    assert np.abs(out - ref).max() <= tol + 1e-5


def test_unknown_form_is_refused():
    with pytest.raises(ValueError, match="unknown accelerator rewrite 'nope'"), \
            rewrite_forms(["nope"]):
        pass


# ---------------------------------------------------------------- through `mobilegen export`


@pytest.fixture(scope="module")
def profiles_with_a_raw_nnapi(tmp_path_factory):
    """The shipped profiles plus one for NNAPI without its accelerator forms."""
    folder = tmp_path_factory.mktemp("profiles")
    for p in PROFILES_DIR.glob("*.toml"):
        shutil.copy(p, folder / p.name)
    (folder / "ort-nnapi-raw.toml").write_text(
        'name = "ort-nnapi-raw"\nruntime = "onnxruntime"\naccelerator = "npu"\n'
        'execution_provider = "nnapi"\nfixed_shapes = true\nort_format = false\n')
    return folder


def _export(tmp_path, monkeypatch, folder, targets):
    from mobilegen.cli.main import app

    monkeypatch.setattr("mobilegen.targets.profile.PROFILES_DIR", folder)
    ckpt = write_tiny_checkpoint(tmp_path / "t.safetensors", conditioning="class", num_classes=3)
    recipe = write_recipe(tmp_path / "t.toml", ckpt)
    recipe.write_text(recipe.read_text().replace('["ort-mobile-cpu"]', targets))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["export", str(recipe), "--out", str(out), "--no-cache"])
    return result, out


def test_export_gates_each_accelerator_profile(tmp_path, monkeypatch, profiles_with_a_raw_nnapi):
    """One export, two ORT accelerator profiles: NNAPI without its forms fails (exit 3, the
    blocking ops named); the CoreML EP profile's forms make the graph whole, still exact."""
    result, out = _export(tmp_path, monkeypatch, profiles_with_a_raw_nnapi,
                          '["ort-nnapi-raw", "ort-ios-coreml"]')
    assert result.exit_code == 3, result.output
    report = json.loads((out / "report.json").read_text())
    (failure,) = [f for f in report["gates"]["failures"] if "require_full_delegation" in f]
    assert failure.startswith("ort-nnapi-raw/") and "nnapi" in failure
    assert "Cos" in failure and "LayerNormalization" in failure
    assert "## Where it runs" in (out / "report.md").read_text()
    assert "Where it runs" in (out / "report.html").read_text()
    row = next(a for a in report["artifacts"] if a["artifact"] == "ort-ios-coreml/denoiser.onnx")
    mlp = next(e for e in row["details"]["coverage"] if e["accelerator"] == "coreml-mlprogram")
    assert mlp["verdict"] == "full" and mlp["supported_nodes"] == mlp["total_nodes"]
    assert row["parity"]["max_abs_error"] < 1e-4 and not row["gates"]  # fixed batch, split
    manifest = json.loads((out / "manifest.json").read_text())
    entry = next(f for f in manifest["files"] if f["path"] == row["artifact"])
    assert {"accelerator": "coreml-mlprogram", "verdict": "full"}.items() <= next(
        c for c in entry["coverage"] if c["accelerator"] == "coreml-mlprogram").items()


def test_a_checker_that_cannot_analyse_the_model_gives_unknown_not_a_crash(tmp_path, monkeypatch):
    """ORT's checker fails on some models (seen: the SD-1.5 UNet past 2 GB, before its graph was
    shape-inferred without the weights); the export goes on and each EP's entry says 'unknown'
    with the checker's own error, never a guessed verdict."""
    import onnx
    from onnxruntime.tools import onnx_model_utils

    from mobilegen.targets import coverage

    def refuse(*args, **kwargs):
        raise onnx.shape_inference.InferenceError("[ShapeInferenceError] refused by the test")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", refuse)
    onnx_path = tmp_path / "m.onnx"
    onnx.save(onnx.ModelProto(), str(onnx_path))  # never optimized: optimize_model is replaced
    monkeypatch.setattr(onnx_model_utils, "optimize_model",
                        lambda src, dst, **k: dst.write_bytes(src.read_bytes()))
    entries = coverage.ort_coverage(onnx_path)
    assert {e["accelerator"] for e in entries} == set(coverage.ORT_EPS)
    assert all(e["verdict"] == "unknown" and "refused by the test" in e["note"] for e in entries)
    usability = coverage.mobile_usability(entries)  # the older view of the same run
    assert usability and all("refused by the test" in v["error"] for v in usability.values())
