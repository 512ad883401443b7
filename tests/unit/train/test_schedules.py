"""Learning-rate schedules: warm-up, cosine, SGDR restarts, constant."""

from __future__ import annotations

import math

import pytest
import torch

from modelpress.train.schedules import ConstantSchedule, CosineSchedule, SGDRSchedule, build_scheduler


def _lrs(schedule, *, steps_per_epoch=10, epochs=4, lr=0.1):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = build_scheduler(opt, schedule, steps_per_epoch=steps_per_epoch, epochs=epochs)
    out = []
    for _ in range(steps_per_epoch * epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_constant_stays_at_base():
    assert _lrs(ConstantSchedule()) == pytest.approx([0.1] * 40)


def test_cosine_decays_to_the_floor():
    lrs = _lrs(CosineSchedule(min_lr_factor=0.1))
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[20] == pytest.approx(0.01 + 0.09 * (1 + math.cos(math.pi * 20 / 40)) / 2)
    assert lrs[-1] == pytest.approx(0.01, abs=2e-3)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_linear_warmup_then_cosine():
    lrs = _lrs(CosineSchedule(warmup_epochs=1, warmup_start_factor=0.1))
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[5] == pytest.approx(0.01 + 0.09 * 5 / 10)
    assert lrs[10] == pytest.approx(0.1)  # warm-up done: the cosine starts from the base lr
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))
    assert lrs[-1] < 0.01


def test_sgdr_restarts_every_cycle_and_grows_cycles():
    lrs = _lrs(SGDRSchedule(cycle_epochs=1), epochs=3)
    assert lrs[0] == lrs[10] == lrs[20] == pytest.approx(0.1)
    assert lrs[9] < 0.01 and lrs[19] < 0.01
    grow = _lrs(SGDRSchedule(cycle_epochs=1, cycle_mult=2), epochs=3)
    assert grow[10] == pytest.approx(0.1) and grow[20] < 0.1 and grow[29] < 0.01  # second cycle lasts 20 steps


def test_scheduler_state_round_trips():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = build_scheduler(opt, SGDRSchedule(cycle_epochs=1, warmup_epochs=0.5), steps_per_epoch=10, epochs=3)
    for _ in range(13):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched2 = build_scheduler(opt2, SGDRSchedule(cycle_epochs=1, warmup_epochs=0.5), steps_per_epoch=10, epochs=3)
    sched2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = opt.param_groups[0]["lr"]
    for _ in range(5):
        opt.step(); sched.step(); opt2.step(); sched2.step()  # noqa: E702
        assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
