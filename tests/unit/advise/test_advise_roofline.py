"""Roofline arithmetic on hand-checked cases (numbers worked out in the comments)."""

from __future__ import annotations

import pytest

from modelpress.advise.catalog import Device, PeakTops
from modelpress.advise.profile import LayerProfile, ModelProfile
from modelpress.advise.roofline import estimate, rank
from modelpress.errors import ConfigError


def _device(**over) -> Device:
    fields = dict(
        id="toy", name="toy", kind="cpu", calibration_class="toy", peak_tops=PeakTops(fp32=1.0, int8=4.0),
        memory_bandwidth_gbs=10.0, memory_gb=1.0, power_w=10.0, hourly_usd=3.6, efficiency=0.5, source="hand",
    )
    fields.update(over)
    return Device(**fields)


def _profile(*layers: tuple[int, int, int]) -> ModelProfile:
    ls = tuple(LayerProfile(f"l{i}", "Conv2d", macs, params, acts) for i, (macs, params, acts) in enumerate(layers))
    return ModelProfile("toy", ls, params=sum(p for _, p, _ in layers))


COMPUTE_LAYER = (10**9, 10**6, 10**6)   # 1 GMAC, 1 M params, 1 M activation elements
MEMORY_LAYER = (10**6, 10**8, 10**6)    # 1 MMAC, 100 M params, 1 M activation elements


def test_compute_bound_layer_matches_hand_numbers():
    # compute = 2e9 ops / (1e12 * 0.5) = 4 ms; memory = 4 B * (1e6 + 1e6) / 10 GB/s = 0.8 ms
    e = estimate(_profile(COMPUTE_LAYER), _device())
    assert e.bound == "compute"
    assert e.latency_ms == pytest.approx(4.0)
    assert e.compute_ms == pytest.approx(4.0)
    assert e.memory_ms == pytest.approx(0.8)
    assert e.utilisation == pytest.approx(0.5)              # 2e9 / 4e-3 s / 1e12
    assert e.energy_mj == pytest.approx(40.0)               # 10 W * 4 ms
    assert e.cost_per_million_usd == pytest.approx(4.0)     # 3.6 $/h = 1e-3 $/s; * 4e-3 s * 1e6


def test_memory_bound_layer_and_int8_bytes():
    # fp32: 4 B * (1e8 + 1e6) / 1e10 B/s = 40.4 ms; compute only 2e6 / 5e11 = 0.004 ms
    e = estimate(_profile(MEMORY_LAYER), _device(memory_gb=10.0))
    assert e.bound == "memory"
    assert e.latency_ms == pytest.approx(40.4)
    assert e.utilisation == pytest.approx(2e6 / 40.4e-3 / 1e12)
    # int8 moves a quarter of the bytes: 1 B * 1.01e8 / 1e10 = 10.1 ms
    e8 = estimate(_profile(MEMORY_LAYER), _device(memory_gb=10.0), precision="int8")
    assert e8.latency_ms == pytest.approx(10.1)
    assert e8.utilisation == pytest.approx(2e6 / 10.1e-3 / 4e12)


def test_per_layer_sum_and_dominant_bound():
    # 4 ms compute-bound layer + 40.4 ms memory-bound layer
    e = estimate(_profile(COMPUTE_LAYER, MEMORY_LAYER), _device(memory_gb=10.0))
    assert e.latency_ms == pytest.approx(44.4)
    assert e.bound == "memory"


def test_batch_scales_macs_and_activations_not_weights():
    # batch 4: compute 16 ms; memory 4 B * (1e6 + 4 * 1e6) / 1e10 = 2 ms
    e = estimate(_profile(COMPUTE_LAYER), _device(), batch=4)
    assert e.latency_ms == pytest.approx(16.0)
    assert e.memory_ms == pytest.approx(2.0)
    assert e.energy_mj == pytest.approx(40.0)               # per sample: 10 W * 16 ms / 4
    assert e.throughput_per_s == pytest.approx(250.0)


def test_overhead_fixed_plus_per_layer_launch():
    # 1 ms fixed + 2 layers * 10 us = 1.02 ms, larger than 2 * 0.008 ms of compute
    small = (2 * 10**6, 10, 10)
    e = estimate(_profile(small, small), _device(overhead_ms=1.0, launch_overhead_us=10.0))
    assert e.overhead_ms == pytest.approx(1.02)
    assert e.latency_ms == pytest.approx(1.02 + 2 * 0.008)
    assert e.bound == "overhead"


def test_owned_device_amortised_price_plus_electricity():
    # 1000 $ over 1 year = 1000 / 31_536_000 $/s; * 4 ms = 1.2684e-7 $
    # energy 100 W * 4 ms = 0.4 J = 1.111e-7 kWh; * 0.15 $/kWh = 1.667e-8 $
    dev = _device(hourly_usd=None, price_usd=1000.0, lifetime_years=1.0, power_w=100.0)
    e = estimate(_profile(COMPUTE_LAYER), dev)
    expected = (1000 / 31_536_000 * 4e-3 + 0.4 / 3.6e6 * 0.15) * 1e6
    assert e.cost_per_million_usd == pytest.approx(expected)
    assert e.cost_per_million_usd == pytest.approx(0.14351, rel=1e-4)


def test_memory_fit_counts_weights_and_largest_activation():
    # fp32: 4 B * (1.01e8 params + 1e6 peak activations) = 0.408 GB
    profile = _profile(COMPUTE_LAYER, MEMORY_LAYER)
    e = estimate(profile, _device(memory_gb=0.4))
    assert e.memory_needed_gb == pytest.approx(0.408)
    assert not e.fits and "0.41 GB" in e.note
    assert estimate(profile, _device(memory_gb=0.5)).fits


def test_precision_without_peak_is_unsupported_and_ranked_last():
    fp16 = estimate(_profile(COMPUTE_LAYER), _device(), precision="fp16")
    assert fp16.bound == "unsupported" and fp16.latency_ms is None and "fp16" in fp16.note
    fast = estimate(_profile(COMPUTE_LAYER), _device(), precision="int8")
    slow = estimate(_profile(COMPUTE_LAYER), _device())
    too_big = estimate(_profile(COMPUTE_LAYER), _device(memory_gb=1e-6), precision="int8")
    assert [e.precision for e in rank([fp16, slow, too_big, fast])][:2] == ["int8", "fp32"]
    assert rank([fp16, slow, too_big, fast])[-2:] == [too_big, fp16]


def test_bad_batch_and_precision_raise_config_error():
    with pytest.raises(ConfigError, match="batch"):
        estimate(_profile(COMPUTE_LAYER), _device(), batch=0)
    with pytest.raises(ConfigError, match="precision"):
        estimate(_profile(COMPUTE_LAYER), _device(), precision="int4")
