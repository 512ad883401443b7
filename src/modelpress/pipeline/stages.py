"""The Stage protocol, the registry of stage kinds, and adapters to the verbs.

A stage takes a ModelHandle and a :class:`StageContext` and returns a new
ModelHandle with a JSON-able report. Stages never reach into each other: all
they share is the handle and the context. Each adapter's recipe fields are
its verb's own pydantic config (imported lazily, inside the adapter) plus a
few pipeline-owned fields (``method``, ``mode``, ``finetune_epochs``, ...).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelpress.errors import ConfigError, GateError

if TYPE_CHECKING:
    from modelpress.pipeline.recipe import Budget, Target
    from modelpress.sources.data import Dataset
    from modelpress.sources.models import ModelHandle

log = logging.getLogger(__name__)


@dataclass
class StageContext:
    """What every stage may use besides the model it is given."""

    data: Dataset
    target: Target
    budget: Budget
    seed: int
    work_dir: Path
    teacher: ModelHandle | None = None  # the float baseline (distillation's teacher)
    export: dict[str, Any] = field(default_factory=dict)  # ExportConfig fields for implicit exports
    progress: Callable[[str], None] = field(default=lambda _msg: None)
    # a run-wide cache (kept across back-off rounds and --resume) and the hash of the model this
    # stage receives; a stage may cache what it measured on that model there ("" / None: no cache)
    cache_dir: Path | None = None
    input_key: str = ""


@dataclass
class StageOutput:
    """A stage's result: the new model and what the stage measured."""

    handle: ModelHandle
    report: dict[str, Any]


class StageUnavailableError(ConfigError):
    """A recipe names a stage whose verb is not part of this build."""


class Stage(Protocol):
    """One recipe stage kind."""

    kind: str

    def validate(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Check the recipe fields (raise pydantic ValidationError); return them normalised."""
        ...

    def run(self, handle: ModelHandle, config: dict[str, Any], ctx: StageContext) -> StageOutput:
        """Run on ``handle``; never modify it in place."""
        ...


def jsonable(obj: Any) -> Any:
    """Turn reports (dataclasses, pydantic models, paths, numpy) into JSON values."""
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name not in ("handle", "module")}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    try:
        return json.loads(json.dumps(obj, default=str))
    except (TypeError, ValueError):
        return str(obj)


def _import_verb(module: str, kind: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise StageUnavailableError(
            f"stage `{kind}` is not available in this build ({module} could not be imported: {err}); "
            f"remove it from the recipe's stages"
        ) from err


class _Fields(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _split(fields: dict[str, Any], own: type[BaseModel]) -> tuple[BaseModel, dict[str, Any]]:
    """Validate the pipeline-owned fields; return them and the rest (the verb's config)."""
    names = set(own.model_fields)
    mine = {k: v for k, v in fields.items() if k in names}
    rest = {k: v for k, v in fields.items() if k not in names and k != "kind"}
    return own.model_validate(mine), rest


def _set_default(rest: dict[str, Any], cls: type[BaseModel], name: str, value: Any) -> None:
    if name in cls.model_fields and name not in rest and value is not None:
        rest[name] = value


# --------------------------------------------------------------------------- finetune


class FinetuneStage:
    """``finetune``: the fields are modelpress.train.finetune.FinetuneConfig."""

    kind = "finetune"

    def _cls(self) -> type[BaseModel]:
        return _import_verb("modelpress.train.finetune", self.kind).FinetuneConfig

    def fields(self) -> list[str]:
        return sorted(self._cls().model_fields)

    def validate(self, fields: dict[str, Any]) -> dict[str, Any]:
        rest = {k: v for k, v in fields.items() if k != "kind"}
        return {"kind": self.kind, **self._cls().model_validate(rest).model_dump(mode="json", exclude_unset=True)}

    def run(self, handle: ModelHandle, config: dict[str, Any], ctx: StageContext) -> StageOutput:
        verb = _import_verb("modelpress.train.finetune", self.kind)
        cfg = verb.FinetuneConfig.model_validate({k: v for k, v in config.items() if k != "kind"})
        if handle.module is None:
            raise ConfigError("finetune needs a torch module; this model is ONNX-only")
        module = copy.deepcopy(handle.module)
        report = verb.finetune_(module, ctx.data.train, ctx.data.val, cfg)
        module.eval()
        return StageOutput(handle.with_module(module), jsonable(report))


# --------------------------------------------------------------------------- prune


class _PruneOwn(_Fields):
    method: Literal["structured", "unstructured", "semi_structured_2_4"] = "structured"
    finetune_epochs: int = Field(0, ge=0, description="recovery fine-tuning epochs (the training engine) after each pruning step")


class PruneStage:
    """``prune``: ``method`` picks the verb config (PruneConfig, UnstructuredPruneConfig, ...)."""

    kind = "prune"
    _classes: ClassVar[dict[str, str]] = {"structured": "PruneConfig", "unstructured": "UnstructuredPruneConfig", "semi_structured_2_4": "SemiStructuredConfig"}

    def _config(self, fields: dict[str, Any]) -> tuple[_PruneOwn, BaseModel]:
        own, rest = _split(fields, _PruneOwn)
        verb = _import_verb("modelpress.compress.prune", self.kind)
        cls = getattr(verb, self._classes[own.method])  # type: ignore[attr-defined]
        return own, cls.model_validate(rest)  # type: ignore[return-value]

    def fields(self, method: str = "structured") -> list[str]:
        verb = _import_verb("modelpress.compress.prune", self.kind)
        return sorted((set(_PruneOwn.model_fields) | set(getattr(verb, self._classes[method]).model_fields)) - {"kind"})

    def validate(self, fields: dict[str, Any]) -> dict[str, Any]:
        own, cfg = self._config(fields)
        body = cfg.model_dump(mode="json", exclude_unset=True)
        body.pop("kind", None)
        return {"kind": self.kind, **own.model_dump(), **body}

    @staticmethod
    def _with_target(config: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        """Measure a latency target where the recipe deploys: its backend and threads, unless the stage sets them."""
        target = config.get("target")
        if not isinstance(target, dict) or target.get("kind") != "latency":
            return config
        target = dict(target)
        if ctx.target.backend in ("onnxruntime", "openvino") and ctx.target.device == "cpu":
            target.setdefault("backend", ctx.target.backend)
        elif "backend" not in target:  # TensorRT / CUDA: the search times the candidates eagerly in torch
            log.info("prune: the latency target is measured with torch; the recipe's %s on %s is not timed during the search",
                     ctx.target.backend, ctx.target.device)
        target.setdefault("threads", ctx.target.threads)
        return {**config, "target": target}

    def run(self, handle: ModelHandle, config: dict[str, Any], ctx: StageContext) -> StageOutput:
        verb = _import_verb("modelpress.compress.prune", self.kind)
        own, cfg = self._config(self._with_target(config, ctx))
        new, report = verb.prune_model(handle, cfg, data=ctx.data, finetune_epochs=own.finetune_epochs, progress=ctx.progress)
        return StageOutput(new, jsonable(report))


# --------------------------------------------------------------------------- distill


class _DistillOwn(_Fields):
    student: str | None = Field(None, description="model spec of the student")
    student_ratio: float | None = Field(None, gt=0, lt=1, description="make the student by removing this share of the teacher's channels")


class DistillStage:
    """``distill``: the fields are DistillConfig, plus where the student comes from."""

    kind = "distill"

    def _config(self, fields: dict[str, Any]) -> tuple[_DistillOwn, BaseModel]:
        own, rest = _split(fields, _DistillOwn)
        if (own.student is None) == (own.student_ratio is None):
            raise ConfigError("distill needs exactly one of `student` (a model spec) or `student_ratio` (shrink the teacher)")
        verb = _import_verb("modelpress.compress.distill", self.kind)
        return own, verb.DistillConfig.model_validate(rest)

    def fields(self) -> list[str]:
        verb = _import_verb("modelpress.compress.distill", self.kind)
        return sorted(set(_DistillOwn.model_fields) | set(verb.DistillConfig.model_fields))

    def validate(self, fields: dict[str, Any]) -> dict[str, Any]:
        own, cfg = self._config(fields)
        return {"kind": self.kind, **own.model_dump(exclude_none=True), **cfg.model_dump(mode="json", exclude_unset=True)}

    def run(self, handle: ModelHandle, config: dict[str, Any], ctx: StageContext) -> StageOutput:
        verb = _import_verb("modelpress.compress.distill", self.kind)
        own, cfg = self._config(config)
        teacher = ctx.teacher if ctx.teacher is not None and ctx.teacher.module is not None else handle
        if own.student is not None:
            from modelpress.sources.models import load_model

            student = load_model(own.student)
        else:
            prune = _import_verb("modelpress.compress.prune", self.kind)
            student, _ = prune.prune_model(handle, prune.PruneConfig(ratio=own.student_ratio))
        module = copy.deepcopy(student.module)
        report = verb.distill_(module, [teacher.module], ctx.data.train, ctx.data.val, cfg)
        module.eval()
        return StageOutput(student.with_module(module), {"student": own.model_dump(exclude_none=True), **jsonable(report)})


# --------------------------------------------------------------------------- quantize


class _QuantOwn(_Fields):
    mode: Literal["dynamic", "static", "qat", "fp16", "bf16", "fastest"] = "static"
    candidates: list[Literal["dynamic", "static", "qat", "fp16", "bf16"]] = Field(default_factory=lambda: ["static", "fp16", "bf16"])
    float_layers: int = Field(0, ge=0, description=(
        "leave this many layers in float: those whose INT8 quantization costs the most on the validation split, "
        "measured per layer (the back-off's more_float step raises it)"))
    sensitivity: bool = Field(False, description="also measure per-layer sensitivity (plotted in report.html)")


_PRECISION = {"dynamic": "int8", "static": "int8", "qat": "int8", "fp16": "fp16", "bf16": "bf16"}


_RANKING_FIELDS = ("backend", "calibration", "percentile", "samples", "per_channel", "activation_symmetric",
                   "encoding", "reduce_range", "keep_float", "preprocess", "val_samples", "seed")


def sensitivity_ranking(handle: ModelHandle, mode: str, rest: dict[str, Any], ctx: StageContext) -> tuple[dict[str, Any], bool]:
    """Rank ``handle``'s layers by measured INT8 sensitivity; cached per input model in the run.

    The ranking is :func:`modelpress.compress.quantize.measure_sensitivity` (the per-layer
    analysis mixed precision uses): each layer quantized alone with static INT8 and the
    validation metric's drop measured. QAT ranks with its static settings; dynamic ranks with
    static INT8 on the graph it quantizes (no pre-processing, so node names match) — a proxy,
    since dynamic also leaves activations float.

    Returns:
        The ranking (``Sensitivity.to_dict()``) and whether it came from the cache.
    """
    from modelpress.pipeline.recipe import stable_hash

    verb = _import_verb("modelpress.compress.quantize", "quantize")
    fields = {k: v for k, v in rest.items() if k in _RANKING_FIELDS}
    if mode == "dynamic":
        fields["preprocess"] = False
    cfg = QuantizeStage()._verb_config("static", {**fields, "mixed_precision": False}, ctx)
    key = stable_hash({"input": ctx.input_key, "ranking": cfg.model_dump(mode="json", include=set(_RANKING_FIELDS))})
    path = ctx.cache_dir / f"sensitivity-{key[:16]}.json" if ctx.cache_dir is not None and ctx.input_key else None
    if path is not None and path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            ctx.progress("quantize: reusing this run's per-layer sensitivity ranking")
            return cached["sensitivity"], True
    ctx.progress("quantize: measuring per-layer sensitivity to pick the layers to leave in float")
    sens = verb.measure_sensitivity(handle, cfg, data=ctx.data).to_dict()  # type: ignore[attr-defined]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "sensitivity": sens}, indent=1))
        os.replace(tmp, path)  # a killed run leaves no half-written ranking
    return sens, False


def most_sensitive(sensitivity: dict[str, Any], count: int, already_float: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Pick the ``count`` most sensitive layers not already in float; say why each was picked.

    Returns:
        The report block: policy, count asked, each kept layer with its rank and measured
        ``delta`` (the metric drop when only that layer is INT8), and the whole ranking.
    """
    skip = set(already_float)
    ranked = [layer for layer in sensitivity["layers"] if layer["node"] not in skip]
    rank = {layer["node"]: i + 1 for i, layer in enumerate(sensitivity["layers"])}
    kept = [{**layer, "rank": rank[layer["node"]]} for layer in ranked[:count]]
    if count > len(ranked):
        log.warning("float_layers=%d but only %d quantizable layers are left to keep in float", count, len(ranked))
    return {
        "policy": "most_sensitive", "requested": count, "available": len(ranked), "kept": kept,
        "metric": sensitivity.get("metric"), "encoding": sensitivity.get("encoding"), "reference": sensitivity.get("reference"),
        "ranking": sensitivity["layers"],
    }


class QuantizeStage:
    """``quantize``: ``mode`` picks the verb config; the rest are its fields.

    ``mode: fastest`` runs each of ``candidates`` and keeps the fastest that
    meets the accuracy budget (the server preset: INT8 or FP16/BF16).
    """

    kind = "quantize"

    def _verb_config(self, mode: str, rest: dict[str, Any], ctx: StageContext | None) -> BaseModel:
        verb = _import_verb("modelpress.compress.quantize", self.kind)
        cls = {"dynamic": verb.DynamicConfig, "static": verb.StaticConfig, "qat": verb.QATConfig, "fp16": verb.FP16Config, "bf16": verb.BF16Config}[mode]
        rest = dict(rest)
        if ctx is not None:
            if ctx.target.backend in ("onnxruntime", "openvino") and mode != "bf16":
                _set_default(rest, cls, "backend", ctx.target.backend)
            _set_default(rest, cls, "threads", ctx.target.threads)
            _set_default(rest, cls, "seed", ctx.seed)
            _set_default(rest, cls, "max_accuracy_drop", ctx.budget.max_accuracy_drop)
            # the pipeline's gate owns the speed verdict (against the recipe's budget), so the
            # verb's own never-slower guard is off unless the recipe turns it on
            _set_default(rest, cls, "allow_slower", True)
            if mode == "fp16":
                _set_default(rest, cls, "device", ctx.target.device)
        return cls.model_validate(rest)

    def fields(self, mode: str = "static") -> list[str]:
        verb = _import_verb("modelpress.compress.quantize", self.kind)
        return sorted((set(_QuantOwn.model_fields) | set(verb.StaticConfig.model_fields)) - {"kind"})

    def validate(self, fields: dict[str, Any]) -> dict[str, Any]:
        own, rest = _split(fields, _QuantOwn)
        for mode in own.candidates if own.mode == "fastest" else [own.mode]:
            self._verb_config(mode, rest, None)
        return {"kind": self.kind, **own.model_dump(), **rest}

    def _float_choice(self, handle: ModelHandle, mode: str, rest: dict[str, Any], own: _QuantOwn, ctx: StageContext) -> dict[str, Any] | None:
        """Which layers ``float_layers`` leaves in float (the most sensitive, measured), and why."""
        if not own.float_layers or mode not in ("dynamic", "static", "qat"):
            return None
        sens, cached = sensitivity_ranking(handle, mode, rest, ctx)
        return {**most_sensitive(sens, own.float_layers, rest.get("keep_float", ())), "cached": cached}

    def _one(self, handle: ModelHandle, mode: str, rest: dict[str, Any], own: _QuantOwn, ctx: StageContext, out: Path) -> tuple[ModelHandle, Any, dict[str, Any] | None]:
        verb = _import_verb("modelpress.compress.quantize", self.kind)
        rest = dict(rest)
        choice = self._float_choice(handle, mode, rest, own, ctx)
        if choice is not None:
            rest["keep_float"] = list(rest.get("keep_float", [])) + [layer["node"] for layer in choice["kept"]]
        cfg = self._verb_config(mode, rest, ctx)
        result = verb.quantize(handle, cfg, data=ctx.data, out_dir=out, sensitivity=own.sensitivity and mode in ("static", "qat"))
        return handle.with_onnx(Path(result.onnx_path), precision=_PRECISION[mode]), result, choice

    def run(self, handle: ModelHandle, config: dict[str, Any], ctx: StageContext) -> StageOutput:
        own, rest = _split(config, _QuantOwn)
        handle = ensure_onnx(handle, ctx.work_dir / "float.onnx", ctx.export)
        if own.mode != "fastest":
            new, result, choice = self._one(handle, own.mode, rest, own, ctx, ctx.work_dir / own.mode)
            verb_report = jsonable(result.to_dict() if hasattr(result, "to_dict") else result)
            return StageOutput(new, {**verb_report, "encoding": verb_report.get("chosen"), "mode": own.mode, "float_layers": own.float_layers,
                                     "float_choice": choice})
        tried: list[dict[str, Any]] = []
        best: tuple[float, ModelHandle, Any, str, dict[str, Any] | None] | None = None
        for mode in own.candidates:
            try:
                new, result, choice = self._one(handle, mode, rest, own, ctx, ctx.work_dir / mode)
            except (GateError, ConfigError, RuntimeError, ImportError) as err:  # one candidate failing is a measurement, not an error
                tried.append({"mode": mode, "error": str(err)})
                continue
            tried.append({"mode": mode, "latency_ms": result.quant_ms, "metric": result.quant_metric})
            if best is None or result.quant_ms < best[0]:
                best = (result.quant_ms, new, result, mode, choice)
        if best is None:
            raise GateError(f"quantize (fastest): no candidate worked: {tried}")
        verb_report = jsonable(best[2].to_dict())
        # the verb's own "chosen" is the encoding (qdq-u8, fp16, ...); ours is the mode
        return StageOutput(best[1], {**verb_report, "encoding": verb_report.get("chosen"), "mode": "fastest", "chosen": best[3], "candidates": tried,
                                     "float_layers": own.float_layers, "float_choice": best[4]})


# --------------------------------------------------------------------------- export


def ensure_onnx(handle: ModelHandle, path: Path, export: dict[str, Any] | None = None) -> ModelHandle:
    """Export ``handle`` to ``path`` unless it already has an ONNX file."""
    if handle.onnx_path is not None:
        return handle
    from modelpress.export.onnx import ExportConfig, export_onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    return handle.with_onnx(export_onnx(handle, path, ExportConfig.model_validate(export or {})).path)


class ExportStage:
    """``export``: the fields are modelpress.export.onnx.ExportConfig."""

    kind = "export"

    def fields(self) -> list[str]:
        from modelpress.export.onnx import ExportConfig

        return sorted(ExportConfig.model_fields)

    def validate(self, fields: dict[str, Any]) -> dict[str, Any]:
        from modelpress.export.onnx import ExportConfig

        rest = {k: v for k, v in fields.items() if k != "kind"}
        return {"kind": self.kind, **ExportConfig.model_validate(rest).model_dump(mode="json", exclude_unset=True)}

    def run(self, handle: ModelHandle, config: dict[str, Any], ctx: StageContext) -> StageOutput:
        from modelpress.export.onnx import ExportConfig, export_onnx

        if handle.module is None:
            return StageOutput(handle, {"skipped": "ONNX-only model"})
        cfg = ExportConfig.model_validate({k: v for k, v in config.items() if k != "kind"})
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        report = export_onnx(handle, ctx.work_dir / "model.onnx", cfg)
        return StageOutput(handle.with_onnx(report.path, precision="fp32"), jsonable(report.to_json()))


# --------------------------------------------------------------------------- registry

_STAGES: dict[str, Stage] = {
    "finetune": FinetuneStage(),
    "prune": PruneStage(),
    "distill": DistillStage(),
    "quantize": QuantizeStage(),
    "export": ExportStage(),
}


def register_stage(stage: Stage) -> None:
    """Add (or replace) a stage kind; plugins and tests use this."""
    _STAGES[stage.kind] = stage


def stage_kinds() -> list[str]:
    """The stage kinds a recipe may name."""
    return list(_STAGES)


def get_stage(kind: str) -> Stage:
    """Return the stage for ``kind``."""
    try:
        return _STAGES[kind]
    except KeyError:
        raise ConfigError(f"unknown stage kind {kind!r}; allowed: {', '.join(_STAGES)}") from None


__all__ = ["Stage", "StageContext", "StageOutput", "StageUnavailableError", "ValidationError", "get_stage", "register_stage", "stage_kinds", "jsonable", "ensure_onnx"]
