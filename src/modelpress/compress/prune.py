"""Prune a model in place: structured channels/heads, global magnitude, or 2:4 sparsity.

```python
report = prune_(model, PruneConfig(ratio=0.5, importance="l1", round_to=8), example_inputs=x)
report = prune_(model, PruneConfig(target=LatencyTarget(max_ms=10)), example_inputs=x)
report = prune_(model, UnstructuredPruneConfig(sparsity=0.8), example_inputs=x)
```

Structured pruning physically removes channels (and attention heads / FFN width
in transformer encoders) through Torch-Pruning's dependency graph, so every
coupled layer stays consistent and the model really gets cheaper. The report
carries MACs and parameters before/after, per-layer kept/original widths and the
module ``attrs`` a checkpoint needs to rebuild the pruned shapes.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

from modelpress.bench.macs import count_macs, count_params
from modelpress.compress import _prune_search, _prune_sparse, _prune_structured
from modelpress.errors import ConfigError
from modelpress.train.finetune import AdamWConfig, Batch, FinetuneConfig, Objective, finetune_
from modelpress.train.schedules import ConstantSchedule

if TYPE_CHECKING:
    from modelpress.sources.data import Dataset
    from modelpress.sources.models import ModelHandle

logger = logging.getLogger(__name__)

Importance = Literal["l1", "l2", "bn_gamma", "taylor", "random"]
LatencyBackend = Literal["torch", "onnxruntime", "openvino"]
# Multiples that keep each runtime's kernels on their fast path: 8 for x86 int8/fp32
# GEMMs (VNNI works on groups of 4, AVX-512 fp32 on 16 bytes x 4), 16 for OpenVINO's
# blocked layouts and tensor-core GPUs.
_VALIDATING: contextvars.ContextVar[bool] = contextvars.ContextVar("modelpress_prune_validating", default=False)
ROUND_TO_BY_BACKEND: dict[str, int] = {"torch": 8, "onnxruntime": 8, "openvino": 16, "tensorrt": 16, "cuda": 16}


class _Config(BaseModel):
    """Base for prune configs: unknown keys rejected, errors raised as one ConfigError."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, **data: Any) -> None:
        if _VALIDATING.get():  # nested inside another config: let the outer one report the full path
            super().__init__(**data)
            return
        token = _VALIDATING.set(True)
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise ConfigError(describe_validation_error(err)) from err
        finally:
            _VALIDATING.reset(token)


def describe_validation_error(err: ValidationError, stage: str = "prune") -> str:
    """Turn a pydantic error into one line per problem naming the field and the value given."""
    lines = []
    for problem in err.errors():
        loc = [str(p) for p in problem["loc"]]
        # drop the union tag pydantic inserts after `target` (target.ratio.ratio -> target.ratio)
        if len(loc) >= 2 and loc[0] == "target" and loc[1] in ("ratio", "macs", "latency"):
            loc = [loc[0], *loc[2:]]
        where = ".".join(loc) or "config"
        msg = problem["msg"].removeprefix("Value error, ")
        got = problem.get("input")
        lines.append(f"`{where}` of {stage}: {msg}; got {got!r}")
    return "; ".join(lines)


def _unit_interval(value: float, *, closed: bool = False) -> float:
    if not (0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0):
        raise ValueError("must be in [0, 1]" if closed else "must be in [0, 1)")
    return value


class RatioTarget(_Config):
    """Remove this fraction of every prunable layer's output channels."""

    kind: Literal["ratio"] = "ratio"
    ratio: float

    @field_validator("ratio")
    @classmethod
    def _check(cls, v: float) -> float:
        return _unit_interval(v)


class MacsTarget(_Config):
    """Prune until the model needs at most ``max_macs`` MACs (or ``fraction`` of the original)."""

    kind: Literal["macs"] = "macs"
    max_macs: float | None = Field(default=None, gt=0)
    fraction: float | None = Field(default=None, gt=0, le=1)
    max_ratio: float = Field(default=0.8, gt=0, lt=1)  # the search never prunes past this

    @model_validator(mode="after")
    def _one(self) -> MacsTarget:
        if (self.max_macs is None) == (self.fraction is None):
            raise ValueError("give exactly one of max_macs or fraction")
        return self


class LatencyTarget(_Config):
    """Prune until one forward pass measures at most ``max_ms`` on the target backend.

    ``backend`` "torch" times the module eagerly; "onnxruntime" and "openvino" export
    every candidate to ONNX and time it in that runtime (with ``threads`` intra-op threads).
    """

    kind: Literal["latency"] = "latency"
    max_ms: float = Field(gt=0)
    backend: LatencyBackend = "torch"
    threads: int = Field(default=2, ge=1)
    reps: int = Field(default=20, ge=3)
    statistic: Literal["median", "min"] = "median"  # "min" is steadier on a busy machine
    max_ratio: float = Field(default=0.8, gt=0, lt=1)  # the search never prunes past this


Target = Annotated[RatioTarget | MacsTarget | LatencyTarget, Field(discriminator="kind")]


class PruneConfig(_Config):
    """Structured pruning: physically remove channels, FFN width and attention heads.

    Attributes:
        ratio: shorthand for ``target=RatioTarget(ratio=...)``; fraction of channels removed, in [0, 1).
        target: a ratio, a MAC budget or a measured latency budget.
        importance: how channels are ranked: L1/L2 weight magnitude, BatchNorm gamma
            (network slimming; train with ``bn_sparsity`` first), first-order Taylor
            (needs ``data``), or random (a baseline).
        scope: rank channels within each layer, or across the whole model.
        round_to: keep channel counts a multiple of this; "auto" picks it per backend.
        head_ratio: fraction of attention heads removed (BERT-style attention only).
        ignore: dotted module names never pruned (their outputs keep their width).
        protect_classifier: never prune the last Linear/Conv (the class outputs).
        max_layer_ratio: with global ranking, no layer loses more than this fraction.
        steps: prune in this many equal steps, fine-tuning between them.
    """

    kind: Literal["structured"] = "structured"
    ratio: float | None = None
    target: Target | None = None
    importance: Importance = "l1"
    scope: Literal["per_layer", "global"] = "per_layer"
    round_to: int | Literal["auto"] | None = None
    head_ratio: float = 0.0
    ignore: tuple[str, ...] = ()
    protect_classifier: bool = True
    max_layer_ratio: float = Field(default=0.9, gt=0, le=1)
    steps: int = Field(default=1, ge=1, le=100)
    taylor_batches: int = Field(default=8, ge=1)

    @field_validator("ratio", "head_ratio")
    @classmethod
    def _check_ratio(cls, v: float | None) -> float | None:
        return None if v is None else _unit_interval(v)

    @field_validator("round_to")
    @classmethod
    def _check_round(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be a positive channel multiple such as 8 or 16, 'auto', or null")
        return v

    @model_validator(mode="after")
    def _resolve_target(self) -> PruneConfig:
        if self.target is None:
            object.__setattr__(self, "target", RatioTarget(ratio=0.5 if self.ratio is None else self.ratio))
        elif self.ratio is not None and self.target != RatioTarget(ratio=self.ratio):
            raise ValueError("give either ratio or target, not both")
        return self

    def resolved_round_to(self) -> int | None:
        """Return the channel multiple, picking the backend's when ``round_to`` is "auto"."""
        if self.round_to != "auto":
            return self.round_to  # type: ignore[return-value]
        backend = self.target.backend if isinstance(self.target, LatencyTarget) else "onnxruntime"
        return ROUND_TO_BY_BACKEND[backend]


class UnstructuredPruneConfig(_Config):
    """Zero the globally smallest weights; saves storage (compressed), not CPU time."""

    kind: Literal["unstructured"] = "unstructured"
    sparsity: float
    ignore: tuple[str, ...] = ()
    protect_classifier: bool = False

    @field_validator("sparsity")
    @classmethod
    def _check(cls, v: float) -> float:
        return _unit_interval(v)


class SemiStructuredConfig(_Config):
    """2:4 sparsity on every Linear, run by sparse tensor cores (CUDA, fp16/bf16)."""

    kind: Literal["semi_structured_2_4"] = "semi_structured_2_4"
    ignore: tuple[str, ...] = ()
    protect_classifier: bool = True


AnyPruneConfig = Annotated[PruneConfig | UnstructuredPruneConfig | SemiStructuredConfig, Field(discriminator="kind")]


@dataclass(frozen=True, slots=True)
class LayerChange:
    """One layer's output width before and after pruning."""

    name: str
    kind: str        # conv, linear, attention_dim, heads
    original: int
    kept: int


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One step of an iterative schedule."""

    step: int
    ratio: float
    macs: int
    params: int
    metric_pruned: float | None      # before fine-tuning
    metric_finetuned: float | None   # after fine-tuning


@dataclass(slots=True)
class PruneReport:
    """What pruning did: costs before/after, per-layer widths, and what a checkpoint must record."""

    method: str
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    ratio: float | None = None
    layers: list[LayerChange] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    search: list[tuple[float, float]] = field(default_factory=list)
    latency_ms_before: float | None = None
    latency_ms_after: float | None = None
    latency_backend: str | None = None
    sparsity: _prune_sparse.SparsityStats | None = None
    converted_layers: list[str] = field(default_factory=list)

    @property
    def mac_reduction(self) -> float:
        """Fraction of MACs removed."""
        return 1 - self.macs_after / self.macs_before if self.macs_before else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        out = asdict(self)
        out["mac_reduction"] = self.mac_reduction
        return out


Finetune = Callable[[nn.Module], float]
Batches = Iterable[tuple[Any, torch.Tensor]]


def prune_(
    model: nn.Module,
    config: PruneConfig | UnstructuredPruneConfig | SemiStructuredConfig,
    *,
    example_inputs: Any,
    data: Batches | None = None,
    finetune: Finetune | None = None,
    evaluate: Finetune | None = None,
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
    progress: Callable[[str], None] | None = None,
    handle: ModelHandle | None = None,
) -> PruneReport:
    """Prune ``model`` in place and report what changed.

    Args:
        model: the model; left in eval mode.
        config: PruneConfig (structured), UnstructuredPruneConfig or SemiStructuredConfig.
        example_inputs: one batch the model accepts (tensor, tuple, or keyword mapping);
            used to trace couplings and count MACs.
        data: (x, y) batches for Taylor importance (the first ``taylor_batches`` are used).
        finetune: called after each pruning step; trains the model and returns the
            validation metric (``make_finetune`` builds one on the training engine,
            ``modelpress.train.finetune_``).
        evaluate: returns the validation metric without training; recorded per step.
        loss_fn: loss for Taylor gradients; cross-entropy on the first output by default.
        progress: called with one line of text per step or search trial.
        handle: the ModelHandle ``model`` belongs to; a latency target on ONNX Runtime or
            OpenVINO exports candidates with its input/output names (made up when None).

    Returns:
        A PruneReport.
    """
    if not isinstance(config, PruneConfig | UnstructuredPruneConfig | SemiStructuredConfig):
        raise ConfigError(f"prune_ takes a PruneConfig, UnstructuredPruneConfig or SemiStructuredConfig; got {type(config).__name__}")
    model.eval()
    ignored = set(_prune_structured.resolve_modules(model, config.ignore, field_name="ignore"))
    if config.protect_classifier:
        classifier = _prune_structured.find_classifier(model, example_inputs)
        if classifier is not None:
            ignored.add(classifier)
    macs_before, params_before = count_macs(model, example_inputs), count_params(model)
    if isinstance(config, UnstructuredPruneConfig):
        _prune_sparse.global_magnitude_prune_(model, config.sparsity, ignored)
        stats = _prune_sparse.sparsity_stats(model, ignored)
        logger.info("unstructured: %.1f%% zeros; %d -> %d bytes compressed", 100 * stats.sparsity, stats.dense_bytes, stats.compressed_bytes)
        return PruneReport("unstructured", macs_before, macs_before, params_before, params_before,
                           ratio=config.sparsity, sparsity=stats)
    if isinstance(config, SemiStructuredConfig):
        converted = _prune_sparse.semi_structured_2_4_(model, ignored)
        return PruneReport("semi_structured_2_4", macs_before, macs_before, params_before, params_before,
                           ratio=0.5, converted_layers=converted)
    return _structured(model, config, example_inputs=example_inputs, ignored=list(ignored), macs_before=macs_before,
                       params_before=params_before, data=data, finetune=finetune, evaluate=evaluate,
                       loss_fn=loss_fn, progress=progress, handle=handle)


def _structured(
    model: nn.Module,
    config: PruneConfig,
    *,
    example_inputs: Any,
    ignored: list[nn.Module],
    macs_before: int,
    params_before: int,
    data: Batches | None,
    finetune: Finetune | None,
    evaluate: Finetune | None,
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None,
    progress: Callable[[str], None] | None,
    handle: ModelHandle | None = None,
) -> PruneReport:
    batches = list(itertools.islice(data, config.taylor_batches)) if data is not None else None
    grad_batches = (lambda: batches) if batches is not None else None
    loss = loss_fn or _prune_structured.default_loss
    names = {m: n for n, m in model.named_modules()}

    def plan_for(ratio: float, steps: int, on: nn.Module) -> _prune_structured.PrunerPlan:
        by_name = dict(on.named_modules())
        return _prune_structured.PrunerPlan(
            ratio=ratio, head_ratio=config.head_ratio, importance=config.importance,
            global_ranking=config.scope == "global", round_to=config.resolved_round_to(),
            max_layer_ratio=config.max_layer_ratio if config.scope == "global" else 1.0,
            ignored=[by_name[names[m]] for m in ignored], steps=steps,
        )

    def prune_copy(copy_: nn.Module, ratio: float) -> nn.Module:
        pruner = _prune_structured.build_pruner(copy_, example_inputs, plan_for(ratio, 1, copy_))
        _prune_structured.pruner_step(pruner, copy_, importance=config.importance, grad_batches=grad_batches, loss_fn=loss)
        return copy_

    target = config.target
    report = PruneReport("structured", macs_before, macs_before, params_before, params_before)
    if isinstance(target, RatioTarget):
        ratio = target.ratio
    elif isinstance(target, MacsTarget):
        budget = target.max_macs if target.max_macs is not None else target.fraction * macs_before
        ratio, report.search = _prune_search.bisect_ratio(
            model, prune_copy, lambda m: count_macs(m, example_inputs), budget, max_ratio=target.max_ratio, progress=progress)
    else:
        def measure(m: nn.Module) -> float:
            if target.backend == "torch":
                return _prune_search.torch_latency_ms(m, example_inputs, threads=target.threads, reps=target.reps,
                                                      statistic=target.statistic)
            return _prune_search.backend_latency_ms(m, example_inputs, backend=target.backend, threads=target.threads,
                                                    reps=target.reps, statistic=target.statistic, template=handle)

        report.latency_backend = target.backend
        report.latency_ms_before = measure(model)
        ratio, report.search = _prune_search.bisect_ratio(
            model, prune_copy, measure, target.max_ms, max_ratio=target.max_ratio, confirm=True, progress=progress)
    report.ratio = ratio

    shapes_before = _prune_structured.snapshot_shapes(model)
    attrs_before = _prune_structured.snapshot_attrs(model)
    if ratio > 0 or config.head_ratio > 0:
        pruner = _prune_structured.build_pruner(model, example_inputs, plan_for(ratio, config.steps, model))
        for step in range(1, config.steps + 1):
            _prune_structured.pruner_step(pruner, model, importance=config.importance, grad_batches=grad_batches, loss_fn=loss)
            model.eval()
            metric = evaluate(model) if evaluate is not None else None
            tuned = finetune(model) if finetune is not None else None
            model.eval()
            record = StepRecord(step, ratio * step / config.steps, count_macs(model, example_inputs), count_params(model), metric, tuned)
            report.steps.append(record)
            if progress is not None:
                progress(f"step {step}/{config.steps}: {record.macs / 1e6:.1f} MMACs, metric {metric} -> {tuned}")
    shapes_after = _prune_structured.snapshot_shapes(model)
    report.layers = [
        LayerChange(name, kind, original, shapes_after[name][1])
        for name, (kind, original) in shapes_before.items() if name in shapes_after
    ]
    report.attrs = _prune_structured.changed_attrs(attrs_before, _prune_structured.snapshot_attrs(model))
    report.macs_after, report.params_after = count_macs(model, example_inputs), count_params(model)
    if isinstance(target, LatencyTarget):
        report.latency_ms_after = measure(model)
    return report


def bn_l1_subgradient_(model: nn.Module, strength: float) -> None:
    """Add the L1-on-gamma subgradient of network slimming to every BatchNorm's weight gradient.

    Call between ``loss.backward()`` and ``optimizer.step()`` while training before
    BN-gamma pruning: it pushes unneeded channels' scales to zero so removing them costs little.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None and module.weight.grad is not None:
            module.weight.grad.add_(strength * torch.sign(module.weight.detach()))


def bn_l1_penalty(model: nn.Module, strength: float) -> torch.Tensor:
    """Return network slimming's loss term: ``strength`` times the L1 norm of every BatchNorm's gamma.

    Its gradient is exactly what :func:`bn_l1_subgradient_` adds; the training engine
    takes it as a ``regularizer``.
    """
    gammas = [m.weight for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and m.weight.requires_grad]
    if not gammas:
        return torch.zeros(())
    return strength * torch.stack([g.abs().sum() for g in gammas]).sum()


def make_finetune(
    train: Batches,
    val: Batches,
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    bn_sparsity: float = 0.0,
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
) -> Finetune:
    """Build a recovery fine-tuning callable on the training engine; it returns validation accuracy.

    Each call runs ``modelpress.train.finetune_`` for ``epochs`` with a constant-rate
    AdamW (no weight decay) on the samples of ``train``, in batches of the first
    batch's size, then scores top-1 accuracy on ``val``.

    Args:
        train: re-iterable (x, y) batches; x a tensor, a tuple of tensors or a keyword mapping.
        val: re-iterable (x, y) batches; the metric is top-1 accuracy in [0, 1].
        epochs: passes over ``train`` per call.
        lr: AdamW learning rate.
        bn_sparsity: network-slimming L1 strength on BatchNorm gammas (0 disables); passed
            to the engine as a ``regularizer``.
        loss_fn: defaults to cross-entropy on the first output (MSE for float targets).
    """
    train, val = list(train), list(val)
    if not train:
        raise ConfigError("make_finetune got no training batches; pass at least one (x, y) batch")
    objective = _IndexedObjective(train, loss_fn or _prune_structured.default_loss)
    config = FinetuneConfig(
        epochs=epochs, batch_size=max(2, len(train[0][1])), optimizer=AdamWConfig(lr=lr, weight_decay=0.0),
        schedule=ConstantSchedule(), restore_best=False,
    )
    regularizer = (lambda m: bn_l1_penalty(m, bn_sparsity)) if bn_sparsity else None
    positions = torch.arange(objective.samples)
    labels = torch.zeros(objective.samples, dtype=torch.long)  # unused: the objective reads the real targets
    calls = itertools.count()

    def run(model: nn.Module) -> float:
        # a new seed per call, so the steps of an iterative schedule see the batches in new orders
        finetune_(model, (positions, labels), None, config.model_copy(update={"seed": next(calls)}),
                  objective=objective, regularizer=regularizer)
        model.eval()
        return accuracy(model, val)

    return run


class _IndexedObjective(Objective):
    """The engine's objective for arbitrary (x, y) batches: it gathers each batch's samples by position.

    The engine batches one (x, y) pair of tensors; here x is the sample positions, so
    multi-input models (tuples, keyword mappings) and float targets train as well.
    """

    def __init__(self, batches: list[tuple[Any, torch.Tensor]], loss_fn: Callable[[Any, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.inputs = _concat([x for x, _ in batches])
        self.targets = torch.cat([y for _, y in batches])
        self.samples = len(self.targets)
        self.loss_fn = loss_fn

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Return the loss of ``model`` on the samples at ``batch.index``."""
        index = batch.index
        return self.loss_fn(_prune_structured.call_model(model, _take(self.inputs, index)), self.targets[index])


def _concat(xs: list[Any]) -> Any:
    first = xs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(xs)
    if isinstance(first, Mapping):
        return {k: torch.cat([x[k] for x in xs]) for k in first}
    return tuple(torch.cat([x[i] for x in xs]) for i in range(len(first)))


def _take(x: Any, index: torch.Tensor) -> Any:
    if isinstance(x, torch.Tensor):
        return x[index]
    if isinstance(x, Mapping):
        return {k: v[index] for k, v in x.items()}
    return tuple(v[index] for v in x)


def accuracy(model: nn.Module, batches: Batches) -> float:
    """Return top-1 accuracy of ``model`` over (x, y) batches."""
    correct = total = 0
    with torch.no_grad():
        for x, y in batches:
            pred = _prune_structured.first_tensor(_prune_structured.call_model(model, x)).argmax(-1)
            correct += int((pred == y).sum())
            total += y.numel()
    return correct / total if total else 0.0


def plot_channels(report: PruneReport, path: str | Path, *, title: str = "channels kept per layer") -> Path:
    """Draw kept vs original width for every layer as a bar chart (PNG or SVG by suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [layer for layer in report.layers if layer.original > 0]
    if not layers:
        raise ConfigError("the prune report has no per-layer widths to plot (unstructured or 2:4 pruning)")
    width = max(6.0, 0.22 * len(layers))
    fig, ax = plt.subplots(figsize=(width, 4))
    xs = range(len(layers))
    ax.bar(xs, [layer.original for layer in layers], color="#d0d0d0", label="original")
    ax.bar(xs, [layer.kept for layer in layers], color="#2b6cb0", label="kept")
    ax.set_xticks(list(xs), [layer.name for layer in layers], rotation=90, fontsize=6)
    ax.set_ylabel("output channels / features / heads")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def prune_model(
    handle: ModelHandle,
    config: PruneConfig | UnstructuredPruneConfig | SemiStructuredConfig,
    *,
    data: Dataset | None = None,
    finetune_epochs: int = 0,
    batch_size: int = 32,
    max_batches: int = 64,
    progress: Callable[[str], None] | None = None,
) -> tuple[ModelHandle, PruneReport]:
    """Prune a copy of a handle's torch module: the pipeline's and the CLI's prune stage.

    Args:
        handle: a model with a torch module (ONNX-only models cannot be pruned).
        config: what to prune.
        data: labelled data, used for Taylor gradients, per-step accuracy, and fine-tuning.
        finetune_epochs: epochs of recovery fine-tuning (``make_finetune``) after each step (0: none).
        batch_size: batch size for gradients, fine-tuning and evaluation.
        max_batches: cap on training batches per epoch (keeps a CLI run short).
        progress: called with one line of text per step.

    Returns:
        The new handle (ONNX cleared; ``architecture["attrs"]`` updated so the checkpoint
        rebuilds the pruned shapes) and the report.
    """
    import copy

    from modelpress.sources.data import iter_batches, model_inputs

    if handle.module is None:
        raise ConfigError(f"{handle.spec} has no torch module to prune (an ONNX-only model); prune the torch source instead")
    module = copy.deepcopy(handle.module).eval()
    example = handle.torch_inputs(batch=1)

    def batches(split: Any, limit: int) -> list[tuple[Any, torch.Tensor]]:
        out = []
        for x, y in itertools.islice(iter_batches(split, batch_size, shuffle=True), limit):
            inputs = tuple(torch.from_numpy(a) for a in model_inputs(handle, x).values())
            out.append((inputs, torch.from_numpy(y)))
        return out

    train = val = None
    if data is not None and data.labelled:
        train, val = batches(data.train, max_batches), batches(data.eval_split, max_batches)
    elif isinstance(config, PruneConfig) and config.importance == "taylor":
        raise ConfigError("`importance` 'taylor' needs labelled data: pass --data (e.g. digits, mnist1d)")
    finetune = make_finetune(train, val, epochs=finetune_epochs) if train and finetune_epochs > 0 else None
    evaluate = (lambda m: accuracy(m, val)) if val else None
    report = prune_(module, config, example_inputs=example, data=train, finetune=finetune, evaluate=evaluate,
                    progress=progress, handle=handle)
    architecture = dict(handle.architecture)
    architecture["attrs"] = {**architecture.get("attrs", {}), **report.attrs}
    return handle.with_module(module, architecture=architecture), report
