"""`modelpress loadtest`: closed- or open-loop load against an OIP v2 server."""

from __future__ import annotations

import json

import typer

from modelpress.errors import ConfigError


def _seq_len(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        raise ConfigError(f"--seq-len must be N or MIN:MAX; got {text!r}") from None
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise ConfigError(f"--seq-len must be N or MIN:MAX; got {text!r}")


def loadtest(
    url: str = typer.Argument(..., help="Server base URL, e.g. http://127.0.0.1:8000."),
    model: str = typer.Option(..., "--model", help="Model name to call."),
    version: str = typer.Option(None, "--version", help="Pin one model version (default: the server's routing)."),
    concurrency: int = typer.Option(8, "--concurrency", "-c", help="Closed loop: concurrent workers."),
    rate: float = typer.Option(None, "--rate", "-r", help="Open loop: Poisson arrivals per second (overrides --concurrency)."),
    duration: float = typer.Option(10.0, "--duration", "-d", help="Seconds of measured load."),
    warmup: float = typer.Option(1.0, "--warmup", help="Seconds of unmeasured load first."),
    payload: str = typer.Option("binary", "--payload", help="json or binary tensors."),
    batch: int = typer.Option(1, "--batch", help="Rows per request."),
    seq_len: str = typer.Option("16", "--seq-len", help="Length of dynamic axes: N or MIN:MAX (drawn per request)."),
    malformed_share: float = typer.Option(0.0, "--malformed-share", help="Share of requests sent malformed on purpose."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Load-test an inference server; print p50/p90/p99, throughput and errors.

    Example:

        modelpress loadtest http://127.0.0.1:8000 --model resnet18 --concurrency 32 --duration 30
    """
    import asyncio

    from modelpress.cli.common import progress_bar
    from modelpress.serve.loadtest import LoadConfig, run_load

    if payload not in ("json", "binary"):
        raise ConfigError(f"--payload must be json or binary; got {payload!r}")
    config = LoadConfig(
        url=url, model=model, version=version, concurrency=concurrency, rate=rate, duration_s=duration,
        payload=payload, batch=batch, seq_len=_seq_len(seq_len), malformed_share=malformed_share,  # type: ignore[arg-type]
        warmup_s=warmup, seed=seed,
    )
    with progress_bar(f"loading {url}") as progress:
        report = asyncio.run(run_load(config, progress=progress))
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        typer.echo(report.summary())
        typer.echo(f"status codes: {json.dumps(report.status_counts, sort_keys=True)}")


def register(app: typer.Typer) -> None:
    app.command("loadtest")(loadtest)
