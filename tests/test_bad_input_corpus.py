"""The bad-input corpus, through the real CLI: each case gives exactly one line on stderr naming the
problem, the documented exit code, and leaves nothing behind (README: "Bad input")."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from conftest import tiny_config, write_recipe, write_tiny_checkpoint
from mobilegen.checkpoints.loader import build_random, save_checkpoint
from mobilegen.cli.main import app
from mobilegen.errors import OutputError
from mobilegen.export.staging import StagedOutput

runner = CliRunner()


class Evil:
    def __reduce__(self):
        return (print, ("EXECUTED",))


def _tensors(tmp: Path) -> dict[str, torch.Tensor]:
    model = build_random("stoic", tiny_config()).model
    return {k: v.clone() for k, v in model.state_dict().items()}


def _save(tmp: Path, name: str, tensors: dict[str, torch.Tensor]) -> Path:
    import json

    meta = {"mobilegen.family": "stoic", "mobilegen.config": json.dumps(tiny_config().to_dict())}
    save_file(tensors, str(tmp / name), metadata=meta)
    return tmp / name


def ckpt_zero(tmp):
    (tmp / "zero.safetensors").write_bytes(b"")
    return tmp / "zero.safetensors"


def ckpt_truncated(tmp):
    good = write_tiny_checkpoint(tmp / "good.safetensors")
    (tmp / "cut.safetensors").write_bytes(good.read_bytes()[:300])
    return tmp / "cut.safetensors"


def ckpt_pickle_code(tmp):
    with open(tmp / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": {"w": Evil()}}, f)
    return tmp / "evil.pt"


def ckpt_nan(tmp):
    t = _tensors(tmp)
    t["conv_out.bias"][0] = float("inf")
    return _save(tmp, "inf.safetensors", t)


def ckpt_wrong_dtype(tmp):
    t = _tensors(tmp)
    t["conv_out.weight"] = t["conv_out.weight"].to(torch.int32)
    return _save(tmp, "int.safetensors", t)


def ckpt_missing(tmp):
    t = _tensors(tmp)
    del t["norm_out.weight"]
    return _save(tmp, "missing.safetensors", t)


def ckpt_extra(tmp):
    t = _tensors(tmp)
    t["blocks.9.surprise"] = torch.zeros(3)
    return _save(tmp, "extra.safetensors", t)


def ckpt_shape(tmp):
    t = _tensors(tmp)
    t["conv_out.bias"] = torch.zeros(5)
    return _save(tmp, "shape.safetensors", t)


def ckpt_not_safetensors(tmp):
    (tmp / "notes.safetensors").write_text("these are my notes, not weights")
    return tmp / "notes.safetensors"


def _with_config(tmp, name, **config):
    import json

    meta = {"mobilegen.family": "stoic",
            "mobilegen.config": json.dumps({**tiny_config().to_dict(), **config})}
    save_file(_tensors(tmp), str(tmp / name), metadata=meta)
    return tmp / name


def ckpt_absurd_depth(tmp):  # would take minutes and gigabytes to build before being refused
    return _with_config(tmp, "deep.safetensors", depth=100000)


def ckpt_zero_heads(tmp):  # was a ZeroDivisionError
    return _with_config(tmp, "heads0.safetensors", heads=0)


def ckpt_config_too_big_for_file(tmp):  # in bounds, but far more parameters than bytes
    return _with_config(tmp, "big.safetensors", depth=64, width=1024, heads=8)


def ckpt_deep_json_metadata(tmp):  # was a RecursionError
    meta = {"mobilegen.family": "stoic", "mobilegen.config": "[" * 100_000 + "]" * 100_000}
    save_file(_tensors(tmp), str(tmp / "deepjson.safetensors"), metadata=meta)
    return tmp / "deepjson.safetensors"


def ckpt_zip_bomb(tmp):  # 256 MiB of zeros declared by a file of a few hundred KiB
    import zipfile

    with zipfile.ZipFile(tmp / "bomb.ckpt", "w", zipfile.ZIP_DEFLATED) as z, \
            z.open("bomb/data/0", "w") as f:
        for _ in range(256):
            f.write(bytes(1 << 20))
    return tmp / "bomb.ckpt"


def ckpt_device(tmp):  # reading /dev/zero never ends
    (tmp / "zero.safetensors").symlink_to("/dev/zero")
    return tmp / "zero.safetensors"


CHECKPOINTS = [
    (ckpt_zero, 1, "file is empty"),
    (ckpt_truncated, 1, "not a readable safetensors file"),
    (ckpt_not_safetensors, 1, "not a readable safetensors file"),
    (ckpt_pickle_code, 1, "refused"),
    (ckpt_nan, 1, "tensor 'conv_out.bias' contains NaN or inf"),
    (ckpt_wrong_dtype, 1, "tensor 'conv_out.weight' has dtype torch.int32, expected floating"),
    (ckpt_missing, 1, "1 missing (first: norm_out.weight)"),
    (ckpt_extra, 1, "1 unexpected (first: blocks.9.surprise)"),
    (ckpt_shape, 1, "conv_out.bias expected (1,) found (5,)"),
    (ckpt_absurd_depth, 2, "key 'depth' must be in [1, 256], found 100000"),
    (ckpt_zero_heads, 2, "key 'heads' must be in [1, 256], found 0"),
    (ckpt_config_too_big_for_file, 1, "the config does not belong to these weights"),
    (ckpt_deep_json_metadata, 1, "metadata 'mobilegen.config' is not JSON (nested too deeply)"),
    (ckpt_zip_bomb, 1, "(a zip bomb?)"),
    (ckpt_device, 1, "not a regular file"),
]


# Off a terminal, exports print one line per finished step ("  0.90 s  count"): progress, not
# part of the error; everything else on stderr must be the one line.
STEP_LINE = re.compile(r"^\s*\d[\d.]*(m[\d.]+)?\s?s\s+\S+$")


def one_line(result) -> str:
    lines = [line for line in result.stderr.strip().splitlines() if not STEP_LINE.match(line)]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(("make", "code", "message"), CHECKPOINTS,
                         ids=[c[0].__name__ for c in CHECKPOINTS])
def test_bad_checkpoints(tmp_path, make, code, message):
    path = make(tmp_path)
    inspected = runner.invoke(app, ["inspect", str(path)])
    assert inspected.exit_code == code
    line = one_line(inspected)
    assert message in line and path.name in line
    assert "EXECUTED" not in inspected.stdout
    # the same file through export: same line, and no output folder appears
    recipe = write_recipe(tmp_path / "r.toml", path)
    out = tmp_path / "out"
    exported = runner.invoke(app, ["export", str(recipe), "--out", str(out)])
    assert exported.exit_code == code and message in one_line(exported)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".staging" in p.name]


RECIPES = [
    (("[latency]", "[latency]\nwarmpu = 1"), 2, "unknown key 'latency.warmpu'"),
    (("runs = 3", "runs = 'many'"), 2, "key 'latency.runs'"),
    (('"ort-mobile-cpu"', '"ort-mobile-gpu9"'), 2, "unknown target 'ort-mobile-gpu9'"),
    (("targets = [", "passes = ['int4-magic']\ntargets = ["), 2, "unknown pass 'int4-magic'"),
    # issue 11: values that crashed, allocated without end or were silently replaced
    (("timesteps = [999.0, 500.0, 1.0]", "timesteps = []"), 2, "key 'validate.timesteps'"),
    (("timesteps = [999.0, 500.0, 1.0]", "timesteps = [nan]"), 2,
     "key 'validate.timesteps.0'"),
    (("guidance_scale = 1.5", "guidance_scale = inf"), 2, "key 'sampler.guidance_scale'"),
    (("num_images = 4", "num_images = 100000"), 2, "key 'sampler.num_images'"),
    (("[latency]", "[latency]\nbatch = 100000"), 2, "key 'latency.batch'"),
    (("[validate]", "[validate]\nbatch = 100000"), 2, "key 'validate.batch'"),
    (('name = "tiny"', 'name = "tiny"\nimage_size = 0'), 2, "key 'image_size'"),
    (('name = "tiny"', 'name = "tiny"\nimage_size = 100000'), 2, "key 'image_size'"),
    (("[gates]", "[gates]\nmin_psnr_db = nan"), 2, "key 'gates.min_psnr_db'"),
    (('name = "tiny"', 'name = "tiny"\ndeep = ' + "[" * 5000 + "]" * 5000), 2,
     "nested too deeply"),
]


@pytest.mark.parametrize(("mutation", "code", "message"), RECIPES, ids=lambda v: str(v)[:20])
def test_bad_recipes(tmp_path, tiny_ckpt, mutation, code, message):
    recipe = write_recipe(tmp_path / "r.toml", tiny_ckpt)
    recipe.write_text(recipe.read_text().replace(*mutation, 1))
    result = runner.invoke(app, ["export", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == code
    line = one_line(result)
    assert message in line and "r.toml" in line
    assert not (tmp_path / "out").exists()


def test_output_path_that_is_a_file(tmp_path, tiny_recipe):
    target = tmp_path / "out.txt"
    target.write_text("mine")
    result = runner.invoke(app, ["export", str(tiny_recipe), "--out", str(target)])
    assert result.exit_code == 1
    assert "output path is a file" in one_line(result)
    assert target.read_text() == "mine"


def test_unwritable_output_folder(tiny_recipe):
    # /proc refuses new entries even to root, unlike a chmod-ed folder
    result = runner.invoke(app, ["export", str(tiny_recipe), "--out", "/proc/mobilegen-out"])
    assert result.exit_code == 1
    assert "/proc" in one_line(result)


def test_artifact_name_cannot_escape_the_output(tmp_path):
    with StagedOutput(tmp_path / "out") as out:
        with pytest.raises(OutputError, match="escapes the output folder"):
            out.path("../../etc/evil.onnx")
        assert out.path("ort/ok.onnx").parent.name == "ort"
    assert not (tmp_path / "out").exists()  # never committed, staging removed
    assert list(tmp_path.iterdir()) == []


def test_saved_checkpoints_are_refused_nowhere(tmp_path):
    """The corpus's control: a good checkpoint passes the same commands."""
    path = save_checkpoint(tmp_path / "ok.safetensors", "stoic",
                           build_random("stoic", tiny_config()).model)
    assert runner.invoke(app, ["inspect", str(path)]).exit_code == 0
