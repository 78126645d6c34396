"""Nothing lost, nothing trusted blindly (issue 11): output-folder ownership, a cache that verifies
what it serves, a manifest that is confined and hashed before it runs, confined diffusers shards,
refusals before allocation, leftovers swept, one line instead of a traceback, interrupts that win.

Every case goes through the CLI (typer's CliRunner, or a subprocess where a hang is the defect):
the exit code, one line on stderr, nothing left behind, nothing lost."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from conftest import tiny_config, write_recipe, write_tiny_checkpoint
from mobilegen.cli.main import app
from mobilegen.errors import EXIT_ERROR, EXIT_GATE, EXIT_INTERRUPTED, EXIT_USAGE
from test_bad_input_corpus import one_line

runner = CliRunner()
CLI = [sys.executable, "-c", "from mobilegen.cli.main import main; main()"]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def export(*args: object):
    return runner.invoke(app, ["export", *map(str, args)])


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private cache whose keys do not follow edits to mobilegen's source made while the test
    runs (a shared checkout is edited by others; the key's source part is tested elsewhere)."""
    from mobilegen.export import cache as cache_module

    monkeypatch.setenv("MOBILEGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache_module, "_source_digest", lambda: "pinned for this test")
    return tmp_path / "cache"


GATED = "max_latency_ms = 0.000001"  # fails on any machine: a complete, gate_failed result


@pytest.fixture(scope="module")
def module_export(tmp_path_factory):
    """One finished export (tiny class-conditional STOIC, a failed latency gate) and the cache
    entry it left: (root, recipe, out, cache folder). Tests copy what they edit."""
    from mobilegen.export import cache as cache_module

    root = tmp_path_factory.mktemp("exported")
    ckpt = write_tiny_checkpoint(root / "tiny.safetensors", conditioning="class", num_classes=3)
    recipe = write_recipe(root / "tiny.toml", ckpt, gates=GATED)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOBILEGEN_CACHE_DIR", str(root / "cache"))
        mp.setattr(cache_module, "_source_digest", lambda: "pinned for this test")
        result = export(recipe, "--out", root / "out")
    assert result.exit_code == EXIT_GATE, result.output
    return root, recipe, root / "out", root / "cache"


@pytest.fixture
def exported(module_export) -> Path:
    return module_export[2]


@pytest.fixture
def warm(tmp_path, module_export, cache) -> Path:
    """The module's recipe with a private copy of its cache entry (a run of it is a hit)."""
    import shutil

    shutil.copytree(module_export[3], cache)
    return module_export[1]


def copy_export(exported: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(exported, dest)
    return dest


# ---------------------------------------------------------------- 1. output folder ownership


def test_a_folder_with_someone_elses_report_json_is_refused_untouched(tmp_path, tiny_recipe):
    out = tmp_path / "project"
    (out / "src").mkdir(parents=True)
    (out / "main.c").write_text("int main(void) { return 0; }\n")
    (out / "src" / "lib.c").write_text("/* mine */\n")
    (out / "report.json").write_text('{"status": "ok"}')
    before = tree(out)
    result = export(tiny_recipe, "--out", out)
    assert result.exit_code == EXIT_ERROR
    assert "refusing to replace" in one_line(result) and ".mobilegen" in one_line(result)
    assert tree(out) == before and hidden(tmp_path) == []


def test_a_symlinked_out_is_refused_and_stays_a_link(tmp_path, tiny_recipe):
    real = tmp_path / "real"
    real.mkdir()
    (real / "keep.txt").write_text("keep")
    link = tmp_path / "out"
    link.symlink_to(real)
    result = export(tiny_recipe, "--out", link)
    assert result.exit_code == EXIT_ERROR and "symbolic link" in one_line(result)
    assert link.is_symlink() and tree(real) == {"keep.txt": b"keep"}
    assert hidden(tmp_path) == []


def test_only_an_intact_mobilegen_folder_is_replaced(tmp_path, exported, warm):
    out = copy_export(exported, tmp_path / "out")
    marker = json.loads((out / ".mobilegen").read_text())
    assert marker["tool"] == "mobilegen" and "report.json" in marker["files"]
    first = export(warm, "--out", out)  # our own folder: replaced (from the cache)
    assert first.exit_code == EXIT_GATE, first.output
    (out / "notes.txt").write_text("my notes")  # now it holds something mobilegen did not write
    again = export(warm, "--out", out)
    assert again.exit_code == EXIT_ERROR
    assert "'notes.txt' was not written by mobilegen" in one_line(again)
    assert (out / "notes.txt").read_text() == "my notes"
    (out / "notes.txt").unlink()
    (out / "manifest.json").write_text("{}")  # a marker that does not match its manifest
    edited = export(warm, "--out", out)
    assert edited.exit_code == EXIT_ERROR and "does not match" in one_line(edited)
    assert (out / "manifest.json").read_text() == "{}"
    assert [h for h in hidden(tmp_path) if "staging" in h or ".old-" in h] == []


# ---------------------------------------------------------------- 2. the cache verifies all


def _entry(cache: Path) -> Path:
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    return entry


def test_an_edited_cached_report_is_never_served(tmp_path, exported, warm, cache):
    """A gate_failed entry edited to ok would turn exit 3 into exit 0: it is removed and rebuilt,
    and the previous (good) output is never replaced by what the entry held."""
    out = copy_export(exported, tmp_path / "out")
    report = _entry(cache) / "report.json"
    report.write_text(report.read_text().replace('"gate_failed"', '"ok"'))
    result = export(warm, "--out", out)
    assert result.exit_code == EXIT_GATE  # rebuilt, not served
    assert "failed verification (report.json was changed); removed" in result.stderr
    assert json.loads((out / "report.json").read_text())["status"] == "gate_failed"
    (_entry(cache) / "report.json").write_text("garbage{")
    dead = dead_pid()
    (cache / f".{_entry(cache).name}.tmp-{dead}").mkdir()  # a store killed mid-copy
    garbage = export(warm, "--out", out)
    assert garbage.exit_code == EXIT_GATE and "failed verification" in garbage.stderr
    assert f"its process {dead} is gone" in garbage.stderr and hidden(cache) == []
    assert json.loads((out / "report.json").read_text())["status"] == "gate_failed"
    hit = runner.invoke(app, ["export", str(warm), "--out", str(out), "--json"])
    assert hit.exit_code == EXIT_GATE and json.loads(hit.stdout)["cache"]["hit"] is True


def test_an_unwritable_cache_is_a_warning_and_leftovers_are_swept(tmp_path, tiny_recipe,
                                                                  monkeypatch):
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MOBILEGEN_CACHE_DIR", str(blocker))
    out = tmp_path / "out"
    dead, live = dead_pid(), os.getppid()
    for name in (f".out.staging-{dead}", f".out.old-{dead}", f".out.staging-{live}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "big.bin").write_bytes(b"x" * 1000)
    result = export(tiny_recipe, "--out", out)
    assert result.exit_code == 0, result.output
    assert "warning: result not cached" in result.stderr
    assert (out / "report.json").is_file() and blocker.read_text() == "not a folder"
    assert hidden(tmp_path) == [f".out.staging-{live}"]  # a live run's folder is kept
    assert result.stderr.count("removed leftover") == 2
    assert f"its process {dead} is gone" in result.stderr


# ---------------------------------------------------------------- 3. sample trusts no manifest


def _edit_manifest(out: Path, edit) -> None:
    m = json.loads((out / "manifest.json").read_text())
    edit(m)
    (out / "manifest.json").write_text(json.dumps(m))


def sample(out: Path, *args: object):
    return runner.invoke(app, ["sample", str(out), *map(str, args)])


def test_sample_refuses_a_path_outside_the_folder(tmp_path, exported):
    out = copy_export(exported, tmp_path / "out")
    (tmp_path / "x.onnx").write_bytes((out / "ort-mobile-cpu" / "denoiser.onnx").read_bytes())

    def outside(m):
        for f in m["files"]:
            if f["format"] == "onnx":
                f["path"] = "../x.onnx"
    _edit_manifest(out, outside)
    png = tmp_path / "s.png"
    result = sample(out, "--png", png)
    assert result.exit_code == EXIT_ERROR and "'../x.onnx' is outside" in one_line(result)
    assert not png.exists()


def test_sample_checks_sha256_unless_told_not_to(tmp_path, exported):
    out = copy_export(exported, tmp_path / "out")
    onnx = out / "ort-mobile-cpu" / "denoiser.onnx"
    with open(onnx, "ab") as f:
        f.write(b"\0")  # one byte more: whatever it would do, it is never loaded
    png = tmp_path / "s.png"
    refused = sample(out, "--png", png)
    assert refused.exit_code == EXIT_ERROR and "sha256 differs" in one_line(refused)
    assert not png.exists()
    onnx.write_bytes((exported / "ort-mobile-cpu" / "denoiser.onnx").read_bytes())
    ok = runner.invoke(app, ["sample", str(out), "--png", str(png), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["hash_check"] == "sha256 verified" and png.is_file()
    skipped = sample(out, "--png", png, "--no-hash-check", "--json")
    assert skipped.exit_code == 0
    assert json.loads(skipped.stdout)["hash_check"] == "skipped (--no-hash-check)"


@pytest.mark.parametrize(("args", "message"), [
    (["--steps", "-5"], "--steps must be in [1, 1000], found -5"),
    (["--steps", "0"], "--steps must be in [1, 1000], found 0"),
    (["--threads", "0"], "--threads must be in"),
    (["--png", "{tmp}"], "is a folder"),
    (["--png", "{tmp}/missing/s.png"], "does not exist"),
], ids=["steps-negative", "steps-zero", "threads-zero", "png-dir", "png-parent"])
def test_sample_option_bounds(tmp_path, exported, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = sample(exported, *args)
    assert result.exit_code == EXIT_USAGE and message in one_line(result)


def test_sample_refuses_bad_json_and_nan_guidance(tmp_path, exported):
    out = copy_export(exported, tmp_path / "out")
    (out / "manifest.json").write_text("{not json")
    bad = sample(out, "--png", tmp_path / "s.png")
    assert bad.exit_code == EXIT_ERROR and "not valid JSON" in one_line(bad)
    out2 = copy_export(exported, tmp_path / "out2")
    nan = {"guidance_scale": float("nan")}
    _edit_manifest(out2, lambda m: m["components"][0]["sampler"].update(nan))
    result = sample(out2, "--png", tmp_path / "s.png")
    assert result.exit_code == EXIT_ERROR and "'sampler.guidance_scale'" in one_line(result)
    assert not (tmp_path / "s.png").exists()


# ---------------------------------------------------------------- 4. diffusers shards


UNET = {"_class_name": "UNet2DConditionModel", "block_out_channels": [32, 64],
        "layers_per_block": 1, "attention_head_dim": 2,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": 16,
        "norm_num_groups": 8, "sample_size": 8}


def sharded_unet(folder: Path, **config) -> Path:
    from mobilegen.checkpoints.diffusers import unet_config_from_diffusers
    from mobilegen.models.unet import EfficientUNet

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    sd = EfficientUNet(unet_config_from_diffusers(dict(UNET))).state_dict()
    keys = sorted(sd)
    shards = {"a.safetensors": keys[: len(keys) // 2], "b.safetensors": keys[len(keys) // 2:]}
    for name, ks in shards.items():
        save_file({k: sd[k].contiguous() for k in ks}, str(folder / name))
    weight_map = {k: name for name, ks in shards.items() for k in ks}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({**UNET, **config}))
    return folder


def _point_shard(folder: Path, target: str) -> None:
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = next(iter(data["weight_map"]))
    data["weight_map"][first] = target
    index.write_text(json.dumps(data))


@pytest.mark.parametrize("target", ["../../../../etc/passwd", "/etc/passwd", "/dev/zero"])
def test_shards_outside_the_folder_are_refused(tmp_path, target):
    folder = sharded_unet(tmp_path / "unet")
    _point_shard(folder, target)
    result = runner.invoke(app, ["inspect", str(folder)])
    assert result.exit_code == EXIT_ERROR and "is outside the model folder" in one_line(result)


def test_a_shard_that_is_a_device_is_refused(tmp_path):
    folder = sharded_unet(tmp_path / "unet")
    (folder / "zero.safetensors").symlink_to("/dev/zero")
    _point_shard(folder, "zero.safetensors")
    result = runner.invoke(app, ["inspect", str(folder)])
    assert result.exit_code == EXIT_ERROR and "not a regular file" in one_line(result)


def test_every_weight_file_read_is_hashed(tmp_path):
    from mobilegen.export import cache
    from mobilegen.export.manifest import checkpoint_digest
    from mobilegen.recipe import load_recipe

    folder = sharded_unet(tmp_path / "unet")
    (folder / "README.md").write_text("not read, not hashed")
    recipe_path = tmp_path / "u.toml"
    recipe_path.write_text(f'name = "u"\n[model]\nfamily = "unet"\ncheckpoint = "{folder}"\n')
    recipe = load_recipe(recipe_path)
    digest, files = checkpoint_digest(folder)
    assert [f["path"] for f in files] == ["config.json",
                                         "diffusion_pytorch_model.safetensors.index.json",
                                         "a.safetensors", "b.safetensors"]
    assert files[2]["sha256"] == hashlib.sha256((folder / "a.safetensors").read_bytes()).hexdigest()
    key = cache.export_key(recipe)
    (folder / "README.md").write_text("changed, still not read")
    assert cache.export_key(recipe) == key
    tensors = __import__("safetensors.torch", fromlist=["load_file"]).load_file(
        str(folder / "b.safetensors"))
    save_file({k: v + 1 for k, v in tensors.items()}, str(folder / "b.safetensors"))
    assert cache.export_key(recipe) != key and checkpoint_digest(folder)[0] != digest


# ---------------------------------------------------------------- 5. refused before allocating


def _stoic_with_config(path: Path, **config) -> Path:
    from mobilegen.checkpoints.loader import build_random

    model = build_random("stoic", tiny_config()).model
    meta = {"mobilegen.family": "stoic",
            "mobilegen.config": json.dumps({**tiny_config().to_dict(), **config})}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    return path


def test_an_absurd_config_is_refused_in_seconds(tmp_path):
    start = time.monotonic()
    deep = runner.invoke(app, ["inspect", str(_stoic_with_config(tmp_path / "d.safetensors",
                                                                   depth=100000))])
    assert deep.exit_code == EXIT_USAGE and "key 'depth' must be in [1, 256]" in one_line(deep)
    # within bounds, but far more parameters than the file holds: estimated on the meta device
    big = runner.invoke(app, ["inspect", str(_stoic_with_config(
        tmp_path / "b.safetensors", depth=64, width=1024, heads=8))])
    assert big.exit_code == EXIT_ERROR and "the config does not belong" in one_line(big)
    assert time.monotonic() - start < 30


def test_a_zip_bomb_checkpoint_is_refused_before_inflating(tmp_path):
    bomb = tmp_path / "bomb.ckpt"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z, z.open("bomb/data/0", "w") as f:
        chunk = bytes(1 << 20)
        for _ in range(256):  # 256 MiB of zeros in a file of a few hundred KiB
            f.write(chunk)
    assert bomb.stat().st_size < 2 << 20
    result = runner.invoke(app, ["inspect", str(bomb)])
    assert result.exit_code == EXIT_ERROR and "zip bomb" in one_line(result)


# ---------------------------------------------------------------- 7. only regular files


def test_a_checkpoint_that_is_a_device_or_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    for ckpt in ("/dev/zero", str(fifo)):
        recipe = write_recipe(tmp_path / "r.toml", Path(ckpt))
        done = subprocess.run([*CLI, "export", str(recipe), "--out", str(tmp_path / "o")],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == EXIT_ERROR, done.stderr
        assert "not a regular file" in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "o").exists()
    inspected = runner.invoke(app, ["inspect", "/dev/zero"])
    assert inspected.exit_code == EXIT_ERROR and "not a regular file" in one_line(inspected)


# ---------------------------------------------------------------- 8-10. one line, no traceback


def test_an_unreadable_checkpoint_is_one_line(tmp_path):
    # /proc/self/mem is a regular file whose first page cannot be read (EIO), even by root
    recipe = write_recipe(tmp_path / "r.toml", Path("/proc/self/mem"))
    result = export(recipe, "--out", tmp_path / "o")
    assert result.exit_code == EXIT_ERROR and "cannot read" in one_line(result)


def test_deep_json_in_safetensors_metadata_is_one_line(tmp_path):
    path = _stoic_with_config(tmp_path / "m.safetensors")
    model = {k: torch.zeros(1) for k in ("w",)}
    save_file(model, str(path), metadata={"mobilegen.family": "stoic",
                                          "mobilegen.config": "[" * 100_000 + "]" * 100_000})
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == EXIT_ERROR and "nested too deeply" in one_line(result)


def test_deep_toml_array_is_one_line(tmp_path, tiny_ckpt):
    recipe = write_recipe(tmp_path / "r.toml", tiny_ckpt)
    recipe.write_text(recipe.read_text() + "deep = " + "[" * 5000 + "]" * 5000 + "\n")
    result = export(recipe, "--out", tmp_path / "o")
    assert result.exit_code == EXIT_USAGE and "nested too deeply" in one_line(result)


@pytest.mark.parametrize(("config", "key"), [
    ({"norm_num_groups": 0}, "norm_num_groups"),
    ({"attention_head_dim": 0}, "attention_head_dim"),
    ({"attention_head_dim": [2, -1]}, "attention_head_dim[1]"),
])
def test_zero_unet_config_values_name_the_key(tmp_path, config, key):
    table = {**{k: v for k, v in UNET.items() if k in ("block_out_channels", "norm_num_groups",
                                                       "attention_head_dim")}, **config}
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in table.items())
    recipe = tmp_path / "u.toml"
    recipe.write_text(f'name = "u"\n[model]\nfamily = "unet"\ninit = "random"\n'
                      f"[model.config]\n{lines}\ncross_attention_dim = 16\nsample_size = 8\n"
                      "down_resnets = [1, 1]\ndown_attentions = [1, 0]\nup_resnets = [2, 2]\n"
                      "up_attentions = [0, 2]\n")
    result = export(recipe, "--out", tmp_path / "o")
    assert result.exit_code == EXIT_USAGE and f"key '{key}'" in one_line(result)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("config", "key"), [({"heads": 0}, "heads"), ({"stride": 0}, "stride")])
def test_zero_stoic_config_values_name_the_key(tmp_path, config, key):
    result = runner.invoke(app, ["inspect", str(_stoic_with_config(tmp_path / "c.safetensors",
                                                                    **config))])
    assert result.exit_code == EXIT_USAGE and f"key '{key}'" in one_line(result)


def test_vae_norm_groups_zero_names_the_key(tmp_path):
    recipe = tmp_path / "v.toml"
    recipe.write_text('name = "v"\n[model]\nfamily = "vae-decoder"\ninit = "random"\n'
                      "[model.config]\nblock_out_channels = [16, 32]\nnorm_num_groups = 0\n")
    result = export(recipe, "--out", tmp_path / "o")
    assert result.exit_code == EXIT_USAGE and "key 'norm_num_groups'" in one_line(result)


@pytest.mark.parametrize(("extra", "key", "code"), [
    ("image_size = 17\n", "image_size': 17 is not a positive multiple", EXIT_USAGE),
    ("image_size = -16\n", "key 'image_size'", EXIT_USAGE),
    ("image_size = 100000\n", "key 'image_size'", EXIT_USAGE),
    ("image_size = 0\n", "key 'image_size'", EXIT_USAGE),
    ("[sampler]\nlabels = [99]\n", "key 'sampler.labels': label 99 is out of range", EXIT_USAGE),
], ids=["size-17", "size-neg", "size-huge", "size-zero", "labels-99"])
def test_values_known_only_with_the_model_are_one_line(tmp_path, tiny_ckpt, extra, key, code):
    recipe = write_recipe(tmp_path / "r.toml", tiny_ckpt)
    text = recipe.read_text()
    sampler = extra.startswith("[sampler]")
    recipe.write_text(text.replace("[sampler]\n", extra) if sampler else extra + text)
    result = export(recipe, "--out", tmp_path / "o")
    assert result.exit_code == code and key in one_line(result) and "r.toml" in one_line(result)
    assert not (tmp_path / "o").exists() and hidden(tmp_path) == []


def test_markup_in_user_text_is_shown_as_written(tmp_path):
    missing = tmp_path / "ck[red]pt[/].safetensors"
    result = runner.invoke(app, ["inspect", str(missing)])
    assert result.exit_code == EXIT_ERROR and str(missing) in one_line(result)
    bare = tmp_path / "bare.ckpt"
    torch.save({"w": torch.zeros(1)}, bare)
    result = runner.invoke(app, ["inspect", str(bare)])
    assert "no 'mobilegen.family'" in one_line(result)
    cfgless = tmp_path / "cfgless.ckpt"
    torch.save({"family": "stoic", "state_dict": {"w": torch.zeros(1)}}, cfgless)
    result = runner.invoke(app, ["inspect", str(cfgless)])
    assert "give [model.config] in the recipe" in one_line(result)


# ---------------------------------------------------------------- prune, distill, report


def _tiny_decoder(path: Path) -> Path:
    import tomllib

    from mobilegen.checkpoints.loader import build_random, save_checkpoint
    from mobilegen.models.vae_decoder import VAEDecoderConfig
    from mobilegen.recipe import RECIPES_DIR

    table = tomllib.loads((RECIPES_DIR / "vae-decoder-tiny.toml").read_text())["model"]["config"]
    model = build_random("vae-decoder", VAEDecoderConfig.from_dict(table)).model
    return save_checkpoint(path, "vae-decoder", model)


def test_prune_075_on_the_tiny_decoder_keeps_its_shortcuts(tmp_path):
    src = _tiny_decoder(tmp_path / "dec.safetensors")
    out = tmp_path / "p.safetensors"
    result = runner.invoke(app, ["prune", str(src), "--ratio", "0.75", "--out", str(out),
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["image_shape"] == [1, 3, 32, 32]


def test_prune_refuses_to_overwrite_what_it_did_not_write(tmp_path):
    src = _tiny_decoder(tmp_path / "dec.safetensors")
    mine = tmp_path / "thesis.safetensors"
    mine.write_text("my thesis")
    refused = runner.invoke(app, ["prune", str(src), "--out", str(mine)])
    assert refused.exit_code == EXIT_ERROR and "--force" in one_line(refused)
    assert mine.read_text() == "my thesis"
    forced = runner.invoke(app, ["prune", str(src), "--out", str(mine), "--force"])
    assert forced.exit_code == 0 and mine.read_bytes() != b"my thesis"
    again = runner.invoke(app, ["prune", str(src), "--out", str(mine)])  # ours now: replaced
    assert again.exit_code == 0, again.output
    missing = runner.invoke(app, ["prune", str(src), "--out", str(tmp_path / "no" / "p.st")])
    assert missing.exit_code == EXIT_ERROR and "does not exist" in one_line(missing)
    assert hidden(tmp_path) == []


@pytest.mark.parametrize(("args", "message"), [
    (["--lr", "nan"], "--lr must be a finite number in (0, 1], found nan"),
    (["--lr", "1e30"], "--lr must be a finite number in (0, 1], found 1e+30"),
    (["--latent-size", "0"], "--latent-size must be in [1, 4096], found 0"),
])
def test_distill_option_bounds(tmp_path, args, message):
    src = _tiny_decoder(tmp_path / "dec.safetensors")
    result = runner.invoke(app, ["distill-decoder", str(src), str(src), "--out",
                                 str(tmp_path / "r.safetensors"), *args])
    assert result.exit_code == EXIT_USAGE and message in one_line(result)
    assert not (tmp_path / "r.safetensors").exists()


def test_report_never_writes_through_a_link_and_refuses_wrong_types(tmp_path, exported):
    out = copy_export(exported, tmp_path / "out")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (out / "report.md").unlink()
    (out / "report.md").symlink_to(victim)
    linked = runner.invoke(app, ["report", str(out)])
    assert linked.exit_code == EXIT_ERROR and "not a regular file" in one_line(linked)
    assert victim.read_text() == "precious"
    (out / "report.md").unlink()
    ok = runner.invoke(app, ["report", str(out)])
    assert ok.exit_code == 0 and (out / "report.md").is_file()
    report = json.loads((out / "report.json").read_text())
    for broken in ({**report, "artifacts": "many"}, [1, 2], {**report, "model": 3},
                   {**report, "sample_grids": {"x": "../../../etc/passwd"}}):
        (out / "report.json").write_text(json.dumps(broken))
        result = runner.invoke(app, ["report", str(out)])
        assert result.exit_code == EXIT_ERROR, result.output
        one_line(result)
    assert hidden(out) == [".mobilegen"]


# ---------------------------------------------------------------- 12. the interrupt wins


def test_sigterm_inside_onnx_export_exits_130(tmp_path, tiny_recipe, exported, monkeypatch):
    """torch.onnx.export once turned the SIGTERM's KeyboardInterrupt into its own error (exit 1
    in 1 of 19 tries). Simulated deterministically: the signal lands inside the exporter, which
    swallows the interrupt and raises a decomposition error instead."""
    from mobilegen.cli import main
    from mobilegen.export.staging import INTERRUPT

    out = copy_export(exported, tmp_path / "out")
    before = tree(out)

    def exporter_that_swallows(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        except KeyboardInterrupt:
            raise RuntimeError("decomposition failed: aten::_to_copy") from None

    monkeypatch.setattr(torch.onnx, "export", exporter_that_swallows)
    previous = signal.signal(signal.SIGTERM, main._interrupt)
    try:
        result = export(tiny_recipe, "--out", out, "--no-cache")  # not a cache hit
    finally:
        signal.signal(signal.SIGTERM, previous)
        INTERRUPT.clear()
    assert result.exit_code == EXIT_INTERRUPTED, result.output
    assert "interrupted" in one_line(result)
    assert tree(out) == before and [h for h in hidden(tmp_path) if "staging" in h] == []


# ---------------------------------------------------------------- fuzz: no traceback, no leftover

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SCALARS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from([0, 1, -1, 17, 2**31]),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.text(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4), max_leaves=8)
RECIPE_KEYS = ["image_size", "sampler.steps", "sampler.guidance_scale", "sampler.num_images",
               "sampler.labels", "sampler.seed", "validate.timesteps", "validate.batch",
               "latency.batch", "latency.runs", "latency.warmup", "gates.min_psnr_db",
               "model.config.depth", "model.config.heads", "model.config.stride",
               "model.config.width", "model.config.image_size", "model.config.mlp_ratio"]


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v == float("inf") else
                                     "-inf" if v == float("-inf") else repr(v))
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v) if isinstance(v, str) else str(v)


def fuzz_recipe_text(values: dict[str, object]) -> str:
    tables: dict[str, list[str]] = {"": ['name = "fuzz"']}
    tables["model"] = ['family = "stoic"', 'init = "random"']
    tables["model.config"] = [f"{k} = {v}" for k, v in
                              {**{k: v for k, v in tiny_config().to_dict().items()
                                  if isinstance(v, int | float) and not isinstance(v, bool)},
                               "conditioning": '"class"'}.items()]
    tables["model.config"] = [line for line in tables["model.config"]
                              if not line.startswith("conditioning")]
    for key, v in values.items():
        table, _, leaf = key.rpartition(".")
        lines = tables.setdefault(table, [])
        lines[:] = [line for line in lines if not line.startswith(f"{leaf} =")]
        lines.append(f"{leaf} = {toml_value(v)}")
    return "\n".join(("" if t == "" else f"[{t}]\n") + "\n".join(ls)
                     for t, ls in tables.items()) + "\n"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(RECIPE_KEYS), VALUES, max_size=4))
def test_fuzz_recipe_values_give_one_error_or_a_recipe(tmp_path_factory, values):
    """Any value under any of these keys: a valid recipe, or one RecipeError/ConfigError line
    naming the key; never another exception. Loading and validation only (no export)."""
    from mobilegen.errors import ConfigError, RecipeError
    from mobilegen.models import get_family
    from mobilegen.recipe import load_recipe

    folder = tmp_path_factory.getbasetemp() / "fuzz-recipe"
    folder.mkdir(exist_ok=True)
    path = folder / "r.toml"
    path.write_text(fuzz_recipe_text(values))
    try:
        recipe = load_recipe(path)
        cfg = get_family("stoic").config_from_dict(dict(recipe.model.config or {}))
        assert 1 <= recipe.export_size(cfg) <= 4096
    except (RecipeError, ConfigError) as e:
        assert "\n" not in str(e) and str(e)
    assert sorted(p.name for p in folder.iterdir()) == ["r.toml"]


DTYPES = ["F32", "F16", "BF16", "F64", "I32", "I64", "U8", "BOOL", "Q4"]
CONFIG_VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3))


@st.composite
def safetensors_files(draw) -> bytes:
    names = draw(st.lists(st.sampled_from(["conv_out.weight", "conv_out.bias", "x", "stem.0.weight",
                                           "__metadata__x"]), max_size=3, unique=True))
    header: dict[str, object] = {}
    offset = 0
    for name in names:
        shape = draw(st.lists(st.integers(min_value=-2, max_value=2**40), max_size=3))
        size = draw(st.integers(min_value=0, max_value=64))
        header[name] = {"dtype": draw(st.sampled_from(DTYPES)), "shape": shape,
                        "data_offsets": [offset, offset + size]}
        offset += size
    config = draw(st.one_of(
        st.dictionaries(st.sampled_from(sorted(tiny_config().to_dict())), CONFIG_VALUES,
                        max_size=4).map(lambda d: json.dumps({**tiny_config().to_dict(), **d})),
        st.text(max_size=20), st.just("[" * 3000 + "]" * 3000)))
    family = draw(st.sampled_from(["stoic", "unet", "vae-decoder", "nope"]))
    header["__metadata__"] = {"mobilegen.family": family, "mobilegen.config": config}
    blob = json.dumps(header).encode()
    declared = draw(st.one_of(st.just(len(blob)), st.integers(min_value=0, max_value=2**63)))
    data = draw(st.binary(max_size=offset + 8))
    return declared.to_bytes(8, "little") + blob + data


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(safetensors_files())
def test_fuzz_safetensors_headers_give_one_error(tmp_path_factory, blob):
    """Any header (lengths that lie, dtypes and shapes that do not fit, configs of any value or
    depth): a CheckpointError/ConfigError line or a model; never another exception, nothing
    written beside the file."""
    from mobilegen.checkpoints.loader import load_checkpoint
    from mobilegen.errors import MobilegenError

    folder = tmp_path_factory.getbasetemp() / "fuzz-safetensors"
    folder.mkdir(exist_ok=True)
    path = folder / "f.safetensors"
    path.write_bytes(blob)
    try:
        load_checkpoint(path)
    except MobilegenError as e:
        assert "\n" not in str(e) and "f.safetensors" in str(e)
    assert sorted(p.name for p in folder.iterdir()) == ["f.safetensors"]


# pipeline folders (model_index, configs, tokenizer, scheduler) and text-to-image manifests
PIPE_FILES = ["model_index.json", "unet/config.json", "vae/config.json",
              "text_encoder/config.json", "scheduler/scheduler_config.json",
              "tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "tokenizer/merges.txt"]
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3), max_leaves=6)


@st.composite
def pipeline_edits(draw) -> tuple[str, bytes | None, str | None, object]:
    """(file, whole new content or None, key to set or None, value)."""
    rel = draw(st.sampled_from(PIPE_FILES))
    if rel.endswith(".txt") or (draw(st.booleans()) and draw(st.booleans())):
        return rel, draw(st.one_of(st.binary(max_size=40), st.just(b"[" * 5000),
                                   JSON_VALUES.map(lambda v: json.dumps(v).encode()))), None, None
    return rel, None, draw(st.one_of(st.sampled_from(
        ["num_train_timesteps", "beta_start", "beta_end", "steps_offset", "beta_schedule",
         "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
         "norm_num_groups", "block_out_channels", "model_max_length", "bos_token",
         "do_lower_case", "unet", "tokenizer", "<|startoftext|>", "cross_attention_dim",
         "max_position_embeddings", "up_block_types", "prediction_type"]),
        st.text(max_size=6))), draw(JSON_VALUES)


@pytest.fixture(scope="module")
def fuzz_pipe(tmp_path_factory, tiny_pipe):
    import shutil

    root = tmp_path_factory.mktemp("fuzz-pipe")
    shutil.copytree(tiny_pipe, root / "pipe")
    (root / "r.toml").write_text('name = "p"\n[pipeline]\ndiffusers = "pipe"\n')
    return root


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(pipeline_edits())
def test_fuzz_pipeline_folders_refuse_at_load(fuzz_pipe, edit):
    """Any content or any key's value in a pipeline folder's JSON and merges: the recipe loads,
    or one MobilegenError line; never another exception, nothing written in the folder."""
    from mobilegen.errors import MobilegenError
    from mobilegen.recipe import load_any_recipe

    rel, content, key, value = edit
    path = fuzz_pipe / "pipe" / rel
    original = path.read_bytes()
    before = sorted(str(p) for p in fuzz_pipe.rglob("*"))
    if content is not None:
        path.write_bytes(content)
    else:
        data = json.loads(original)
        data[key] = value
        path.write_text(json.dumps(data))
    try:
        load_any_recipe(fuzz_pipe / "r.toml")
    except MobilegenError as e:
        assert "\n" not in str(e) and str(e)
    finally:
        path.write_bytes(original)
    assert sorted(str(p) for p in fuzz_pipe.rglob("*")) == before


CHAIN_KEYS = ["scheduler.steps", "scheduler.num_images", "scheduler.guidance_scale",
              "scheduler.seed", "scheduler.config.num_train_timesteps",
              "scheduler.config.beta_start", "scheduler.config.beta_schedule",
              "scheduler.config.timestep_spacing", "scheduler.config.steps_offset",
              "scheduler.config.prediction_type", "scheduler.config", "tokenizer.max_length",
              "tokenizer.ids.pad", "tokenizer.ids.bos", "tokenizer.tokens.eos",
              "tokenizer.lower_case", "tokenizer.files.vocab", "latent.scaling_factor",
              "latent.shift_factor", "scheduler", "tokenizer"]


@pytest.fixture(scope="module")
def fuzz_export(tmp_path_factory, sd_prompt_export):
    import shutil

    root = tmp_path_factory.mktemp("fuzz-sample")
    shutil.copytree(sd_prompt_export / "out", root / "out")
    return root


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(CHAIN_KEYS), JSON_VALUES, min_size=1, max_size=2))
def test_fuzz_text_to_image_manifests_for_sample(fuzz_export, values):
    """Any value under the chain's keys of a text-to-image manifest: `sample` runs or gives one
    line with exit 1 or 2; never a traceback; no image or temporary file left on failure."""
    from typer.testing import CliRunner

    from mobilegen.cli.main import app

    manifest = fuzz_export / "out" / "manifest.json"
    original = manifest.read_bytes()
    doc = json.loads(original)
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = doc["chain"]
        for p in parents:  # a parent an earlier key set to a non-table becomes a table again
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[leaf] = value
    manifest.write_text(json.dumps(doc))
    png = fuzz_export / "s.png"
    try:
        result = CliRunner().invoke(app, ["sample", str(fuzz_export / "out"), "--png", str(png),
                                          "--steps", "1"])
    finally:
        manifest.write_bytes(original)
    assert result.exit_code in (0, 1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    if result.exit_code:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not png.exists()
    png.unlink(missing_ok=True)
    assert [p.name for p in fuzz_export.iterdir()] == ["out"]
