"""The training engine: fine-tuning (finetune_), schedules and augmentation.

Distillation lives in :mod:`modelpress.compress.distill` and runs on this engine.
"""

from __future__ import annotations

from modelpress.train.augment import AugmentConfig, Augmenter
from modelpress.train.finetune import (
    AdamWConfig, Batch, EarlyStopping, EpochStats, FinetuneConfig, FinetuneReport, FreezeHead, FreezeLastN, FreezeNone,
    FreezePattern, Objective, ParamGroup, ProgressEvent, SGDConfig, StepInfo, evaluate_model, finetune_, freeze_,
)
from modelpress.train.schedules import ConstantSchedule, CosineSchedule, SGDRSchedule, build_scheduler

__all__ = [
    "AdamWConfig", "AugmentConfig", "Augmenter", "Batch", "ConstantSchedule", "CosineSchedule", "EarlyStopping", "EpochStats",
    "FinetuneConfig", "FinetuneReport", "FreezeHead", "FreezeLastN", "FreezeNone", "FreezePattern", "Objective", "ParamGroup",
    "ProgressEvent", "SGDConfig", "SGDRSchedule", "StepInfo", "build_scheduler", "evaluate_model", "finetune_", "freeze_",
]
