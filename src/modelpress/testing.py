"""Tiny models for tests, examples and the demo (built in code, nothing downloads)."""

from __future__ import annotations

import torch
from torch import nn


class TinyConvNet(nn.Module):
    """Three convs with BatchNorm and a residual add; input (N, 3, 16, 16)."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class TinyTransformer(nn.Module):
    """A 2-layer transformer encoder classifier over token ids (vocab 100)."""

    def __init__(self, vocab: int = 100, dim: int = 32, heads: int = 4, layers: int = 2, num_classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=64, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(input_ids)).mean(dim=1))


class Conv1dNet(nn.Module):
    """A small 1-D CNN for mnist1d (input (N, 1, 40)), about 94% test accuracy when trained."""

    input_shape = (1, 40)

    def __init__(self, num_classes: int = 10, width: int = 32, length: int = 40) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, width, 5, padding=2), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Conv1d(width, width, 3, padding=1, stride=2), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Conv1d(width, width, 3, padding=1, stride=2), nn.BatchNorm1d(width), nn.ReLU(),
        )
        self.classifier = nn.Linear(width * ((length + 3) // 4), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))



class ShallowConv1dNet(nn.Module):
    """A shallower 1-D CNN for mnist1d: two convs without BatchNorm, max pooling and a linear head.

    At ``width=36`` it has 7,750 parameters, about a quarter of ``Conv1dNet(width=64)``
    (31,882), and is weaker than ``Conv1dNet`` of the same size: a student with room
    left for a teacher (see benchmarks/bench_train.py).
    """

    input_shape = (1, 40)

    def __init__(self, num_classes: int = 10, width: int = 36, length: int = 40) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, width, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2),
        )
        self.classifier = nn.Linear(width * (length // 4), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))

class DigitsNet(nn.Module):
    """A small 2-D CNN for scikit-learn's 8x8 digits (input (N, 1, 8, 8))."""

    input_shape = (1, 8, 8)

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        )
        self.classifier = nn.Linear(2 * width * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))
