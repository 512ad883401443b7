"""Ray Serve deployment of the same app, runner and batcher, for more than one machine.

Each replica builds the ordinary Starlette app (``create_app``) at start-up
through Ray Serve's ``__serve_build_asgi_app__`` hook, so protocol, batching
and metrics are exactly those of ``modelpress serve``; Ray adds replicas,
placement and its own HTTP proxy in front. Ray is imported only inside these
functions (it is a heavy import).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from modelpress.serve.config import ServeConfig

log = logging.getLogger(__name__)


def build_application(config: ServeConfig, *, replicas: int = 1, cpus_per_replica: float = 1.0) -> Any:
    """Return a bound Ray Serve application serving ``config``'s models.

    Args:
        config: the server config; ``model_dir`` must be readable by every replica.
        replicas: number of replicas (each loads every model).
        cpus_per_replica: Ray CPUs reserved per replica.
    """
    from ray import serve

    from modelpress.serve.app import create_app
    from modelpress.serve.server import load_runners

    config_json = config.model_dump_json()

    class ModelpressReplica:
        """One replica: the models of ``config`` behind the OIP v2 app."""

        def __init__(self, config_json: str) -> None:
            self.config = ServeConfig.model_validate_json(config_json)

        def __serve_build_asgi_app__(self) -> Any:
            return create_app(load_runners(self.config), self.config)

    ingress = serve.ingress()(ModelpressReplica)
    deployment = serve.deployment(
        name="modelpress",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus_per_replica},
        max_ongoing_requests=max(64, config.default_model.batching.max_queue_size),
    )(ingress)
    return deployment.bind(config_json)


def deploy(config: ServeConfig, *, replicas: int = 1, cpus_per_replica: float = 1.0, blocking: bool = False) -> Any:
    """Start Serve's HTTP proxy on ``config.host:port`` and deploy the models; return the handle."""
    from ray import serve

    serve.start(http_options={"host": config.host, "port": config.port})
    app = build_application(config, replicas=replicas, cpus_per_replica=cpus_per_replica)
    return serve.run(app, name="modelpress", route_prefix="/", blocking=blocking)


def run_ray(config: ServeConfig) -> None:
    """Connect to Ray (``RAY_ADDRESS``, or a new local instance), deploy, and block until Ctrl-C."""
    import ray

    ray.init(address=os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True)
    deploy(config, blocking=True)
