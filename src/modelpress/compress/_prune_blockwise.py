"""Block-by-block structured pruning for models Torch-Pruning cannot trace as a whole.

Some architectures break Torch-Pruning's whole-model dependency graph: ShuffleNetV2's
channel shuffle (a reshape, a transpose and a reshape back) permutes channels in a way its
index mappings cannot express. Their blocks are still ordinary conv/BN chains. Here each
block that Torch-Pruning *can* trace gets its own pruner, on the input the block saw in one
forward pass, with the block's output layer protected so that its output width, and so the
rest of the model, stays as it was. Only channels inside a block are removed, and each
block is ranked on its own (no global ranking across blocks).

Every candidate, the whole model first, is pruned on a copy and run on its input before the
real pruner is built (``trial_prune``): Torch-Pruning does not always fail loudly on a
coupling it mis-traces, and a model found broken half-way through pruning in place cannot
be given back. A block whose output shapes change, or that fails to run, is not pruned as
a unit, and its children are tried instead.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from modelpress.compress import _prune_structured
from modelpress.errors import ModelpressError

logger = logging.getLogger(__name__)

_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)
# what Torch-Pruning raises on structures it cannot trace, plus what a wrongly pruned block raises when run
TRACE_ERRORS = (ZeroDivisionError, TypeError, IndexError, RecursionError, RuntimeError, ValueError, KeyError)


class BlockwisePruner:
    """Several Torch-Pruning pruners, one per traceable block, stepped together."""

    def __init__(self, pruners: list[Any], blocks: list[str]) -> None:
        self.pruners = pruners
        self.blocks = blocks

    @property
    def num_heads(self) -> dict[nn.Module, int]:
        return {m: h for p in self.pruners for m, h in p.num_heads.items()}

    def step(self, interactive: bool = False) -> Iterator[Any] | None:
        """Yield every block's pruning groups (``interactive``), or prune them all now."""
        groups = (group for pruner in self.pruners for group in pruner.step(interactive=True))
        if interactive:
            return groups
        for group in groups:
            group.prune()
        return None


def blockwise_pruner(
    tp: Any, model: nn.Module, example_inputs: Any, plan: _prune_structured.PrunerPlan, kwargs: dict[str, Any],
) -> BlockwisePruner | None:
    """Return a pruner over the model's largest blocks that prune cleanly alone, or None if there are none."""
    calls = _record_block_inputs(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    ignored = set(kwargs.get("ignored_layers", ()))
    pruners: list[Any] = []
    blocks: list[str] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            inputs = calls.get(child)
            if inputs is None or not any(isinstance(m, _LAYERS) and m not in ignored for m in child.modules()):
                continue  # never ran, ran more than once (shared weights), or nothing left to prune
            pruner = _block_pruner(tp, child, inputs, plan, kwargs)
            if pruner is None:
                visit(child)
            else:
                pruners.append(pruner)
                blocks.append(names[child])

    visit(model)
    if not pruners:
        return None
    logger.info("pruning %d blocks one by one: %s", len(blocks), ", ".join(blocks))
    return BlockwisePruner(pruners, blocks)


def _record_block_inputs(model: nn.Module, example_inputs: Any) -> dict[nn.Module, tuple[torch.Tensor, ...]]:
    """Return each module's positional tensor inputs from one forward pass (modules run once only)."""
    seen: dict[nn.Module, tuple[torch.Tensor, ...] | None] = {}

    def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        usable = not kwargs and args and all(isinstance(a, torch.Tensor) for a in args)
        seen[module] = None if module in seen or not usable else tuple(a.detach().clone() for a in args)

    hooks = [m.register_forward_pre_hook(record, with_kwargs=True) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            _prune_structured.call_model(model, example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return {m: args for m, args in seen.items() if args is not None}


def _block_pruner(
    tp: Any, block: nn.Module, inputs: tuple[torch.Tensor, ...], plan: _prune_structured.PrunerPlan,
    kwargs: dict[str, Any],
) -> Any | None:
    """Return a pruner for ``block`` if pruning it alone removes channels and keeps its output shape."""
    try:
        output_layer = _prune_structured.find_classifier(block, inputs)  # the last layer run sets the output width
        if trial_prune(tp, block, inputs, plan, kwargs, keep=output_layer) == 0:
            return None
        same = {m: m for m in block.modules()}
        return _block_meta_pruner(tp, block, inputs, plan, kwargs, same, output_layer)
    except ModelpressError:
        raise
    except TRACE_ERRORS as err:
        logger.debug("block %s cannot be pruned alone: %s: %s", type(block).__name__, type(err).__name__, err)
        return None


def trial_prune(
    tp: Any, module: nn.Module, inputs: Any, plan: _prune_structured.PrunerPlan, kwargs: dict[str, Any],
    *, keep: nn.Module | None = None,
) -> int:
    """Prune a copy of ``module`` as ``plan`` says, run it, and return how many parameters went.

    Raises:
        RuntimeError: the pruned copy's outputs have other shapes than the original's (or the
            errors of a copy that no longer runs): Torch-Pruning mis-traced a coupling.
    """
    with torch.no_grad():
        want = _shapes(_prune_structured.call_model(module, inputs))
    trial = copy.deepcopy(module)
    to_trial = dict(zip(module.modules(), trial.modules(), strict=True))
    # magnitude importance: Taylor needs gradients, and the widths kept come out the same
    trial_plan = dataclasses.replace(plan, importance="l1" if plan.importance == "taylor" else plan.importance, steps=1)
    before = sum(p.numel() for p in trial.parameters())
    _block_meta_pruner(tp, trial, inputs, trial_plan, kwargs, to_trial, to_trial.get(keep)).step()
    with torch.no_grad():
        got = _shapes(_prune_structured.call_model(trial, inputs))
    if got != want:
        raise RuntimeError(f"pruning changes the output shapes from {want} to {got}")
    return before - sum(p.numel() for p in trial.parameters())


def _block_meta_pruner(
    tp: Any, block: nn.Module, inputs: Any, plan: _prune_structured.PrunerPlan,
    kwargs: dict[str, Any], mapping: dict[nn.Module, nn.Module], output_layer: nn.Module | None,
) -> Any:
    """Build Torch-Pruning's pruner on a block (or a copy), with the model-level kwargs mapped onto its modules."""
    block_kwargs = dict(kwargs)
    block_kwargs["ignored_layers"] = [mapping[m] for m in kwargs.get("ignored_layers", ()) if m in mapping]
    if output_layer is not None:
        block_kwargs["ignored_layers"].append(output_layer)
    for key in ("pruning_ratio_dict", "num_heads"):
        if key in kwargs:
            block_kwargs[key] = {mapping[m]: v for m, v in kwargs[key].items() if m in mapping}
    return _prune_structured.meta_pruner(tp, block, inputs, plan, block_kwargs)


def _shapes(output: Any) -> list[tuple[int, ...]]:
    if isinstance(output, torch.Tensor):
        return [tuple(output.shape)]
    if isinstance(output, (tuple, list)):
        return [s for item in output for s in _shapes(item)]
    if isinstance(output, dict):
        return [s for item in output.values() for s in _shapes(item)]
    return []
