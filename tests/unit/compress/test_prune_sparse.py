"""Unstructured global magnitude pruning and 2:4 semi-structured sparsity."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from modelpress.compress.prune import SemiStructuredConfig, UnstructuredPruneConfig, prune_


def test_global_magnitude_reaches_the_sparsity_and_is_permanent(tiny_convnet):
    x = torch.randn(2, 3, 16, 16)
    all_weights = torch.cat([m.weight.detach().abs().flatten() for m in tiny_convnet.modules()
                             if isinstance(m, nn.Conv2d | nn.Linear)])
    threshold = all_weights.kthvalue(int(0.8 * all_weights.numel())).values
    report = prune_(tiny_convnet, UnstructuredPruneConfig(sparsity=0.8), example_inputs=x)
    assert report.sparsity is not None
    assert report.sparsity.sparsity == pytest.approx(0.8, abs=0.002)
    # global, not per layer: each layer's zeros are exactly its weights under one shared threshold
    for m in tiny_convnet.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            assert not hasattr(m, "weight_orig") and not hasattr(m, "weight_mask")  # made permanent, no hooks
            assert not m._forward_pre_hooks
            kept = m.weight.detach().abs()
            assert (kept[kept > 0] >= threshold - 1e-7).all()
    names = [n for n, _ in tiny_convnet.named_parameters()]
    assert all(not n.endswith("_orig") for n in names)


def test_unstructured_reports_size_honestly(tiny_convnet):
    x = torch.randn(1, 3, 16, 16)
    report = prune_(tiny_convnet, UnstructuredPruneConfig(sparsity=0.9), example_inputs=x)
    stats = report.sparsity
    # dense storage does not shrink, only the compressed form does; compute is unchanged
    assert stats.dense_bytes == sum(t.numel() * t.element_size() for t in tiny_convnet.state_dict().values())
    assert stats.compressed_bytes < 0.5 * stats.dense_bytes
    assert report.macs_after == report.macs_before
    assert report.params_after == report.params_before


def test_unstructured_protected_classifier_stays_dense(tiny_convnet):
    prune_(tiny_convnet, UnstructuredPruneConfig(sparsity=0.7, protect_classifier=True), example_inputs=torch.randn(1, 3, 16, 16))
    assert int((tiny_convnet.fc.weight == 0).sum()) == 0


def test_unstructured_keeps_outputs_close_at_low_sparsity(tiny_mlp):
    x = torch.randn(32, 64)
    reference = copy.deepcopy(tiny_mlp)
    prune_(tiny_mlp, UnstructuredPruneConfig(sparsity=0.2), example_inputs=x[:1])
    agreement = (tiny_mlp(x).argmax(1) == reference(x).argmax(1)).float().mean()
    assert agreement >= 0.8


@pytest.mark.gpu
def test_semi_structured_2_4_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("needs compute capability 8.0+")
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    model = model.half().cuda().eval()
    x = torch.randn(64, 128, device="cuda", dtype=torch.float16)
    dense = copy.deepcopy(model)
    report = prune_(model, SemiStructuredConfig(), example_inputs=x)
    assert report.converted_layers == ["0", "2"]  # the classifier is protected
    from torch.sparse import SparseSemiStructuredTensor

    assert isinstance(model[0].weight, SparseSemiStructuredTensor)
    # the sparse kernels compute what the masked dense weights compute
    w = dense[0].weight.detach()
    groups = w.reshape(-1, 4)
    keep = groups.abs().topk(2, dim=1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, keep, True).reshape(w.shape)
    expected = torch.nn.functional.linear(x, w * mask, dense[0].bias)
    with torch.no_grad():
        torch.testing.assert_close(model[0](x), expected, atol=2e-2, rtol=2e-2)
        assert model(x).shape == (64, 10)
