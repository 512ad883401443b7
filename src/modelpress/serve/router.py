"""Choose which version answers each request: single, A/B split, shadow, canary.

Plain Python with no HTTP in it. The server asks :meth:`Router.route` for a
:class:`RouteDecision` per request, runs ``primary`` for the client (and
``shadow`` in the background when there is one), then reports back with
:meth:`Router.record` and :meth:`Router.record_shadow`. A canary decides
itself from those reports and switches the policy when its gate concludes.

A policy change is one reference assignment, so a request routed during a
switch sees either the old policy or the new one, never a mix. The policy
before the latest change is kept so that :meth:`Router.rollback` is a second
assignment; :meth:`Router.warm_versions` names the versions the server must
keep loaded for that to take effect at once.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from modelpress.errors import ConfigError, NotFoundError
from modelpress.serve.compare import Comparison, ShadowStats, compare_outputs
from modelpress.serve.policies import (
    ABSplit,
    CanaryPolicy,
    Policy,
    RouteDecision,
    ShadowPolicy,
    SinglePolicy,
    policy_from_dict,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PolicyEvent:
    """One traffic-policy change, as handed to the router's ``on_event`` callback."""

    model: str
    action: str
    policy: Mapping[str, Any]
    previous: Mapping[str, Any] | None
    by: str
    reason: str
    at: datetime


# ------------------------------------------------------------------ router


@dataclass(frozen=True, slots=True)
class _ModelState:
    policy: Policy
    previous: Policy | None


@dataclass(slots=True)
class _Traffic:
    """Per-version request counts and latency sums, for status pages."""

    requests: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    latency_sum_s: dict[str, float] = field(default_factory=dict)


class Router:
    """Hold each served model's traffic policy and answer :meth:`route` per request.

    Args:
        on_event: called with a :class:`PolicyEvent` after every policy change has taken
            effect (e.g. :class:`modelpress.registry.PolicyRecorder`). Runs on the caller's
            thread: keep it quick.
        seed: seeds the random choices of requests that carry no caller key.
    """

    def __init__(self, *, on_event: Callable[[PolicyEvent], None] | None = None, seed: int | None = None) -> None:
        self._states: dict[str, _ModelState] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._traffic: dict[str, _Traffic] = {}
        self._change_lock = threading.Lock()
        self._rng = random.Random(seed)
        self._on_event = on_event

    # --------------------------------------------------------------- hot path

    def route(self, model: str, key: str | None = None) -> RouteDecision:
        """Choose the version(s) for one request of ``model``; ``key`` makes the choice sticky."""
        state = self._states.get(model)
        if state is None:
            raise NotFoundError(f"no model {model!r} is served; served: {', '.join(sorted(self._states)) or 'none'}.")
        return state.policy.route(model, key, self._rng)

    def record(self, decision: RouteDecision, *, latency_s: float, error: bool = False) -> None:
        """Report how the client-facing call of ``decision`` went (feeds the canary gate)."""
        lock = self._locks.get(decision.model)
        if lock is None:
            return
        with lock:
            traffic = self._traffic[decision.model]
            version = decision.primary
            traffic.requests[version] = traffic.requests.get(version, 0) + 1
            traffic.latency_sum_s[version] = traffic.latency_sum_s.get(version, 0.0) + latency_s
            if error:
                traffic.errors[version] = traffic.errors.get(version, 0) + 1
            policy = self._states[decision.model].policy
            if not isinstance(policy, CanaryPolicy) or decision.primary not in policy.versions():
                return
            outcome = policy.observe(decision, latency_s=latency_s, error=error)
        self._after_canary(decision.model, policy, outcome)

    def record_shadow(self, decision: RouteDecision, primary_output: np.ndarray | None, shadow_output: np.ndarray | None) -> Comparison | None:
        """Report the shadow's answer next to the primary's; ``None`` output means the shadow failed."""
        lock = self._locks.get(decision.model)
        if lock is None or decision.shadow is None:
            return None
        policy = self._states[decision.model].policy
        if primary_output is None or shadow_output is None:
            if isinstance(policy, ShadowPolicy):
                policy.stats.add_error()
            return None
        comparison = compare_outputs(primary_output, shadow_output)
        if isinstance(policy, ShadowPolicy) and decision.shadow == policy.candidate:
            policy.stats.add(comparison)
        elif isinstance(policy, CanaryPolicy) and decision.arm == "candidate":
            with lock:
                outcome = policy.observe_comparison(comparison)
            self._after_canary(decision.model, policy, outcome)
        return comparison

    # ---------------------------------------------------------------- changes

    def add_model(self, model: str, policy: Policy | str, *, by: str = "system", reason: str = "") -> PolicyEvent:
        """Start serving ``model`` with a policy (a version string means :class:`SinglePolicy`)."""
        return self.set_policy(model, policy, by=by, reason=reason or "model added", action="add")

    def remove_model(self, model: str) -> None:
        """Stop routing ``model``."""
        with self._change_lock:
            self._states.pop(model, None)
            self._locks.pop(model, None)
            self._traffic.pop(model, None)

    def set_policy(self, model: str, policy: Policy | str, *, by: str = "system", reason: str = "", action: str = "set_policy") -> PolicyEvent:
        """Replace the policy of ``model`` atomically; the one it replaces is kept for rollback."""
        new = SinglePolicy(policy) if isinstance(policy, str) else policy
        with self._change_lock:
            current = self._states.get(model)
            self._locks.setdefault(model, threading.Lock())
            self._traffic.setdefault(model, _Traffic())
            self._states[model] = _ModelState(new, current.policy if current else None)
        return self._emit(model, action, new, current.policy if current else None, by, reason)

    def switch(self, model: str, version: str, *, by: str = "system", reason: str = "") -> PolicyEvent:
        """Send all traffic of ``model`` to ``version`` (a hot swap once the server has it warm)."""
        self._require(model)
        return self.set_policy(model, SinglePolicy(version), by=by, reason=reason, action="switch")

    def rollback(self, model: str, *, by: str = "system", reason: str = "") -> PolicyEvent:
        """Undo the latest change of ``model`` in one assignment.

        A running shadow or canary falls back to its stable version alone; any
        other policy is swapped with the one before it.
        """
        with self._change_lock:
            state = self._require(model)
            current = state.policy
            if isinstance(current, CanaryPolicy):
                target: Policy = SinglePolicy(current.stable)
            elif isinstance(current, ShadowPolicy):
                target = SinglePolicy(current.primary)
            elif state.previous is not None:
                target = state.previous
            else:
                raise ConfigError(f"model {model!r} has no earlier policy to roll back to.")
            self._states[model] = _ModelState(target, current)
        return self._emit(model, "rollback", target, current, by, reason)

    def promote(self, model: str, version: str | None = None, *, by: str = "system", reason: str = "") -> PolicyEvent:
        """Send all traffic of ``model`` to the version under test, ending a canary, shadow or split.

        A canary or shadow promotes its candidate; an A/B split promotes ``version``
        (required there). The version that served before stays the rollback target,
        as after an automatic canary promotion.
        """
        with self._change_lock:
            state = self._require(model)
            current = state.policy
            if isinstance(current, CanaryPolicy):
                target, fallback = current.candidate, SinglePolicy(current.stable)
            elif isinstance(current, ShadowPolicy):
                target, fallback = current.candidate, SinglePolicy(current.primary)
            elif isinstance(current, ABSplit):
                if version is None or version not in current.versions():
                    raise ConfigError(
                        f"promoting the A/B split of {model!r} needs `version`, one of {', '.join(sorted(current.versions()))}; got {version!r}."
                    )
                target, fallback = version, current
            else:
                raise ConfigError(
                    f"model {model!r} runs a {current.kind} policy, which has no candidate to promote; "
                    "start a canary, shadow or split first, or switch to a version."
                )
            if version is not None and version != target:
                raise ConfigError(f"`version` {version!r} is not the candidate of {model!r}'s {current.kind} policy ({target!r}).")
            new = SinglePolicy(target)
            self._states[model] = _ModelState(new, fallback)
        return self._emit(model, "promote", new, current, by, reason)

    def _after_canary(self, model: str, policy: CanaryPolicy, outcome: str) -> None:
        if outcome in ("stay",):
            return
        if outcome == "step":
            self._emit(model, "canary_step", policy, None, "canary-gate", f"candidate share now {policy.share:g}")
            return
        target = SinglePolicy(policy.candidate if outcome == "promote" else policy.stable)
        with self._change_lock:
            state = self._states.get(model)
            if state is None or state.policy is not policy:
                return  # someone changed the policy meanwhile; theirs wins
            # A later manual rollback should land on the stable version, not on the finished canary.
            self._states[model] = _ModelState(target, SinglePolicy(policy.stable))
        self._emit(model, f"canary_{outcome}", target, policy, "canary-gate", policy.reason)

    def _require(self, model: str) -> _ModelState:
        state = self._states.get(model)
        if state is None:
            raise NotFoundError(f"no model {model!r} is served; served: {', '.join(sorted(self._states)) or 'none'}.")
        return state

    def _emit(self, model: str, action: str, policy: Policy, previous: Policy | None, by: str, reason: str) -> PolicyEvent:
        event = PolicyEvent(
            model=model, action=action, policy=policy.as_dict(),
            previous=previous.as_dict() if previous is not None else None,
            by=by, reason=reason, at=datetime.now(UTC),
        )
        log.info("policy of %s: %s -> %s (%s)", model, action, event.policy, reason)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # recording must never undo or block a change that took effect
                log.exception("on_event failed for %s of %s", action, model)
        return event

    # ---------------------------------------------------------------- reading

    def models(self) -> list[str]:
        """Return the served model names."""
        return sorted(self._states)

    def policy(self, model: str) -> Policy:
        """Return the current policy of ``model``."""
        return self._require(model).policy

    def previous_policy(self, model: str) -> Policy | None:
        """Return the policy a rollback of a non-canary, non-shadow policy restores."""
        return self._require(model).previous

    def warm_versions(self, model: str) -> frozenset[str]:
        """Return the versions the server must keep loaded: current and previous policy's."""
        state = self._require(model)
        return state.policy.versions() | (state.previous.versions() if state.previous else frozenset())

    def snapshot(self, model: str) -> dict[str, Any]:
        """Return the policy, live stats and per-version traffic of ``model``, JSON-able."""
        state = self._require(model)
        policy = state.policy
        with self._locks[model]:
            traffic = self._traffic[model]
            versions = {
                v: {
                    "requests": n,
                    "errors": traffic.errors.get(v, 0),
                    "mean_latency_s": traffic.latency_sum_s.get(v, 0.0) / n if n else None,
                }
                for v, n in traffic.requests.items()
            }
            out: dict[str, Any] = {
                "model": model,
                "policy": policy.as_dict(),
                "previous": state.previous.as_dict() if state.previous else None,
                "warm_versions": sorted(self.warm_versions(model)),
                "traffic": versions,
            }
            if isinstance(policy, ShadowPolicy):
                out["shadow"] = policy.stats.snapshot()
            if isinstance(policy, CanaryPolicy):
                out["canary"] = policy.snapshot()
        return out


__all__ = [
    "ABSplit",
    "CanaryPolicy",
    "Comparison",
    "PolicyEvent",
    "RouteDecision",
    "Router",
    "ShadowPolicy",
    "ShadowStats",
    "SinglePolicy",
    "compare_outputs",
    "policy_from_dict",
]
