"""Knowledge distillation: ``distill_(student, teachers, train, val, DistillConfig(...))``.

The loss of one batch is

    alpha * sum_k w_k * T^2 * KL(softmax(t_k / T) || softmax(s / T))   (Hinton et al., 2015)
    + (1 - alpha) * CE(s, y)
    + sum_f weight_f * feature_loss(adapter_f(s_f), t_f)                (FitNets hints)
    + sum_a weight_a * ||AT(s_a) - AT(t_a)||^2                          (Zagoruyko & Komodakis, 2017)

The T^2 factor keeps the soft gradients' size independent of T. Teachers label
the very batch the student sees, after ``config.train.augment`` and any
``transform``: a MixUp'd input gets the teacher's soft targets *on the mixed
input*, not a mixture of its targets on the two originals. That is "function
matching" (Beyer et al., 2022, "Knowledge distillation: A good teacher is
patient and consistent"): with aggressive augmentation every step shows the
student the teacher's function on new points. The loop is
the fine-tuning engine's (:func:`modelpress.train.finetune_`), so freezing,
schedules, AMP, early stopping and resume all apply to the student.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from modelpress.errors import ConfigError
from modelpress.train.augment import UserTransform
from modelpress.train.finetune import (
    Batch, DataArg, FinetuneConfig, FinetuneReport, Objective, ProgressEvent, Regularizer, StepHook,
    _submodule, evaluate_model, finetune_, split_tensors,
)

if TYPE_CHECKING:
    from modelpress.sources.models import ModelHandle

__all__ = ["AttentionLoss", "DistillConfig", "DistillReport", "FeatureLoss", "OnnxTeacher", "distill_"]

logger = logging.getLogger(__name__)


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureLoss(_Config):
    """A hint loss between a student layer's output and a teacher layer's output.

    When the widths differ a learned 1x1 adapter (Conv1d/Conv2d/Linear) maps
    the student's features to the teacher's width; spatial sizes are pooled or
    interpolated to the teacher's.
    """

    student: str = Field(description="Module name in the student (as in named_modules()).")
    teacher: str = Field(description="Module name in the teacher.")
    teacher_index: int = Field(0, ge=0, description="Which teacher, when there are several.")
    weight: float = Field(1.0, ge=0)
    loss: Literal["mse", "cosine"] = "mse"
    layout: Literal["auto", "channels_first", "channels_last"] = Field(
        "auto", description="Where the width is in 3-D features: (N, C, L) or (N, L, C); auto guesses from the layer type."
    )


class AttentionLoss(_Config):
    """Attention transfer: match the normalised spatial energy maps (mean of |F|^p over channels)."""

    student: str
    teacher: str
    teacher_index: int = Field(0, ge=0)
    weight: float = Field(1000.0, ge=0, description="beta; the AT paper uses 1000 with this mean-squared form.")
    p: float = Field(2.0, gt=0)


class DistillConfig(_Config):
    """How to distill; ``train`` is the student's fine-tuning config (epochs, optimizer, schedule...)."""

    train: FinetuneConfig = FinetuneConfig()
    # T=2, alpha=1 (teacher only, as in function matching) chosen on mnist1d's 400-sample validation split: 1/4-size
    # Conv1dNet student, 80 epochs, 3 seeds, shift-trained teacher labelling the shifted+noisy inputs the student sees.
    # Mean validation accuracy: T=1 97.25%, T=2 97.33%, T=4 96.67%, T=8 96.58%, T=4/alpha=0.9 96.92% (student alone
    # with the same augmentation 97.08%). The spread is 1-3 validation samples, so T in [1, 4] is a near tie. A second,
    # shallower student (ShallowConv1dNet, 7.75k parameters, seed 0) agreed: validation T=2 92.50%, T=4 92.25%,
    # T=2/alpha=0.5 90.75%, alone 91.25%, so the defaults stayed. Without augmentation a higher T wins (mean validation
    # gain over alone, 3 seeds: T=2 -0.08, T=4 +0.17, T=8 +0.50, T=16 +0.58 points): pass temperature=8 there, as the
    # benchmark's "plain" setting does. docs/train.md has the tables and the 3-seed test numbers.
    temperature: float = Field(2.0, gt=0, description="Softening temperature T (at the first epoch when scheduled).")
    temperature_final: float | None = Field(None, gt=0, description="Anneal T linearly to this by the last epoch (high to low).")
    alpha: float = Field(1.0, ge=0, le=1, description="Weight of the soft (teacher) loss; 1 - alpha goes to the labels.")
    teacher_weights: list[float] | None = Field(None, description="Relative weight of each teacher (normalised); equal when None.")
    features: list[FeatureLoss] = Field(default_factory=list)
    attention: list[AttentionLoss] = Field(default_factory=list)
    cache_teacher_outputs: bool = Field(True, description="Reuse teacher logits across epochs when inputs are not augmented.")

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        if self.teacher_weights is not None and (any(w < 0 for w in self.teacher_weights) or sum(self.teacher_weights) <= 0):
            raise ValueError(f"teacher_weights must be >= 0 with a positive sum; got {self.teacher_weights}")
        return self


@dataclass
class DistillReport:
    """What distillation did: the student's training report plus the teachers' numbers."""

    finetune: FinetuneReport
    teacher_accuracy: list[float | None]
    teacher_calls: list[int]          # teacher forward passes during training (the cache saves the rest)
    cached: list[bool]
    temperatures: list[float]         # T used in each epoch

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return asdict(self)


# ---- teachers ---------------------------------------------------------------------------------

class TorchTeacher:
    """A torch module run in eval mode without gradients."""

    def __init__(self, module: nn.Module, name: str) -> None:
        self.module = module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        self.name = name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.module(x).float()


class OnnxTeacher:
    """An ONNX model run by a modelpress runtime backend (ONNX Runtime by default)."""

    def __init__(self, handle: ModelHandle, name: str, *, backend: str = "onnxruntime", threads: int | None = None) -> None:
        from modelpress.runtime import RuntimeOptions, load_session

        self.path = Path(handle.onnx_path) if handle.onnx_path else None
        self.session = load_session(handle, backend, RuntimeOptions(threads=threads or torch.get_num_threads()))
        if len(self.session.input_names) != 1:
            raise ConfigError(f"teacher {name}: an ONNX teacher must take one input; {handle.spec} takes {list(self.session.input_names)}")
        self.input_name = self.session.input_names[0]
        self.name = name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run({self.input_name: np.ascontiguousarray(x.detach().cpu().float().numpy())})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)


# a torch module, an ONNX file path, or a ModelHandle (torch module preferred, else its ONNX file)
TeacherArg = nn.Module | Path | str | Any


def _as_teacher(obj: TeacherArg, i: int, device: torch.device) -> TorchTeacher | OnnxTeacher:
    name = f"#{i}"
    if isinstance(obj, nn.Module):
        return TorchTeacher(obj.to(device), name)
    if isinstance(obj, (str, Path)):
        from modelpress.sources.models import load_model

        path = Path(obj)
        if not path.is_file():
            raise ConfigError(f"teacher {name}: ONNX file {path} does not exist")
        return OnnxTeacher(load_model(f"onnx:{path}"), name)
    module, onnx_path = getattr(obj, "module", None), getattr(obj, "onnx_path", None)  # a ModelHandle
    if isinstance(module, nn.Module):
        return TorchTeacher(module.to(device), f"{name} ({getattr(obj, 'spec', '?')})")
    if onnx_path is not None:
        return OnnxTeacher(obj, f"{name} ({getattr(obj, 'spec', '?')})")
    raise ConfigError(f"teacher {name}: expected an nn.Module, an ONNX path or a ModelHandle; got {type(obj).__name__}")


# ---- the objective ----------------------------------------------------------------------------

_CHANNELS_LAST_TYPES = (nn.Linear, nn.LayerNorm, nn.Embedding, nn.TransformerEncoderLayer, nn.TransformerEncoder, nn.MultiheadAttention)


def _channels_last(module: nn.Module, layout: str) -> bool:
    if layout != "auto":
        return layout == "channels_last"
    return isinstance(module, _CHANNELS_LAST_TYPES)


def _attention_map(feat: torch.Tensor, p: float) -> torch.Tensor:
    return feat.float().abs().pow(p).mean(dim=1)  # (N, *spatial)


def _resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize the trailing spatial dims of ``x`` (N, C, *spatial) to ``size``."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    if all(s >= t for s, t in zip(x.shape[2:], size, strict=True)):
        return F.adaptive_avg_pool2d(x, size) if x.dim() == 4 else F.adaptive_avg_pool1d(x, size)
    return F.interpolate(x, size=tuple(size), mode="bilinear" if x.dim() == 4 else "linear", align_corners=False)


class DistillObjective(Objective):
    """The distillation loss as an engine :class:`Objective`; adapters are its trainable parameters."""

    def __init__(self, student: nn.Module, teachers: list[TorchTeacher | OnnxTeacher], config: DistillConfig, *, n_train: int) -> None:
        super().__init__()
        self.config = config
        self.teachers = teachers
        weights = config.teacher_weights or [1.0] * len(teachers)
        if len(weights) != len(teachers):
            raise ConfigError(f"teacher_weights: {len(teachers)} teachers but {len(weights)} weights")
        self.weights = [w / sum(weights) for w in weights]
        self.temperature = config.temperature
        self.temperatures: list[float] = []
        self.adapters = nn.ModuleDict()
        self.calls = [0] * len(teachers)
        self._student_feats: dict[str, torch.Tensor] = {}
        self._teacher_feats: list[dict[str, torch.Tensor]] = [{} for _ in teachers]
        self._handles: list[Any] = []
        self._needs_run = [False] * len(teachers)
        self._cache: list[torch.Tensor | None] = [None] * len(teachers)
        self._filled: list[torch.Tensor | None] = [None] * len(teachers)
        self._n_train = n_train
        self._last_layout: dict[str, bool] = {}
        self._hook_all(student)

    # -- set-up
    def _hook_all(self, student: nn.Module) -> None:
        specs = [*self.config.features, *self.config.attention]
        for spec in specs:
            kind = "features" if isinstance(spec, FeatureLoss) else "attention"
            if spec.teacher_index >= len(self.teachers):
                raise ConfigError(f"{kind}: teacher_index {spec.teacher_index} but there are {len(self.teachers)} teachers")
            teacher = self.teachers[spec.teacher_index]
            if not isinstance(teacher, TorchTeacher):
                raise ConfigError(f"{kind}: layer losses need a torch teacher; teacher {teacher.name} is an ONNX model (logits only)")
            s_mod = _submodule(student, spec.student, f"{kind}.student")
            t_mod = _submodule(teacher.module, spec.teacher, f"{kind}.teacher")
            self._handles.append(s_mod.register_forward_hook(self._store(self._student_feats, spec.student)))
            self._handles.append(t_mod.register_forward_hook(self._store(self._teacher_feats[spec.teacher_index], spec.teacher)))
            self._needs_run[spec.teacher_index] = True
        self._student_modules = {s.student: _submodule(student, s.student, "features.student") for s in self.config.features}

    @staticmethod
    def _store(into: dict[str, torch.Tensor], name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            into[name] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    def close(self) -> None:
        """Remove the forward hooks from student and teachers."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def check(self, model: nn.Module, batch: Batch) -> None:
        """Check output sizes against each teacher and build the feature adapters."""
        student_out = model(batch.x)
        for i, teacher in enumerate(self.teachers):
            t_out = teacher(batch.x)
            if tuple(t_out.shape) != tuple(student_out.shape):
                raise ConfigError(
                    f"distill: teacher {teacher.name} outputs shape {tuple(t_out.shape)} but the student outputs "
                    f"{tuple(student_out.shape)}; teacher and student must predict the same classes"
                )
        for spec in self.config.features:
            s, t = self._student_feats[spec.student], self._teacher_feats[spec.teacher_index][spec.teacher]
            key = self._key(spec)
            if s.dim() != t.dim():
                raise ConfigError(
                    f"features: student layer {spec.student!r} gives {s.dim()}-D features {tuple(s.shape)} but teacher layer "
                    f"{spec.teacher!r} gives {t.dim()}-D {tuple(t.shape)}; pick layers of the same kind"
                )
            last = s.dim() == 2 or (s.dim() == 3 and _channels_last(self._student_modules[spec.student], spec.layout))
            self._last_layout[key] = last
            cs, ct = (s.shape[-1], t.shape[-1]) if last else (s.shape[1], t.shape[1])
            if last and s.shape[1:-1] != t.shape[1:-1]:
                raise ConfigError(f"features: {spec.student!r} {tuple(s.shape)} and {spec.teacher!r} {tuple(t.shape)} differ in sequence length")
            if cs != ct:
                if last:
                    self.adapters[key] = nn.Linear(cs, ct)
                elif s.dim() == 3:
                    self.adapters[key] = nn.Conv1d(cs, ct, 1, bias=False)
                elif s.dim() == 4:
                    self.adapters[key] = nn.Conv2d(cs, ct, 1, bias=False)
                else:
                    raise ConfigError(f"features: cannot adapt {s.dim()}-D features of {spec.student!r} {tuple(s.shape)}")
                logger.info("adapter %s: %d -> %d", key, cs, ct)
        self.adapters.to(student_out.device)
        for spec in self.config.attention:
            s, t = self._student_feats[spec.student], self._teacher_feats[spec.teacher_index][spec.teacher]
            if s.dim() not in (3, 4) or t.dim() != s.dim():
                raise ConfigError(f"attention: needs conv feature maps (N, C, ...) of the same rank; got {tuple(s.shape)} and {tuple(t.shape)}")

    @staticmethod
    def _key(spec: FeatureLoss) -> str:
        return f"{spec.teacher_index}:{spec.student}->{spec.teacher}".replace(".", "_")

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        """Set this epoch's temperature (linear from ``temperature`` to ``temperature_final``)."""
        start, end = self.config.temperature, self.config.temperature_final
        frac = epoch / (epochs - 1) if epochs > 1 else 1.0
        self.temperature = start if end is None else start + (end - start) * frac
        self.temperatures.append(self.temperature)

    # -- the loss
    def _teacher_logits(self, i: int, batch: Batch) -> torch.Tensor:
        teacher = self.teachers[i]
        cacheable = self.config.cache_teacher_outputs and not batch.augmented and not self._needs_run[i]
        if cacheable:
            cache, filled = self._cache[i], self._filled[i]
            if cache is not None and filled is not None and bool(filled[batch.index].all()):
                return cache[batch.index].to(batch.x.device)
        self.calls[i] += 1
        logits = teacher(batch.x)
        if cacheable:
            if self._cache[i] is None:
                self._cache[i] = torch.zeros(self._n_train, logits.shape[1])
                self._filled[i] = torch.zeros(self._n_train, dtype=torch.bool)
            self._cache[i][batch.index] = logits.detach().cpu()  # type: ignore[index]
            self._filled[i][batch.index] = True  # type: ignore[index]
        return logits

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Return the combined distillation loss of ``model`` on ``batch``."""
        cfg = self.config
        logits = model(batch.x).float()
        T = self.temperature
        log_p = F.log_softmax(logits / T, dim=1)
        soft = logits.new_zeros(())
        for i, w in enumerate(self.weights):
            t_logits = self._teacher_logits(i, batch)
            if w > 0:
                soft = soft + w * F.kl_div(log_p, F.softmax(t_logits / T, dim=1), reduction="batchmean") * (T * T)
        loss = cfg.alpha * soft
        if cfg.alpha < 1:
            loss = loss + (1 - cfg.alpha) * F.cross_entropy(logits, batch.target)
        for spec in cfg.features:
            loss = loss + spec.weight * self._feature_loss(spec)
        for spec in cfg.attention:
            s = self._student_feats[spec.student]
            t = self._teacher_feats[spec.teacher_index][spec.teacher].detach()
            a_s, a_t = _attention_map(s, spec.p), _attention_map(t, spec.p)
            if a_s.shape[1:] != a_t.shape[1:]:
                a_s = _resize_to(a_s.unsqueeze(1), a_t.shape[1:]).squeeze(1)
            diff = F.normalize(a_s.flatten(1), dim=1) - F.normalize(a_t.flatten(1), dim=1)
            loss = loss + spec.weight * diff.pow(2).mean()
        return loss

    def _feature_loss(self, spec: FeatureLoss) -> torch.Tensor:
        key = self._key(spec)
        s = self._student_feats[spec.student].float()
        t = self._teacher_feats[spec.teacher_index][spec.teacher].detach().float()
        if key in self.adapters:
            s = self.adapters[key](s)
        last = self._last_layout[key]
        if not last and s.shape[2:] != t.shape[2:]:
            s = _resize_to(s, t.shape[2:])
        if spec.loss == "mse":
            return F.mse_loss(s, t)
        return (1 - F.cosine_similarity(s, t, dim=-1 if last else 1)).mean()


# ---- the verb ---------------------------------------------------------------------------------

def distill_(
    student: nn.Module,
    teachers: TeacherArg | Sequence[TeacherArg],
    train: DataArg,
    val: DataArg | None = None,
    config: DistillConfig | None = None,
    *,
    regularizer: Regularizer | None = None,
    train_step_hook: StepHook | None = None,
    transform: UserTransform | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> DistillReport:
    """Train ``student`` in place to match one or more teachers (and the labels).

    Args:
        student: the model to train (any classifier ``nn.Module``).
        teachers: one teacher or a list: torch modules, ONNX file paths, or ModelHandles.
        train: a Split or ``(x, y)`` pair; labels feed the hard loss.
        val: held-out data for the student's metric, early stopping and best-epoch restore.
        config: the distillation; ``config.train`` drives the training loop.
        regularizer: extra loss term on the student, as in :func:`finetune_`.
        train_step_hook: called after every optimizer step, as in :func:`finetune_`.
        transform: a user augmentation hook (turns the teacher cache off).
        progress: called after every step.

    Raises:
        ConfigError: teacher/student outputs of different sizes, a missing layer
            name, feature losses on an ONNX teacher, or a teacher_weights mismatch.
    """
    config = config or DistillConfig()
    teacher_list = list(teachers) if isinstance(teachers, (list, tuple)) else [teachers]
    if not teacher_list:
        raise ConfigError("distill: give at least one teacher")
    device = torch.device("cuda" if config.train.device == "cuda" or (config.train.device == "auto" and torch.cuda.is_available()) else "cpu")
    wrapped = [_as_teacher(t, i, device) for i, t in enumerate(teacher_list)]
    x_train, _ = split_tensors(train, "train")
    teacher_acc: list[float | None] = []
    if val is not None:
        x_val, y_val = split_tensors(val, "val")
        for t in wrapped:
            teacher_acc.append(_teacher_accuracy(t, x_val, y_val, config.train.eval_batch_size, device))  # type: ignore[arg-type]
    objective = DistillObjective(student, wrapped, config, n_train=len(x_train))
    try:
        report = finetune_(student, train, val, config.train, objective=objective, regularizer=regularizer,
                           train_step_hook=train_step_hook, transform=transform, progress=progress)
    finally:
        objective.close()
    cached = [config.cache_teacher_outputs and c is not None for c in objective._cache]
    return DistillReport(report, teacher_acc, list(objective.calls), cached, list(objective.temperatures))


def _teacher_accuracy(teacher: TorchTeacher | OnnxTeacher, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device) -> float:
    if isinstance(teacher, TorchTeacher):
        return evaluate_model(teacher.module, x, y, batch_size=batch_size, device=device)[1]
    correct = 0
    for start in range(0, len(x), batch_size):
        correct += int((teacher(x[start:start + batch_size]).argmax(1) == y[start:start + batch_size]).sum())
    return correct / len(x)
