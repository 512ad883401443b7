"""Traffic policies and the router: shares, stickiness, shadow stats, canary, atomic switch and rollback."""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import pytest

from modelpress.errors import ConfigError, NotFoundError
from modelpress.serve.canary_stats import GateConfig
from modelpress.serve.router import (
    ABSplit,
    CanaryPolicy,
    PolicyEvent,
    RouteDecision,
    Router,
    ShadowPolicy,
    SinglePolicy,
    compare_outputs,
    policy_from_dict,
)


def test_single_policy_sends_everything_to_one_version() -> None:
    router = Router(seed=0)
    router.add_model("m", "v1")
    decisions = {router.route("m", key=str(i)) for i in range(50)}
    assert decisions == {RouteDecision("m", "v1")}
    with pytest.raises(NotFoundError, match="no model 'other' is served; served: m"):
        router.route("other")


def test_ab_split_matches_its_weights_without_keys() -> None:
    router = Router(seed=1)
    router.add_model("m", ABSplit({"v1": 9, "v2": 1}))
    counts = Counter(router.route("m").primary for _ in range(20_000))
    assert counts["v2"] / 20_000 == pytest.approx(0.1, abs=0.01)


def test_ab_split_is_sticky_per_key_and_stable_across_routers() -> None:
    first, second = Router(seed=1), Router(seed=2)
    for router in (first, second):
        router.add_model("m", ABSplit({"v1": 0.7, "v2": 0.3}))
    keys = [f"user-{i}" for i in range(5000)]
    a = [first.route("m", key=k).primary for k in keys]
    b = [second.route("m", key=k).primary for k in keys]
    repeat = [first.route("m", key=k).primary for k in keys]

    assert a == b == repeat
    assert a.count("v2") / len(a) == pytest.approx(0.3, abs=0.03)


def test_ab_split_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match="`weights`.*>= 0"):
        ABSplit({"v1": -1.0, "v2": 2.0})
    with pytest.raises(ConfigError, match="`weights`.*sum to 0"):
        ABSplit({"v1": 0.0})
    assert ABSplit({"v1": 0.0, "v2": 1.0}).versions() == frozenset({"v2"})


def test_shadow_mirrors_its_share_and_never_changes_the_primary() -> None:
    router = Router(seed=3)
    router.add_model("m", ShadowPolicy("v1", "v2", share=0.1))
    decisions = [router.route("m") for _ in range(10_000)]
    assert {d.primary for d in decisions} == {"v1"}
    assert sum(d.shadow == "v2" for d in decisions) / len(decisions) == pytest.approx(0.1, abs=0.01)


def test_shadow_stats_record_agreement_max_diff_and_kl() -> None:
    router = Router(seed=0)
    policy = ShadowPolicy("v1", "v2", share=1.0)
    router.add_model("m", policy)
    rng = np.random.default_rng(0)
    for i in range(10):
        decision = router.route("m")
        primary = rng.normal(size=(4, 5))
        shadow = primary.copy()
        if i < 2:  # two requests where row 0's top-1 flips
            shadow[0, primary[0].argmax()] -= 10.0
        router.record_shadow(decision, primary, shadow)
    router.record_shadow(router.route("m"), np.zeros((1, 5)), None)

    stats = router.snapshot("m")["shadow"]
    assert stats["requests"] == 10 and stats["rows"] == 40
    assert stats["top1_agreement"] == pytest.approx(38 / 40)
    assert stats["max_abs_diff"] == pytest.approx(10.0)
    assert stats["mean_kl"] > 0
    assert stats["errors"] == 1


def test_compare_outputs_on_probabilities_logits_and_embeddings() -> None:
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    q = np.array([[0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    c = compare_outputs(p, q)
    expected_kl = np.mean([np.sum(p[0] * np.log(p[0] / q[0])), 0.0])
    assert c.top1_agreement == 1.0 and not c.disagrees
    assert c.kl == pytest.approx(expected_kl, rel=1e-6)
    assert c.max_abs_diff == pytest.approx(0.1)

    logits = compare_outputs(np.array([[2.0, 1.0]]), np.array([[1.0, 2.0]]))
    assert logits.top1_agreement == 0.0 and logits.disagrees and logits.kl > 0

    emb = compare_outputs(np.ones((3, 1)), np.full((3, 1), 1.5))
    assert emb.top1_agreement is None and emb.kl is None and emb.max_abs_diff == 0.5
    with pytest.raises(ConfigError, match=r"shapes \(2, 3\) and \(2, 4\)"):
        compare_outputs(np.zeros((2, 3)), np.zeros((2, 4)))


def _drive_canary(router: Router, *, rate: float, seed: int, n: int = 20_000, slow: float = 1.0) -> CanaryPolicy:
    rng = np.random.default_rng(seed)
    policy = router.policy("m")
    assert isinstance(policy, CanaryPolicy)
    logits = rng.normal(size=(n, 4))
    flips = rng.random(n) < rate
    for i in range(n):
        decision = router.route("m")
        latency = float(rng.lognormal(np.log(0.01), 0.1)) * (slow if decision.arm == "candidate" else 1.0)
        router.record(decision, latency_s=latency)
        if decision.shadow is not None:
            other = logits[i : i + 1].copy()
            if flips[i]:
                other[0, other[0].argmax()] -= 100.0
            router.record_shadow(decision, other, logits[i : i + 1])
        if policy.state != "running":
            break
    return policy


def test_canary_steps_up_then_promotes_a_good_candidate_and_records_each_change() -> None:
    events: list[PolicyEvent] = []
    router = Router(on_event=events.append, seed=0)
    router.add_model("m", "v1")
    router.set_policy("m", CanaryPolicy("v1", "v2", steps=(0.05, 0.25, 0.5, 1.0), min_samples_per_step=50), by="alice")
    policy = _drive_canary(router, rate=0.002, seed=0)

    assert policy.state == "promoted"
    assert router.policy("m").as_dict() == {"kind": "single", "version": "v2"}
    assert [e.action for e in events] == ["add", "set_policy", "canary_step", "canary_step", "canary_step", "canary_promote"]
    assert events[-1].by == "canary-gate" and "shown no worse" in events[-1].reason
    assert policy.samples < 1000
    # a manual rollback after the promotion goes back to the stable version
    router.rollback("m", by="bob", reason="customer report")
    assert router.route("m").primary == "v1"


def test_canary_rolls_back_a_candidate_that_disagrees() -> None:
    router = Router(seed=1)
    router.add_model("m", CanaryPolicy("v1", "v2"))
    policy = _drive_canary(router, rate=0.05, seed=1)

    assert policy.state == "rolled_back" and "disagreement shown worse" in policy.reason
    assert policy.step < len(policy.steps) - 1  # caught before it took all traffic
    assert {router.route("m").primary for _ in range(100)} == {"v1"}


def test_canary_rolls_back_a_slower_candidate() -> None:
    router = Router(seed=2)
    router.add_model("m", CanaryPolicy("v1", "v2", gate=GateConfig(disagreement=None)))
    policy = _drive_canary(router, rate=0.0, seed=2, slow=1.5)
    assert policy.state == "rolled_back" and "latency" in policy.reason


def test_canary_keys_stay_on_the_candidate_as_its_share_grows() -> None:
    policy = CanaryPolicy("v1", "v2", steps=(0.1, 0.5))
    router = Router(seed=0)
    router.add_model("m", policy)
    keys = [f"k{i}" for i in range(2000)]
    early = {k for k in keys if router.route("m", key=k).arm == "candidate"}
    policy.step, policy.share = 1, 0.5
    later = {k for k in keys if router.route("m", key=k).arm == "candidate"}
    assert early <= later
    assert len(early) / len(keys) == pytest.approx(0.1, abs=0.03)
    assert len(later) / len(keys) == pytest.approx(0.5, abs=0.04)


def test_canary_validation() -> None:
    with pytest.raises(ConfigError, match="`steps`.*rise strictly"):
        CanaryPolicy("v1", "v2", steps=(0.5, 0.25))
    with pytest.raises(ConfigError, match="`candidate`.*must differ"):
        CanaryPolicy("v1", "v1")
    with pytest.raises(ConfigError, match="`max_samples`"):
        CanaryPolicy("v1", "v2", min_samples_per_step=100, max_samples=50)
    with pytest.raises(ConfigError, match="`compare` off never sees a disagreement"):
        CanaryPolicy("v1", "v2", compare=False)
    no_compare = CanaryPolicy("v1", "v2", compare=False, gate=GateConfig(disagreement=None))
    assert all(no_compare.route("m", f"k{i}", None).shadow is None for i in range(200))  # type: ignore[arg-type]


def test_canary_without_a_verdict_rolls_back_at_max_samples() -> None:
    # rates right between p0 and p1 keep the test undecided
    gate = GateConfig(disagreement=None, latency=None, error_rate={"p0": 0.05, "p1": 0.15})
    router = Router(seed=0)
    policy = CanaryPolicy("v1", "v2", steps=(1.0,), min_samples_per_step=10, max_samples=60, gate=gate, compare=False)
    router.add_model("m", policy)
    for i in range(1000):  # every 10th request fails: 10%, between p0 and p1
        router.record(router.route("m"), latency_s=0.01, error=i % 10 == 0)
        if policy.state != "running":
            break
    assert policy.state == "rolled_back" and policy.samples == 60
    assert "no verdict after 60 candidate requests" in policy.reason


def test_switch_and_rollback_are_atomic_under_concurrent_routing() -> None:
    router = Router(seed=0)
    router.add_model("m", "v1")
    seen: Counter[str] = Counter()
    failures: list[BaseException] = []
    stop = threading.Event()

    def client() -> None:
        local: Counter[str] = Counter()
        try:
            while not stop.is_set():
                local[router.route("m", key="caller").primary] += 1
        except BaseException as err:  # any exception is a failed request
            failures.append(err)
        seen.update(local)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    durations = []
    for i in range(200):
        router.switch("m", "v2", reason=f"swap {i}")
        start = time.perf_counter()
        router.rollback("m", reason=f"rollback {i}")
        durations.append(time.perf_counter() - start)
    stop.set()
    for t in threads:
        t.join()

    assert failures == []
    assert set(seen) <= {"v1", "v2"} and sum(seen.values()) > 0
    assert router.route("m").primary == "v1"
    assert router.warm_versions("m") == frozenset({"v1", "v2"})
    assert np.median(durations) < 0.005  # a rollback is a reference swap, not a reload


def test_rollback_of_a_shadow_or_canary_falls_back_to_stable() -> None:
    router = Router(seed=0)
    router.add_model("m", ABSplit({"v1": 1, "v2": 1}))
    router.set_policy("m", ShadowPolicy("v1", "v3"))
    router.rollback("m")
    assert router.policy("m").as_dict() == {"kind": "single", "version": "v1"}
    router.set_policy("m", CanaryPolicy("v1", "v4"))
    router.rollback("m")
    assert router.policy("m").as_dict() == {"kind": "single", "version": "v1"}
    router.rollback("m")  # undoes the rollback itself
    assert router.policy("m").kind == "canary"
    fresh = Router()
    fresh.add_model("x", "v1")
    with pytest.raises(ConfigError, match="no earlier policy"):
        fresh.rollback("x")


def test_events_reach_the_registry_history(tmp_path) -> None:
    from modelpress.registry import PolicyRecorder, Registry, policy_history

    registry = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    router = Router(on_event=PolicyRecorder(registry), seed=0)
    router.add_model("m", "v1", by="ops")
    router.set_policy("m", ABSplit({"v1": 0.9, "v2": 0.1}), by="alice", reason="try v2")
    router.rollback("m", by="bob", reason="errors")

    history = policy_history(registry, "m")
    assert [(c.action, c.by, c.reason) for c in history] == [("add", "ops", "model added"), ("set_policy", "alice", "try v2"), ("rollback", "bob", "errors")]
    assert history[2].policy == {"kind": "single", "version": "v1"}
    assert history[2].previous == {"kind": "ab", "weights": {"v1": 0.9, "v2": pytest.approx(0.1)}, "salt": ""}


@pytest.mark.parametrize(
    "policy",
    [
        SinglePolicy("v1"),
        ABSplit({"v1": 0.25, "v2": 0.75}, salt="s"),
        ShadowPolicy("v1", "v2", share=0.3),
        CanaryPolicy("v1", "v2", steps=(0.1, 1.0), min_samples_per_step=10, gate=GateConfig(alpha=0.05)),
    ],
)
def test_policy_specs_round_trip(policy) -> None:
    spec = policy.as_dict()
    assert policy_from_dict(spec).as_dict() == spec


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "shadow", "primary": "v1", "candidate": "v2", "share": 1.5}, ": shadow.share: Input should be less than or equal to 1"),
        ({"kind": "single", "version": "v1", "wieghts": 1}, ": single.wieghts: Extra inputs are not permitted"),
        ({"kind": "canary", "stable": "v1", "candidate": "v2", "steps": [0.5, 0.1]}, ": canary: .*steps must rise strictly"),
        ({"kind": "canary", "stable": "v1", "candidate": "v2", "gate": {"alpha": 2}}, ": canary.gate.alpha: Input should be less than 0.5"),
        ({"kind": "teleport"}, "tag 'teleport' found using 'kind' does not match"),
    ],
)
def test_bad_policy_specs_name_the_field(spec: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        policy_from_dict(spec)


def test_a_failing_history_write_never_blocks_a_rollback() -> None:
    def broken(event: PolicyEvent) -> None:
        raise OSError("disk full")

    router = Router(on_event=broken, seed=0)
    router.add_model("m", "v1")
    router.switch("m", "v2")
    event = router.rollback("m", by="oncall", reason="errors")
    assert router.route("m").primary == "v1"
    assert (event.action, event.previous) == ("rollback", {"kind": "single", "version": "v2"})
