"""``debias edit``: a TIME edit from source → destination prompt pairs, written as an edit file."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional

import typer

from debias.cli.app import OUTPUT, PROMPTS, SEARCH, app
from debias.cli.flags import Model, SavePipeline, takes
from debias.core.errors import InputError
from debias.core.options import RuntimeOptions
from debias.core.profiles import DEFAULT_AUGMENTATIONS, DEFAULT_MODEL


def _read_edit_pairs_csv(path: Path, source_column: str, destination_column: str) -> list[tuple[str, str]]:
    """(source, destination) pairs from a CSV with a header (TIMED's files use columns old,new)."""
    if not path.is_file():
        raise InputError(f"--csv {path}: no such file.")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in (source_column, destination_column) if c not in columns]
        if missing:
            raise InputError(f"--csv {path}:1: missing column(s) {', '.join(missing)}; the header has {columns}. "
                             "Name the columns with --source-column / --destination-column.")
        pairs = []
        for row in reader:
            source, destination = (row.get(source_column) or "").strip(), (row.get(destination_column) or "").strip()
            if not source and not destination:
                continue
            if not source or not destination:
                raise InputError(f"--csv {path}:{reader.line_num}: empty {source_column if not source else destination_column} value.")
            pairs.append((source, destination))
    if not pairs:
        raise InputError(f"--csv {path}: no rows to edit.")
    return pairs


@app.command("edit")
@takes({"runtime": RuntimeOptions})
def edit_command(
    model: Model = DEFAULT_MODEL,
    source: list[str] = typer.Option(
        [], "--source", rich_help_panel=PROMPTS,
        help="Source prompt, e.g. 'a nurse' (repeatable, pairs with --destination)."),
    destination: list[str] = typer.Option(
        [], "--destination", rich_help_panel=PROMPTS, help="Destination prompt, e.g. 'a male nurse' (repeatable)."),
    csv_path: Optional[Path] = typer.Option(
        None, "--csv", rich_help_panel=PROMPTS, help="CSV of pairs (header with source/destination columns)."),
    source_column: str = typer.Option(
        "old", "--source-column", rich_help_panel=PROMPTS, help="CSV column holding source prompts."),
    destination_column: str = typer.Option(
        "new", "--destination-column", rich_help_panel=PROMPTS, help="CSV column holding destination prompts."),
    out: Path = typer.Option(
        Path("edit.safetensors"), "--out", rich_help_panel=OUTPUT, help="Edit file to write (safetensors)."),
    save_pipeline: SavePipeline = None,
    lam: Optional[float] = typer.Option(
        None, "--lam", rich_help_panel=SEARCH, help="λ in the solver's units (TIME uses 0.1 on SD 1.4)."),
    lam_relative: Optional[float] = typer.Option(
        None, "--lam-relative", rich_help_panel=SEARCH,
        help="λ divided by the mean squared norm of the source rows (comparable across models)."),
    augment: bool = typer.Option(
        True, "--augment/--no-augment", rich_help_panel=SEARCH,
        help="Also edit inside 'A photo of …', 'An image of …', 'A picture of …'."),
    **groups: Any,
) -> None:
    """Compute a TIME edit (source → destination prompts) and write it as an edit file.

    The edit's matrix is solved in float64 whatever --dtype is; the edited weights in the file are stored in the
    model's dtype. No image is generated, so there is no --height/--width here."""
    if csv_path is not None and (source or destination):
        raise InputError("give either --csv or --source/--destination pairs, not both.")
    if csv_path is not None:
        pairs = _read_edit_pairs_csv(csv_path, source_column, destination_column)
    else:
        if not source or len(source) != len(destination):
            raise InputError(f"give --source and --destination in pairs (got {len(source)} --source and "
                             f"{len(destination)} --destination), or --csv FILE.")
        pairs = list(zip(source, destination))
    from debias.verbs.edit import edit  # heavy: torch and diffusers load only when a command runs

    result = edit(model, pairs, lam=lam, lam_relative=lam_relative,
                  augmentations=DEFAULT_AUGMENTATIONS if augment else (), out=out, save_pipeline=save_pipeline,
                  progress=True, **groups)
    result.print_summary()
