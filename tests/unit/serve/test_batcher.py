"""Batcher behaviour under a fake clock and a fake model (no sleeps, no HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import numpy as np
import pytest

from modelpress.errors import OverloadedError
from modelpress.serve.batcher import BatchPolicy, DynamicBatcher, FakeClock, PadSpec

pytestmark = pytest.mark.anyio


class FakeModel:
    """A model whose every call waits until the test releases it; output = input * 10 + row sum."""

    def __init__(self) -> None:
        self.calls: list[dict[str, np.ndarray]] = []
        self.instances: list[int] = []
        self.gates: list[asyncio.Future[None]] = []
        self.fail = False

    async def __call__(self, inputs: Mapping[str, np.ndarray], instance: int) -> list[np.ndarray]:
        self.calls.append(dict(inputs))
        self.instances.append(instance)
        gate = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        await gate
        if self.fail:
            raise RuntimeError("model exploded")
        x = inputs["x"]
        return [x * 10, x.reshape(len(x), -1).sum(axis=1)]

    def release(self, i: int = -1) -> None:
        self.gates[i].set_result(None)


async def settle(n: int = 20) -> None:
    """Let every ready task run (yields to the loop; no wall-clock waiting)."""
    for _ in range(n):
        await asyncio.sleep(0)


def rows(values: list[float]) -> dict[str, np.ndarray]:
    return {"x": np.asarray(values, dtype=np.float32).reshape(-1, 1)}


async def test_idle_model_dispatches_at_once_and_busy_model_batches_the_queue():
    clock, model = FakeClock(), FakeModel()
    b = DynamicBatcher(model, BatchPolicy(max_batch_size=4, max_queue_delay_s=1.0), clock=clock)
    b.start()
    first = asyncio.create_task(b.submit(rows([1])))
    await settle()
    # idle: dispatched with no clock movement at all
    assert len(model.calls) == 1 and model.calls[0]["x"].shape == (1, 1)
    later = [asyncio.create_task(b.submit(rows([v]))) for v in (2, 3, 4, 5, 6)]
    await settle()
    assert b.depth == 5 and len(model.calls) == 1
    model.release(0)
    await settle()
    # the freed model takes max_batch_size rows of the five waiting, oldest first
    assert [c["x"].ravel().tolist() for c in model.calls] == [[1], [2, 3, 4, 5]]
    model.release(1)
    await settle()
    model.release(2)
    await settle()
    assert model.calls[2]["x"].ravel().tolist() == [6]
    results = [t.result() for t in [first, *later]]
    # each caller gets exactly its own row back
    for value, res in zip([1, 2, 3, 4, 5, 6], results):
        np.testing.assert_array_equal(res.outputs[0], [[value * 10]])
        np.testing.assert_array_equal(res.outputs[1], [value])
    assert [r.batch_rows for r in results] == [1, 4, 4, 4, 4, 1]
    await b.close()


async def test_each_caller_gets_its_own_rows_with_multi_row_requests():
    clock, model = FakeClock(), FakeModel()
    b = DynamicBatcher(model, BatchPolicy(max_batch_size=8), clock=clock)
    b.start()
    blocker = asyncio.create_task(b.submit(rows([0])))
    await settle()
    reqs = [rows([i * 10 + k for k in range(n)]) for i, n in enumerate([3, 1, 2, 2], start=1)]
    tasks = [asyncio.create_task(b.submit(r)) for r in reqs]
    await settle()
    model.release(0)
    await settle()
    assert model.calls[1]["x"].shape == (8, 1)
    model.release(1)
    await settle()
    for r, t in zip(reqs, tasks):
        np.testing.assert_array_equal(t.result().outputs[0], r["x"] * 10)
    await blocker
    await b.close()


async def test_busy_instances_wait_max_queue_delay_for_a_fuller_batch():
    clock, model = FakeClock(), FakeModel()
    policy = BatchPolicy(max_batch_size=4, max_queue_delay_s=0.005, instances=2)
    b = DynamicBatcher(model, policy, clock=clock)
    b.start()
    t1 = asyncio.create_task(b.submit(rows([1])))
    await settle()
    assert len(model.calls) == 1  # instance 0 busy now
    t2 = asyncio.create_task(b.submit(rows([2])))
    await settle()
    assert len(model.calls) == 1  # instance 1 waits for more rows
    clock.advance(0.004)
    await settle()
    assert len(model.calls) == 1
    clock.advance(0.0011)
    await settle()
    assert len(model.calls) == 2 and model.calls[1]["x"].ravel().tolist() == [2]
    assert set(model.instances) == {0, 1}
    for i in range(2):
        model.release(i)
    await settle()
    assert t1.result().outputs[0].item() == 10 and t2.result().outputs[0].item() == 20
    await b.close()


async def test_busy_instance_dispatches_early_once_the_batch_is_full():
    clock, model = FakeClock(), FakeModel()
    b = DynamicBatcher(model, BatchPolicy(max_batch_size=2, max_queue_delay_s=10.0, instances=2), clock=clock)
    b.start()
    tasks = [asyncio.create_task(b.submit(rows([1])))]
    await settle()
    tasks += [asyncio.create_task(b.submit(rows([v]))) for v in (2, 3)]
    await settle()
    assert [c["x"].ravel().tolist() for c in model.calls] == [[1], [2, 3]]
    for i in range(2):
        model.release(i)
    await settle()
    await b.close()


async def test_full_queue_refuses_with_overloaded():
    model = FakeModel()
    b = DynamicBatcher(model, BatchPolicy(max_batch_size=1, max_queue_size=2), clock=FakeClock())
    b.start()
    tasks = [asyncio.create_task(b.submit(rows([0])))]
    await settle()  # running: the queue is empty again
    tasks += [asyncio.create_task(b.submit(rows([i]))) for i in (1, 2)]
    await settle()
    assert b.depth == 2
    with pytest.raises(OverloadedError, match="queue is full"):
        await b.submit(rows([9]))
    for _ in range(3):
        model.release(len(model.gates) - 1)
        await settle()
    assert [t.result().outputs[0].item() for t in tasks] == [0, 10, 20]
    await b.close()


async def test_request_times_out_in_the_queue_and_is_never_run():
    clock, model = FakeClock(), FakeModel()
    b = DynamicBatcher(model, BatchPolicy(max_batch_size=1, timeout_s=1.0), clock=clock)
    b.start()
    first = asyncio.create_task(b.submit(rows([1]), timeout_s=100.0))
    await settle()
    second = asyncio.create_task(b.submit(rows([2])))
    await settle()
    clock.advance(1.01)
    await settle()
    with pytest.raises(TimeoutError, match="1 s timeout"):
        second.result()
    model.release(0)
    await settle()
    assert first.result().outputs[0].item() == 10
    assert len(model.calls) == 1  # the expired request never reached the model
    await b.close()


async def test_model_failure_reaches_every_caller_of_the_batch_and_the_batcher_survives():
    model = FakeModel()
    b = DynamicBatcher(model, BatchPolicy(max_batch_size=4), clock=FakeClock())
    b.start()
    blocker = asyncio.create_task(b.submit(rows([0])))
    await settle()
    doomed = [asyncio.create_task(b.submit(rows([v]))) for v in (1, 2)]
    await settle()
    model.release(0)
    await settle()
    model.fail = True
    model.release(1)
    await settle()
    for t in doomed:
        with pytest.raises(RuntimeError, match="exploded"):
            t.result()
    model.fail = False
    after = asyncio.create_task(b.submit(rows([5])))
    await settle()
    model.release(2)
    await settle()
    assert after.result().outputs[0].item() == 50 and blocker.result().outputs[0].item() == 0
    await b.close()


async def test_batching_off_runs_one_request_per_call():
    model = FakeModel()
    b = DynamicBatcher(model, BatchPolicy(enabled=False), clock=FakeClock())
    b.start()
    tasks = [asyncio.create_task(b.submit(rows([v]))) for v in (1, 2, 3)]
    for i in range(3):
        await settle()
        model.release(i)
    await settle()
    assert [c["x"].shape[0] for c in model.calls] == [1, 1, 1]
    assert [t.result().outputs[0].item() for t in tasks] == [10, 20, 30]
    await b.close()


class SeqModel:
    """Masked sum over a padded sequence; also returns per-token values (batch, seq)."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.gate: asyncio.Future[None] | None = None

    async def __call__(self, inputs: Mapping[str, np.ndarray], instance: int) -> list[np.ndarray]:
        self.shapes.append(inputs["ids"].shape)
        if self.gate is not None:
            await self.gate
        ids, mask = inputs["ids"], inputs["mask"]
        return [(ids * mask).sum(axis=1), ids * 2]


@pytest.mark.parametrize(("padding", "calls"), [("pad", [(5, 40)]), ("bucket", [(4, 7), (1, 40)]), ("none", [(2, 3), (1, 5), (1, 7), (1, 40)])])
async def test_variable_length_requests_are_padded_or_bucketed_and_cut_back(padding, calls):
    model = SeqModel()
    pad = {"ids": PadSpec((1,), 0), "mask": PadSpec((1,), 0)}
    policy = BatchPolicy(max_batch_size=8, padding=padding, buckets=(8, 16))
    b = DynamicBatcher(model, policy, pad=pad, seq_outputs=(False, True), clock=FakeClock())
    b.start()
    model.gate = asyncio.get_running_loop().create_future()
    lengths = [3, 5, 7, 40, 3]
    reqs = [
        {"ids": np.arange(1, n + 1, dtype=np.int64)[None, :], "mask": np.ones((1, n), dtype=np.int64)} for n in lengths
    ]
    tasks = [asyncio.create_task(b.submit(r)) for r in reqs]
    await settle()
    model.gate.set_result(None)
    await settle(60)
    assert model.shapes[: len(calls)] == calls
    for n, t in zip(lengths, tasks):
        summed, per_token = t.result().outputs
        assert summed.tolist() == [n * (n + 1) // 2]  # padding never leaks into a caller's answer
        np.testing.assert_array_equal(per_token, np.arange(1, n + 1)[None, :] * 2)
    await b.close()


async def test_close_drains_the_queue_before_stopping():
    model = FakeModel()
    b = DynamicBatcher(model, BatchPolicy(max_batch_size=2), clock=FakeClock())
    b.start()
    tasks = [asyncio.create_task(b.submit(rows([v]))) for v in (1, 2, 3)]
    await settle()
    closing = asyncio.create_task(b.close())
    await settle()
    with pytest.raises(OverloadedError, match="shutting down"):
        await b.submit(rows([9]))
    model.release(0)
    await settle()
    model.release(1)
    await settle()
    await closing
    assert [t.result().outputs[0].item() for t in tasks] == [10, 20, 30]
