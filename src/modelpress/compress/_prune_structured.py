"""Structured pruning: a thin wrapper over Torch-Pruning's dependency graph.

Torch-Pruning traces the model once and groups every layer whose channels are
coupled (residual adds, concatenations, depthwise/grouped convs, BatchNorm,
Linear after Flatten, attention q/k/v). We only decide *what* to prune (the
ratio, the importance, the protected layers, the transformer parts) and read
back *what changed* for the report and the checkpoint's ``attrs``.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modelpress.errors import ConfigError, ModelpressError

logger = logging.getLogger(__name__)

# Module attributes that Torch-Pruning rewrites and a checkpoint rebuild must restore.
_SHAPE_ATTRS: dict[type[nn.Module], tuple[str, ...]] = {
    nn.modules.conv._ConvNd: ("in_channels", "out_channels", "groups"),
    nn.Linear: ("in_features", "out_features"),
    nn.modules.batchnorm._BatchNorm: ("num_features",),
    nn.GroupNorm: ("num_channels", "num_groups"),
    nn.LayerNorm: ("normalized_shape",),
    nn.Embedding: ("num_embeddings", "embedding_dim"),
    nn.MultiheadAttention: ("embed_dim", "kdim", "vdim", "head_dim", "num_heads"),
}
_HEAD_ATTRS = ("num_attention_heads", "all_head_size", "attention_head_size")
_TOLD_BLOCKWISE: set[str] = set()


@dataclass(slots=True)
class TransformerParts:
    """The prunable parts of the transformer blocks found in a model."""

    ffn_up: list[nn.Module] = field(default_factory=list)      # FFN first Linear (its out width is the FFN width)
    attention: list[nn.Module] = field(default_factory=list)   # modules holding q/k/v Linears and a head count
    has_torch_mha: bool = False                                 # attention with packed q/k/v (no head removal)

    @property
    def found(self) -> bool:
        return bool(self.ffn_up or self.attention or self.has_torch_mha)


def find_transformer_parts(model: nn.Module) -> TransformerParts:
    """Find FFN up-projections and multi-head attention modules by their well-known layouts.

    Attention: nn.MultiheadAttention, BERT-style modules (query/key/value Linears and
    ``num_attention_heads``), and packed-qkv modules (an int ``num_heads``/``n_heads`` next
    to a Linear, as in Swin and MaxViT). FFNs: nn.TransformerEncoderLayer.linear1,
    ``intermediate.dense`` (BERT), ``fc1``/``fc2`` (timm), and any Sequential holding exactly
    two Linears that expand and project back (torchvision's MLPBlock).
    """
    parts = TransformerParts()
    packed_attention = False
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            parts.has_torch_mha = True
        if isinstance(module, nn.TransformerEncoderLayer | nn.TransformerDecoderLayer):
            parts.ffn_up.append(module.linear1)
        intermediate = getattr(module, "intermediate", None)
        if intermediate is not None and isinstance(getattr(intermediate, "dense", None), nn.Linear):
            parts.ffn_up.append(intermediate.dense)
        if hasattr(module, "num_attention_heads") and all(
            isinstance(getattr(module, n, None), nn.Linear) for n in ("query", "key", "value")
        ):
            parts.attention.append(module)
        elif any(isinstance(getattr(module, n, None), int) for n in ("num_heads", "n_heads")) and any(
            isinstance(c, nn.Linear) for c in module.children()
        ):
            packed_attention = True
        fc1, fc2 = getattr(module, "fc1", None), getattr(module, "fc2", None)
        if isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear) and _expands_and_returns(fc1, fc2):
            parts.ffn_up.append(fc1)
        if isinstance(module, nn.Sequential):
            linears = [c for c in module.children() if isinstance(c, nn.Linear)]
            if len(linears) == 2 and _expands_and_returns(*linears):
                parts.ffn_up.append(linears[0])
    parts.has_torch_mha = parts.has_torch_mha or packed_attention
    # FFN-shaped Sequentials are transformer FFNs only when the model has attention
    if not (parts.has_torch_mha or parts.attention):
        parts.ffn_up = []
    parts.ffn_up = list(dict.fromkeys(parts.ffn_up))
    return parts


def _expands_and_returns(up: nn.Linear, down: nn.Linear) -> bool:
    return up.out_features == down.in_features and down.out_features == up.in_features and up.out_features > up.in_features


def first_tensor(output: Any) -> torch.Tensor:
    """Return the first tensor in a model output (a tensor, tuple, dict or ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        values: Iterable[Any] = output.values()
    elif isinstance(output, (tuple, list)):
        values = output
    else:
        raise TypeError(f"cannot find a tensor in a model output of type {type(output).__name__}")
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"model output of type {type(output).__name__} holds no tensor")


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Run ``model`` on a tensor, a tuple of positional tensors or a mapping of keyword tensors."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def find_classifier(model: nn.Module, example_inputs: Any) -> nn.Module | None:
    """Return the last Linear/Conv executed in a forward pass (the layer whose outputs are the classes)."""
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
        for m in model.modules()
        if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)
    ]
    try:
        with torch.no_grad():
            call_model(model, example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return order[-1] if order else None


def resolve_modules(model: nn.Module, names: Iterable[str], *, field_name: str) -> list[nn.Module]:
    """Look up modules by dotted name; raise one ConfigError listing every unknown name."""
    by_name = dict(model.named_modules())
    missing = [n for n in names if n not in by_name]
    if missing:
        known = [n for n, m in by_name.items() if n and isinstance(m, nn.Linear | nn.modules.conv._ConvNd)]
        sample = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
        raise ConfigError(
            f"`{field_name}` of prune names layers that do not exist: {', '.join(map(repr, missing))}; "
            f"use dotted module names such as {sample}"
        )
    return [by_name[n] for n in names]


def snapshot_shapes(model: nn.Module) -> dict[str, tuple[str, int]]:
    """Return, per prunable layer, its kind and output width (channels, features, heads)."""
    shapes: dict[str, tuple[str, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            shapes[name] = ("conv", module.out_channels)
        elif isinstance(module, nn.Linear):
            shapes[name] = ("linear", module.out_features)
        elif isinstance(module, nn.MultiheadAttention):
            shapes[name] = ("attention_dim", module.embed_dim)
        if hasattr(module, "num_attention_heads") and isinstance(module.num_attention_heads, int):
            shapes[name + ".<heads>"] = ("heads", module.num_attention_heads)
    return shapes


def snapshot_attrs(model: nn.Module) -> dict[str, Any]:
    """Return the shape-defining attributes of every prunable module, as JSON values."""
    attrs: dict[str, Any] = {}
    for name, module in model.named_modules():
        for kind, keys in _SHAPE_ATTRS.items():
            if isinstance(module, kind):
                for key in keys:
                    value = getattr(module, key, None)
                    if value is not None:
                        attrs[f"{name}.{key}" if name else key] = list(value) if isinstance(value, tuple) else value
        for key in _HEAD_ATTRS:
            value = getattr(module, key, None)
            if isinstance(value, int):
                attrs[f"{name}.{key}" if name else key] = value
    return attrs


def changed_attrs(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Return the attrs a checkpoint rebuild must set: changed ones plus every conv's ``groups`` > 1."""
    return {
        k: v for k, v in after.items()
        if before.get(k) != v or (k.endswith(".groups") and isinstance(v, int) and v > 1)
    }


def make_importance(kind: str) -> Any:
    """Build the Torch-Pruning importance estimator for one of our importance names."""
    import torch_pruning as tp

    if kind == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if kind == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if kind == "bn_gamma":
        return tp.importance.BNScaleImportance()
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance()
    if kind == "random":
        return tp.importance.RandomImportance()
    raise ConfigError(f"`importance` of prune must be one of l1, l2, bn_gamma, taylor, random; got {kind!r}")


@dataclass(slots=True)
class PrunerPlan:
    """Everything Torch-Pruning needs, resolved from the config and the model."""

    ratio: float
    head_ratio: float
    importance: str
    global_ranking: bool
    round_to: int | None
    max_layer_ratio: float
    ignored: list[nn.Module]
    steps: int = 1


def build_pruner(model: nn.Module, example_inputs: Any, plan: PrunerPlan) -> Any:
    """Create a Torch-Pruning pruner for ``model`` that removes ``plan.ratio`` of the prunable width.

    In transformer encoders only the FFN width and whole attention heads are pruned:
    the hidden (residual) width stays, so embeddings keep their size and meaning.
    """
    import torch_pruning as tp

    if plan.importance == "bn_gamma" and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ConfigError("`importance` of prune is 'bn_gamma' but the model has no BatchNorm layer; use 'l1' or 'taylor'")
    parts = find_transformer_parts(model)
    kwargs: dict[str, Any] = {}
    if parts.found:
        if plan.head_ratio > 0 and not parts.attention:
            raise ConfigError(
                "`head_ratio` of prune needs attention with separate query/key/value layers "
                "(Hugging Face BERT-style); this model packs them (nn.MultiheadAttention or a qkv Linear) so heads cannot be dropped; "
                "set head_ratio to 0"
            )
        ratio_dict: dict[nn.Module, float] = {}
        if plan.ratio > 0:
            ratio_dict.update({m: plan.ratio for m in parts.ffn_up})
        num_heads: dict[nn.Module, int] = {}
        for attn in parts.attention:
            for proj in (attn.query, attn.key, attn.value):
                num_heads[proj] = attn.num_attention_heads
                if plan.head_ratio > 0:
                    # a width ratio > 0 makes the pruner visit the group; prune_head_dims=False
                    # then removes whole heads only
                    ratio_dict[proj] = plan.head_ratio
        # Only the FFN and q/k/v layers may root a group. Torch-Pruning expands every other
        # layer's group through the attention's reshapes, which blows up on windowed attention
        # (Swin, MaxViT: minutes and tens of GiB) for layers that would keep their width anyway.
        roots = set(ratio_dict) | set(num_heads)
        ignored = plan.ignored + [
            m for m in model.modules()
            if isinstance(m, nn.Linear | nn.modules.conv._ConvNd) and m not in roots and m not in plan.ignored
        ]
        kwargs.update(
            ignored_layers=ignored,
            pruning_ratio=0.0, pruning_ratio_dict=ratio_dict, num_heads=num_heads,
            prune_num_heads=plan.head_ratio > 0, prune_head_dims=False, head_pruning_ratio=plan.head_ratio,
        )
    else:
        kwargs.update(pruning_ratio=plan.ratio, ignored_layers=plan.ignored)
    from modelpress.compress._prune_blockwise import TRACE_ERRORS, blockwise_pruner, trial_prune

    try:
        trial_prune(tp, model, example_inputs, plan, kwargs)
        return meta_pruner(tp, model, example_inputs, plan, kwargs)
    except ModelpressError:
        raise  # a user error in the plan, not a tracing failure
    except TRACE_ERRORS as err:
        # Torch-Pruning 1.6.1 fails, or prunes into a model that no longer runs, on structures whose
        # channel couplings it cannot express (ShuffleNetV2's channel shuffle); their blocks may
        # still be traceable alone.
        pruner = blockwise_pruner(tp, model, example_inputs, plan, kwargs)
        if pruner is None:
            raise ConfigError(
                f"structured pruning cannot trace the channel couplings of {type(model).__name__}: Torch-Pruning's "
                f"dependency graph failed ({type(err).__name__}: {err}) and no block of it prunes cleanly alone; "
                "prune it with method 'unstructured' instead"
            ) from err
        if type(model).__name__ not in _TOLD_BLOCKWISE:  # once per architecture: a ratio search builds many pruners
            _TOLD_BLOCKWISE.add(type(model).__name__)
            logger.warning(
                "Torch-Pruning cannot trace %s as a whole (%s: %s); pruning inside %d blocks, each ranked alone, "
                "whose output widths stay", type(model).__name__, type(err).__name__, err, len(pruner.blocks))
        return pruner


# Torch-Pruning infers a concatenation's input widths by walking back through the graph with a
# budget of 500 visits shared by the whole walk. Deep residual stacks (Swin-S/B: 18 blocks before
# a patch merge) exhaust it and the unknown width then crashes the graph build. The widths are
# cached on the graph's first build, so only that build gets the larger budget: Torch-Pruning
# redoes the other walks for every group, where 10x the budget costs 10x the time.
_BUILD_WALK_BUDGET = 5000


@contextlib.contextmanager
def _larger_walk_budget_while_building(tp: Any) -> Iterator[None]:
    # patches the class for the duration: pruners are built one at a time, never from two threads
    constants, graph_cls = tp.dependency.constants, tp.DependencyGraph
    build = graph_cls.build_dependency

    def build_with_budget(self: Any, *args: Any, **kwargs: Any) -> Any:
        saved = constants.MAX_RECURSION_DEPTH
        constants.MAX_RECURSION_DEPTH = max(saved, _BUILD_WALK_BUDGET)
        try:
            return build(self, *args, **kwargs)
        finally:
            constants.MAX_RECURSION_DEPTH = saved

    graph_cls.build_dependency = build_with_budget
    try:
        yield
    finally:
        graph_cls.build_dependency = build


def meta_pruner(tp: Any, model: nn.Module, example_inputs: Any, plan: PrunerPlan, kwargs: dict[str, Any]) -> Any:
    """Build Torch-Pruning's MetaPruner for ``plan`` with the extra ``kwargs`` (ratios, heads, ignored layers)."""
    with _larger_walk_budget_while_building(tp), warnings.catch_warnings():
        # the walk warns once per exhausted branch, which is expected and harmless here
        warnings.filterwarnings("ignore", message="Maximum recursive depth reached")
        return tp.pruner.MetaPruner(
            model,
            example_inputs,
            importance=make_importance(plan.importance),
            global_pruning=plan.global_ranking,
            max_pruning_ratio=plan.max_layer_ratio,
            iterative_steps=plan.steps,
            round_to=plan.round_to,
            forward_fn=lambda m, x: call_model(m, x),
            output_transform=lambda out: first_tensor(out).float().sum(),
            **kwargs,
        )


def pruner_step(
    pruner: Any,
    model: nn.Module,
    *,
    importance: str,
    grad_batches: Callable[[], Iterable[tuple[Any, torch.Tensor]]] | None,
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor],
) -> None:
    """Run one pruning step: gradients first for Taylor importance, then remove channels."""
    if importance == "taylor":
        if grad_batches is None:
            raise ConfigError("`importance` of prune is 'taylor', which needs data: pass data=... (batches of (x, y))")
        model.zero_grad(set_to_none=True)
        seen = 0
        for x, y in grad_batches():
            loss_fn(call_model(model, x), y).backward()
            seen += 1
        if seen == 0:
            raise ConfigError("`importance` 'taylor' got an empty data iterable; pass at least one (x, y) batch")
    for group in pruner.step(interactive=True):
        group.prune()
    model.zero_grad(set_to_none=True)
    _sync_head_attrs(model, pruner)


def _sync_head_attrs(model: nn.Module, pruner: Any) -> None:
    """Write Torch-Pruning's new head counts back into the attention modules that read them."""
    for module in find_transformer_parts(model).attention:
        heads = pruner.num_heads.get(module.query, module.num_attention_heads)
        module.num_attention_heads = heads
        module.all_head_size = module.query.out_features
        if heads:
            module.attention_head_size = module.query.out_features // heads


def default_loss(output: Any, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the first output tensor (classifiers), or MSE when targets are float."""
    logits = first_tensor(output)
    if target.dtype.is_floating_point:
        return nn.functional.mse_loss(logits, target)
    return nn.functional.cross_entropy(logits, target)
