"""The ``debias`` command line: a thin typer layer over the Python API with the same verbs.

Each command (one module per verb) parses its flags into the option groups (:mod:`debias.cli.flags`), calls one
API function, and prints a summary. Errors a user can cause are ``DebiasError``s; ``main`` prints their message
(no stack trace) and exits with 2. A release gate (``--fail-above``, :mod:`debias.results.gate`) that fails exits
with 3, after every output is written.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from debias.cli import audit, edit, fix, label, report  # noqa: F401 - each registers its command on the app
from debias.cli.app import CLASSIFIER, PANELS, app  # noqa: F401 - the app and its --help groups
from debias.core.errors import DebiasError


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: run the app, turning user errors into a clear message and exit code 2.

    A command that ends with ``typer.Exit(code)`` (the bias gate's 3) exits with that code."""
    try:
        code = app(args=argv, standalone_mode=False)
    except DebiasError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted: finished work is cached; rerun the same command to resume.", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as err:  # usage errors arrive here in non-standalone mode
        _exit_on_usage_error(err)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)


def _exit_on_usage_error(err: Exception) -> None:
    """Show a usage error (unknown option, bad value) as click would and exit with its code (2); a Ctrl-C at a
    prompt exits with 130. Recognised by shape, because typer ships its own copy of click's exceptions."""
    if callable(getattr(err, "show", None)) and isinstance(getattr(err, "exit_code", None), int):
        err.show()
        sys.exit(err.exit_code)
    if type(err).__name__ == "Abort":
        sys.exit(130)


if __name__ == "__main__":
    main()
