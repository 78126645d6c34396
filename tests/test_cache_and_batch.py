"""Incremental and batch exports: a cached result is reused only when everything matches and it
is intact; several recipes run in parallel processes with one summary and the worst exit code."""

from __future__ import annotations

import json
import os
from pathlib import Path

from typer.testing import CliRunner

from conftest import write_recipe
from mobilegen.cli.main import app

runner = CliRunner()


def export_json(*args: object):
    result = runner.invoke(app, ["export", *map(str, args), "--json"])
    return result, (json.loads(result.stdout) if result.stdout.strip() else None)


def test_unchanged_export_is_served_from_the_cache(tmp_path, tiny_ckpt, monkeypatch):
    monkeypatch.setenv("MOBILEGEN_CACHE_DIR", str(tmp_path / "cache"))
    recipe = write_recipe(tmp_path / "r.toml", tiny_ckpt)
    first, doc1 = export_json(recipe, "--out", tmp_path / "a")
    assert first.exit_code == 0 and doc1["cache"]["hit"] is False
    again, doc2 = export_json(recipe, "--out", tmp_path / "b")
    assert again.exit_code == 0 and doc2["cache"]["hit"] is True
    assert doc2["cache"]["key"] and doc2["artifacts"] == doc1["artifacts"]
    for name in ("manifest.json", "report.json", "ort-mobile-cpu/denoiser.onnx"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    forced, doc3 = export_json(recipe, "--out", tmp_path / "c", "--no-cache")
    assert forced.exit_code == 0 and doc3["cache"]["hit"] is False


def test_any_change_or_damage_misses_the_cache(tmp_path, tiny_ckpt, monkeypatch):
    monkeypatch.setenv("MOBILEGEN_CACHE_DIR", str(tmp_path / "cache"))
    recipe = write_recipe(tmp_path / "r.toml", tiny_ckpt)
    assert export_json(recipe, "--out", tmp_path / "a")[0].exit_code == 0
    # a changed recipe is a different key
    recipe.write_text(recipe.read_text().replace("runs = 3", "runs = 4"))
    assert export_json(recipe, "--out", tmp_path / "b")[1]["cache"]["hit"] is False
    # a damaged entry is never served
    entry = next(p for p in (tmp_path / "cache").iterdir() if not p.name.startswith("."))
    for p in list((tmp_path / "cache").iterdir()):
        onnx = p / "ort-mobile-cpu" / "denoiser.onnx"
        onnx.write_bytes(onnx.read_bytes()[:-10])
    assert entry.is_dir()
    assert export_json(recipe, "--out", tmp_path / "c")[1]["cache"]["hit"] is False


def test_batch_runs_in_parallel_and_exits_with_the_worst(tmp_path, tiny_ckpt):
    good = write_recipe(tmp_path / "good.toml", tiny_ckpt)
    gated = write_recipe(tmp_path / "gated.toml", tiny_ckpt, gates="max_latency_ms = 0.000001")
    gated.write_text(gated.read_text().replace('name = "tiny"', 'name = "gated"'))
    result = runner.invoke(app, ["export", str(good), str(gated), "-j", "2", "--out",
                                 str(tmp_path / "out"), "--json"])
    assert result.exit_code == 3, result.output
    doc = json.loads(result.stdout)
    by_name = {Path(r["recipe"]).name: r for r in doc["results"]}
    assert by_name["good.toml"]["exit_code"] == 0
    assert by_name["good.toml"]["report"]["status"] == "ok"
    assert by_name["gated.toml"]["exit_code"] == 3
    assert "max_latency_ms" in by_name["gated.toml"]["error"]
    assert (tmp_path / "out" / "tiny" / "report.json").is_file()
    assert (tmp_path / "out" / "gated" / "report.json").is_file()
    # not on a terminal: one plain line per recipe with its wall time (a live line on one)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip().endswith(("export:tiny",
                                                                           "export:gated"))]
    assert len(lines) == 2 and all(ln.split()[1] == "s" for ln in lines), result.stderr
    # an error outranks a gate failure
    bad = write_recipe(tmp_path / "bad.toml", tmp_path / "gone.safetensors")
    bad.write_text(bad.read_text().replace('name = "tiny"', 'name = "bad"'))
    result = runner.invoke(app, ["export", str(bad), str(gated), "--out", str(tmp_path / "o2"),
                                 "--json"])
    assert result.exit_code == 1
    errors = [r["error"] for r in json.loads(result.stdout)["results"]]
    assert "gone.safetensors" in errors[0] and "max_latency_ms" in errors[1]


def test_batch_recipes_with_one_name_are_refused(tmp_path, tiny_ckpt):
    a = write_recipe(tmp_path / "a.toml", tiny_ckpt)
    b = write_recipe(tmp_path / "b.toml", tiny_ckpt)
    result = runner.invoke(app, ["export", str(a), str(b), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "two recipes are named 'tiny'" in result.stderr
    assert not (tmp_path / "o").exists()
    assert os.environ["MOBILEGEN_CACHE_DIR"]


def test_edited_mobilegen_source_is_a_different_key(tmp_path, tiny_ckpt, monkeypatch):
    from mobilegen.export import cache
    from mobilegen.recipe import load_recipe

    recipe = load_recipe(write_recipe(tmp_path / "r.toml", tiny_ckpt))
    before = cache.export_key(recipe)
    assert cache.export_key(recipe) == before  # stable
    monkeypatch.setattr(cache, "_source_digest", lambda: "an edited checkout")
    assert cache.export_key(recipe) != before
    # the digest itself follows file contents
    (tmp_path / "src").mkdir()
    f = tmp_path / "src" / "m.py"
    f.write_text("a = 1\n")
    d1 = cache._path_digest_of([f], tmp_path)
    f.write_text("a = 2\n")
    assert cache._path_digest_of([f], tmp_path) != d1
