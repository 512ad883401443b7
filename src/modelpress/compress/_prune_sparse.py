"""Unstructured (global magnitude) and 2:4 semi-structured sparsity.

Unstructured zeros save storage once compressed, not CPU time: dense kernels
multiply the zeros anyway. 2:4 sparsity runs faster only on CUDA GPUs with
sparse tensor cores (Ampere and newer), through PyTorch's semi-structured tensors.
"""

from __future__ import annotations

import io
import logging
import zlib
from dataclasses import dataclass

import torch
from torch import nn

from modelpress.errors import BackendError, ConfigError

logger = logging.getLogger(__name__)

_WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd)


@dataclass(frozen=True, slots=True)
class SparsityStats:
    """How sparse a model's prunable weights are, and what that saves on disk."""

    sparsity: float              # zero fraction over the pruned weights
    zeros: int
    total: int
    dense_bytes: int             # every parameter and buffer as stored (fp32 stays fp32)
    compressed_bytes: int        # the same bytes after zlib (what a zipped artifact costs)


def prunable_weights(model: nn.Module, ignored: set[nn.Module]) -> list[tuple[nn.Module, str]]:
    """Return (module, "weight") for every Linear/Conv not in ``ignored``."""
    return [(m, "weight") for m in model.modules() if isinstance(m, _WEIGHTED) and m not in ignored]


def global_magnitude_prune_(model: nn.Module, sparsity: float, ignored: set[nn.Module]) -> None:
    """Zero the smallest-magnitude weights across all prunable layers and make it permanent."""
    from torch.nn.utils import prune as torch_prune

    params = prunable_weights(model, ignored)
    if not params:
        raise ConfigError("unstructured prune found no Linear or Conv weights outside `ignore`")
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=sparsity)
    for module, name in params:
        # folds weight_orig * weight_mask into a plain parameter; no hooks stay behind
        torch_prune.remove(module, name)


def sparsity_stats(model: nn.Module, ignored: set[nn.Module]) -> SparsityStats:
    """Measure the zero fraction of the prunable weights and the zlib size of the state dict."""
    zeros = total = 0
    for module, name in prunable_weights(model, ignored):
        weight = getattr(module, name)
        zeros += int((weight == 0).sum())
        total += weight.numel()
    buf = io.BytesIO()
    for tensor in model.state_dict().values():
        buf.write(tensor.detach().cpu().contiguous().numpy().tobytes())
    raw = buf.getvalue()
    return SparsityStats(
        sparsity=zeros / total if total else 0.0,
        zeros=zeros,
        total=total,
        dense_bytes=len(raw),
        compressed_bytes=len(zlib.compress(raw, 6)),
    )


def semi_structured_2_4_(model: nn.Module, ignored: set[nn.Module], *, min_features: int = 64) -> list[str]:
    """Keep the 2 largest of every 4 weights per row in each Linear and switch it to sparse kernels.

    Only CUDA devices with sparse tensor cores run these kernels; the model must
    already be on CUDA in fp16/bf16. Returns the names of the converted layers.
    """
    if not torch.cuda.is_available():
        raise BackendError("2:4 semi-structured sparsity needs a CUDA GPU (compute capability 8.0+); none is visible")
    major, _minor = torch.cuda.get_device_capability()
    if major < 8:
        raise BackendError(f"2:4 semi-structured sparsity needs compute capability 8.0+; this GPU has {major}.x")
    from torch.sparse import to_sparse_semi_structured

    converted: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or module in ignored:
            continue
        w = module.weight
        if w.device.type != "cuda" or w.dtype not in (torch.float16, torch.bfloat16):
            raise ConfigError(
                f"2:4 sparsity needs the model on CUDA in float16/bfloat16; layer {name!r} is {w.dtype} on {w.device}: "
                "call model.half().cuda() first"
            )
        # the kernels need both dimensions to be multiples of 64 (fp16 minimum tile)
        if w.shape[0] % min_features or w.shape[1] % min_features:
            logger.info("2:4: skipping %s with shape %s (not a multiple of %d)", name, tuple(w.shape), min_features)
            continue
        with torch.no_grad():
            groups = w.detach().reshape(-1, 4)
            keep = groups.abs().topk(2, dim=1).indices
            mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, keep, True).reshape(w.shape)
            module.weight = nn.Parameter(to_sparse_semi_structured(w.detach() * mask), requires_grad=False)
        converted.append(name)
    if not converted:
        raise ConfigError("2:4 sparsity found no Linear layer with both dimensions a multiple of 64 outside `ignore`")
    return converted
