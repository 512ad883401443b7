"""Count multiply-accumulates with PyTorch's flop counter."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


def count_macs_by_module(module: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> dict[str, int]:
    """Return the MACs of one forward pass per submodule name ("" is the whole model; flops / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    # grad mode stays on: under no_grad, nn.TransformerEncoderLayer takes a fused fast
    # path whose kernel the counter does not see (TinyTransformer counted 128 of 262,272 MACs)
    with counter:
        module(*example_inputs)
    prefix = type(module).__name__ + "."
    out = {"": counter.get_total_flops() // 2}
    for name, ops in counter.get_flop_counts().items():
        if name.startswith(prefix):
            out[name[len(prefix):]] = sum(ops.values()) // 2
    return out


def count_macs(module: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> int:
    """Return the MACs of one forward pass on ``example_inputs`` (flops / 2)."""
    return count_macs_by_module(module, example_inputs)[""]


def count_params(module: nn.Module) -> int:
    """Return the number of parameters."""
    return sum(p.numel() for p in module.parameters())
