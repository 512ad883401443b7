"""Recipes: one YAML file naming the model, data, target, budget and stages.

Validated up front: every error names the field, its YAML line and what is
allowed. Each stage's fields are validated by that stage's verb config.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from modelpress.errors import ConfigError
from modelpress.pipeline._yaml import LineDict, LineList, line_of, load_yaml, load_yaml_file
from modelpress.pipeline.presets import PRESETS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Target(_Strict):
    """Where the artifact will run: the gate measures it there."""

    backend: Literal["onnxruntime", "openvino", "tensorrt"] = "onnxruntime"
    device: Literal["cpu", "cuda"] = "cpu"
    threads: int = Field(2, ge=1)
    batch: int = Field(1, ge=1)


class Budget(_Strict):
    """What the compressed artifact must meet.

    Attributes:
        max_accuracy_drop: largest allowed drop of the metric, as a fraction (0.01 = 1 point).
        min_speedup: p50 latency of the reference / p50 of the artifact must reach this.
        speedup_vs: reference for min_speedup: the float model on the target backend
            ("float") or PyTorch FP32 eager ("torch").
        max_size_mb: largest allowed model.onnx.
        min_size_ratio: float model.onnx size / artifact's must reach this.
    """

    max_accuracy_drop: float = Field(0.01, ge=0, le=1)
    min_speedup: float | None = Field(None, gt=0)
    speedup_vs: Literal["float", "torch"] = "float"
    max_size_mb: float | None = Field(None, gt=0)
    min_size_ratio: float | None = Field(None, gt=0)


class Gate(_Strict):
    """How the accuracy gate measures and backs off.

    Attributes:
        max_rounds: back-off rounds after the first attempt (less pruning → more
            layers in float → QAT instead of PTQ).
        float_rounds: how many of those rounds the "more layers in float" step may
            take in a row; each doubles the number of most-sensitive layers left in float.
        bench_seconds: time budget of the side-by-side latency measurement.
        eval_samples: score on the first N rows of the evaluation split (None: all).
    """

    max_rounds: int = Field(3, ge=0, le=10)
    float_rounds: int = Field(1, ge=1, le=10)
    bench_seconds: float = Field(8.0, gt=0)
    eval_samples: int | None = Field(None, ge=10)


class Search(_Strict):
    """The grid ``--search`` explores."""

    prune_ratios: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75])
    quantize: list[Literal["none", "dynamic", "static", "qat", "fp16", "bf16"]] = Field(default_factory=lambda: ["none", "static"])
    distill: list[bool] = Field(default_factory=lambda: [False])
    finetune_epochs: int = Field(5, ge=0)
    workers: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _ratios(self) -> Search:
        bad = [r for r in self.prune_ratios if not 0 <= r < 1]
        if bad:
            raise ValueError(f"prune ratios must be in [0, 1); got {bad}")
        return self


class Recipe(_Strict):
    """A validated recipe."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: str
    data: str
    task: Literal["classification", "embedding", "other"] | None = None
    metric: Literal["auto", "accuracy", "agreement", "cosine"] = "auto"
    preset: Literal["mobile", "edge", "server"] | None = None
    pretrain: dict[str, Any] | None = None
    export: dict[str, Any] = Field(default_factory=dict)
    target: Target = Target()
    budget: Budget = Budget()
    gate: Gate = Gate()
    search: Search = Search()
    seed: int = 0
    plugins: list[str] = Field(default_factory=list, description="modules imported first (each may register stage kinds)")
    stages: list[dict[str, Any]] = Field(default_factory=list)
    source: str = "<recipe>"

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"source"})

    def base_hash(self) -> str:
        """Hash of everything that fixes the float baseline."""
        return stable_hash({"model": self.model, "data": self.data, "seed": self.seed, "pretrain": self.pretrain, "task": self.task, "export": self.export})

    def with_stages(self, stages: list[dict[str, Any]]) -> Recipe:
        return self.model_copy(update={"stages": stages})


def stable_hash(obj: Any) -> str:
    """sha256 of an object's canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _fmt_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _problem(source: str, raw: Any, loc: tuple[Any, ...], msg: str, value: Any = ..., *, fallback_line: int | None = None) -> str:
    line = line_of(raw, loc) if loc else getattr(raw, "line", None)
    line = line or fallback_line
    where = f"{source} line {line}" if line else source
    got = "" if value is ... else f" (got {value!r})"
    return f"{where}: `{_fmt_loc(loc)}`: {msg}{got}"


def _fields_at(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str] | None:
    """The field names allowed at ``loc`` (the parent of an unknown field) below ``model``."""
    for part in loc:
        if model is None or part not in model.model_fields:
            return None
        ann = model.model_fields[part].annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return sorted(model.model_fields) if model is not None else None


def _errors(source: str, raw: Any, err: ValidationError, prefix: tuple[Any, ...] = (), fallback_line: int | None = None,
            model: type[BaseModel] | None = None, stage: Any = None) -> list[str]:
    out = []
    for e in err.errors():
        loc = prefix + tuple(p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or "function-after" in p)))
        value = ... if e["type"] in ("missing", "extra_forbidden") else e.get("input")
        msg = e["msg"]
        if len(loc) == len(prefix) and (named := re.search(r"`(\w+)`", msg)):
            # a whole-config check (model_validator) that names its field: point at that field's line
            node = raw
            for part in prefix:
                node = node[part] if isinstance(node, (dict, list)) else None
            if isinstance(node, dict) and named.group(1) in node:
                loc, value = (*loc, named.group(1)), ...
        if e["type"] == "extra_forbidden":
            rel = tuple(loc[len(prefix):-1])
            names = _fields_at(model, rel) if model is not None else None
            if names is None and stage is not None and not rel and hasattr(stage, "fields"):
                names = stage.fields()
            msg = "unknown field" + (f"; allowed: {', '.join(names)}" if names else "")
        out.append(_problem(source, raw, loc, msg, value, fallback_line=fallback_line))
    return out


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` onto ``base``; keeps the override's line info."""
    out = override if isinstance(override, LineDict) else LineDict(override)
    if not hasattr(out, "key_lines"):
        out.key_lines = {}
    for key, value in base.items():
        if key not in out:
            out[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = _merge(value, out[key])
    return out


def _apply_preset(raw: LineDict, source: str) -> None:
    preset = raw.get("preset")
    if preset is None:
        return
    if preset not in PRESETS:
        raise ConfigError(_problem(source, raw, ("preset",), f"unknown preset; allowed: {', '.join(PRESETS)}", preset))
    base = copy.deepcopy(PRESETS[preset])
    user = raw.get("stages") or LineList()
    kinds = [s["kind"] for s in base["stages"]]
    merged = LineList(base["stages"])
    merged.line = getattr(user, "line", raw.line)
    merged.item_lines = [merged.line] * len(merged)
    for i, stage in enumerate(user):
        kind = stage.get("kind") if isinstance(stage, dict) else None
        if kind not in kinds:
            line = user.item_lines[i] if isinstance(user, LineList) else None
            raise ConfigError(
                f"{source} line {line}: `stages[{i}].kind`: preset {preset!r} has stages {', '.join(kinds)}; "
                f"a stage listed with a preset overrides the preset's stage of the same kind (got {kind!r}); "
                f"drop `preset` to write your own stage list"
            )
        j = kinds.index(kind)
        merged[j] = _merge(base["stages"][j], stage)
        if isinstance(user, LineList):
            merged.item_lines[j] = user.item_lines[i]
    raw["stages"] = merged


def validate_recipe(raw: Any, *, source: str = "<recipe>") -> Recipe:
    """Validate a parsed recipe (from :func:`load_yaml`) into a :class:`Recipe`.

    Raises:
        ConfigError: one line per problem, each naming the field, its line and what is allowed.
    """
    from modelpress.pipeline.stages import StageUnavailableError, get_stage, stage_kinds

    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a recipe is a YAML mapping with name, model, data and stages; got {type(raw).__name__}")
    if not isinstance(raw, LineDict):
        raw = load_yaml(json.dumps(raw), source=source)
    raw = copy.copy(raw)
    for i, plugin in enumerate(raw.get("plugins") or []):
        try:
            importlib.import_module(plugin)
        except ImportError as err:
            raise ConfigError(_problem(source, raw, ("plugins", i), f"cannot import plugin module: {err}", plugin)) from err
    _apply_preset(raw, source)
    problems: list[str] = []
    try:
        recipe = Recipe.model_validate({**raw, "source": source})
    except ValidationError as err:
        problems += _errors(source, raw, err, model=Recipe)
        recipe = None
    stages = raw.get("stages") or []
    if not isinstance(stages, list):
        stages = []
    if not stages and recipe is not None:
        problems.append(_problem(source, raw, ("stages",), "a recipe needs at least one stage or a preset (mobile, edge, server)"))
    normalised: list[dict[str, Any]] = []
    for i, stage in enumerate(stages):
        loc: tuple[Any, ...] = ("stages", i)
        fallback = stages.item_lines[i] if isinstance(stages, LineList) and i < len(stages.item_lines) else None
        if not isinstance(stage, dict) or "kind" not in stage:
            problems.append(_problem(source, raw, loc, f"each stage is a mapping with `kind`; allowed kinds: {', '.join(stage_kinds())}"))
            continue
        if stage["kind"] not in stage_kinds():
            problems.append(_problem(source, raw, (*loc, "kind"), f"unknown stage kind; allowed: {', '.join(stage_kinds())}", stage["kind"]))
            continue
        try:
            normalised.append(get_stage(stage["kind"]).validate(dict(stage)))
        except ValidationError as err:
            problems += _errors(source, raw, err, loc, fallback, stage=get_stage(stage["kind"]))
        except StageUnavailableError as err:
            problems.append(_problem(source, raw, (*loc, "kind"), str(err)))
        except ConfigError as err:
            problems.append(_problem(source, raw, loc, str(err)))
    if raw.get("pretrain") is not None:
        try:
            get_stage("finetune").validate(dict(raw["pretrain"]))
        except ValidationError as err:
            problems += _errors(source, raw, err, ("pretrain",))
        except ConfigError as err:
            problems.append(_problem(source, raw, ("pretrain",), str(err)))
    if raw.get("export"):
        try:
            get_stage("export").validate(dict(raw["export"]))
        except ValidationError as err:
            problems += _errors(source, raw, err, ("export",))
    if problems:
        raise ConfigError(f"recipe is invalid ({len(problems)} problem{'s' if len(problems) > 1 else ''}):\n  " + "\n  ".join(problems))
    assert recipe is not None  # no problems means the model validated
    return recipe.with_stages(normalised)


def load_recipe(path: Path | str) -> Recipe:
    """Read and validate a recipe YAML file."""
    return validate_recipe(load_yaml_file(path), source=str(path))


def recipe_from_text(text: str, *, source: str = "<recipe>") -> Recipe:
    """Validate recipe YAML given as text."""
    return validate_recipe(load_yaml(text, source=source), source=source)
