"""`mobilegen bench A B ...` on output folders: one JSON document with ratios against the first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mobilegen.cli.main import app
from test_html_report import make_output_dir


def test_bench_json_parses_with_ratios(tmp_path: Path) -> None:
    a = make_output_dir(tmp_path, "full", 2.0, bytes_=1_000_000)
    b = make_output_dir(tmp_path, "pruned", 0.5, bytes_=250_000)
    result = CliRunner().invoke(app, ["bench", str(a), str(b), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["baseline"] == "full"
    rows = {r["entry"]: r for r in doc["rows"]}
    assert rows["full"]["latency_ms_ratio"] == pytest.approx(1.0)
    assert rows["pruned"]["latency_ms_ratio"] == pytest.approx(0.25)
    assert rows["pruned"]["bytes_ratio"] == pytest.approx(0.25)
    assert rows["pruned"]["psnr_db"] == pytest.approx(116.8)


def test_bench_table_for_people(tmp_path: Path) -> None:
    a = make_output_dir(tmp_path, "full", 2.0)
    b = make_output_dir(tmp_path, "pruned", 1.0)
    result = CliRunner().invoke(app, ["bench", str(a), str(b)])
    assert result.exit_code == 0, result.output
    assert "(0.50x)" in result.stdout and "ratios against full" in result.stdout


def test_bench_rejects_what_is_neither_recipe_nor_folder(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("x")
    result = CliRunner().invoke(app, ["bench", str(bogus)])
    assert result.exit_code == 2
    assert "expected a recipe (.toml) or an output folder" in result.output
