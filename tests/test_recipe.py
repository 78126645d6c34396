from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import write_recipe
from mobilegen.errors import RecipeError
from mobilegen.recipe import list_recipes, load_any_recipe, load_recipe
from mobilegen.targets.profile import list_target_names, load_target


def test_shipped_recipes_and_targets_validate():
    assert list_recipes(), "no shipped recipes"
    for path in list_recipes():
        load_any_recipe(path)  # pipeline recipes load their component recipes too
    for name in list_target_names():
        load_target(name)


def test_checkpoint_is_relative_to_the_recipe(tmp_path, tiny_ckpt):
    recipe = write_recipe(tmp_path / "r.toml", Path(tiny_ckpt.name))
    assert load_recipe(recipe).checkpoint_path() == tiny_ckpt.resolve()


@pytest.mark.parametrize(
    "mutation, message",
    [
        (("[model]", "[model]\ncheckpont = 'x'"), "unknown key 'model.checkpont'"),
        (("[sampler]", "[sampler]\nkind = 'heun'"), "key 'sampler.kind'"),
        (("steps = 4", "steps = 'four'"), "key 'sampler.steps'"),
        (('"ort-mobile-cpu"', '"ort-mobil-cpu"'), "unknown target 'ort-mobil-cpu'"),
        (('family = "stoic"', 'family = "stoik"'), "unknown family 'stoik'"),
        (("[gates]", "[gates]\nmin_psnr = 3"), "unknown key 'gates.min_psnr'"),
        (("targets = [", "passes = ['int9']\ntargets = ["), "unknown pass 'int9'"),
        (('name = "tiny"', 'name = "../escape"'), "key 'name'"),
    ],
)
def test_bad_recipes_name_file_and_key(tmp_path, tiny_ckpt, mutation, message):
    path = write_recipe(tmp_path / "r.toml", tiny_ckpt)
    text = path.read_text()
    assert mutation[0] in text
    path.write_text(text.replace(mutation[0], mutation[1], 1))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(RecipeError, match="file not found"):
        load_recipe(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(bad)


def test_random_init_needs_a_variant_or_config(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('name = "r"\n[model]\nfamily = "stoic"\ninit = "random"\n')
    with pytest.raises(RecipeError, match=r"needs model\.variant"):
        load_recipe(path)


@settings(max_examples=40, deadline=None)
@given(steps=st.integers(-5, 2000), scale=st.floats(-3, 30, allow_nan=False),
       kind=st.sampled_from(["dpm++2m", "ddim", "euler-maruyama", "plms", ""]))
def test_sampler_values_validate_or_fail_precisely(tmp_path_factory, steps, scale, kind):
    tmp = tmp_path_factory.mktemp("r")
    path = tmp / "r.toml"
    path.write_text(
        f'name = "r"\n[model]\nfamily = "stoic"\ninit = "random"\nvariant = "stoic-tiny"\n'
        f'[sampler]\nsteps = {steps}\nguidance_scale = {scale!r}\nkind = "{kind}"\n'
    )
    valid = 1 <= steps <= 1000 and scale >= 0 and kind in ("dpm++2m", "ddim", "euler-maruyama")
    if valid:
        r = load_recipe(path)
        assert (r.sampler.steps, r.sampler.kind) == (steps, kind)
    else:
        with pytest.raises(RecipeError, match=r"key 'sampler\.(steps|guidance_scale|kind)'"):
            load_recipe(path)


def test_single_model_commands_name_a_pipeline_recipe_for_what_it_is():
    with pytest.raises(RecipeError, match=r"a pipeline recipe \(\[pipeline\]\)"):
        load_recipe(next(p for p in list_recipes() if p.name == "sd-tiny-pipeline.toml"))
