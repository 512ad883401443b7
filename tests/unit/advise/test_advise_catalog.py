"""Catalogue: shipped entries are complete, bad user entries name the device and the field."""

from __future__ import annotations

import pytest
import yaml

from modelpress.advise.catalog import load_catalog, parse_catalog
from modelpress.errors import ConfigError

REQUIRED = {
    "cpu-2vcpu-avx512-vnni", "cpu-2vcpu-avx2", "cpu-8core-avx2-desktop", "cpu-8vcpu-spr-amx", "nvidia-t4", "nvidia-l4",
    "nvidia-a100", "nvidia-h100", "jetson-orin-nano", "jetson-agx-orin", "raspberry-pi-5",
}

GOOD = {
    "name": "My box", "kind": "cpu", "calibration_class": "x86-avx2", "cores": 4, "peak_tops": {"fp32": 0.2, "int8": 0.4},
    "memory_bandwidth_gbs": 25, "memory_gb": 16, "power_w": 65, "price_usd": 600, "source": "my measurements",
}


def _write(tmp_path, devices: dict, **top) -> str:
    path = tmp_path / "devices.yaml"
    path.write_text(yaml.safe_dump({"schema_version": 1, "devices": devices, **top}))
    return str(path)


def test_shipped_catalogue_has_required_devices_with_sources():
    cat = load_catalog()
    assert REQUIRED <= set(cat.devices)
    for d in cat.devices.values():
        assert d.source.strip(), d.id
        assert d.peak_tops.get("fp32") is not None, d.id
    # AMX and VNNI classes must rate int8 above fp32 by their instruction width; AVX2 without VNNI only 2x
    assert cat.devices["cpu-8vcpu-spr-amx"].peak_tops.int8 / cat.devices["cpu-8vcpu-spr-amx"].peak_tops.fp32 > 10
    assert cat.devices["cpu-2vcpu-avx512-vnni"].peak_tops.int8 == pytest.approx(4 * cat.devices["cpu-2vcpu-avx512-vnni"].peak_tops.fp32, rel=0.01)
    assert cat.devices["cpu-2vcpu-avx2"].peak_tops.int8 == pytest.approx(2 * cat.devices["cpu-2vcpu-avx2"].peak_tops.fp32)


def test_user_file_adds_a_device_and_overrides_one_field(tmp_path):
    shipped = load_catalog().devices["nvidia-t4"]
    cat = load_catalog(_write(tmp_path, {"mine": GOOD, "nvidia-t4": {"hourly_usd": 0.35}}))
    assert cat.devices["mine"].price_usd == 600
    t4 = cat.devices["nvidia-t4"]
    assert t4.hourly_usd == 0.35
    assert t4.peak_tops == shipped.peak_tops and t4.source == shipped.source
    assert len(cat.devices) == len(load_catalog().devices) + 1


def test_override_switches_cost_model_and_merges_peaks(tmp_path):
    cat = load_catalog(_write(tmp_path, {"nvidia-t4": {"price_usd": 2000, "peak_tops": {"int8": 100}}}))
    t4 = cat.devices["nvidia-t4"]
    assert t4.hourly_usd is None and t4.price_usd == 2000
    assert t4.peak_tops.int8 == 100 and t4.peak_tops.fp32 == 8.1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"power_w": -5}, "`power_w`"),
        ({"kind": "tpu"}, "`kind`"),
        ({"peak_tops": {"fp32": 0.2, "int4": 1.0}}, "`peak_tops.int4`"),
        ({"memory_bandwidth_gbs": "fast"}, "`memory_bandwidth_gbs`"),
        ({"efficiency": 1.5}, "`efficiency`"),
        ({"colour": "red"}, "`colour`"),
    ],
)
def test_bad_entry_names_device_and_field(tmp_path, change, field):
    with pytest.raises(ConfigError) as info:
        load_catalog(_write(tmp_path, {"mine": {**GOOD, **change}}))
    message = str(info.value)
    assert "device 'mine'" in message and field in message and "devices.yaml" in message


def test_missing_field_and_cost_model_clash_are_reported_together(tmp_path):
    no_source = {k: v for k, v in GOOD.items() if k != "source"}
    with pytest.raises(ConfigError) as info:
        load_catalog(_write(tmp_path, {"a": no_source, "b": {**GOOD, "hourly_usd": 1.0}}))
    message = str(info.value)
    assert "device 'a'" in message and "`source`" in message
    assert "device 'b'" in message and "exactly one of `hourly_usd`" in message


def test_file_level_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_catalog(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("devices: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_catalog(bad)
    with pytest.raises(ConfigError, match="`schema_version` must be 1; got 2"):
        load_catalog(_write(tmp_path, {"mine": GOOD}, schema_version=2))
    with pytest.raises(ConfigError, match="unknown top-level"):
        parse_catalog({"devices": {"mine": GOOD}, "device": {}}, where="x.yaml")
    with pytest.raises(ConfigError, match="`devices` must be a non-empty mapping"):
        parse_catalog({"devices": []}, where="x.yaml")


def test_select_unknown_device_lists_known_ones():
    cat = load_catalog()
    assert [d.id for d in cat.select(["nvidia-t4", "raspberry-pi-5"])] == ["nvidia-t4", "raspberry-pi-5"]
    with pytest.raises(ConfigError, match="unknown device.*tpu-v9.*known: .*nvidia-t4"):
        cat.select(["tpu-v9"])


def test_example_user_catalogue_loads():
    from pathlib import Path

    path = Path(__file__).parents[3] / "examples" / "advise" / "my-devices.yaml"
    cat = load_catalog(path)
    assert cat.devices["nvidia-t4"].hourly_usd == 0.35 and cat.devices["office-nuc"].cores == 4
