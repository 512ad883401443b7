"""`modelpress registry ...`: list, inspect, compare, alias, roll back and clean registered versions."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from modelpress.registry import Registry

_REGISTRY_HELP = "SQLAlchemy URL of the registry (default: sqlite:///.modelpress/registry.db)."

RegistryOpt = typer.Option(None, "--registry", envvar="MODELPRESS_REGISTRY", help=_REGISTRY_HELP, show_envvar=True)
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")
ByOpt = typer.Option(None, "--by", help="Who makes the change (default: user@host).")


def _open(url: str | None) -> Registry:
    from modelpress.registry import Registry

    return Registry(url)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _console() -> Any:
    from rich.console import Console

    return Console()


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _metrics_summary(metadata: dict[str, Any]) -> str:
    metrics = metadata.get("metrics")
    if not isinstance(metrics, dict):
        return ""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(metrics.items())[:4])


def register(app: typer.Typer) -> None:
    """Add the `registry` command group to the CLI."""
    group = typer.Typer(
        name="registry",
        help="Versions, aliases, lineage and history of registered artifacts.\n\nExample: modelpress registry ls",
        no_args_is_help=True,
    )

    @group.command("ls")
    def ls(
        name: str = typer.Argument(None, help="A model name: list its versions instead of all models."),
        registry: str = RegistryOpt,
        as_json: bool = JsonOpt,
    ) -> None:
        """List models, or the versions of one model.

        Example: modelpress registry ls resnet18-int8
        """
        reg = _open(registry)
        if name is None:
            models = reg.models()
            if as_json:
                _print_json([m.as_dict() for m in models])
                return
            from rich.table import Table

            table = Table(title=f"models in {reg.url}")
            for column in ("model", "versions", "latest", "aliases", "created"):
                table.add_column(column, no_wrap=column in ("model", "aliases"))
            for m in models:
                aliases = ", ".join(f"{a}→v{v}" for a, v in m.aliases.items())
                table.add_row(m.name, str(m.versions), f"v{m.latest}" if m.latest else "-", aliases, _when(m.created_at))
            _console().print(table)
            return
        versions = reg.versions(name)
        if as_json:
            _print_json([v.as_dict() for v in versions])
            return
        from rich.table import Table

        table = Table(title=f"versions of {name}")
        for column in ("version", "digest", "size", "aliases", "metrics", "created", "by"):
            # names and aliases must stay whole; free text columns wrap instead
            table.add_column(column, no_wrap=column in ("version", "digest", "aliases"))
        for v in versions:
            table.add_row(
                f"v{v.number}", v.digest[:12], _size(v.size_bytes), ", ".join(v.aliases),
                _metrics_summary(dict(v.metadata)), _when(v.created_at), v.created_by,
            )
        _console().print(table)

    @group.command("show")
    def show(
        ref: str = typer.Argument(..., help="NAME, NAME@vN, NAME@ALIAS or NAME@sha256:PREFIX."),
        registry: str = RegistryOpt,
        as_json: bool = JsonOpt,
    ) -> None:
        """Show one version: digest, files, metadata, aliases, and where its bytes are.

        Example: modelpress registry show resnet18-int8@production
        """
        reg = _open(registry)
        info = reg.get(ref)
        path = reg.path(ref)
        data = {**info.as_dict(), "path": str(path)}
        if as_json:
            _print_json(data)
            return
        from rich.table import Table

        console = _console()
        table = Table(title=info.ref, show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value")
        table.add_row("digest", info.digest)
        table.add_row("aliases", ", ".join(info.aliases) or "-")
        table.add_row("size", _size(info.size_bytes))
        table.add_row("created", f"{_when(info.created_at)} by {info.created_by}")
        table.add_row("path", str(path))
        for rel, digest in info.files.items():
            table.add_row(f"file {rel}", digest[:16])
        for key, value in info.metadata.items():
            if key != "manifest":
                table.add_row(key, json.dumps(value, default=str))
        console.print(table)

    @group.command("diff")
    def diff(
        a: str = typer.Argument(..., help="First version, e.g. resnet18-int8@v1."),
        b: str = typer.Argument(..., help="Second version, e.g. resnet18-int8@v2."),
        registry: str = RegistryOpt,
        as_json: bool = JsonOpt,
    ) -> None:
        """Show what differs between two versions: metadata, files, size.

        Example: modelpress registry diff resnet18-int8@v1 resnet18-int8@production
        """
        result = _open(registry).diff(a, b)
        if as_json:
            _print_json(result)
            return
        from rich.table import Table

        table = Table(title=f"{result['a']} vs {result['b']}" + (" (same bytes)" if result["same_bytes"] else ""))
        for column in ("field", result["a"], result["b"]):
            table.add_column(column)
        table.add_row("size", _size(result["size_bytes"]["a"]), _size(result["size_bytes"]["b"]))
        for name, pair in result["files"].items():
            table.add_row(f"file {name}", str(pair["a"] or "-")[:16], str(pair["b"] or "-")[:16])
        for key, pair in result["metadata"].items():
            if key.startswith("manifest."):
                continue
            table.add_row(key, json.dumps(pair["a"], default=str), json.dumps(pair["b"], default=str))
        _console().print(table)

    @group.command("alias")
    def alias(
        name: str = typer.Argument(..., help="Model name."),
        alias_name: str = typer.Argument(..., metavar="ALIAS", help="Alias such as production or candidate."),
        version: str = typer.Argument(None, help="Version to point at (3, v3, another alias, sha256:PREFIX); omit with --history or --remove."),
        reason: str = typer.Option("", "--reason", help="Why: stored in the alias history."),
        by: str = ByOpt,
        remove: bool = typer.Option(False, "--remove", help="Delete the alias (kept in its history)."),
        history: bool = typer.Option(False, "--history", help="Show every move of this alias instead."),
        registry: str = RegistryOpt,
        as_json: bool = JsonOpt,
    ) -> None:
        """Point an alias at a version, remove it, or show its history.

        Example: modelpress registry alias resnet18-int8 production v4 --reason "beat v3 by 2 ms"
        """
        from modelpress.errors import ConfigError
        from modelpress.registry import alias_history

        reg = _open(registry)
        if history:
            events = alias_history(reg, name, alias_name)
            if as_json:
                _print_json([e.as_dict() for e in events])
                return
            _print_history(events, title=f"history of {name}@{alias_name}")
            return
        if remove:
            reg.remove_alias(name, alias_name, by=by, reason=reason)
            if as_json:
                _print_json({"model": name, "alias": alias_name, "removed": True})
            else:
                typer.echo(f"removed {name}@{alias_name}")
            return
        if version is None:
            raise ConfigError(f"give the VERSION for {name}@{alias_name} (e.g. v3), or pass --history / --remove.")
        selector: int | str = int(version) if version.isdigit() else version
        info = reg.set_alias(name, alias_name, selector, by=by, reason=reason)
        if as_json:
            _print_json({"model": name, "alias": alias_name, "version": info.number, "ref": info.ref})
        else:
            typer.echo(f"{name}@{alias_name} -> v{info.number} ({info.digest[:12]})")

    @group.command("rollback")
    def rollback(
        name: str = typer.Argument(..., help="Model name."),
        alias_name: str = typer.Option("production", "--alias", help="Alias to move back."),
        reason: str = typer.Option("", "--reason", help="Why: stored in the alias history."),
        by: str = ByOpt,
        registry: str = RegistryOpt,
        as_json: bool = JsonOpt,
    ) -> None:
        """Point an alias back at the version it held before its latest change.

        Example: modelpress registry rollback resnet18-int8 --reason "p99 regression"
        """
        info = _open(registry).rollback(name, alias_name, by=by, reason=reason)
        if as_json:
            _print_json({"model": name, "alias": alias_name, "version": info.number, "ref": info.ref})
        else:
            typer.echo(f"{name}@{alias_name} rolled back to v{info.number} ({info.digest[:12]})")

    @group.command("lineage")
    def lineage(
        ref: str = typer.Argument(..., help="A version, e.g. resnet18-int8@production."),
        registry: str = RegistryOpt,
        as_json: bool = JsonOpt,
    ) -> None:
        """Show what a version was made from and what was made from it, with the recipes.

        Example: modelpress registry lineage resnet18-int8@v2
        """
        result = _open(registry).lineage(ref)
        if as_json:
            _print_json(result)
            return
        from rich.tree import Tree

        tree = Tree(f"[bold]{result['version']}")
        up = tree.add("made from")
        for edge in result["ancestors"]:
            up.add(f"{edge['parent']} → {edge['child']}  {json.dumps(edge['recipe'], default=str)}")
        down = tree.add("made into")
        for edge in result["descendants"]:
            down.add(f"{edge['parent']} → {edge['child']}  {json.dumps(edge['recipe'], default=str)}")
        _console().print(tree)

    @group.command("history")
    def history(
        name: str = typer.Argument(..., help="Model name."),
        registry: str = RegistryOpt,
        as_json: bool = JsonOpt,
    ) -> None:
        """Show every alias move and traffic-policy change of a model, oldest first.

        Example: modelpress registry history resnet18-int8
        """
        from modelpress.registry import alias_history, policy_history

        reg = _open(registry)
        aliases = alias_history(reg, name)
        policies = policy_history(reg, name)
        if as_json:
            _print_json({"aliases": [e.as_dict() for e in aliases], "policies": [p.as_dict() for p in policies]})
            return
        _print_history(aliases, title=f"alias history of {name}")
        from rich.table import Table

        table = Table(title=f"traffic-policy history of {name}")
        for column in ("when", "action", "policy", "by", "reason"):
            table.add_column(column)
        for change in policies:
            table.add_row(_when(change.at), change.action, json.dumps(dict(change.policy), default=str)[:80], change.by, change.reason)
        _console().print(table)

    @group.command("register")
    def register_(
        name: str = typer.Argument(..., help="Model name to register under."),
        artifact: str = typer.Argument(..., help="Artifact directory (model.onnx + manifest.json)."),
        parent: list[str] = typer.Option([], "--parent", help="Version it was made from (repeatable), e.g. resnet18@v1."),
        metadata: str = typer.Option(None, "--metadata", help="JSON object of metadata (metrics, data hashes, ...)."),
        alias_name: str = typer.Option(None, "--alias", help="Also point this alias at the new version."),
        by: str = ByOpt,
        registry: str = RegistryOpt,
        as_json: bool = JsonOpt,
    ) -> None:
        """Record an artifact directory as the next version of a model.

        Example: modelpress registry register resnet18-int8 out/pq --parent resnet18@v1 --alias candidate
        """
        from modelpress.errors import ConfigError

        meta: dict[str, Any] = {}
        if metadata:
            try:
                meta = json.loads(metadata)
            except json.JSONDecodeError as err:
                raise ConfigError(f"--metadata must be a JSON object; got {metadata!r} ({err}).") from err
            if not isinstance(meta, dict):
                raise ConfigError(f"--metadata must be a JSON object; got {type(meta).__name__}.")
        reg = _open(registry)
        info = reg.register(name, artifact, metadata=meta, parents=parent, by=by)
        if alias_name:
            info = reg.set_alias(name, alias_name, info.number, by=by, reason="registered")
        if as_json:
            _print_json(info.as_dict())
        else:
            typer.echo(f"registered {info.ref} ({info.digest[:12]})")

    @group.command("gc")
    def gc(
        dry_run: bool = typer.Option(False, "--dry-run", help="Only report what would be removed."),
        registry: str = RegistryOpt,
        as_json: bool = JsonOpt,
    ) -> None:
        """Remove stored bytes no version references (left by crashed registers).

        Example: modelpress registry gc --dry-run
        """
        report = _open(registry).gc(dry_run=dry_run)
        if as_json:
            _print_json(report.as_dict())
            return
        verb = "would remove" if dry_run else "removed"
        typer.echo(
            f"{verb} {len(report.orphan_blobs)} orphan blob(s) and {len(report.stale_temp_dirs)} stale staging dir(s), "
            f"{_size(report.freed_bytes)}"
        )

    app.add_typer(group, name="registry")


def _print_history(events: list[Any], *, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in ("when", "alias", "action", "from", "to", "by", "reason"):
        table.add_column(column)
    for e in events:
        table.add_row(
            _when(e.at), e.alias, e.action, f"v{e.old_version}" if e.old_version else "-",
            f"v{e.new_version}" if e.new_version else "-", e.by, e.reason,
        )
    _console().print(table)
