"""INT8 encodings on ONNX Runtime: CPU features, pre-processing, calibration, candidates.

Everything here wraps ``onnxruntime.quantization``; nothing re-implements a
quantizer or a calibrator. The calibration ranges are computed once and cached
to a file so that every candidate encoding of one run shares the same ranges
(the encodings differ in how the graph is written, not in what it computes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from modelpress.errors import DataError

logger = logging.getLogger(__name__)

Encoding = Literal["qdq-u8", "qdq-s8", "qop-u8", "qop-s8"]
ENCODINGS: tuple[Encoding, ...] = ("qdq-u8", "qdq-s8", "qop-u8", "qop-s8")


def with_float_layers(encoding: str) -> Encoding:
    """Return the encoding that can keep layers in float: the QDQ form with the same activation type.

    In the operator form a float layer after an INT8 one reads a tensor dequantized from a
    QLinearConv/QGemm output: no float tensor exists to feed it, and ONNX Runtime >= 1.21
    re-quantizes such a layer at session load (see :func:`float_layers_read_float`).
    """
    return f"qdq-{encoding.split('-')[1]}"  # type: ignore[return-value]
CalibrationName = Literal["minmax", "percentile", "entropy"]


@dataclass(frozen=True, slots=True)
class CpuFeatures:
    """The int8/bf16 instruction sets this CPU advertises (from /proc/cpuinfo)."""

    vnni: bool
    avx512: bool
    avx512_bf16: bool
    amx: bool
    flags_source: str

    @property
    def reduce_range(self) -> bool:
        """Say whether int8 weights should use 7 bits.

        Without VNNI the u8*s8 kernels add pairs of products into int16 and can
        saturate; 7-bit weights keep them exact (ONNX Runtime's own advice).
        """
        return not self.vnni


def cpu_features(cpuinfo: str | None = None) -> CpuFeatures:
    """Read the CPU's int8/bf16 instruction sets from ``/proc/cpuinfo``.

    Args:
        cpuinfo: text to parse instead of ``/proc/cpuinfo`` (tests).
    """
    source = "argument"
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
            source = "/proc/cpuinfo"
        except OSError:  # not Linux: assume the conservative answer
            cpuinfo, source = "", "unavailable"
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if re.match(r"^\s*(flags|Features)\s*:", line):
            flags.update(line.split(":", 1)[1].split())
    amx = any(f.startswith("amx") for f in flags)
    return CpuFeatures(
        vnni=bool({"avx512_vnni", "avx_vnni", "avx512vnni"} & flags) or amx,
        avx512=any(f.startswith("avx512") for f in flags),
        avx512_bf16="avx512_bf16" in flags,
        amx=amx,
        flags_source=source,
    )


def preprocess(src: Path, dst: Path) -> Path:
    """Run ONNX Runtime's quantization pre-processing (shape inference + graph optimisation).

    Pre-processing fuses Conv+BN and folds constants before the quantizer sees
    the graph; without it the quantizer leaves float islands that make INT8
    no faster than FP32. Falls back to the plain graph when the optimiser
    cannot handle it (logged).
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
    except Exception as err:  # symbolic shape inference rejects some graphs; ORT's own fallback
        logger.warning("pre-processing with symbolic shapes failed (%s); retrying without", err)
        try:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        except Exception as err2:
            logger.warning("pre-processing failed (%s); quantizing the graph as exported", err2)
            return src
    return dst


class FeedReader:
    """An ONNX Runtime ``CalibrationDataReader`` over a list of input dicts."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._feeds = list(feeds)
        self._it: Iterator[Mapping[str, np.ndarray]] = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self._it, None)
        return None if item is None else dict(item)

    def rewind(self) -> None:
        self._it = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self._feeds[start_index:end_index])


def _calibration_method(name: CalibrationName):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}[name]


@dataclass(frozen=True, slots=True)
class StaticSettings:
    """What one static INT8 quantization run needs besides the graph and the data."""

    calibration: CalibrationName = "minmax"
    percentile: float = 99.999
    per_channel: bool = True
    activation_symmetric: bool = False
    reduce_range: bool = False
    nodes_to_exclude: tuple[str, ...] = ()
    nodes_to_quantize: tuple[str, ...] | None = None


@contextlib.contextmanager
def root_log_level(level: int | None) -> Iterator[None]:
    root = logging.getLogger()
    saved = root.level
    if level is not None:
        root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(saved)


def quantize_static_encoding(
    src: Path,
    dst: Path,
    encoding: Encoding,
    settings: StaticSettings,
    *,
    feeds: Sequence[Mapping[str, np.ndarray]] | None,
    cache: Path,
) -> Path:
    """Quantize ``src`` to ``dst`` in one encoding; calibrate once, reuse ``cache`` after.

    Args:
        encoding: "qdq-u8" (QuantizeLinear/DequantizeLinear pairs, uint8
            activations), "qdq-s8", "qop-u8" (QLinearConv-style operators), "qop-s8".
        feeds: calibration inputs; may be None when ``cache`` already exists.
        cache: calibration-range cache file shared by every encoding of one run.
    """
    from onnxruntime.quantization import QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as _quantize_static

    fmt, act = encoding.split("-")
    extra = {
        "ActivationSymmetric": settings.activation_symmetric,
        "WeightSymmetric": True,
        # The calibrator's own symmetric option changes the ranges themselves.
        "CalibTensorRangeSymmetric": settings.activation_symmetric,
    }
    if settings.calibration == "percentile":
        extra["CalibPercentile"] = settings.percentile
    reader = FeedReader(feeds) if feeds is not None and not cache.exists() else None
    # The quantizer warns on the root logger that signed QOperator graphs run slowly
    # on x64; trying that encoding is deliberate (it is timed and rarely kept).
    with root_log_level(logging.ERROR if encoding == "qop-s8" else None):
        _quantize_static(
            str(src),
            str(dst),
            reader,
            quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=QuantType.QUInt8 if act == "u8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(settings.nodes_to_exclude) or None,
            nodes_to_quantize=list(settings.nodes_to_quantize) if settings.nodes_to_quantize is not None else None,
            calibrate_method=_calibration_method(settings.calibration),
            extra_options=extra,
            calibration_cache_path=str(cache),
        )
    float_layers_read_float(dst, src)
    return dst


# Layers with weights that ONNX Runtime's WeightBiasQuantization pass re-quantizes at session load.
_WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Activations the QDQ quantizer drops in front of a Q whose zero point already clamps (Relu / Clip).
_REMOVABLE_ACTIVATIONS = ("Relu", "Clip")


def float_layers_read_float(path: Path, source: Path) -> list[str]:
    """Rewrite ``path`` in place so every layer the quantizer left in float reads float activations.

    The quantizer feeds a float layer that sits after an INT8 one ``DequantizeLinear(QuantizeLinear(x))``.
    ONNX Runtime >= 1.21 (its ``WeightBiasQuantization`` pass) quantizes, at session load, the float
    weight of any Conv/ConvTranspose/Gemm whose input comes from a DequantizeLinear (>= 1.22: and whose
    output reaches a QuantizeLinear, after a Relu it fuses away), per tensor, to INT8: a layer kept in
    float then runs as QLinearConv/QGemm anyway, in this process and in every deployment of the
    artifact. Feeding such a layer ``x`` itself keeps it float for any runtime. The Q/DQ pair stays
    for its other consumers and is removed when none is left.

    A layer is "left in float" when its weight (input 1) is a plain initializer, not a DequantizeLinear.
    When the quantizer removed a Relu/Clip in front of the Q (the Q's range clamps the same way),
    ``x`` lacks it; a copy of that activation from ``source`` is put back for the float layer.

    Args:
        path: the quantized graph (rewritten in place when anything changes).
        source: the graph it was quantized from (to find removed activations).

    Returns:
        the names of the layers rewired.
    """
    import onnx

    model = onnx.load(str(path))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    kept = [n for n in g.node if n.op_type in _WEIGHTED_OPS and len(n.input) > 1 and n.input[1] in inits]
    if not kept:
        return []
    src = onnx.load(str(source), load_external_data=False).graph
    src_producer = {o: n for n in src.node for o in n.output}
    src_inits = {t.name: t for t in src.initializer}
    restored: dict[str, str | None] = {}  # float tensor -> the re-applied activation's output
    rewired = []
    for node in kept:
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in inits:
                continue  # not dequantized, or a constant (a bias shared with an INT8 layer)
            q = producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                # The operator form: a QLinearConv/QGemm wrote the INT8 tensor; no float one exists.
                logger.warning("float layer %s reads %s, dequantized from %s: there is no float tensor to feed "
                               "it, and ONNX Runtime >= 1.21 may run it in INT8; use a qdq encoding to keep it float",
                               node.name, name, q.op_type if q is not None else "a graph input")
                continue
            x = q.input[0]
            was, now = src_producer.get(x), producer.get(x)
            if (was is None) != (now is None):
                logger.warning("float layer %s: input %s has no counterpart in the float graph; left as is",
                               node.name, x)
                continue
            if was is not None and now is not None and was.op_type != now.op_type:
                if was.op_type not in _REMOVABLE_ACTIVATIONS:
                    logger.warning("float layer %s: %s is made by %s here but by %s in the float graph; left as is",
                                   node.name, x, now.op_type, was.op_type)
                    continue
                if x not in restored:
                    restored[x] = _reapply(g, was, x, inits, src_inits)
                if restored[x] is None:
                    logger.warning("float layer %s: cannot re-apply the %s the quantizer removed; left as is",
                                   node.name, was.op_type)
                    continue
                x = restored[x]
            node.input[i] = x
            rewired.append(node.name)
    if rewired:
        _drop_unused_qdq(g)
        if restored:
            _topological_sort(g)
        onnx.save(model, str(path))
        logger.info("float layers fed float activations (not INT8-rounded ones): %s", sorted(set(rewired)))
    return sorted(set(rewired))


def _reapply(g, activation, x: str, inits: dict, src_inits: dict) -> str | None:
    """Append a copy of ``activation`` (removed by the quantizer) applied to ``x``; return its output."""
    import onnx

    out = f"{x}_float"
    extra = list(activation.input[1:])
    made = {o for n in g.node for o in n.output}
    for name in extra:  # Clip's min / max
        if name and name not in inits and name not in made:
            if name not in src_inits:
                return None
            g.initializer.append(src_inits[name])
            inits[name] = src_inits[name]
    node = onnx.helper.make_node(activation.op_type, [x, *extra], [out], name=f"{activation.name}_float")
    node.attribute.extend(activation.attribute)
    g.node.append(node)
    return out


def _drop_unused_qdq(g) -> None:
    """Remove Q/DQ nodes whose output nobody reads any more (and their orphaned initializers)."""
    outputs = {o.name for o in g.output}
    params: set[str] = set()
    while True:
        used = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            params.update(n.input[1:])
            g.node.remove(n)
    used = {i for n in g.node for i in n.input} | outputs
    for t in [t for t in g.initializer if t.name in params and t.name not in used]:
        g.initializer.remove(t)


def _topological_sort(g) -> None:
    """Reorder ``g.node`` so that every node comes after the producers of its inputs."""
    ready = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):  # a cycle or a missing input: keep the rest as they were
            ordered += rest
            break
        pending = rest
    import onnx

    nodes = []
    for n in ordered:  # copies: the originals are owned by the field cleared below
        c = onnx.NodeProto()
        c.CopyFrom(n)
        nodes.append(c)
    del g.node[:]
    g.node.extend(nodes)


def quantize_dynamic_graph(
    src: Path,
    dst: Path,
    *,
    per_channel: bool,
    reduce_range: bool,
    nodes_to_exclude: Sequence[str] = (),
    op_types: Sequence[str] | None = None,
) -> Path:
    """Quantize weights to int8 and activations on the fly (MatMul/Gemm/Attention-heavy models).

    A graph fused by :func:`modelpress.compress._dynamic.fuse_transformer` has its fused Attention turned
    into QAttention, EmbedLayerNormalization into QEmbedLayerNormalization and
    its MatMuls into MatMulInteger/DynamicQuantizeMatMul.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        per_channel=per_channel,
        reduce_range=reduce_range,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(nodes_to_exclude) or None,
        op_types_to_quantize=list(op_types) if op_types else None,
        # ONNX's shape inference gives no types past com.microsoft ops (fused graphs); they are all float32.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return dst


# Fused operators the BERT optimizer writes; plain LayerNormalization is standard ONNX and does not count.
def quantizable_nodes(path: Path, op_types: Sequence[str] = ("Conv", "Gemm", "MatMul")) -> list[str]:
    """List the names of the nodes that carry weights INT8 would quantize, in graph order."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type in op_types and any(i in inits for i in node.input[1:2]):
            names.append(node.name)
    return names


def unsupported_ops(path: Path) -> list[tuple[str, str]]:
    """Return (node, op) pairs ONNX Runtime's CPU provider cannot run (a custom domain)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    known = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}
    return [(n.name or n.op_type, f"{n.domain}::{n.op_type}") for n in model.graph.node if n.domain not in known]


def cpu_threads_default() -> int:
    """Return the thread count runs default to: 2, or fewer on a smaller machine."""
    return max(1, min(2, os.cpu_count() or 1))


def check_feeds(feeds: Sequence[Mapping[str, np.ndarray]], onnx_path: Path) -> None:
    """Raise one :class:`DataError` naming the input whose data does not fit the graph."""
    import onnx

    if not feeds:
        raise DataError("quantize got no calibration samples; pass --data with a calibration split "
                        "(e.g. --data digits) or use --mode dynamic, which needs none")
    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in inits]
    sample = feeds[0]
    for gi in graph_inputs:
        if gi.name not in sample:
            raise DataError(f"calibration data has no input {gi.name!r} that the model needs; "
                            f"got inputs {sorted(sample)}")
        dims = gi.type.tensor_type.shape.dim
        want = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        got = np.asarray(sample[gi.name]).shape
        bad = len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got, strict=False))
        if bad:
            shown = "(" + ", ".join("?" if w is None else str(w) for w in want) + ")"
            raise DataError(f"calibration data for input {gi.name!r} has shape {tuple(got)} but the model "
                            f"expects {shown}; pass data shaped like the model's input")
