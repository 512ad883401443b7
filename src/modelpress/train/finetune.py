"""The fine-tuning engine: ``finetune_(model, train, val, FinetuneConfig(...))``.

One loop serves every stage that trains: plain fine-tuning, pruning's recovery
fine-tuning (with a ``regularizer`` such as L1 on BN-gamma, and a
``train_step_hook`` that re-applies masks), quantization-aware training, and
distillation (which passes its own :class:`Objective`).
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modelpress.errors import ConfigError, DataError
from modelpress.train.augment import Augmenter, UserTransform

# the configs live in train/config.py; they are imported (and re-exported) from here too
from modelpress.train.config import (
    AdamWConfig, EarlyStopping, FinetuneConfig, FreezeConfig, FreezeHead, FreezeLastN, FreezeNone, FreezePattern,
    OptimizerConfig, ParamGroup, SGDConfig, config_error,
)
from modelpress.train.schedules import build_scheduler

__all__ = [
    "AdamWConfig", "Batch", "EarlyStopping", "EpochStats", "FinetuneConfig", "FinetuneReport", "FreezeConfig", "FreezeHead",
    "FreezeLastN", "FreezeNone", "FreezePattern", "Objective", "OptimizerConfig", "ParamGroup", "ProgressEvent", "SGDConfig",
    "StepInfo", "config_error", "evaluate_model", "finetune_", "freeze_", "split_tensors",
]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "finetune_state.pt"
_CHECKPOINT_FORMAT = 1


# ---- run-time records --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Batch:
    """One training batch as an :class:`Objective` sees it."""

    x: torch.Tensor
    target: torch.Tensor          # int64 labels (N,), or soft targets (N, C) after MixUp/CutMix
    index: torch.Tensor           # positions of the samples in the training split (for caches)
    augmented: bool               # True when x differs from the stored samples


@dataclass(frozen=True, slots=True)
class StepInfo:
    """What a ``train_step_hook`` learns about the step that just finished."""

    epoch: int
    step: int
    global_step: int
    loss: float


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """Progress of a run, sent to the ``progress`` callback after every step."""

    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    val_metric: float | None      # last finished epoch's validation metric
    metric: str


@dataclass(frozen=True, slots=True)
class EpochStats:
    """One epoch's numbers."""

    epoch: int
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    lr: float
    seconds: float
    samples_per_s: float


@dataclass
class FinetuneReport:
    """What a run did: per-epoch history, the best epoch and the training speed."""

    history: list[EpochStats]
    metric: str
    best_epoch: int | None
    best_metric: float | None
    stopped_early: bool
    restored_best: bool
    samples_per_s: float
    trainable_params: int
    total_params: int
    amp: str
    device: str
    resumed_from_epoch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return asdict(self)


class Objective(nn.Module):
    """The loss of one batch. Its own parameters (e.g. distillation adapters) train with the model."""

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:  # pragma: no cover - interface
        """Return the scalar loss of ``model`` on ``batch``."""
        raise NotImplementedError

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        """Prepare for ``epoch`` of ``epochs`` (schedules of loss weights live here)."""

    def check(self, model: nn.Module, batch: Batch) -> None:
        """Fail fast on a bad set-up, once, before the optimizer is built (adapters may be created here)."""


class CrossEntropyObjective(Objective):
    """Cross-entropy on labels or soft targets (MixUp/CutMix), with optional label smoothing."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Return the mean cross-entropy of ``model`` on ``batch``."""
        return F.cross_entropy(model(batch.x).float(), batch.target, label_smoothing=self.label_smoothing)


class _SplitLike(Protocol):
    x: Any
    y: Any


DataArg = _SplitLike | tuple[Any, Any]
Regularizer = Callable[[nn.Module], torch.Tensor]
StepHook = Callable[[nn.Module, StepInfo], None]


# ---- data ---------------------------------------------------------------------------------------

def split_tensors(split: DataArg, name: str, *, need_labels: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Turn a Split (``.x``/``.y``) or an ``(x, y)`` pair of numpy arrays or tensors into CPU tensors.

    Args:
        split: the data.
        name: which split, for error messages ("train", "val").
        need_labels: raise when labels are missing.
    """
    if isinstance(split, tuple):
        if len(split) != 2:
            raise DataError(f"{name} split: expected (x, y); got a tuple of {len(split)}")
        x, y = split
    elif hasattr(split, "x") and hasattr(split, "y"):
        x, y = split.x, split.y
    else:
        raise DataError(f"{name} split: expected a Split with .x/.y or an (x, y) pair; got {type(split).__name__}")
    if isinstance(x, list) and x and isinstance(x[0], str):
        raise DataError(f"{name} split holds raw texts; fine-tuning text models is not supported yet (pass token ids as a tensor)")
    xt = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if xt.is_floating_point() and xt.dtype != torch.float32:
        xt = xt.float()
    if y is None:
        if need_labels:
            raise DataError(f"{name} split has no labels (y is None); fine-tuning needs int class labels")
        return xt, None
    yt = y.detach().cpu() if isinstance(y, torch.Tensor) else torch.from_numpy(np.asarray(y))
    if yt.is_floating_point() or yt.dim() != 1:
        raise DataError(f"{name} split: labels must be integer class ids of shape (N,); got {yt.dtype} {tuple(yt.shape)}")
    yt = yt.long()
    if len(xt) != len(yt):
        raise DataError(f"{name} split: {len(xt)} inputs but {len(yt)} labels")
    if len(xt) == 0:
        raise DataError(f"{name} split is empty")
    return xt, yt


def _batches(n: int, batch_size: int, perm: torch.Tensor) -> Iterator[torch.Tensor]:
    # a last batch of one sample breaks BatchNorm in train mode; fold it into the previous one
    chunks = list(perm.split(batch_size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2] = torch.cat(chunks[-2:])
        chunks.pop()
    yield from chunks


def _steps_per_epoch(n: int, batch_size: int) -> int:
    steps = math.ceil(n / batch_size)
    return steps - 1 if steps > 1 and n % batch_size == 1 else steps


# ---- freezing and groups ------------------------------------------------------------------------

def _suggest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.4)
    shown = close or list(choices)[:5]
    return ", ".join(repr(c) for c in shown) + (" ..." if not close and len(choices) > 5 else "")


def _submodule(model: nn.Module, name: str, what: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        raise ConfigError(f"{what}: the model has no module {name!r}; closest: {_suggest(name, [m for m in modules if m])}")
    return modules[name]


def _blocks(model: nn.Module, container: str | None) -> list[tuple[str, nn.Module]]:
    root = _submodule(model, container, "freeze.container") if container else model
    prefix = f"{container}." if container else ""
    out: list[tuple[str, nn.Module]] = []

    def walk(module: nn.Module, path: str) -> None:
        for child_name, child in module.named_children():
            full = f"{path}{child_name}"
            if isinstance(child, (nn.Sequential, nn.ModuleList)):
                walk(child, full + ".")
            elif any(True for _ in child.parameters()):
                out.append((full, child))

    walk(root, prefix)
    return out


def freeze_(model: nn.Module, freeze: FreezeNone | FreezePattern | FreezeHead | FreezeLastN) -> list[str]:
    """Set ``requires_grad`` per ``freeze``; return the names of the parameters left trainable.

    Raises:
        ConfigError: a pattern matches no parameter, or a named module does not exist.
    """
    names = [n for n, _ in model.named_parameters()]
    if isinstance(freeze, FreezeNone):
        trainable = set(names)
    elif isinstance(freeze, FreezePattern):
        unmatched = [p for p in freeze.patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
        if unmatched:
            raise ConfigError(
                f"freeze.patterns: {', '.join(repr(p) for p in unmatched)} match no parameter; "
                f"parameter names look like {_suggest(unmatched[0], names)}"
            )
        trainable = {n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in freeze.patterns)}
    else:
        if isinstance(freeze, FreezeHead) and freeze.head:
            _submodule(model, freeze.head, "freeze.head")
            chosen = [freeze.head]
        else:
            blocks = _blocks(model, getattr(freeze, "container", None))
            n = freeze.n if isinstance(freeze, FreezeLastN) else 1
            if n > len(blocks):
                raise ConfigError(f"freeze.n: the model has {len(blocks)} blocks ({', '.join(b for b, _ in blocks)}); got n={n}")
            chosen = [b for b, _ in blocks[-n:]]
        trainable = {n for n in names if any(n.startswith(c + ".") for c in chosen)}
    if not trainable:
        raise ConfigError(f"freeze: {freeze.kind} leaves no trainable parameter")
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    return [n for n in names if n in trainable]


def _param_groups(model: nn.Module, config: FinetuneConfig, objective: nn.Module) -> list[dict[str, Any]]:
    opt = config.optimizer
    default: list[nn.Parameter] = []
    grouped: list[list[nn.Parameter]] = [[] for _ in config.param_groups]
    matched = [False] * len(config.param_groups)
    for name, param in model.named_parameters():
        hit = next((i for i, g in enumerate(config.param_groups) if fnmatch.fnmatchcase(name, g.pattern)), None)
        if hit is not None:
            matched[hit] = True
        if not param.requires_grad:
            continue
        (grouped[hit] if hit is not None else default).append(param)
    missing = [g.pattern for g, m in zip(config.param_groups, matched, strict=True) if not m]
    if missing:
        names = [n for n, _ in model.named_parameters()]
        raise ConfigError(f"param_groups: pattern {missing[0]!r} matches no parameter; names look like {_suggest(missing[0], names)}")
    groups: list[dict[str, Any]] = []
    for spec, params in zip(config.param_groups, grouped, strict=True):
        if not params:
            continue
        lr = spec.lr if spec.lr is not None else opt.lr * (spec.lr_scale or 1.0)
        group: dict[str, Any] = {"params": params, "lr": lr}
        if spec.weight_decay is not None:
            group["weight_decay"] = spec.weight_decay
        groups.append(group)
    if default:
        groups.insert(0, {"params": default, "lr": opt.lr})
    extra = [p for p in objective.parameters() if p.requires_grad]
    if extra:
        groups.append({"params": extra, "lr": opt.lr})
    return groups


def _optimizer(groups: list[dict[str, Any]], opt: SGDConfig | AdamWConfig) -> torch.optim.Optimizer:
    if isinstance(opt, SGDConfig):
        return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov and opt.momentum > 0, weight_decay=opt.weight_decay)
    return torch.optim.AdamW(groups, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay)


# ---- precision ----------------------------------------------------------------------------------

def cpu_has_native_bf16() -> bool:
    """Say whether this CPU runs bf16 matmuls natively (AVX512-BF16 / AMX); autocast is slow without."""
    with contextlib.suppress(Exception):
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but torch sees no CUDA device; use device='cpu' or 'auto'")
    return torch.device(device)


def _resolve_amp(amp: str, device: torch.device) -> tuple[str, torch.dtype | None]:
    if amp == "off":
        return "off", None
    if amp == "auto":
        if device.type == "cuda":
            return "fp16", torch.float16
        return ("bf16", torch.bfloat16) if cpu_has_native_bf16() else ("off", None)
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("amp: 'fp16' autocast with a grad scaler needs CUDA; on CPU use amp='bf16' (or 'auto')")
    return amp, torch.bfloat16 if amp == "bf16" else torch.float16


# ---- evaluation ---------------------------------------------------------------------------------

@torch.no_grad()
def evaluate_model(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256, device: torch.device | str = "cpu"
) -> tuple[float, float]:
    """Return ``(mean cross-entropy, top-1 accuracy)`` of ``model`` in eval mode on ``(x, y)``."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size].to(device)
        yb = y[start:start + batch_size].to(device)
        logits = model(xb).float()
        total_loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(dim=1) == yb).sum())
    model.train(was_training)
    return total_loss / len(x), correct / len(x)


# ---- checkpoints --------------------------------------------------------------------------------

def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint behind


def _resume_fields(config: FinetuneConfig) -> dict[str, Any]:
    # fields that may change between an interrupted run and its resumption
    return config.model_dump(mode="json", exclude={"resume", "checkpoint_dir", "device"})


def _load_checkpoint(path: Path, config: FinetuneConfig) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or foreign file
        raise ConfigError(f"resume: cannot read checkpoint {path}: {err}") from err
    if not isinstance(state, dict) or state.get("format") != _CHECKPOINT_FORMAT:
        raise ConfigError(f"resume: {path} is not a modelpress fine-tuning checkpoint (format {_CHECKPOINT_FORMAT})")
    import json

    saved = json.loads(state["config_json"])
    now = _resume_fields(config)
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if changed:
        raise ConfigError(
            f"resume: the checkpoint in {path.parent} was written with a different config ({', '.join(changed)} changed); "
            "resume with the same config or use a new checkpoint_dir"
        )
    return state


# ---- the loop -----------------------------------------------------------------------------------

def finetune_(
    model: nn.Module,
    train: DataArg,
    val: DataArg | None = None,
    config: FinetuneConfig | None = None,
    *,
    objective: Objective | None = None,
    regularizer: Regularizer | None = None,
    train_step_hook: StepHook | None = None,
    transform: UserTransform | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> FinetuneReport:
    """Fine-tune ``model`` in place on ``train``, selecting the best epoch on ``val``.

    The model ends in eval mode with the best validation epoch's weights (when
    ``val`` is given and ``config.restore_best``).

    Args:
        model: any classifier ``nn.Module`` mapping an input batch to logits (N, C).
        train: a Split (``.x``, ``.y``) or an ``(x, y)`` pair of numpy arrays / tensors.
        val: held-out data for the metric, early stopping and best-epoch restore.
        config: the run; defaults to ``FinetuneConfig()``.
        objective: the batch loss; cross-entropy on the labels when None.
        regularizer: an extra loss term computed from the model each step (e.g. L1 on BN-gamma).
        train_step_hook: called after every optimizer step (e.g. to re-apply pruning masks).
        transform: a user augmentation hook run after ``config.augment``.
        progress: called after every step with a :class:`ProgressEvent`.

    Raises:
        ConfigError: a bad freeze pattern, group pattern, device, precision or resume.
        DataError: splits without labels or with mismatched lengths.
    """
    config = config or FinetuneConfig()
    device = _resolve_device(config.device)
    amp, amp_dtype = _resolve_amp(config.amp, device)
    x_train, y_labels = split_tensors(train, "train")
    y_train = cast(torch.Tensor, y_labels)  # split_tensors raised when labels are missing
    x_val = y_val = None
    if val is not None:
        x_val, y_val = split_tensors(val, "val")
    if config.early_stopping is not None and val is None:
        raise ConfigError("early_stopping needs a val split; pass val=... or set early_stopping=None")
    num_classes = int(y_train.max()) + 1

    torch.manual_seed(config.seed)
    model.to(device)
    objective = (objective or CrossEntropyObjective(config.label_smoothing)).to(device)
    trainable = freeze_(model, config.freeze)
    # the objective checks its set-up (and builds any adapters) before the optimizer sees its parameters;
    # in eval mode so that the probe leaves BatchNorm statistics untouched
    model.eval()
    with torch.no_grad():
        objective.check(model, _first_batch(x_train, y_train, config.batch_size, device))
    optimizer = _optimizer(_param_groups(model, config, objective), config.optimizer)
    steps = _steps_per_epoch(len(x_train), config.batch_size)
    scheduler = build_scheduler(optimizer, config.schedule, steps_per_epoch=steps, epochs=config.epochs)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    augmenter = Augmenter(config.augment, num_classes=num_classes, user_transform=transform)
    clip_params = [p for g in optimizer.param_groups for p in g["params"]]
    frozen_norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                    and not any(p.requires_grad for p in m.parameters(recurse=False))]

    history: list[EpochStats] = []
    best_metric: float | None = None
    best_epoch: int | None = None
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs = 0
    start_epoch = 0
    resumed_from: int | None = None
    ckpt_path = config.checkpoint_dir / CHECKPOINT_NAME if config.checkpoint_dir else None
    if config.resume:
        if ckpt_path is None:
            raise ConfigError("resume=True needs checkpoint_dir")
        if ckpt_path.exists():
            state = _load_checkpoint(ckpt_path, config)
            model.load_state_dict(state["model"])
            objective.load_state_dict(state["objective"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["torch_rng"])
            history = [EpochStats(**h) for h in state["history"]]
            best_metric, best_epoch, bad_epochs = state["best_metric"], state["best_epoch"], state["bad_epochs"]
            best_state = state["best_state"] or None
            start_epoch = resumed_from = state["epoch"] + 1
            logger.info("resuming from %s at epoch %d", ckpt_path, start_epoch)

    sign = 1.0 if config.metric == "accuracy" else -1.0
    stopped_early = bool(history) and config.early_stopping is not None and bad_epochs >= config.early_stopping.patience
    global_step = start_epoch * steps
    for epoch in range(start_epoch, config.epochs if not stopped_early else start_epoch):
        objective.begin_epoch(epoch, config.epochs)
        model.train()
        for norm in frozen_norms:  # frozen layers keep their running statistics too
            norm.eval()
        # one generator per epoch, derived from the seed, so a resumed run replays the same batches
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(x_train), generator=gen)
        seen, loss_sum, t0 = 0, 0.0, time.perf_counter()
        last_metric = history[-1].val_accuracy if history and config.metric == "accuracy" else (history[-1].val_loss if history else None)
        for step, idx in enumerate(_batches(len(x_train), config.batch_size, perm)):
            xb, yb = x_train[idx], y_train[idx]
            if augmenter.active:
                xb, yb = augmenter(xb, yb, gen)
            batch = Batch(xb.to(device, non_blocking=True), yb.to(device, non_blocking=True), idx, augmenter.active)
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = objective(model, batch)
            loss = loss.float()
            if regularizer is not None:
                loss = loss + regularizer(model)
            if not torch.isfinite(loss):
                raise DataError(f"training loss became {float(loss)} at epoch {epoch} step {step}; lower the learning rate or set grad_clip_norm")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                if config.grad_clip_norm:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(clip_params, config.grad_clip_norm)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if config.grad_clip_norm:
                    torch.nn.utils.clip_grad_norm_(clip_params, config.grad_clip_norm)
                optimizer.step()
            scheduler.step()
            value = float(loss.detach())
            seen += len(idx)
            loss_sum += value * len(idx)
            global_step += 1
            if train_step_hook is not None:
                train_step_hook(model, StepInfo(epoch, step, global_step, value))
            if progress is not None:
                progress(ProgressEvent(epoch, config.epochs, step + 1, steps, loss_sum / seen, last_metric, config.metric))
        seconds = time.perf_counter() - t0
        val_loss = val_acc = None
        if x_val is not None and y_val is not None:
            val_loss, val_acc = evaluate_model(model, x_val, y_val, batch_size=config.eval_batch_size, device=device)
        stats = EpochStats(epoch, loss_sum / seen, val_loss, val_acc, optimizer.param_groups[0]["lr"], seconds, seen / seconds)
        history.append(stats)
        logger.info("epoch %d/%d loss %.4f val_acc %s", epoch + 1, config.epochs, stats.train_loss, val_acc)
        if val_loss is not None:
            current = val_acc if config.metric == "accuracy" else val_loss
            delta = config.early_stopping.min_delta if config.early_stopping else 0.0
            if best_metric is None or sign * (current - best_metric) > delta:
                best_metric, best_epoch, bad_epochs = current, epoch, 0
                best_state = _cpu_state(model) if config.restore_best else None
            else:
                bad_epochs += 1
        stopped_early = config.early_stopping is not None and bad_epochs >= config.early_stopping.patience
        if ckpt_path is not None:
            _save_checkpoint(ckpt_path, {
                "format": _CHECKPOINT_FORMAT, "epoch": epoch, "config_json": FinetuneConfig.model_dump_json(config, exclude={"resume", "checkpoint_dir", "device"}),
                "model": _cpu_state(model), "objective": _cpu_state(objective), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler is not None else {},
                "torch_rng": torch.get_rng_state(), "history": [asdict(h) for h in history],
                "best_metric": best_metric, "best_epoch": best_epoch, "bad_epochs": bad_epochs, "best_state": best_state or {},
            })
        if stopped_early:
            logger.info("early stop after epoch %d: no %s improvement for %d epochs", epoch + 1, config.metric, bad_epochs)
            break

    restored = False
    if config.restore_best and best_state is not None and best_epoch is not None and history and best_epoch != history[-1].epoch:
        model.load_state_dict(best_state)
        restored = True
    model.eval()
    for param in model.parameters():
        param.requires_grad_(True)
    ran = [h for h in history if h.epoch >= (resumed_from or 0)]
    total_seen = sum(h.samples_per_s * h.seconds for h in ran)
    return FinetuneReport(
        history=history, metric=config.metric, best_epoch=best_epoch, best_metric=best_metric, stopped_early=stopped_early,
        restored_best=restored, samples_per_s=total_seen / max(sum(h.seconds for h in ran), 1e-9),
        trainable_params=sum(p.numel() for n, p in model.named_parameters() if n in set(trainable)),
        total_params=sum(p.numel() for p in model.parameters()), amp=amp, device=str(device), resumed_from_epoch=resumed_from,
    )


def _first_batch(x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device) -> Batch:
    n = min(len(x), max(2, min(batch_size, 8)))
    return Batch(x[:n].to(device), y[:n].to(device), torch.arange(n), False)
