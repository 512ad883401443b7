"""The model registry: immutable content-addressed versions, aliases with history, lineage."""

from __future__ import annotations

from modelpress.registry.history import (
    AliasEvent,
    PolicyChange,
    PolicyRecorder,
    alias_history,
    policy_history,
    record_policy_change,
)
from modelpress.registry.store import DEFAULT_URL, GcReport, ModelInfo, Registry, VersionInfo, open_registry

__all__ = [
    "DEFAULT_URL",
    "AliasEvent",
    "GcReport",
    "ModelInfo",
    "PolicyChange",
    "PolicyRecorder",
    "Registry",
    "VersionInfo",
    "alias_history",
    "policy_history",
    "open_registry",
    "record_policy_change",
]
