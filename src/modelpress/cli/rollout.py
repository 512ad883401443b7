"""`modelpress rollout ...`: read and change a running server's traffic policies (management API)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

ServerOpt = typer.Option(
    "http://127.0.0.1:8000", "--server", envvar="MODELPRESS_SERVER", show_envvar=True, help="Base URL of the modelpress server."
)
TokenOpt = typer.Option(
    None, "--token", envvar="MODELPRESS_ADMIN_TOKEN", show_envvar=True,
    help="Management token of the server (its --admin-token); needed for every change.",
)
JsonOpt = typer.Option(False, "--json", help="Print the server's JSON answer instead of a summary.")
ReasonOpt = typer.Option("", "--reason", help="Why; recorded in the registry's policy history.")
ByOpt = typer.Option(None, "--by", help="Who makes the change (default: user@host).")


def _actor(by: str | None) -> str:
    if by:
        return by
    from modelpress.registry.store import default_actor

    return default_actor()


def call(server: str, method: str, path: str, *, token: str | None = None, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """Send one management request and return its JSON; HTTP failures become modelpress errors.

    Raises:
        ConfigError: the server is unreachable, refused the token, or refused the change.
        NotFoundError: the model or version is unknown to the server.
    """
    import httpx

    from modelpress.errors import ConfigError, NotFoundError

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = server.rstrip("/") + path
    try:
        response = httpx.request(method, url, json=body, headers=headers, timeout=300.0)
    except httpx.HTTPError as err:
        raise ConfigError(f"cannot reach the server at {server} ({type(err).__name__}: {err}); is it running? check --server") from err
    try:
        doc = response.json()
    except ValueError:
        doc = {"error": response.text[:500]}
    if response.status_code == 404:
        raise NotFoundError(f"{method} {path}: {doc.get('error', 'not found')}")
    if response.status_code in (401, 403):
        hint = "pass --token or set MODELPRESS_ADMIN_TOKEN" if not token else "check --token against the server's --admin-token"
        raise ConfigError(f"{method} {path} refused ({response.status_code}): {doc.get('error', '')}; {hint}")
    if response.status_code >= 400:
        raise ConfigError(f"{method} {path} failed ({response.status_code}): {doc.get('error', doc)}")
    return doc


def _print_status(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    models = doc["models"] if "models" in doc else [doc]
    for model in models:
        policy = model["policy"]
        table = Table(title=f"{model['model']}: {json.dumps(policy)}", title_justify="left")
        for column in ("version", "share", "state", "QPS", "p50 ms", "p99 ms", "errors", "in flight"):
            table.add_column(column, justify="left" if column in ("version", "state") else "right")
        for version, info in model["versions"].items():
            live = info["live"]
            share = model["split"].get(version, 0.0)
            state = ("serving" if share > 0 else "shadow") if info["routed"] else "warm" if info["warm"] else "loaded"
            table.add_row(
                version, f"{share:.1%}", state, f"{live['qps']:.1f}",
                _ms(live["p50_ms"]), _ms(live["p99_ms"]), str(live["errors"]), str(info["in_flight"]),
            )
        console.print(table)
        if "shadow" in model:
            s = model["shadow"]
            agreement = "-" if s["top1_agreement"] is None else f"{s['top1_agreement']:.2%}"
            console.print(f"  shadow: {s['requests']} compared, top-1 agreement {agreement}, max |diff| {s['max_abs_diff']:.4g}, errors {s['errors']}")
        if "canary" in model:
            c = model["canary"]
            console.print(
                f"  canary: {c['state']}, step {c['step'] + 1}/{len(c['steps'])} at {c['share']:.0%}, "
                f"{c['samples']} candidate samples; {c['reason']}"
            )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _print_change(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    event = doc.get("event")
    if isinstance(event, dict) and "event" in event:  # load --switch nests the switch event
        event = event["event"]
    if "loaded" in doc:
        typer.echo(f"loaded {doc['status']['model']}@{doc['loaded']} (warm)")
    if event:
        typer.echo(f"{event['action']}: {event['model']} now {json.dumps(event['policy'])} ({doc.get('took_ms', 0):.1f} ms)")


def _weights(pairs: list[str]) -> dict[str, float]:
    from modelpress.errors import ConfigError

    weights = {}
    for pair in pairs:
        version, sep, weight = pair.partition("=")
        try:
            weights[version] = float(weight)
        except ValueError:
            sep = ""
        if not sep or not version:
            raise ConfigError(f"split weights look like VERSION=WEIGHT (e.g. v3=0.9 v4=0.1); got {pair!r}")
    return weights


def register(app: typer.Typer) -> None:
    """Add the `rollout` command group to the CLI."""
    group = typer.Typer(
        name="rollout",
        help="Traffic policies of a running server: A/B split, shadow, canary, promote, rollback.\n\n"
        "Example: modelpress rollout status --server http://127.0.0.1:8000",
        no_args_is_help=True,
    )

    def change(server: str, token: str | None, model: str, action: str, body: dict[str, Any], as_json: bool) -> None:
        _print_change(call(server, "POST", f"/management/models/{model}/{action}", token=token, body=body), as_json)

    @group.command("status")
    def status(
        model: str = typer.Argument(None, help="One model (default: every model)."),
        server: str = ServerOpt, as_json: bool = JsonOpt,
    ) -> None:
        """Show each model's policy, traffic split, live latency and QPS, shadow agreement, canary progress.

        Example: modelpress rollout status digits --json
        """
        doc = call(server, "GET", f"/management/models/{model}" if model else "/management/status")
        if as_json:
            typer.echo(json.dumps(doc, indent=2))
        else:
            _print_status(doc)

    @group.command("load")
    def load(
        model: str = typer.Argument(..., help="Served model name."),
        version: str = typer.Option(None, "--version", help="Version name to serve it as (default from the registry: vN)."),
        artifact_dir: Path = typer.Option(None, "--artifact-dir", help="Artifact directory on the server's machine."),
        ref: str = typer.Option(None, "--ref", help="Registry reference, e.g. digits@v4 or digits@candidate."),
        switch: bool = typer.Option(False, "--switch", help="Send all traffic to it once warm (hot swap)."),
        server: str = ServerOpt, token: str = TokenOpt, reason: str = ReasonOpt, by: str = ByOpt, as_json: bool = JsonOpt,
    ) -> None:
        """Load a version, warm it up, and (with --switch) swap all traffic to it without dropping a request.

        Example: modelpress rollout load digits --ref digits@v4 --switch --reason "retrained"
        """
        body = {"version": version, "artifact_dir": str(artifact_dir) if artifact_dir else None, "ref": ref,
                "switch": switch, "reason": reason, "by": _actor(by)}
        change(server, token, model, "versions", body, as_json)

    @group.command("switch")
    def switch_(
        model: str = typer.Argument(..., help="Served model name."),
        version: str = typer.Argument(..., help="A loaded version."),
        server: str = ServerOpt, token: str = TokenOpt, reason: str = ReasonOpt, by: str = ByOpt, as_json: bool = JsonOpt,
    ) -> None:
        """Send all traffic to a loaded version (the previous one stays warm for rollback).

        Example: modelpress rollout switch digits v4
        """
        change(server, token, model, "switch", {"version": version, "reason": reason, "by": _actor(by)}, as_json)

    @group.command("split")
    def split(
        model: str = typer.Argument(..., help="Served model name."),
        weights: list[str] = typer.Argument(..., help="VERSION=WEIGHT pairs, e.g. v3=0.9 v4=0.1."),
        salt: str = typer.Option("", "--salt", help="Reshuffles which callers land where, keeping the shares."),
        server: str = ServerOpt, token: str = TokenOpt, reason: str = ReasonOpt, by: str = ByOpt, as_json: bool = JsonOpt,
    ) -> None:
        """Split traffic by weight; callers sending the caller-key header stay on one version.

        Example: modelpress rollout split digits v3=0.9 v4=0.1
        """
        body = {"weights": _weights(weights), "salt": salt, "reason": reason, "by": _actor(by)}
        change(server, token, model, "split", body, as_json)

    @group.command("shadow")
    def shadow(
        model: str = typer.Argument(..., help="Served model name."),
        candidate: str = typer.Argument(..., help="A loaded version to mirror requests to."),
        share: float = typer.Option(0.1, "--share", help="Fraction of requests mirrored, in (0, 1]."),
        primary: str = typer.Option(None, "--primary", help="Version answering clients (default: the one serving now)."),
        server: str = ServerOpt, token: str = TokenOpt, reason: str = ReasonOpt, by: str = ByOpt, as_json: bool = JsonOpt,
    ) -> None:
        """Mirror a share of requests to a candidate and compare its answers; clients never see them.

        Example: modelpress rollout shadow digits v4 --share 0.1
        """
        body = {"candidate": candidate, "share": share, "primary": primary, "reason": reason, "by": _actor(by)}
        change(server, token, model, "shadow", body, as_json)

    @group.command("canary")
    def canary(
        model: str = typer.Argument(..., help="Served model name."),
        candidate: str = typer.Argument(..., help="A loaded version to move traffic to."),
        stable: str = typer.Option(None, "--stable", help="Baseline version (default: the one serving now)."),
        steps: str = typer.Option("0.05,0.25,0.5,1.0", "--steps", help="Candidate traffic shares, rising, ending at most 1."),
        min_samples_per_step: int = typer.Option(100, "--min-samples-per-step", help="Candidate requests per step at least."),
        max_samples: int = typer.Option(20_000, "--max-samples", help="Roll back after this many candidate requests without a verdict."),
        gate: str = typer.Option(None, "--gate", help='Gate settings as JSON, e.g. \'{"alpha": 0.01, "disagreement": null}\'.'),
        server: str = ServerOpt, token: str = TokenOpt, reason: str = ReasonOpt, by: str = ByOpt, as_json: bool = JsonOpt,
    ) -> None:
        """Start a canary: traffic moves step by step while a sequential test promotes or rolls back.

        Example: modelpress rollout canary digits v4 --steps 0.05,0.25,1 --min-samples-per-step 200
        """
        from modelpress.errors import ConfigError

        try:
            step_list = [float(s) for s in steps.split(",") if s.strip()]
            gate_doc = json.loads(gate) if gate else {}
        except ValueError as err:
            raise ConfigError(f"--steps is a comma-separated list of shares and --gate a JSON object; {err}") from err
        body = {
            "candidate": candidate, "stable": stable, "steps": step_list, "min_samples_per_step": min_samples_per_step,
            "max_samples": max_samples, "gate": gate_doc, "reason": reason, "by": _actor(by),
        }
        change(server, token, model, "canary", body, as_json)

    @group.command("promote")
    def promote(
        model: str = typer.Argument(..., help="Served model name."),
        version: str = typer.Option(None, "--version", help="The version to promote (needed for an A/B split)."),
        server: str = ServerOpt, token: str = TokenOpt, reason: str = ReasonOpt, by: str = ByOpt, as_json: bool = JsonOpt,
    ) -> None:
        """Send all traffic to the candidate of a canary, shadow or split now.

        Example: modelpress rollout promote digits --reason "gate green, dashboards fine"
        """
        change(server, token, model, "promote", {"version": version, "reason": reason, "by": _actor(by)}, as_json)

    @group.command("rollback")
    def rollback(
        model: str = typer.Argument(..., help="Served model name."),
        server: str = ServerOpt, token: str = TokenOpt, reason: str = ReasonOpt, by: str = ByOpt, as_json: bool = JsonOpt,
    ) -> None:
        """Undo the latest policy change in one call (the previous version is still warm).

        Example: modelpress rollout rollback digits --reason "p99 regression"
        """
        change(server, token, model, "rollback", {"reason": reason, "by": _actor(by)}, as_json)

    @group.command("unload")
    def unload(
        model: str = typer.Argument(..., help="Served model name."),
        version: str = typer.Argument(..., help="A loaded version no policy routes to."),
        server: str = ServerOpt, token: str = TokenOpt, as_json: bool = JsonOpt,
    ) -> None:
        """Drain and unload a version that neither the current nor the previous policy uses.

        Example: modelpress rollout unload digits v2
        """
        doc = call(server, "DELETE", f"/management/models/{model}/versions/{version}", token=token)
        typer.echo(json.dumps(doc, indent=2) if as_json else f"unloaded {model}@{version}")

    app.add_typer(group, name="rollout")
