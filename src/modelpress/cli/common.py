"""Helpers every command shares: console, progress bars, list options, JSON output."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from modelpress.errors import ConfigError

# Wide enough for the bench table when output goes to a file or a pipe.
console = Console(width=None if sys.stdout.isatty() else 170)
err_console = Console(stderr=True)


def split_list(value: str, *, option: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    """Split ``a,b,c``; check each item against ``allowed``."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ConfigError(f"{option} is empty; give a comma-separated list")
    if allowed is not None:
        bad = [i for i in items if i not in allowed]
        if bad:
            raise ConfigError(f"{option}: unknown value(s) {', '.join(bad)}; allowed: {', '.join(allowed)}")
    return items


def int_list(value: str, *, option: str) -> tuple[int, ...]:
    """Split ``1,8`` into positive ints."""
    try:
        items = tuple(int(v) for v in split_list(value, option=option))
    except ValueError as err:
        raise ConfigError(f"{option} must be comma-separated positive integers like 1,8; got {value!r}") from err
    if any(i <= 0 for i in items):
        raise ConfigError(f"{option} must be positive; got {value!r}")
    return items


@contextlib.contextmanager
def progress_bar(description: str, *, total: float = 1.0) -> Iterator[Callable[[float], None]]:
    """Show a progress bar on stderr; yield a callback taking the share done."""
    quiet = not sys.stderr.isatty() and os.environ.get("MODELPRESS_PROGRESS") != "1"
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
        console=err_console, transient=True, disable=quiet,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda done: progress.update(task, completed=done * total)


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    """Show a spinner with ``message`` on stderr while the block runs."""
    if sys.stderr.isatty():
        with err_console.status(message):
            yield
    else:
        yield


def write_json(data: Any, path: Path | str) -> None:
    """Write JSON to a file (``-`` for stdout), atomically for files."""
    text = json.dumps(data, indent=2, default=str)
    if str(path) == "-":
        print(text)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
