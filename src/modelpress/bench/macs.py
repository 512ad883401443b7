"""Count multiply-accumulates with PyTorch's flop counter."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


def count_macs(module: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> int:
    """Return the MACs of one forward pass on ``example_inputs`` (flops / 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(*example_inputs)
    return counter.get_total_flops() // 2


def count_params(module: nn.Module) -> int:
    """Return the number of parameters."""
    return sum(p.numel() for p in module.parameters())
