"""Quantization-aware training: fold BN, insert fake-quant (STE), train, export as QDQ INT8.

Fake quantization uses ``torch.ao.quantization.FakeQuantize`` modules, whose
backward is the straight-through estimator (gradients pass inside the clamp
range). After training the fake-quant wrappers are stripped, the trained
(BN-folded) weights are exported, and ONNX Runtime's static quantizer writes
the QDQ graph from them, so the artifact is a real INT8 graph that ONNX
Runtime and OpenVINO execute with int8 kernels.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from modelpress.errors import ConfigError, DataError

if TYPE_CHECKING:
    from modelpress.compress.quantize import _Ctx

logger = logging.getLogger(__name__)


def fold_bn_(module: nn.Module) -> list[tuple[str, str]]:
    """Fold every BatchNorm that directly follows a Conv into that Conv, in place.

    Returns the (conv, bn) name pairs folded; the BN modules become Identity.
    """
    from torch.fx import symbolic_trace
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    module.eval()
    try:
        graph = symbolic_trace(module).graph
    except Exception as err:  # data-dependent control flow: nothing to fold safely
        logger.warning("BN folding skipped, the model cannot be traced (%s)", err)
        return []
    mods = dict(module.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        src = node.args[0]
        if (getattr(src, "op", None) == "call_module" and isinstance(mods.get(src.target), nn.modules.conv._ConvNd)
                and len(src.users) == 1):
            pairs.append((src.target, node.target))
    for conv_name, bn_name in pairs:
        _set(module, conv_name, fuse_conv_bn_eval(mods[conv_name], mods[bn_name]))
        _set(module, bn_name, nn.Identity())
    return pairs


def _set(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, leaf = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, new)


class FakeQuantLayer(nn.Module):
    """A Conv/Linear whose input and weight pass through int8 fake quantization (STE backward)."""

    def __init__(self, layer: nn.Module, *, per_channel: bool, reduce_range: bool, act_symmetric: bool) -> None:
        super().__init__()
        from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver
        from torch.ao.quantization import MovingAveragePerChannelMinMaxObserver as PerChannel

        self.layer = layer
        qmax = 63 if reduce_range else 127
        if per_channel:
            self.weight_fq = FakeQuantize(observer=PerChannel, quant_min=-qmax - 1, quant_max=qmax, dtype=torch.qint8,
                                          qscheme=torch.per_channel_symmetric, ch_axis=0)
        else:
            self.weight_fq = FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=-qmax - 1, quant_max=qmax,
                                          dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
        # Activations as ONNX Runtime's u8 encodings write them (asymmetric unless asked).
        self.act_fq = FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                   dtype=torch.quint8,
                                   qscheme=torch.per_tensor_symmetric if act_symmetric else torch.per_tensor_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight_fq(self.layer.weight)
        x = self.act_fq(x)
        if isinstance(self.layer, nn.Linear):
            return nn.functional.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)  # type: ignore[operator]


def quantize_(module: nn.Module, *, per_channel: bool = True, reduce_range: bool = False,
              activation_symmetric: bool = False) -> nn.Module:
    """Prepare ``module`` for QAT in place: fold BN, wrap every Conv/Linear in fake-quant.

    Returns the same module, now training-ready with int8 simulation.
    """
    fold_bn_(module)
    targets = [n for n, m in module.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
               and not isinstance(m, FakeQuantLayer)]
    for name in targets:
        _set(module, name, FakeQuantLayer(module.get_submodule(name), per_channel=per_channel,
                                          reduce_range=reduce_range, act_symmetric=activation_symmetric))
    return module


def strip_(module: nn.Module) -> nn.Module:
    """Replace every FakeQuantLayer with its plain (trained) layer, in place."""
    names = [n for n, m in module.named_modules() if isinstance(m, FakeQuantLayer)]
    for name in names:
        _set(module, name, module.get_submodule(name).layer)
    return module


def plain_train(module: nn.Module, train: Any, cfg: Any) -> nn.Module:
    """Train with AdamW and cross-entropy for ``cfg.epochs`` (the default ``train_fn``)."""
    x, y = np.asarray(train.x, dtype=np.float32), np.asarray(train.y, dtype=np.int64)
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * max(1, -(-len(x) // cfg.batch_size)))
    rng = np.random.default_rng(cfg.seed)
    module.train()
    for _ in range(cfg.epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            loss = nn.functional.cross_entropy(module(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return module.eval()


def _freeze_bn_stats(module: nn.Module) -> None:
    # Folded BN is Identity; any BN left (not after a conv) keeps its running stats fixed.
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def torch_metric(module: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Return the accuracy of ``module`` on (x, y)."""
    module.eval()
    with torch.inference_mode():
        logits = torch.cat([module(torch.from_numpy(np.asarray(x[i:i + 256], dtype=np.float32)))
                            for i in range(0, len(x), 256)])
    return float((logits.argmax(1).numpy() == np.asarray(y)).mean())


def run_qat(ctx: _Ctx, train_fn: Callable[..., nn.Module] | None, data: Any) -> tuple[dict[str, Path], dict[str, Any]]:
    """Fold BN, fake-quant, train, export and quantize; return the variants and the QAT details."""
    from modelpress.compress.quantize import _static_variants, export_module

    cfg, m = ctx.cfg, ctx.m
    if m.module is None:
        raise ConfigError(f"qat needs a torch module; model {m.spec!r} is only an ONNX graph "
                          "(load it from torchvision:, torch: or a checkpoint artifact)")
    train = getattr(data, "train", None)
    if train is None or train.y is None or len(train.y) == 0:
        raise DataError("qat needs a labelled train split; the data has none (use --mode static instead)")
    module = quantize_(copy.deepcopy(m.module).float(), per_channel=cfg.per_channel, reduce_range=ctx.reduce_range,
                       activation_symmetric=cfg.activation_symmetric)
    ctx.say("qat training", 0.15)
    module = (train_fn or plain_train)(module, train, cfg)
    module.apply(torch.ao.quantization.disable_observer)
    _freeze_bn_stats(module)
    val = getattr(data, "val", None)
    details: dict[str, Any] = {"qat_epochs": cfg.epochs, "qat_lr": cfg.lr}
    if val is not None and val.y is not None:
        details["torch_sim_metric"] = torch_metric(module, np.asarray(val.x)[: cfg.val_samples],
                                                   np.asarray(val.y)[: cfg.val_samples])
    strip_(module)
    trained = export_module(module.eval(), m.handle, ctx.work / "qat-float.onnx")
    # The static path pre-processes and calibrates the trained graph in each encoding.
    ctx.m = type(m)(m.handle.with_module(module).with_onnx(trained), trained, m.input_names, m.fixed_batch)
    variants, static_details = _static_variants(ctx)
    ctx.m = m
    details.update(static_details)
    details["folded_bn"] = True
    return {f"qat-{k}": v for k, v in variants.items()}, details
