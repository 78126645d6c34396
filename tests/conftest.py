"""Shared fixtures: tiny STOIC checkpoints and recipes written into tmp folders."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

# Under pytest-xdist each worker takes its share of the cores: two workers with torch's default
# of a thread per core oversubscribe a 2-core runner (executorch + text2image files: 276 s, 237 s
# at one thread each). The environment carries it into the exports' child processes.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run the tests marked slow (end-to-end duplicates)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow end-to-end case: run with --run-slow or make test-all")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)

TINY = dict(in_channels=1, image_size=8, stride=2, depth=2, width=32, heads=2, time_freq_dim=32)


def tiny_config(**overrides):
    from mobilegen.models.stoic import StoicConfig

    return StoicConfig(**{**TINY, **overrides})


def write_tiny_checkpoint(path: Path, seed: int = 0, **overrides) -> Path:
    from mobilegen.checkpoints.loader import build_random, save_checkpoint

    loaded = build_random("stoic", tiny_config(**overrides), seed=seed)
    return save_checkpoint(path, "stoic", loaded.model)


def tiny_capture(batch: int = 2):
    """A tiny class-conditional STOIC, its IO spec, an example batch and the torch.export
    capture every target lowers from: what the target-module tests start from."""
    from mobilegen.checkpoints.loader import build_random
    from mobilegen.export.run import capture
    from mobilegen.models import get_family

    cfg = tiny_config(conditioning="class", num_classes=3)
    model = build_random("stoic", cfg, seed=0).model.eval()
    example = model.example_inputs(batch)
    return model, get_family("stoic").io_spec(cfg), example, capture(model, example)


def write_recipe(path: Path, checkpoint: Path, extra: str = "", gates: str = "") -> Path:
    path.write_text(
        textwrap.dedent(
            f"""\
            name = "tiny"
            targets = ["ort-mobile-cpu"]

            [model]
            family = "stoic"
            checkpoint = "{checkpoint}"

            [sampler]
            steps = 4
            num_images = 4
            guidance_scale = 1.5

            [validate]
            timesteps = [999.0, 500.0, 1.0]

            [latency]
            warmup = 1
            runs = 3
            {extra}
            [gates]
            {gates}
            """
        )
    )
    return path


@pytest.fixture
def tiny_ckpt(tmp_path: Path) -> Path:
    return write_tiny_checkpoint(tmp_path / "tiny.safetensors", conditioning="class", num_classes=3)


@pytest.fixture
def tiny_recipe(tmp_path: Path, tiny_ckpt: Path) -> Path:
    return write_recipe(tmp_path / "tiny.toml", tiny_ckpt)


@pytest.fixture(scope="session", autouse=True)
def _private_export_cache(tmp_path_factory):
    """Exports cache their results; tests must never see another run's cache (or the user's)."""
    import os

    os.environ["MOBILEGEN_CACHE_DIR"] = str(tmp_path_factory.mktemp("export-cache"))
    yield


@pytest.fixture(scope="session")
def sd_prompt_export(tmp_path_factory):
    """One export of the tiny random SD pipeline (sd_pipeline_fixture.PROMPT_RECIPE), shared by
    every module that needs a text-to-image export: ROOT with pipe/, r.toml and out/. Tests
    that change it work on a copy."""
    from typer.testing import CliRunner

    from mobilegen.cli.main import app
    from sd_pipeline_fixture import PROMPT_RECIPE, write_tiny_pipeline

    root = tmp_path_factory.mktemp("sd")
    write_tiny_pipeline(root / "pipe")
    (root / "r.toml").write_text(PROMPT_RECIPE)
    result = CliRunner().invoke(app, ["export", str(root / "r.toml"), "--out", str(root / "out"),
                                      "--json"])
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="session")
def tiny_pipe(tmp_path_factory):
    """The tiny random SD pipeline folder (sd_pipeline_fixture), written once per session; tests
    that change it work on a copy."""
    from sd_pipeline_fixture import write_tiny_pipeline

    return write_tiny_pipeline(tmp_path_factory.mktemp("pipe") / "pipe")
