from __future__ import annotations

import json
import time

import numpy as np
import pytest

from modelpress.bench.measure import BenchConfig, BenchEntry, bench, latency_stats, median_ci95, time_callable
from modelpress.bench.report import bench_table, plot, write_json
from modelpress.export.onnx import ExportConfig, export_onnx
from modelpress.sources.models import load_model


def test_latency_stats_percentiles():
    stats = latency_stats(np.arange(1, 101, dtype=float))
    assert stats.n == 100 and stats.p50_ms == pytest.approx(50.5) and stats.p99_ms == pytest.approx(99.01)
    assert stats.ci95_low_ms < stats.p50_ms < stats.ci95_high_ms


def test_median_interval_covers_the_true_median():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(400):
        sample = np.sort(rng.exponential(1.0, 101))
        lo, hi = median_ci95(sample)
        hits += lo <= np.log(2) <= hi
    assert 0.92 <= hits / 400 <= 0.99


def test_time_callable_measures_a_known_delay():
    stats = time_callable(lambda: time.sleep(0.002), config=BenchConfig(warmup_s=0.0, min_reps=10, max_seconds=0.5, chunk_s=0.02))
    assert 2.0 <= stats.p50_ms < 4.0


def test_bench_json_schema_and_table(tmp_path):
    handle = load_model("python:modelpress.testing:DigitsNet")
    handle = handle.with_onnx(export_onnx(handle, tmp_path / "m.onnx", ExportConfig(exporter="torchscript")).path)
    config = BenchConfig(batch_sizes=(1, 4), max_seconds=1.0, warmup_s=0.05, min_reps=5, chunk_s=0.02)
    result = bench([BenchEntry("digits", handle)], ["onnxruntime", "torch"], config)
    path = write_json(result, tmp_path / "b.json")
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1
    assert {"cpu", "cores", "vnni"} <= set(data["environment"]["hardware"])
    assert len(data["cases"]) == 4
    for case in data["cases"]:
        assert {"model", "backend", "batch", "threads", "latency", "throughput", "rss_mb", "size_mb", "params", "macs", "converged", "error"} <= set(case)
        lat = case["latency"]
        assert lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] and lat["n"] >= 5
        assert case["macs"] > 0 and case["params"] > 0
    assert result.case("digits", "torch", 4).throughput > 0
    assert bench_table(result, baseline=("digits", "torch")).row_count == 4
    assert plot(result, tmp_path / "b.png").stat().st_size > 1000


def test_bench_reports_a_backend_that_cannot_run_the_model(tmp_path):
    handle = load_model("python:modelpress.testing:DigitsNet")
    result = bench([BenchEntry("digits", handle)], ["onnxruntime"], BenchConfig(max_seconds=0.2, warmup_s=0))
    assert result.cases[0].latency is None and "needs an ONNX file" in result.cases[0].error


def test_count_macs_of_a_linear_layer():
    import torch

    from modelpress.bench.macs import count_macs

    assert count_macs(torch.nn.Linear(10, 20), (torch.zeros(1, 10),)) == 200


def test_speed_words_never_call_a_slowdown_faster():
    from modelpress.bench.report import speed_words

    assert speed_words(2.0) == "2.00x faster"
    assert speed_words(0.8) == "1.25x slower"
    assert speed_words(None) == "–"
