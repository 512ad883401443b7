"""Load generator for OIP v2 servers: closed-loop concurrency or open-loop Poisson arrivals.

Payloads are built from the model's own metadata (``GET /v2/models/NAME``),
as JSON tensors or Triton binary tensors. A share of requests can be made
malformed on purpose, to check that bad traffic neither crashes nor stalls a
server; those are counted apart and expected to get a 4xx.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from modelpress.errors import ConfigError
from modelpress.serve.protocol import DATATYPE_TO_DTYPE

Payload = Literal["json", "binary"]


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """What load to send.

    Attributes:
        url: server base URL, e.g. http://127.0.0.1:8000.
        model: model name; ``version`` pins one version.
        concurrency: closed loop: this many workers, each sending its next
            request when the last one answers. Ignored when ``rate`` is set.
        rate: open loop: Poisson arrivals at this many requests per second.
        duration_s: how long to send.
        payload: "json" or "binary" tensors.
        batch: rows per request.
        seq_len: (min, max) length of dynamic axes; each request draws one.
        malformed_share: share of requests sent malformed on purpose (0..1).
        warmup_s: seconds of load sent before measuring starts.
        timeout_s: client-side timeout per request.
        seed: random seed of data, lengths and arrivals.
    """

    url: str
    model: str
    version: str | None = None
    concurrency: int = 8
    rate: float | None = None
    duration_s: float = 10.0
    payload: Payload = "binary"
    batch: int = 1
    seq_len: tuple[int, int] = (16, 16)
    malformed_share: float = 0.0
    warmup_s: float = 0.0
    timeout_s: float = 30.0
    seed: int = 0


@dataclass
class LoadReport:
    """What the load test measured (latencies of successful requests, in ms)."""

    mode: str
    requests: int = 0
    ok: int = 0
    errors: int = 0
    malformed_sent: int = 0
    malformed_rejected: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    throughput_rps: float = 0.0
    p50_ms: float = math.nan
    p90_ms: float = math.nan
    p99_ms: float = math.nan
    mean_ms: float = math.nan
    max_ms: float = math.nan
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict (without the raw latencies)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "latencies_ms"}

    def finish(self) -> LoadReport:
        """Compute throughput and percentiles from the counts and raw latencies; return self."""
        lat = self.latencies_ms
        self.throughput_rps = self.ok / self.duration_s if self.duration_s > 0 else 0.0
        self.p50_ms, self.p90_ms, self.p99_ms = (_percentile(lat, q) for q in (50, 90, 99))
        if lat:
            self.mean_ms = float(np.mean(lat))
            self.max_ms = float(np.max(lat))
        return self

    @classmethod
    def merge(cls, reports: list[LoadReport]) -> LoadReport:
        """Combine reports of interleaved segments of the same load into one."""
        out = cls(mode=reports[0].mode)
        for r in reports:
            for key in ("requests", "ok", "errors", "malformed_sent", "malformed_rejected", "duration_s"):
                setattr(out, key, getattr(out, key) + getattr(r, key))
            for code, n in r.status_counts.items():
                out.status_counts[code] = out.status_counts.get(code, 0) + n
            out.latencies_ms.extend(r.latencies_ms)
        return out.finish()

    def summary(self) -> str:
        """Return one human line."""
        return (
            f"{self.mode}: {self.ok}/{self.requests} ok, {self.errors} errors, {self.throughput_rps:.1f} req/s, "
            f"p50 {self.p50_ms:.2f} ms, p90 {self.p90_ms:.2f} ms, p99 {self.p99_ms:.2f} ms"
            + (f", {self.malformed_rejected}/{self.malformed_sent} malformed rejected" if self.malformed_sent else "")
        )


@dataclass(frozen=True, slots=True)
class _Request:
    body: bytes
    headers: dict[str, str]
    malformed: bool


class PayloadFactory:
    """Build request bodies matching a model's inputs.

    Args:
        metadata: the model metadata document (``GET /v2/models/NAME``).
        payload: "json" or "binary".
        batch: rows per request.
        seq_len: (min, max) for dynamic non-batch axes.
        seed: random seed.
        pool: distinct bodies pre-built per length (building is not measured).
    """

    def __init__(self, metadata: dict[str, Any], payload: Payload, *, batch: int = 1, seq_len: tuple[int, int] = (16, 16), seed: int = 0, pool: int = 8) -> None:
        self._rng = np.random.default_rng(seed)
        self._inputs = metadata["inputs"]
        self._payload = payload
        self._batch = batch
        lo, hi = seq_len
        if not 1 <= lo <= hi:
            raise ConfigError(f"--seq-len must be MIN:MAX with 1 <= MIN <= MAX; got {lo}:{hi}")
        self._lengths = list(range(lo, hi + 1))
        dynamic = any(d < 0 for spec in self._inputs for d in spec["shape"][1:])
        lengths = self._lengths if dynamic else [lo]
        self._bodies = {n: [self._build(n) for _ in range(pool)] for n in lengths}
        self._dynamic = dynamic

    def _array(self, spec: dict[str, Any], length: int) -> np.ndarray:
        shape = [self._batch] + [length if d < 0 else d for d in spec["shape"][1:]]
        dtype = DATATYPE_TO_DTYPE[spec["datatype"]]
        if "mask" in spec["name"]:
            return np.ones(shape, dtype=dtype)
        if dtype.kind in "iu":
            return self._rng.integers(1, 1000, size=shape).astype(dtype)
        if dtype.kind == "b":
            return self._rng.integers(0, 2, size=shape).astype(bool)
        return self._rng.standard_normal(shape).astype(dtype)

    def _build(self, length: int) -> _Request:
        arrays = {s["name"]: (s, self._array(s, length)) for s in self._inputs}
        if self._payload == "json":
            doc = {"inputs": [{"name": n, "datatype": s["datatype"], "shape": list(a.shape), "data": a.ravel().tolist()} for n, (s, a) in arrays.items()]}
            return _Request(json.dumps(doc).encode(), {"Content-Type": "application/json"}, False)
        head = {
            "inputs": [
                {"name": n, "datatype": s["datatype"], "shape": list(a.shape), "parameters": {"binary_data_size": a.nbytes}}
                for n, (s, a) in arrays.items()
            ],
            "parameters": {"binary_data_output": True},
        }
        hb = json.dumps(head).encode()
        body = hb + b"".join(np.ascontiguousarray(a).tobytes() for _, a in arrays.values())
        return _Request(body, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(hb))}, False)

    def _malformed(self) -> _Request:
        kind = int(self._rng.integers(0, 4))
        spec = self._inputs[0]
        if kind == 0:
            body = b'{"inputs": [ {"name": '
        elif kind == 1:
            body = json.dumps({"inputs": [{"name": "no_such_input", "datatype": spec["datatype"], "shape": [1], "data": [0]}]}).encode()
        elif kind == 2:
            body = json.dumps({"inputs": [{"name": spec["name"], "datatype": spec["datatype"], "shape": [1, 3], "data": [0, 0]}]}).encode()
        else:
            body = json.dumps({"inputs": [{"name": spec["name"], "datatype": "BOOL" if spec["datatype"] != "BOOL" else "FP32", "shape": [1], "data": [1]}]}).encode()
        return _Request(body, {"Content-Type": "application/json"}, True)

    def next(self, malformed_share: float = 0.0) -> _Request:
        """Return the next request body (malformed with probability ``malformed_share``)."""
        if malformed_share and self._rng.random() < malformed_share:
            return self._malformed()
        length = int(self._rng.choice(self._lengths)) if self._dynamic else self._lengths[0]
        pool = self._bodies[length]
        return pool[int(self._rng.integers(0, len(pool)))]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


async def run_load(config: LoadConfig, *, progress: Callable[[float], None] | None = None) -> LoadReport:
    """Send the configured load and report latency percentiles, throughput and errors.

    Raises:
        ConfigError: the server does not answer or does not know the model.
    """
    import httpx

    if config.rate is None and config.concurrency < 1:
        raise ConfigError(f"--concurrency must be at least 1; got {config.concurrency}")
    if config.rate is not None and config.rate <= 0:
        raise ConfigError(f"--rate must be positive; got {config.rate}")
    if not 0 <= config.malformed_share < 1:
        raise ConfigError(f"--malformed-share must be in [0, 1); got {config.malformed_share}")
    base = config.url.rstrip("/")
    path = f"/v2/models/{config.model}" + (f"/versions/{config.version}" if config.version else "")
    width = config.concurrency if config.rate is None else 1000
    limits = httpx.Limits(max_connections=width, max_keepalive_connections=width)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=config.timeout_s) as client:
        try:
            meta = await client.get(path)
        except httpx.HTTPError as err:
            raise ConfigError(f"cannot reach {base}: {type(err).__name__}: {err}") from err
        if meta.status_code != 200:
            raise ConfigError(f"{base}{path} answered {meta.status_code}: {meta.text[:200]}")
        factory = PayloadFactory(meta.json(), config.payload, batch=config.batch, seq_len=config.seq_len, seed=config.seed)
        infer = f"{path}/infer"
        mode = f"open loop {config.rate:g} req/s" if config.rate is not None else f"closed loop x{config.concurrency}"
        report = LoadReport(mode=mode)
        latencies = report.latencies_ms
        loop = asyncio.get_running_loop()
        start = loop.time()
        measure_from = start + config.warmup_s
        stop = measure_from + config.duration_s

        async def one(req: _Request) -> None:
            t0 = loop.time()
            try:
                r = await client.post(infer, content=req.body, headers=req.headers)
                code = str(r.status_code)
                ok = r.status_code == 200
            except httpx.HTTPError as err:
                code, ok = type(err).__name__, False
            t1 = loop.time()
            if t0 < measure_from:
                return
            report.requests += 1
            report.status_counts[code] = report.status_counts.get(code, 0) + 1
            if req.malformed:
                report.malformed_sent += 1
                report.malformed_rejected += int(code.startswith("4"))
                if not code.startswith("4"):
                    report.errors += 1
            elif ok:
                report.ok += 1
                latencies.append((t1 - t0) * 1000)
            else:
                report.errors += 1
            if progress is not None:
                progress(min(1.0, (t1 - start) / (stop - start)))

        if config.rate is None:
            async def worker() -> None:
                while loop.time() < stop:
                    await one(factory.next(config.malformed_share))

            await asyncio.gather(*(worker() for _ in range(config.concurrency)))
        else:
            rng = np.random.default_rng(config.seed + 1)
            pending: set[asyncio.Task[None]] = set()
            t = loop.time()
            while True:
                t += float(rng.exponential(1.0 / config.rate))
                if t >= stop:
                    break
                delay = t - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = loop.create_task(one(factory.next(config.malformed_share)))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)
        report.duration_s = max(1e-9, loop.time() - measure_from)
    return report.finish()
