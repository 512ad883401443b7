"""Load and validate the device catalogue (shipped devices.yaml plus a user file)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from modelpress.errors import ConfigError

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8")
BYTES_PER_ELEMENT: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
SCHEMA_VERSION = 1


class PeakTops(BaseModel):
    """Dense vendor peak throughput per precision, in tera-operations per second (1 MAC = 2 ops)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fp32: float | None = Field(default=None, gt=0)
    fp16: float | None = Field(default=None, gt=0)
    bf16: float | None = Field(default=None, gt=0)
    int8: float | None = Field(default=None, gt=0)

    def get(self, precision: str) -> float | None:
        """Return the peak for ``precision`` in ops/s, or None when the device has none."""
        value = getattr(self, precision)
        return None if value is None else value * 1e12


class Device(BaseModel):
    """One device: vendor peak figures, power, price and where they come from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    kind: Literal["cpu", "gpu", "edge"]
    calibration_class: str = Field(min_length=1)
    cores: int | None = Field(default=None, ge=1)
    peak_tops: PeakTops
    memory_bandwidth_gbs: float = Field(gt=0)
    memory_gb: float = Field(gt=0)
    power_w: float = Field(gt=0)
    hourly_usd: float | None = Field(default=None, gt=0)
    price_usd: float | None = Field(default=None, gt=0)
    lifetime_years: float = Field(default=3.0, gt=0)
    electricity_usd_per_kwh: float = Field(default=0.15, ge=0)
    efficiency: float = Field(default=0.5, gt=0, le=1)
    overhead_ms: float = Field(default=0.0, ge=0)
    launch_overhead_us: float = Field(default=0.0, ge=0)
    source: str = Field(min_length=1)

    @model_validator(mode="after")
    def _one_cost_model(self) -> Device:
        if (self.hourly_usd is None) == (self.price_usd is None):
            raise ValueError("give exactly one of `hourly_usd` (rented) or `price_usd` (owned)")
        if all(self.peak_tops.get(p) is None for p in PRECISIONS):
            raise ValueError("`peak_tops` needs at least one precision (fp32, fp16, bf16, int8)")
        return self


class Catalog(BaseModel):
    """A set of devices keyed by id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    devices: dict[str, Device]

    def select(self, ids: list[str] | None) -> list[Device]:
        """Return the devices named in ``ids`` (all when None), raising on unknown ids."""
        if not ids:
            return list(self.devices.values())
        unknown = [i for i in ids if i not in self.devices]
        if unknown:
            raise ConfigError(
                f"unknown device(s) {', '.join(unknown)} in --devices; known: {', '.join(self.devices)}"
            )
        return [self.devices[i] for i in ids]


def _format_errors(device_id: str | None, err: ValidationError, where: str) -> str:
    problems = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(entry)"
        got = e.get("input")
        got_text = "" if isinstance(got, Mapping) else f"; got {got!r}"
        problems.append(f"field `{field}`: {e['msg']}{got_text}")
    who = f"device {device_id!r}" if device_id else "catalogue"
    return f"{who} in {where}: " + "; ".join(problems)


def _merge_over(base: Device | None, entry: Mapping[str, Any]) -> dict[str, Any]:
    """Lay a user entry over an existing device, so a user can override one field (a price)."""
    if base is None:
        return dict(entry)
    merged = base.model_dump(exclude={"id"}, exclude_none=True)
    if "hourly_usd" in entry or "price_usd" in entry:
        # a new cost model replaces the old one rather than clashing with it
        merged.pop("hourly_usd", None)
        merged.pop("price_usd", None)
    for key, value in entry.items():
        if key == "peak_tops" and isinstance(value, Mapping):
            merged["peak_tops"] = {**merged.get("peak_tops", {}), **value}
        else:
            merged[key] = value
    return merged


def parse_catalog(data: Any, *, where: str, base: Catalog | None = None) -> Catalog:
    """Validate a parsed catalogue mapping, merging its devices over ``base``.

    Args:
        data: the YAML document: ``{schema_version: 1, devices: {id: {...}}}``.
        where: the file name, quoted in errors.
        base: a catalogue whose devices this one adds to; an entry with a known id is
            laid over that device field by field (``peak_tops`` per precision).

    Raises:
        ConfigError: naming the device and field of every bad entry.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"catalogue {where} must be a mapping with a `devices:` key; got {type(data).__name__}")
    unknown_top = set(data) - {"schema_version", "devices"}
    if unknown_top:
        raise ConfigError(f"catalogue {where}: unknown top-level key(s) {sorted(unknown_top)}; expected `schema_version`, `devices`")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ConfigError(f"catalogue {where}: field `schema_version` must be {SCHEMA_VERSION}; got {version!r}")
    entries = data.get("devices")
    if not isinstance(entries, Mapping) or not entries:
        raise ConfigError(f"catalogue {where}: field `devices` must be a non-empty mapping of device id to entry")
    devices = dict(base.devices) if base else {}
    problems = []
    for device_id, entry in entries.items():
        if not isinstance(entry, Mapping):
            problems.append(f"device {device_id!r} in {where}: entry must be a mapping; got {entry!r}")
            continue
        merged = _merge_over(devices.get(str(device_id)), entry)
        try:
            devices[str(device_id)] = Device.model_validate({**merged, "id": str(device_id)})
        except ValidationError as err:
            problems.append(_format_errors(str(device_id), err, where))
    if problems:
        # collect every bad entry so the user fixes them in one pass
        raise ConfigError("\n".join(problems))
    return Catalog(schema_version=SCHEMA_VERSION, devices=devices)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"catalogue file {path} does not exist") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"catalogue file {path} is not valid YAML: {err}") from err


def load_catalog(user_file: str | Path | None = None) -> Catalog:
    """Load the shipped catalogue, then add or override devices from ``user_file``.

    A user entry with the id of a shipped device overrides only the fields it gives.
    """
    shipped_text = resources.files("modelpress.advise").joinpath("devices.yaml").read_text()
    catalog = parse_catalog(yaml.safe_load(shipped_text), where="devices.yaml (shipped)")
    if user_file is not None:
        path = Path(user_file)
        catalog = parse_catalog(_read_yaml(path), where=str(path), base=catalog)
        logger.info("catalogue: %d devices after merging %s", len(catalog.devices), path)
    return catalog
