"""The configs of a fine-tuning run: optimizer, freezing, parameter groups, early stopping.

:class:`FinetuneConfig` is what a recipe's ``finetune`` stage, the CLI and
:func:`modelpress.train.finetune_` take; everything here is a frozen pydantic
model with ``extra="forbid"``, so a typo fails when the recipe loads. The
loop that runs them is :mod:`modelpress.train.finetune`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from modelpress.errors import ConfigError
from modelpress.train.augment import AugmentConfig
from modelpress.train.schedules import CosineSchedule, Schedule

__all__ = [
    "AdamWConfig", "EarlyStopping", "FinetuneConfig", "FreezeConfig", "FreezeHead", "FreezeLastN", "FreezeNone",
    "FreezePattern", "OptimizerConfig", "ParamGroup", "SGDConfig", "config_error",
]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- optimizers -------------------------------------------------------------------------------

class SGDConfig(_Config):
    """SGD with (Nesterov) momentum."""

    kind: Literal["sgd"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)


class AdamWConfig(_Config):
    """AdamW (decoupled weight decay)."""

    kind: Literal["adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.01, ge=0)


OptimizerConfig = Annotated[SGDConfig | AdamWConfig, Field(discriminator="kind")]


# ---- freezing ---------------------------------------------------------------------------------

class FreezeNone(_Config):
    """Train every parameter."""

    kind: Literal["none"] = "none"


class FreezePattern(_Config):
    """Freeze the parameters whose names match any glob pattern (``features.*``, ``*.bn*.weight``)."""

    kind: Literal["pattern"] = "pattern"
    patterns: list[str] = Field(min_length=1)


class FreezeHead(_Config):
    """Train only the head: the module named ``head``, or the last block when None."""

    kind: Literal["head"] = "head"
    head: str | None = None


class FreezeLastN(_Config):
    """Train only the last ``n`` blocks.

    Blocks are the children of ``container`` (the whole model when None) with
    nested ``nn.Sequential``/``nn.ModuleList`` containers opened up, keeping
    only children that hold parameters.
    """

    kind: Literal["last_n"] = "last_n"
    n: int = Field(1, ge=1)
    container: str | None = None


FreezeConfig = Annotated[FreezeNone | FreezePattern | FreezeHead | FreezeLastN, Field(discriminator="kind")]


class ParamGroup(_Config):
    """A learning rate (and optional weight decay) for the parameters matching a glob pattern."""

    pattern: str
    lr: float | None = Field(None, gt=0, description="Absolute learning rate for this group.")
    lr_scale: float | None = Field(None, gt=0, description="Multiplier on the optimizer's lr.")
    weight_decay: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _one_lr(self) -> ParamGroup:
        if self.lr is not None and self.lr_scale is not None:
            raise ValueError(f"param group {self.pattern!r}: give lr or lr_scale, not both")
        return self


class EarlyStopping(_Config):
    """Stop when the validation metric has not improved for ``patience`` epochs."""

    metric: Literal["accuracy", "loss"] = "accuracy"
    patience: int = Field(3, ge=1)
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as an improvement.")


class FinetuneConfig(_Config):
    """Everything that shapes one fine-tuning run; round-trips to JSON."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    optimizer: OptimizerConfig = AdamWConfig()
    schedule: Schedule = CosineSchedule()
    freeze: FreezeConfig = FreezeNone()
    param_groups: list[ParamGroup] = Field(default_factory=list)
    early_stopping: EarlyStopping | None = None
    selection_metric: Literal["accuracy", "loss"] = Field(
        "accuracy", description="Validation metric that picks the best epoch when early_stopping is off."
    )
    restore_best: bool = Field(True, description="Load the best validation epoch's weights at the end.")
    amp: Literal["off", "auto", "bf16", "fp16"] = Field(
        "off", description="auto: fp16 + GradScaler on CUDA, bf16 on CPUs with native bf16, else off."
    )
    grad_clip_norm: float | None = Field(None, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: AugmentConfig | None = None
    seed: int = 0
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    checkpoint_dir: Path | None = Field(None, description="Write a resumable checkpoint here after every epoch.")
    resume: bool = Field(False, description="Continue from checkpoint_dir's checkpoint when one exists.")

    @property
    def metric(self) -> Literal["accuracy", "loss"]:
        """The validation metric that picks the best epoch."""
        return self.early_stopping.metric if self.early_stopping else self.selection_metric


def config_error(err: ValidationError, what: str) -> ConfigError:
    """Turn a pydantic error into one :class:`ConfigError` naming every bad field."""
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or what}: {e['msg']} (got {e.get('input')!r})" for e in err.errors())
    return ConfigError(f"{what}: {problems}")
