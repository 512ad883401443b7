from __future__ import annotations

import json

import numpy as np
import pytest

from modelpress.errors import DataError, SpecError
from modelpress.sources.data import iter_batches, load_data, model_inputs
from modelpress.sources.models import load_model


def _disjoint(a: np.ndarray, b: np.ndarray) -> bool:
    rows_a = {r.tobytes() for r in a.reshape(len(a), -1)}
    return not any(r.tobytes() in rows_a for r in b.reshape(len(b), -1))


def test_digits_splits_are_real_and_disjoint():
    data = load_data("digits")
    assert data.kind == "tensor" and data.num_classes == 10 and data.sample_shape == (1, 8, 8)
    total = len(data.train) + len(data.val) + len(data.test)
    assert total == 1797
    assert _disjoint(data.train.x, data.test.x) and _disjoint(data.val.x, data.test.x)
    assert 0.0 <= data.train.x.min() and data.train.x.max() <= 1.0
    assert len(data.calib) == 256


def test_hash_is_stable_and_seed_dependent():
    assert load_data("digits").content_hash == load_data("digits").content_hash
    assert load_data("digits", seed=1).content_hash != load_data("digits").content_hash


@pytest.mark.slow
def test_mnist1d_matches_the_published_benchmark_sizes():
    data = load_data("mnist1d")
    assert data.sample_shape == (1, 40)
    assert len(data.train) + len(data.val) == 4000 and len(data.test) == 1000
    assert sorted(np.unique(data.test.y)) == list(range(10))


def test_synthetic_is_unlabelled_with_requested_shape():
    data = load_data("synthetic:3x32x32?n=8")
    assert data.train.x.shape == (8, 3, 32, 32) and data.train.y is None and not data.labelled
    assert data.calib.x.shape == (8, 3, 32, 32)


def test_npz_forms(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", x=rng.standard_normal((50, 4)).astype(np.float32), y=rng.integers(0, 3, 50))
    data = load_data(f"npz:{tmp_path / 'a.npz'}")
    assert len(data.train) == 40 and len(data.val) == 10 and data.num_classes == 3
    np.savez(tmp_path / "b.npz", x_train=np.zeros((20, 4)), y_train=np.zeros(20), x_val=np.ones((5, 4)), y_val=np.ones(5))
    data = load_data(f"npz:{tmp_path / 'b.npz'}")
    assert len(data.val) == 5 and data.train.x.dtype == np.float32


def test_npz_with_object_arrays_is_refused(tmp_path):
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(SpecError, match="unpickling"):
        load_data(f"npz:{tmp_path / 'o.npz'}")


def test_imagefolder(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.fromarray(np.full((10, 12, 3), 40 * i, dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    data = load_data(f"imagefolder:{tmp_path}?size=16")
    assert data.train.x.shape[1:] == (3, 16, 16) and data.num_classes == 2
    assert len(data.train) + len(data.val) == 10


def test_jsonl_text(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"sentence {i}", "label": i % 2}) for i in range(10)))
    data = load_data(f"jsonl:{path}")
    assert data.kind == "text" and isinstance(data.train.x, list) and data.num_classes == 2


def test_jsonl_bad_line_names_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "ok", "label": 1}\n{"label": 2}\n')
    with pytest.raises(SpecError, match="line 2"):
        load_data(f"jsonl:{path}")


def test_python_data_function(monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    data = load_data("python:tests_data_helpers:make")
    assert len(data.train) == 16


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "data spec is empty"),
        ("cifar", "unknown data source 'cifar'"),
        ("synthetic:3xx4", "shape must look like"),
        ("synthetic:3x4?n=0", "must be positive"),
        ("synthetic:3x4?batch=2", "unknown option(s) ['batch']"),
        ("npz:/no/such.npz", "no such file"),
        ("jsonl:/no/such.jsonl", "no such file"),
        ("imagefolder:/no/such/dir", "one sub-directory of images per class"),
        ("python:nomodule_xyz:fn", "cannot import module"),
    ],
)
def test_bad_data_specs(spec, fragment):
    with pytest.raises(SpecError) as info:
        load_data(spec)
    assert fragment in str(info.value)


def test_model_inputs_reshape_and_mismatch():
    handle = load_model("python:modelpress.testing:DigitsNet")
    flat = np.zeros((4, 64), dtype=np.float32)
    assert model_inputs(handle, flat)["input"].shape == (4, 1, 8, 8)
    with pytest.raises(DataError, match=r"do not fit input 'input'"):
        model_inputs(handle, np.zeros((4, 40), dtype=np.float32))


def test_iter_batches_covers_every_row_once():
    data = load_data("digits")
    seen = sum(len(x) for x, _ in iter_batches(data.val, 64, shuffle=True))
    assert seen == len(data.val)
