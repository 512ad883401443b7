"""Model profiles: MACs, parameters and activation sizes from torch and from ONNX agree with hand counts."""

from __future__ import annotations

import pytest
import torch

from modelpress.advise.profile import profile_module, profile_onnx
from modelpress.errors import ConfigError

# TinyConvNet on (1, 3, 16, 16): stem 3->16 3x3 over 16x16 = 16*256*27 = 110_592 MACs,
# two 16->16 3x3 convs = 16*256*144 = 589_824 each, fc 16->10 = 160.
TINY_CONV_MACS = 110_592 + 2 * 589_824 + 160


def test_convnet_macs_params_and_activations_by_hand(tiny_convnet):
    p = profile_module(tiny_convnet, (torch.randn(1, 3, 16, 16),))
    assert p.macs == TINY_CONV_MACS
    assert p.params == sum(x.numel() for x in tiny_convnet.parameters())
    stem = next(layer for layer in p.layers if layer.name == "stem.0")
    assert (stem.macs, stem.params, stem.activations) == (110_592, 432, 3 * 256 + 16 * 256)
    assert not any(layer.kind.startswith("BatchNorm") for layer in p.layers)  # folded into the conv
    assert p.peak_activations == 2 * 16 * 256


def test_mlp_macs(tiny_mlp):
    p = profile_module(tiny_mlp, (torch.randn(1, 64),))
    assert p.macs == 64 * 32 + 32 * 32 + 32 * 10
    assert [layer.macs for layer in p.layers] == [2048, 1024, 320]


def test_transformer_functional_macs_are_kept(tiny_transformer):
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.randint(0, 100, (1, 16))
    with FlopCounterMode(display=False) as counter:
        tiny_transformer(ids)
    p = profile_module(tiny_transformer, (ids,))
    assert p.macs == counter.get_total_flops() // 2 > 0


def test_batched_example_is_rejected(tiny_mlp):
    with pytest.raises(ConfigError, match="batch-1"):
        profile_module(tiny_mlp, (torch.randn(4, 64),))


def test_onnx_profile_matches_torch(tiny_convnet, tmp_path):
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(tiny_convnet, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False,
                      input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    from_torch = profile_module(tiny_convnet, (torch.randn(1, 3, 16, 16),))
    from_onnx = profile_onnx(path)
    assert from_onnx.macs == from_torch.macs == TINY_CONV_MACS
    assert from_onnx.activations == from_torch.activations
    assert [layer.macs for layer in from_onnx.layers] == [layer.macs for layer in from_torch.layers]


def test_onnx_without_matmuls_asks_for_a_checkpoint(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ConfigError, match="torch checkpoint"):
        profile_onnx(path)


def test_bench_count_macs_sees_the_transformer_fast_path(tiny_transformer):
    # count_macs once ran under no_grad, where the fused encoder kernel hid all but 128 MACs
    from torch.utils.flop_counter import FlopCounterMode

    from modelpress.bench.macs import count_macs

    ids = torch.randint(0, 100, (1, 16))
    with FlopCounterMode(display=False) as counter:
        tiny_transformer(ids)
    assert count_macs(tiny_transformer, (ids,)) == counter.get_total_flops() // 2 == 262_272
