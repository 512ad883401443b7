"""Closed-loop traffic that records which version answered each request (swap tests, benchmarks).

``with Traffic(url, "digits", body, concurrency=32) as t: ...`` keeps 32
requests in flight from a thread of its own until the block ends;
``t.answers`` then holds one :class:`Answer` per request: when it was sent and
answered (``time.perf_counter``, comparable with the caller's clock), its HTTP
status and the ``model_version`` that answered.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Answer:
    """One request: sent and answered (perf_counter seconds), status, answering version, output rows."""

    sent: float
    done: float
    status: int
    version: str | None
    output: tuple[float, ...] | None = None


class Traffic:
    """Send ``body`` to ``model``'s infer endpoint from ``concurrency`` closed-loop workers.

    Args:
        url: server base URL.
        model: model name.
        body: the OIP v2 JSON request body sent every time.
        concurrency: requests kept in flight.
        callers: distinct ``X-Caller-Id`` values cycled over (0: no header).
        keep_outputs: store each answer's first output (to check what clients got).
    """

    def __init__(
        self, url: str, model: str, body: Mapping[str, Any], *, concurrency: int = 32, callers: int = 0, keep_outputs: bool = False
    ) -> None:
        self.url = f"{url.rstrip('/')}/v2/models/{model}/infer"
        self.payload = json.dumps(body).encode()
        self.concurrency = concurrency
        self.callers = callers
        self.keep_outputs = keep_outputs
        self.answers: list[Answer] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="traffic", daemon=True)

    async def _run(self) -> None:
        import httpx

        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:
            await asyncio.gather(*(self._worker(client, i) for i in range(self.concurrency)))

    async def _worker(self, client: Any, index: int) -> None:
        n = index
        headers = {"Content-Type": "application/json"}
        while not self._stop.is_set():
            if self.callers:
                headers = {**headers, "X-Caller-Id": f"caller-{n % self.callers}"}
                n += self.concurrency
            sent = time.perf_counter()
            try:
                response = await client.post(self.url, content=self.payload, headers=headers)
            except Exception as err:  # a refused connection is a failed request, recorded as such
                self.answers.append(Answer(sent, time.perf_counter(), 0, None))
                self.errors.append(f"{type(err).__name__}: {err}")
                continue
            done = time.perf_counter()
            version, output = None, None
            if response.status_code == 200:
                doc = response.json()
                version = doc.get("model_version")
                if self.keep_outputs:
                    output = tuple(doc["outputs"][0]["data"])
            else:
                self.errors.append(f"{response.status_code}: {response.text[:200]}")
            self.answers.append(Answer(sent, done, response.status_code, version, output))

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop sending and wait for the requests in flight."""
        self._stop.set()
        self._thread.join(timeout=120)

    def failed(self) -> list[Answer]:
        """Return the answers that were not HTTP 200."""
        return [a for a in self.answers if a.status != 200]


def last_answer_from(answers: list[Answer], version: str, after: float) -> float | None:
    """Return how long after ``after`` the last answer from ``version`` came (None: none came after)."""
    times = [a.done for a in answers if a.version == version and a.done >= after]
    return max(times) - after if times else None


__all__ = ["Answer", "Traffic", "last_answer_from"]
