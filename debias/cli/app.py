"""The ``debias`` app: its root options and the --help groups every verb's options sit in."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import typer

from debias import __version__

app = typer.Typer(
    name="debias",
    help="Audit text-to-image diffusion models for gender bias across professions, and fix it (TIME edits).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def installed_version() -> str:
    """The version pip installed (the package metadata), else the source tree's ``debias.__version__``: a copy of
    the source that was never installed has no metadata, and an installed one may be newer than a stale checkout."""
    try:
        return version("debias")
    except PackageNotFoundError:
        return __version__


def _version(value: bool) -> None:
    if value:
        typer.echo(f"debias {installed_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Audit, fix and report gender bias of text-to-image models."""


# Every option sits in one of these --help groups, shown in this order: what most runs set comes first (which
# model, which professions, where to write, how many images); tuning, memory and speed come last.
MODEL, PROMPTS, OUTPUT, GENERATION = "Model", "Professions and prompts", "Output", "Generation"
CLASSIFIER, SEARCH, GATE = "Classifier", "Search and edit", "CI gate"
LABELLING, SERVER, MEMORY = "Labelling", "Server", "Memory and speed"
PANELS = (MODEL, PROMPTS, OUTPUT, GENERATION, CLASSIFIER, SEARCH, GATE, LABELLING, SERVER, MEMORY)
