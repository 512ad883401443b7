"""The management API and the dashboard: read and change each model's traffic policy over HTTP.

Reads (``GET``) are open; every write needs ``Authorization: Bearer <token>``
(``--admin-token`` / ``MODELPRESS_ADMIN_TOKEN``). A server started without a
token refuses writes with 403 rather than leaving them open.

=======  ===========================================  ==========================================
method   path                                          does
=======  ===========================================  ==========================================
GET      /management/status                           every model (what the dashboard polls)
GET      /management/models/{name}                     one model: policy, versions, live traffic
GET      /management/models/{name}/history             policy changes recorded in the registry
POST     /management/models/{name}/versions            load (dir or registry ref) + warm; ``switch``
DELETE   /management/models/{name}/versions/{v}        drain and unload a version no policy uses
POST     /management/models/{name}/switch              all traffic to a loaded version (hot swap)
POST     /management/models/{name}/policy              any policy spec (single, ab, shadow, canary)
POST     /management/models/{name}/split               A/B split by weight
POST     /management/models/{name}/shadow              mirror a share of requests to a candidate
POST     /management/models/{name}/canary              progressive canary under the SPRT gate
POST     /management/models/{name}/promote             all traffic to the candidate
POST     /management/models/{name}/rollback            undo the latest change
GET      /dashboard                                    the HTML dashboard
=======  ===========================================  ==========================================
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from modelpress.errors import ConfigError, NotFoundError
from modelpress.serve.canary_stats import GateConfig
from modelpress.serve.rollout import RolloutControl, RolloutOptions
from modelpress.serve.router import PolicyEvent

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from modelpress.registry import Registry

log = logging.getLogger(__name__)

DASHBOARD_DIR = Path(__file__).parent / "dashboard"
_DASHBOARD_FILES = {"index.html": "text/html", "dashboard.js": "text/javascript", "dashboard.css": "text/css"}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    by: str | None = Field(None, max_length=200, description="who makes the change (default: api)")
    reason: str = Field("", max_length=2000)


class LoadBody(_Body):
    """Load a version from an artifact directory (on the server) or the registry."""

    version: str | None = Field(None, min_length=1, max_length=64)
    artifact_dir: str | None = None
    ref: str | None = None
    switch: bool = False


class SwitchBody(_Body):
    """All traffic to one loaded version."""

    version: str = Field(min_length=1, max_length=64)


class PolicyBody(_Body):
    """Any policy spec, as in docs/rollout.md."""

    policy: dict[str, Any]


class SplitBody(_Body):
    """An A/B split by weight, sticky per caller key."""

    weights: dict[str, float]
    salt: str = ""


class ShadowBody(_Body):
    """Mirror ``share`` of requests to ``candidate``; ``primary`` defaults to the version serving now."""

    candidate: str
    primary: str | None = None
    share: float = Field(0.1, gt=0.0, le=1.0)


class CanaryBody(_Body):
    """A canary of ``candidate`` against ``stable`` (default: the version serving now)."""

    candidate: str
    stable: str | None = None
    steps: list[float] = Field(default_factory=lambda: [0.05, 0.25, 0.5, 1.0])
    min_samples_per_step: int = Field(100, ge=1)
    max_samples: int = Field(20_000, ge=1)
    gate: GateConfig = Field(default_factory=GateConfig)
    compare: bool = True


class PromoteBody(_Body):
    """Promote the candidate (``version`` is needed for an A/B split)."""

    version: str | None = None


class RollbackBody(_Body):
    """Undo the latest change."""


def _json_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _serving_version(control: RolloutControl, model: str) -> str:
    """Return the version a new shadow or canary compares against: the one answering now."""
    policy = control.router.policy(model).as_dict()
    if policy["kind"] == "single":
        return policy["version"]
    raise ConfigError(
        f"model {model!r} runs a {policy['kind']} policy; name the baseline (`stable` / `primary`) "
        "or end the current policy first (promote or rollback)."
    )


def management_routes(control: RolloutControl, *, token: str | None) -> list[Route]:
    """Return the management and dashboard routes over ``control``; writes need ``token``."""
    from modelpress.serve.app import check_bearer

    Handler = Callable[[Request, Any], Awaitable[Any]]

    def write(body_type: type[_Body], act: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            refused = check_bearer(request, token)
            if refused is not None:
                return refused
            try:
                raw = await request.body()
                body = body_type.model_validate_json(raw or b"{}")
            except ValidationError as err:
                problems = "; ".join(f"`{'.'.join(str(p) for p in e['loc']) or 'body'}`: {e['msg']}" for e in err.errors())
                return _json_error(400, f"invalid {request.url.path} body: {problems}")
            started = time.perf_counter()
            try:
                out = await act(request, body)
            except NotFoundError as err:
                return _json_error(404, str(err))
            except ConfigError as err:
                return _json_error(400, str(err))
            except Exception as err:  # a failed load must not take the server down
                log.exception("management call %s failed", request.url.path)
                return _json_error(500, f"{type(err).__name__}: {err}")
            doc = _event_doc(out) if isinstance(out, PolicyEvent) else out
            doc["took_ms"] = round((time.perf_counter() - started) * 1000, 3)
            doc["status"] = control.model_status(request.path_params["name"])
            return JSONResponse(doc)

        return endpoint

    def name(request: Request) -> str:
        return request.path_params["name"]

    def by(body: _Body) -> str:
        return body.by or "api"

    async def load(request: Request, body: LoadBody) -> dict[str, Any]:
        loaded = await control.load_version(
            name(request), body.version, artifact_dir=Path(body.artifact_dir) if body.artifact_dir else None, ref=body.ref
        )
        doc: dict[str, Any] = {"loaded": loaded.runner.version}
        if body.switch:
            doc["event"] = _event_doc(control.switch(name(request), loaded.runner.version, by=by(body), reason=body.reason))
        return doc

    async def switch(request: Request, body: SwitchBody) -> PolicyEvent:
        return control.switch(name(request), body.version, by=by(body), reason=body.reason)

    async def policy(request: Request, body: PolicyBody) -> PolicyEvent:
        return control.set_policy(name(request), body.policy, by=by(body), reason=body.reason)

    async def split(request: Request, body: SplitBody) -> PolicyEvent:
        spec = {"kind": "ab", "weights": body.weights, "salt": body.salt}
        return control.set_policy(name(request), spec, by=by(body), reason=body.reason)

    async def shadow(request: Request, body: ShadowBody) -> PolicyEvent:
        primary = body.primary or _serving_version(control, name(request))
        spec = {"kind": "shadow", "primary": primary, "candidate": body.candidate, "share": body.share}
        return control.set_policy(name(request), spec, by=by(body), reason=body.reason)

    async def canary(request: Request, body: CanaryBody) -> PolicyEvent:
        stable = body.stable or _serving_version(control, name(request))
        spec = {
            "kind": "canary", "stable": stable, "candidate": body.candidate, "steps": body.steps,
            "min_samples_per_step": body.min_samples_per_step, "max_samples": body.max_samples,
            "gate": body.gate.model_dump(), "compare": body.compare,
        }
        return control.set_policy(name(request), spec, by=by(body), reason=body.reason)

    async def promote(request: Request, body: PromoteBody) -> PolicyEvent:
        return control.promote(name(request), body.version, by=by(body), reason=body.reason)

    async def rollback(request: Request, body: RollbackBody) -> PolicyEvent:
        return control.rollback(name(request), by=by(body), reason=body.reason)

    async def unload(request: Request) -> Response:
        refused = check_bearer(request, token)
        if refused is not None:
            return refused
        try:
            await control.unload(name(request), request.path_params["version"])
        except NotFoundError as err:
            return _json_error(404, str(err))
        except ConfigError as err:
            return _json_error(409, str(err))
        return JSONResponse({"unloaded": request.path_params["version"], "status": control.model_status(name(request))})

    async def status(request: Request) -> Response:
        return JSONResponse(control.status())

    async def model_status(request: Request) -> Response:
        try:
            return JSONResponse(control.model_status(name(request)))
        except NotFoundError as err:
            return _json_error(404, str(err))

    async def history(request: Request) -> Response:
        if control.registry is None:
            return _json_error(404, "the server has no registry, so no policy history is kept; start it with --registry URL")
        from modelpress.registry import policy_history

        limit = request.query_params.get("limit", "100")
        rows = policy_history(control.registry, name(request), limit=int(limit) if limit.isdigit() else 100)
        return JSONResponse({"model": name(request), "history": [r.as_dict() for r in rows]})

    async def dashboard_file(request: Request) -> Response:
        filename = request.path_params.get("file", "index.html")
        media = _DASHBOARD_FILES.get(filename)
        if media is None:
            return _json_error(404, f"no dashboard file {filename!r}")
        return FileResponse(DASHBOARD_DIR / filename, media_type=media, headers={"Cache-Control": "no-cache"})

    async def dashboard_root(request: Request) -> Response:
        return RedirectResponse("/dashboard/")

    base = "/management/models/{name}"
    return [
        Route("/management/status", status),
        Route(base, model_status),
        Route(f"{base}/history", history),
        Route(f"{base}/versions", write(LoadBody, load), methods=["POST"]),
        Route(f"{base}/versions/{{version}}", unload, methods=["DELETE"]),
        Route(f"{base}/switch", write(SwitchBody, switch), methods=["POST"]),
        Route(f"{base}/policy", write(PolicyBody, policy), methods=["POST"]),
        Route(f"{base}/split", write(SplitBody, split), methods=["POST"]),
        Route(f"{base}/shadow", write(ShadowBody, shadow), methods=["POST"]),
        Route(f"{base}/canary", write(CanaryBody, canary), methods=["POST"]),
        Route(f"{base}/promote", write(PromoteBody, promote), methods=["POST"]),
        Route(f"{base}/rollback", write(RollbackBody, rollback), methods=["POST"]),
        Route("/dashboard", dashboard_root),
        Route("/dashboard/", dashboard_file),
        Route("/dashboard/{file}", dashboard_file),
    ]


def _event_doc(event: PolicyEvent) -> dict[str, Any]:
    return {
        "event": {
            "model": event.model, "action": event.action, "policy": dict(event.policy),
            "previous": dict(event.previous) if event.previous is not None else None,
            "by": event.by, "reason": event.reason, "at": event.at.isoformat(),
        }
    }


def install_rollout(
    app: Starlette,
    *,
    token: str | None,
    registry: Registry | None = None,
    options: RolloutOptions | None = None,
) -> RolloutControl:
    """Put traffic policies, the management API and the dashboard on an app made by ``create_app``.

    Policy history goes to ``registry``, else to the registry ``config.registry`` names
    (opened here, closed at shutdown), else nowhere. Sets ``app.state.rollout``; wraps the app's lifespan so that shutdown waits
    for shadow calls and drains and writes out the queued policy history.
    """
    config = app.state.config
    owned = None
    if registry is None and getattr(config, "registry", None):
        from modelpress.registry import open_registry

        registry = owned = open_registry(config.registry)
    control = RolloutControl(app.state.repository, app.state.metrics, config, registry=registry, options=options)
    # an empty token (e.g. MODELPRESS_ADMIN_TOKEN="") must disable writes, not accept "Bearer "
    app.router.routes.extend(management_routes(control, token=token or None))
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        async with inner(app_) as state:
            await control.started()
            try:
                yield state
            finally:
                await control.close()
                if owned is not None:
                    owned.close()

    app.router.lifespan_context = lifespan
    app.state.rollout = control
    return control


__all__ = ["DASHBOARD_DIR", "install_rollout", "management_routes"]
