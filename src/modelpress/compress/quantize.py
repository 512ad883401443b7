"""Quantize a model: dynamic/static INT8, QAT, FP16, BF16 — measured, budgeted, never slower.

One verb, one config::

    result = quantize(handle, StaticConfig(calibration="entropy"), data=dataset, out_dir="q")

Every run measures the result against the float model on the same backend:
the accuracy budget (``max_accuracy_drop``) on the validation split and the
latency side by side. The encoding (QDQ vs operator form, unsigned vs signed
activations) is chosen by measurement, and the choice and its timings go into
the artifact's manifest.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from modelpress.compress import _dynamic
from modelpress.compress import _encodings as enc
from modelpress.compress import _qeval as qe
from modelpress.errors import BackendError, ConfigError, DataError, GateError, SlowerThanBaselineError

if TYPE_CHECKING:
    from modelpress.compress.sensitivity import Sensitivity
    from modelpress.sources.models import ModelHandle

logger = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
TrainFn = Callable[..., Any]


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_accuracy_drop: float = Field(0.01, ge=0.0, le=1.0, description=(
        "largest allowed drop: accuracy points/100 with labels, 1-agreement or 1-cosine without"))
    allow_slower: bool = False
    backend: Literal["onnxruntime", "openvino"] = "onnxruntime"
    threads: int = Field(default_factory=enc.cpu_threads_default, ge=1)
    val_samples: int = Field(1000, ge=8, description="validation samples scored (first N of the split)")
    seed: int = 0


class DynamicConfig(_Common):
    """Int8 weights, activations quantized on the fly; for Linear/MatMul-heavy models."""

    kind: Literal["dynamic"] = "dynamic"
    per_channel: bool = True
    reduce_range: bool | Literal["auto"] = "auto"
    keep_float: tuple[str, ...] = ()
    transformer_fusion: Literal["auto", "off", "only"] = Field("auto", description=(
        "auto: also time ONNX Runtime's transformer-fused graph (Attention, SkipLayerNormalization, ...) "
        "quantized the same way and keep the faster within budget; off: the plain graph only; only: the fused one"))
    num_heads: int = Field(0, ge=0, description="attention heads for the fusion; 0 reads them from the model")
    hidden_size: int = Field(0, ge=0, description="hidden size for the fusion; 0 reads it from the model")


class StaticConfig(_Common):
    """Post-training static INT8 with calibration."""

    kind: Literal["static"] = "static"
    calibration: Literal["minmax", "percentile", "entropy"] = "minmax"
    percentile: float = Field(99.999, gt=50.0, le=100.0)
    samples: int = Field(128, ge=1, description="calibration samples drawn from the calibration split")
    per_channel: bool = True
    activation_symmetric: bool = False
    encoding: Literal["auto", "qdq-u8", "qdq-s8", "qop-u8", "qop-s8"] = "auto"
    reduce_range: bool | Literal["auto"] = "auto"
    keep_float: tuple[str, ...] = ()
    mixed_precision: bool = True
    preprocess: bool = True


class QATConfig(StaticConfig):
    """Quantization-aware training (fake-quant + STE, BN folded), exported as a QDQ graph."""

    kind: Literal["qat"] = "qat"  # type: ignore[assignment]
    epochs: int = Field(3, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    batch_size: int = Field(64, ge=1)


class FP16Config(_Common):
    """Half precision on CUDA (ONNX Runtime's float16 converter, I/O kept float32)."""

    kind: Literal["fp16"] = "fp16"
    device: Literal["cuda", "cpu"] = "cuda"


class BF16Config(_Common):
    """Bfloat16 on CPUs with AVX512-BF16 or AMX, through OpenVINO's inference precision."""

    kind: Literal["bf16"] = "bf16"
    backend: Literal["openvino"] = "openvino"  # type: ignore[assignment]


QuantizeConfig = Annotated[DynamicConfig | StaticConfig | QATConfig | FP16Config | BF16Config,
                           Field(discriminator="kind")]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(QuantizeConfig)


def parse_config(raw: Mapping[str, Any]) -> DynamicConfig | StaticConfig | QATConfig | FP16Config | BF16Config:
    """Validate a dict (a recipe stage, flags) into a config; raise ConfigError naming every bad field."""
    try:
        return _ADAPTER.validate_python(dict(raw))
    except ValidationError as err:
        kind = raw.get("kind")
        problems = []
        for e in err.errors():
            loc = [str(p) for p in e["loc"]]
            if loc and loc[0] == kind:  # pydantic prefixes the union's tag
                loc = loc[1:]
            got = "" if e["type"] == "missing" else f"; got {e.get('input')!r}"
            problems.append(f"`{'.'.join(loc) or 'kind'}`: {e['msg']}{got}")
        raise ConfigError(f"quantize config ({kind}) is invalid: {'; '.join(problems)}") from err


@dataclass(frozen=True, slots=True)
class Candidate:
    """One measured variant: its encoding, latency and quality."""

    name: str
    latency_ms: float
    metric: float
    drop: float
    meets_budget: bool


@dataclass
class QuantizeResult:
    """What a quantize run produced and measured."""

    kind: str
    onnx_path: Path
    out_dir: Path | None
    backend: str
    chosen: str
    metric: str
    float_metric: float
    quant_metric: float
    float_ms: float
    quant_ms: float
    candidates: list[Candidate]
    keep_float: list[str]
    cpu: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    handle: Any = None

    @property
    def speedup(self) -> float:
        return self.float_ms / self.quant_ms

    @property
    def accuracy_drop(self) -> float:
        return self.float_metric - self.quant_metric

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able summary (the manifest's ``quantization`` block)."""
        return {
            "kind": self.kind, "backend": self.backend, "chosen": self.chosen, "metric": self.metric,
            "float_metric": self.float_metric, "quant_metric": self.quant_metric,
            "accuracy_drop": self.accuracy_drop, "float_ms": self.float_ms, "quant_ms": self.quant_ms,
            "speedup": self.speedup, "keep_float": self.keep_float, "cpu": self.cpu,
            "candidates": [_cand_dict(c) for c in self.candidates],
            **self.details,
        }


def _cand_dict(c: Candidate) -> dict[str, Any]:
    return {"name": c.name, "latency_ms": c.latency_ms, "metric": c.metric, "drop": c.drop,
            "meets_budget": c.meets_budget}


# ---- model and data plumbing -------------------------------------------------------------


@dataclass
class _Model:
    """The float model a run starts from: its handle, its ONNX file and what the graph says."""

    handle: ModelHandle
    onnx_path: Path
    input_names: tuple[str, ...]
    fixed_batch: int | None = None

    @property
    def spec(self) -> str:
        return self.handle.spec

    @property
    def module(self) -> Any:
        return self.handle.module

    @property
    def task(self) -> str:
        return self.handle.task


def _resolve(model: ModelHandle | str | Path, work: Path) -> _Model:
    """Accept a ModelHandle or any model spec (an .onnx file, an artifact dir, torchvision:..., hf:...)."""
    from modelpress.sources.models import ModelHandle, load_model

    if isinstance(model, (str, Path)):
        model = load_model(str(model))
    if not isinstance(model, ModelHandle):
        raise ConfigError(f"quantize takes a ModelHandle or a model spec string; got {type(model).__name__}")
    if model.precision != "fp32":
        raise ConfigError(f"model {model.spec!r} is already {model.precision}; quantize starts from a float model")
    onnx_path = model.onnx_path
    if onnx_path is None:
        if model.module is None:
            raise ConfigError(f"model {model.spec!r} has neither an ONNX file nor a torch module")
        onnx_path = export_module(model.module, model, work / "float.onnx")
        model = model.with_onnx(onnx_path)
    return _from_onnx(Path(onnx_path), model)


def _from_onnx(path: Path, handle: ModelHandle) -> _Model:
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    inits = {t.name for t in g.initializer}
    graph_inputs = [i for i in g.input if i.name not in inits]
    dims = graph_inputs[0].type.tensor_type.shape.dim if graph_inputs else []
    fixed = dims[0].dim_value if dims and dims[0].HasField("dim_value") else None
    return _Model(handle, path, tuple(i.name for i in graph_inputs), fixed)


def export_module(module: Any, handle: ModelHandle, path: Path) -> Path:
    """Export a torch module to ONNX with the foundation's exporter (dynamic batch, checked)."""
    from modelpress.export.onnx import ExportConfig, export_onnx

    export_onnx(handle.with_module(module), path, ExportConfig())
    return path


def _slice(x: Any, i: int, j: int) -> Any:
    if isinstance(x, Mapping):
        return {k: np.asarray(v)[i:j] for k, v in x.items()}
    return x[i:j]


def _length(x: Any) -> int:
    if isinstance(x, Mapping):
        return len(next(iter(x.values())))
    return len(x)


def make_feeds(m: _Model, x: Any, *, batch: int, limit: int) -> list[dict[str, np.ndarray]]:
    """Turn a split's features into model feeds: arrays or texts (via ``model_inputs``), or pre-made dicts."""
    from modelpress.sources.data import model_inputs

    n = min(_length(x), limit)
    feeds = []
    for i in range(0, n, batch):
        part = _slice(x, i, min(i + batch, n))
        if isinstance(part, Mapping):
            feeds.append({k: np.ascontiguousarray(v) for k, v in part.items() if k in m.input_names})
        else:
            feeds.append(dict(model_inputs(m.handle, part if isinstance(part, list) else np.asarray(part))))
    return feeds


def _calib_split(data: Any) -> Any:
    split = getattr(data, "calib", None)
    if split is None or _length(split.x) == 0:
        split = getattr(data, "train", None)
    return split


# ---- the verb ----------------------------------------------------------------------------


def quantize(
    model: Any,
    config: DynamicConfig | StaticConfig | QATConfig | FP16Config | BF16Config | Mapping[str, Any],
    *,
    data: Any = None,
    out_dir: str | Path | None = None,
    train_fn: TrainFn | None = None,
    progress: Progress | None = None,
    sensitivity: bool = False,
) -> QuantizeResult:
    """Quantize ``model`` as ``config`` says, measure it against the float model, write an artifact.

    Args:
        model: a ModelHandle, an ``.onnx`` file, an artifact dir or a spec string.
        config: one of the configs (or a dict with ``kind``).
        data: a Dataset (``calib``/``val``/``train`` splits); required except for dynamic, fp16, bf16.
        out_dir: artifact directory, written atomically (nothing half-written on failure).
        train_fn: QAT only: ``train_fn(module, train_split, config) -> module``; a plain loop by default.
        progress: called with (stage, fraction done).
        sensitivity: also run the per-layer sensitivity analysis and plot it into the artifact.

    Raises:
        DataError: no calibration data, or data shaped unlike the model's input.
        GateError: no variant met ``max_accuracy_drop``.
        SlowerThanBaselineError: the result is not faster and ``allow_slower`` is off.
    """
    cfg = config if isinstance(config, BaseModel) else parse_config(config)
    say = progress or (lambda stage, frac: None)
    out = Path(out_dir) if out_dir is not None else None
    parent = out.parent if out is not None else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".modelpress-quant-", dir=parent))
    try:
        result = _run(model, cfg, data, work, train_fn, say, sensitivity)
        if out is not None:
            result = _write_artifact(result, cfg, work, out)
        return result
    finally:
        if out is not None or not os.environ.get("MODELPRESS_KEEP_WORK"):
            shutil.rmtree(work, ignore_errors=True)


def quantize_(module: Any, config: QATConfig | None = None) -> Any:
    """Prepare a torch module for QAT in place: fold BN, insert int8 fake-quant (STE); return it.

    Train it with any loop, then pass it (in a handle) to :func:`quantize` with a
    :class:`QATConfig`, or strip the wrappers with ``modelpress.compress._qat.strip_``.
    """
    from modelpress.compress import _qat

    cfg = config or QATConfig()
    reduce = enc.cpu_features().reduce_range if cfg.reduce_range == "auto" else bool(cfg.reduce_range)
    return _qat.quantize_(module, per_channel=cfg.per_channel, reduce_range=reduce,
                          activation_symmetric=cfg.activation_symmetric)


def run_stage(model: Any, params: Mapping[str, Any], *, data: Any = None, out_dir: str | Path | None = None,
              train_fn: TrainFn | None = None, progress: Progress | None = None) -> QuantizeResult:
    """Run quantize as a recipe stage: ``params`` is the stage's mapping (``kind`` plus config fields)."""
    return quantize(model, parse_config(params), data=data, out_dir=out_dir, train_fn=train_fn, progress=progress)


def measure_sensitivity(model: ModelHandle | str | Path, config: StaticConfig | Mapping[str, Any], *, data: Any,
                        encoding: str | None = None, progress: Progress | None = None) -> Sensitivity:
    """Rank every quantizable layer by the validation-metric drop when only it is INT8, most sensitive first.

    The per-layer analysis mixed precision runs (:func:`modelpress.compress.sensitivity.analyse`),
    on its own: a caller that picks layers to leave in float (the pipeline's back-off) ranks
    once and reuses the ranking.

    Args:
        model: the float model (a ModelHandle or a model spec).
        config: a StaticConfig (or QATConfig): its calibration, per_channel, keep_float, ...
            fix how each layer is quantized and ``val_samples`` how many rows score it.
        data: a dataset with a calibration (or train) split and a validation split.
        encoding: the INT8 encoding to quantize with; default ``config.encoding``, or the
            first the backend runs when that is "auto".
        progress: called with (stage, fraction done).

    Raises:
        DataError: no calibration or validation data.
    """
    from modelpress.compress.sensitivity import analyse

    cfg = config if isinstance(config, BaseModel) else parse_config(config)
    if not isinstance(cfg, StaticConfig):
        raise ConfigError(f"sensitivity is measured with static INT8; got a {cfg.kind} config (pass a StaticConfig)")
    if encoding is None:
        supported = [e for e in enc.ENCODINGS if cfg.backend == "onnxruntime" or e.startswith("qdq")]
        encoding = supported[0] if cfg.encoding == "auto" else cfg.encoding
    say = progress or (lambda stage, frac: None)
    work = Path(tempfile.mkdtemp(prefix=".modelpress-sens-"))
    try:
        ctx, _, _ = _context(model, cfg, data, work, say)
        if ctx.ref is None:
            raise DataError("measuring per-layer sensitivity needs a validation split to score on; the data has none")
        return analyse(ctx, encoding, plot=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _context(model: Any, cfg: Any, data: Any, work: Path, say: Progress) -> tuple[_Ctx, qe.RunFn, enc.CpuFeatures]:
    """Load the float model and its calibration / validation feeds; score the float model once."""
    m = _resolve(model, work)
    bad_ops = enc.unsupported_ops(m.onnx_path)
    if bad_ops:
        node, op = bad_ops[0]
        raise ConfigError(f"layer {node!r} uses op {op}, which the INT8 quantizer does not support; "
                          "keep it out with keep_float or export it with standard ONNX ops")
    cpu = enc.cpu_features()
    needs_data = cfg.kind in ("static", "qat")
    if needs_data and data is None:
        raise DataError(f"{cfg.kind} quantization needs calibration data; pass --data (e.g. --data digits) "
                        "or use --mode dynamic, which needs none")
    calib_feeds: list[dict[str, np.ndarray]] = []
    if needs_data:
        split = _calib_split(data)
        calib_feeds = make_feeds(m, split.x, batch=1, limit=cfg.samples) if split is not None else []
        enc.check_feeds(calib_feeds, m.onnx_path)
    val_feeds, labels = _val(m, data, cfg)
    if val_feeds:
        enc.check_feeds(val_feeds, m.onnx_path)
    say("float baseline", 0.05)
    float_run = qe.load_runner(m.handle, m.onnx_path, cfg.backend, threads=cfg.threads)
    ref = qe.run_all(float_run, val_feeds) if val_feeds else None
    reduce = cpu.reduce_range if getattr(cfg, "reduce_range", "auto") == "auto" else bool(cfg.reduce_range)
    return _Ctx(m, cfg, work, calib_feeds, val_feeds, labels, ref, reduce, say), float_run, cpu


def _run(model: Any, cfg: Any, data: Any, work: Path, train_fn: TrainFn | None, say: Progress,
         sensitivity: bool) -> QuantizeResult:
    from modelpress.compress import _precision

    ctx, float_run, cpu = _context(model, cfg, data, work, say)
    m, labels, ref, reduce = ctx.m, ctx.labels, ctx.ref, ctx.reduce_range
    details: dict[str, Any]
    if cfg.kind == "dynamic":
        variants, details = _dynamic.dynamic_variants(ctx)
    elif cfg.kind == "static":
        variants, details = _static_variants(ctx)
    elif cfg.kind == "qat":
        from modelpress.compress import _qat

        variants, details = _qat.run_qat(ctx, train_fn, data)
    else:
        variants, details = _precision.convert(m.onnx_path, cfg, work, cpu)
    say("measuring", 0.7)
    cands, timings, float_ms = _measure(ctx, float_run, variants)
    chosen = _choose(cands)
    keep = list(getattr(cfg, "keep_float", ()))
    if chosen is None and cfg.kind == "static" and cfg.mixed_precision and ref is not None:
        say("mixed precision", 0.8)
        from modelpress.compress.sensitivity import mixed_precision

        best = min(cands, key=lambda c: c.drop)
        mp = mixed_precision(ctx, best.name)
        details["mixed_precision"] = mp.to_dict()
        if mp.path is not None:
            name = f"{mp.encoding}+float{len(mp.keep_float)}"
            variants[name] = mp.path
            keep = keep + mp.keep_float
            more, _, _ = _measure(ctx, float_run, {name: mp.path})
            cands += more
            chosen = _choose(more)
    if chosen is None:
        best = min(cands, key=lambda c: c.drop)
        raise GateError(f"no {cfg.kind} variant met max_accuracy_drop={cfg.max_accuracy_drop:g}: best was "
                        f"{best.name} with a drop of {best.drop:.4f}; raise the "
                        "budget, keep sensitive layers in float (keep_float), or try --mode qat")
    if sensitivity and ref is not None and cfg.kind in ("static", "qat"):
        from modelpress.compress.sensitivity import analyse

        details["sensitivity"] = analyse(ctx, chosen.name.split("+")[0]).to_dict()
    metric_name = "accuracy" if labels is not None and m.task == "classification" else (
        "agreement" if m.task == "classification" else "cosine")
    float_metric = chosen.metric + chosen.drop
    if "torch_sim_metric" in details:
        # What the torch simulation promised vs what the exported INT8 graph delivers.
        details["exported_metric"] = chosen.metric
        details["sim_gap"] = details["torch_sim_metric"] - chosen.metric
    result = QuantizeResult(
        kind=cfg.kind, onnx_path=variants[chosen.name], out_dir=None, backend=cfg.backend, chosen=chosen.name,
        metric=metric_name, float_metric=float_metric, quant_metric=chosen.metric, float_ms=float_ms,
        quant_ms=chosen.latency_ms, candidates=cands, keep_float=keep,
        cpu={"vnni": cpu.vnni, "avx512": cpu.avx512, "avx512_bf16": cpu.avx512_bf16, "amx": cpu.amx},
        details={"timings_ms": timings, "threads": cfg.threads, **details}, handle=m.handle,
    )
    if result.quant_ms >= float_ms:
        msg = (f"{cfg.kind} result ({chosen.name}) is not faster than the float model on {cfg.backend}: "
               f"{result.quant_ms:.2f} ms vs {float_ms:.2f} ms ({result.speedup:.2f}x)"
               + ("" if cpu.vnni else "; this CPU has no VNNI, so int8 kernels gain little"))
        if not cfg.allow_slower:
            raise SlowerThanBaselineError(msg + "; pass --allow-slower to keep it anyway")
        logger.warning(msg)
        result.details["slower_than_float"] = True
    return result


@dataclass
class _Ctx:
    """Everything a variant builder or the sensitivity analysis needs from one run."""

    m: _Model
    cfg: Any
    work: Path
    calib_feeds: list[dict[str, np.ndarray]]
    val_feeds: list[dict[str, np.ndarray]]
    labels: np.ndarray | None
    ref: np.ndarray | None
    reduce_range: bool
    say: Progress

    def settings(self, keep: Sequence[str] = (), only: Sequence[str] | None = None) -> enc.StaticSettings:
        c = self.cfg
        return enc.StaticSettings(calibration=c.calibration, percentile=c.percentile, per_channel=c.per_channel,
                                  activation_symmetric=c.activation_symmetric, reduce_range=self.reduce_range,
                                  nodes_to_exclude=tuple(c.keep_float) + tuple(keep),
                                  nodes_to_quantize=tuple(only) if only is not None else None)

    @property
    def source(self) -> Path:
        """The graph quantizers start from (pre-processed once per run)."""
        pre = self.work / "preprocessed.onnx"
        if not self.cfg.preprocess:
            return self.m.onnx_path
        if not pre.exists():
            enc.preprocess(self.m.onnx_path, pre)
        return pre if pre.exists() else self.m.onnx_path

    @property
    def cache(self) -> Path:
        return self.work / f"calib-{self.cfg.calibration}.json"

    def build(self, encoding: str, name: str, keep: Sequence[str] = (), only: Sequence[str] | None = None) -> Path:
        """Quantize the pre-processed graph in ``encoding`` into ``work/name.onnx``."""
        return enc.quantize_static_encoding(self.source, self.work / f"{name}.onnx", encoding,  # type: ignore[arg-type]
                                            self.settings(keep, only), feeds=self.calib_feeds, cache=self.cache)

    def quality(self, path: Path) -> qe.Quality:
        run = qe.load_runner(self.m.handle, path, self.cfg.backend, threads=self.cfg.threads)
        if self.ref is None:
            raise DataError("scoring a quantized model needs a validation split (--data)")
        return qe.score(self.m.handle, qe.run_all(run, self.val_feeds), self.ref, self.labels, self.cfg.backend)


def _val(m: _Model, data: Any, cfg: Any) -> tuple[list[dict[str, np.ndarray]], np.ndarray | None]:
    split = getattr(data, "val", None) if data is not None else None
    if split is None or _length(split.x) == 0:
        return [], None
    # A graph exported with a fixed batch size gets batches of exactly that size.
    feeds = make_feeds(m, split.x, batch=m.fixed_batch or 64, limit=cfg.val_samples)
    labels = None if split.y is None else np.asarray(split.y)[: cfg.val_samples]
    return feeds, labels


def _static_variants(ctx: _Ctx) -> tuple[dict[str, Path], dict[str, Any]]:
    cfg = ctx.cfg
    # OpenVINO reads QDQ graphs only (the operator form uses com.microsoft ops it cannot convert).
    supported = [e for e in enc.ENCODINGS if cfg.backend == "onnxruntime" or e.startswith("qdq")]
    if cfg.encoding != "auto" and cfg.encoding not in supported:
        raise ConfigError(f"`encoding` {cfg.encoding!r} cannot run on backend {cfg.backend!r}; "
                          f"choose one of {supported} or 'auto'")
    encodings = supported if cfg.encoding == "auto" else [cfg.encoding]
    variants: dict[str, Path] = {}
    for i, e in enumerate(encodings):
        ctx.say(f"quantizing {e}", 0.1 + 0.5 * i / len(encodings))
        variants[e] = ctx.build(e, e)
    return variants, {"reduce_range": ctx.reduce_range, "calibration": cfg.calibration,
                      "calibration_samples": len(ctx.calib_feeds), "per_channel": cfg.per_channel,
                      "activation_symmetric": cfg.activation_symmetric, "preprocessed": cfg.preprocess}


def _measure(ctx: _Ctx, float_run: qe.RunFn, variants: Mapping[str, Path]) -> tuple[list[Candidate], dict, float]:
    """Time every variant beside the float model (batch 1, interleaved) and score it on the validation split."""
    cfg, m = ctx.cfg, ctx.m
    precision = "bf16" if cfg.kind == "bf16" else "fp32"
    device = getattr(cfg, "device", "cpu")
    runs: dict[str, qe.RunFn] = {}
    for name, p in variants.items():
        try:
            runs[name] = qe.load_runner(m.handle, p, cfg.backend, threads=cfg.threads, precision=precision,
                                        device=device)
        except BackendError as err:  # a candidate the backend cannot run is dropped, not fatal
            if len(variants) == 1:
                raise
            logger.warning("candidate %s dropped: %s", name, err)
    timings = _latencies(ctx, float_run, {n: variants[n] for n in runs}, runs, precision, device)
    cands = []
    for name, run in runs.items():
        if ctx.ref is not None:
            q = qe.score(m.handle, qe.run_all(run, ctx.val_feeds), ctx.ref, ctx.labels, cfg.backend)
            metric, drop = q.value, q.drop
        else:
            metric, drop = float("nan"), 0.0
        cands.append(Candidate(name, timings[name], metric, drop, drop <= cfg.max_accuracy_drop + 1e-12))
        logger.info("%s: %.2f ms (float %.2f ms), metric %.4f, drop %.4f", name, timings[name], timings["float"],
                    metric, drop)
    return cands, timings, timings["float"]


def _latencies(ctx: _Ctx, float_run: qe.RunFn, graphs: Mapping[str, Path], runs: Mapping[str, qe.RunFn],
               precision: str, device: str) -> dict[str, float]:
    """Return batch-1 medians (ms) of the float graph and each candidate, measured side by side."""
    cfg, m = ctx.cfg, ctx.m
    if precision == "fp32" and device == "cpu":
        return qe.latencies_ms(m.handle, {"float": m.onnx_path, **graphs}, cfg.backend, threads=cfg.threads)
    # The bench harness loads sessions with default options; bf16/CUDA sessions are timed as loaded.
    feed = ctx.val_feeds[0] if ctx.val_feeds else m.handle.example_inputs(batch=1)
    one = {k: v[:1] for k, v in feed.items()}
    return qe.alternating_ms({"float": lambda: float_run(one), **{n: (lambda r=r: r(one)) for n, r in runs.items()}},
                             threads=cfg.threads)


def _choose(cands: Sequence[Candidate]) -> Candidate | None:
    ok = [c for c in cands if c.meets_budget]
    return min(ok, key=lambda c: c.latency_ms) if ok else None


def _write_artifact(result: QuantizeResult, cfg: Any, work: Path, out: Path) -> QuantizeResult:
    """Write the chosen graph as an artifact (atomically: temp dir beside ``out``, then renamed)."""
    from modelpress.artifact import write_artifact

    precision = {"fp16": "fp16", "bf16": "fp32"}.get(cfg.kind, "int8")
    handle = result.handle.with_onnx(result.onnx_path, precision=precision)
    if cfg.kind == "qat":
        handle.module = None  # the trained module is BN-folded; its checkpoint would not rebuild
    extra = {name: work / name for name in ("sensitivity.png",) if (work / name).exists()}
    manifest = {"stage": "quantize", "parent": result.handle.spec, "quantize_config": cfg.model_dump(mode="json"),
                "quantization": result.to_dict(),
                "metrics": {"before": {result.metric: result.float_metric, "latency_ms": result.float_ms},
                            "after": {result.metric: result.quant_metric, "latency_ms": result.quant_ms}}}
    write_artifact(out, handle=handle, manifest=manifest, extra_files=extra)
    result.out_dir = out
    result.onnx_path = out / "model.onnx"
    result.handle = handle.with_onnx(result.onnx_path)
    return result
