"""Structured pruning keeps coupled layers consistent and really removes work."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelpress.bench.macs import count_macs
from modelpress.compress.prune import PruneConfig, prune_


class ConcatNet(nn.Module):
    """Two branches concatenated, then a conv that reads both."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 24, 1), nn.BatchNorm2d(24), nn.ReLU())
        self.fuse = nn.Conv2d(40, 32, 3, padding=1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        return self.fc(self.fuse(y).mean((2, 3)))


class DepthwiseNet(nn.Module):
    """A MobileNet-style block: pointwise expand, depthwise 3x3, pointwise project, residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.expand = nn.Sequential(nn.Conv2d(16, 64, 1), nn.BatchNorm2d(64), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.BatchNorm2d(64), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(64, 16, 1), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        return self.fc((s + self.project(self.dw(self.expand(s)))).mean((2, 3)))


class GroupedNet(nn.Module):
    """A grouped conv (4 groups, ResNeXt-style) between two dense convs."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, padding=1)
        self.g = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.c2 = nn.Conv2d(32, 16, 1)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.c2(torch.relu(self.g(torch.relu(self.c1(x))))).mean((2, 3)))


def _check_pruned(model: nn.Module, x: torch.Tensor, config: PruneConfig, out_shape: tuple[int, ...]):
    macs = count_macs(model, x)
    report = prune_(model, config, example_inputs=x)
    with torch.no_grad():
        y = model(x)
    assert tuple(y.shape) == out_shape
    assert torch.isfinite(y).all()
    assert report.macs_before == macs
    assert report.macs_after == count_macs(model, x)
    assert report.macs_after < 0.6 * report.macs_before  # 50% of channels -> about a quarter of the MACs inside
    assert report.params_after < report.params_before
    return report


def test_residual_add_keeps_both_sides_equal(tiny_convnet):
    x = torch.randn(2, 3, 16, 16)
    report = _check_pruned(tiny_convnet, x, PruneConfig(ratio=0.5), (2, 10))
    # stem output and block output are added: they must keep the same width
    assert tiny_convnet.stem[0].out_channels == tiny_convnet.block[3].out_channels == 8
    assert tiny_convnet.fc.in_features == 8
    assert tiny_convnet.fc.out_features == 10  # the classifier is protected
    kept = {layer.name: (layer.original, layer.kept) for layer in report.layers}
    assert kept["stem.0"] == (16, 8) and kept["fc"] == (10, 10)


def test_concat_consumer_gets_the_sum_of_kept_channels():
    model = ConcatNet().eval()
    x = torch.randn(1, 3, 12, 12)
    _check_pruned(model, x, PruneConfig(ratio=0.5), (1, 5))
    assert model.fuse.in_channels == model.a[0].out_channels + model.b[0].out_channels == 8 + 12


def test_depthwise_conv_follows_its_producer_and_keeps_groups_equal_channels():
    model = DepthwiseNet().eval()
    x = torch.randn(1, 3, 12, 12)
    report = _check_pruned(model, x, PruneConfig(ratio=0.5), (1, 3))
    dw = model.dw[0]
    assert dw.in_channels == dw.out_channels == dw.groups == model.expand[0].out_channels == 32
    # the checkpoint must know the depthwise conv's groups to rebuild it
    assert report.attrs["dw.0.groups"] == 32


def test_grouped_conv_stays_divisible_by_its_groups():
    model = GroupedNet().eval()
    x = torch.randn(1, 3, 12, 12)
    report = _check_pruned(model, x, PruneConfig(ratio=0.5), (1, 3))
    assert model.g.groups == 4
    assert model.g.in_channels % 4 == 0 and model.g.out_channels % 4 == 0
    assert model.g.in_channels == model.c1.out_channels == 16
    assert report.attrs["g.groups"] == 4


def test_linear_after_flatten_loses_whole_channel_blocks():
    from modelpress.testing import Conv1dNet

    model = Conv1dNet().eval()
    x = torch.randn(2, 1, 40)
    _check_pruned(model, x, PruneConfig(ratio=0.5), (2, 10))
    last = model.features[6]
    # Flatten: each kept channel contributes its 10 positions to the classifier input
    assert model.classifier.in_features == last.out_channels * 10 == 160


def test_round_to_keeps_channel_counts_multiples(tiny_convnet):
    model = DepthwiseNet().eval()
    x = torch.randn(1, 3, 12, 12)
    prune_(model, PruneConfig(ratio=0.3, round_to=8), example_inputs=x)
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths), widths
    assert model.expand[0].out_channels == 40  # 64 * 0.7 = 44.8 -> rounded down to 40


def test_round_to_auto_picks_the_backend_multiple():
    assert PruneConfig(ratio=0.5, round_to="auto").resolved_round_to() == 8


def test_global_ranking_prunes_layers_unevenly():
    model = ConcatNet().eval()
    with torch.no_grad():
        # half of branch a is nearly dead; a global ranking should spend most of the cut there
        model.a[0].weight[:8].mul_(1e-3)
        model.a[1].weight[:8].mul_(1e-3)
        model.fuse.weight[:, :8].mul_(1e-3)
    x = torch.randn(1, 3, 12, 12)
    report = prune_(model, PruneConfig(ratio=0.4, scope="global"), example_inputs=x)
    kept = {layer.name: layer.kept / layer.original for layer in report.layers}
    assert kept["a.0"] <= 0.5 and kept["b.0"] > 14 / 24  # per-layer ranking keeps 9/16 and 14/24
    per_layer = ConcatNet().eval()
    prune_(per_layer, PruneConfig(ratio=0.4), example_inputs=x)
    assert per_layer.a[0].out_channels == 9 and per_layer.b[0].out_channels == 14


def test_ignore_list_protects_named_layers(tiny_convnet):
    model = ConcatNet().eval()
    prune_(model, PruneConfig(ratio=0.5, ignore=("a.0",)), example_inputs=torch.randn(1, 3, 12, 12))
    assert model.a[0].out_channels == 16
    assert model.b[0].out_channels == 12


def test_mac_budget_is_met():
    model = DepthwiseNet().eval()
    x = torch.randn(1, 3, 12, 12)
    before = count_macs(model, x)
    report = prune_(model, PruneConfig(target={"kind": "macs", "fraction": 0.5}), example_inputs=x)
    assert report.macs_after <= 0.5 * before
    assert report.macs_after > 0.3 * before  # the search stops near the budget, not at max pruning
    assert 0 < report.ratio < 0.8
    assert len(report.search) >= 3


def test_iterative_schedule_finetunes_and_tracks_metric_per_step(tiny_convnet):
    x = torch.randn(1, 3, 16, 16)
    calls = []

    def finetune(model: nn.Module) -> float:
        calls.append(model.fc.in_features)
        return 0.5 + len(calls) / 10

    report = prune_(tiny_convnet, PruneConfig(ratio=0.5, steps=4), example_inputs=x, finetune=finetune,
                    evaluate=lambda m: 0.1)
    assert [s.step for s in report.steps] == [1, 2, 3, 4]
    assert calls == sorted(calls, reverse=True) and calls[-1] == 8
    assert [s.metric_finetuned for s in report.steps] == pytest.approx([0.6, 0.7, 0.8, 0.9])
    assert all(s.metric_pruned == 0.1 for s in report.steps)
    macs = [s.macs for s in report.steps]
    assert macs == sorted(macs, reverse=True) and macs[0] > macs[-1]


def test_iterative_schedule_on_the_training_engine_tracks_accuracy_per_step(tiny_convnet):
    """make_finetune (modelpress.train.finetune_ underneath) recovers accuracy after every step."""
    from modelpress.compress.prune import accuracy, make_finetune

    torch.manual_seed(0)
    y = torch.randint(0, 2, (160,))
    x = torch.randn(160, 3, 16, 16)
    x[:, 0] += 0.5 * (2 * y[:, None, None] - 1)  # the class shifts channel 0
    train = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 128, 32)]
    val = [(x[128:], y[128:])]
    start = make_finetune(train, val, epochs=5, lr=1e-2)(tiny_convnet)
    assert start > 0.8  # the engine trains the dense model
    finetune = make_finetune(train, val, epochs=2, lr=3e-3)
    report = prune_(tiny_convnet, PruneConfig(ratio=0.6, steps=3), example_inputs=x[:1], finetune=finetune,
                    evaluate=lambda m: accuracy(m, val))
    assert [s.step for s in report.steps] == [1, 2, 3]
    assert all(0 <= s.metric_pruned <= 1 and 0 <= s.metric_finetuned <= 1 for s in report.steps)
    assert report.steps[-1].metric_finetuned == pytest.approx(accuracy(tiny_convnet, val))
    assert report.steps[-1].metric_finetuned > 0.8  # recovered after the last step
    assert sum(s.metric_finetuned for s in report.steps) >= sum(s.metric_pruned for s in report.steps)


def test_make_finetune_trains_multi_input_models_and_float_targets():
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 2), nn.Linear(3, 2)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.a(a) + self.b(b)

    from modelpress.compress.prune import make_finetune

    torch.manual_seed(0)
    a, b = torch.randn(64, 4), torch.randn(64, 3)
    target = torch.stack([a[:, 0] - b[:, 1], a[:, 2] + b[:, 0]], dim=1)  # float targets: MSE
    model = TwoInputs()
    before = nn.functional.mse_loss(model(a, b), target).item()
    make_finetune([((a[i:i + 16], b[i:i + 16]), target[i:i + 16]) for i in range(0, 64, 16)], [], epochs=30, lr=3e-2)(model)
    with torch.no_grad():
        after = nn.functional.mse_loss(model(a, b), target).item()
    assert after < 0.1 * before


def test_tiny_transformer_ffn_width_pruned_hidden_kept(tiny_transformer):
    ids = torch.randint(0, 100, (2, 8))
    report = prune_(tiny_transformer, PruneConfig(ratio=0.5), example_inputs=ids)
    layer = tiny_transformer.encoder.layers[0]
    assert layer.linear1.out_features == layer.linear2.in_features == 32
    assert layer.self_attn.embed_dim == 32  # residual width untouched
    assert tiny_transformer(ids).shape == (2, 4)
    assert report.macs_after < report.macs_before


@pytest.fixture
def tiny_bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=100, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                                     intermediate_size=96, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertModel(config).eval()


def test_bert_heads_and_ffn_width_removed(tiny_bert):
    x = {"input_ids": torch.randint(0, 100, (2, 10)), "attention_mask": torch.ones(2, 10, dtype=torch.long)}
    report = prune_(tiny_bert, PruneConfig(ratio=0.5, head_ratio=1 / 3), example_inputs=x)
    for layer in tiny_bert.encoder.layer:
        attn = layer.attention.self
        assert attn.num_attention_heads == 4
        assert attn.attention_head_size == 8  # whole heads go, head size stays
        assert attn.query.out_features == attn.key.out_features == attn.value.out_features == 32
        assert layer.attention.output.dense.in_features == 32
        assert layer.intermediate.dense.out_features == layer.output.dense.in_features == 48
        assert layer.output.dense.out_features == 48  # hidden width kept
    assert tiny_bert(**x).last_hidden_state.shape == (2, 10, 48)
    assert report.attrs["encoder.layer.0.attention.self.num_attention_heads"] == 4
    assert report.attrs["encoder.layer.1.attention.self.all_head_size"] == 32
    heads = [layer for layer in report.layers if layer.kind == "heads"]
    assert [(h.original, h.kept) for h in heads] == [(6, 4), (6, 4)]


def test_pruned_bert_keeps_the_surviving_heads_exactly(tiny_bert):
    """Removing heads must not change what the remaining heads compute: zeroing them instead gives the same output."""
    x = {"input_ids": torch.randint(0, 100, (1, 7))}
    import copy

    reference = copy.deepcopy(tiny_bert)
    prune_(tiny_bert, PruneConfig(ratio=0.0, head_ratio=0.5), example_inputs=x)
    for ref_layer, layer in zip(reference.encoder.layer, tiny_bert.encoder.layer, strict=True):
        kept_rows = {tuple(r.tolist()) for r in layer.attention.self.query.weight.detach()}
        w = ref_layer.attention.self.query.weight.detach()
        head_rows = w.view(6, 8, -1)
        keep = [all(tuple(r.tolist()) in kept_rows for r in head_rows[h]) for h in range(6)]
        assert sum(keep) == 3
        with torch.no_grad():  # zero the removed heads' value projection and output columns
            for h, kept in enumerate(keep):
                if not kept:
                    ref_layer.attention.self.value.weight[h * 8:(h + 1) * 8] = 0
                    ref_layer.attention.self.value.bias[h * 8:(h + 1) * 8] = 0
    with torch.no_grad():
        torch.testing.assert_close(tiny_bert(**x).last_hidden_state, reference(**x).last_hidden_state, atol=1e-5, rtol=1e-4)


def _channel_shuffle(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleBlock(nn.Module):
    """ShuffleNetV2's stride-1 unit: half the channels pass, half go through a bottleneck, then a shuffle."""

    def __init__(self, channels: int, inner: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            nn.Conv2d(half, inner, 1, bias=False), nn.BatchNorm2d(inner), nn.ReLU(),
            nn.Conv2d(inner, inner, 3, padding=1, groups=inner, bias=False), nn.BatchNorm2d(inner),
            nn.Conv2d(inner, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return _channel_shuffle(torch.cat((a, self.branch(b)), dim=1))


class ShuffleNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(ShuffleBlock(16, 32), ShuffleBlock(16, 32))
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def test_a_channel_shuffle_is_pruned_block_by_block_and_removing_dead_channels_keeps_the_output():
    torch.manual_seed(0)
    model = ShuffleNetLike().eval()
    dead = torch.arange(0, 32, 2)  # half of each bottleneck's channels carry nothing
    with torch.no_grad():
        for block in model.blocks:
            conv1, bn1, _, dw, bn2 = block.branch[:5]
            conv1.weight[dead] = 0
            dw.weight[dead] = 0
            for bn in (bn1, bn2):
                bn.weight[dead] = 0
                bn.bias[dead] = 0
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        before = model(x)
    macs = count_macs(model, x)
    report = prune_(model, PruneConfig(ratio=0.5, importance="l1"), example_inputs=x)
    for block in model.blocks:  # only the bottleneck shrinks: the shuffled widths stay
        assert [block.branch[0].out_channels, block.branch[3].groups, block.branch[5].in_channels] == [16, 16, 16]
        assert block.branch[5].out_channels == 8
    assert model.stem[0].out_channels == 16
    assert count_macs(model, x) < 0.75 * macs
    assert report.macs_after == count_macs(model, x)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-4)


class ShuffleOnly(nn.Module):
    """A shuffle between two bare convs: no block has channels of its own to remove."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(_channel_shuffle(self.a(x))).mean((2, 3))


def test_an_architecture_nothing_of_which_can_be_pruned_gets_one_clear_error():
    from modelpress.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot trace the channel couplings of ShuffleOnly.*method 'unstructured'"):
        prune_(ShuffleOnly().eval(), PruneConfig(ratio=0.3), example_inputs=torch.randn(1, 3, 8, 8))
