"""`modelpress serve`: an Open Inference Protocol v2 server over artifact directories."""

from __future__ import annotations

import os
from pathlib import Path

import typer


def serve(
    model_dir: Path = typer.Option(None, "--model-dir", help="Serve every artifact directory inside DIR under its folder name."),
    registry: str = typer.Option(None, "--registry", envvar="MODELPRESS_REGISTRY", help="Registry URL to serve --model from."),
    model: list[str] = typer.Option(None, "--model", help="Serve a registry version: NAME, NAME@ALIAS or NAME@vN (repeatable)."),
    config_file: Path = typer.Option(None, "--config", help="YAML server config (flags given here override it)."),
    host: str = typer.Option(None, "--host", help="Address to bind; 127.0.0.1 unless told otherwise."),
    port: int = typer.Option(None, "--port", help="TCP port (default 8000)."),
    backend: str = typer.Option(None, "--backend", help="onnxruntime, openvino or torch, for every model."),
    threads: int = typer.Option(None, "--threads", help="Intra-op threads per model instance."),
    instances: int = typer.Option(None, "--instances", help="Model instances per version, each on its own thread."),
    max_batch_size: int = typer.Option(None, "--max-batch-size", help="Most rows per model call."),
    max_queue_delay_ms: float = typer.Option(None, "--max-queue-delay-ms", help="Longest wait for a fuller batch while the model is busy."),
    max_queue_size: int = typer.Option(None, "--max-queue-size", help="Requests waiting per version before 503 + Retry-After."),
    timeout_s: float = typer.Option(None, "--timeout-s", help="Per-request deadline in seconds (504 past it)."),
    padding: str = typer.Option(None, "--padding", help="Variable-length inputs: pad, bucket or none."),
    no_batching: bool = typer.Option(False, "--no-batching", help="Run every request on its own (for comparison)."),
    max_body_bytes: int = typer.Option(None, "--max-body-bytes", help="Largest request body accepted (413 past it)."),
    token: str = typer.Option(
        None, "--admin-token", "--token", envvar=["MODELPRESS_ADMIN_TOKEN", "MODELPRESS_TOKEN"],
        help="Bearer token of the management API (rollout changes); without one its writes are disabled.",
    ),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="One JSON line per request on stderr."),
    ray: bool = typer.Option(False, "--ray", help="Deploy on Ray Serve (the local Ray instance, or RAY_ADDRESS) instead of uvicorn."),
) -> None:
    """Serve models over the Open Inference Protocol v2 (KServe / Triton REST, JSON and binary tensors).

    Dynamic batching per model version, Prometheus metrics at /metrics,
    health at /v2/health/live and /v2/health/ready. Ctrl-C drains in-flight
    requests before exiting.

    Example:

        modelpress serve --model-dir artifacts/ --port 8000 --max-batch-size 8

        modelpress serve --model resnet18-int8@production --registry sqlite:///.modelpress/registry.db
    """
    from modelpress.cli.common import status
    from modelpress.serve.config import ServeConfig
    from modelpress.serve.server import load_runners, run_server

    base = ServeConfig.from_file(config_file) if config_file else ServeConfig()
    data = base.model_dump()
    top = {"model_dir": model_dir, "registry": registry, "registry_models": tuple(model) if model else None, "host": host, "port": port, "max_body_bytes": max_body_bytes, "token": token}
    data.update({k: v for k, v in top.items() if v is not None})
    data["access_log"] = access_log and base.access_log
    batching = {
        "max_batch_size": max_batch_size, "max_queue_delay_ms": max_queue_delay_ms, "max_queue_size": max_queue_size,
        "timeout_s": timeout_s, "padding": padding, "instances": instances,
    }
    batching = {k: v for k, v in batching.items() if v is not None}
    if no_batching:
        batching["enabled"] = False
    model = {k: v for k, v in {"backend": backend, "threads": threads}.items() if v is not None}
    for entry in [data["default_model"], *data["models"].values()]:
        entry.update(model)
        entry["batching"].update(batching)
    config = ServeConfig.parse(data, where="serve flags")

    if ray:
        from modelpress.serve.ray_serve import run_ray

        run_ray(config)
        return
    with status("loading models"):
        runners = load_runners(config)
    if config.access_log:
        from modelpress.serve.server import log_requests_to_stderr

        log_requests_to_stderr()
    names = ", ".join(sorted({f"{r.name}@{r.version}" for r in runners}))
    typer.echo(f"serving {names} on http://{config.host}:{config.port} (pid {os.getpid()})", err=True)
    run_server(config, runners)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
