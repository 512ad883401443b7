"""Shared fixtures: tiny models built in code, nothing downloads."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield


@pytest.fixture
def tiny_mlp():
    """A 3-layer MLP over 64 features (digits-sized), 10 classes."""
    from torch import nn

    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


@pytest.fixture
def tiny_convnet():
    """A 3-conv network with BatchNorm and a residual add, input (N, 3, 16, 16), 10 classes."""
    from modelpress.testing import TinyConvNet

    return TinyConvNet().eval()


@pytest.fixture
def tiny_transformer():
    """A 2-layer transformer encoder classifier over token ids (vocab 100), 4 classes."""
    from modelpress.testing import TinyTransformer

    return TinyTransformer().eval()
