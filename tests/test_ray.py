"""The Ray path (export/ray_tasks.py) against a real local Ray head on 127.0.0.1, started in a
child process for this module and shut down after it: a two-recipe batch with one broken recipe
(results, exit code and outputs as in the local path), a recipe whose memory estimate no node
can hold (refused, not left pending), and a small sensitivity study whose trials run as tasks
(the same scores as the local run)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_recipe

ray = pytest.importorskip("ray")
runner = CliRunner()

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head():
    """`ray start --head --block` on this machine, stopped (SIGTERM to the process we started:
    --block then stops the GCS, raylet and workers it started) after the module. Ray 2.60 rewrites
    127.0.0.1 in an address to the node's own IP (services.resolve_ip_for_localhost), so a head
    bound to loopback only cannot be joined: the head takes the default node IP, this machine's."""
    port = _free_port()
    # no token authentication for this private head: with RAY_AUTH_MODE unset, Ray 2.60 turns
    # it on when ~/.ray/auth_token exists, which another cluster on the machine may have written
    patch = pytest.MonkeyPatch()
    patch.setenv("RAY_AUTH_MODE", "disabled")
    ray_cli = Path(sys.executable).with_name("ray")
    proc = subprocess.Popen([str(ray_cli), "start", "--head", "--port", str(port),
                             "--num-cpus", "2", "--memory", str(3 * 1024**3),
                             "--object-store-memory", str(80 * 1024**2),
                             "--include-dashboard", "false", "--disable-usage-stats", "--block"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # up once the GCS answers
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.5)
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        patch.undo()


def invoke(*args):
    from mobilegen.cli.main import app

    return runner.invoke(app, [str(a) for a in args])


def test_a_batch_on_ray_matches_the_local_contract(head, tmp_path, tiny_ckpt):
    good = write_recipe(tmp_path / "good.toml", tiny_ckpt)
    good.write_text(good.read_text().replace('name = "tiny"', 'name = "good"'))
    corrupt = tmp_path / "corrupt.safetensors"  # the recipe loads; its export fails
    corrupt.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    broken = write_recipe(tmp_path / "broken.toml", corrupt)
    broken.write_text(broken.read_text().replace('name = "tiny"', 'name = "broken"'))
    out = tmp_path / "out"
    result = invoke("export", good, broken, "--out", out, "--ray", head, "--json", "--no-cache")
    assert result.exit_code == 1, result.output
    assert "{" in result.output, result.output
    doc = json.loads(result.output[result.output.index("{"):])
    assert doc["exit_code"] == 1
    ok, bad = doc["results"]
    assert ok["exit_code"] == 0 and ok["error"] is None
    assert ok["report"]["artifacts"][0]["parity"]["max_abs_error"] < 1e-4
    assert (out / "good" / "ort-mobile-cpu" / "denoiser.onnx").is_file()
    pre = ok["report"]["memory"]["preflight"]
    assert pre["limit_source"] == "MOBILEGEN_MEMORY_LIMIT_GB"  # the memory the task declared
    assert bad["exit_code"] == 1 and "corrupt.safetensors" in bad["error"], bad["error"]
    assert not (out / "broken").exists()


def test_an_export_no_node_can_hold_is_refused_not_left_pending(head, tmp_path):
    big = tmp_path / "big.toml"  # SD-1.5's UNet: ~11 GB estimated, the head offers 3 GB
    big.write_text('name = "big"\ntargets = ["android-cpu"]\n[model]\nfamily = "unet"\n'
                   'init = "random"\nvariant = "sd15"\n')
    result = invoke("export", big, "--out", tmp_path / "o", "--ray", head, "--json")
    assert result.exit_code == 1
    doc = json.loads(result.output[result.output.index("{"):])
    err = doc["results"][0]["error"]
    assert "memory preflight: big.toml needs an estimated" in err
    assert "largest Ray node offers 3.0 GB" in err


def test_sensitivity_trials_on_ray_score_as_locally(head, tmp_path, tiny_recipe, monkeypatch):
    from mobilegen.cli.sensitivity_cmd import SensitivityRequest, _setup
    from mobilegen.passes.precision import PrecisionSpec
    from mobilegen.passes.sensitivity import Study, layer_sensitivity

    monkeypatch.chdir(tmp_path)  # the shared work folder is made in the current folder
    remote = invoke("sensitivity", tiny_recipe, "--granularity", "block", "--feeds", "2",
                    "--no-fp16", "--json", "--ray", head)
    assert remote.exit_code == 0, remote.output
    b = json.loads(remote.output[remote.output.index("{"):])
    assert not list(tmp_path.glob(".mobilegen-sensitivity-*"))  # the work folder is gone
    # the same study here, one trial after another
    req = SensitivityRequest(tiny_recipe, "block", 45.0, 8, "minmax", 2, None, False)
    work = tmp_path / "local"
    work.mkdir()
    ctx = _setup(req, work)
    study = Study(ctx["fp32"], PrecisionSpec("int8", "static"), ctx["calibration"],
                  ctx["validation"], work)
    local = layer_sensitivity(study, "block")
    assert len(local) >= 2
    assert {s.layer: round(s.step_psnr_db, 3) for s in local} == \
        {s["layer"]: round(s["step_psnr_db"], 3) for s in b["layers"]}


def test_a_pipeline_task_declares_its_largest_component():
    """A pipeline is one Ray task exporting its components in turn: it declares the largest
    component's preflight estimate (no Ray head needed to compute it). A diffusers folder's
    components are sized from their folders' safetensors headers (they were 0 bytes)."""
    from safetensors import safe_open

    from mobilegen.export.preflight import estimate, recipe_param_bytes
    from mobilegen.export.ray_tasks import _memory_for
    from mobilegen.measure.memory import GB
    from mobilegen.recipe import RECIPES_DIR, load_any_recipe

    path = RECIPES_DIR / "snapfusion-pipeline.toml"  # SnapFusion UNet + SD decoder, meta-built
    prec = load_any_recipe(path)
    each = [min(estimate(recipe_param_bytes(r), r.targets)[:2])
            for r in (getattr(prec, s) for s in prec.slots())]
    memory, error = _memory_for(path)
    assert error is None and len(each) == 2 and each[0] != each[1]
    assert memory == int(max(each) * GB) > 0
    t2i = load_any_recipe(RECIPES_DIR / "digits-t2i.toml")
    unet = t2i.unet.checkpoint_path()
    with safe_open(str(unet / "diffusion_pytorch_model.safetensors"), framework="pt") as f:
        want = sum(4 * int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())  # noqa: SIM118
    assert unet.is_dir() and recipe_param_bytes(t2i.unet) == want > 1_000_000
