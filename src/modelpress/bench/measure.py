"""Measure latency, throughput, memory and size of models × backends × batch sizes.

Every case is timed in short chunks, round-robin in a shuffled order, so
drift on a shared machine (another process waking up, thermal changes) lands
on all cases alike and their ratios hold.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from modelpress.errors import BackendError, MissingDependencyError

if TYPE_CHECKING:
    from modelpress.runtime.base import Session
    from modelpress.sources.models import ModelHandle

log = logging.getLogger(__name__)
JSON_SCHEMA_VERSION = 1


class BenchConfig(BaseModel):
    """How long and how hard to measure.

    Attributes:
        batch_sizes: batch sizes to measure each model at.
        threads: intra-op threads for every backend.
        seq_len: sequence length for text models.
        warmup_s: seconds of untimed runs per case before timing.
        min_reps: fewest timed runs per case.
        max_seconds: time budget for the timed rounds of all cases together;
            cases that have not converged by then are reported as such (each
            case still gets ``min_reps`` samples).
        target_rel_ci: stop once the 95% interval of every median is within
            this fraction of it (half-width / p50).
        chunk_s: seconds per case per round.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_sizes: tuple[int, ...] = (1,)
    threads: int | None = Field(2, ge=1)
    seq_len: int = Field(128, ge=2)
    warmup_s: float = Field(0.5, ge=0)
    min_reps: int = Field(30, ge=5)
    max_seconds: float = Field(60.0, gt=0)
    target_rel_ci: float = Field(0.02, gt=0, lt=1)
    chunk_s: float = Field(0.1, gt=0)


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Latency percentiles in milliseconds, with the 95% interval of the median."""

    n: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    ci95_low_ms: float
    ci95_high_ms: float
    min_ms: float = math.nan  # the best run: on a shared machine other processes only ever add time

    @property
    def rel_half_width(self) -> float:
        return (self.ci95_high_ms - self.ci95_low_ms) / 2 / self.p50_ms if self.p50_ms > 0 else math.inf


def median_ci95(sorted_ms: np.ndarray) -> tuple[float, float]:
    """Distribution-free 95% interval of the median from order statistics."""
    n = len(sorted_ms)
    half = 1.959964 * math.sqrt(n) / 2
    lo = max(0, math.floor(n / 2 - half))
    hi = min(n - 1, math.ceil(n / 2 + half))
    return float(sorted_ms[lo]), float(sorted_ms[hi])


def latency_stats(samples_ms: list[float] | np.ndarray) -> LatencyStats:
    """Summarise latency samples (milliseconds)."""
    arr = np.sort(np.asarray(samples_ms, dtype=np.float64))
    if arr.size == 0:
        raise ValueError("no latency samples")
    lo, hi = median_ci95(arr)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return LatencyStats(int(arr.size), float(p50), float(p90), float(p99), float(arr.mean()), lo, hi, float(arr[0]))


@dataclass
class BenchEntry:
    """A model to measure, under a label for tables."""

    label: str
    handle: ModelHandle


@dataclass
class BenchCase:
    """The measurement of one model on one backend at one batch size."""

    model: str
    backend: str
    batch: int
    threads: int | None
    latency: LatencyStats | None = None
    throughput: float | None = None  # samples per second
    rss_mb: float | None = None  # resident memory added by loading this session and running this batch
    size_mb: float | None = None
    params: int | None = None
    macs: int | None = None  # per sample
    converged: bool = False
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.latency is not None:
            data["latency"]["rel_half_width"] = self.latency.rel_half_width
        return data


@dataclass
class BenchResult:
    """All cases of one run, with the machine they ran on."""

    cases: list[BenchCase]
    config: BenchConfig
    environment: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": JSON_SCHEMA_VERSION,
            "config": self.config.model_dump(),
            "environment": self.environment,
            "wall_s": self.wall_s,
            "cases": [c.to_json() for c in self.cases],
        }

    def case(self, model: str, backend: str, batch: int = 1) -> BenchCase:
        """Return the case for a model label, backend and batch size."""
        for c in self.cases:
            if (c.model, c.backend, c.batch) == (model, backend, batch):
                return c
        raise KeyError((model, backend, batch))

    def speedup(self, fast: tuple[str, str], slow: tuple[str, str], batch: int = 1) -> float:
        """Ratio of p50 latencies: slow / fast, for (model, backend) pairs."""
        a, b = self.case(*fast, batch), self.case(*slow, batch)
        if a.latency is None or b.latency is None:
            raise ValueError(f"no latency for {fast if a.latency is None else slow}")
        return b.latency.p50_ms / a.latency.p50_ms


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _size_mb(handle: ModelHandle, backend: str) -> float | None:
    if backend != "torch" and handle.onnx_path is not None:
        return Path(handle.onnx_path).stat().st_size / 2**20
    if handle.module is not None:
        return sum(t.numel() * t.element_size() for t in handle.module.state_dict().values()) / 2**20
    return None


@dataclass
class _Live:
    case: BenchCase
    run: Callable[[], object]
    samples: list[float] = field(default_factory=list)


def time_callable(fn: Callable[[], object], *, config: BenchConfig | None = None) -> LatencyStats:
    """Time one callable alone with the same rules as :func:`bench`."""
    config = config or BenchConfig()
    live = _Live(BenchCase("fn", "python", 1, config.threads), fn)
    _measure([live], config, progress=None)
    return latency_stats(live.samples)


def _measure(lives: list[_Live], config: BenchConfig, progress: Callable[[float], None] | None) -> None:
    for live in lives:
        end = time.perf_counter() + config.warmup_s
        live.run()
        while time.perf_counter() < end:
            live.run()
    rng = random.Random(0)
    deadline = time.perf_counter() + config.max_seconds
    pending = list(lives)
    # The budget ends the run, but never before every case has its minimum of samples.
    while pending and (time.perf_counter() < deadline or any(len(live.samples) < config.min_reps for live in pending)):
        rng.shuffle(pending)
        for live in pending:
            chunk_end = time.perf_counter() + config.chunk_s
            while True:
                t0 = time.perf_counter()
                live.run()
                t1 = time.perf_counter()
                live.samples.append((t1 - t0) * 1e3)
                if t1 >= chunk_end:
                    break
        for live in list(pending):
            if len(live.samples) >= config.min_reps and latency_stats(live.samples).rel_half_width <= config.target_rel_ci:
                live.case.converged = True
                pending.remove(live)
        if progress is not None:
            progress(1.0 - len(pending) / len(lives))
    for live in lives:
        live.case.latency = latency_stats(live.samples)
        live.case.throughput = live.case.batch / (live.case.latency.mean_ms / 1e3)


def bench(
    entries: list[BenchEntry],
    backends: list[str],
    config: BenchConfig | None = None,
    *,
    progress: Callable[[float], None] | None = None,
) -> BenchResult:
    """Measure every entry on every backend at every batch size, interleaved.

    A backend that cannot run an entry (no ONNX file for OpenVINO, no torch
    module for torch, engine missing) gives a case with ``error`` set rather
    than stopping the run.

    Args:
        progress: called with the share of cases done, in [0, 1].
    """
    from modelpress.artifact import environment_info
    from modelpress.bench.macs import count_macs, count_params
    from modelpress.runtime import RuntimeOptions, load_session

    config = config or BenchConfig()
    started = time.perf_counter()
    # Cases run round-robin on the same cores: a pool left spinning after its run
    # would slow whichever case runs next (measured: PyTorch eager MiniLM 2.6x slower
    # right after ONNX Runtime runs with spinning on).
    several = len(entries) * len(backends) > 1
    options = RuntimeOptions(threads=config.threads, spin_wait=not several)
    cases: list[BenchCase] = []
    lives: list[_Live] = []
    for entry in entries:
        handle = entry.handle
        params = macs = None
        if handle.module is not None:
            params = count_params(handle.module)
            macs = count_macs(handle.module, handle.torch_inputs(batch=1, seq_len=config.seq_len))
        for backend in backends:
            rss_before = _rss_mb()
            session: Session | None = None
            error = None
            try:
                session = load_session(handle, backend, options)
            except (BackendError, MissingDependencyError) as err:
                error = str(err)
            for batch in config.batch_sizes:
                case = BenchCase(entry.label, backend, batch, config.threads, size_mb=_size_mb(handle, backend), params=params, macs=macs, error=error)
                cases.append(case)
                if session is None:
                    continue
                inputs = handle.example_inputs(batch=batch, seq_len=config.seq_len)
                run = _bind(session, inputs)
                # Memory is read here, one case at a time: once cases interleave,
                # the process's RSS mixes them all.
                run()
                run()
                case.rss_mb = max(_rss_mb() - rss_before, 0.0)
                lives.append(_Live(case, run))
    _measure(lives, config, progress)
    return BenchResult(cases, config, environment_info(), time.perf_counter() - started)


def _bind(session: Session, inputs: dict[str, np.ndarray]) -> Callable[[], object]:
    return lambda: session.run(inputs)
