"""Learning-rate schedules: constant, cosine, SGDR (warm restarts), each with linear warm-up.

Schedules are configs (pydantic, keyed on ``kind``) that build torch's own
``lr_scheduler`` objects, stepped once per optimizer step, so their state
round-trips through ``state_dict`` for resumable training.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.optim import lr_scheduler

__all__ = ["ConstantSchedule", "CosineSchedule", "SGDRSchedule", "Schedule", "build_scheduler"]


class _ScheduleBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    warmup_epochs: float = Field(0.0, ge=0, description="Linear warm-up from warmup_start_factor x lr to lr, in epochs (fractions allowed).")
    warmup_start_factor: float = Field(0.1, gt=0, le=1, description="Share of the base lr the warm-up starts at.")


class ConstantSchedule(_ScheduleBase):
    """Keep the learning rate fixed after the warm-up."""

    kind: Literal["constant"] = "constant"


class CosineSchedule(_ScheduleBase):
    """Anneal the learning rate along a half cosine to ``min_lr_factor`` x lr at the last step."""

    kind: Literal["cosine"] = "cosine"
    min_lr_factor: float = Field(0.0, ge=0, le=1, description="Final lr as a share of the base lr.")


class SGDRSchedule(_ScheduleBase):
    """Cosine annealing with warm restarts (Loshchilov & Hutter, SGDR).

    The first cycle lasts ``cycle_epochs``; each next one is ``cycle_mult`` times longer.
    """

    kind: Literal["sgdr"] = "sgdr"
    cycle_epochs: float = Field(5.0, gt=0, description="Length of the first cycle in epochs.")
    cycle_mult: int = Field(1, ge=1, description="Growth factor of each next cycle's length.")
    min_lr_factor: float = Field(0.0, ge=0, le=1, description="Lowest lr of a cycle as a share of the base lr.")


Schedule = Annotated[ConstantSchedule | CosineSchedule | SGDRSchedule, Field(discriminator="kind")]


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: ConstantSchedule | CosineSchedule | SGDRSchedule, *, steps_per_epoch: int, epochs: int
) -> lr_scheduler.LRScheduler:
    """Build the torch scheduler for ``schedule``, to be stepped once per optimizer step.

    Args:
        optimizer: the optimizer whose groups' ``lr`` are the base rates.
        schedule: which schedule.
        steps_per_epoch: optimizer steps in one epoch (>= 1).
        epochs: planned epochs; cosine ends its decay at the last step.
    """
    steps_per_epoch = max(1, steps_per_epoch)
    total = max(1, epochs * steps_per_epoch)
    warmup = min(total - 1, round(schedule.warmup_epochs * steps_per_epoch)) if schedule.warmup_epochs else 0
    base = [group["lr"] for group in optimizer.param_groups]
    main: lr_scheduler.LRScheduler
    if isinstance(schedule, ConstantSchedule):
        main = lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    elif isinstance(schedule, CosineSchedule):
        # eta_min is absolute in torch; with per-group lrs one shared floor is the smallest scaled one
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup), eta_min=min(base) * schedule.min_lr_factor)
    else:
        main = lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=max(1, round(schedule.cycle_epochs * steps_per_epoch)), T_mult=schedule.cycle_mult,
            eta_min=min(base) * schedule.min_lr_factor,
        )
    if warmup <= 0:
        return main
    warm = lr_scheduler.LinearLR(optimizer, start_factor=schedule.warmup_start_factor, end_factor=1.0, total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, schedulers=[warm, main], milestones=[warmup])
