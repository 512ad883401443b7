"""Prometheus metrics of the server (prometheus-client, one registry per app).

Hot-path cost is kept low: label children are looked up once per model
version and cached, and queue depth / in-flight counts are read only when
Prometheus scrapes (a custom collector), never updated per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Latency buckets from 0.1 ms to 10 s: the batcher's overhead and a slow model both land inside.
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True, slots=True)
class GaugeSource:
    """Where the scrape reads one model version's queue depth and in-flight count."""

    model: str
    version: str
    depth: Callable[[], int]
    in_flight: Callable[[], int]


class _LiveGauges:
    """Collector reading queue depth and in-flight requests at scrape time."""

    def __init__(self) -> None:
        self.sources: list[GaugeSource] = []

    def collect(self) -> Iterable[GaugeMetricFamily]:
        depth = GaugeMetricFamily("modelpress_queue_depth", "Requests waiting in the batch queue.", labels=["model", "version"])
        flight = GaugeMetricFamily("modelpress_in_flight", "Requests being served (queued or running).", labels=["model", "version"])
        for s in list(self.sources):
            depth.add_metric([s.model, s.version], s.depth())
            flight.add_metric([s.model, s.version], s.in_flight())
        yield depth
        yield flight


class VersionMetrics:
    """Cached metric children for one model version (what the request path touches)."""

    def __init__(self, metrics: ServerMetrics, model: str, version: str) -> None:
        self._metrics = metrics
        self._model = model
        self._version = version
        self._codes: dict[int, Counter] = {}
        self.queue = metrics.queue_seconds.labels(model, version)
        self.compute = metrics.compute_seconds.labels(model, version)
        self.total = metrics.total_seconds.labels(model, version)
        self.batch = metrics.batch_size.labels(model, version)

    def request(self, code: int) -> None:
        """Count one finished request with its HTTP status (failures are code >= 400)."""
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = self._metrics.requests.labels(self._model, self._version, str(code))
        child.inc()
        if code >= 400:
            self._metrics.failures.labels(self._model, self._version, str(code)).inc()

    def on_batch(self, rows: int, requests: int) -> None:
        """Record one executed batch's size in rows."""
        self.batch.observe(rows)


class ServerMetrics:
    """Every metric the server exports, on its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["model", "version"]
        self.requests = Counter(
            "modelpress_requests", "Inference requests by model, version and HTTP code.", [*labels, "code"], registry=self.registry
        )
        self.failures = Counter(
            "modelpress_request_failures", "Inference requests that failed (code >= 400).", [*labels, "code"], registry=self.registry
        )
        self.queue_seconds = Histogram(
            "modelpress_queue_seconds", "Time from arrival to batch dispatch.", labels, buckets=_LATENCY_BUCKETS, registry=self.registry
        )
        self.compute_seconds = Histogram(
            "modelpress_compute_seconds", "Model run time of the request's batch.", labels, buckets=_LATENCY_BUCKETS, registry=self.registry
        )
        self.total_seconds = Histogram(
            "modelpress_request_seconds", "Whole request time in the server.", labels, buckets=_LATENCY_BUCKETS, registry=self.registry
        )
        self.batch_size = Histogram(
            "modelpress_batch_size", "Rows per executed batch.", labels, buckets=_BATCH_BUCKETS, registry=self.registry
        )
        self.unrouted = Counter(
            "modelpress_unrouted_requests", "Requests rejected before reaching a model (unknown model, bad body).", ["code"], registry=self.registry
        )
        self._live = _LiveGauges()
        self.registry.register(self._live)
        # process_resident_memory_bytes, cpu seconds, open fds
        ProcessCollector(registry=self.registry)

    def for_version(self, model: str, version: str, *, depth: Callable[[], int], in_flight: Callable[[], int]) -> VersionMetrics:
        """Return the cached children of one model version and watch its queue."""
        self._live.sources.append(GaugeSource(model, version, depth, in_flight))
        return VersionMetrics(self, model, version)

    def forget(self, model: str, version: str) -> None:
        """Stop reporting live gauges of an unloaded model version."""
        self._live.sources = [s for s in self._live.sources if (s.model, s.version) != (model, version)]

    def render(self) -> bytes:
        """Return the text exposition format of every metric."""
        return generate_latest(self.registry)
