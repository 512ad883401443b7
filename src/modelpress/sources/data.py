"""Turn a data spec string into a :class:`Dataset` with train / val / calib splits.

Specs (an optional ``?key=value&...`` query sets options):

- ``digits``: scikit-learn's bundled handwritten digits, (1, 8, 8) in [0, 1]
- ``mnist1d``: the MNIST-1D benchmark generated locally, (1, 40)
- ``synthetic:3x224x224`` (``?n=64``): unlabelled standard-normal inputs
- ``npz:PATH``: arrays ``x``/``y``, or ``x_train``/``y_train``/``x_val``/``y_val``(/``x_test``/``y_test``)
- ``imagefolder:DIR`` (``?size=224``): one sub-directory of images per class
- ``jsonl:PATH``: one ``{"text": ..., "label": ...}`` object per line
- ``python:pkg.mod:fn``: a function returning a Dataset or a dict of arrays like npz
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from modelpress.errors import DataError, SpecError
from modelpress.sources.models import check_options, import_object, parse_shape, positive_int_option, split_spec

if TYPE_CHECKING:
    from modelpress.sources.models import ModelHandle

log = logging.getLogger(__name__)

DATA_SPEC_HELP = "digits, mnist1d, synthetic:3x224x224, npz:PATH, imagefolder:DIR, jsonl:PATH, python:pkg.mod:fn"
CALIB_SIZE = 256
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)


@dataclass(frozen=True)
class Split:
    """Features and (optional) integer labels of one split."""

    x: np.ndarray | list[str]
    y: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.x)

    def take(self, index: np.ndarray | slice) -> Split:
        """Return the rows at ``index``."""
        if isinstance(self.x, list):
            rows = np.arange(len(self.x))[index]
            x: np.ndarray | list[str] = [self.x[i] for i in rows]
        else:
            x = self.x[index]
        return Split(x, None if self.y is None else self.y[index])


@dataclass(frozen=True)
class Dataset:
    """A data source resolved into splits, with a stable content hash."""

    spec: str
    kind: Literal["tensor", "text"]
    train: Split
    val: Split
    calib: Split
    num_classes: int | None
    content_hash: str
    sample_shape: tuple[int, ...] | None
    test: Split | None = None

    @property
    def labelled(self) -> bool:
        return self.val.y is not None

    @property
    def eval_split(self) -> Split:
        """The held-out split quality is reported on: test when there is one, else val."""
        return self.test if self.test is not None else self.val


def _update_with_split(digest: Any, split: Split) -> None:
    for part in (split.x, split.y):
        if part is None:
            digest.update(b"none")
        elif isinstance(part, list):
            digest.update(json.dumps(part).encode())
        else:
            arr = np.ascontiguousarray(part)
            digest.update(f"{arr.dtype}{arr.shape}".encode())
            digest.update(arr.tobytes())


def split_hash(split: Split) -> str:
    """Return the sha256 of one split's features and labels (e.g. the calibration data's identity)."""
    digest = hashlib.sha256()
    _update_with_split(digest, split)
    return digest.hexdigest()


def _hash_splits(splits: dict[str, Split | None]) -> str:
    digest = hashlib.sha256()
    for name, split in splits.items():
        if split is not None:
            digest.update(name.encode())
            _update_with_split(digest, split)
    return digest.hexdigest()


def make_dataset(
    spec: str,
    *,
    train: Split,
    val: Split,
    test: Split | None = None,
    calib: Split | None = None,
    num_classes: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Assemble a Dataset; calib defaults to a fixed random subset of train."""
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"data {spec!r} needs non-empty train and validation splits; got {len(train)} and {len(val)} rows")
    if calib is None:
        rng = np.random.default_rng(seed + 1)
        calib = train.take(np.sort(rng.permutation(len(train))[:CALIB_SIZE]))
    kind: Literal["tensor", "text"] = "text" if isinstance(train.x, list) else "tensor"
    sample_shape = None if kind == "text" else tuple(train.x.shape[1:])  # type: ignore[union-attr]
    if num_classes is None and train.y is not None:
        num_classes = int(max(train.y.max(), val.y.max() if val.y is not None else 0)) + 1
    splits = {"train": train, "val": val, "calib": calib, "test": test}
    return Dataset(spec, kind, train, val, calib, num_classes, _hash_splits(splits), sample_shape, test)


def split_train_val(x: np.ndarray | list[str], y: np.ndarray | None, *, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """Shuffle deterministically and cut a validation share off the end."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, int(round(len(x) * val_fraction)))
    whole = Split(x, y)
    return whole.take(np.sort(order[n_val:])), whole.take(np.sort(order[:n_val]))


def load_data(spec: str, *, seed: int = 0) -> Dataset:
    """Load the data a spec string names.

    Args:
        spec: one of the forms in this module's docstring.
        seed: fixes the train / validation shuffle and the calibration subset.

    Raises:
        SpecError: the spec is malformed or names nothing loadable.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"data spec is empty; expected one of: {DATA_SPEC_HELP}")
    kind, rest, options = split_spec(spec)
    name = kind or rest
    loader = _LOADERS.get(name)
    if loader is None:
        raise SpecError(f"unknown data source {name!r} in {spec!r}; expected one of: {DATA_SPEC_HELP}")
    return loader(spec, rest if kind else "", options, seed)


def _digits(spec: str, rest: str, options: dict[str, str], seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    check_options(options, (), spec, what="data")
    bunch = load_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    rest_split, test = split_train_val(x, y, val_fraction=0.2, seed=seed)
    train, val = split_train_val(rest_split.x, rest_split.y, val_fraction=0.15, seed=seed)
    return make_dataset(spec, train=train, val=val, test=test, num_classes=10, seed=seed)


def _cache_dir() -> Path:
    return Path(os.environ.get("MODELPRESS_CACHE", Path.home() / ".cache" / "modelpress"))


def _mnist1d(spec: str, rest: str, options: dict[str, str], seed: int) -> Dataset:
    check_options(options, (), spec, what="data")
    cache = _cache_dir() / "mnist1d-v1.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as arrays:
            data = {k: arrays[k] for k in arrays.files}
    else:
        import mnist1d.data

        # make_dataset generates the published benchmark locally (seed 42); get_dataset would download.
        made = mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())
        data = {k: np.asarray(made[k]) for k in ("x", "y", "x_test", "y_test")}
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **data)
        os.replace(tmp, cache)
    x = data["x"].astype(np.float32)[:, None, :]
    y = data["y"].astype(np.int64)
    train, val = split_train_val(x, y, val_fraction=0.1, seed=seed)
    test = Split(data["x_test"].astype(np.float32)[:, None, :], data["y_test"].astype(np.int64))
    return make_dataset(spec, train=train, val=val, test=test, num_classes=10, seed=seed)


def _synthetic(spec: str, rest: str, options: dict[str, str], seed: int) -> Dataset:
    check_options(options, ("n",), spec, what="data")
    shape = parse_shape(rest, what=f"data spec {spec!r}")
    n = positive_int_option(options, "n", 64, spec)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3 * n, *shape)).astype(np.float32)
    return make_dataset(spec, train=Split(x[:n]), val=Split(x[n : 2 * n]), calib=Split(x[2 * n :]), seed=seed)


def _npz(spec: str, rest: str, options: dict[str, str], seed: int) -> Dataset:
    check_options(options, (), spec, what="data")
    path = Path(rest)
    if not path.is_file():
        raise SpecError(f"npz:{rest}: no such file")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            data = {k: arrays[k] for k in arrays.files}
    except ValueError as err:  # object arrays need pickle, which we refuse
        raise SpecError(f"npz:{rest} holds object arrays, which would need unpickling; save plain numeric arrays") from err
    return dataset_from_arrays(spec, data, seed=seed)


def dataset_from_arrays(spec: str, data: dict[str, Any], *, seed: int) -> Dataset:
    """Build a Dataset from ``x``/``y`` or ``x_train``/``x_val``/... arrays."""

    def labels(key: str) -> np.ndarray | None:
        return None if key not in data else np.asarray(data[key]).astype(np.int64)

    def features(key: str) -> np.ndarray:
        arr = np.asarray(data[key])
        return arr.astype(np.float32) if arr.dtype.kind == "f" else arr

    if "x_train" in data:
        train = Split(features("x_train"), labels("y_train"))
        if "x_val" in data:
            val = Split(features("x_val"), labels("y_val"))
        else:
            train, val = split_train_val(train.x, train.y, val_fraction=0.1, seed=seed)
        test = Split(features("x_test"), labels("y_test")) if "x_test" in data else None
        calib = Split(features("x_calib")) if "x_calib" in data else None
        return make_dataset(spec, train=train, val=val, test=test, calib=calib, seed=seed)
    if "x" in data:
        train, val = split_train_val(features("x"), labels("y"), val_fraction=0.2, seed=seed)
        return make_dataset(spec, train=train, val=val, seed=seed)
    raise SpecError(f"{spec}: expected arrays `x` (and `y`), or `x_train`/`y_train` (and `x_val`, `x_test`); got {sorted(data)}")


def _imagefolder(spec: str, rest: str, options: dict[str, str], seed: int) -> Dataset:
    from PIL import Image

    check_options(options, ("size",), spec, what="data")
    size = positive_int_option(options, "size", 224, spec)
    root = Path(rest)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise SpecError(f"imagefolder:{rest} needs one sub-directory of images per class; found none")
    xs, ys = [], []
    suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
    for label, name in enumerate(classes):
        for file in sorted((root / name).iterdir()):
            if file.suffix.lower() not in suffixes:
                continue
            with Image.open(file) as img:
                arr = np.asarray(img.convert("RGB").resize((size, size)), dtype=np.float32) / 255.0
            xs.append((arr.transpose(2, 0, 1) - _IMAGENET_MEAN) / _IMAGENET_STD)
            ys.append(label)
    if len(xs) < 2:
        raise SpecError(f"imagefolder:{rest} holds {len(xs)} images; need at least 2 ({', '.join(sorted(suffixes))})")
    train, val = split_train_val(np.stack(xs).astype(np.float32), np.array(ys, dtype=np.int64), val_fraction=0.2, seed=seed)
    return make_dataset(spec, train=train, val=val, num_classes=len(classes), seed=seed)


def _jsonl(spec: str, rest: str, options: dict[str, str], seed: int) -> Dataset:
    check_options(options, (), spec, what="data")
    path = Path(rest)
    if not path.is_file():
        raise SpecError(f"jsonl:{rest}: no such file")
    texts: list[str] = []
    labels: list[int] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise SpecError(f"jsonl:{rest} line {number}: not valid JSON ({err.msg})") from err
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise SpecError(f'jsonl:{rest} line {number}: each line needs a string "text" (and optionally an int "label")')
        texts.append(row["text"])
        if "label" in row:
            labels.append(int(row["label"]))
    if labels and len(labels) != len(texts):
        raise SpecError(f"jsonl:{rest}: {len(texts) - len(labels)} lines have no label; label all lines or none")
    y = np.array(labels, dtype=np.int64) if labels else None
    train, val = split_train_val(texts, y, val_fraction=0.2, seed=seed)
    return make_dataset(spec, train=train, val=val, seed=seed)


def _python(spec: str, rest: str, options: dict[str, str], seed: int) -> Dataset:
    check_options(options, (), spec, what="data")
    made = import_object(rest, what="data function")()
    if isinstance(made, Dataset):
        return made
    if isinstance(made, dict):
        return dataset_from_arrays(spec, made, seed=seed)
    raise SpecError(f"{spec} returned {type(made).__name__}; a data function must return a Dataset or a dict of arrays")


_LOADERS = {
    "digits": _digits,
    "mnist1d": _mnist1d,
    "synthetic": _synthetic,
    "npz": _npz,
    "imagefolder": _imagefolder,
    "jsonl": _jsonl,
    "python": _python,
}


def iter_batches(split: Split, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> Iterator[tuple[Any, np.ndarray | None]]:
    """Yield ``(x, y)`` batches of a split; the last batch may be short."""
    order = np.random.default_rng(seed).permutation(len(split)) if shuffle else np.arange(len(split))
    for start in range(0, len(split), batch_size):
        part = split.take(order[start : start + batch_size])
        yield part.x, part.y


def model_inputs(handle: ModelHandle, x: np.ndarray | list[str], *, max_length: int = 128) -> dict[str, np.ndarray]:
    """Turn a batch of data into the model's named inputs.

    Text is tokenised with the model's tokenizer; arrays are reshaped to the
    model's input shape when only the layout differs (64 features vs 1x8x8).

    Raises:
        DataError: the data does not fit the model's input.
    """
    if isinstance(x, list):
        if not handle.is_text:
            raise DataError(f"text data given to {handle.spec}, which takes {handle.inputs[0].shape} tensors")
        tokens = tokenizer_for(handle)(x, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        return {spec.name: np.asarray(tokens[spec.name], dtype=spec.dtype) for spec in handle.inputs}
    if handle.is_text:
        raise DataError(f"{handle.spec} takes text; got arrays of shape {tuple(x.shape)}")
    if len(handle.inputs) != 1:
        raise DataError(f"{handle.spec} has {len(handle.inputs)} inputs; array data feeds single-input models only")
    spec = handle.inputs[0]
    want = spec.shape[1:]
    got = tuple(x.shape[1:])
    if all(isinstance(d, int) for d in want) and tuple(want) != got:
        if int(np.prod(want)) != int(np.prod(got)):
            raise DataError(f"data samples of shape {got} do not fit input {spec.name!r} of {handle.spec}, which takes {tuple(want)}")
        x = x.reshape(len(x), *want)  # type: ignore[arg-type]
    return {spec.name: np.ascontiguousarray(x, dtype=spec.dtype)}


_TOKENIZERS: dict[str, Any] = {}


def tokenizer_for(handle: ModelHandle) -> Any:
    """Load (once) the tokenizer that belongs to a text model."""
    key = str(handle.tokenizer_dir)
    if key not in _TOKENIZERS:
        from transformers import AutoTokenizer

        _TOKENIZERS[key] = AutoTokenizer.from_pretrained(key, local_files_only=True)
    return _TOKENIZERS[key]
