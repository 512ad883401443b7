"""Run, score and time candidate graphs for the quantize stage, on the foundation's runtime.

Thin adapters: sessions come from ``modelpress.runtime.load_session``, scores
from ``modelpress.runtime.evaluate.score``, latencies from
``modelpress.bench.measure`` (interleaved, so ratios hold on a busy machine).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from modelpress.sources.models import ModelHandle

Feeds = Sequence[Mapping[str, np.ndarray]]
RunFn = Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]


def graph_handle(handle: ModelHandle, path: Path, precision: str = "fp32") -> ModelHandle:
    """Return ``handle`` pointing at another ONNX file, without its torch module.

    The module is dropped because it computes the float model, not this graph.
    """
    return dataclasses.replace(handle, onnx_path=Path(path), module=None, precision=precision)


def load_runner(handle: ModelHandle, path: Path, backend: str, *, threads: int, precision: str = "fp32",
                device: str = "cpu") -> RunFn:
    """Load the ONNX file ``path`` on ``backend`` and return a function that runs one batch."""
    from modelpress.runtime import RuntimeOptions, load_session

    options = RuntimeOptions(threads=threads, device=device, precision=precision)  # type: ignore[arg-type]
    session = load_session(graph_handle(handle, path), backend, options)
    return session.run


def run_all(run: RunFn, feeds: Feeds) -> np.ndarray:
    """Run every batch and concatenate the first output along the batch axis."""
    return np.concatenate([np.asarray(run(f)[0], dtype=np.float32) for f in feeds], axis=0)


@dataclass(frozen=True, slots=True)
class Quality:
    """One model's score on the validation split and the float model's score on it."""

    metric: str
    value: float
    reference: float
    n: int

    @property
    def drop(self) -> float:
        return self.reference - self.value


def score(handle: ModelHandle, out: np.ndarray, ref: np.ndarray, labels: np.ndarray | None, backend: str) -> Quality:
    """Score outputs with the runtime's evaluator: accuracy with labels, else agreement or cosine to ``ref``.

    For accuracy the reference is the float model's accuracy on the same rows;
    for agreement and cosine the float model scores 1 against itself.
    """
    from modelpress.runtime.evaluate import score as evaluate_score

    labels = None if labels is None or handle.task == "embedding" else np.asarray(labels)[: len(out)]
    got = evaluate_score(handle, out, labels, ref, backend)
    reference = evaluate_score(handle, ref, labels, ref, backend).value if labels is not None else 1.0
    return Quality(got.metric, got.value, reference, got.samples)


def latencies_ms(handle: ModelHandle, graphs: Mapping[str, Path], backend: str, *, threads: int,
                 max_seconds: float = 20.0, min_reps: int = 20) -> dict[str, float]:
    """Time several ONNX graphs side by side at batch 1; return each one's median (ms).

    Uses the bench harness, which interleaves the cases in shuffled rounds.
    """
    from modelpress.bench.measure import BenchConfig, BenchEntry, bench

    entries = [BenchEntry(name, graph_handle(handle, path)) for name, path in graphs.items()]
    config = BenchConfig(threads=threads, batch_sizes=(1,), min_reps=min_reps, max_seconds=max_seconds,
                         warmup_s=0.2, target_rel_ci=0.03, chunk_s=0.05)
    result = bench(entries, [backend], config)
    out = {}
    for case in result.cases:
        if case.latency is None:
            from modelpress.errors import BackendError

            raise BackendError(f"could not time {case.model} on {backend}: {case.error}")
        out[case.model] = case.latency.p50_ms
    return out


def alternating_ms(fns: Mapping[str, Callable[[], object]], *, threads: int, rounds: int = 3) -> dict[str, float]:
    """Time callables that need their own sessions (bf16 hint) in alternating rounds; median per callable."""
    from modelpress.bench.measure import BenchConfig, time_callable

    config = BenchConfig(threads=threads, min_reps=10, max_seconds=2.0, warmup_s=0.2)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            samples[k].append(time_callable(fn, config=config).p50_ms)
    return {k: float(np.median(v)) for k, v in samples.items()}
