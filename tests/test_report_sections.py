"""An export with [report] blocks/estimates: the sections reach report.json, report.md, report.html
and the printed summary; estimates stay labelled and apart from measured figures."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from conftest import write_recipe
from mobilegen.cli.main import app


def test_export_writes_block_table_estimates_and_html(tmp_path, tiny_ckpt):
    recipe = write_recipe(tmp_path / "r.toml", tiny_ckpt,
                          extra="[report]\nblocks = true\nestimates = true\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["export", str(recipe), "--out", str(out), "--no-cache"])
    assert res.exit_code == 0, res.output
    assert "per-block table:" in res.output and "ESTIMATE ios-ane" in res.output
    report = json.loads((out / "report.json").read_text())
    blocks = report["blocks"]
    # tiny STOIC: its identical core blocks collapse into one row counted `depth` times
    core = [r for r in blocks["rows"] if r["kind"] == "StoicBlock"]
    assert len(core) == 1 and core[0]["count"] == 2
    assert blocks["whole_ms"] > 0 and 0 <= blocks["op_profile"]["attention_share"] <= 1
    est = report["estimates"]
    assert est["label"].startswith("ESTIMATE") and est["rows"]
    assert all(r["calibration_error_pct"] > 0 for r in est["rows"])
    # every shipped profile has a calibrated row: a number with its band, or why there is none
    cal = {r["profile"]: r for r in est["calibrated"]["rows"]}
    assert cal["snapdragon-8gen3-htp"]["device"] == "Samsung Galaxy S24"
    assert cal["ios-ane"]["estimate_ms"] is None and cal["ios-ane"]["reason"]
    md = (out / "report.md").read_text()
    assert "## Per-block latency" in md and "## Device estimates: ESTIMATE" in md
    assert "## Calibrated device estimates: ESTIMATE" in md and "Samsung Galaxy S24" in md
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html and "data:image/png;base64," in html
