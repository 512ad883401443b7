"""The sequential gate's decisions on seeded simulations."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from modelpress.errors import ConfigError
from modelpress.serve.canary_stats import SPRT, CanaryGate, GateConfig, RateTestConfig


def _run(p: float, rng: np.random.Generator, *, p0: float = 0.01, p1: float = 0.025, alpha: float = 0.01, beta: float = 0.01, limit: int = 20_000) -> tuple[str, int]:
    test = SPRT(p0, p1, alpha=alpha, beta=beta)
    for hit in rng.random(limit) < p:
        if test.update(bool(hit)) != "continue":
            break
    return test.verdict, test.n


@pytest.mark.parametrize(("true_rate", "expected"), [(0.005, "accept_h0"), (0.03, "accept_h1")])
def test_sprt_reaches_the_right_verdict_within_1000_samples(true_rate: float, expected: str) -> None:
    rng = np.random.default_rng(7)
    runs = [_run(true_rate, rng) for _ in range(200)]
    correct = sum(verdict == expected for verdict, _ in runs) / len(runs)
    mean_n = np.mean([n for _, n in runs])

    assert correct >= 0.97
    assert mean_n < 1000


def test_sprt_error_rates_at_the_boundaries_stay_near_alpha_and_beta() -> None:
    rng = np.random.default_rng(11)
    # At p = p1 (just worse) promoting is the error; Wald bounds it by about alpha.
    at_p1 = [_run(0.025, rng)[0] for _ in range(400)]
    # At p = p0 (just acceptable) rolling back is the error; bounded by about beta.
    at_p0 = [_run(0.01, rng)[0] for _ in range(400)]

    assert at_p1.count("accept_h0") / len(at_p1) <= 0.03
    assert at_p0.count("accept_h1") / len(at_p0) <= 0.03


def test_a_looser_significance_decides_sooner() -> None:
    strict = [_run(0.005, np.random.default_rng(s), alpha=0.01, beta=0.01)[1] for s in range(100)]
    loose = [_run(0.005, np.random.default_rng(s), alpha=0.1, beta=0.1)[1] for s in range(100)]

    assert np.mean(loose) < 0.7 * np.mean(strict)


def test_sprt_verdict_is_sticky_and_bounds_follow_wald() -> None:
    test = SPRT(0.01, 0.025, alpha=0.01, beta=0.05)
    assert test.upper == pytest.approx(np.log(0.99 / 0.05))
    assert test.lower == pytest.approx(np.log(0.01 / 0.95))
    while test.update(True) == "continue":
        pass
    assert test.verdict == "accept_h1"
    assert test.update(False) == "accept_h1"
    assert test.progress() == 1.0


def test_gate_rolls_back_a_slower_candidate_on_latency() -> None:
    rng = np.random.default_rng(3)
    gate = CanaryGate(GateConfig(disagreement=None, error_rate=None))
    for latency in rng.lognormal(np.log(0.010), 0.1, 200):
        gate.observe_stable_latency(float(latency))
    for latency in rng.lognormal(np.log(0.014), 0.1, 500):  # 40% slower
        state = gate.observe_candidate(latency_s=float(latency), error=False)
        if state.decision != "continue":
            break

    assert state.decision == "rollback"
    assert "latency shown worse" in state.reason


def test_gate_promotes_an_equally_fast_candidate() -> None:
    rng = np.random.default_rng(4)
    gate = CanaryGate(GateConfig(disagreement=None, error_rate=None))
    for latency in rng.lognormal(np.log(0.010), 0.1, 200):
        gate.observe_stable_latency(float(latency))
    for latency in rng.lognormal(np.log(0.010), 0.1, 500):
        state = gate.observe_candidate(latency_s=float(latency), error=False)
        if state.decision != "continue":
            break

    assert state.decision == "promote"


def test_gate_rolls_back_on_errors_and_needs_every_test_to_promote() -> None:
    rng = np.random.default_rng(5)
    gate = CanaryGate(GateConfig(latency=None))
    for err in rng.random(2000) < 0.05:
        state = gate.observe_candidate(latency_s=0.01, error=bool(err))
        if state.decision != "continue":
            break
    assert state.decision == "rollback" and "error_rate" in state.reason

    fine = CanaryGate(GateConfig(latency=None))
    for _ in range(2000):
        state = fine.observe_candidate(latency_s=0.01, error=False)
    # no disagreement evidence yet: shown fine on errors alone is not enough
    assert state.decision == "continue"
    for _ in range(2000):
        state = fine.observe_disagreement(False)
        if state.decision != "continue":
            break
    assert state.decision == "promote"
    assert fine.snapshot()["tests"]["disagreement"]["verdict"] == "accept_h0"


def test_gate_configs_reject_bad_values_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="p1 must be greater than p0"):
        RateTestConfig(p0=0.02, p1=0.01)
    with pytest.raises(ValidationError, match="alpha"):
        GateConfig(alpha=0.7)
    with pytest.raises(ValidationError, match="typo"):
        GateConfig(typo=1)
    with pytest.raises(ValidationError, match="watches nothing"):
        GateConfig(disagreement=None, error_rate=None, latency=None)
    with pytest.raises(ConfigError, match="p0=0.5, p1=0.1"):
        SPRT(0.5, 0.1)
    assert GateConfig.model_validate(GateConfig().model_dump()) == GateConfig()
