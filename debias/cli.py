"""The ``debias`` command line: a thin typer layer over the Python API with the same verbs.

Each command parses options, calls one API function, and prints a summary. Errors a user can
cause are ``DebiasError``s; ``main`` prints their message (no stack trace) and exits with 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from debias import __version__
from debias.errors import DebiasError

app = typer.Typer(
    name="debias",
    help="Audit text-to-image diffusion models for gender bias across professions, and fix it (TIME edits).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"debias {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Audit, fix and report gender bias of text-to-image models."""


# ---- commands are added below, one function per verb ----


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: run the app, turning user errors into a clear message and exit code 2."""
    try:
        app(args=argv, standalone_mode=False)
    except DebiasError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted: finished work is cached; rerun the same command to resume.", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as err:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            sys.exit(err.exit_code)
        if isinstance(err, click.exceptions.Abort):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
