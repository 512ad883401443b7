"""`modelpress advise`: roofline latency, energy and cost per device, before you buy."""

from __future__ import annotations

from pathlib import Path

import typer


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def _batches(value: str) -> list[int]:
    from modelpress.errors import ConfigError

    try:
        return [int(v) for v in _split(value) or []]
    except ValueError as err:
        raise ConfigError(f"--batch takes comma-separated integers such as 1,8; got {value!r}") from err


def advise_command(
    model: str = typer.Argument(..., help="Model spec, artifact directory or .onnx file."),
    devices: str | None = typer.Option(None, "--devices", help="Comma-separated device ids (default: all). See --list-devices."),
    batch: str = typer.Option("1", "--batch", help="Comma-separated batch sizes (samples per inference call), e.g. 1,8."),
    precision: str | None = typer.Option(None, "--precision", help="Comma-separated: fp32,fp16,bf16,int8 (default: the model's own)."),
    catalog: Path | None = typer.Option(None, "--catalog", help="YAML file adding or overriding devices."),
    sort: str = typer.Option("latency", "--sort", help="Rank by latency, cost or energy."),
    calibrate: bool = typer.Option(False, "--calibrate", help="Measure the model here and correct same-class devices."),
    calibration: Path | None = typer.Option(None, "--calibration", help="Reuse the calibrations of an earlier --json report."),
    threads: int = typer.Option(2, "--threads", help="Threads for the calibration run."),
    max_seconds: float = typer.Option(10.0, "--max-seconds", help="Time budget of the calibration run."),
    seq_len: int = typer.Option(16, "--seq-len", help="Sequence length for text models."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a latency-vs-cost PNG here."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the report as JSON here ('-' for stdout)."),
    list_devices: bool = typer.Option(False, "--list-devices", help="Print the catalogue and exit."),
) -> None:
    """Estimate latency, utilisation, energy and cost of MODEL on each catalogued device.

    Example: modelpress advise torchvision:resnet18 --precision fp32,int8 --calibrate --plot advise.png
    """
    import json
    import sys

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from modelpress.advise.advisor import advise, make_config, profile_spec
    from modelpress.advise.calibrate import load_calibrations
    from modelpress.advise.catalog import load_catalog
    from modelpress.advise.report import COLUMNS, rows
    from modelpress.advise.report import plot as write_plot

    to_stderr = json_out is not None and str(json_out) == "-"
    stream = sys.stderr if to_stderr else sys.stdout
    # a pipe gets the full table width rather than rich's 80-column default
    console = Console(stderr=to_stderr, width=None if stream.isatty() else 200)
    cat = load_catalog(catalog)
    if list_devices:
        table = Table("id", "name", "class", "fp32 / int8 TOPS", "GB/s", "W", "price", "source")
        for d in cat.devices.values():
            price = f"${d.hourly_usd}/h" if d.hourly_usd is not None else f"${d.price_usd:g} / {d.lifetime_years:g} y"
            tops = f"{d.peak_tops.fp32 or '-'} / {d.peak_tops.int8 or '-'}"
            table.add_row(d.id, d.name, d.calibration_class, tops, f"{d.memory_bandwidth_gbs:g}", f"{d.power_w:g}", price, d.source)
        console.print(table)
        return
    config = make_config(
        devices=_split(devices), precisions=_split(precision), batches=_batches(batch), sort=sort, calibrate=calibrate,
        threads=threads, max_seconds=max_seconds, seq_len=seq_len,
    )
    saved = load_calibrations(calibration) if calibration else None
    with console.status(f"profiling {model}"):
        target = profile_spec(model, seq_len=seq_len)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console,
                  disable=not calibrate) as bar:
        task = bar.add_task(f"measuring {target.profile.name} ({target.precision}, {target.backend}) here", total=1.0)
        report = advise(target, config, catalog=cat, calibrations=saved,
                        progress=lambda done: bar.update(task, completed=done))

    if json_out is not None:
        text = json.dumps(report.to_dict(), indent=2)
        if str(json_out) == "-":
            sys.stdout.write(text + "\n")
        else:
            json_out.write_text(text + "\n")
    if plot is not None:
        write_plot(report.estimates, plot, title=f"{report.profile.name}: latency vs cost per device")
    if json_out is None or str(json_out) != "-":
        p = report.profile
        console.print(f"[bold]{p.name}[/]: {p.macs / 1e9:.3f} GMACs, {p.params / 1e6:.2f} M params, batch {', '.join(map(str, config.batches))}")
        table = Table(*COLUMNS)
        for row in rows(report.estimates):
            table.add_row(*row)
        console.print(table)
        for cal in report.calibrations:
            console.print(f"measured here ({cal.runtime}, {cal.precision}, batch {cal.batch}): {cal.measured_ms:.2f} ms ±{cal.measured_ci95_rel:.0%}; "
                          f"estimated for {cal.device}: {cal.estimated_ms:.2f} ms; ratio {cal.ratio:.2f}")
        console.print(f"[dim]{report.trust}[/]")
        console.print("[dim]Figures are vendor peak specs from the catalogue (modelpress advise --list-devices shows sources).[/]")


def register(app: typer.Typer) -> None:
    """Add the `advise` command."""
    app.command("advise", help=advise_command.__doc__)(advise_command)
