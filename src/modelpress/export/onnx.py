"""Export a torch model to ONNX, optimise the graph and check it against torch."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from modelpress.errors import ExportError, ExportMismatchError

if TYPE_CHECKING:
    from modelpress.sources.models import ModelHandle

log = logging.getLogger(__name__)


class ExportConfig(BaseModel):
    """How to export a model to ONNX.

    Attributes:
        opset: ONNX opset; 18 runs on ONNX Runtime >= 1.14 and OpenVINO >= 2023.
        dynamic_batch: make axis 0 of every input and output dynamic.
        dynamic_sequence: make axis 1 of integer (token) inputs dynamic.
        exporter: "dynamo" (torch.export based), "torchscript", or "auto"
            (dynamo, falling back to torchscript if dynamo cannot trace the model).
        check: compare ONNX Runtime's outputs with torch's on random inputs.
        atol, rtol: the check fails when |onnx - torch| > atol + rtol * |torch| anywhere.
        optimize: fold constants and fuse Conv+BN (ONNX Runtime's basic,
            hardware-independent level) when the exporter left any to do.
        keep_debug_info: keep the exporter's per-node debug metadata (source
            stack traces with local file paths, FX node text, module scopes).
            Off by default: it can outweigh a small model's weights and leaks
            the build machine's paths into a deployed artifact.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    opset: int = Field(18, ge=13, le=23)
    dynamic_batch: bool = True
    dynamic_sequence: bool = True
    exporter: Literal["auto", "dynamo", "torchscript"] = "auto"
    check: bool = True
    atol: float = Field(1e-4, ge=0)
    rtol: float = Field(1e-3, ge=0)
    optimize: bool = True
    keep_debug_info: bool = False


@dataclass
class ExportReport:
    """What the export produced and how closely it matches torch."""

    path: Path
    exporter: str
    opset: int
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    node_counts: dict[str, int] = field(default_factory=dict)
    fused_batchnorms: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "exporter": self.exporter,
            "opset": self.opset,
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "nodes": sum(self.node_counts.values()),
            "fused_batchnorms": self.fused_batchnorms,
        }


def _dynamic_axes(handle: ModelHandle, config: ExportConfig) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for spec in handle.inputs:
        dims: dict[int, str] = {}
        if config.dynamic_batch:
            dims[0] = "batch"
        if config.dynamic_sequence and spec.dtype.startswith("int") and len(spec.shape) > 1:
            dims[1] = "sequence"
        if dims:
            axes[spec.name] = dims
    if config.dynamic_batch:
        for name in handle.outputs:
            axes[name] = {0: "batch"}
    return axes


def _export_dynamo(handle: ModelHandle, args: tuple, path: Path, config: ExportConfig) -> None:
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    sequence = torch.export.Dim("sequence", min=2, max=4096)
    shapes = []
    for spec in handle.inputs:
        dims = {}
        if config.dynamic_batch:
            dims[0] = batch
        if config.dynamic_sequence and spec.dtype.startswith("int") and len(spec.shape) > 1:
            dims[1] = sequence
        shapes.append(dims or None)
    # The dynamo exporter prints its progress; keep the user's terminal for ours.
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            handle.module,
            args,
            dynamo=True,
            input_names=[s.name for s in handle.inputs],
            output_names=list(handle.outputs),
            dynamic_shapes=tuple(shapes),
            opset_version=config.opset,
            optimize=True,
            external_data=False,
        )
    program.save(str(path), external_data=False)


def _export_torchscript(handle: ModelHandle, args: tuple, path: Path, config: ExportConfig) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            handle.module,
            args,
            str(path),
            dynamo=False,
            input_names=[s.name for s in handle.inputs],
            output_names=list(handle.outputs),
            dynamic_axes=_dynamic_axes(handle, config),
            opset_version=config.opset,
            do_constant_folding=True,
        )


def _optimize(path: Path) -> None:
    """Fold constants and fuse Conv+BN with ONNX Runtime's portable basic level."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    tmp = path.with_suffix(".opt.onnx")
    options.optimized_model_filepath = str(tmp)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    os.replace(tmp, path)


def strip_debug_info(path: Path) -> int:
    """Drop per-node doc strings and metadata (stack traces, FX text) in place; return the bytes saved."""
    import onnx

    model = onnx.load(str(path))
    before = model.ByteSize()

    def strip(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:  # If / Loop / Scan bodies
                if attr.HasField("g"):
                    strip(attr.g)
                for sub in attr.graphs:
                    strip(sub)

    strip(model.graph)
    for function in model.functions:
        for node in function.node:
            del node.metadata_props[:]
            node.doc_string = ""
    saved = before - model.ByteSize()
    if saved:
        onnx.save(model, str(path))
    return saved


def _node_counts(path: Path) -> dict[str, int]:
    import onnx

    return dict(Counter(node.op_type for node in onnx.load(str(path)).graph.node))


def compare_outputs(expected: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, float]:
    """Return the max absolute and max relative error of ``got`` against ``expected``."""
    max_abs = 0.0
    max_rel = 0.0
    for want, have in zip(expected, got, strict=True):
        diff = np.abs(want.astype(np.float64) - have.astype(np.float64))
        max_abs = max(max_abs, float(diff.max(initial=0.0)))
        max_rel = max(max_rel, float((diff / (np.abs(want) + 1e-6)).max(initial=0.0)))
    return max_abs, max_rel


def torch_outputs(handle: ModelHandle, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run the handle's torch module on numpy inputs; return numpy outputs."""
    import torch

    with torch.inference_mode():
        out = handle.module(*(torch.from_numpy(inputs[s.name]) for s in handle.inputs))  # type: ignore[misc]
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().float().numpy() for o in outs]


def export_onnx(handle: ModelHandle, path: Path | str, config: ExportConfig | None = None) -> ExportReport:
    """Export the handle's torch module to an ONNX file at ``path``.

    The file appears only when the export and its check succeed.

    Raises:
        ExportError: the model has no torch module or could not be exported.
        ExportMismatchError: ONNX Runtime's outputs differ from torch's past
            ``atol + rtol * |torch|``; the message gives both errors.
    """
    import torch

    config = config or ExportConfig()
    path = Path(path)
    if handle.module is None:
        raise ExportError(f"{handle.spec} has no torch module to export")
    handle.module.eval()
    # batch 2 and sequence 8 make a trace that cannot specialise on size-1 axes
    examples = handle.example_inputs(batch=2, seq_len=8)
    args = tuple(torch.from_numpy(examples[s.name]) for s in handle.inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp_dir:
        tmp = Path(tmp_dir) / "model.onnx"
        exporters = ["dynamo", "torchscript"] if config.exporter == "auto" else [config.exporter]
        report: ExportReport | None = None
        failures: list[Exception] = []
        for exporter in exporters:
            try:
                report = _export_checked(handle, args, tmp, config, exporter)
                break
            except ExportMismatchError as err:
                failures.append(err)
            except Exception as err:  # exporters raise many types; report them all
                first = str(err).splitlines()[0][:300] if str(err) else ""
                failures.append(ExportError(f"{exporter}: {type(err).__name__}: {first}"))
            log.info("export with %s failed: %s", exporter, failures[-1])
        if report is None:
            mismatches = [f for f in failures if isinstance(f, ExportMismatchError)]
            if mismatches:
                raise mismatches[-1]
            raise ExportError(f"could not export {handle.spec} to ONNX: " + "; ".join(map(str, failures)))
        report.path = path
        os.replace(tmp, path)
    log.info("exported %s to %s with %s (max abs error %s)", handle.spec, path, report.exporter, report.max_abs_error)
    return report


def _export_checked(handle: ModelHandle, args: tuple, tmp: Path, config: ExportConfig, exporter: str) -> ExportReport:
    (_export_dynamo if exporter == "dynamo" else _export_torchscript)(handle, args, tmp, config)
    before = _node_counts(tmp)
    if config.optimize and before.get("BatchNormalization", 0):
        _optimize(tmp)
    if not config.keep_debug_info:
        strip_debug_info(tmp)
    counts = _node_counts(tmp)
    report = ExportReport(
        path=tmp,
        exporter=exporter,
        opset=config.opset,
        node_counts=counts,
        fused_batchnorms=before.get("BatchNormalization", 0) - counts.get("BatchNormalization", 0),
    )
    if config.check:
        report.max_abs_error, report.max_rel_error = check_onnx(handle, tmp, config)
    return report


def check_onnx(handle: ModelHandle, onnx_path: Path, config: ExportConfig) -> tuple[float, float]:
    """Compare ONNX Runtime with torch on random inputs at two batch sizes."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst_abs = worst_rel = 0.0
    for batch, seq_len in ((1, 7), (3, 12)):
        inputs = handle.example_inputs(batch=batch, seq_len=seq_len, seed=batch)
        want = torch_outputs(handle, inputs)
        try:
            got = session.run(None, inputs)
        except Exception as err:  # ORT's Fail: shapes baked in by the trace, typically
            raise ExportMismatchError(
                f"ONNX model of {handle.spec} fails at batch {batch}, sequence {seq_len} although torch runs it "
                f"(a shape was fixed during export): {str(err).splitlines()[0][:200]}"
            ) from err
        bad = [
            float((np.abs(w - g) - (config.atol + config.rtol * np.abs(w))).max(initial=-1.0))
            for w, g in zip(want, got, strict=True)
        ]
        max_abs, max_rel = compare_outputs(want, got)
        worst_abs, worst_rel = max(worst_abs, max_abs), max(worst_rel, max_rel)
        if any(b > 0 for b in bad):
            raise ExportMismatchError(
                f"ONNX output of {handle.spec} differs from torch at batch {batch}: max abs error {max_abs:.3g}, "
                f"max rel error {max_rel:.3g} (tolerance atol={config.atol}, rtol={config.rtol})"
            )
    return worst_abs, worst_rel
