"""Config contract for the quantize stage: round-trip, unknown keys, bad values name the field."""

from __future__ import annotations

import pytest

from modelpress.compress._encodings import cpu_features
from modelpress.compress.quantize import (
    BF16Config,
    DynamicConfig,
    FP16Config,
    QATConfig,
    StaticConfig,
    parse_config,
    run_stage,
)
from modelpress.errors import ConfigError

ALL = [DynamicConfig(), StaticConfig(calibration="entropy", encoding="qdq-s8", keep_float=("/fc/Gemm",)),
       QATConfig(epochs=2, lr=1e-4), FP16Config(device="cpu"), BF16Config()]


@pytest.mark.parametrize("cfg", ALL, ids=lambda c: c.kind)
def test_round_trips_through_json(cfg):
    again = parse_config(cfg.model_dump(mode="json"))
    assert again == cfg
    assert type(again) is type(cfg)


@pytest.mark.parametrize("kind", ["dynamic", "static", "qat", "fp16", "bf16"])
def test_unknown_key_is_rejected_by_name(kind):
    with pytest.raises(ConfigError, match="calibraton"):
        parse_config({"kind": kind, "calibraton": "minmax"})


@pytest.mark.parametrize(("field", "value"), [
    ("samples", 0), ("calibration", "kl"), ("max_accuracy_drop", 1.5), ("encoding", "qdq-u4"),
    ("percentile", 10.0), ("threads", 0),
])
def test_bad_value_names_the_field(field, value):
    with pytest.raises(ConfigError, match=f"`{field}`"):
        parse_config({"kind": "static", field: value})


def test_unknown_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="kind"):
        parse_config({"kind": "int4"})


def test_recipe_stage_validates_before_touching_the_model(tmp_path):
    with pytest.raises(ConfigError, match="`samples`"):
        run_stage("does-not-matter.onnx", {"kind": "static", "samples": -1}, out_dir=tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_defaults_are_sensible():
    s = StaticConfig()
    assert s.encoding == "auto" and s.per_channel and s.calibration == "minmax"
    assert s.max_accuracy_drop == pytest.approx(0.01)
    assert not s.allow_slower
    assert BF16Config().backend == "openvino"


@pytest.mark.parametrize(("flags", "vnni", "reduce", "bf16"), [
    ("fpu sse avx2 avx512f avx512_vnni", True, False, False),
    ("fpu sse avx2 avx_vnni", True, False, False),
    ("fpu sse avx2 fma", False, True, False),
    ("avx512f avx512_bf16 amx_tile amx_int8 amx_bf16", True, False, True),
])
def test_cpu_features_from_cpuinfo(flags, vnni, reduce, bf16):
    cpu = cpu_features(f"processor : 0\nflags\t\t: {flags}\n")
    assert cpu.vnni is vnni
    assert cpu.reduce_range is reduce
    assert (cpu.avx512_bf16 or cpu.amx) is bf16
