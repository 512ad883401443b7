"""Load the configured models and run the app on uvicorn."""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
from collections.abc import Callable

from modelpress.errors import ConfigError
from modelpress.serve.config import ServeConfig
from modelpress.serve.runner import ModelRunner, discover_model_dir, load_runner

log = logging.getLogger(__name__)


def load_runners(config: ServeConfig, *, progress: Callable[[str], None] | None = None) -> list[ModelRunner]:
    """Load every model version the config names (``model_dir`` artifacts and registry refs).

    Raises:
        ConfigError: no model source is configured.
        NotFoundError: the model directory holds no artifact.
        RegistryError: a registry reference names no version.
    """
    if config.model_dir is None and not config.registry_models:
        raise ConfigError("nothing to serve: pass --model-dir DIR (a folder of artifact directories) or --model NAME[@ALIAS]")
    runners = []
    sources: dict[str, dict[str, object]] = discover_model_dir(config.model_dir) if config.model_dir is not None else {}
    if config.registry_models:
        from modelpress.registry.store import open_registry

        registry = open_registry(config.registry)
        try:
            for ref in config.registry_models:
                info = registry.get(ref)
                # versions are the registry's immutable numbers; the alias only picked one
                sources.setdefault(info.model, {})[str(info.number)] = registry.path(ref)
        finally:
            registry.close()
    for name, versions in sources.items():
        model_config = config.for_model(name)
        for version, path in versions.items():
            if progress is not None:
                progress(f"loading {name} version {version}")
            runners.append(
                load_runner(
                    name, version, path,  # type: ignore[arg-type]
                    backend=model_config.backend, threads=model_config.threads,
                    instances=model_config.batching.instances,
                )
            )
    return runners


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    """Hand records to the writer thread; drop them (counted) when it falls behind."""

    dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            type(self).dropped += 1


def log_requests_to_stderr(max_pending: int = 10_000) -> logging.handlers.QueueListener:
    """Write the one-JSON-line-per-request access log to stderr from a thread of its own.

    The event loop only enqueues; a slow or blocked stderr (a full pipe) can
    then never stall serving; past ``max_pending`` lines records are dropped.
    """
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("%(message)s"))
    pending: queue.Queue[logging.LogRecord] = queue.Queue(max_pending)
    listener = logging.handlers.QueueListener(pending, stream)
    listener.start()
    access = logging.getLogger("modelpress.serve.access")
    access.addHandler(_DroppingQueueHandler(pending))
    access.setLevel(logging.INFO)
    access.propagate = False
    return listener


def run_server(config: ServeConfig, runners: list[ModelRunner]) -> None:
    """Serve ``runners`` until SIGINT/SIGTERM, then drain in-flight requests and stop."""
    import uvicorn

    from modelpress.serve.app import create_app

    app = create_app(runners, config)
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level="warning",
        access_log=False,  # the app logs one JSON line per request itself
        timeout_graceful_shutdown=config.shutdown_timeout_s,
        lifespan="on",
    )
