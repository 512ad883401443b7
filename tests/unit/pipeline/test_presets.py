"""Presets expand into stages validated by the real verb configs; recipe stages override them."""

from __future__ import annotations

import pytest

from modelpress.errors import ConfigError
from modelpress.pipeline.recipe import recipe_from_text

HEAD = "name: p\nmodel: python:modelpress.testing:Conv1dNet\ndata: mnist1d\n"


def test_mobile_is_prune_half_finetune_static_int8():
    r = recipe_from_text(HEAD + "preset: mobile\n")
    assert [s["kind"] for s in r.stages] == ["prune", "finetune", "quantize"]
    prune, finetune, quant = r.stages
    assert prune["method"] == "structured" and prune["ratio"] == 0.5 and prune["importance"] == "l1"
    assert finetune["epochs"] == 8
    assert quant["mode"] == "static" and quant["sensitivity"] is True


def test_edge_is_distill_into_half_width_student_then_int8():
    r = recipe_from_text(HEAD + "preset: edge\n")
    assert [s["kind"] for s in r.stages] == ["distill", "quantize"]
    assert r.stages[0]["student_ratio"] == 0.5 and r.stages[0]["train"]["epochs"] == 8
    assert r.stages[1]["mode"] == "static"


def test_server_picks_the_fastest_of_int8_fp16_bf16():
    r = recipe_from_text(HEAD + "preset: server\n")
    assert r.stages == [{"kind": "quantize", "mode": "fastest", "candidates": ["static", "fp16", "bf16"], "float_layers": 0, "sensitivity": False}]


def test_recipe_stages_override_preset_fields_one_by_one():
    r = recipe_from_text(HEAD + "preset: mobile\nstages:\n  - kind: prune\n    ratio: 0.3\n  - kind: quantize\n    calibration: percentile\n")
    prune, finetune, quant = r.stages
    assert prune["ratio"] == 0.3 and prune["importance"] == "l1"  # overridden, kept
    assert finetune["epochs"] == 8
    assert quant["mode"] == "static" and quant["calibration"] == "percentile" and quant["sensitivity"] is True


def test_a_stage_the_preset_lacks_is_an_error_naming_its_line():
    with pytest.raises(ConfigError, match=r"r.yaml line 6: `stages\[0\].kind`: preset 'server' has stages quantize"):
        recipe_from_text(HEAD + "preset: server\nstages:\n  - kind: prune\n", source="r.yaml")


def test_override_errors_point_at_the_users_line():
    with pytest.raises(ConfigError) as info:
        recipe_from_text(HEAD + "preset: mobile\nstages:\n  - kind: prune\n    ratio: 1.5\n  - kind: quantize\n    mode: int4\n", source="r.yaml")
    msg = str(info.value)
    assert "r.yaml line 7: `stages[0].ratio`" in msg and "[0, 1)" in msg
    assert "r.yaml line 9: `stages[2].mode`" in msg and "'dynamic', 'static', 'qat', 'fp16', 'bf16' or 'fastest'" in msg


def test_verb_config_unknown_field_lists_the_verbs_fields():
    with pytest.raises(ConfigError) as info:
        recipe_from_text(HEAD + "stages:\n  - kind: finetune\n    epoch: 3\n", source="r.yaml")
    msg = str(info.value)
    assert "r.yaml line 6: `stages[0].epoch`: unknown field; allowed:" in msg and "epochs" in msg and "batch_size" in msg


@pytest.mark.parametrize("name", ["mnist1d-mobile", "digits-edge", "resnet18-server", "minilm-int8"])
def test_example_recipes_validate(name):
    from pathlib import Path

    from modelpress.pipeline.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[3] / "examples" / f"{name}.yaml")
    assert recipe.name == name and recipe.stages
