"""Every importance kind removes the channels it should."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelpress.compress.prune import PruneConfig, bn_l1_subgradient_, make_finetune, prune_


class TwoConv(nn.Module):
    """conv(3->8) + BN -> conv(8->4) -> mean -> fc; channel i of conv1 is easy to mark."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(torch.relu(self.bn1(self.conv1(x)))).mean((2, 3)))


def _kept_rows(before: torch.Tensor, after: torch.Tensor) -> list[int]:
    """Return which of ``before``'s rows survive in ``after`` (rows are unique random vectors)."""
    return [i for i in range(before.shape[0]) if any(torch.equal(before[i], row) for row in after)]


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_magnitude_removes_small_weight_channels(kind):
    model = TwoConv().eval()
    with torch.no_grad():
        model.conv1.weight[[1, 3, 5, 7]] *= 0.01
        model.conv2.weight[:, [1, 3, 5, 7]] *= 0.01
    before = model.conv1.weight.detach().clone()
    prune_(model, PruneConfig(ratio=0.5, importance=kind, ignore=("conv2",)), example_inputs=torch.randn(1, 3, 8, 8))
    assert _kept_rows(before, model.conv1.weight.detach()) == [0, 2, 4, 6]


def test_l1_and_l2_differ_where_they_should():
    """One channel with a single large weight (high L2, low L1) vs one with many medium weights."""
    model = TwoConv().eval()
    with torch.no_grad():
        model.conv1.weight.fill_(0.1)
        model.conv2.weight.fill_(0.1)
        model.conv1.weight[0] = 0.0
        model.conv1.weight[0, 0, 0, 0] = 2.0          # L1 2.0, L2 2.0
        model.conv1.weight[1] = 0.1                    # L1 2.7, L2 0.52
        for i in range(2, 8):
            model.conv1.weight[i] = 0.2 + 0.01 * i     # both norms larger than channel 1's
        model.conv1.weight.add_(torch.rand_like(model.conv1.weight) * 1e-4)  # unique rows
    before = model.conv1.weight.detach().clone()
    one = PruneConfig(ratio=0.125, ignore=("conv2",))
    l1 = TwoConv().eval()
    l1.load_state_dict(model.state_dict())
    prune_(l1, one.model_copy(update={"importance": "l1"}), example_inputs=torch.randn(1, 3, 8, 8))
    prune_(model, one.model_copy(update={"importance": "l2"}), example_inputs=torch.randn(1, 3, 8, 8))
    assert 0 not in _kept_rows(before, l1.conv1.weight.detach())
    assert 1 not in _kept_rows(before, model.conv1.weight.detach())


def test_bn_gamma_removes_channels_with_small_scale():
    model = TwoConv().eval()
    with torch.no_grad():
        model.bn1.weight.copy_(torch.tensor([1.0, 0.01, 1.0, 0.02, 1.0, 0.0, 0.9, 0.03]))
    before = model.conv1.weight.detach().clone()
    prune_(model, PruneConfig(ratio=0.5, importance="bn_gamma", ignore=("conv2",)), example_inputs=torch.randn(1, 3, 8, 8))
    assert _kept_rows(before, model.conv1.weight.detach()) == [0, 2, 4, 6]


def test_slimming_l1_on_gamma_pushes_scales_down():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    plain, sparse = TwoConv(), TwoConv()
    sparse.load_state_dict(plain.state_dict())
    make_finetune(batches, batches, epochs=20, lr=1e-2)(plain)
    make_finetune(batches, batches, epochs=20, lr=1e-2, bn_sparsity=1e-1)(sparse)
    assert sparse.bn1.weight.abs().sum() < 0.5 * plain.bn1.weight.abs().sum()


def test_bn_l1_subgradient_adds_sign_of_gamma():
    model = TwoConv()
    model.bn1.weight.data = torch.tensor([1.0, -2.0, 0.5, 0.0, 1.0, 1.0, 1.0, 1.0])
    model.bn1.weight.grad = torch.zeros(8)
    bn_l1_subgradient_(model, 0.1)
    assert model.bn1.weight.grad.tolist() == pytest.approx([0.1, -0.1, 0.1, 0.0, 0.1, 0.1, 0.1, 0.1])


def test_taylor_uses_gradients_not_magnitude():
    """A channel with large weights that the output ignores has zero Taylor score but top L1 score."""
    model = TwoConv().eval()
    with torch.no_grad():
        model.conv1.weight[2].mul_(10)
        model.bn1.weight[2] = 5.0
        model.conv2.weight[:, 2] = 0.0      # the next layer never reads channel 2
    before = model.conv1.weight.detach().clone()
    x = torch.randn(16, 3, 8, 8)
    data = [(x, torch.randint(0, 3, (16,)))]
    config = PruneConfig(ratio=0.125, importance="taylor", ignore=("conv2",))
    copy = TwoConv().eval()
    copy.load_state_dict(model.state_dict())
    prune_(model, config, example_inputs=x[:1], data=data)
    assert 2 not in _kept_rows(before, model.conv1.weight.detach())
    prune_(copy, config.model_copy(update={"importance": "l1"}), example_inputs=x[:1])
    assert 2 in _kept_rows(before, copy.conv1.weight.detach())


def test_random_importance_still_gives_a_consistent_model(tiny_convnet):
    x = torch.randn(1, 3, 16, 16)
    report = prune_(tiny_convnet, PruneConfig(ratio=0.5, importance="random"), example_inputs=x)
    assert tiny_convnet(x).shape == (1, 10)
    assert report.macs_after < report.macs_before
