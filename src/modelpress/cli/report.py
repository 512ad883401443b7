"""`modelpress report ARTIFACT`: render an artifact's report.html again."""

from __future__ import annotations

from pathlib import Path

import typer

from modelpress.cli.common import console


def report(
    artifact: Path = typer.Argument(..., help="An artifact directory written by `modelpress compress`."),
    out: Path = typer.Option(None, "--out", "-o", help="Where to write the HTML (default: <artifact>.report.html beside it)."),
    search: Path = typer.Option(None, "--search", help="A search.json from `compress --search` to add the Pareto plot."),
) -> None:
    """Render the self-contained HTML report (tables and plots, no network) of an artifact.

    The artifact's own report.html is hashed in its manifest and never
    rewritten; this writes a fresh copy elsewhere.

    Example:

        modelpress report runs/mnist1d-mobile/artifact --out report.html
    """
    import json

    from modelpress.artifact import verify_artifact
    from modelpress.errors import ConfigError
    from modelpress.pipeline.report_html import render_report

    manifest = verify_artifact(artifact)
    found = None
    if search is not None:
        if not search.is_file():
            raise ConfigError(f"--search {search} does not exist; give the search.json a `compress --search` run wrote")
        found = json.loads(search.read_text())
    target = out or artifact.with_name(artifact.name + ".report.html")
    target.write_text(render_report(manifest, found))
    console.print(f"report: {target}")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
