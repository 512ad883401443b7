"""Recipe validation: every error names the field, its YAML line and what is allowed."""

from __future__ import annotations

import pytest

from modelpress.errors import ConfigError
from modelpress.pipeline.recipe import load_recipe, recipe_from_text

GOOD = """\
name: ok
model: python:modelpress.testing:Conv1dNet
data: mnist1d
stages:
  - kind: export
    opset: 17
"""


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        recipe_from_text(text, source="r.yaml")
    return str(info.value)


def test_valid_recipe_loads_with_defaults():
    recipe = recipe_from_text(GOOD)
    assert recipe.name == "ok"
    assert recipe.stages == [{"kind": "export", "opset": 17}]
    assert recipe.target.backend == "onnxruntime" and recipe.target.threads == 2
    assert recipe.budget.max_accuracy_drop == 0.01
    assert recipe.gate.max_rounds == 3


def test_bad_enum_names_field_line_and_allowed_values():
    msg = _error(GOOD.replace("stages:", "target:\n  backend: tflite\nstages:"))
    assert "r.yaml line 5: `target.backend`" in msg
    assert "'onnxruntime', 'openvino' or 'tensorrt'" in msg and "'tflite'" in msg


def test_unknown_field_lists_allowed_fields():
    msg = _error(GOOD.replace("stages:", "budget:\n  max_acuracy_drop: 0.01\nstages:"))
    assert "r.yaml line 5: `budget.max_acuracy_drop`: unknown field" in msg
    assert "max_accuracy_drop" in msg  # the allowed names are listed


def test_stage_field_is_checked_by_the_verb_config_with_its_line():
    msg = _error(GOOD.replace("opset: 17", "opset: 99"))
    assert "r.yaml line 6: `stages[0].opset`" in msg and "less than or equal to 23" in msg


def test_unknown_stage_kind_lists_kinds():
    msg = _error(GOOD + "  - kind: sparsify\n")
    assert "r.yaml line 7: `stages[1].kind`: unknown stage kind" in msg
    for kind in ("finetune", "prune", "distill", "quantize", "export"):
        assert kind in msg


def test_every_problem_is_reported_at_once():
    msg = _error(GOOD.replace("name: ok", "name: 'bad name!'").replace("opset: 17", "opset: 5") + "seed: x\n")
    assert "3 problems" in msg
    assert "`name`" in msg and "`stages[0].opset`" in msg and "`seed`" in msg


def test_missing_required_fields_are_named():
    msg = _error("name: x\nstages: [{kind: export}]\n")
    assert "`model`: Field required" in msg and "`data`: Field required" in msg


def test_no_stages_and_no_preset_is_an_error():
    msg = _error("name: x\nmodel: m\ndata: d\n")
    assert "`stages`" in msg and "preset" in msg


def test_unknown_preset_lists_presets():
    msg = _error("name: x\nmodel: m\ndata: d\npreset: phone\n")
    assert "line 4: `preset`" in msg and "mobile, edge, server" in msg


def test_yaml_syntax_error_names_line():
    msg = _error("name: x\nmodel: [unclosed\ndata: d\n")
    assert "r.yaml line" in msg and "not valid YAML" in msg


def test_load_recipe_from_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(GOOD.replace("opset: 17", "opset: 3"))
    with pytest.raises(ConfigError, match=rf"{path} line 6: `stages\[0\].opset`"):
        load_recipe(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")


def test_hashes_are_stable_and_change_with_the_baseline():
    a, b = recipe_from_text(GOOD), recipe_from_text(GOOD)
    assert a.base_hash() == b.base_hash()
    assert recipe_from_text(GOOD + "seed: 1\n").base_hash() != a.base_hash()
