"""Find the pruning ratio that meets a MAC or measured-latency budget (bisection).

Latency is measured, never estimated: eagerly in torch, or by exporting each
candidate to ONNX and timing it on a modelpress.runtime backend (ONNX Runtime,
OpenVINO), all through the bench harness's timer.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from modelpress.compress._prune_structured import call_model
from modelpress.errors import ExportError

if TYPE_CHECKING:
    from modelpress.sources.models import ModelHandle

logger = logging.getLogger(__name__)


# Short timing runs: the ratio search measures about ten candidates, so each gets
# ``reps`` runs at least and stops early once its median is steady.
_SEARCH_SECONDS = 0.5


def _time_ms(fn: Callable[[], object], *, threads: int, reps: int, statistic: str) -> float:
    """Time ``fn`` with the bench harness; return its median or best run in milliseconds."""
    from modelpress.bench.measure import BenchConfig, time_callable

    config = BenchConfig(threads=threads, min_reps=max(reps, 5), max_seconds=_SEARCH_SECONDS, warmup_s=0.1,
                         chunk_s=0.05, target_rel_ci=0.02)
    stats = time_callable(fn, config=config)
    return stats.min_ms if statistic == "min" else stats.p50_ms


def torch_latency_ms(
    model: nn.Module, example_inputs: Any, *, threads: int = 2, reps: int = 20, statistic: str = "median",
) -> float:
    """Return the eager-mode latency in milliseconds of one forward pass.

    ``statistic`` is "median" (what a user sees) or "min" (the best run: on a
    shared machine other processes only ever add time, so the minimum is the steadiest).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return _time_ms(lambda: call_model(model, example_inputs), threads=threads, reps=reps, statistic=statistic)
    finally:
        torch.set_num_threads(previous)


def backend_latency_ms(
    model: nn.Module, example_inputs: Any, *, backend: str, threads: int = 2, reps: int = 20, statistic: str = "median",
    template: ModelHandle | None = None,
) -> float:
    """Export ``model`` to ONNX (unchecked, in a temporary directory) and time it on a runtime backend.

    Args:
        model: the torch module to measure.
        example_inputs: the batch to time (a tensor, a tuple or a mapping, in forward's order).
        backend: a modelpress.runtime backend that runs ONNX files ("onnxruntime", "openvino").
        threads: intra-op threads for the backend's session.
        reps: fewest timed runs.
        statistic: "median" or "min".
        template: the handle ``model`` came from, for its input/output names and task; one is
            made from ``example_inputs`` when None.
    """
    from modelpress.export.onnx import ExportConfig, export_onnx
    from modelpress.runtime import RuntimeOptions, load_session

    handle = module_handle(model, example_inputs, template)
    feed = {spec.name: t.detach().cpu().numpy() for spec, t in zip(handle.inputs, _input_tensors(example_inputs), strict=True)}
    with tempfile.TemporaryDirectory(prefix="modelpress-prune-latency-") as tmp:
        path = Path(tmp) / "candidate.onnx"
        # no check: the exporter is tested on its own, and the search exports about ten candidates
        try:  # the TorchScript exporter is several times quicker than dynamo on small models
            export_onnx(handle, path, ExportConfig(exporter="torchscript", check=False))
        except ExportError:
            export_onnx(handle, path, ExportConfig(exporter="dynamo", check=False))
        session = load_session(handle.with_onnx(path), backend, RuntimeOptions(threads=threads))
        feed = {name: feed[name] for name in session.input_names}  # the exporter drops unused inputs
        return _time_ms(lambda: session.run(feed), threads=threads, reps=reps, statistic=statistic)


def _input_tensors(example_inputs: Any) -> list[torch.Tensor]:
    if isinstance(example_inputs, Mapping):
        return list(example_inputs.values())
    if isinstance(example_inputs, (tuple, list)):
        return list(example_inputs)
    return [example_inputs]


def module_handle(model: nn.Module, example_inputs: Any, template: ModelHandle | None = None) -> ModelHandle:
    """Wrap a bare module in a ModelHandle whose inputs have ``example_inputs``' shapes (batch axis dynamic)."""
    from modelpress.sources.models import ModelHandle, TensorSpec

    tensors = _input_tensors(example_inputs)
    if template is not None and len(template.inputs) == len(tensors):
        return dataclasses.replace(template, module=model, onnx_path=None)
    if isinstance(example_inputs, Mapping):
        names = [str(k) for k in example_inputs]
    else:
        names = ["input"] if len(tensors) == 1 else [f"input_{i}" for i in range(len(tensors))]
    specs = []
    for name, t in zip(names, tensors, strict=True):
        dtype = str(t.dtype).removeprefix("torch.")
        # token inputs get a dynamic sequence axis, as the exporter makes them
        rest = ("sequence", *t.shape[2:]) if not t.is_floating_point() and t.dim() > 1 else tuple(t.shape[1:])
        specs.append(TensorSpec(name, ("batch", *rest), dtype))
    with torch.inference_mode():
        out = call_model(model, example_inputs)
    count = len([o for o in out if isinstance(o, torch.Tensor)]) if isinstance(out, (tuple, list)) else 1
    outputs = ("output",) if count == 1 else tuple(f"output_{i}" for i in range(count))
    return ModelHandle(f"module:{type(model).__name__}", tuple(specs), outputs, "other", model)


def bisect_ratio(
    model: nn.Module,
    prune_copy: Callable[[nn.Module, float], nn.Module],
    measure: Callable[[nn.Module], float],
    budget: float,
    *,
    max_ratio: float,
    iterations: int = 7,
    confirm: bool = False,
    progress: Callable[[str], None] | None = None,
) -> tuple[float, list[tuple[float, float]]]:
    """Return the smallest ratio whose pruned copy measures at or below ``budget``.

    ``measure`` must fall (roughly) as the ratio rises, as MACs and latency do.
    Each trial prunes a fresh deep copy, so ``model`` is never touched.
    With ``confirm`` (noisy measurements such as latency) the chosen ratio is measured
    again and must pass twice; otherwise the next larger ratio that passed is tried.

    Returns:
        The chosen ratio (``max_ratio`` when even that misses the budget) and the
        (ratio, measurement) trials in the order they ran.
    """
    trials: list[tuple[float, float]] = []

    def trial(ratio: float) -> float:
        pruned = prune_copy(copy.deepcopy(model), ratio)
        value = measure(pruned)
        trials.append((ratio, value))
        if progress is not None:
            progress(f"ratio {ratio:.3f} -> {value:.4g} (budget {budget:.4g})")
        logger.info("ratio search: ratio %.3f measures %.4g against budget %.4g", ratio, value, budget)
        return value

    if measure(model) <= budget:
        return 0.0, trials
    if (at_max := trial(max_ratio)) > budget:
        logger.warning("the budget %.4g cannot be met: at the largest ratio allowed, %.2f (max_ratio), the pruned model "
                       "measures %.4g; pruning at %.2f", budget, max_ratio, at_max, max_ratio)
        return max_ratio, trials
    low, high = 0.0, max_ratio  # measure(low) > budget >= measure(high)
    for _ in range(iterations):
        mid = (low + high) / 2
        if trial(mid) <= budget:
            high = mid
        else:
            low = mid
    if confirm:
        # the bisection ends on the budget's edge, where one lucky measurement can pass a
        # candidate that usually misses; walk up the passing ratios until one passes again
        for ratio in sorted({r for r, v in trials if v <= budget and r >= high}):
            if trial(ratio) <= budget:
                return ratio, trials
        return max_ratio, trials
    return high, trials
