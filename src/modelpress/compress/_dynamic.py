"""Dynamic INT8 candidates: the graph as exported, and its transformer-fused form.

For BERT-like encoders ONNX Runtime's transformer optimizer fuses attention,
LayerNorm and GELU into contrib ops, which dynamic quantization then turns into
QAttention / MatMulInteger. Both candidates are timed and scored by quantize.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelpress.compress import _encodings as enc
from modelpress.errors import BackendError, ConfigError

if TYPE_CHECKING:
    from modelpress.compress.quantize import _Ctx as Ctx
    from modelpress.sources.models import ModelHandle

logger = logging.getLogger(__name__)


FUSED_OPS = ("Attention", "MultiHeadAttention", "EmbedLayerNormalization", "SkipLayerNormalization",
             "SkipSimplifiedLayerNormalization", "BiasGelu", "FastGelu", "Gelu", "GemmFastGelu")


@dataclass(frozen=True, slots=True)
class Fusion:
    """What ONNX Runtime's transformer optimizer fused in one graph."""

    path: Path
    counts: dict[str, int]
    shape_inference: bool

    @property
    def fused(self) -> int:
        """Return how many fused transformer operators the graph now has."""
        return sum(self.counts.get(op, 0) for op in FUSED_OPS)

    @property
    def attention(self) -> int:
        return self.counts.get("Attention", 0) + self.counts.get("MultiHeadAttention", 0)


def fuse_transformer(src: Path, dst: Path, *, num_heads: int = 0, hidden_size: int = 0, opt_level: int = 1) -> Fusion:
    """Fuse a BERT-like encoder into ONNX Runtime's contrib ops with its transformer optimizer.

    Attention subgraphs become ``Attention``, Add+LayerNorm ``SkipLayerNormalization``,
    the embeddings ``EmbedLayerNormalization`` and Add+Gelu ``BiasGelu`` (all in the
    com.microsoft domain, which ONNX Runtime's CPU provider runs).

    Args:
        num_heads, hidden_size: the encoder's; 0 lets the optimizer read them from
            the graph's Reshape shapes (which fails when a Shape/Concat builds them).
        opt_level: ONNX Runtime's level run before the fusions; 1 (basic) is the
            optimizer's default for BERT and is hardware-independent, so the
            artifact runs on any CPU.

    The SkipLayerNormalization fusion needs symbolic shape inference, which fails
    on some exports (an Expand it cannot follow); then the fusion is run again
    with shape inference off, as the optimizer's ``--disable_shape_inference``
    does, and the result with more fused operators is kept.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    def run(shape_inference: bool) -> tuple[object, dict[str, int]]:
        options = FusionOptions("bert")
        options.enable_shape_inference = shape_inference
        # The optimizer prints shape-inference failures and warns on the root logger; both are handled here.
        with contextlib.redirect_stdout(io.StringIO()), enc.root_log_level(logging.ERROR):
            model = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                                   opt_level=opt_level, optimization_options=options)
            counts = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
        return model, counts

    model, counts = run(True)
    shape_inference = True
    if counts.get("LayerNormalization", 0) > 1 and not counts.get("SkipLayerNormalization"):
        retry, retry_counts = run(False)
        if sum(retry_counts.get(op, 0) for op in FUSED_OPS) > sum(counts.get(op, 0) for op in FUSED_OPS):
            model, counts, shape_inference = retry, retry_counts, False
    model.save_model_to_file(str(dst))  # type: ignore[attr-defined]
    logger.info("transformer fusion of %s: %s (shape inference %s)", src.name, counts, shape_inference)
    return Fusion(dst, counts, shape_inference)


def dynamic_variants(ctx: Ctx) -> tuple[dict[str, Path], dict[str, Any]]:
    """Write the dynamic INT8 candidates: the graph as exported and, for encoders, its transformer-fused form."""
    cfg, m = ctx.cfg, ctx.m
    variants: dict[str, Path] = {}
    if cfg.transformer_fusion != "only":
        ctx.say("quantizing dynamic", 0.1)
        variants["dynamic"] = enc.quantize_dynamic_graph(m.onnx_path, ctx.work / "dynamic.onnx",
                                                         per_channel=cfg.per_channel, reduce_range=ctx.reduce_range,
                                                         nodes_to_exclude=cfg.keep_float)
    try:
        fused, info = fused_graph(ctx)
        if fused is not None:
            ctx.say("quantizing fused-dynamic", 0.5)
            variants["fused-dynamic"] = enc.quantize_dynamic_graph(fused, ctx.work / "fused-dynamic.onnx",
                                                                   per_channel=cfg.per_channel,
                                                                   reduce_range=ctx.reduce_range)
    except ConfigError:
        raise
    except Exception as err:  # the optimizer or quantizer choked on this graph: the plain candidate still stands
        if cfg.transformer_fusion == "only":
            raise BackendError(f"transformer fusion of {m.spec} failed: {err}; "
                               "use transformer_fusion 'auto' or 'off'") from err
        logger.warning("transformer-fused candidate dropped: %s", err)
        info = {"status": "failed", "reason": f"{type(err).__name__}: {err}"}
    return variants, {"reduce_range": ctx.reduce_range, "per_channel": cfg.per_channel, "transformer_fusion": info}


def fused_graph(ctx: Ctx) -> tuple[Path | None, dict[str, Any]]:
    """Fuse the float graph with ONNX Runtime's transformer optimizer; return it (or None) and what happened.

    The optimizer's attention patterns are those of the TorchScript exporter; when
    the given graph (the dynamo exporter's, say) yields no fused Attention and the
    torch module is at hand, the module is re-exported with TorchScript and fused.
    """
    import time

    cfg, m = ctx.cfg, ctx.m
    if cfg.transformer_fusion == "off":
        return None, {"status": "off"}
    skip = None
    if cfg.backend != "onnxruntime":
        # Measured with OpenVINO 2026.4: it reads the fused float graph, but not the QAttention and
        # QEmbedLayerNormalization ops that dynamic quantization makes of it.
        skip = f"{cfg.backend} cannot read the fused INT8 graph's com.microsoft QAttention/QEmbedLayerNormalization ops"
    elif cfg.keep_float:
        skip = "keep_float names nodes of the exported graph, which the fusion replaces"
    elif not has_attention(m.onnx_path):
        skip = "the graph has no Softmax and MatMul nodes: no attention to fuse"
    if skip is not None:
        if cfg.transformer_fusion == "only":
            raise ConfigError(f"`transformer_fusion` 'only' cannot be used here: {skip}; use 'auto' or 'off'")
        return None, {"status": "skipped", "reason": skip}
    heads, hidden = (cfg.num_heads, cfg.hidden_size) if cfg.num_heads and cfg.hidden_size else encoder_dims(m.handle)
    t0 = time.perf_counter()
    ctx.say("fusing transformer ops", 0.3)
    fusion = fuse_transformer(m.onnx_path, ctx.work / "fused.onnx", num_heads=heads, hidden_size=hidden)
    source = "given graph"
    if fusion.attention == 0 and m.module is not None:
        from modelpress.errors import ExportError
        from modelpress.export.onnx import ExportConfig, export_onnx

        ts = ctx.work / "float-torchscript.onnx"
        try:
            export_onnx(m.handle, ts, ExportConfig(exporter="torchscript"))
            again = fuse_transformer(ts, ctx.work / "fused-torchscript.onnx", num_heads=heads, hidden_size=hidden)
        except ExportError as err:  # the plain candidate still stands
            logger.warning("TorchScript re-export for transformer fusion failed: %s", err)
        else:
            if (again.attention, again.fused) > (fusion.attention, fusion.fused):
                fusion, source = again, "torchscript re-export"
    info = {"status": "fused" if fusion.fused else "skipped", "source": source, "num_heads": heads,
            "hidden_size": hidden, "fused_ops": fusion.counts, "shape_inference": fusion.shape_inference,
            "seconds": round(time.perf_counter() - t0, 2)}
    if not fusion.fused:
        info["reason"] = "ONNX Runtime's transformer optimizer fused nothing in this graph"
        if cfg.transformer_fusion == "only":
            raise ConfigError(f"`transformer_fusion` 'only': {info['reason']} (fused ops {fusion.counts}); "
                              "use 'auto' or 'off'")
        return None, info
    return fusion.path, info


def has_attention(path: Path) -> bool:
    """Say whether a graph looks like attention: it has a Softmax and MatMuls."""
    import onnx

    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    return "Softmax" in ops and "MatMul" in ops


def encoder_dims(handle: ModelHandle) -> tuple[int, int]:
    """Return (attention heads, hidden size) from the module's config or attention layers; (0, 0) if unknown.

    0 lets ONNX Runtime's optimizer read them from the graph's Reshape shapes.
    """
    import json

    module = handle.module
    if module is not None and hasattr(module, "modules"):
        for sub in module.modules():
            conf = getattr(sub, "config", None)
            heads, hidden = getattr(conf, "num_attention_heads", None), getattr(conf, "hidden_size", None)
            if isinstance(heads, int) and isinstance(hidden, int):
                return heads, hidden
            if isinstance(getattr(sub, "num_heads", None), int) and isinstance(getattr(sub, "embed_dim", None), int):
                return sub.num_heads, sub.embed_dim  # torch.nn.MultiheadAttention
    config = Path(handle.tokenizer_dir) / "config.json" if handle.tokenizer_dir else None
    if config is not None and config.is_file():
        raw = json.loads(config.read_text())
        if isinstance(raw.get("num_attention_heads"), int) and isinstance(raw.get("hidden_size"), int):
            return raw["num_attention_heads"], raw["hidden_size"]
    return 0, 0
