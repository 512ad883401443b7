"""Distillation: each loss, the temperature schedule, several teachers, an ONNX teacher, the cache, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from modelpress.compress.distill import AttentionLoss, DistillConfig, DistillObjective, FeatureLoss, TorchTeacher, distill_
from modelpress.errors import ConfigError
from modelpress.testing import Conv1dNet, ShallowConv1dNet
from modelpress.train.augment import AugmentConfig
from modelpress.train.finetune import AdamWConfig, Batch, FinetuneConfig, SGDConfig, finetune_


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _toy(n: int = 320, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 0.5, (n, 1, 24)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, 0, c * 8:(c + 1) * 8] += 1.5
    return x, y.astype(np.int64)


def _net(width: int = 8, seed: int = 0, classes: int = 3) -> Conv1dNet:
    torch.manual_seed(seed)
    return Conv1dNet(num_classes=classes, width=width, length=24)


@pytest.fixture(scope="module")
def teacher() -> Conv1dNet:
    torch.set_num_threads(1)
    model = _net(width=16, seed=1)
    finetune_(model, _toy(), None, FinetuneConfig(epochs=4, batch_size=32, optimizer=AdamWConfig(lr=1e-2)))
    return model


def _train(epochs: int = 2, **kw) -> FinetuneConfig:
    return FinetuneConfig(epochs=epochs, batch_size=32, optimizer=AdamWConfig(lr=1e-2), restore_best=False, **kw)


def _agreement(a: nn.Module, b: nn.Module, x: np.ndarray) -> float:
    with torch.no_grad():
        xt = torch.from_numpy(x)
        return float((a.eval()(xt).argmax(1) == b.eval()(xt).argmax(1)).float().mean())


def test_soft_loss_is_kl_times_t_squared_and_alpha_mixes_the_hard_loss(teacher):
    x, y = _toy(16)
    xb, yb = torch.from_numpy(x), torch.from_numpy(y)
    student = _net().eval()
    batch = Batch(xb, yb, torch.arange(16), False)
    with torch.no_grad():
        s, t = student(xb), teacher.eval()(xb)
    for alpha, temperature in ((1.0, 4.0), (0.0, 4.0), (0.3, 2.0)):
        obj = DistillObjective(student, [TorchTeacher(teacher, "t")], DistillConfig(alpha=alpha, temperature=temperature), n_train=16)
        obj.begin_epoch(0, 1)
        kl = F.kl_div(F.log_softmax(s / temperature, 1), F.softmax(t / temperature, 1), reduction="batchmean") * temperature**2
        want = alpha * kl + (1 - alpha) * F.cross_entropy(s, yb)
        with torch.no_grad():
            assert float(obj(student, batch)) == pytest.approx(float(want), rel=1e-5)


def test_students_learn_the_teachers_function_not_the_labels(teacher):
    # labels are noise; with alpha=1 only the teacher can teach, so agreement with it proves the soft loss works
    x, _ = _toy()
    noise = np.random.default_rng(9).integers(0, 3, len(x))
    xv, _ = _toy(200, seed=2)
    student = _net()
    before = _agreement(student, teacher, xv)
    report = distill_(student, teacher, (x, noise), None, DistillConfig(train=_train(epochs=5), alpha=1.0, temperature=2.0))
    after = _agreement(student, teacher, xv)
    assert after > 0.9 and after > before + 0.3
    assert report.cached == [True] and report.teacher_calls == [10]  # 320 / 32 batches, once: later epochs hit the cache


def test_temperature_schedule_goes_from_high_to_low(teacher):
    x, y = _toy()
    report = distill_(_net(), teacher, (x, y), None, DistillConfig(train=_train(epochs=4), temperature=8.0, temperature_final=2.0))
    assert report.temperatures == pytest.approx([8.0, 6.0, 4.0, 2.0])


def test_feature_hint_loss_builds_an_adapter_when_widths_differ(teacher):
    x, y = _toy()
    student = _net(width=8)
    cfg = DistillConfig(train=_train(epochs=3), features=[FeatureLoss(student="features.2", teacher="features.2", weight=1.0)])
    obj = DistillObjective(student, [TorchTeacher(teacher, "t")], cfg, n_train=len(x))
    with torch.no_grad():
        obj.check(student.eval(), Batch(torch.from_numpy(x[:8]), torch.from_numpy(y[:8]), torch.arange(8), False))
    (adapter,) = obj.adapters.values()
    assert isinstance(adapter, nn.Conv1d) and (adapter.in_channels, adapter.out_channels) == (8, 16)
    obj.close()

    def hint_distance(model: nn.Module) -> float:
        feats = {}
        hs = [model.features[2].register_forward_hook(lambda m, i, o: feats.__setitem__("s", o)),
              teacher.features[2].register_forward_hook(lambda m, i, o: feats.__setitem__("t", o))]
        with torch.no_grad():
            xb = torch.from_numpy(x[:64])
            model.eval()(xb), teacher.eval()(xb)
        for h in hs:
            h.remove()
        return feats

    report = distill_(student, teacher, (x, y), None, cfg)
    assert report.teacher_calls == [30]  # feature losses need the teacher's activations every step: no cache
    feats = hint_distance(student)
    assert feats["s"].shape[1] == 8 and feats["t"].shape[1] == 16


def test_feature_loss_decreases_with_training(teacher):
    x, y = _toy()
    cfg = DistillConfig(train=_train(epochs=3), alpha=0.0, features=[FeatureLoss(student="features.5", teacher="features.5", weight=5.0)])
    student = _net(width=16)
    first = {}

    def grab(event):
        first.setdefault(event.epoch, event.loss)

    distill_(student, teacher, (x, y), None, cfg, progress=grab)
    s_feat, t_feat = {}, {}
    h1 = student.features[5].register_forward_hook(lambda m, i, o: s_feat.__setitem__("o", o))
    h2 = teacher.features[5].register_forward_hook(lambda m, i, o: t_feat.__setitem__("o", o))
    with torch.no_grad():
        student.eval()(torch.from_numpy(x)), teacher.eval()(torch.from_numpy(x))
    h1.remove(), h2.remove()
    untrained_s = {}
    fresh = _net(width=16)
    h3 = fresh.features[5].register_forward_hook(lambda m, i, o: untrained_s.__setitem__("o", o))
    with torch.no_grad():
        fresh.eval()(torch.from_numpy(x))
    h3.remove()
    # same widths: no adapter, so the student's own activations move towards the teacher's
    assert F.mse_loss(s_feat["o"], t_feat["o"]) < 0.5 * F.mse_loss(untrained_s["o"], t_feat["o"])


def test_attention_transfer_is_zero_for_a_copy_and_trains_down(teacher):
    x, y = _toy()
    copy = _net(width=16, seed=1)
    copy.load_state_dict(teacher.state_dict())
    cfg = DistillConfig(alpha=1.0, attention=[AttentionLoss(student="features.2", teacher="features.2")])
    batch = Batch(torch.from_numpy(x[:32]), torch.from_numpy(y[:32]), torch.arange(32), False)
    obj = DistillObjective(copy, [TorchTeacher(teacher, "t")], cfg, n_train=32)
    with torch.no_grad():
        obj.check(copy.eval(), batch)
        obj.begin_epoch(0, 1)
        assert float(obj(copy, batch)) == pytest.approx(0.0, abs=1e-5)
    obj.close()

    def at_loss(student):
        o = DistillObjective(student, [TorchTeacher(teacher, "t")], cfg.model_copy(update={"alpha": 0.0}), n_train=len(x))
        full = Batch(torch.from_numpy(x), torch.zeros(len(x), dtype=torch.long), torch.arange(len(x)), False)
        with torch.no_grad():
            o.check(student.eval(), full)
            o.begin_epoch(0, 1)
            value = float(o(student.eval(), full)) - float(F.cross_entropy(student(full.x), full.target))
        o.close()
        return value

    student = _net(width=8)
    before = at_loss(student)
    distill_(student, teacher, (x, y), None, cfg.model_copy(update={"train": _train(epochs=3), "alpha": 0.5}))
    assert at_loss(student) < 0.5 * before


def test_several_weighted_teachers(teacher):
    x, y = _toy()
    other = _net(width=16, seed=5)  # an untrained, different teacher
    runs = {}
    for name, teachers, weights in (("one", [teacher], None), ("w10", [teacher, other], [1.0, 0.0]), ("w55", [teacher, other], [1.0, 1.0])):
        student = _net()
        report = distill_(student, teachers, (x, y), _toy(100, 3), DistillConfig(train=_train(epochs=2), teacher_weights=weights))
        runs[name] = (student.state_dict(), report)
    # a zero weight leaves exactly the one-teacher run
    assert all(torch.equal(v, runs["w10"][0][k]) for k, v in runs["one"][0].items())
    assert not torch.equal(runs["one"][0]["classifier.weight"], runs["w55"][0]["classifier.weight"])
    assert len(runs["w55"][1].teacher_accuracy) == 2 and runs["w55"][1].teacher_accuracy[0] > 0.9


def test_onnx_teacher_matches_the_torch_teacher(teacher, tmp_path):
    path = tmp_path / "teacher.onnx"
    torch.onnx.export(teacher.eval(), (torch.zeros(2, 1, 24),), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    x, y = _toy()
    xv = _toy(100, 3)
    via_torch, via_onnx = _net(), _net()
    # SGD: Adam's per-parameter normalisation would blow ~1e-6 logit differences up on near-zero gradients
    cfg = DistillConfig(train=_train(epochs=2).model_copy(update={"optimizer": SGDConfig(lr=0.05)}))
    r_torch = distill_(via_torch, teacher, (x, y), xv, cfg)
    r_onnx = distill_(via_onnx, path, (x, y), xv, cfg)
    assert r_onnx.teacher_accuracy == pytest.approx(r_torch.teacher_accuracy)
    assert r_onnx.teacher_calls == [10] and r_onnx.cached == [True]
    for k, v in via_torch.state_dict().items():
        assert torch.allclose(v.float(), via_onnx.state_dict()[k].float(), atol=1e-4), k
    with pytest.raises(ConfigError, match="layer losses need a torch teacher; teacher #0 is an ONNX model"):
        distill_(_net(), path, (x, y), None, DistillConfig(features=[FeatureLoss(student="features.2", teacher="features.2")]))


def test_augmented_inputs_skip_the_cache(teacher):
    x, y = _toy()
    report = distill_(_net(), teacher, (x, y), None, DistillConfig(train=_train(epochs=2, augment=AugmentConfig(mixup_alpha=0.2))))
    assert report.teacher_calls == [20] and report.cached == [False]


def test_teacher_labels_the_same_augmented_and_mixed_batch_the_student_sees(teacher):
    # consistent teaching (Beyer et al., 2022): every step, the teacher's input is exactly the student's
    x, y = _toy(96)
    seen: dict[str, list[torch.Tensor]] = {"student": [], "teacher": []}
    student = _net()
    hooks = [m.register_forward_pre_hook(lambda _m, args, k=k: seen[k].append(args[0].detach().clone()))
             for k, m in (("student", student), ("teacher", teacher))]
    try:
        augment = AugmentConfig(shift=2, noise_std=0.2, mixup_alpha=1.0)
        distill_(student, teacher, (x, y), None, DistillConfig(train=_train(epochs=2, augment=augment)))
    finally:
        for h in hooks:
            h.remove()
    train_steps = [t for t in seen["student"] if len(t) == 32]  # the engine's set-up probe uses a smaller batch
    teacher_steps = [t for t in seen["teacher"] if len(t) == 32]
    assert len(train_steps) == len(teacher_steps) == 6
    for s_in, t_in in zip(train_steps, teacher_steps, strict=True):
        assert torch.equal(s_in, t_in)
        assert not any(torch.equal(s_in[:1], torch.from_numpy(x[i:i + 1])) for i in range(len(x)))  # really augmented


def test_soft_target_of_a_mixed_input_is_the_teacher_on_that_input_not_a_mix_of_its_outputs(teacher):
    x, y = _toy(16)
    xa, xb = torch.from_numpy(x[:8]), torch.from_numpy(x[8:])
    mixed = 0.5 * xa + 0.5 * xb
    target = 0.5 * F.one_hot(torch.from_numpy(y[:8]), 3).float() + 0.5 * F.one_hot(torch.from_numpy(y[8:]), 3).float()
    student = _net().eval()
    obj = DistillObjective(student, [TorchTeacher(teacher, "t")], DistillConfig(alpha=1.0, temperature=1.0), n_train=16)
    obj.begin_epoch(0, 1)
    with torch.no_grad():
        t = teacher.eval()
        log_p = F.log_softmax(student(mixed), 1)
        on_mixed = F.kl_div(log_p, F.softmax(t(mixed), 1), reduction="batchmean")
        of_mix = F.kl_div(log_p, 0.5 * F.softmax(t(xa), 1) + 0.5 * F.softmax(t(xb), 1), reduction="batchmean")
        got = float(obj(student, Batch(mixed, target, torch.arange(8), True)))
    assert got == pytest.approx(float(on_mixed), rel=1e-5)
    assert abs(float(on_mixed) - float(of_mix)) > 1e-3  # the two readings differ, so the check can fail


def test_bad_inputs_are_clear_errors(teacher):
    x, y = _toy()
    with pytest.raises(ConfigError, match=r"teacher #0 outputs shape \(8, 3\) but the student outputs \(8, 5\)"):
        distill_(_net(classes=5), teacher, (x, y), None, DistillConfig(train=_train()))
    with pytest.raises(ConfigError, match=r"features.student: the model has no module 'feature.2'; closest: 'features.2'"):
        distill_(_net(), teacher, (x, y), None, DistillConfig(features=[FeatureLoss(student="feature.2", teacher="features.2")]))
    with pytest.raises(ConfigError, match=r"attention.teacher: the model has no module 'layer9'"):
        distill_(_net(), teacher, (x, y), None, DistillConfig(attention=[AttentionLoss(student="features.2", teacher="layer9")]))
    with pytest.raises(ConfigError, match="teacher_weights: 1 teachers but 2 weights"):
        distill_(_net(), teacher, (x, y), None, DistillConfig(teacher_weights=[1.0, 2.0]))
    with pytest.raises(ConfigError, match="ONNX file .*missing.onnx does not exist"):
        distill_(_net(), "missing.onnx", (x, y), None, DistillConfig())
    with pytest.raises(ValidationError, match="alpha"):
        DistillConfig(alpha=1.5)


def test_config_round_trips():
    cfg = DistillConfig(temperature=6, temperature_final=2, alpha=0.7, teacher_weights=[2, 1],
                        features=[FeatureLoss(student="a", teacher="b", loss="cosine")], attention=[AttentionLoss(student="a", teacher="b")])
    assert DistillConfig.model_validate_json(cfg.model_dump_json()) == cfg
    with pytest.raises(ValidationError, match="temprature"):
        DistillConfig.model_validate({"temprature": 3})


def test_shallow_student_is_a_quarter_of_the_benchmark_teacher_and_distills(teacher) -> None:
    def params(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    # the benchmark's second student family: about a quarter of the Conv1dNet(width=64) teacher
    assert params(ShallowConv1dNet(width=36)) == 7750
    assert 0.2 < params(ShallowConv1dNet(width=36)) / params(Conv1dNet(width=64)) < 0.3
    x, y = _toy()
    torch.manual_seed(0)
    student = ShallowConv1dNet(num_classes=3, width=8, length=24)
    assert student(torch.from_numpy(x[:4])).shape == (4, 3)
    distill_(student, teacher, (x, y), None, DistillConfig(train=_train(epochs=4)))
    assert _agreement(student, teacher, _toy(200, seed=5)[0]) > 0.85
