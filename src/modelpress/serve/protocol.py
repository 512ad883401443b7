"""Parse and encode Open Inference Protocol v2 tensors (JSON and Triton's binary extension).

No HTTP in here: functions take the body bytes and the
``Inference-Header-Content-Length`` value and return plain values, so the
same code serves Starlette and Ray Serve.

Binary extension (Triton): the body is ``JSON header`` followed by raw
tensor bytes. The header's length is in ``Inference-Header-Content-Length``;
each input carried in binary has ``parameters.binary_data_size`` and its
bytes follow in the order the inputs are listed. Outputs go back in binary
when the request says ``parameters.binary_data_output: true`` or an entry of
``outputs`` says ``parameters.binary_data: true``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelpress.errors import InferenceInputError

# OIP v2 datatype <-> numpy dtype. BYTES travels as numpy object arrays of bytes.
DATATYPE_TO_DTYPE: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
DTYPE_TO_DATATYPE: dict[str, str] = {
    str(dt): name for name, dt in DATATYPE_TO_DTYPE.items() if name != "BYTES"
}

HEADER_LENGTH = "inference-header-content-length"


@dataclass(frozen=True, slots=True)
class TensorMeta:
    """Name, OIP datatype and shape of one model input or output (-1 = any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_json(self) -> dict[str, Any]:
        """Return the metadata entry KServe and Triton clients read."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """One entry of a request's ``outputs`` list."""

    name: str
    binary: bool


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A parsed, validated inference request."""

    id: str | None
    inputs: Mapping[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...] | None  # None: every output
    binary_output: bool
    timeout_s: float | None


@dataclass(frozen=True, slots=True)
class EncodedResponse:
    """A response body and, for binary outputs, the JSON header's length."""

    body: bytes
    header_length: int | None

    @property
    def content_type(self) -> str:
        """Return the media type of ``body``."""
        return "application/json" if self.header_length is None else "application/octet-stream"


def datatype_of(dtype: np.dtype) -> str:
    """Return the OIP datatype name of a numpy dtype.

    Raises:
        InferenceInputError: the dtype has no OIP datatype.
    """
    if dtype == object or dtype.kind in "SU":
        return "BYTES"
    try:
        return DTYPE_TO_DATATYPE[str(dtype)]
    except KeyError:
        raise InferenceInputError(f"numpy dtype {dtype} has no Open Inference Protocol datatype") from None


def _json_error(where: str, got: object, want: str) -> InferenceInputError:
    return InferenceInputError(f"{where} must be {want}; got {type(got).__name__} {str(got)[:60]!r}")


def _shape_of(entry: Mapping[str, Any], where: str) -> tuple[int, ...]:
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise _json_error(f"{where}.shape", shape, "a list of non-negative integers")
    return tuple(shape)


def _decode_bytes_tensor(raw: bytes, count: int, where: str) -> np.ndarray:
    # BYTES elements are each a 4-byte little-endian length then the bytes.
    out = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        if pos + 4 > len(raw):
            raise InferenceInputError(f"{where}: binary BYTES data ends after {i} of {count} elements")
        n = int.from_bytes(raw[pos : pos + 4], "little")
        pos += 4
        if pos + n > len(raw):
            raise InferenceInputError(f"{where}: binary BYTES element {i} says {n} bytes but the data ends first")
        out[i] = raw[pos : pos + n]
        pos += n
    if pos != len(raw):
        raise InferenceInputError(f"{where}: binary BYTES data has {len(raw) - pos} bytes past {count} elements")
    return out


def _encode_bytes_tensor(arr: np.ndarray) -> bytes:
    parts = []
    for item in arr.ravel():
        b = item if isinstance(item, bytes) else str(item).encode()
        parts.append(len(b).to_bytes(4, "little"))
        parts.append(b)
    return b"".join(parts)


def _tensor_from_json(entry: Mapping[str, Any], where: str, shape: tuple[int, ...], datatype: str) -> np.ndarray:
    if "data" not in entry:
        raise InferenceInputError(f"{where} has neither 'data' nor parameters.binary_data_size")
    data = entry["data"]
    count = math.prod(shape)
    dtype = DATATYPE_TO_DTYPE[datatype]
    try:
        if datatype == "BYTES":
            flat = np.asarray(data, dtype=object).ravel()
            arr = np.array([s.encode() if isinstance(s, str) else s for s in flat], dtype=object)
        else:
            arr = np.asarray(data, dtype=dtype).ravel()
    except (ValueError, TypeError, OverflowError) as err:
        raise InferenceInputError(f"{where}.data cannot be read as {datatype}: {err}") from None
    if arr.size != count:
        raise InferenceInputError(f"{where}.data has {arr.size} elements but shape {list(shape)} needs {count}")
    return arr.reshape(shape)


def _tensor_from_binary(raw: memoryview, where: str, shape: tuple[int, ...], datatype: str) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return _decode_bytes_tensor(bytes(raw), count, where).reshape(shape)
    dtype = DATATYPE_TO_DTYPE[datatype]
    if len(raw) != count * dtype.itemsize:
        raise InferenceInputError(
            f"{where}: binary_data_size is {len(raw)} bytes but shape {list(shape)} of {datatype} "
            f"needs {count * dtype.itemsize}"
        )
    # a read-only view into the request body: no copy is needed to run a model
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse an OIP v2 infer body (JSON, or JSON header + binary tensors).

    Args:
        body: the whole request body.
        header_length: the ``Inference-Header-Content-Length`` header, or None
            when the body is pure JSON.

    Raises:
        InferenceInputError: the body is malformed; the message names the field.
    """
    if header_length is not None:
        try:
            json_len = int(header_length)
        except ValueError:
            raise InferenceInputError(f"Inference-Header-Content-Length must be an integer; got {header_length!r}") from None
        if not 0 < json_len <= len(body):
            raise InferenceInputError(
                f"Inference-Header-Content-Length is {json_len} but the body has {len(body)} bytes"
            )
        head, tail = body[:json_len], memoryview(body)[json_len:]
    else:
        head, tail = body, memoryview(b"")
    try:
        doc = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InferenceInputError(f"request body is not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise _json_error("request body", doc, "a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _json_error("'inputs'", raw_inputs, "a non-empty list")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise _json_error("'parameters'", params, "an object")

    inputs: dict[str, np.ndarray] = {}
    pos = 0
    for i, entry in enumerate(raw_inputs):
        where = f"inputs[{i}]"
        if not isinstance(entry, dict):
            raise _json_error(where, entry, "an object")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise _json_error(f"{where}.name", name, "a non-empty string")
        where = f"input {name!r}"
        if name in inputs:
            raise InferenceInputError(f"{where} appears twice in 'inputs'")
        datatype = entry.get("datatype")
        if datatype not in DATATYPE_TO_DTYPE:
            raise InferenceInputError(
                f"{where}.datatype must be one of {', '.join(DATATYPE_TO_DTYPE)}; got {datatype!r}"
            )
        shape = _shape_of(entry, where)
        eparams = entry.get("parameters") or {}
        size = eparams.get("binary_data_size") if isinstance(eparams, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0:
                raise _json_error(f"{where}.parameters.binary_data_size", size, "a non-negative integer")
            if pos + size > len(tail):
                raise InferenceInputError(
                    f"{where}: binary_data_size {size} runs past the end of the body "
                    f"({len(tail) - pos} binary bytes left)"
                )
            inputs[name] = _tensor_from_binary(tail[pos : pos + size], where, shape, datatype)
            pos += size
        else:
            inputs[name] = _tensor_from_json(entry, where, shape, datatype)
    if pos != len(tail):
        raise InferenceInputError(f"body has {len(tail) - pos} binary bytes that no input's binary_data_size claims")

    outputs = None
    raw_outputs = doc.get("outputs")
    binary_default = bool(params.get("binary_data_output", False))
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise _json_error("'outputs'", raw_outputs, "a list")
        parsed = []
        for i, entry in enumerate(raw_outputs):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise _json_error(f"outputs[{i}]", entry, "an object with a 'name'")
            oparams = entry.get("parameters") or {}
            binary = bool(oparams.get("binary_data", binary_default)) if isinstance(oparams, dict) else binary_default
            parsed.append(RequestedOutput(entry["name"], binary))
        outputs = tuple(parsed)
    timeout = params.get("timeout")
    timeout_s = None
    if timeout is not None:
        # Triton's client sends the timeout in microseconds.
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise _json_error("parameters.timeout", timeout, "a positive number of microseconds")
        timeout_s = float(timeout) / 1e6
    rid = doc.get("id")
    return InferRequest(
        id=str(rid) if rid is not None else None,
        inputs=inputs,
        outputs=outputs,
        binary_output=binary_default,
        timeout_s=timeout_s,
    )


def validate_inputs(
    inputs: Mapping[str, np.ndarray], specs: Sequence[TensorMeta], *, model: str
) -> dict[str, np.ndarray]:
    """Check request tensors against a model's inputs; return them in the model's dtypes.

    Every problem is collected and raised once, so a client fixes them in one go.

    Raises:
        InferenceInputError: a name is unknown or missing, or a datatype, rank,
            fixed dimension or batch size does not match.
    """
    problems: list[str] = []
    known = {s.name: s for s in specs}
    for name in inputs:
        if name not in known:
            problems.append(f"unknown input {name!r} (model {model!r} takes {', '.join(known)})")
    out: dict[str, np.ndarray] = {}
    batch: int | None = None
    for spec in specs:
        arr = inputs.get(spec.name)
        if arr is None:
            problems.append(f"missing input {spec.name!r} ({spec.datatype} {list(spec.shape)})")
            continue
        got_type = datatype_of(arr.dtype)
        if got_type != spec.datatype:
            problems.append(f"input {spec.name!r} has datatype {got_type} but model {model!r} expects {spec.datatype}")
            continue
        if arr.ndim != len(spec.shape) or any(w not in (-1, g) for w, g in zip(spec.shape, arr.shape)):
            problems.append(
                f"input {spec.name!r} has shape {list(arr.shape)} but model {model!r} expects {list(spec.shape)} (-1 = any)"
            )
            continue
        if arr.ndim == 0 or arr.shape[0] == 0:
            problems.append(f"input {spec.name!r} needs a batch dimension of at least 1; got shape {list(arr.shape)}")
            continue
        if batch is None:
            batch = arr.shape[0]
        elif arr.shape[0] != batch:
            problems.append(f"input {spec.name!r} has batch size {arr.shape[0]} but another input has {batch}")
        out[spec.name] = arr
    if problems:
        raise InferenceInputError("; ".join(problems))
    return out


def encode_infer_response(
    *,
    model: str,
    version: str,
    request: InferRequest,
    output_names: Sequence[str],
    outputs: Sequence[np.ndarray],
) -> EncodedResponse:
    """Encode model outputs as an OIP v2 response (binary where the request asked).

    Raises:
        InferenceInputError: the request asked for an output the model lacks.
    """
    by_name = dict(zip(output_names, outputs))
    if request.outputs is None:
        wanted = [(n, request.binary_output) for n in output_names]
    else:
        unknown = [o.name for o in request.outputs if o.name not in by_name]
        if unknown:
            raise InferenceInputError(
                f"unknown output {', '.join(map(repr, unknown))} (model {model!r} has {', '.join(output_names)})"
            )
        wanted = [(o.name, o.binary) for o in request.outputs]
    entries = []
    chunks: list[bytes] = []
    for name, binary in wanted:
        arr = by_name[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(arr.dtype), "shape": list(arr.shape)}
        if binary:
            raw = _encode_bytes_tensor(arr) if entry["datatype"] == "BYTES" else np.ascontiguousarray(arr).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif entry["datatype"] == "BYTES":
            entry["data"] = [b.decode(errors="replace") if isinstance(b, bytes) else str(b) for b in arr.ravel()]
        else:
            entry["data"] = arr.ravel().tolist()
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": entries}
    if request.id is not None:
        doc["id"] = request.id
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return EncodedResponse(head, None)
    return EncodedResponse(b"".join([head, *chunks]), len(head))


def error_body(message: str) -> bytes:
    """Return the OIP error document ``{"error": message}``."""
    return json.dumps({"error": message}).encode()
