"""A built wheel works from any folder: profiles, shipped recipes and the embedded checkpoint are
package data (importlib.resources), not files found beside a source checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The wheel built from this checkout, installed (no dependencies: the test's own venv has
    them) into a scratch folder that shadows the editable install."""
    scratch = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(scratch / "dist"), str(ROOT)], check=True,
                   capture_output=True, text=True)
    (wheel,) = (scratch / "dist").glob("mobilegen-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(scratch / "site"), str(wheel)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(scratch / "site"),
           "MOBILEGEN_CACHE_DIR": str(scratch / "cache")}
    return wheel, env


def mobilegen(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    code = "import sys; from mobilegen.cli.main import main; sys.argv[0] = 'mobilegen'; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_wheel_carries_the_package_data(installed):
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("mobilegen/data/recipes/stoic-digits.toml",
                   "mobilegen/data/targets/ort-mobile-cpu.toml",
                   "mobilegen/data/checkpoints/stoic-digits.safetensors"):
        assert needed in names


def test_installed_wheel_runs_from_another_folder(installed, tmp_path):
    _, env = installed
    probe = subprocess.run([sys.executable, "-c", "import mobilegen; print(mobilegen.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.startswith(env["PYTHONPATH"]), probe.stdout  # not the checkout
    targets = mobilegen(env, tmp_path, "targets", "--json")
    assert targets.returncode == 0, targets.stderr
    assert "ort-mobile-cpu" in {t["name"] for t in json.loads(targets.stdout)}
    recipes = mobilegen(env, tmp_path, "recipes", "--json")
    assert recipes.returncode == 0, recipes.stderr
    assert "stoic-digits" in {r["name"] for r in json.loads(recipes.stdout)}
    # a shipped recipe by name, with its checkpoint from package data (the full default export
    # runs in `make demo`; here the shipped random-init decoder keeps the test short)
    shown = mobilegen(env, tmp_path, "inspect", "stoic-digits", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["checkpoint"].startswith(env["PYTHONPATH"])
    out = mobilegen(env, tmp_path, "export", "vae-decoder-tiny", "--out", "o", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "ok"
    assert (tmp_path / "o" / "manifest.json").is_file()
