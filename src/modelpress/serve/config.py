"""Server configuration: validated at the edge (pydantic), frozen for the hot path."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelpress.errors import ConfigError
from modelpress.serve.batcher import BatchPolicy


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchingConfig(_Strict):
    """Dynamic batching of one model (see :class:`~modelpress.serve.batcher.BatchPolicy`)."""

    enabled: bool = True
    max_batch_size: int = Field(8, ge=1, le=4096)
    max_queue_delay_ms: float = Field(2.0, ge=0, le=10_000)
    max_queue_size: int = Field(256, ge=1)
    timeout_s: float | None = Field(30.0, gt=0)
    padding: Literal["pad", "bucket", "none"] = "pad"
    buckets: tuple[int, ...] = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
    instances: int = Field(1, ge=1, le=64)
    dispatch_when_idle: bool = True

    def policy(self) -> BatchPolicy:
        """Return the frozen policy the batcher runs on."""
        return BatchPolicy(
            max_batch_size=self.max_batch_size,
            max_queue_delay_s=self.max_queue_delay_ms / 1000.0,
            max_queue_size=self.max_queue_size,
            timeout_s=self.timeout_s,
            enabled=self.enabled,
            padding=self.padding,
            buckets=tuple(sorted(self.buckets)),
            instances=self.instances,
            dispatch_when_idle=self.dispatch_when_idle,
        )


class ModelConfig(_Strict):
    """How one model runs: backend, threads per instance, batching."""

    backend: Literal["onnxruntime", "openvino", "torch"] = "onnxruntime"
    threads: int | None = Field(None, ge=1)
    batching: BatchingConfig = BatchingConfig()


class ServeConfig(_Strict):
    """Everything `modelpress serve` needs; `--config FILE` reads it from YAML."""

    schema_version: Literal[1] = 1
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    model_dir: Path | None = None
    registry: str | None = None
    registry_models: tuple[str, ...] = ()
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    retry_after_s: int = Field(1, ge=0)
    access_log: bool = True
    shutdown_timeout_s: float = Field(30.0, ge=0)
    token: str | None = None
    default_model: ModelConfig = ModelConfig()
    models: dict[str, ModelConfig] = Field(default_factory=dict)

    def for_model(self, name: str) -> ModelConfig:
        """Return the config of model ``name`` (its own entry, else the default)."""
        return self.models.get(name, self.default_model)

    @classmethod
    def from_file(cls, path: Path) -> ServeConfig:
        """Read a YAML config file.

        Raises:
            ConfigError: the file is unreadable or a field is wrong (named).
        """
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"serve config {path} cannot be read: {err}") from err
        return cls.parse(data, where=str(path))

    @classmethod
    def parse(cls, data: object, *, where: str = "serve config") -> ServeConfig:
        """Validate a mapping; every problem is reported at once, each naming its field."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            problems = "; ".join(
                f"`{'.'.join(str(p) for p in e['loc'])}`: {e['msg']} (got {e.get('input')!r})" for e in err.errors()
            )
            raise ConfigError(f"{where} is invalid: {problems}") from None
