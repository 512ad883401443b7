"""Dynamic batching of inference requests: plain asyncio, no HTTP.

One :class:`DynamicBatcher` per model version. Callers ``await submit(inputs)``;
worker tasks (one per model instance) take compatible requests off a bounded
queue, stack them into one batch, run it through an injected ``execute``
coroutine and hand each caller back its own rows.

Policy, in the order it applies:

* a full queue refuses at once with :class:`~modelpress.errors.OverloadedError`
  (the server answers 503 + Retry-After);
* an idle model dispatches at once with whatever is queued (no waiting for a
  batch to fill when nothing else would use the time);
* while other instances are busy, a worker waits up to ``max_queue_delay_s``
  after the oldest request for a fuller batch;
* requests are compatible when their variable-length axes fall in the same
  bucket (``padding="bucket"``), always (``"pad"``: pad to the longest), or
  only when their shapes match exactly (``"none"``);
* a request still waiting at its deadline fails with :class:`TimeoutError`
  and is never run.

Time comes from a :class:`Clock`, so tests drive the batcher with a fake clock
instead of sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from modelpress.errors import OverloadedError

log = logging.getLogger(__name__)

Padding = Literal["pad", "bucket", "none"]
Execute = Callable[[Mapping[str, np.ndarray], int], Awaitable[Sequence[np.ndarray]]]


class Cancellable(Protocol):
    """A scheduled callback that can be called off."""

    def cancel(self) -> None:
        """Call the callback off (no effect once it ran)."""
        ...


class Clock(Protocol):
    """Where the batcher reads time and schedules wake-ups."""

    def now(self) -> float:
        """Return the current time in seconds."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Cancellable:
        """Run ``callback`` on the loop once ``now() >= when``."""
        ...


class LoopClock:
    """The event loop's monotonic clock."""

    def now(self) -> float:
        """Return the running loop's time."""
        return asyncio.get_running_loop().time()

    def call_at(self, when: float, callback: Callable[[], None]) -> Cancellable:
        """Schedule ``callback`` with the loop's own timer (no task per request)."""
        return asyncio.get_running_loop().call_at(when, callback)


class _FakeTimer:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A clock that moves only when told to; for tests of timing behaviour."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        """Return the fake time."""
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> Cancellable:
        """Run ``callback`` when :meth:`advance` passes ``when``."""
        timer = _FakeTimer(callback)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    def advance(self, seconds: float) -> None:
        """Move time forward and run every timer now due, in order."""
        self._now += seconds
        while self._timers and self._timers[0][0] <= self._now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How a model version batches.

    Attributes:
        max_batch_size: most rows in one model call (>= 1).
        max_queue_delay_s: longest a request waits for a fuller batch while
            the model is busy elsewhere (seconds, >= 0).
        max_queue_size: most requests waiting; more get 503.
        timeout_s: default per-request deadline from arrival (None: none).
        enabled: False runs every request on its own (for comparison).
        padding: how variable-length inputs share a batch (see module doc).
        buckets: bucket upper bounds for ``padding="bucket"`` (ascending).
        instances: model instances run in parallel (one worker each).
        dispatch_when_idle: dispatch at once when no instance is busy.
    """

    max_batch_size: int = 8
    max_queue_delay_s: float = 0.002
    max_queue_size: int = 256
    timeout_s: float | None = 30.0
    enabled: bool = True
    padding: Padding = "pad"
    buckets: tuple[int, ...] = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
    instances: int = 1
    dispatch_when_idle: bool = True


@dataclass(frozen=True, slots=True)
class PadSpec:
    """The variable (non-batch) axes of one input and the value that pads them."""

    axes: tuple[int, ...]
    value: float | int = 0


@dataclass(frozen=True, slots=True)
class Result:
    """What a caller gets back: its own rows and where the time went."""

    outputs: tuple[np.ndarray, ...]
    queue_s: float
    compute_s: float
    batch_rows: int


@dataclass(frozen=True, slots=True)
class _Pending:
    inputs: Mapping[str, np.ndarray]
    rows: int
    key: Hashable
    lengths: tuple[tuple[int, ...], ...]  # per padded input, its sizes on the padded axes
    enqueued_at: float
    future: asyncio.Future[Result] = field(compare=False)


@dataclass(frozen=True, slots=True)
class _Batch:
    requests: tuple[_Pending, ...]
    inputs: Mapping[str, np.ndarray]
    rows: int
    targets: tuple[tuple[int, ...], ...]  # padded sizes per padded input


class BatchObserver(Protocol):
    """Receives one call per executed batch (metrics)."""

    def on_batch(self, rows: int, requests: int) -> None:
        """Record a batch of ``rows`` rows from ``requests`` requests."""
        ...


class DynamicBatcher:
    """Queue requests for one model version and run them in batches.

    Args:
        execute: coroutine running one stacked batch on instance ``i``
            (e.g. a thread-pool call into ``Session.run``).
        policy: batching policy.
        pad: variable axes per input name; inputs not named are never padded.
        seq_outputs: which outputs have the padded length on axis 1 (cut back
            to each caller's own length); none when not given.
        clock: time source; the loop's clock unless testing.
        observer: told about every executed batch.
    """

    def __init__(
        self,
        execute: Execute,
        policy: BatchPolicy = BatchPolicy(),  # noqa: B008 - frozen, safe to share
        *,
        pad: Mapping[str, PadSpec] | None = None,
        seq_outputs: Sequence[bool] = (),
        clock: Clock | None = None,
        observer: BatchObserver | None = None,
    ) -> None:
        self._execute = execute
        self.policy = policy
        self._pad = dict(pad or {})
        self._pad_names = tuple(self._pad)
        self._seq_outputs = tuple(seq_outputs)
        self._clock = clock or LoopClock()
        self.observer = observer
        self._queue: deque[_Pending] = deque()
        self._arrived: asyncio.Event | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._busy = 0
        self._closing = False

    @property
    def depth(self) -> int:
        """Return how many requests wait in the queue."""
        return len(self._queue)

    @property
    def busy(self) -> int:
        """Return how many instances are running a batch."""
        return self._busy

    def start(self) -> None:
        """Start one worker task per instance on the running loop."""
        if self._workers:
            return
        self._arrived = asyncio.Event()
        self._workers = [
            asyncio.get_running_loop().create_task(self._worker(i), name=f"batcher-worker-{i}")
            for i in range(self.policy.instances)
        ]

    async def close(self) -> None:
        """Stop taking requests, run everything already queued, then stop the workers."""
        self._closing = True
        if self._arrived is not None:
            self._arrived.set()
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    def _key(self, inputs: Mapping[str, np.ndarray]) -> tuple[Hashable, tuple[tuple[int, ...], ...]]:
        lengths = tuple(tuple(inputs[n].shape[a] for a in self._pad[n].axes) for n in self._pad_names if n in inputs)
        mode = self.policy.padding
        if mode == "none":
            return tuple(a.shape[1:] for a in inputs.values()), lengths
        if mode == "bucket":
            return tuple(tuple(self._bucket(x) for x in ls) for ls in lengths), lengths
        return None, lengths

    def _bucket(self, length: int) -> int:
        for bound in self.policy.buckets:
            if length <= bound:
                return bound
        return length  # longer than every bucket: batch only with the same length

    async def submit(self, inputs: Mapping[str, np.ndarray], *, timeout_s: float | None = None) -> Result:
        """Queue one request and wait for its own output rows.

        Args:
            inputs: named arrays sharing a leading batch dimension.
            timeout_s: deadline from now; the policy's default when None.

        Raises:
            OverloadedError: the queue is full or the batcher is closing.
            TimeoutError: the request was not finished before its deadline.
            Exception: whatever ``execute`` raised for this request's batch.
        """
        if self._closing:
            raise OverloadedError("the server is shutting down; retry on another replica")
        if self._arrived is None:
            raise RuntimeError("DynamicBatcher.start() must run before submit()")
        if len(self._queue) >= self.policy.max_queue_size:
            raise OverloadedError(
                f"queue is full ({self.policy.max_queue_size} requests waiting); retry shortly"
            )
        rows = next(iter(inputs.values())).shape[0]
        key, lengths = self._key(inputs)
        now = self._clock.now()
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(inputs, rows, key, lengths, now, fut))
        self._arrived.set()
        timeout = self.policy.timeout_s if timeout_s is None else timeout_s
        timer = None
        if timeout is not None:

            def expire() -> None:
                if not fut.done():
                    fut.set_exception(TimeoutError(f"request did not finish within its {timeout:.3g} s timeout"))

            timer = self._clock.call_at(now + timeout, expire)
        try:
            # a caller that goes away cancels ``fut``, which frees its place in the queue
            return await fut
        finally:
            if timer is not None:
                timer.cancel()

    async def _wait_arrival(self, until: float | None) -> None:
        arrived = self._arrived
        if arrived is None:
            raise RuntimeError("DynamicBatcher.start() must run first")
        arrived.clear()
        if until is None:
            await arrived.wait()
            return
        # the timer only wakes the worker; it re-checks what to do itself
        timer = self._clock.call_at(until, arrived.set)
        try:
            await arrived.wait()
        finally:
            timer.cancel()

    def _drop_finished(self) -> None:
        # Timed-out or abandoned requests leave their future cancelled; never run them.
        while self._queue and self._queue[0].future.done():
            self._queue.popleft()

    def _ready_rows(self, head: _Pending) -> int:
        return sum(p.rows for p in self._queue if p.key == head.key and not p.future.done())

    async def _worker(self, instance: int) -> None:
        policy = self.policy
        while True:
            self._drop_finished()
            if not self._queue:
                if self._closing:
                    return
                await self._wait_arrival(None)
                continue
            if policy.enabled and not (policy.dispatch_when_idle and self._busy == 0) and not self._closing:
                head = self._queue[0]
                until = head.enqueued_at + policy.max_queue_delay_s
                if self._ready_rows(head) < policy.max_batch_size and self._clock.now() < until:
                    await self._wait_arrival(until)
                    continue
            batch = self._take()
            if batch is None:
                continue
            await self._run(batch, instance)

    def _take(self) -> _Batch | None:
        self._drop_finished()
        if not self._queue:
            return None
        head = self._queue.popleft()
        chosen = [head]
        rows = head.rows
        if self.policy.enabled:
            keep: deque[_Pending] = deque()
            while self._queue:
                p = self._queue.popleft()
                if p.future.done():
                    continue
                if p.key == head.key and rows + p.rows <= self.policy.max_batch_size:
                    chosen.append(p)
                    rows += p.rows
                else:
                    keep.append(p)
            self._queue = keep
        return self._stack(tuple(chosen), rows)

    def _stack(self, requests: tuple[_Pending, ...], rows: int) -> _Batch:
        targets = tuple(tuple(max(sizes) for sizes in zip(*(r.lengths[i] for r in requests))) for i in range(len(requests[0].lengths)))
        if len(requests) == 1:
            return _Batch(requests, requests[0].inputs, rows, targets)
        stacked: dict[str, np.ndarray] = {}
        pad_index = {n: i for i, n in enumerate(n for n in self._pad_names if n in requests[0].inputs)}
        for name in requests[0].inputs:
            arrays = [r.inputs[name] for r in requests]
            i = pad_index.get(name)
            if i is not None:
                spec = self._pad[name]
                arrays = [_pad_to(a, spec.axes, targets[i], spec.value) for a in arrays]
            stacked[name] = np.concatenate(arrays, axis=0)
        return _Batch(requests, stacked, rows, targets)

    async def _run(self, batch: _Batch, instance: int) -> None:
        self._busy += 1
        started = self._clock.now()
        try:
            outputs = await self._execute(batch.inputs, instance)
        except Exception as err:  # the model failed: every caller in the batch hears why
            log.warning("batch of %d rows failed: %s", batch.rows, err)
            for p in batch.requests:
                if not p.future.done():
                    p.future.set_exception(err)
            return
        finally:
            self._busy -= 1
        compute = self._clock.now() - started
        if self.observer is not None:
            self.observer.on_batch(batch.rows, len(batch.requests))
        offset = 0
        seq = self._seq_outputs
        for p in batch.requests:
            mine = tuple(
                _unpad(o[offset : offset + p.rows], p.lengths, batch.targets) if i < len(seq) and seq[i] else o[offset : offset + p.rows]
                for i, o in enumerate(outputs)
            )
            offset += p.rows
            if not p.future.done():
                p.future.set_result(Result(mine, started - p.enqueued_at, compute, batch.rows))


def _pad_to(arr: np.ndarray, axes: tuple[int, ...], target: tuple[int, ...], value: float | int) -> np.ndarray:
    widths = [(0, 0)] * arr.ndim
    need = False
    for axis, size in zip(axes, target):
        if arr.shape[axis] < size:
            widths[axis] = (0, size - arr.shape[axis])
            need = True
    return np.pad(arr, widths, constant_values=value) if need else arr


def _unpad(out: np.ndarray, lengths: tuple[tuple[int, ...], ...], targets: tuple[tuple[int, ...], ...]) -> np.ndarray:
    # A per-token output (batch, seq, ...) came back at the padded length; cut it
    # to the caller's own. The runner finds which outputs have a sequence axis 1.
    for mine, padded in zip(lengths, targets):
        for own, full in zip(mine, padded):
            if own != full and out.shape[1] == full:
                return out[:, :own]
    return out
