"""Batched image augmentation on torch tensors, with per-sample randomness.

Geometry (crop-by-translation, flip, scale, rotation) is one affine warp per
sample through ``affine_grid``/``grid_sample``, so a whole batch costs two
kernels instead of a Python loop over images. Signals (N, C, L) get a random
per-sample shift along L and Gaussian noise. MixUp and CutMix mix pairs of
samples and turn the labels into soft targets.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from modelpress.errors import ConfigError, DataError

__all__ = ["AugmentConfig", "Augmenter", "UserTransform"]

UserTransform = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
"""A hook run after the built-in augmentation: ``(x, target, generator) -> (x, target)``.

``target`` is int64 labels (N,) or soft targets (N, C) after MixUp/CutMix.
Use ``generator`` for randomness so that runs stay deterministic under a seed.
"""


class AugmentConfig(BaseModel):
    """Which augmentations to apply to each training batch (images are (N, C, H, W)).

    Geometric and colour options need image batches; ``shift`` needs signals
    (N, C, L); noise and MixUp work on any float input (CutMix needs images).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    crop_padding: float = Field(0.0, ge=0, lt=0.5, description="Random crop as a shift of up to this share of the side (0.125 = pad 4 on 32).")
    hflip: bool = Field(False, description="Flip horizontally with probability 0.5.")
    scale: tuple[float, float] = Field((1.0, 1.0), description="Random zoom range, e.g. (0.9, 1.1).")
    rotation_deg: float = Field(0.0, ge=0, le=180, description="Random rotation in [-deg, deg].")
    brightness: float = Field(0.0, ge=0, le=1, description="Colour jitter: multiply by a factor in [1-b, 1+b].")
    contrast: float = Field(0.0, ge=0, le=1, description="Colour jitter: scale around the per-image mean by [1-c, 1+c].")
    shift: int = Field(0, ge=0, description="Signals (N, C, L): shift each sample by up to this many steps along L (zeros fill in).")
    noise_std: float = Field(0.0, ge=0, description="Add Gaussian noise of this standard deviation to every input value.")
    mixup_alpha: float = Field(0.0, ge=0, description="Beta(alpha, alpha) for MixUp; 0 disables it.")
    cutmix_alpha: float = Field(0.0, ge=0, description="Beta(alpha, alpha) for CutMix; 0 disables it.")
    mix_prob: float = Field(1.0, ge=0, le=1, description="Share of batches that get MixUp or CutMix.")
    cutmix_share: float = Field(0.5, ge=0, le=1, description="When both are on: share of mixed batches that use CutMix rather than MixUp.")

    @model_validator(mode="after")
    def _check(self) -> AugmentConfig:
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high; got {self.scale}")
        return self

    @property
    def geometric(self) -> bool:
        """Say whether any per-sample warp is on."""
        return self.crop_padding > 0 or self.hflip or self.scale != (1.0, 1.0) or self.rotation_deg > 0

    @property
    def mixing(self) -> bool:
        """Say whether MixUp or CutMix is on."""
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mix_prob > 0

    @property
    def active(self) -> bool:
        """Say whether this config changes any input."""
        return self.geometric or self.brightness > 0 or self.contrast > 0 or self.shift > 0 or self.noise_std > 0 or self.mixing


class Augmenter:
    """Apply an :class:`AugmentConfig` (and an optional user hook) to training batches."""

    def __init__(self, config: AugmentConfig | None, *, num_classes: int | None, user_transform: UserTransform | None = None) -> None:
        """Prepare the augmenter.

        Args:
            config: the augmentations; None applies only ``user_transform``.
            num_classes: classes for soft targets; needed when MixUp/CutMix is on.
            user_transform: a hook run after the built-in steps.
        """
        self.config = config or AugmentConfig()
        if self.config.mixing and not num_classes:
            raise ConfigError("augment.mixup_alpha / cutmix_alpha need labelled classification data (num_classes is unknown)")
        self.num_classes = num_classes
        self.user_transform = user_transform

    @property
    def active(self) -> bool:
        """Say whether batches change (so that teacher outputs cannot be cached per sample)."""
        return self.config.active or self.user_transform is not None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one batch; return inputs and targets (labels, or soft targets after mixing)."""
        cfg = self.config
        needs_image = cfg.geometric or cfg.brightness > 0 or cfg.contrast > 0
        if needs_image and x.dim() != 4:
            raise DataError(
                f"augment: crop/flip/scale/rotation/colour jitter need image batches (N, C, H, W); got shape {tuple(x.shape)}. "
                "Turn them off or use mixup_alpha only."
            )
        if needs_image and not x.is_floating_point():
            raise DataError(f"augment: image augmentation needs float inputs; got {x.dtype}")
        if (cfg.shift > 0 or cfg.noise_std > 0) and not x.is_floating_point():
            raise DataError(f"augment: shift/noise_std need float inputs; got {x.dtype}")
        if cfg.shift > 0:
            if x.dim() != 3:
                raise DataError(f"augment: shift needs signal batches (N, C, L); got shape {tuple(x.shape)}. Use crop_padding for images.")
            x = self._shift(x, generator)
        if cfg.noise_std > 0:
            x = x + cfg.noise_std * torch.randn(x.shape, generator=generator).to(x.dtype)
        if cfg.geometric:
            x = self._warp(x, generator)
        if cfg.brightness > 0 or cfg.contrast > 0:
            x = self._jitter(x, generator)
        if cfg.mixing and float(torch.rand((), generator=generator)) < cfg.mix_prob:
            x, y = self._mix(x, y, generator)
        if self.user_transform is not None:
            x, y = self.user_transform(x, y, generator)
        return x, y

    def _uniform(self, n: int, lo: float, hi: float, generator: torch.Generator) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    def _warp(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        cfg = self.config
        n = x.shape[0]
        angle = self._uniform(n, -cfg.rotation_deg, cfg.rotation_deg, generator) * (math.pi / 180)
        # grid coordinates map output -> input, so zooming in by s means sampling a 1/s window
        scale = 1.0 / self._uniform(n, cfg.scale[0], cfg.scale[1], generator)
        flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones(n)
        shift = self._uniform(2 * n, -2 * cfg.crop_padding, 2 * cfg.crop_padding, generator).view(n, 2)
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        theta = torch.stack([
            torch.stack([cos * flip, -sin, shift[:, 0]], dim=1),
            torch.stack([sin * flip, cos, shift[:, 1]], dim=1),
        ], dim=1).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # zeros padding reproduces the classic "pad then crop" look
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _shift(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, c, length = x.shape
        k = self.config.shift
        offset = torch.randint(-k, k + 1, (n, 1), generator=generator)
        # output position j reads input position j - offset; one gather for the whole batch
        src = torch.arange(length).view(1, length) - offset
        inside = (src >= 0) & (src < length)
        gathered = torch.gather(x, 2, src.clamp(0, length - 1).view(n, 1, length).expand(n, c, length))
        return gathered * inside.view(n, 1, length).to(x.dtype)

    def _jitter(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        cfg = self.config
        n = x.shape[0]
        if cfg.brightness > 0:
            x = x * self._uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, generator).view(n, 1, 1, 1).to(x.dtype)
        if cfg.contrast > 0:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * self._uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, generator).view(n, 1, 1, 1).to(x.dtype) + mean
        return x

    def _mix(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        target = y if y.dim() == 2 else F.one_hot(y, self.num_classes).to(torch.float32)
        use_cutmix = cfg.cutmix_alpha > 0 and x.dim() == 4 and (
            cfg.mixup_alpha == 0 or float(torch.rand((), generator=generator)) < cfg.cutmix_share
        )
        alpha = cfg.cutmix_alpha if use_cutmix else cfg.mixup_alpha
        if alpha <= 0:
            return x, target
        lam = _beta(alpha, generator)
        perm = torch.randperm(x.shape[0], generator=generator)
        if use_cutmix:
            h, w = x.shape[-2:]
            cut = math.sqrt(1 - lam)
            ch, cw = int(h * cut), int(w * cut)
            cy, cx = int(torch.randint(h, (), generator=generator)), int(torch.randint(w, (), generator=generator))
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
            x = x.clone()
            x[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
        else:
            x = lam * x + (1 - lam) * x[perm]
        return x, lam * target + (1 - lam) * target[perm]


def _beta(alpha: float, generator: torch.Generator) -> float:
    """Draw one Beta(alpha, alpha) sample reproducibly from ``generator``."""
    # torch's Beta sampler takes no generator; seed numpy's from ours so runs repeat under a seed
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))
