"""Fine-tuning engine: freeze modes, groups, optimizers, early stopping, AMP, clipping, seeds, resume, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from modelpress.errors import ConfigError, DataError
from modelpress.testing import Conv1dNet
from modelpress.train.finetune import (
    AdamWConfig, EarlyStopping, FinetuneConfig, FreezeHead, FreezeLastN, FreezeNone, FreezePattern, ParamGroup,
    SGDConfig, cpu_has_native_bf16, evaluate_model, finetune_, freeze_,
)
from modelpress.train.schedules import ConstantSchedule, SGDRSchedule


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny models run faster on one thread, and the shared 2-core box stalls two-thread OMP teams
    torch.set_num_threads(1)


def _toy(n: int = 320, seed: int = 0, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A learnable 1-D problem: the class is which third of the signal carries a bump."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(0, 0.5, (n, 1, 24)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, 0, c * 8:(c + 1) * 8] += 1.5
    return x, y.astype(np.int64)


def _net(seed: int = 0) -> Conv1dNet:
    torch.manual_seed(seed)
    return Conv1dNet(num_classes=3, width=8, length=24)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    return {k for k, v in model.named_parameters() if not torch.equal(before[k], v)}


QUICK = dict(epochs=2, batch_size=32, optimizer=AdamWConfig(lr=1e-2))


def test_full_finetune_learns_the_task():
    x, y = _toy()
    xv, yv = _toy(200, seed=1)
    model = _net()
    report = finetune_(model, (x, y), (xv, yv), FinetuneConfig(epochs=6, batch_size=32, optimizer=AdamWConfig(lr=1e-2)))
    _, acc = evaluate_model(model, torch.from_numpy(xv), torch.from_numpy(yv))
    assert acc > 0.9
    assert report.best_metric == pytest.approx(max(h.val_accuracy for h in report.history))
    assert report.trainable_params == report.total_params
    assert len(report.history) == 6 and report.samples_per_s > 0
    assert not model.training


def test_freeze_pattern_keeps_matching_parameters_fixed():
    x, y = _toy()
    model = _net()
    before = _snapshot(model)
    report = finetune_(model, (x, y), None, FinetuneConfig(freeze=FreezePattern(patterns=["features.0.*", "features.1.*"]), **QUICK))
    changed = _changed(before, model)
    assert changed and not any(k.startswith(("features.0.", "features.1.")) for k in changed)
    assert "features.3.weight" in changed and "classifier.weight" in changed
    frozen = sum(p.numel() for k, p in model.named_parameters() if k.startswith(("features.0.", "features.1.")))
    assert report.trainable_params == report.total_params - frozen


def test_freeze_head_trains_only_the_classifier():
    x, y = _toy()
    for freeze in (FreezeHead(), FreezeHead(head="classifier")):
        model = _net()
        before = _snapshot(model)
        finetune_(model, (x, y), None, FinetuneConfig(freeze=freeze, **QUICK))
        assert _changed(before, model) == {"classifier.weight", "classifier.bias"}


def test_freeze_head_keeps_frozen_batchnorm_statistics():
    x, y = _toy()
    model = _net()
    stats = model.features[1].running_mean.clone()
    finetune_(model, (x, y), None, FinetuneConfig(freeze=FreezeHead(), **QUICK))
    assert torch.equal(model.features[1].running_mean, stats)


def test_freeze_last_n_blocks():
    x, y = _toy()
    model = _net()
    before = _snapshot(model)
    finetune_(model, (x, y), None, FinetuneConfig(freeze=FreezeLastN(n=3), **QUICK))
    # blocks: conv, bn, conv, bn, conv, bn, classifier -> the last three are conv(6), bn(7) and classifier
    assert _changed(before, model) == {"features.6.weight", "features.6.bias", "features.7.weight", "features.7.bias",
                                       "classifier.weight", "classifier.bias"}


def test_freeze_last_n_inside_a_named_container():
    model = _net()
    trainable = freeze_(model, FreezeLastN(n=1, container="features"))
    assert trainable == ["features.7.weight", "features.7.bias"]


def test_freeze_pattern_that_matches_nothing_is_a_clear_error():
    x, y = _toy()
    with pytest.raises(ConfigError, match=r"freeze.patterns: 'backbone\.\*' match no parameter; parameter names look like"):
        finetune_(_net(), (x, y), None, FinetuneConfig(freeze=FreezePattern(patterns=["backbone.*"]), **QUICK))


def test_freeze_bad_head_and_too_many_blocks():
    with pytest.raises(ConfigError, match=r"freeze.head: the model has no module 'clasifier'; closest: 'classifier'"):
        freeze_(_net(), FreezeHead(head="clasifier"))
    with pytest.raises(ConfigError, match=r"freeze.n: the model has 7 blocks .* got n=9"):
        freeze_(_net(), FreezeLastN(n=9))


def test_per_group_learning_rates():
    x, y = _toy()
    model = _net()
    before = _snapshot(model)
    groups = [ParamGroup(pattern="features.*", lr=1e-9, weight_decay=0.0), ParamGroup(pattern="classifier.*", lr_scale=10.0)]
    finetune_(model, (x, y), None, FinetuneConfig(param_groups=groups, epochs=1, batch_size=32, optimizer=SGDConfig(lr=1e-2)))
    feat = max(float((before[k] - v.detach()).abs().max()) for k, v in model.named_parameters() if k.startswith("features"))
    head = float((before["classifier.weight"] - model.classifier.weight.detach()).abs().max())
    assert feat < 1e-6 < 1e-3 < head
    with pytest.raises(ConfigError, match="param_groups: pattern 'head.*' matches no parameter"):
        finetune_(_net(), (x, y), None, FinetuneConfig(param_groups=[ParamGroup(pattern="head.*", lr=1.0)], **QUICK))


@pytest.mark.parametrize("optimizer", [SGDConfig(lr=0.05), AdamWConfig(lr=1e-2)])
@pytest.mark.parametrize("schedule", [ConstantSchedule(), SGDRSchedule(cycle_epochs=1, warmup_epochs=0.5)])
def test_optimizers_and_schedules_train(optimizer, schedule):
    x, y = _toy()
    xv, yv = _toy(120, seed=1)
    report = finetune_(_net(), (x, y), (xv, yv), FinetuneConfig(epochs=4, batch_size=32, optimizer=optimizer, schedule=schedule))
    assert report.history[-1].train_loss < report.history[0].train_loss
    assert report.best_metric > 0.8


def test_early_stopping_restores_the_best_weights():
    # random labels: validation accuracy wanders, so the last epoch is not the best one
    rng = np.random.default_rng(3)
    x = rng.normal(size=(256, 1, 24)).astype(np.float32)
    y = rng.integers(0, 3, 256)
    xv = rng.normal(size=(150, 1, 24)).astype(np.float32)
    yv = rng.integers(0, 3, 150)
    model = _net()
    cfg = FinetuneConfig(epochs=30, batch_size=32, optimizer=AdamWConfig(lr=2e-2), early_stopping=EarlyStopping(patience=2))
    report = finetune_(model, (x, y), (xv, yv), cfg)
    assert report.stopped_early and len(report.history) < 30
    assert report.best_epoch == len(report.history) - 3  # patience 2: two epochs without improvement after the best
    last = report.history[-1].val_accuracy
    assert last < report.best_metric
    _, acc = evaluate_model(model, torch.from_numpy(xv), torch.from_numpy(yv))
    assert acc == pytest.approx(report.best_metric) and report.restored_best


def test_early_stopping_on_loss_and_needs_val():
    x, y = _toy()
    report = finetune_(_net(), (x, y), _toy(100, 1), FinetuneConfig(early_stopping=EarlyStopping(metric="loss", patience=1), **QUICK))
    assert report.metric == "loss" and report.best_metric == pytest.approx(min(h.val_loss for h in report.history))
    with pytest.raises(ConfigError, match="early_stopping needs a val split"):
        finetune_(_net(), (x, y), None, FinetuneConfig(early_stopping=EarlyStopping(), **QUICK))


def test_bf16_autocast_on_cpu_and_fp16_needs_cuda():
    x, y = _toy()
    report = finetune_(_net(), (x, y), _toy(100, 1), FinetuneConfig(amp="bf16", epochs=3, batch_size=32, optimizer=AdamWConfig(lr=1e-2)))
    assert report.amp == "bf16" and report.best_metric > 0.6
    auto = finetune_(_net(), (x, y), None, FinetuneConfig(amp="auto", **QUICK))
    assert auto.amp == ("bf16" if cpu_has_native_bf16() else "off")
    with pytest.raises(ConfigError, match="amp: 'fp16' autocast with a grad scaler needs CUDA"):
        finetune_(_net(), (x, y), None, FinetuneConfig(amp="fp16", device="cpu", **QUICK))


def test_gradient_clipping_bounds_each_step():
    x, y = _toy(64)
    model = _net()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    cfg = FinetuneConfig(epochs=1, batch_size=64, grad_clip_norm=1e-3, optimizer=SGDConfig(lr=1.0, momentum=0.0, weight_decay=0.0),
                         schedule=ConstantSchedule())
    finetune_(model, (x, y), None, cfg)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert 0 < float((after - before).norm()) <= 1e-3 * 1.0001


def test_same_seed_same_weights_other_seed_differs():
    x, y = _toy()
    runs = []
    for seed in (5, 5, 6):
        model = _net()
        finetune_(model, (x, y), None, FinetuneConfig(seed=seed, **QUICK))
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not torch.equal(runs[0]["classifier.weight"], runs[2]["classifier.weight"])


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path):
    x, y = _toy()
    xv, yv = _toy(100, 1)
    cfg = FinetuneConfig(epochs=4, batch_size=32, optimizer=SGDConfig(lr=0.05), checkpoint_dir=tmp_path, resume=True)
    straight = _net()
    finetune_(straight, (x, y), (xv, yv), cfg.model_copy(update={"checkpoint_dir": tmp_path / "a"}))

    class Stop(Exception):
        pass

    def stop_in_epoch_3(event):
        if event.epoch == 2 and event.step == 2:
            raise Stop

    interrupted = _net()
    with pytest.raises(Stop):
        finetune_(interrupted, (x, y), (xv, yv), cfg, progress=stop_in_epoch_3)
    resumed = _net()  # a fresh process would rebuild the model from scratch
    report = finetune_(resumed, (x, y), (xv, yv), cfg)
    assert report.resumed_from_epoch == 2 and len(report.history) == 4
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    with pytest.raises(ConfigError, match=r"different config \(optimizer changed\)"):
        finetune_(_net(), (x, y), (xv, yv), cfg.model_copy(update={"optimizer": AdamWConfig()}))


def test_regularizer_and_step_hook():
    x, y = _toy()
    calls = []
    plain, slim = _net(), _net()
    finetune_(plain, (x, y), None, FinetuneConfig(**QUICK))

    def l1_bn(model):
        return 1e-2 * sum(m.weight.abs().sum() for m in model.modules() if isinstance(m, nn.BatchNorm1d))

    finetune_(slim, (x, y), None, FinetuneConfig(**QUICK), regularizer=l1_bn, train_step_hook=lambda m, info: calls.append(info.global_step))
    gamma = lambda m: sum(float(b.weight.detach().abs().sum()) for b in m.modules() if isinstance(b, nn.BatchNorm1d))  # noqa: E731
    assert gamma(slim) < gamma(plain)
    assert calls == list(range(1, 2 * 10 + 1))  # 320 samples / 32 = 10 steps per epoch


def test_bad_data_is_a_clear_error():
    x, y = _toy()
    with pytest.raises(DataError, match="train split has no labels"):
        finetune_(_net(), (x, None), None, FinetuneConfig(**QUICK))
    with pytest.raises(DataError, match="val split: 100 inputs but 99 labels"):
        finetune_(_net(), (x, y), (x[:100], y[:99]), FinetuneConfig(**QUICK))
    with pytest.raises(DataError, match="labels must be integer class ids"):
        finetune_(_net(), (x, y.astype(np.float32)), None, FinetuneConfig(**QUICK))


def test_config_round_trips_and_rejects_unknown_keys():
    cfg = FinetuneConfig(freeze=FreezeLastN(n=2), schedule=SGDRSchedule(cycle_epochs=2, cycle_mult=2), optimizer=SGDConfig(),
                         param_groups=[ParamGroup(pattern="fc.*", lr_scale=0.1)], early_stopping=EarlyStopping())
    assert FinetuneConfig.model_validate_json(cfg.model_dump_json()) == cfg
    assert FinetuneConfig.model_validate({"freeze": {"kind": "none"}}).freeze == FreezeNone()
    with pytest.raises(ValidationError, match="epoch"):
        FinetuneConfig.model_validate({"epoch": 3})
    with pytest.raises(ValidationError, match="batch_size"):
        FinetuneConfig(batch_size=0)
    with pytest.raises(ValidationError, match="give lr or lr_scale"):
        ParamGroup(pattern="x", lr=1.0, lr_scale=2.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_with_grad_scaler_on_cuda():
    x, y = _toy()
    model = _net()
    report = finetune_(model, (x, y), _toy(100, 1), FinetuneConfig(amp="auto", device="cuda", grad_clip_norm=1.0, epochs=3,
                                                                     batch_size=32, optimizer=AdamWConfig(lr=1e-2)))
    assert report.amp == "fp16" and report.device.startswith("cuda") and report.best_metric > 0.8
