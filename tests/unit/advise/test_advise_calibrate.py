"""Calibration: detect the local class, ratio measured/estimated, apply it to the same class only."""

from __future__ import annotations

import pytest

from modelpress.advise.calibrate import (
    Calibration,
    LocalDevice,
    apply_calibration,
    calibrate,
    classify_cpu,
    detect_local,
    local_from,
    match_local,
    trust_note,
)
from modelpress.bench.measure import latency_stats
from modelpress.advise.catalog import load_catalog
from modelpress.advise.profile import LayerProfile, ModelProfile
from modelpress.advise.roofline import estimate
from modelpress.errors import ConfigError

PROFILE = ModelProfile("toy", (LayerProfile("conv", "Conv2d", 10**9, 10**6, 10**6),), params=10**6)
AVX2_HERE = LocalDevice("x86-avx2", 2, "AMD EPYC", ("avx2", "fma"))


@pytest.mark.parametrize(
    ("flags", "machine", "cls"),
    [
        ({"avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"}, "x86_64", "x86-amx"),
        ({"avx2", "avx512f", "avx512_vnni"}, "x86_64", "x86-avx512-vnni"),
        ({"avx2", "avx512f"}, "x86_64", "x86-avx512"),
        ({"avx2", "fma", "avx_vnni"}, "x86_64", "x86-avx-vnni"),
        ({"avx2", "fma"}, "x86_64", "x86-avx2"),
        ({"sse4_2"}, "x86_64", "x86-generic"),
        ({"asimd", "asimddp"}, "aarch64", "arm-a76"),
    ],
)
def test_classify_cpu(flags, machine, cls):
    assert classify_cpu(flags, machine) == cls


def test_local_from_flags_and_detect_here():
    local = local_from({"fpu", "avx2", "fma", "avx512f", "avx512_vnni"}, "Intel Xeon X", 2, "x86_64")
    assert local == LocalDevice("x86-avx512-vnni", 2, "Intel Xeon X", ("avx2", "avx512_vnni", "avx512f", "fma"))
    here = detect_local()
    assert here.cores >= 1 and here.calibration_class


def test_match_local_prefers_nearest_core_count():
    cat = load_catalog()
    assert match_local(cat, AVX2_HERE).id == "cpu-2vcpu-avx2"
    assert match_local(cat, LocalDevice("x86-avx2", 8, "Ryzen", ())).id == "cpu-8core-avx2-desktop"
    with pytest.raises(ConfigError, match="x86-generic.*--catalog"):
        match_local(cat, LocalDevice("x86-generic", 2, "old", ()))


def test_ratio_is_measured_over_estimated_and_applies_to_same_class_only():
    cat = load_catalog()
    est_here = estimate(PROFILE, cat.devices["cpu-2vcpu-avx2"]).latency_ms
    cals = calibrate(PROFILE, cat, {"fp32": ("onnxruntime", latency_stats([3 * est_here] * 50))}, local=AVX2_HERE)
    assert len(cals) == 1 and cals[0].ratio == pytest.approx(3.0) and cals[0].device == "cpu-2vcpu-avx2"

    ids = ["cpu-2vcpu-avx2", "cpu-8core-avx2-desktop", "nvidia-t4"]
    raw = [estimate(PROFILE, cat.devices[i], precision=p) for i in ids for p in ("fp32", "int8")]
    done = {(e.device, e.precision): e for e in apply_calibration(raw, cals, PROFILE, cat)}
    for before in raw:
        after = done[(before.device, before.precision)]
        if before.device == "nvidia-t4":
            assert after == before and after.calibration == "uncalibrated"
            continue
        assert after.latency_ms == pytest.approx(3 * before.latency_ms)
        assert after.energy_mj == pytest.approx(3 * before.energy_mj)
        assert after.cost_per_million_usd == pytest.approx(3 * before.cost_per_million_usd)
        assert after.utilisation == pytest.approx(before.utilisation / 3)
    assert done[("cpu-2vcpu-avx2", "fp32")].calibration == "calibrated x3.00 (fp32 here)"
    assert done[("cpu-8core-avx2-desktop", "int8")].calibration == "calibrated x3.00 (fp32 from cpu-2vcpu-avx2)"


def test_same_precision_ratio_wins_over_another_precision():
    cat = load_catalog()
    cals = [
        Calibration("x86-avx2", "cpu-2vcpu-avx2", "fp32", "ort", 1, 20.0, 0.01, 10.0),
        Calibration("x86-avx2", "cpu-2vcpu-avx2", "int8", "ort", 1, 5.0, 0.01, 10.0),
    ]
    raw = [estimate(PROFILE, cat.devices["cpu-2vcpu-avx2"], precision=p) for p in ("fp32", "int8")]
    fp32, int8 = apply_calibration(raw, cals, PROFILE, cat)
    assert fp32.latency_ms == pytest.approx(2.0 * raw[0].latency_ms)
    assert int8.latency_ms == pytest.approx(0.5 * raw[1].latency_ms)
    note = trust_note(cals)
    assert "ratio 2.00" in note and "ratio 0.50" in note and "differ by 4.00x" in note


def test_advise_end_to_end_on_an_onnx_file(tiny_convnet, tmp_path):
    import torch

    from modelpress.advise.advisor import advise, make_config, profile_spec

    path = tmp_path / "tiny.onnx"
    torch.onnx.export(tiny_convnet, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False,
                      input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    target = profile_spec(path)
    assert target.precision == "fp32" and target.profile.macs == 1_290_400
    config = make_config(devices=["cpu-2vcpu-avx2", "nvidia-t4"], precisions=["fp32", "int8"], calibrate=True, max_seconds=0.2)
    report = advise(target, config, local=AVX2_HERE)
    assert len(report.estimates) == 4 and len(report.calibrations) == 1
    cal = report.calibrations[0]
    assert cal.runtime == "onnxruntime" and cal.measured_ms > 0
    labels = {(e.device, e.precision): e.calibration for e in report.estimates}
    assert labels[("cpu-2vcpu-avx2", "fp32")].startswith("calibrated")
    assert labels[("nvidia-t4", "fp32")] == "uncalibrated"
    here = next(e for e in report.estimates if (e.device, e.precision) == ("cpu-2vcpu-avx2", "fp32"))
    assert here.latency_ms == pytest.approx(cal.measured_ms)   # calibrated estimate equals the measurement
    assert report.to_dict()["calibrations"][0]["ratio"] == pytest.approx(cal.ratio)


def test_make_config_names_bad_field():
    from modelpress.advise.advisor import make_config

    with pytest.raises(ConfigError, match="`batches.1`"):
        make_config(batches=[1, 0])
    with pytest.raises(ConfigError, match="`batches`"):
        make_config(batches=[])
    with pytest.raises(ConfigError, match="`precisions.0`"):
        make_config(precisions=["int4"])
    with pytest.raises(ConfigError, match="`sort`"):
        make_config(sort="speed")


def test_trust_note_flags_a_busy_machine():
    quiet = Calibration("x86-avx2", "cpu-2vcpu-avx2", "fp32", "ort", 1, 20.0, 0.01, 10.0, load_avg=1.0, cores=2)
    busy = Calibration("x86-avx2", "cpu-2vcpu-avx2", "fp32", "ort", 1, 20.0, 0.01, 10.0, load_avg=6.5, cores=2)
    assert "inflated" not in trust_note([quiet])
    assert "load average was 6.5 on 2 cores" in trust_note([busy])
    assert "uncalibrated" in trust_note([])


def test_saved_calibrations_round_trip_through_a_json_report(tmp_path):
    import json

    from modelpress.advise.advisor import AdviseReport, Target, advise, make_config
    from modelpress.advise.calibrate import load_calibrations

    cat = load_catalog()
    cals = [Calibration("x86-avx2", "cpu-2vcpu-avx2", "fp32", "onnxruntime", 1, 30.0, 0.02, 10.0, 1.0, 2)]
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(AdviseReport(PROFILE, [], cals).to_dict()))
    loaded = load_calibrations(saved)
    assert loaded == cals
    report = advise(Target(PROFILE, "fp32"), make_config(devices=["cpu-2vcpu-avx2", "nvidia-t4"]), catalog=cat, calibrations=loaded)
    by_device = {e.device: e for e in report.estimates}
    raw = estimate(PROFILE, cat.devices["cpu-2vcpu-avx2"])
    assert by_device["cpu-2vcpu-avx2"].latency_ms == pytest.approx(3.0 * raw.latency_ms)
    assert by_device["nvidia-t4"].calibration == "uncalibrated"


def test_bad_calibration_file_names_the_field(tmp_path):
    from modelpress.advise.calibrate import load_calibrations

    path = tmp_path / "cal.json"
    path.write_text('{"calibrations": [{"device": "cpu-2vcpu-avx2", "precision": "fp32"}]}')
    with pytest.raises(ConfigError, match="entry 0 lacks field.*`measured_ms`"):
        load_calibrations(path)
    path.write_text('{"estimates": []}')
    with pytest.raises(ConfigError, match="`calibrations` must be a non-empty list"):
        load_calibrations(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_calibrations(tmp_path / "none.json")


@pytest.mark.slow
def test_spec_with_a_torch_module_profiles_and_calibrates_on_torch():
    from modelpress.advise.advisor import advise, make_config, profile_spec

    target = profile_spec("python:modelpress.testing:TinyConvNet?shape=3x16x16")
    assert (target.precision, target.backend, target.profile.macs) == ("fp32", "torch", 1_290_400)
    report = advise(target, make_config(devices=["cpu-2vcpu-avx2"], calibrate=True, max_seconds=0.2), local=AVX2_HERE)
    cal = report.calibrations[0]
    assert cal.runtime == "torch" and cal.measured_ms > 0
    assert report.estimates[0].latency_ms == pytest.approx(cal.measured_ms)


def test_nearest_batch_and_same_precision_ratio_is_chosen():
    cat = load_catalog()
    cals = [
        Calibration("x86-avx2", "cpu-2vcpu-avx2", "fp32", "ort", 1, 20.0, 0.01, 10.0),   # ratio 2 at batch 1
        Calibration("x86-avx2", "cpu-2vcpu-avx2", "fp32", "ort", 8, 30.0, 0.01, 20.0),   # ratio 1.5 at batch 8
        Calibration("x86-avx2", "cpu-2vcpu-avx2", "int8", "ort", 1, 40.0, 0.01, 10.0),   # ratio 4 at batch 1
    ]
    dev = cat.devices["cpu-2vcpu-avx2"]
    raw = [estimate(PROFILE, dev, precision="fp32", batch=b) for b in (1, 4, 16)] + [estimate(PROFILE, dev, precision="int8", batch=16)]
    b1, b4, b16, i16 = apply_calibration(raw, cals, PROFILE, cat)
    assert b1.latency_ms == pytest.approx(2.0 * raw[0].latency_ms) and b1.calibration == "calibrated x2.00 (fp32 here)"
    assert b4.latency_ms == pytest.approx(2.0 * raw[1].latency_ms)      # |4-1| < |4-8|
    assert b16.latency_ms == pytest.approx(1.5 * raw[2].latency_ms) and "at batch 8" in b16.calibration
    assert i16.latency_ms == pytest.approx(4.0 * raw[3].latency_ms) and "int8 at batch 1" in i16.calibration


@pytest.mark.slow
def test_calibration_at_two_batches_in_one_run():
    from modelpress.advise.advisor import advise, make_config, profile_spec

    target = profile_spec("python:modelpress.testing:TinyConvNet?shape=3x16x16")
    report = advise(target, make_config(devices=["cpu-2vcpu-avx2"], batches=[1, 4], calibrate=True, max_seconds=0.3), local=AVX2_HERE)
    assert sorted(c.batch for c in report.calibrations) == [1, 4]
    by_batch = {e.batch: e for e in report.estimates}
    for cal in report.calibrations:
        assert by_batch[cal.batch].latency_ms == pytest.approx(cal.measured_ms)


@pytest.mark.slow
def test_artifact_directory_profiles_from_its_checkpoint_and_int8_from_its_graph(tmp_path):
    import dataclasses

    from modelpress.advise.advisor import profile_spec
    from modelpress.artifact import write_artifact
    from modelpress.export.onnx import export_onnx
    from modelpress.sources.models import load_model

    handle = load_model("python:modelpress.testing:TinyConvNet?shape=3x16x16")
    export_onnx(handle, tmp_path / "tiny.onnx")
    art = write_artifact(tmp_path / "art", handle=handle.with_onnx(tmp_path / "tiny.onnx"))
    target = profile_spec(str(art))
    assert (target.precision, target.backend, target.profile.macs) == ("fp32", "onnxruntime", 1_290_400)
    assert target.handle is not None and target.handle.module is not None   # profiled from the checkpoint

    # an int8 artifact keeps its module for training, but the ONNX graph is what ships and is profiled
    int8 = dataclasses.replace(target.handle, precision="int8")
    art8 = write_artifact(tmp_path / "art8", handle=int8)
    target8 = profile_spec(str(art8))
    assert target8.precision == "int8" and target8.profile.macs == 1_290_400
    assert all(layer.kind in ("Conv", "Gemm", "MatMul") for layer in target8.profile.layers)
