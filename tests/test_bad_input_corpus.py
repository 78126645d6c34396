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


# ------------------------------------------------------------------------------------------------
# issue 26: diffusers pipeline folders, refused when the recipe loads (no export runs): each case
# edits a copy of one tiny pipeline folder, and `export` gives exit 2 (or 1 for an unreadable
# file), one line naming the file and key, and no output folder.
import json  # noqa: E402
import shutil  # noqa: E402

from sd_pipeline_fixture import SD15_SCHEDULER  # noqa: E402

PIPE_RECIPE = 'name = "p"\n[pipeline]\ndiffusers = "pipe"\n'  # tiny_pipe: conftest


def _json_edit(rel: str, **changes):
    def edit(root: Path) -> None:
        path = root / "pipe" / rel
        data = json.loads(path.read_text())
        data.update(changes)
        path.write_text(json.dumps(data))
    edit.__name__ = f"{rel}:{','.join(changes)}"
    return edit


def _write(rel: str, text: str | bytes):
    def edit(root: Path) -> None:
        path = root / "pipe" / rel
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
    return edit


def _link_out(rel: str):
    """`rel` replaced by a symlink to a copy outside the pipeline folder."""
    def edit(root: Path) -> None:
        inside, outside = root / "pipe" / rel, root / "elsewhere" / rel
        outside.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if inside.is_dir() else shutil.copyfile)(inside, outside)
        (shutil.rmtree if inside.is_dir() else Path.unlink)(inside)
        inside.symlink_to(outside)
    return edit


def _huge_vocab(root: Path) -> None:  # 200 MB declared, sparse on disk: refused by its size
    with open(root / "pipe" / "tokenizer" / "vocab.json", "r+b") as f:
        f.truncate(200 << 20)


def _vocab_edit(fn):
    def edit(root: Path) -> None:
        path = root / "pipe" / "tokenizer" / "vocab.json"
        path.write_text(json.dumps(fn(json.loads(path.read_text()))))
    return edit


def _wordpiece(root: Path) -> None:
    tok = root / "pipe" / "tokenizer"
    (tok / "vocab.json").unlink()
    (tok / "merges.txt").unlink()
    (tok / "tokenizer.json").write_text(json.dumps({
        "model": {"type": "WordPiece", "vocab": {"[UNK]": 0, "a": 1}, "unk_token": "[UNK]"},
        "pre_tokenizer": {"type": "BertPreTokenizer"}}))


def _recipe(text: str):
    def edit(root: Path) -> None:
        (root / "r.toml").write_text(text)
    return edit


DEEP = "[" * 100_000 + "]" * 100_000
SCHED = "scheduler/scheduler_config.json"
TE = "text_encoder/config.json"
PIPELINE_FOLDERS = [
    # 1: symlinks out of the folder
    ("1-unet-linked-out", _link_out("unet"), "outside"),
    ("1-te-weights-linked-out", _link_out("text_encoder/model.safetensors"), "outside"),
    ("1-special-tokens-linked-out", _link_out("tokenizer/tokenizer_config.json"), "outside"),
    # 5: the tokenizer, read when the recipe loads
    ("5-vocab-malformed", _write("tokenizer/vocab.json", "{not json"), "unreadable JSON"),
    ("5-vocab-empty-file", _write("tokenizer/vocab.json", ""), "unreadable JSON"),
    ("5-vocab-empty-object", _write("tokenizer/vocab.json", "{}"), "found empty"),
    ("5-vocab-nested", _write("tokenizer/vocab.json", DEEP), "nested too deeply"),
    ("5-vocab-200MB", _huge_vocab, "larger than any config or tokenizer file"),
    ("5-vocab-list", _write("tokenizer/vocab.json", '["a", "b"]'), "found a list"),
    ("5-vocab-no-bos", _vocab_edit(lambda v: {k: i for k, i in v.items()
                                              if k != "<|startoftext|>"}),
     "the bos token '<|startoftext|>' is not in the vocabulary"),
    ("5-id-beyond-vocab-size", _vocab_edit(lambda v: {**v, "zz": 900000}),
     "beyond the text encoder's vocab_size"),
    ("5-model-max-length-0", _json_edit("tokenizer/tokenizer_config.json", model_max_length=0),
     "key 'model_max_length' must be a positive integer"),
    ("5-bad-merges-line", _write("tokenizer/merges.txt", "#version: 0.2\na b c\n"),
     "line 2: bad merge"),
    ("5-merges-not-utf8", _write("tokenizer/merges.txt", b"#version: 0.2\n\xff\xfe x\n"),
     "not UTF-8"),
    ("5-bos-content-5", _json_edit("tokenizer/tokenizer_config.json", bos_token={"content": 5}),
     "key 'bos_token' must be a token string"),
    ("5-do-lower-case-no", _json_edit("tokenizer/tokenizer_config.json", do_lower_case="no"),
     "key 'do_lower_case' must be true or false"),
    ("5-wordpiece", _wordpiece, "'model.type' = 'WordPiece' is not supported (supported: a "
                                "byte-level BPE"),
    # 6: scheduler numbers
    *[(f"6-num-train-timesteps-{v}", _json_edit(SCHED, num_train_timesteps=v),
       "key 'num_train_timesteps'") for v in (0, -5, "abc", 10**12)],
    ("6-beta-start-over-end", _json_edit(SCHED, beta_start=0.02, beta_end=0.001),
     "key 'beta_start' (0.02) must not exceed 'beta_end'"),
    ("6-beta-nan", _json_edit(SCHED, beta_end=float("nan")), "key 'beta_end'"),
    ("6-beta-out-of-range", _json_edit(SCHED, beta_end=2.0), "key 'beta_end' must be in"),
    ("6-steps-offset-1e9", _json_edit(SCHED, steps_offset=10**9), "key 'steps_offset'"),
    # 7: text encoder and VAE config bounds
    ("7-te-layers-100000", _json_edit(TE, num_hidden_layers=100000),
     "key 'num_hidden_layers' must be in [1, 256]"),
    ("7-te-hidden-1e9", _json_edit(TE, hidden_size=10**9), "key 'hidden_size' must be in"),
    ("7-te-heads-0", _json_edit(TE, num_attention_heads=0), "key 'num_attention_heads'"),
    ("7-te-hidden-abc", _json_edit(TE, hidden_size="abc"),
     "key 'hidden_size' must be an integer"),
    ("7-vae-groups-0", _json_edit("vae/config.json", norm_num_groups=0),
     "key 'norm_num_groups' must be in [1, 1024], found 0"),
    # 8: deeply nested JSON everywhere a folder's JSON is read
    *[(f"8-deep-{rel.split('/')[0]}", _write(rel, DEEP), "nested too deeply")
      for rel in ("model_index.json", "unet/config.json", TE, "vae/config.json", SCHED,
                  "tokenizer/tokenizer_config.json")],
    # 9: the pipeline recipe's [sampler]
    ("9-guidance-inf", _recipe(PIPE_RECIPE + "[sampler]\nguidance_scale = inf\n"),
     "key 'sampler.guidance_scale'"),
    ("9-seed-minus-1", _recipe(PIPE_RECIPE + "[sampler]\nseed = -1\n"), "key 'sampler.seed'"),
    ("9-steps-1000-dpm", _recipe(PIPE_RECIPE + "[sampler]\nkind = 'dpm++2m'\nsteps = 1000\n"),
     "key 'sampler.steps': steps: 1000 dpm++2m steps repeat timestep"),
    # 11: nothing to export
    ("11-pipeline-targets-empty", _recipe(PIPE_RECIPE + "targets = []\n"),
     "key 'pipeline.targets'"),
]


@pytest.mark.parametrize(("case", "edit", "message"), PIPELINE_FOLDERS,
                         ids=[c[0] for c in PIPELINE_FOLDERS])
def test_bad_pipeline_folders(tmp_path, tiny_pipe, case, edit, message):
    shutil.copytree(tiny_pipe, tmp_path / "pipe")
    (tmp_path / "r.toml").write_text(PIPE_RECIPE)
    edit(tmp_path)
    out = tmp_path / "out"
    result = runner.invoke(app, ["export", str(tmp_path / "r.toml"), "--out", str(out)])
    assert result.exit_code == 2, result.output
    line = one_line(result)
    assert message in line and "r.toml" in line, line
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".staging" in p.name]


def test_deep_shard_index_is_one_line(tmp_path, tiny_pipe):  # 8: read by the loader (exit 1)
    shutil.copytree(tiny_pipe, tmp_path / "pipe")
    unet = tmp_path / "pipe" / "unet"
    (unet / "diffusion_pytorch_model.safetensors.index.json").write_text(DEEP)
    result = runner.invoke(app, ["inspect", str(unet)])
    assert result.exit_code == 1 and "nested too deeply" in one_line(result)


def test_largest_allowed_step_counts_work():
    """9: every sampler at its largest allowed count on SD's schedule gives a finite plan (the
    recipe and `sample --steps` refuse a count that does not, above)."""
    import numpy as np

    from mobilegen.errors import ConfigError
    from mobilegen.sampling.discrete import DISCRETE_KINDS, make_plan, schedule_from_config

    for kind in DISCRETE_KINDS:
        s = schedule_from_config(SD15_SCHEDULER, kind)
        counts = [n for n in (1000, 999) if _plan_ok(s, n, make_plan, ConfigError)]
        assert counts, kind
        plan = make_plan(s, counts[0])
        assert all(np.isfinite(np.asarray(v)).all() for v in plan.constants().values())
    with pytest.raises(ConfigError, match="repeat timestep"):
        make_plan(schedule_from_config(SD15_SCHEDULER, "dpm++2m"), 1000)


def _plan_ok(s, n, make_plan, error) -> bool:
    try:
        make_plan(s, n)
    except error:
        return False
    return True


def test_tokenizer_json_only_pipeline_loads_and_tokenizes_like_transformers(tmp_path, tiny_pipe):
    """5: a folder saved with only tokenizer.json (as CLIPTokenizerFast saves it) loads, and its
    BPE gives transformers' ids."""
    import numpy as np
    import transformers

    from mobilegen.checkpoints.pipeline_folder import tokenizer_bpe, tokenizer_spec
    from mobilegen.recipe import load_any_recipe
    from mobilegen.sampling.tokenizer import tokenize, tokenizer_from

    shutil.copytree(tiny_pipe, tmp_path / "pipe")
    tok = tmp_path / "pipe" / "tokenizer"
    fast = transformers.CLIPTokenizerFast.from_pretrained(tok)
    shutil.rmtree(tok)
    fast.save_pretrained(tok)
    for name in ("vocab.json", "merges.txt"):
        (tok / name).unlink(missing_ok=True)
    assert (tok / "tokenizer.json").is_file()
    (tmp_path / "r.toml").write_text(PIPE_RECIPE)
    load_any_recipe(tmp_path / "r.toml")  # refused before: "missing vocab.json"
    spec = tokenizer_spec(tok, 77)
    ours = tokenize(tokenizer_from(*tokenizer_bpe(tok), spec), ["a photo of the cat", "dog"])
    ref = fast(["a photo of the cat", "dog"], padding="max_length", max_length=77,
               truncation=True).input_ids
    np.testing.assert_array_equal(ours, np.array(ref))


def test_model_index_path_is_taken_for_its_folder(tmp_path, tiny_pipe):  # 15
    from mobilegen.recipe import load_any_recipe

    shutil.copytree(tiny_pipe, tmp_path / "sd")
    (tmp_path / "r.toml").write_text(PIPE_RECIPE.replace('"pipe"', '"sd/model_index.json"'))
    assert load_any_recipe(tmp_path / "r.toml").diffusers == (tmp_path / "sd").resolve()


@pytest.mark.parametrize(("key", "value", "message"), [
    ("fixed_batch", "1000000000", "key 'fixed_batch'"),
    ("allow_cpu_fallback", '"yes"', "key 'allow_cpu_fallback': Input should be a valid boolean"),
])
def test_bad_qnn_profile_values(tmp_path, tiny_ckpt, monkeypatch, key, value, message):  # 10
    from mobilegen.targets import profile as profile_mod

    profiles = tmp_path / "profiles"
    shutil.copytree(profile_mod.PROFILES_DIR, profiles)
    path = profiles / "snapdragon-8gen2-htp.toml"
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith(key)]
    path.write_text("\n".join([*lines, f"{key} = {value}"]) + "\n")
    monkeypatch.setattr(profile_mod, "PROFILES_DIR", profiles)
    recipe = write_recipe(tmp_path / "r.toml", tiny_ckpt)
    recipe.write_text(recipe.read_text().replace('"ort-mobile-cpu"', '"snapdragon-8gen2-htp"'))
    result = runner.invoke(app, ["export", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    line = one_line(result)
    assert message in line and "snapdragon-8gen2-htp.toml" in line, line
    assert not (tmp_path / "out").exists()


def test_single_recipe_without_targets(tmp_path, tiny_ckpt):  # 11
    recipe = write_recipe(tmp_path / "r.toml", tiny_ckpt)
    recipe.write_text(recipe.read_text().replace('targets = ["ort-mobile-cpu"]', "targets = []"))
    result = runner.invoke(app, ["export", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "key 'targets'" in one_line(result)
    assert not (tmp_path / "out").exists()


# `sample` on a text-to-image export (one shared export, conftest.sd_prompt_export): a tampered
# shipped file or manifest value is one line and exit 1; nothing is written.
def _export_copy(sd_prompt_export: Path, tmp: Path) -> Path:
    shutil.copytree(sd_prompt_export / "out", tmp / "out", symlinks=True)
    return tmp / "out"


def _manifest_edit(fn):
    def edit(out: Path) -> None:
        m = json.loads((out / "manifest.json").read_text())
        fn(m["chain"])
        (out / "manifest.json").write_text(json.dumps(m))  # NaN stays NaN (allow_nan)
    return edit


def _tamper_scheduler(out: Path) -> None:
    path = out / "scheduler" / "scheduler_config.json"
    path.write_text(path.read_text().replace("0.012", "0.9"))


SAMPLE_MANIFESTS = [
    ("2-scheduler-tampered", _tamper_scheduler, "scheduler_config.json: sha256 differs"),
    ("3-num-images-1000", _manifest_edit(lambda c: c["scheduler"].update(num_images=1000)),
     "key 'chain.scheduler.num_images' must be an integer in [1, 256], found 1000"),
    ("3-max-length-1e12", _manifest_edit(lambda c: c["tokenizer"].update(max_length=10**12)),
     "key 'chain.tokenizer.max_length'"),
    ("3-pad-id-1e6", _manifest_edit(lambda c: c["tokenizer"]["ids"].update(pad=10**6)),
     "key 'chain.tokenizer.ids.pad'"),
    ("3-train-timesteps-1e12", _manifest_edit(
        lambda c: c["scheduler"]["config"].update(num_train_timesteps=10**12)),
     "key 'num_train_timesteps' must be in [1, 100000]"),
    ("3-beta-schedule-cosine", _manifest_edit(
        lambda c: c["scheduler"]["config"].update(beta_schedule="cosine")),
     "key 'beta_schedule' = 'cosine' is not supported"),
    ("3-guidance-nan", _manifest_edit(
        lambda c: c["scheduler"].update(guidance_scale=float("nan"))),
     "key 'chain.scheduler.guidance_scale' must be a finite number in [0, 1000], found nan"),
]


@pytest.mark.parametrize(("case", "edit", "message"), SAMPLE_MANIFESTS,
                         ids=[c[0] for c in SAMPLE_MANIFESTS])
def test_bad_text_to_image_exports(tmp_path, sd_prompt_export, case, edit, message):
    out = _export_copy(sd_prompt_export, tmp_path)
    edit(out)
    png = tmp_path / "s.png"
    result = runner.invoke(app, ["sample", str(out), "--png", str(png)])
    assert result.exit_code == 1, result.output
    assert message in one_line(result), result.stderr
    assert not png.exists() and not list(tmp_path.glob(".s.png*"))


@pytest.mark.parametrize(("args", "message"), [
    (["--seed", "-1"], "--seed must be in [0, 2**63 - 1], found -1"),  # 14
    (["--steps", "1000"], "--steps 1000: 1000 dpm++2m steps repeat timestep"),  # 9
])
def test_sample_usage_errors(tmp_path, sd_prompt_export, args, message):
    png = tmp_path / "s.png"
    result = runner.invoke(app, ["sample", str(sd_prompt_export / "out"), "--png", str(png),
                                 *args])
    assert result.exit_code == 2 and message in one_line(result)
    assert not png.exists()


def test_sample_png_onto_a_file_mobilegen_did_not_write(tmp_path, sd_prompt_export):  # 14
    png = tmp_path / "holiday.png"
    png.write_bytes(b"my photo")
    out = str(sd_prompt_export / "out")
    result = runner.invoke(app, ["sample", out, "--png", str(png)])
    assert result.exit_code == 1 and "give --force to replace it" in one_line(result)
    assert png.read_bytes() == b"my photo"
    forced = runner.invoke(app, ["sample", out, "--png", str(png), "--force", "--steps", "1"])
    assert forced.exit_code == 0, forced.output
    again = runner.invoke(app, ["sample", out, "--png", str(png), "--steps", "1"])  # ours now
    assert again.exit_code == 0, again.output


def test_out_inside_a_pipeline_export_component(tmp_path, sd_prompt_export, tiny_recipe):  # 4
    out = _export_copy(sd_prompt_export, tmp_path)
    before = sorted(p.name for p in (out / "unet").rglob("*"))
    result = runner.invoke(app, ["export", str(tiny_recipe), "--out", str(out / "unet")])
    assert result.exit_code == 1
    assert f"it is inside the mobilegen export {out}" in one_line(result)
    assert sorted(p.name for p in (out / "unet").rglob("*")) == before
    sampled = runner.invoke(app, ["sample", str(out), "--png", str(tmp_path / "s.png"),
                                  "--steps", "1"])
    assert sampled.exit_code == 0, sampled.output  # the pipeline export still verifies


def test_out_root_is_refused_by_its_marker(tiny_recipe):  # 16: without walking /
    result = runner.invoke(app, ["export", str(tiny_recipe), "--out", "/"])
    assert result.exit_code == 1
    assert "refusing to replace /: it has no valid .mobilegen marker" in one_line(result)


@pytest.mark.parametrize(("args", "message"), [  # 12: options checked before the study
    (["--target-psnr-db", "-5"], "--target-psnr-db must be in (0, 200] dB, found -5.0"),
    (["--target-psnr-db", "nan"], "--target-psnr-db must be in (0, 200] dB, found nan"),
    (["--target-psnr-db", "nan", "--png", "x.png"], "--target-psnr-db must be in"),
    (["--png", "."], "--png .: is a folder"),
])
def test_sensitivity_options(tiny_recipe, args, message):
    result = runner.invoke(app, ["sensitivity", str(tiny_recipe), *args])
    assert result.exit_code == 2 and message in one_line(result)


def _tamper_report(fn):
    def edit(folder: Path) -> None:
        report = json.loads((folder / "report.json").read_text())
        fn(report["artifacts"][0])
        (folder / "report.json").write_text(json.dumps(report))
    return edit


@pytest.mark.parametrize(("edit", "message"), [  # 13
    (_tamper_report(lambda a: a.pop("target")), "missing key 'artifacts.0.target'"),
    (_tamper_report(lambda a: a["latency"].update(median_ms="fast")),
     "key 'artifacts.0.latency.median_ms' must be a number, found 'fast'"),
], ids=["missing-target", "string-median-ms"])
def test_bench_on_a_tampered_report(tmp_path, sd_prompt_export, edit, message):
    shutil.copytree(sd_prompt_export / "out" / "unet", tmp_path / "unet")
    edit(tmp_path / "unet")
    result = runner.invoke(app, ["bench", str(tmp_path / "unet")])
    assert result.exit_code == 1 and message in one_line(result)


@pytest.mark.parametrize("command", ["bench", "report"])
def test_report_and_bench_on_a_pipeline_export(sd_prompt_export, command):  # 13
    out = sd_prompt_export / "out"
    before = (out / "report.md").read_bytes()
    result = runner.invoke(app, [command, str(out)])
    assert result.exit_code == 1
    line = one_line(result)
    assert "a pipeline export; report and bench take a single export" in line
    assert str(out / "unet") in line
    assert (out / "report.md").read_bytes() == before


@pytest.mark.parametrize("jobs", ["0", "-1"])
def test_export_jobs_below_one(tiny_recipe, tmp_path, jobs):  # 15
    result = runner.invoke(app, ["export", str(tiny_recipe), "-j", jobs, "--out",
                                 str(tmp_path / "out")])
    assert result.exit_code == 2 and f"--jobs must be >= 1, found {jobs}" in one_line(result)


def test_export_a_diffusers_folder_says_how_to_write_the_recipe(tmp_path, tiny_pipe):  # 15
    result = runner.invoke(app, ["export", str(tiny_pipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    line = one_line(result)
    assert "a diffusers pipeline folder, not a recipe" in line
    assert f'diffusers = "{tiny_pipe}"' in line
    assert not (tmp_path / "out").exists()


def test_native_stdout_goes_to_stderr_under_json(tmp_path):  # 14: the QNN EP's C++ log line
    """What a runtime writes to file descriptor 1 (onnxruntime-qnn's logger does) while
    `sample --json` works lands on stderr; stdout holds the JSON document alone."""
    import subprocess
    import sys

    code = ("import os, json\n"
            "from mobilegen.cli.sample_cmd import native_stdout_to_stderr\n"
            "with native_stdout_to_stderr():\n"
            "    os.write(1, b'QnnDsp <W> native log line\\n')\n"
            "    print('python print')\n"
            "print(json.dumps({'ok': True}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert json.loads(done.stdout) == {"ok": True}
    assert "QnnDsp <W> native log line" in done.stderr and "python print" in done.stderr


def test_validate_batch_one_exports_a_stoic(tmp_path, tiny_ckpt):  # 17: what a phone runs
    recipe = write_recipe(tmp_path / "r.toml", tiny_ckpt)
    recipe.write_text(recipe.read_text().replace("[validate]\n", "[validate]\nbatch = 1\n"))
    out = tmp_path / "out"
    result = runner.invoke(app, ["export", str(recipe), "--out", str(out), "--json",
                                 "--no-cache"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["status"] == "ok" and all(a["parity"]["psnr_db"] is None
                                         or a["parity"]["psnr_db"] > 60 for a in doc["artifacts"])


def test_batch_one_capture_of_a_tiny_unet_runs_at_any_batch():  # 17: unet-sd15's batch 1
    from mobilegen.export.run import capture
    from mobilegen.models.unet import EfficientUNet, UNetConfig

    cfg = UNetConfig(block_out_channels=(16, 32), down_resnets=(1, 1), down_attentions=(0, 1),
                     mid_resnets=1, mid_attentions=1, up_resnets=(2, 2), up_attentions=(2, 0),
                     cross_attention_dim=16, attention_head_dim=2, norm_num_groups=8,
                     sample_size=8, context_len=8)
    model = EfficientUNet(cfg).eval()
    program = capture(model, model.example_inputs(1))  # was "Constraints violated (batch)"
    for b in (1, 3):
        x = model.example_inputs(b)
        torch.testing.assert_close(program.module()(*x), model(*x), rtol=1e-4, atol=1e-5)
