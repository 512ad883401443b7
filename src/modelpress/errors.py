"""Every error modelpress raises.

Each type also subclasses the builtin that callers already catch, so
``except ValueError`` keeps working around a :class:`ConfigError`.
"""

from __future__ import annotations


class ModelpressError(Exception):
    """Base class of every modelpress error."""


class ConfigError(ModelpressError, ValueError):
    """A config, recipe, flag or spec string is invalid."""


class SpecError(ConfigError):
    """A model or data spec string could not be understood or loaded."""


class DataError(ModelpressError, ValueError):
    """Data does not fit the model or the stage (shape, dtype, missing split)."""


class MissingDependencyError(ModelpressError, ImportError):
    """An optional package needed for the requested feature is not installed."""

    def __init__(self, package: str, feature: str, extra: str | None = None) -> None:
        hint = f'pip install "modelpress[{extra}]"' if extra else f"pip install {package}"
        super().__init__(f"{feature} needs the `{package}` package: {hint}")
        self.package = package


class ExportError(ModelpressError, RuntimeError):
    """Exporting a model to ONNX failed."""


class ExportMismatchError(ExportError):
    """The exported model's outputs differ from torch's past the tolerance."""


class BackendError(ModelpressError, RuntimeError):
    """A runtime backend could not load or run a model."""


class ArtifactError(ModelpressError, ValueError):
    """An artifact directory is missing files or fails its hash check."""


class GateError(ModelpressError, RuntimeError):
    """A result failed its accuracy or speed gate."""


class SlowerThanBaselineError(GateError):
    """The compressed model measured slower than the model it came from."""


class RegistryError(ModelpressError, RuntimeError):
    """A registry operation failed (unknown name, alias or version)."""


class OverloadedError(ModelpressError, RuntimeError):
    """The server's queue is full; callers should retry later (HTTP 503)."""


class InferenceInputError(ModelpressError, ValueError):
    """An inference request is malformed (HTTP 400)."""


class NotFoundError(ModelpressError, LookupError):
    """A model, version or resource does not exist (HTTP 404)."""
