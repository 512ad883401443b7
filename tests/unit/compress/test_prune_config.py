"""Prune configs: validated at construction, errors name the field and the value."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from modelpress.compress.prune import (
    LatencyTarget,
    MacsTarget,
    PruneConfig,
    SemiStructuredConfig,
    UnstructuredPruneConfig,
    prune_,
)
from modelpress.errors import BackendError, ConfigError


@pytest.mark.parametrize(
    ("kwargs", "field", "got"),
    [
        ({"ratio": 1.2}, "`ratio`", "1.2"),
        ({"ratio": -0.1}, "`ratio`", "-0.1"),
        ({"target": {"kind": "ratio", "ratio": 1.0}}, "`target.ratio`", "1.0"),
        ({"head_ratio": 2}, "`head_ratio`", "2"),
        ({"importance": "l3"}, "`importance`", "'l3'"),
        ({"round_to": 0}, "`round_to`", "0"),
        ({"steps": 0}, "`steps`", "0"),
        ({"target": {"kind": "latency", "max_ms": -1}}, "`target.max_ms`", "-1"),
        ({"target": {"kind": "macs"}}, "`target`", "macs"),
        ({"ratoi": 0.5}, "`ratoi`", "0.5"),
    ],
)
def test_bad_values_raise_config_error_naming_the_field(kwargs, field, got):
    with pytest.raises(ConfigError) as info:
        PruneConfig(**kwargs)
    message = str(info.value)
    assert field in message and got in message and "of prune" in message


def test_ratio_message_says_the_range():
    with pytest.raises(ConfigError, match=r"`ratio` of prune: must be in \[0, 1\); got 1.2"):
        PruneConfig(ratio=1.2)


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        UnstructuredPruneConfig(sparsity=1.5)


@pytest.mark.parametrize(
    "config",
    [
        PruneConfig(ratio=0.3, importance="taylor", scope="global", round_to=8, ignore=("fc",), steps=3),
        PruneConfig(target=MacsTarget(fraction=0.5)),
        PruneConfig(target=LatencyTarget(max_ms=3.5), round_to="auto"),
        UnstructuredPruneConfig(sparsity=0.9),
        SemiStructuredConfig(),
    ],
)
def test_round_trip_through_json(config):
    again = type(config).model_validate(json.loads(config.model_dump_json()))
    assert again == config


def test_ratio_shorthand_becomes_a_ratio_target():
    config = PruneConfig(ratio=0.25)
    assert config.target.kind == "ratio" and config.target.ratio == 0.25
    assert PruneConfig().target.ratio == 0.5


def test_ratio_and_a_different_target_conflict():
    with pytest.raises(ConfigError, match="either ratio or target"):
        PruneConfig(ratio=0.5, target={"kind": "macs", "fraction": 0.5})


def test_unknown_layer_name_is_reported_with_examples(tiny_convnet):
    with pytest.raises(ConfigError) as info:
        prune_(tiny_convnet, PruneConfig(ratio=0.5, ignore=("stem.0", "blokc.0")), example_inputs=torch.randn(1, 3, 16, 16))
    message = str(info.value)
    assert "`ignore`" in message and "'blokc.0'" in message and "stem.0" not in message.split("exist:")[1].split(";")[0]
    assert "block.0" in message  # suggests real names


def test_bn_gamma_without_batchnorm_is_refused(tiny_mlp):
    with pytest.raises(ConfigError, match="no BatchNorm"):
        prune_(tiny_mlp, PruneConfig(importance="bn_gamma"), example_inputs=torch.randn(1, 64))


def test_taylor_without_data_is_refused(tiny_mlp):
    with pytest.raises(ConfigError, match="needs data"):
        prune_(tiny_mlp, PruneConfig(importance="taylor"), example_inputs=torch.randn(1, 64))


def test_head_ratio_on_packed_attention_is_refused(tiny_transformer):
    with pytest.raises(ConfigError, match="head_ratio"):
        prune_(tiny_transformer, PruneConfig(head_ratio=0.5), example_inputs=torch.randint(0, 100, (1, 8)))


def test_wrong_config_type_is_refused(tiny_mlp):
    with pytest.raises(ConfigError, match="PruneConfig"):
        prune_(tiny_mlp, {"ratio": 0.5}, example_inputs=torch.randn(1, 64))  # type: ignore[arg-type]


def test_semi_structured_needs_cuda(tiny_mlp):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the GPU test covers this path")
    with pytest.raises(BackendError, match="CUDA"):
        prune_(tiny_mlp, SemiStructuredConfig(), example_inputs=torch.randn(1, 64))


def test_failed_config_leaves_the_model_untouched(tiny_convnet):
    before = {k: v.clone() for k, v in tiny_convnet.state_dict().items()}
    with pytest.raises(ConfigError):
        prune_(tiny_convnet, PruneConfig(ignore=("nope",)), example_inputs=torch.randn(1, 3, 16, 16))
    after = tiny_convnet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(tiny_convnet.stem[0], nn.Conv2d) and tiny_convnet.stem[0].out_channels == 16
