"""Benchmark the rollout machinery: the canary gate's decisions and the router's hot path.

Measured here (no server needed):

* canary gate on replayed traffic — a log of requests over the real `digits`
  images is replayed through :class:`Router` with a :class:`CanaryPolicy`; the
  primary is a logistic-regression classifier and the candidate returns the
  same scores except on a fixed subset of inputs where its top-1 class differs
  (3% of inputs: should be rolled back; 0.5%: should be promoted). Each of the
  runs replays the log in its own order with its own routing seed. Reported:
  share of runs decided correctly, share decided correctly within 1000
  candidate samples, mean candidate samples to a decision.
* router cost per request (route + record) per policy, and the wall time of a
  rollback call while 4 threads route, side by side in one run.

Measured against a real server (``modelpress serve`` in a subprocess on
127.0.0.1, serving DigitsNet exported to ONNX; the load generator runs in this
process):

* hot swaps and rollbacks under load — 32 requests always in flight; 20 times
  a new version is loaded, warmed and swapped in, then rolled back. Reported:
  failed requests (goal 0), and the time from the rollback call to the last
  answer served by the version rolled away from.
* shadow at 10% — the primary's client-side p99 with and without a shadow
  mirroring 10% of requests to a second version, in interleaved rounds.

Usage: python benchmarks/bench_rollout.py [--quick] [--runs N] [--skip-server] [--out bench-out/rollout.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from modelpress.serve.router import (  # noqa: E402
    ABSplit,
    CanaryPolicy,
    Router,
    ShadowPolicy,
    SinglePolicy,
)
from modelpress.serve.testing import ServerProcess  # noqa: E402


@dataclass(frozen=True, slots=True)
class Replay:
    """A request log: which input each request carried, and both versions' scores per input."""

    order: np.ndarray
    primary: np.ndarray
    candidate: np.ndarray
    disagree_rate: float


def build_replay(disagree_rate: float, *, requests: int, seed: int) -> Replay:
    """Train the primary on digits and derive a candidate that disagrees on a fixed share of inputs."""
    from sklearn.linear_model import LogisticRegression

    from modelpress.sources.data import load_data

    data = load_data("digits", seed=0)
    x_train = np.asarray(data.train.x).reshape(len(data.train.x), -1)
    x_all = np.concatenate([x_train, np.asarray(data.val.x).reshape(len(data.val.x), -1)])
    clf = LogisticRegression(max_iter=300).fit(x_train, data.train.y)
    primary = clf.decision_function(x_all).astype(np.float32)
    candidate = primary.copy()
    rng = np.random.default_rng(seed)
    n_flip = round(disagree_rate * len(x_all))
    flip = rng.choice(len(x_all), size=n_flip, replace=False)
    top2 = np.argsort(primary[flip], axis=1)[:, -2:]
    # swap the top two scores: the candidate's answer differs only in its top-1 class
    candidate[flip, top2[:, 1]], candidate[flip, top2[:, 0]] = primary[flip, top2[:, 0]], primary[flip, top2[:, 1]]
    order = rng.integers(0, len(x_all), size=requests)
    if np.sum(candidate[flip].argmax(1) != primary[flip].argmax(1)) != n_flip:
        raise RuntimeError("ties in the primary's scores: the candidate does not disagree on every chosen input")
    return Replay(order, primary, candidate, n_flip / len(x_all))


def canary_run(replay: Replay, *, seed: int) -> tuple[str, int, int]:
    """Replay the log through a canary; return (state, candidate samples, requests routed)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(replay.order)
    latencies = rng.lognormal(np.log(0.004), 0.25, size=len(order))
    router = Router(seed=seed)
    policy = CanaryPolicy("v1", "v2")
    router.add_model("digits", policy)
    routed = 0
    for i, idx in enumerate(order):
        decision = router.route("digits")
        routed += 1
        router.record(decision, latency_s=float(latencies[i]))
        if decision.shadow is not None:
            # the candidate answered the client; stable ran beside it for the comparison
            router.record_shadow(decision, replay.candidate[idx : idx + 1], replay.primary[idx : idx + 1])
        if policy.state != "running":
            break
    return policy.state, policy.samples, routed


def bench_canary(runs: int, requests: int) -> list[dict[str, object]]:
    results = []
    for rate, expected in ((0.03, "rolled_back"), (0.005, "promoted")):
        replay = build_replay(rate, requests=requests, seed=42)
        outcomes = [canary_run(replay, seed=s) for s in range(runs)]
        correct = [o for o in outcomes if o[0] == expected]
        within = [o for o in correct if o[1] <= 1000]
        decided = [o for o in outcomes if o[0] != "running"]
        results.append({
            "claim": f"canary gate, candidate disagreeing on {replay.disagree_rate:.2%} of inputs",
            "expected": expected,
            "runs": runs,
            "share_correct": len(correct) / runs,
            "share_correct_within_1000": len(within) / runs,
            "share_undecided": 1 - len(decided) / runs,
            "mean_candidate_samples": statistics.fmean(o[1] for o in decided) if decided else None,
            "p95_candidate_samples": float(np.percentile([o[1] for o in decided], 95)) if decided else None,
            "mean_requests_routed": statistics.fmean(o[2] for o in decided) if decided else None,
        })
    return results


def bench_route_cost(n: int) -> list[dict[str, object]]:
    """Time route()+record() per request for each policy, interleaved in rounds to share the noise."""
    policies = {
        "single": lambda: SinglePolicy("v1"),
        "ab": lambda: ABSplit({"v1": 0.9, "v2": 0.1}),
        "shadow": lambda: ShadowPolicy("v1", "v2", share=0.1),
        "canary": lambda: CanaryPolicy("v1", "v2", max_samples=10**9),
    }
    times: dict[str, list[float]] = {name: [] for name in policies}
    for _ in range(5):
        for name, make in policies.items():
            router = Router(seed=0)
            router.add_model("m", make())
            start = time.perf_counter()
            for i in range(n):
                d = router.route("m", key=str(i & 1023))
                router.record(d, latency_s=0.004)
            times[name].append((time.perf_counter() - start) / n)
    base = statistics.median(times["single"])
    return [
        {"claim": f"router route+record, {name}", "us_per_request": statistics.median(t) * 1e6, "ratio_vs_single": statistics.median(t) / base}
        for name, t in times.items()
    ]


def bench_rollback_under_routing(swaps: int) -> dict[str, object]:
    """Time switch/rollback calls while 4 threads route; count requests that failed or saw a third version."""
    router = Router(seed=0)
    router.add_model("m", "v1")
    stop = threading.Event()
    failures: list[BaseException] = []
    served = [0]

    def client() -> None:
        count = 0
        try:
            while not stop.is_set():
                if router.route("m").primary not in ("v1", "v2"):
                    raise RuntimeError("routed to an unknown version")
                count += 1
        except BaseException as err:  # counted, not raised: this is the measurement
            failures.append(err)
        served[0] += count

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    rollbacks = []
    for _ in range(swaps):
        router.switch("m", "v2")
        time.sleep(0.002)
        start = time.perf_counter()
        router.rollback("m")
        rollbacks.append(time.perf_counter() - start)
        time.sleep(0.002)
    stop.set()
    for t in threads:
        t.join()
    return {
        "claim": "router rollback while 4 threads route",
        "swaps": swaps,
        "requests": served[0],
        "failed": len(failures),
        "rollback_call_us_median": statistics.median(rollbacks) * 1e6,
        "rollback_call_us_max": max(rollbacks) * 1e6,
    }


# ------------------------------------------------------------------ against a real server

SERVER_TOKEN = "bench-rollout-token"


def make_artifacts(root: Path) -> dict[str, Path]:
    """Export two DigitsNet versions (different initial weights) as artifact directories."""
    import torch

    from modelpress.artifact import write_artifact
    from modelpress.export.onnx import ExportConfig, export_onnx
    from modelpress.sources.models import load_model

    out = {}
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        handle = load_model("python:modelpress.testing:DigitsNet")
        onnx_path = export_onnx(handle, root / f"{name}.onnx", ExportConfig(exporter="torchscript")).path
        out[name] = write_artifact(root / "store" / name, handle=handle.with_onnx(onnx_path))
    serve_dir = root / "serve" / "digits"
    serve_dir.mkdir(parents=True)
    (serve_dir / "1").symlink_to(out["a"], target_is_directory=True)
    return out


def server_process(model_dir: Path) -> ServerProcess:
    """Return ``modelpress serve`` on ``model_dir`` in a subprocess (one model instance, one thread, like a 1-core pod)."""
    return ServerProcess("--model-dir", str(model_dir), "--threads", "1", "--no-access-log", "--admin-token", SERVER_TOKEN)


def digits_body(rows: int = 1) -> dict[str, object]:
    x = np.random.default_rng(0).standard_normal((rows, 1, 8, 8)).astype(np.float32)
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}


def bench_swaps(server: ServerProcess, artifacts: dict[str, Path], swaps: int) -> dict[str, object]:
    """Hot-swap in a new version and roll it back ``swaps`` times while 32 requests stay in flight."""
    import httpx

    from modelpress.serve.traffic import Traffic, last_answer_from

    admin = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {SERVER_TOKEN}"}, timeout=120)
    swap_s, rollback_rtt, rollback_server, tails = [], [], [], []
    with Traffic(server.url, "digits", digits_body(), concurrency=32) as traffic:
        time.sleep(1.0)
        for i in range(swaps):
            version = f"v{i + 2}"
            start = time.perf_counter()
            r = admin.post("/management/models/digits/versions", json={
                "version": version, "artifact_dir": str(artifacts["ab"[i % 2 == 0]]), "switch": True, "reason": "bench"})
            r.raise_for_status()
            swap_s.append(time.perf_counter() - start)
            time.sleep(0.4)
            called = time.perf_counter()
            r = admin.post("/management/models/digits/rollback", json={"reason": "bench"})
            r.raise_for_status()
            rollback_rtt.append(time.perf_counter() - called)
            rollback_server.append(r.json()["took_ms"] / 1000)
            time.sleep(0.4)
            tails.append((version, called))
    answers = traffic.answers
    last_old = [last_answer_from(answers, v, called) or 0.0 for v, called in tails]
    admin.close()
    return {
        "claim": "hot swap + rollback under load (concurrency 32)",
        "swaps": swaps, "requests": len(answers), "failed": len(traffic.failed()), "errors": traffic.errors[:5],
        "qps": len(answers) / (answers[-1].done - answers[0].sent) if answers else 0.0,
        "swap_load_warm_switch_s_median": statistics.median(swap_s),
        "rollback_call_ms_median": statistics.median(rollback_rtt) * 1000,
        "rollback_server_ms_median": statistics.median(rollback_server) * 1000,
        "last_old_answer_after_rollback_ms_median": statistics.median(last_old) * 1000,
        "last_old_answer_after_rollback_ms_max": max(last_old) * 1000,
    }


def bench_shadow(server: ServerProcess, artifact: Path, rounds: int, seconds: float, concurrency: int) -> dict[str, object]:
    """The primary's client-side p99 with a 10% shadow vs without, in interleaved rounds."""
    import httpx

    from modelpress.serve.traffic import Traffic

    admin = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {SERVER_TOKEN}"}, timeout=120)
    serving = admin.get("/management/models/digits").json()["policy"]["version"]
    other = "shadow"
    admin.post("/management/models/digits/versions", json={"version": other, "artifact_dir": str(artifact)}).raise_for_status()
    # a shadow policy first: from then on the switch back keeps the shadow version warm as its rollback target
    admin.post("/management/models/digits/shadow", json={"candidate": other, "share": 0.1}).raise_for_status()
    latencies: dict[str, list[float]] = {"without": [], "with": []}
    p99s: dict[str, list[float]] = {"without": [], "with": []}
    shadow_counts = {"runs": 0, "shed": 0}
    for _ in range(rounds):
        for mode in ("without", "with"):
            if mode == "with":
                admin.post("/management/models/digits/shadow", json={"candidate": other, "share": 0.1}).raise_for_status()
            else:
                admin.post("/management/models/digits/switch", json={"version": serving}).raise_for_status()
            before = admin.get("/management/status").json()["shadow"]
            with Traffic(server.url, "digits", digits_body(), concurrency=concurrency) as traffic:
                time.sleep(seconds)
            after = admin.get("/management/status").json()["shadow"]
            if mode == "with":
                shadow_counts["runs"] += after["runs"] - before["runs"]
                shadow_counts["shed"] += after["shed"] - before["shed"]
            ok = [a.done - a.sent for a in traffic.answers if a.status == 200]
            latencies[mode].extend(ok)
            p99s[mode].append(float(np.percentile(ok, 99)))
    compared = admin.get("/management/models/digits").json().get("shadow", {})
    admin.post("/management/models/digits/switch", json={"version": serving}).raise_for_status()
    admin.close()
    p99 = {m: float(np.percentile(v, 99)) for m, v in latencies.items()}
    return {
        "claim": f"shadow at 10%, primary p99 (concurrency {concurrency})",
        "rounds": rounds, "seconds_per_round": seconds,
        "p99_ms_without": p99["without"] * 1000, "p99_ms_with": p99["with"] * 1000,
        "ratio": p99["with"] / p99["without"],
        "p99_ms_per_round_without": [x * 1000 for x in p99s["without"]], "p99_ms_per_round_with": [x * 1000 for x in p99s["with"]],
        "p50_ms_without": float(np.percentile(latencies["without"], 50)) * 1000,
        "p50_ms_with": float(np.percentile(latencies["with"], 50)) * 1000,
        "requests_without": len(latencies["without"]), "requests_with": len(latencies["with"]),
        "shadow_runs": shadow_counts["runs"], "shadow_shed": shadow_counts["shed"],
        "last_round_top1_agreement": compared.get("top1_agreement"),
    }


def run_server_benchmarks(quick: bool) -> dict[str, object]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        root = Path(tmp)
        artifacts = make_artifacts(root)
        with server_process(root / "serve") as server:
            swaps = bench_swaps(server, artifacts, 5 if quick else 20)
            print(
                f"{swaps['claim']}: {swaps['failed']} failed of {swaps['requests']} requests ({swaps['qps']:.0f}/s) over "
                f"{swaps['swaps']} hot swaps + rollbacks; last answer from the rolled-back version "
                f"{swaps['last_old_answer_after_rollback_ms_median']:.1f} ms after the rollback call (median, max "
                f"{swaps['last_old_answer_after_rollback_ms_max']:.1f} ms); rollback call {swaps['rollback_call_ms_median']:.1f} ms "
                f"round trip, {swaps['rollback_server_ms_median']:.2f} ms in the server; load+warm+switch "
                f"{swaps['swap_load_warm_switch_s_median']:.2f} s"
            )
            shadow = bench_shadow(server, artifacts["b"], 2 if quick else 4, 2.0 if quick else 5.0, concurrency=8)
            print(
                f"{shadow['claim']}: {shadow['p99_ms_with']:.1f} ms with vs {shadow['p99_ms_without']:.1f} ms without, "
                f"{shadow['ratio']:.2f}x (p50 {shadow['p50_ms_with']:.1f} vs {shadow['p50_ms_without']:.1f} ms; "
                f"{shadow['requests_with']} / {shadow['requests_without']} requests over {shadow['rounds']} interleaved rounds; "
                f"{shadow['shadow_runs']} shadow calls run, {shadow['shadow_shed']} shed)"
            )
    return {"swaps": swaps, "shadow": shadow}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--runs", type=int, default=None, help="simulated canary runs per scenario (default 200, 20 with --quick)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/rollout.json"))
    parser.add_argument("--skip-server", action="store_true", help="only the in-process router benchmarks")
    args = parser.parse_args()
    runs = args.runs or (20 if args.quick else 200)

    started = time.perf_counter()
    canary = bench_canary(runs, requests=60_000)
    for r in canary:
        print(
            f"{r['claim']}: {r['share_correct']:.1%} {r['expected']} over {r['runs']} runs "
            f"({r['share_correct_within_1000']:.1%} within 1000 candidate samples), "
            f"mean {r['mean_candidate_samples']:.0f} candidate samples (p95 {r['p95_candidate_samples']:.0f}) to a decision, "
            f"mean {r['mean_requests_routed']:.0f} requests routed"
        )
    cost = bench_route_cost(5_000 if args.quick else 50_000)
    for r in cost:
        print(f"{r['claim']}: {r['us_per_request']:.1f} us per request, {r['ratio_vs_single']:.2f}x single")
    rollback = bench_rollback_under_routing(20 if args.quick else 200)
    print(
        f"{rollback['claim']}: {rollback['failed']} failed of {rollback['requests']} routed over {rollback['swaps']} swap+rollback cycles, "
        f"rollback call median {rollback['rollback_call_us_median']:.1f} us, max {rollback['rollback_call_us_max']:.1f} us"
    )
    server = None if args.skip_server else run_server_benchmarks(args.quick)
    goal = all(r["share_correct_within_1000"] >= 0.95 for r in canary)
    print(f"canary goal (>= 95% correct decisions within 1000 samples in both scenarios): {'met' if goal else 'NOT met'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "canary": canary, "route_cost": cost, "rollback_under_routing": rollback,
        "server": server, "canary_goal_met": goal, "quick": args.quick, "seconds": time.perf_counter() - started,
    }, indent=2))


if __name__ == "__main__":
    main()
