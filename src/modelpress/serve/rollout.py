"""Put traffic policies on a running server: route, mirror, record, load, hot-swap, drain.

:class:`RolloutControl` owns one :class:`~modelpress.serve.router.Router` for
every model of a :class:`~modelpress.serve.repository.ModelRepository` and
plugs a :class:`PolicySeam` into each ``ModelEntry.router``. Per request the
seam asks the router for a decision (sticky on the caller-key header), the app
runs ``primary`` for the client, and the seam then

* mirrors the request to the shadow version in a task of its own, off the
  request path, skipped first when queues are long (``shadow_max_queue``);
* compares the shadow's answer with the client's and reports both outcomes to
  the router, whose canary gate promotes or rolls back by itself.

Changes (load, switch, split, shadow, canary, promote, rollback) are one
reference swap in the router; versions that leave the warm set are drained
(no request still holding them fails) and unloaded. Every change is written
to the registry's history by a background thread, so a request never waits
on the database.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelpress.errors import ConfigError, NotFoundError
from modelpress.serve.batcher import DynamicBatcher, Result
from modelpress.serve.repository import LoadedVersion, ModelEntry, ModelRepository
from modelpress.serve.policies import ABSplit, CanaryPolicy, Policy, RouteDecision, ShadowPolicy, SinglePolicy, policy_from_dict
from modelpress.serve.router import PolicyEvent, Router

if TYPE_CHECKING:
    from modelpress.registry import Registry
    from modelpress.serve.config import ServeConfig
    from modelpress.serve.metrics import ServerMetrics
    from modelpress.serve.runner import ModelRunner

log = logging.getLogger(__name__)

DEFAULT_KEY_HEADER = "x-caller-id"
# HTTP codes that count against a version in the canary gate; 4xx are the caller's fault
# and 503 is load shedding, which says nothing about the version itself.
_VERSION_FAILURES = frozenset({500, 504})


# The decision of the request running in this context (route() and record() run in one request's task).
_CURRENT: contextvars.ContextVar[RouteDecision | None] = contextvars.ContextVar("modelpress_route", default=None)


class LiveStats:
    """Recent latencies per model version for status pages (QPS, p50, p99 over a window)."""

    def __init__(self, *, window_s: float = 10.0, keep: int = 50_000) -> None:
        self.window_s = window_s
        self._keep = keep
        self._samples: dict[tuple[str, str], deque[tuple[float, float | None, bool]]] = {}

    def add(self, model: str, version: str, latency_s: float | None, *, ok: bool) -> None:
        """Record one finished request (``latency_s`` None: counted, not timed)."""
        samples = self._samples.get((model, version))
        if samples is None:
            samples = self._samples[(model, version)] = deque(maxlen=self._keep)
        samples.append((time.monotonic(), latency_s, ok))

    def summary(self, model: str, version: str) -> dict[str, Any]:
        """Return QPS, error count and latency percentiles (ms) over the last window."""
        samples = self._samples.get((model, version), ())
        since = time.monotonic() - self.window_s
        recent = [(lat, ok) for t, lat, ok in samples if t >= since]
        latencies = np.array([lat for lat, ok in recent if ok and lat is not None], dtype=np.float64)
        out: dict[str, Any] = {
            "qps": len(recent) / self.window_s, "errors": sum(1 for _, ok in recent if not ok),
            "p50_ms": None, "p99_ms": None,
        }
        if latencies.size:
            out["p50_ms"] = float(np.percentile(latencies, 50) * 1000)
            out["p99_ms"] = float(np.percentile(latencies, 99) * 1000)
        return out


class BackgroundRecorder:
    """Hand policy events to ``write`` on a thread of its own; the caller never waits on it.

    Args:
        write: e.g. :class:`modelpress.registry.PolicyRecorder` (which logs its own failures).
    """

    def __init__(self, write: Callable[[PolicyEvent], None]) -> None:
        self._write = write
        self._queue: queue.SimpleQueue[PolicyEvent | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="policy-history", daemon=True)
        self._thread.start()

    def __call__(self, event: PolicyEvent) -> None:
        """Queue one event."""
        self._queue.put(event)

    def _run(self) -> None:
        while (event := self._queue.get()) is not None:
            try:
                self._write(event)
            except Exception:  # the history is a record, never a reason to stop serving
                log.exception("could not record policy event %s of %s", event.action, event.model)

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout_s)


class PolicySeam:
    """``ModelEntry.router`` of one model: route through the Router, then mirror and record."""

    def __init__(self, control: RolloutControl, model: str) -> None:
        self.control = control
        self.model = model

    def route(self, headers: Mapping[str, str], entry: ModelEntry) -> str:
        """Return the version that answers; remember the whole decision for :meth:`record`."""
        decision = self.control.router.route(self.model, headers.get(self.control.key_header))
        _CURRENT.set(decision)
        return decision.primary

    def observe(self, version: str, inputs: Mapping[str, np.ndarray], result: Result) -> None:
        """Mirror a successful request to the shadow version, if the decision has one."""
        decision = _CURRENT.get()
        if decision is None or decision.primary != version or decision.shadow is None:
            return
        self.control.mirror(decision, inputs, result.outputs[0] if result.outputs else None)

    def record(self, version: str, *, latency_s: float, code: int) -> None:
        """Report the outcome of a request answered by ``version`` (HTTP ``code``), as the app does for each."""
        decision = _CURRENT.get()
        _CURRENT.set(None)
        ok = code < 400
        self.control.live.add(self.model, version, latency_s if ok else None, ok=ok)
        if decision is None or decision.primary != version:
            return  # an explicit /versions/{v} request: counted on the dashboard, not in the gate
        if ok or code in _VERSION_FAILURES:
            self.control.router.record(decision, latency_s=latency_s, error=not ok)


@dataclass(frozen=True, slots=True)
class RolloutOptions:
    """How the server applies traffic policies.

    Attributes:
        key_header: request header whose value makes routing sticky per caller.
        shadow_max_queue: skip the shadow when the primary's or the shadow's queue holds more requests.
        shadow_max_tasks: most shadow calls running at once; more are skipped.
        warmup_runs: model calls on a newly loaded version before it takes traffic.
        drain_timeout_s: longest wait for a retired version's in-flight requests before it is closed.
    """

    key_header: str = DEFAULT_KEY_HEADER
    shadow_max_queue: int = 4
    shadow_max_tasks: int = 64
    warmup_runs: int = 3
    drain_timeout_s: float = 60.0


class RolloutControl:
    """Apply traffic policies to the models of a running server.

    Args:
        repository: the server's models (``app.state.repository``).
        metrics: the server's metrics, for versions loaded later.
        config: the server's config (backend, threads, batching of new versions).
        registry: where versions are loaded from by reference and policy history is written.
        options: routing and shedding settings.
    """

    def __init__(
        self,
        repository: ModelRepository,
        metrics: ServerMetrics,
        config: ServeConfig,
        *,
        registry: Registry | None = None,
        options: RolloutOptions | None = None,
    ) -> None:
        self.repository = repository
        self.metrics = metrics
        self.config = config
        self.registry = registry
        self.options = options or RolloutOptions()
        self.key_header = self.options.key_header.lower()
        self.live = LiveStats()
        self.history: BackgroundRecorder | None = None
        if registry is not None:
            from modelpress.registry import PolicyRecorder

            self.history = BackgroundRecorder(PolicyRecorder(registry))
        self.router = Router(on_event=self._on_event)
        self.shadow_runs = 0
        self.shadow_shed = 0
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self._drains: set[asyncio.Task[None]] = set()
        self._warm: dict[str, frozenset[str]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loading: set[tuple[str, str]] = set()
        for name, entry in repository.models.items():
            self.router.add_model(name, entry.default_version, reason="server started")
            self._warm[name] = self.router.warm_versions(name)
            entry.router = PolicySeam(self, name)

    # ----------------------------------------------------------- request path

    def mirror(self, decision: RouteDecision, inputs: Mapping[str, np.ndarray], primary_output: np.ndarray | None) -> None:
        """Run ``inputs`` on the shadow version in a task of its own, unless queues are long."""
        entry = self.repository.models.get(decision.model)
        shadow = entry.versions.get(decision.shadow or "") if entry is not None else None
        primary = entry.versions.get(decision.primary) if entry is not None else None
        limit = self.options.shadow_max_queue
        if (
            shadow is None or primary_output is None
            or len(self._shadow_tasks) >= self.options.shadow_max_tasks
            or shadow.batcher.depth > limit or (primary is not None and primary.batcher.depth > limit)
        ):
            self.shadow_shed += 1
            return
        self.shadow_runs += 1
        task = asyncio.get_running_loop().create_task(self._run_shadow(shadow, decision, dict(inputs), primary_output))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _run_shadow(self, shadow: LoadedVersion, decision: RouteDecision, inputs: dict[str, np.ndarray], primary_output: np.ndarray) -> None:
        output: np.ndarray | None = None
        try:
            result = await shadow.infer(inputs)
            output = result.outputs[0]
        except Exception as err:  # a failing shadow is counted, never seen by the client
            log.warning("shadow %s@%s failed: %s: %s", decision.model, decision.shadow, type(err).__name__, err)
        try:
            self.router.record_shadow(decision, primary_output, output)
        except ConfigError as err:  # e.g. the candidate's output shape differs
            log.warning("shadow %s@%s not comparable: %s", decision.model, decision.shadow, err)
            self.router.record_shadow(decision, primary_output, None)

    # --------------------------------------------------------------- changes

    def _entry(self, model: str) -> ModelEntry:
        return self.repository.get(model)

    def _require_loaded(self, model: str, policy: Policy) -> None:
        entry = self._entry(model)
        missing = sorted(policy.versions() - set(entry.versions))
        if missing:
            raise NotFoundError(
                f"model {model!r} has no loaded version {', '.join(map(repr, missing))}; loaded: "
                f"{', '.join(sorted(entry.versions))}. Load it first (POST /management/models/{model}/versions)."
            )

    def set_policy(self, model: str, spec: Mapping[str, Any] | Policy, *, by: str = "api", reason: str = "") -> PolicyEvent:
        """Validate a policy (a JSON spec or a built one), check its versions are loaded, apply it."""
        policy = policy_from_dict(spec) if isinstance(spec, Mapping) else spec
        self._require_loaded(model, policy)
        return self.router.set_policy(model, policy, by=by, reason=reason)

    def switch(self, model: str, version: str, *, by: str = "api", reason: str = "") -> PolicyEvent:
        """Send all traffic to a loaded ``version`` (the hot swap; the old version stays warm)."""
        self._entry(model).get(version)
        return self.router.switch(model, version, by=by, reason=reason)

    def rollback(self, model: str, *, by: str = "api", reason: str = "") -> PolicyEvent:
        """Undo the latest policy change of ``model`` in one assignment."""
        self._entry(model)
        return self.router.rollback(model, by=by, reason=reason)

    def promote(self, model: str, version: str | None = None, *, by: str = "api", reason: str = "") -> PolicyEvent:
        """End a canary, shadow or split with all traffic on the version under test."""
        self._entry(model)
        return self.router.promote(model, version, by=by, reason=reason)

    async def load_version(
        self, model: str, version: str | None = None, *, artifact_dir: Path | None = None, ref: str | None = None
    ) -> LoadedVersion:
        """Load a version from an artifact directory or a registry reference, warm it up, make it routable.

        The version takes no traffic until a policy names it.

        Raises:
            ConfigError: neither or both sources given, or no version name for a directory.
            NotFoundError: the model or the reference is unknown.
        """
        from modelpress.serve.runner import load_runner

        entry = self._entry(model)
        if (artifact_dir is None) == (ref is None):
            raise ConfigError("load a version from exactly one of `artifact_dir` or `ref` (a registry reference such as 'digits@v4').")
        if ref is not None:
            if self.registry is None:
                raise ConfigError(f"cannot load {ref!r}: the server has no registry; start it with --registry URL.")
            info = await asyncio.to_thread(self.registry.get, ref if "@" in ref else f"{model}@{ref}")
            version = version or str(info.number)  # the registry's number, as `serve --model` names it
            artifact_dir = await asyncio.to_thread(self.registry.path, info.ref)
        if not version:
            raise ConfigError(f"loading {artifact_dir} needs a `version` name such as 'v4'.")
        if version in entry.versions or (model, version) in self._loading:
            raise ConfigError(f"model {model!r} already has version {version!r} loaded; unload it first or pick another name.")
        model_config = self.config.for_model(model)
        self._loading.add((model, version))
        try:
            runner = await asyncio.to_thread(
                load_runner, model, version, Path(artifact_dir), backend=model_config.backend,
                threads=model_config.threads, instances=model_config.batching.instances,
            )
            loaded = self._wrap(runner)
            loaded.batcher.start()
            example = runner.example_inputs(1)
            for _ in range(self.options.warmup_runs):
                await loaded.infer(example)
        finally:
            self._loading.discard((model, version))
        entry.versions[version] = loaded
        log.info("loaded %s@%s (warm, no traffic yet)", model, version)
        return loaded

    def _wrap(self, runner: ModelRunner) -> LoadedVersion:
        # Same wiring as the app's build_repository, for one version loaded while serving.
        policy = dataclasses.replace(self.config.for_model(runner.name).batching.policy(), instances=runner.instances)
        batcher = DynamicBatcher(runner.run, policy, pad=runner.pad_specs(), seq_outputs=runner.seq_outputs)
        holder: list[LoadedVersion] = []
        vm = self.metrics.for_version(
            runner.name, runner.version, depth=lambda b=batcher: b.depth, in_flight=lambda h=holder: h[0].in_flight
        )
        loaded = LoadedVersion(runner=runner, batcher=batcher, metrics=vm)
        holder.append(loaded)
        batcher.observer = vm
        return loaded

    async def unload(self, model: str, version: str) -> None:
        """Drain and unload a version no policy routes to.

        Raises:
            ConfigError: the current or previous policy still uses it (it must stay warm).
        """
        entry = self._entry(model)
        entry.get(version)
        if version in self.router.warm_versions(model):
            raise ConfigError(
                f"version {version!r} of {model!r} is in use by the current or previous policy "
                f"({', '.join(sorted(self.router.warm_versions(model)))}); switch away from it first."
            )
        await self._drain(entry, version)

    async def _drain(self, entry: ModelEntry, version: str) -> None:
        # Out of the entry first, on the loop: no request can pick it up after this line.
        # A request that already holds it has its in_flight counted (the app routes and
        # submits without an await in between), so waiting for zero loses none.
        loaded = entry.versions.pop(version, None)
        if loaded is None:
            return
        deadline = time.monotonic() + self.options.drain_timeout_s
        while (loaded.in_flight or loaded.batcher.depth) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await loaded.batcher.close()
        await asyncio.to_thread(loaded.runner.close)
        self.metrics.forget(entry.name, version)
        log.info("unloaded %s@%s after draining", entry.name, version)

    def _on_event(self, event: PolicyEvent) -> None:
        # Runs where the change happened (a management call or the canary gate, both on the loop).
        if self.history is not None:
            self.history(event)
        entry = self.repository.models.get(event.model)
        primary = _primary_of(event.policy)
        if entry is not None and primary is not None:
            entry.default_version = primary
        loop = self._loop
        if loop is None:
            try:
                loop = self._loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # before serving starts; nothing can be in flight
        loop.call_soon_threadsafe(self._schedule_retire, event.model)

    def _schedule_retire(self, model: str) -> None:
        """Drain and unload versions that left the warm set (current and previous policy)."""
        entry = self.repository.models.get(model)
        if entry is None:
            return
        try:
            now = self.router.warm_versions(model)
        except NotFoundError:
            return
        leaving = self._warm.get(model, frozenset()) - now
        self._warm[model] = now
        for version in leaving:
            if version in entry.versions:
                task = asyncio.get_running_loop().create_task(self._drain(entry, version))
                self._drains.add(task)
                task.add_done_callback(self._drains.discard)

    async def started(self) -> None:
        """Note the serving loop (call from the app's startup)."""
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        """Wait for shadow calls and drains, and write out the queued history."""
        pending = [*self._shadow_tasks, *self._drains]
        if pending:
            await asyncio.wait(pending, timeout=self.options.drain_timeout_s)
        if self.history is not None:
            await asyncio.to_thread(self.history.close)

    # --------------------------------------------------------------- reading

    def model_status(self, model: str) -> dict[str, Any]:
        """Return one model's policy, rollout progress, versions and live traffic, JSON-able."""
        entry = self._entry(model)
        snap = self.router.snapshot(model)
        warm = set(snap["warm_versions"])
        routed = self.router.policy(model).versions()
        snap["versions"] = {
            v: {
                "loaded": True, "warm": v in warm, "routed": v in routed,
                "platform": loaded.runner.platform, "in_flight": loaded.in_flight, "queue": loaded.batcher.depth,
                "live": self.live.summary(model, v),
            }
            for v, loaded in sorted(entry.versions.items())
        }
        snap["split"] = _split_of(self.router.policy(model))
        return snap

    def status(self) -> dict[str, Any]:
        """Return every model's status plus shadow shedding counters (what the dashboard polls)."""
        return {
            "models": [self.model_status(m) for m in sorted(self.repository.models)],
            "shadow": {"runs": self.shadow_runs, "shed": self.shadow_shed, "running": len(self._shadow_tasks)},
            "window_s": self.live.window_s,
            "registry": self.registry is not None,
            "key_header": self.key_header,
        }


def _primary_of(policy: Mapping[str, Any]) -> str | None:
    kind = policy.get("kind")
    if kind == "single":
        return policy.get("version")
    if kind == "shadow":
        return policy.get("primary")
    if kind == "canary":
        return policy.get("stable")
    if kind == "ab":
        weights = policy.get("weights") or {}
        return max(weights, key=weights.get) if weights else None
    return None


def _split_of(policy: Policy) -> dict[str, float]:
    """Return the share of client traffic each version answers under ``policy`` now."""
    if isinstance(policy, SinglePolicy):
        return {policy.version: 1.0}
    if isinstance(policy, ABSplit):
        return dict(policy.weights)
    if isinstance(policy, ShadowPolicy):
        return {policy.primary: 1.0, policy.candidate: 0.0}
    if isinstance(policy, CanaryPolicy):
        share = policy.share if policy.state == "running" else (1.0 if policy.state == "promoted" else 0.0)
        return {policy.stable: 1.0 - share, policy.candidate: share}
    return {}


__all__ = [
    "DEFAULT_KEY_HEADER",
    "BackgroundRecorder",
    "LiveStats",
    "PolicySeam",
    "RolloutControl",
    "RolloutOptions",
]
