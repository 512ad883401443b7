"""The models a server holds and how a request picks a version (the router seam).

``ModelEntry.route(headers) -> version`` is the one seam traffic policies plug
into: set ``entry.router`` to any object with ``route(headers, entry) -> str``
(A/B split, canary, ...). The default answers the entry's default version.
A router may also define ``observe(version, inputs, result)``, called after
each successful inference (e.g. to mirror traffic to a shadow), and
``record(version, *, latency_s, code)``, called for every routed request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from modelpress.errors import NotFoundError
from modelpress.serve.batcher import DynamicBatcher, Result
from modelpress.serve.metrics import VersionMetrics
from modelpress.serve.runner import ModelRunner


@runtime_checkable
class Router(Protocol):
    """Chooses which loaded version of a model answers a request."""

    def route(self, headers: Mapping[str, str], entry: ModelEntry) -> str:
        """Return the version that answers a request with these headers."""
        ...


class SingleVersionRouter:
    """Send every request to the entry's default version."""

    def route(self, headers: Mapping[str, str], entry: ModelEntry) -> str:
        """Return ``entry.default_version``."""
        return entry.default_version


@dataclass(eq=False)
class LoadedVersion:
    """A model version ready to serve: runner, its batcher and its metrics."""

    runner: ModelRunner
    batcher: DynamicBatcher
    metrics: VersionMetrics
    in_flight: int = 0

    async def infer(self, inputs: Mapping[str, np.ndarray], *, timeout_s: float | None = None) -> Result:
        """Queue ``inputs`` on this version's batcher and wait for its own rows."""
        self.in_flight += 1
        try:
            return await self.batcher.submit(inputs, timeout_s=timeout_s)
        finally:
            self.in_flight -= 1


@dataclass(eq=False)
class ModelEntry:
    """A model name with its loaded versions and the router that picks one."""

    name: str
    versions: dict[str, LoadedVersion]
    default_version: str
    router: Any = field(default_factory=SingleVersionRouter)

    def route(self, headers: Mapping[str, str]) -> str:
        """Return the version the router picks for a request with these headers."""
        return self.router.route(headers, self)

    def get(self, version: str) -> LoadedVersion:
        """Return a loaded version.

        Raises:
            NotFoundError: the model has no such version.
        """
        try:
            return self.versions[version]
        except KeyError:
            raise NotFoundError(
                f"model {self.name!r} has no version {version!r}; loaded: {', '.join(sorted(self.versions))}"
            ) from None


class ModelRepository:
    """Every model the server holds, by name."""

    def __init__(self) -> None:
        self.models: dict[str, ModelEntry] = {}

    def get(self, name: str) -> ModelEntry:
        """Return a model entry.

        Raises:
            NotFoundError: no model of that name is loaded.
        """
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise NotFoundError(f"unknown model {name!r}; loaded models: {known}") from None

    def versions(self) -> list[LoadedVersion]:
        """Return every loaded version of every model."""
        return [v for e in self.models.values() for v in e.versions.values()]
