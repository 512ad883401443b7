"""Read and append the registry's history: alias moves and traffic-policy changes.

History rows are append-only. Alias moves are written by
:meth:`Registry.set_alias` / :meth:`Registry.rollback` in the same transaction
as the move itself; traffic-policy changes arrive from the server's router
through :class:`PolicyRecorder`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import aliased

from modelpress.registry.schema import AliasEventRow, PolicyEventRow, VersionRow
from modelpress.registry.store import Registry, _now, _utc, default_actor

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AliasEvent:
    """One move of an alias: from which version to which, when, by whom and why."""

    model: str
    alias: str
    old_version: int | None
    new_version: int | None
    action: str
    at: datetime
    by: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-able view."""
        return {
            "model": self.model, "alias": self.alias, "old_version": self.old_version,
            "new_version": self.new_version, "action": self.action, "at": self.at.isoformat(),
            "by": self.by, "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """One change of a served model's traffic policy."""

    model: str
    action: str
    policy: Mapping[str, Any]
    previous: Mapping[str, Any] | None
    at: datetime
    by: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-able view."""
        return {
            "model": self.model, "action": self.action, "policy": dict(self.policy),
            "previous": dict(self.previous) if self.previous is not None else None,
            "at": self.at.isoformat(), "by": self.by, "reason": self.reason,
        }


def alias_history(registry: Registry, name: str, alias: str | None = None) -> list[AliasEvent]:
    """Return every move of the aliases of ``name`` (or of one alias), oldest first."""
    old, new = aliased(VersionRow), aliased(VersionRow)
    with registry._sessions() as session:
        model = registry._model(session, name)
        query = (
            select(AliasEventRow, old.number, new.number)
            .outerjoin(old, old.id == AliasEventRow.old_version_id)
            .outerjoin(new, new.id == AliasEventRow.new_version_id)
            .where(AliasEventRow.model_id == model.id)
            .order_by(AliasEventRow.id)
        )
        if alias is not None:
            query = query.where(AliasEventRow.alias == alias)
        return [
            AliasEvent(name, row.alias, old_number, new_number, row.action, _utc(row.at), row.by, row.reason)
            for row, old_number, new_number in session.execute(query)
        ]


def record_policy_change(
    registry: Registry,
    model: str,
    action: str,
    policy: Mapping[str, Any],
    *,
    previous: Mapping[str, Any] | None = None,
    by: str | None = None,
    reason: str = "",
    at: datetime | None = None,
) -> PolicyChange:
    """Append one traffic-policy change of ``model`` to the history."""
    change = PolicyChange(model, action, dict(policy), dict(previous) if previous is not None else None, at or _now(), by or default_actor(), reason)

    def work(session: Any) -> None:
        session.add(PolicyEventRow(
            model=change.model, action=change.action, policy=dict(change.policy),
            previous=dict(change.previous) if change.previous is not None else None,
            at=change.at, by=change.by, reason=change.reason,
        ))

    registry._retrying(work)
    return change


def policy_history(registry: Registry, model: str | None = None, *, limit: int | None = None) -> list[PolicyChange]:
    """Return traffic-policy changes (of one model, or all), oldest first; ``limit`` keeps the newest."""
    with registry._sessions() as session:
        query = select(PolicyEventRow).order_by(PolicyEventRow.id.desc())
        if model is not None:
            query = query.where(PolicyEventRow.model == model)
        if limit is not None:
            query = query.limit(limit)
        rows = list(session.scalars(query))
    return [
        PolicyChange(r.model, r.action, dict(r.policy), dict(r.previous) if r.previous is not None else None, _utc(r.at), r.by, r.reason)
        for r in reversed(rows)
    ]


class PolicyRecorder:
    """Store the router's policy events in the registry (pass as ``Router(on_event=...)``).

    A failure to write is logged, never raised: a full disk must not stop a
    rollback from taking effect on the server.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def __call__(self, event: Any) -> None:
        """Record one event carrying ``model, action, policy, previous, by, reason, at``."""
        try:
            record_policy_change(
                self.registry, event.model, event.action, event.policy,
                previous=event.previous, by=event.by, reason=event.reason, at=event.at,
            )
        except Exception:  # a history write must never block the traffic change itself
            log.exception("could not record policy change %s of %s", event.action, event.model)

