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

import hashlib
import logging
import math
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from modelpress.errors import ConfigError, NotFoundError
from modelpress.serve.canary_stats import CanaryGate, GateConfig
from modelpress.serve.compare import Comparison, ShadowStats, compare_outputs

log = logging.getLogger(__name__)

Arm = Literal["stable", "candidate"]


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where one request goes.

    Attributes:
        model: served model name.
        primary: version whose answer the client gets.
        shadow: version that also runs on the request, answer compared and dropped.
        arm: ``"candidate"`` when ``primary`` is the version under test, else ``"stable"``.
    """

    model: str
    primary: str
    shadow: str | None = None
    arm: Arm = "stable"


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


def _unit(key: str, salt: str) -> float:
    """Map a caller key to [0, 1) stably across processes (unlike ``hash()``)."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class Policy(Protocol):
    """A traffic policy for one served model."""

    kind: str

    def route(self, model: str, key: str | None, rng: random.Random) -> RouteDecision:
        """Choose the version(s) for one request."""
        ...

    def versions(self) -> frozenset[str]:
        """Return every version this policy may send traffic to."""
        ...

    def as_dict(self) -> dict[str, Any]:
        """Return the policy's spec, JSON-able, accepted back by :func:`policy_from_dict`."""
        ...


class SinglePolicy:
    """Send every request to one version."""

    kind = "single"

    def __init__(self, version: str) -> None:
        _check_version(version, "version")
        self.version = version
        self._decisions: dict[str, RouteDecision] = {}

    def route(self, model: str, key: str | None, rng: random.Random) -> RouteDecision:
        decision = self._decisions.get(model)
        if decision is None:
            decision = self._decisions[model] = RouteDecision(model, self.version)
        return decision

    def versions(self) -> frozenset[str]:
        return frozenset({self.version})

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "version": self.version}


class ABSplit:
    """Split traffic between versions by weight; a caller with a key always lands on the same one.

    Args:
        weights: version -> weight (any non-negative numbers, normalised).
        salt: changes which callers land where without changing the shares.
    """

    kind = "ab"

    def __init__(self, weights: Mapping[str, float], *, salt: str = "") -> None:
        if not weights:
            raise ConfigError("`weights` of an A/B split is empty; give at least one version, e.g. {'v3': 0.9, 'v4': 0.1}.")
        bad = {v: w for v, w in weights.items() if not (isinstance(w, int | float) and math.isfinite(w) and w >= 0)}
        if bad:
            raise ConfigError(f"`weights` of an A/B split must be finite and >= 0; got {bad}.")
        total = float(sum(weights.values()))
        if total <= 0:
            raise ConfigError(f"`weights` of an A/B split sum to {total}; at least one must be positive.")
        for version in weights:
            _check_version(version, "weights")
        self.weights = {v: float(w) / total for v, w in weights.items()}
        self.salt = salt
        self._versions = tuple(self.weights)
        cumulative, acc = [], 0.0
        for version in self._versions:
            acc += self.weights[version]
            cumulative.append(acc)
        cumulative[-1] = 1.0  # rounding must not leave a gap at the top
        self._cumulative = tuple(cumulative)

    def pick(self, u: float) -> str:
        """Return the version whose share covers ``u`` in [0, 1)."""
        for version, edge in zip(self._versions, self._cumulative, strict=True):
            if u < edge and self.weights[version] > 0:
                return version
        return next(v for v in reversed(self._versions) if self.weights[v] > 0)

    def route(self, model: str, key: str | None, rng: random.Random) -> RouteDecision:
        u = _unit(key, f"ab:{self.salt}") if key is not None else rng.random()
        return RouteDecision(model, self.pick(u))

    def versions(self) -> frozenset[str]:
        return frozenset(v for v, w in self.weights.items() if w > 0)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "weights": dict(self.weights), "salt": self.salt}


class ShadowPolicy:
    """Answer every request from ``primary``; mirror a share of them to ``candidate`` and compare.

    Args:
        share: fraction of requests mirrored, in (0, 1].
    """

    kind = "shadow"

    def __init__(self, primary: str, candidate: str, *, share: float = 0.1) -> None:
        _check_version(primary, "primary")
        _check_version(candidate, "candidate")
        if primary == candidate:
            raise ConfigError(f"`candidate` of a shadow policy must differ from `primary`; both are {primary!r}.")
        if not (0.0 < share <= 1.0):
            raise ConfigError(f"`share` of a shadow policy must be in (0, 1]; got {share}.")
        self.primary, self.candidate, self.share = primary, candidate, float(share)
        self.stats = ShadowStats()

    def route(self, model: str, key: str | None, rng: random.Random) -> RouteDecision:
        mirrored = rng.random() < self.share
        return RouteDecision(model, self.primary, self.candidate if mirrored else None)

    def versions(self) -> frozenset[str]:
        return frozenset({self.primary, self.candidate})

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "primary": self.primary, "candidate": self.candidate, "share": self.share}


CanaryState = Literal["running", "promoted", "rolled_back"]


class CanaryPolicy:
    """Move traffic to ``candidate`` step by step while a sequential gate watches it.

    The candidate's share follows ``steps``; a step lasts at least
    ``min_samples_per_step`` candidate requests. Requests routed to the candidate
    also run ``stable`` as a shadow (when ``compare``) so that the gate can count
    disagreements. The evidence accumulates across steps: the canary rolls back
    the moment the gate shows the candidate worse, and promotes once the last
    step has its samples and the gate has shown it no worse. After
    ``max_samples`` candidate requests without a verdict it rolls back.

    Callers with a key are sticky: a caller in the candidate's share stays there
    as the share grows.
    """

    kind = "canary"

    def __init__(
        self,
        stable: str,
        candidate: str,
        *,
        steps: Sequence[float] = (0.05, 0.25, 0.5, 1.0),
        min_samples_per_step: int = 100,
        max_samples: int = 20_000,
        gate: GateConfig | None = None,
        compare: bool = True,
    ) -> None:
        _check_version(stable, "stable")
        _check_version(candidate, "candidate")
        if stable == candidate:
            raise ConfigError(f"`candidate` of a canary must differ from `stable`; both are {stable!r}.")
        steps = tuple(float(s) for s in steps)
        if not steps or any(not (0.0 < s <= 1.0) for s in steps) or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ConfigError(f"`steps` of a canary must rise strictly within (0, 1]; got {list(steps)}.")
        if min_samples_per_step < 1:
            raise ConfigError(f"`min_samples_per_step` of a canary must be >= 1; got {min_samples_per_step}.")
        if max_samples < min_samples_per_step * len(steps):
            raise ConfigError(
                f"`max_samples` ({max_samples}) of a canary must cover every step "
                f"({len(steps)} x {min_samples_per_step} samples)."
            )
        gate = gate or GateConfig()
        if not compare and gate.disagreement is not None:
            raise ConfigError(
                "a canary with `compare` off never sees a disagreement, so its gate could never promote; "
                "set gate.disagreement to null (watch errors and latency only) or keep `compare` on."
            )
        self.stable, self.candidate = stable, candidate
        self.steps = steps
        self.min_samples_per_step = min_samples_per_step
        self.max_samples = max_samples
        self.compare = compare
        self.gate_config = gate
        self.gate = CanaryGate(self.gate_config)
        self.step = 0
        self.share = steps[0]
        self.samples = 0
        self.step_samples = 0
        self.state: CanaryState = "running"
        self.reason = "collecting evidence"
        self._salt = f"canary:{stable}>{candidate}"

    def route(self, model: str, key: str | None, rng: random.Random) -> RouteDecision:
        u = _unit(key, self._salt) if key is not None else rng.random()
        if self.state == "running" and u < self.share:
            return RouteDecision(model, self.candidate, self.stable if self.compare else None, "candidate")
        return RouteDecision(model, self.stable)

    def versions(self) -> frozenset[str]:
        return frozenset({self.stable, self.candidate})

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "stable": self.stable, "candidate": self.candidate, "steps": list(self.steps),
            "min_samples_per_step": self.min_samples_per_step, "max_samples": self.max_samples,
            "gate": self.gate_config.model_dump(), "compare": self.compare,
        }

    def observe(self, decision: RouteDecision, *, latency_s: float, error: bool) -> Literal["stay", "step", "promote", "rollback"]:
        """Feed one served request; return what the canary wants done. Call under a lock."""
        if self.state != "running":
            return "stay"
        if decision.arm != "candidate":
            if not error:
                self.gate.observe_stable_latency(latency_s)
            return "stay"
        self.samples += 1
        self.step_samples += 1
        self.gate.observe_candidate(latency_s=latency_s, error=error)
        return self._advance()

    def observe_comparison(self, comparison: Comparison) -> Literal["stay", "step", "promote", "rollback"]:
        """Feed one paired comparison of the candidate with stable. Call under a lock."""
        if self.state != "running":
            return "stay"
        self.gate.observe_disagreement(comparison.disagrees)
        return self._advance()

    def _advance(self) -> Literal["stay", "step", "promote", "rollback"]:
        verdict = self.gate.state
        if verdict.decision == "rollback":
            self.state, self.reason = "rolled_back", verdict.reason
            return "rollback"
        last = self.step == len(self.steps) - 1
        if last and verdict.decision == "promote" and self.step_samples >= self.min_samples_per_step:
            self.state, self.reason = "promoted", verdict.reason
            return "promote"
        if self.samples >= self.max_samples:
            self.state = "rolled_back"
            self.reason = f"no verdict after {self.samples} candidate requests; the candidate was not shown no worse"
            return "rollback"
        if not last and self.step_samples >= self.min_samples_per_step:
            self.step += 1
            self.share = self.steps[self.step]
            self.step_samples = 0
            return "step"
        return "stay"

    def snapshot(self) -> dict[str, Any]:
        """Return the canary's progress for status pages."""
        return {
            "state": self.state, "reason": self.reason, "step": self.step, "steps": list(self.steps),
            "share": self.share, "samples": self.samples, "step_samples": self.step_samples,
            "gate": self.gate.snapshot(),
        }


# ------------------------------------------------------------------ specs


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SingleSpec(_Spec):
    """Every request to one version."""

    kind: Literal["single"] = "single"
    version: str


class ABSpec(_Spec):
    """A weighted split; sticky per caller key."""

    kind: Literal["ab"] = "ab"
    weights: dict[str, float]
    salt: str = ""

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        if not value or any(w < 0 for w in value.values()) or sum(value.values()) <= 0:
            raise ValueError("weights must be non-negative with a positive sum, e.g. {'v3': 0.9, 'v4': 0.1}")
        return value


class ShadowSpec(_Spec):
    """Mirror a share of requests to a candidate; the client gets the primary's answer."""

    kind: Literal["shadow"] = "shadow"
    primary: str
    candidate: str
    share: float = Field(0.1, gt=0.0, le=1.0)


class CanarySpec(_Spec):
    """A progressive canary with a sequential gate."""

    kind: Literal["canary"] = "canary"
    stable: str
    candidate: str
    steps: list[float] = Field(default_factory=lambda: [0.05, 0.25, 0.5, 1.0])
    min_samples_per_step: int = Field(100, ge=1)
    max_samples: int = Field(20_000, ge=1)
    gate: GateConfig = Field(default_factory=GateConfig)
    compare: bool = True

    @model_validator(mode="after")
    def _steps(self) -> CanarySpec:
        steps = self.steps
        if not steps or any(not (0.0 < s <= 1.0) for s in steps) or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"steps must rise strictly within (0, 1]; got {steps}")
        return self


PolicySpec = Annotated[SingleSpec | ABSpec | ShadowSpec | CanarySpec, Field(discriminator="kind")]
_SPEC = TypeAdapter(PolicySpec)


def policy_from_dict(spec: Mapping[str, Any]) -> Policy:
    """Build a policy from its JSON spec (an HTTP body, a CLI flag, a history row).

    Raises:
        ConfigError: naming every bad field.
    """
    from pydantic import ValidationError

    try:
        parsed = _SPEC.validate_python(dict(spec))
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'policy'}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"invalid traffic policy {dict(spec)!r}: {problems}") from err
    match parsed:
        case SingleSpec():
            return SinglePolicy(parsed.version)
        case ABSpec():
            return ABSplit(parsed.weights, salt=parsed.salt)
        case ShadowSpec():
            return ShadowPolicy(parsed.primary, parsed.candidate, share=parsed.share)
        case CanarySpec():
            return CanaryPolicy(
                parsed.stable, parsed.candidate, steps=parsed.steps, min_samples_per_step=parsed.min_samples_per_step,
                max_samples=parsed.max_samples, gate=parsed.gate, compare=parsed.compare,
            )
    raise AssertionError(f"unhandled policy spec {parsed!r}")


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


def _check_version(version: object, field_name: str) -> None:
    if not isinstance(version, str) or not version:
        raise ConfigError(f"`{field_name}` must name a version such as 'v3'; got {version!r}.")


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
