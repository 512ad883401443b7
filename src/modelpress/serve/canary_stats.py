"""Decide a canary by sequential tests: promote when shown no worse, roll back when shown worse.

Each watched rate (disagreement with the stable version, error rate, share of
slow requests) gets Wald's sequential probability ratio test on a Bernoulli
stream: H0 ``p <= p0`` (acceptable) against H1 ``p >= p1`` (worse). After each
observation the log-likelihood ratio moves by ``log(p1/p0)`` on a hit and by
``log((1-p1)/(1-p0))`` on a miss; crossing ``log((1-beta)/alpha)`` accepts H1
(roll back), crossing ``log(beta/(1-alpha))`` accepts H0. Wald's bounds keep
the chance of passing a worse candidate at most ``alpha`` (the significance,
default 0.01) and of rejecting a fine one at most ``beta``, whatever the
moment the test stops, and the test needs far fewer samples on average than a
fixed-size test of the same strength.

Latency is turned into a Bernoulli stream as well: a candidate request is
"slow" when it takes longer than ``1 + slack`` times the running median of the
stable version's latencies. A candidate no slower than stable is slow at most
half the time (less, with slack), so H0 is ``p <= 0.5``.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from modelpress.errors import ConfigError

Verdict = Literal["continue", "accept_h0", "accept_h1"]
GateDecision = Literal["continue", "promote", "rollback"]


class RateTestConfig(BaseModel):
    """A watched rate: acceptable up to ``p0``, worse from ``p1`` on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    p0: float = Field(gt=0.0, lt=1.0, description="rate still acceptable (H0: p <= p0)")
    p1: float = Field(gt=0.0, lt=1.0, description="rate that counts as worse (H1: p >= p1)")

    @model_validator(mode="after")
    def _ordered(self) -> RateTestConfig:
        if self.p1 <= self.p0:
            raise ValueError(f"p1 must be greater than p0; got p0={self.p0}, p1={self.p1}")
        return self


class GateConfig(BaseModel):
    """What the canary gate watches and how sure it must be.

    ``alpha`` is the significance: the most a candidate that is worse may be
    promoted (default 0.01). ``beta`` bounds how often a fine one is rolled back.
    A test set to ``None`` is not watched.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha: float = Field(0.01, gt=0.0, lt=0.5)
    beta: float = Field(0.01, gt=0.0, lt=0.5)
    disagreement: RateTestConfig | None = RateTestConfig(p0=0.01, p1=0.025)
    error_rate: RateTestConfig | None = RateTestConfig(p0=0.002, p1=0.02)
    latency: RateTestConfig | None = RateTestConfig(p0=0.5, p1=0.65)
    latency_slack: float = Field(0.10, ge=0.0, le=10.0, description="a request is slow above (1 + slack) x stable's median")
    latency_window: int = Field(512, ge=16, le=100_000, description="stable latencies kept for the running median")
    min_reference: int = Field(20, ge=1, description="stable latencies needed before candidate latencies count")

    @model_validator(mode="after")
    def _something_watched(self) -> GateConfig:
        if self.disagreement is None and self.error_rate is None and self.latency is None:
            raise ValueError("the gate watches nothing; keep at least one of disagreement, error_rate, latency")
        return self


class SPRT:
    """Wald's sequential probability ratio test on a Bernoulli stream.

    Args:
        p0: acceptable rate (H0: p <= p0).
        p1: worse rate (H1: p >= p1), above ``p0``.
        alpha: bound on accepting H0 when H1 holds, P(accept H0 | p >= p1) <= alpha
            (promoting a worse candidate).
        beta: bound on accepting H1 when H0 holds, P(accept H1 | p <= p0) <= beta
            (rolling back a fine candidate).
    """

    __slots__ = ("p0", "p1", "upper", "lower", "_hit", "_miss", "llr", "n", "hits", "verdict")

    def __init__(self, p0: float, p1: float, *, alpha: float = 0.01, beta: float = 0.01) -> None:
        if not (0.0 < p0 < p1 < 1.0):
            raise ConfigError(f"a sequential test needs 0 < p0 < p1 < 1; got p0={p0}, p1={p1}.")
        if not (0.0 < alpha < 0.5 and 0.0 < beta < 0.5):
            raise ConfigError(f"`alpha` and `beta` of a sequential test must be in (0, 0.5); got {alpha}, {beta}.")
        self.p0, self.p1 = p0, p1
        # Accepting H1 wrongly (rolling back a fine candidate) is the beta error,
        # accepting H0 wrongly (promoting a worse one) is the alpha error.
        self.upper = math.log((1.0 - alpha) / beta)
        self.lower = math.log(alpha / (1.0 - beta))
        self._hit = math.log(p1 / p0)
        self._miss = math.log((1.0 - p1) / (1.0 - p0))
        self.llr = 0.0
        self.n = 0
        self.hits = 0
        self.verdict: Verdict = "continue"

    def update(self, hit: bool) -> Verdict:
        """Add one observation; return the verdict (sticky once reached)."""
        if self.verdict != "continue":
            return self.verdict
        self.n += 1
        if hit:
            self.hits += 1
            self.llr += self._hit
        else:
            self.llr += self._miss
        if self.llr >= self.upper:
            self.verdict = "accept_h1"
        elif self.llr <= self.lower:
            self.verdict = "accept_h0"
        return self.verdict

    def progress(self) -> float:
        """Return where the statistic sits between the bounds: -1 = shown fine, +1 = shown worse."""
        bound = self.upper if self.llr >= 0 else -self.lower
        return max(-1.0, min(1.0, self.llr / bound))

    def snapshot(self) -> dict[str, Any]:
        """Return a JSON-able view for status pages."""
        return {
            "n": self.n, "hits": self.hits, "rate": self.hits / self.n if self.n else None,
            "p0": self.p0, "p1": self.p1, "llr": self.llr, "lower": self.lower, "upper": self.upper,
            "progress": self.progress(), "verdict": self.verdict,
        }


class _RunningMedian:
    """Median of the last ``window`` values, O(window) per insert (windows are small)."""

    __slots__ = ("_order", "_sorted", "_window")

    def __init__(self, window: int) -> None:
        self._order: deque[float] = deque()
        self._sorted: list[float] = []
        self._window = window

    def add(self, value: float) -> None:
        self._order.append(value)
        bisect.insort(self._sorted, value)
        if len(self._order) > self._window:
            old = self._order.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]

    def __len__(self) -> int:
        return len(self._sorted)

    def median(self) -> float:
        values, mid = self._sorted, len(self._sorted) // 2
        return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


@dataclass(frozen=True, slots=True)
class GateState:
    """The gate's verdict and the test that decided it."""

    decision: GateDecision
    reason: str


class CanaryGate:
    """Combine the watched tests: roll back as soon as one shows the candidate worse,
    promote once every watched test shows it no worse.

    Not thread-safe; the router serialises calls.
    """

    def __init__(self, config: GateConfig | None = None) -> None:
        self.config = config or GateConfig()
        c = self.config
        self.tests: dict[str, SPRT] = {}
        for name in ("disagreement", "error_rate", "latency"):
            spec: RateTestConfig | None = getattr(c, name)
            if spec is not None:
                self.tests[name] = SPRT(spec.p0, spec.p1, alpha=c.alpha, beta=c.beta)
        self._reference = _RunningMedian(c.latency_window)
        self.state = GateState("continue", "collecting evidence")

    def observe_stable_latency(self, latency_s: float) -> None:
        """Add one latency of the stable version to the reference the candidate is judged against."""
        self._reference.add(latency_s)

    def observe_candidate(self, *, latency_s: float, error: bool) -> GateState:
        """Add one request the candidate served (an error counts; its latency is ignored)."""
        if "error_rate" in self.tests:
            self.tests["error_rate"].update(error)
        if not error and "latency" in self.tests and len(self._reference) >= self.config.min_reference:
            threshold = self._reference.median() * (1.0 + self.config.latency_slack)
            self.tests["latency"].update(latency_s > threshold)
        return self._decide()

    def observe_disagreement(self, disagree: bool) -> GateState:
        """Add one comparison of the candidate's answer with the stable version's."""
        if "disagreement" in self.tests:
            self.tests["disagreement"].update(disagree)
        return self._decide()

    def _decide(self) -> GateState:
        if self.state.decision != "continue":
            return self.state
        for name, test in self.tests.items():
            if test.verdict == "accept_h1":
                self.state = GateState("rollback", f"{name} shown worse: {test.hits}/{test.n} over p1={test.p1} (alpha={self.config.alpha})")
                return self.state
        if all(test.verdict == "accept_h0" for test in self.tests.values()):
            detail = ", ".join(f"{name} {t.hits}/{t.n}" for name, t in self.tests.items())
            self.state = GateState("promote", f"shown no worse ({detail})")
        return self.state

    def snapshot(self) -> dict[str, Any]:
        """Return a JSON-able view for status pages."""
        return {
            "decision": self.state.decision, "reason": self.state.reason,
            "alpha": self.config.alpha, "beta": self.config.beta,
            "reference_latency_median_s": self._reference.median() if len(self._reference) else None,
            "tests": {name: test.snapshot() for name, test in self.tests.items()},
        }
