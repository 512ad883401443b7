"""The `modelpress` command: discovers one module per command group."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys

import typer

from modelpress.errors import ModelpressError

app = typer.Typer(
    name="modelpress",
    help=(
        "Compress a trained PyTorch model, verify it on the exported artifact, "
        "benchmark it, serve it and roll it out safely.\n\n"
        "Example: modelpress demo"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# One module per command group; each defines register(app). Listed in the order
# `--help` shows them.
_COMMAND_MODULES = (
    "demo", "compress", "finetune", "prune", "distill", "quantize", "export",
    "eval", "bench", "advise", "registry", "serve", "rollout", "loadtest", "report",
)


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        module_name = f"modelpress.cli.{name}"
        if importlib.util.find_spec(module_name) is None:
            continue
        importlib.import_module(module_name).register(app)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details to stderr."),
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


_register_all()


def main() -> None:
    """Run the command line; user errors become one line on stderr and exit 2."""
    try:
        # Outside standalone mode click returns typer.Exit's code instead of exiting.
        code = app(standalone_mode=False)
    except ModelpressError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except Exception as err:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
