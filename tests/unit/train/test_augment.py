"""Batched augmentation: per-sample geometry, colour jitter, MixUp/CutMix targets, the user hook."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from modelpress.errors import ConfigError, DataError
from modelpress.train.augment import AugmentConfig, Augmenter


def _images(n=16):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 8, 8, generator=g), torch.arange(n) % 4


def test_flip_only_mirrors_about_half_the_samples_exactly():
    x, y = _images(64)
    out, target = Augmenter(AugmentConfig(hflip=True), num_classes=4)(x, y, torch.Generator().manual_seed(1))
    flipped = [bool(torch.allclose(o, torch.flip(i, dims=[-1]), atol=1e-5)) for o, i in zip(out, x)]
    same = [bool(torch.allclose(o, i, atol=1e-5)) for o, i in zip(out, x)]
    assert all(f or s for f, s in zip(flipped, same))
    assert 16 < sum(flipped) < 48
    assert torch.equal(target, y)


def test_geometry_and_jitter_keep_shape_vary_per_sample_and_repeat_under_a_seed():
    x, y = _images()
    x[:] = x[0]  # identical inputs: any difference comes from per-sample randomness
    aug = Augmenter(AugmentConfig(crop_padding=0.125, scale=(0.8, 1.2), rotation_deg=15, brightness=0.2, contrast=0.2), num_classes=4)
    a, _ = aug(x, y, torch.Generator().manual_seed(7))
    b, _ = aug(x, y, torch.Generator().manual_seed(7))
    assert a.shape == x.shape and torch.equal(a, b)
    assert float((a[0] - a[1]).abs().max()) > 1e-3


def test_mixup_makes_soft_targets_that_sum_to_one():
    x, y = _images()
    out, target = Augmenter(AugmentConfig(mixup_alpha=0.4), num_classes=4)(x, y, torch.Generator().manual_seed(2))
    assert target.shape == (16, 4)
    assert torch.allclose(target.sum(1), torch.ones(16))
    lam = float(target[0, y[0]]) if target[0].max() < 1 else 1.0
    assert 0 <= lam <= 1 and out.shape == x.shape


def test_cutmix_target_share_equals_the_pasted_area():
    x = torch.zeros(8, 1, 10, 10)
    x[4:] = 1.0  # second half ones, so the pasted area is visible
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    out, target = Augmenter(AugmentConfig(cutmix_alpha=1.0), num_classes=2)(x, y, torch.Generator().manual_seed(3))
    for i in range(8):
        ones_share = float(out[i].mean())
        assert float(target[i, 1]) == pytest.approx(ones_share, abs=1e-6)


def test_user_hook_runs_after_built_ins_and_mix_prob_zero_skips_mixing():
    x, y = _images()
    seen = {}

    def hook(xb, tb, gen):
        seen["target_shape"] = tuple(tb.shape)
        return xb * 0, tb

    aug = Augmenter(AugmentConfig(mixup_alpha=1.0, mix_prob=0.0), num_classes=4, user_transform=hook)
    out, target = aug(x, y, torch.Generator().manual_seed(0))
    assert aug.active and float(out.abs().sum()) == 0
    assert seen["target_shape"] == (16,) and torch.equal(target, y)


def test_bad_inputs():
    with pytest.raises(DataError, match=r"need image batches \(N, C, H, W\); got shape \(4, 1, 40\)"):
        Augmenter(AugmentConfig(hflip=True), num_classes=2)(torch.zeros(4, 1, 40), torch.zeros(4, dtype=torch.long), torch.Generator())
    with pytest.raises(ConfigError, match="need labelled classification data"):
        Augmenter(AugmentConfig(mixup_alpha=0.2), num_classes=None)
    with pytest.raises(ValidationError, match="scale"):
        AugmentConfig(scale=(1.2, 0.8))
    assert not Augmenter(None, num_classes=3).active


def _signals(n=16, length=12):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 2, length, generator=g) + 1.0, torch.arange(n) % 4  # strictly positive: zeros mark the fill


def test_shift_moves_each_signal_by_a_whole_offset_within_the_limit_and_fills_zeros():
    x, y = _signals(64)
    aug = Augmenter(AugmentConfig(shift=3), num_classes=4)
    out, target = aug(x, y, torch.Generator().manual_seed(4))
    offsets = []
    for o, i in zip(out, x):
        found = [k for k in range(-3, 4) if torch.equal(o, _shifted(i, k))]
        assert len(found) == 1
        offsets.append(found[0])
    assert set(offsets) == set(range(-3, 4))  # every offset in [-3, 3] turns up in 64 draws
    assert torch.equal(target, y)
    again, _ = aug(x, y, torch.Generator().manual_seed(4))
    assert torch.equal(out, again)


def _shifted(signal: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.zeros_like(signal)
    if k >= 0:
        out[:, k:] = signal[:, :signal.shape[1] - k]
    else:
        out[:, :k] = signal[:, -k:]
    return out


def test_noise_has_the_configured_spread_and_works_on_any_rank():
    x = torch.zeros(64, 1, 8, 8)
    out, _ = Augmenter(AugmentConfig(noise_std=0.3), num_classes=None)(x, torch.zeros(64, dtype=torch.long), torch.Generator().manual_seed(5))
    assert float(out.std()) == pytest.approx(0.3, rel=0.05)
    assert abs(float(out.mean())) < 0.02
    assert AugmentConfig(noise_std=0.1).active and AugmentConfig(shift=1).active


def test_shift_rejects_images_and_integer_inputs():
    with pytest.raises(DataError, match=r"shift needs signal batches \(N, C, L\); got shape \(2, 1, 4, 4\)"):
        Augmenter(AugmentConfig(shift=2), num_classes=2)(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long), torch.Generator())
    with pytest.raises(DataError, match="shift/noise_std need float inputs; got torch.int64"):
        Augmenter(AugmentConfig(noise_std=0.1), num_classes=2)(torch.zeros(2, 1, 4, dtype=torch.long), torch.zeros(2, dtype=torch.long), torch.Generator())
    with pytest.raises(ValidationError, match="shift"):
        AugmentConfig(shift=-1)
