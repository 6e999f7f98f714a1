"""``debias label``: label a run's images by hand on a local page, or import labels from a CSV."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Optional

import typer

from debias.cli.app import LABELLING, SERVER, app
from debias.validity.label_import import import_labels_csv
from debias.validity.ppi import LABELS_FOR_05, LABELS_FOR_10
from debias.validity.server import DEFAULT_PORT, serve


@app.command("label")
def label_command(
    run_dir: Path = typer.Argument(
        ..., show_default=False, help="An audit folder (with audit.json), e.g. runs/audit or a fix's before/."),
    labeller: Optional[str] = typer.Option(
        None, "--labeller", rich_help_panel=LABELLING,
        help="Your name, saved with each label (default: your user name)."),
    per_profession: int = typer.Option(
        LABELS_FOR_10, "--per-profession", rich_help_panel=LABELLING,
        help=f"Images to label per profession ({LABELS_FOR_10} pins the classifier's error rate to ±0.10, "
             f"{LABELS_FOR_05} to ±0.05)."),
    seed: int = typer.Option(
        0, "--seed", rich_help_panel=LABELLING,
        help="Seed of the random sample and its order (the same seed gives the same sample)."),
    import_csv: Optional[Path] = typer.Option(
        None, "--import", rich_help_panel=LABELLING,
        help="Import labels from a CSV (header image,label,labeller) and exit; no server."),
    port: int = typer.Option(
        DEFAULT_PORT, "--port", rich_help_panel=SERVER,
        help="Port to listen on; a port in use is an error (0: any free port)."),
    host: str = typer.Option(
        "127.0.0.1", "--host", rich_help_panel=SERVER,
        help="Address to listen on, IPv4 or IPv6 (default loopback only). Every request needs the token in the "
             "printed address."),
    allow_host: list[str] = typer.Option(
        [], "--allow-host", rich_help_panel=SERVER,
        help="Another name requests may give for this machine (repeatable), e.g. its public name with --host "
             "0.0.0.0; localhost, loopback addresses and the --host address are always allowed, others refused."),
) -> None:
    """Label a random sample of a run's images by hand, blind (a local web page), or import labels from a CSV."""
    if import_csv is not None:
        done = import_labels_csv(import_csv, run_dir)
        skipped = f"; skipped {done.skipped} already recorded (same image, labeller and label)" if done.skipped else ""
        typer.echo(f"imported {len(done.added)} labels into {run_dir / 'labels' / 'labels.jsonl'}{skipped}")
        return
    serve(run_dir, labeller or getpass.getuser() or "labeller", host=host, port=port,
          per_profession=per_profession, seed=seed, allow_host=allow_host)
