"""The Starlette app: Open Inference Protocol v2 routes over the model repository.

Parsing lives in :mod:`protocol`, batching in :mod:`batcher`, model loading in
:mod:`runner`, metrics in :mod:`metrics`; this module only wires them to HTTP.
Traffic policies plug in through ``app.state.repository.models[name].router``
(see :mod:`repository` and docs/serve.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelpress import __version__
from modelpress.errors import InferenceInputError, NotFoundError, OverloadedError
from modelpress.serve.batcher import Clock, DynamicBatcher
from modelpress.serve.config import ServeConfig
from modelpress.serve.metrics import CONTENT_TYPE, ServerMetrics
from modelpress.serve.protocol import HEADER_LENGTH, encode_infer_response, error_body, parse_infer_request, validate_inputs
from modelpress.serve.repository import LoadedVersion, ModelEntry, ModelRepository
from modelpress.serve.runner import ModelRunner

if TYPE_CHECKING:
    from modelpress.registry import Registry

log = logging.getLogger(__name__)
access_log = logging.getLogger("modelpress.serve.access")


class _BodyTooLarge(Exception):
    pass


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(message), status_code=status, media_type="application/json", headers=headers)


def build_repository(
    runners: Sequence[ModelRunner], config: ServeConfig, metrics: ServerMetrics, *, clock: Clock | None = None
) -> ModelRepository:
    """Wrap each runner in a batcher and metrics, grouped by model name (batchers not started)."""
    repo = ModelRepository()
    for runner in runners:
        policy = dataclasses.replace(config.for_model(runner.name).batching.policy(), instances=runner.instances)
        batcher = DynamicBatcher(
            runner.run, policy, pad=runner.pad_specs(), seq_outputs=runner.seq_outputs, clock=clock
        )
        holder: list[LoadedVersion] = []
        vm = metrics.for_version(
            runner.name, runner.version, depth=lambda b=batcher: b.depth, in_flight=lambda h=holder: h[0].in_flight
        )
        loaded = LoadedVersion(runner=runner, batcher=batcher, metrics=vm)
        holder.append(loaded)
        batcher.observer = vm
        entry = repo.models.get(runner.name)
        if entry is None:
            repo.models[runner.name] = ModelEntry(runner.name, {runner.version: loaded}, runner.version)
        else:
            entry.versions[runner.version] = loaded
            # the highest version answers by default, as in Triton's "latest" policy
            entry.default_version = max(entry.versions, key=lambda v: (len(v), v))
    return repo


class _AccessLog:
    """Give each request an id and log one JSON line when it finishes."""

    def __init__(self, app: ASGIApp, enabled: bool) -> None:
        self.app = app
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                rid = value.decode("latin-1")[:64]
                break
        rid = rid or uuid.uuid4().hex[:16]
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.enabled and access_log.isEnabledFor(logging.INFO):
                access_log.info(json.dumps({
                    "event": "request", "request_id": rid, "method": scope["method"], "path": scope["path"],
                    "status": status, "ms": round((time.perf_counter() - started) * 1000, 3),
                }))


def check_bearer(request: Request, token: str | None) -> Response | None:
    """Return a 401 response unless the request carries ``Authorization: Bearer <token>``.

    For management endpoints; with no token configured they are refused outright.
    """
    if token is None:
        return _error(403, "management API is disabled: start the server with a token (--admin-token or MODELPRESS_ADMIN_TOKEN)")
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return _error(401, "missing or wrong bearer token in the Authorization header")
    return None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge(f"request body is {declared} bytes; the limit is {limit} (--max-body-bytes)")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge(f"request body exceeds the limit of {limit} bytes (--max-body-bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    runners: Sequence[ModelRunner],
    config: ServeConfig | None = None,
    *,
    clock: Clock | None = None,
    rollout: bool = True,
    registry: Registry | None = None,
) -> Starlette:
    """Build the OIP v2 app serving ``runners`` (each one model version).

    ``app.state`` holds ``repository`` (the router seam), ``metrics`` and ``config``.
    With ``rollout`` (the default) traffic policies, the management API and the
    dashboard are installed (``app.state.rollout``, see :mod:`management`); policy
    changes are recorded in ``registry``, or in the one ``config.registry`` names.
    """
    config = config or ServeConfig()
    metrics = ServerMetrics()
    repo = build_repository(runners, config, metrics, clock=clock)
    retry_after = {"Retry-After": str(config.retry_after_s)}
    state: dict[str, Any] = {"ready": False}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for loaded in repo.versions():
            loaded.batcher.start()
        state["ready"] = True
        log.info("serving %s", ", ".join(f"{e.name}@{e.default_version}" for e in repo.models.values()))
        try:
            yield
        finally:
            state["ready"] = False
            # uvicorn has already waited for open requests; finish anything still queued.
            for loaded in repo.versions():
                await loaded.batcher.close()
                loaded.runner.close()

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        ok = state["ready"]
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse({"name": "modelpress", "version": __version__, "extensions": ["binary_tensor_data"]})

    def _entry_version(request: Request) -> tuple[ModelEntry, LoadedVersion]:
        entry = repo.get(request.path_params["name"])
        version = request.path_params.get("version") or entry.route(request.headers)
        return entry, entry.get(version)

    async def model_metadata(request: Request) -> Response:
        try:
            entry, loaded = _entry_version(request)
        except NotFoundError as err:
            return _error(404, str(err))
        doc = loaded.runner.metadata()
        if "version" not in request.path_params:
            doc["versions"] = sorted(entry.versions)
        return JSONResponse(doc)

    async def model_ready(request: Request) -> Response:
        try:
            entry, loaded = _entry_version(request)
        except NotFoundError as err:
            return _error(404, str(err))
        ok = state["ready"]
        return JSONResponse({"name": entry.name, "version": loaded.runner.version, "ready": ok}, status_code=200 if ok else 400)

    async def infer(request: Request) -> Response:
        started = time.perf_counter()
        # The body is read before routing so that picking a version and queueing on it
        # happen with no await in between: a hot swap then drains the old version by
        # waiting for its in_flight count, and no request that picked it can fail.
        try:
            body = await _read_body(request, config.max_body_bytes)
        except _BodyTooLarge as err:
            metrics.unrouted.labels("413").inc()
            return _error(413, str(err))
        try:
            entry, loaded = _entry_version(request)
        except NotFoundError as err:
            metrics.unrouted.labels("404").inc()
            return _error(404, str(err))
        runner = loaded.runner
        code = 200
        try:
            parsed = parse_infer_request(body, request.headers.get(HEADER_LENGTH))
            inputs = validate_inputs(parsed.inputs, runner.inputs, model=runner.name)
            if parsed.outputs is not None:
                unknown = [o.name for o in parsed.outputs if o.name not in runner.output_names]
                if unknown:
                    raise InferenceInputError(
                        f"unknown output {', '.join(map(repr, unknown))} (model {runner.name!r} has {', '.join(runner.output_names)})"
                    )
            result = await loaded.infer(inputs, timeout_s=parsed.timeout_s)
            encoded = encode_infer_response(
                model=runner.name, version=runner.version, request=parsed, output_names=runner.output_names, outputs=result.outputs
            )
            loaded.metrics.queue.observe(result.queue_s)
            loaded.metrics.compute.observe(result.compute_s)
            observe = getattr(entry.router, "observe", None)
            if observe is not None:
                observe(runner.version, inputs, result)
            headers = None if encoded.header_length is None else {"Inference-Header-Content-Length": str(encoded.header_length)}
            return Response(encoded.body, media_type=encoded.content_type, headers=headers)
        except InferenceInputError as err:
            code = 400
            return _error(code, str(err))
        except OverloadedError as err:
            code = 503
            return _error(code, str(err), retry_after)
        except TimeoutError as err:
            code = 504
            return _error(code, str(err))
        except Exception as err:  # a model failure must not take the server down
            code = 500
            log.exception("inference on %s@%s failed", runner.name, runner.version)
            return _error(code, f"inference failed: {type(err).__name__}: {err}")
        finally:
            elapsed = time.perf_counter() - started
            loaded.metrics.request(code)
            loaded.metrics.total.observe(elapsed)
            record = getattr(entry.router, "record", None)
            if record is not None:
                # every routed request, failed or not: what a canary gate watches
                record(runner.version, latency_s=elapsed, code=code)

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    model = "/v2/models/{name}"
    version = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_metadata),
        Route(model, model_metadata),
        Route(version, model_metadata),
        Route(f"{model}/ready", model_ready),
        Route(f"{version}/ready", model_ready),
        Route(f"{model}/infer", infer, methods=["POST"]),
        Route(f"{version}/infer", infer, methods=["POST"]),
        Route("/metrics", prometheus),
    ]
    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return _error(status, f"{request.method} {request.url.path}: {getattr(exc, 'detail', 'not found')}")

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found})
    app.add_middleware(_AccessLog, enabled=config.access_log)
    app.state.repository = repo
    app.state.metrics = metrics
    app.state.config = config
    if rollout:
        from modelpress.serve.management import install_rollout

        install_rollout(app, token=config.token, registry=registry)
    return app
