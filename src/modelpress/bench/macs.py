"""Count multiply-accumulates with PyTorch's flop counter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


def count_macs_by_module(module: nn.Module, example_inputs: Any) -> dict[str, int]:
    """Return the MACs of one forward pass per submodule name ("" is the whole model).

    Args:
        module: the model; its training flag is left as it was.
        example_inputs: a tensor, a tuple/list of positional tensors, or a mapping of
            keyword tensors (as a tokenizer returns them).

    Returns:
        MACs (flops / 2) counted by ``torch.utils.flop_counter.FlopCounterMode``
        (matmul, conv, attention kernels); element-wise ops are not counted, as is
        the field's habit.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    # grad stays enabled on purpose: under no_grad, eval-mode nn.TransformerEncoderLayer
    # takes a fused fast path that the flop counter cannot see
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        if isinstance(example_inputs, Mapping):
            module(**example_inputs)
        elif isinstance(example_inputs, (tuple, list)):
            module(*example_inputs)
        else:
            module(example_inputs)
    prefix = type(module).__name__ + "."
    out = {"": int(counter.get_total_flops()) // 2}
    for name, ops in counter.get_flop_counts().items():
        if name.startswith(prefix):
            out[name[len(prefix):]] = sum(ops.values()) // 2
    return out


def count_macs(module: nn.Module, example_inputs: Any) -> int:
    """Return the MACs (flops / 2) of one forward pass of ``module``; see :func:`count_macs_by_module`."""
    return count_macs_by_module(module, example_inputs)[""]


def count_params(module: nn.Module) -> int:
    """Return the number of parameters."""
    return sum(p.numel() for p in module.parameters())
