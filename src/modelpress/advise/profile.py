"""Gather what the roofline needs from a model: MACs, parameters and activation sizes.

Counts are in elements, not bytes, so one profile serves every precision; they are
taken at batch 1 and scale linearly with the batch (parameters do not).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelpress.errors import ConfigError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# BatchNorm folds into the preceding conv in every runtime we export to, so it moves no bytes of its own.
_FOLDED = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")


@dataclass(frozen=True, slots=True)
class LayerProfile:
    """One layer at batch 1: MACs, parameter elements, activation elements read + written."""

    name: str
    kind: str
    macs: int
    params: int
    activations: int


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """A model at batch 1, per layer and in total."""

    name: str
    layers: tuple[LayerProfile, ...]
    params: int

    @property
    def macs(self) -> int:
        """Multiply-accumulates for one sample."""
        return sum(layer.macs for layer in self.layers)

    @property
    def activations(self) -> int:
        """Activation elements read and written for one sample, summed over layers."""
        return sum(layer.activations for layer in self.layers)

    @property
    def peak_activations(self) -> int:
        """The largest single layer's activation elements (input + output) for one sample."""
        return max((layer.activations for layer in self.layers), default=0)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able summary (totals, not the per-layer list)."""
        return {
            "name": self.name,
            "macs": self.macs,
            "params": self.params,
            "activation_elements": self.activations,
            "layers": len(self.layers),
        }


def _numel(value: Any) -> int:
    import torch

    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, (list, tuple)):
        return sum(_numel(v) for v in value)
    if isinstance(value, dict):
        return sum(_numel(v) for v in value.values())
    return 0


def profile_module(module: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], *, name: str = "model") -> ModelProfile:
    """Profile a torch module by running it once on a batch-1 example.

    MACs come from :func:`modelpress.bench.macs.count_macs_by_module`
    (``torch.utils.flop_counter``, MACs = FLOPs / 2), attributed to leaf modules;
    activation sizes from forward hooks on those leaves, recorded during the same
    pass. MACs outside any leaf (a functional matmul in a parent's forward) form an
    ``(other)`` layer with no activation traffic counted.

    Args:
        module: the model, in eval mode.
        example_inputs: positional inputs, batch 1 (``ModelHandle.torch_inputs(batch=1)``).
        name: what to call the model in reports.
    """
    import torch

    from modelpress.bench.macs import count_macs_by_module

    first = example_inputs[0] if example_inputs else None
    if isinstance(first, torch.Tensor) and first.ndim > 0 and first.shape[0] != 1:
        raise ConfigError(f"profile_module needs batch-1 example inputs; got batch {first.shape[0]}")

    activations: dict[str, int] = {}
    leaves = {n: m for n, m in module.named_modules() if n and not any(True for _ in m.children())}

    def hook(layer_name: str):
        def record(_mod: torch.nn.Module, inputs: Any, output: Any) -> None:
            activations[layer_name] = activations.get(layer_name, 0) + _numel(inputs) + _numel(output)

        return record

    handles = [leaf.register_forward_hook(hook(layer_name)) for layer_name, leaf in leaves.items()]
    try:
        counts = count_macs_by_module(module, tuple(example_inputs))
    finally:
        for h in handles:
            h.remove()

    layers = []
    for layer_name, leaf in leaves.items():
        kind = type(leaf).__name__
        macs = counts.get(layer_name, 0)
        params = sum(p.numel() for p in leaf.parameters(recurse=False))
        if kind in _FOLDED or (macs == 0 and params == 0):
            continue  # elementwise ops fuse into their producer in the exported graph
        layers.append(LayerProfile(layer_name, kind, macs, params, activations.get(layer_name, 0)))
    other = counts[""] - sum(layer.macs for layer in layers)
    if other > 0:
        layers.append(LayerProfile("(other)", "functional", other, 0, 0))
    params = sum(p.numel() for p in module.parameters())
    return ModelProfile(name=name, layers=tuple(layers), params=params)


def _fix_input_dims(model: Any, batch: int, seq_len: int) -> None:
    """Give every dynamic graph-input axis a number so shape inference can reach every node."""
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        for i, dim in enumerate(dims):
            if dim.HasField("dim_value"):
                continue
            dim.dim_value = batch if i == 0 else seq_len


def profile_onnx(path: str | Path, *, name: str | None = None, seq_len: int = 16) -> ModelProfile:
    """Profile an ONNX file from its graph after shape inference (Conv, ConvTranspose, Gemm, MatMul).

    Dynamic input axes are set to batch 1 (axis 0) and ``seq_len`` (others).
    Activation elements per MAC-bearing node are its inputs that are not
    initializers plus its outputs. Quantized graphs count their ConvInteger /
    MatMulInteger / QLinear* nodes the same way.
    """
    import onnx
    from onnx import numpy_helper, shape_inference

    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as err:
        raise ConfigError(f"cannot read ONNX file {path}: {err}") from err
    _fix_input_dims(model, 1, seq_len)
    model = shape_inference.infer_shapes(model, data_prop=True)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    shapes: dict[str, tuple[int, ...]] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    for t in graph.initializer:
        shapes[t.name] = tuple(t.dims)
    # a QDQ graph's weights reach the Conv through DequantizeLinear; follow them back
    produced_by_dq = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}

    def is_weight(name: str) -> bool:
        return name in inits or produced_by_dq.get(name) in inits

    layers = []
    missing = 0
    for node in graph.node:
        op = node.op_type
        macs = 0
        if op in ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose"):
            x_idx, w_idx = (0, 3) if op == "QLinearConv" else (0, 1)
            w = shapes.get(node.input[w_idx])
            y = shapes.get(node.output[0])
            x = shapes.get(node.input[x_idx])
            if w is None or y is None or x is None:
                missing += 1
                continue
            if op == "ConvTranspose":
                # every input pixel scatters into C_out/groups * kernel outputs
                macs = math.prod(x) * math.prod(w[1:])
            else:
                macs = math.prod(y) * math.prod(w[1:])  # N*Cout*spatial * (Cin/groups)*kernel
        elif op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
            a_idx, b_idx = (0, 3) if op == "QLinearMatMul" else (0, 1)
            a, b = shapes.get(node.input[a_idx]), shapes.get(node.input[b_idx])
            y = shapes.get(node.output[0])
            if a is None or b is None or y is None:
                missing += 1
                continue
            trans_a = any(att.name == "transA" and att.i for att in node.attribute)
            k = a[-2] if (op == "Gemm" and trans_a) else a[-1]
            macs = math.prod(y) * k
        else:
            continue
        params = sum(math.prod(shapes.get(i, ())) for i in node.input if i and is_weight(i))
        acts = sum(math.prod(shapes[i]) for i in node.input if i and not is_weight(i) and i in shapes and len(shapes[i]) > 1)
        acts += sum(math.prod(shapes.get(o, ())) for o in node.output if o in shapes)
        layers.append(LayerProfile(node.name or node.output[0], op, int(macs), int(params), int(acts)))
    if missing:
        logger.warning("%s: %d MAC-bearing nodes had no inferred shape and were not counted", path, missing)
    if not layers:
        raise ConfigError(
            f"found no Conv/Gemm/MatMul with known shapes in {path}; give a torch checkpoint "
            "(an artifact directory or model spec) so MACs can be counted from the module"
        )
    params = sum(int(numpy_helper.to_array(t).size) for t in graph.initializer)
    return ModelProfile(name=name or path.stem, layers=tuple(layers), params=params)
