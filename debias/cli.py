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

# Options that mean the same on every verb that loads a model (audit, fix, edit) or generates images (audit, fix).
DEVICE_HELP = "Torch device, e.g. cuda, cuda:1 or cpu (default: this process's GPU when there is one, else cpu)."
DTYPE_HELP = ("Weights' dtype: float32, float16 or bfloat16 (default: float16 on a GPU for real models, float32 "
              "otherwise; edits are judged and saved in this dtype, see the README on precision).")
HEIGHT_HELP = "Image height in pixels, a multiple of the VAE's factor (default: the model's native size)."
WIDTH_HELP = "Image width in pixels (default: the model's native size)."
BATCH_HELP = ("Images per pipeline call (default: 8 at 512² on a GPU scaled by image area, halved automatically "
              "on out-of-memory; 4 on a CPU).")


def _read_edit_pairs_csv(path: Path, source_column: str, destination_column: str) -> list[tuple[str, str]]:
    """(source, destination) pairs from a CSV with a header (TIMED's files use columns old,new)."""
    import csv

    from debias.errors import InputError

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
def edit_command(
    model: str = typer.Option("mini", "--model", help="Hub id, local diffusers folder, or 'mini' (built-in)."),
    source: list[str] = typer.Option([], "--source", help="Source prompt, e.g. 'a nurse' (repeatable, pairs with --destination)."),
    destination: list[str] = typer.Option([], "--destination", help="Destination prompt, e.g. 'a male nurse' (repeatable)."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="CSV of pairs (header with source/destination columns)."),
    source_column: str = typer.Option("old", "--source-column", help="CSV column holding source prompts."),
    destination_column: str = typer.Option("new", "--destination-column", help="CSV column holding destination prompts."),
    lam: Optional[float] = typer.Option(None, "--lam", help="λ in the solver's units (TIME uses 0.1 on SD 1.4)."),
    lam_relative: Optional[float] = typer.Option(None, "--lam-relative", help="λ divided by the mean squared norm of the source rows (comparable across models)."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Also edit inside 'A photo of …', 'An image of …', 'A picture of …'."),
    out: Path = typer.Option(Path("edit.safetensors"), "--out", help="Edit file to write (safetensors)."),
    save_pipeline_dir: Optional[Path] = typer.Option(None, "--save-pipeline", help="Also write the edited model as a diffusers folder."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickle (.bin) weights; only for models you trust."),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    dtype: Optional[str] = typer.Option(None, "--dtype", help=DTYPE_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads (default: DEBIAS_NUM_THREADS or cores)."),
) -> None:
    """Compute a TIME edit (source → destination prompts) and write it as an edit file.

    The edit's matrix is solved in float64 whatever --dtype is; the edited weights in the file are stored in the
    model's dtype. No image is generated, so there is no --height/--width here."""
    from debias.errors import InputError

    if csv_path is not None and (source or destination):
        raise InputError("give either --csv or --source/--destination pairs, not both.")
    if csv_path is not None:
        pairs = _read_edit_pairs_csv(csv_path, source_column, destination_column)
    else:
        if not source or len(source) != len(destination):
            raise InputError(f"give --source and --destination in pairs (got {len(source)} --source and "
                             f"{len(destination)} --destination), or --csv FILE.")
        pairs = list(zip(source, destination))
    from debias.editing import DEFAULT_AUGMENTATIONS, edit

    result = edit(model, pairs, lam=lam, lam_relative=lam_relative,
                  augmentations=DEFAULT_AUGMENTATIONS if augment else (), out=out, save_pipeline=save_pipeline_dir,
                  device=device, dtype=dtype, threads=threads, allow_pickle=allow_pickle, progress=True)
    result.print_summary()


@app.command("audit")
def audit_command(
    model: str = typer.Option("mini", "--model", help="Hub id, local diffusers folder, or 'mini' (built-in)."),
    professions: Optional[Path] = typer.Option(None, "--professions", help="Profession list (default: the mini world's for 'mini', TIMED's 35 otherwise); format in professions/README.md."),
    images_per_profession: int = typer.Option(64, "--images-per-profession", "-n", help="Images per profession (per round with --ci-width)."),
    out: Path = typer.Option(Path("runs/audit"), "--out", help="Run folder: audit.json, audit.csv, images/ (also the cache; rerun to resume)."),
    prompt_set: str = typer.Option("test", "--prompt-set", help="'test' (held-out prompts) or 'tuning' (the prompt a fix tunes on)."),
    templates: list[str] = typer.Option([], "--templates", help="Prompt template with {} for the profession (repeatable), or one template file."),
    classifier: Optional[str] = typer.Option(None, "--classifier", help="CLIP: open_clip:ARCH/PRETRAINED, a transformers hub id or folder, or 'mini' (default: mini for the mini model, open_clip:ViT-L-14/openai otherwise)."),
    labels_female: list[str] = typer.Option([], "--labels-female", help="Label prompt(s) for female (repeatable; default 'a photo of a woman')."),
    labels_male: list[str] = typer.Option([], "--labels-male", help="Label prompt(s) for male (repeatable; default 'a photo of a man')."),
    labels_none: list[str] = typer.Option([], "--labels-none", help="'No person' prompt(s) (repeatable; off by default); images closer to these than to a person are unclear."),
    min_confidence: Optional[float] = typer.Option(None, "--min-confidence", help="Abstain (unclear) when max(p_female, 1-p_female) is below this (default 0.6, or what a saved fixed model records)."),
    target: float = typer.Option(0.5, "--target", help="Target female share (a list line's target=… overrides it)."),
    tolerance: float = typer.Option(0.05, "--tolerance", help="A profession is within tolerance when |share - target| <= this."),
    seed: int = typer.Option(0, "--seed", help="Seed of image 0; image i uses seed + i."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=BATCH_HELP),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps (default: 10 mini, 25 real models)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance (default: 1.0 mini, 7.5 real models)."),
    height: Optional[int] = typer.Option(None, "--height", help=HEIGHT_HELP),
    width: Optional[int] = typer.Option(None, "--width", help=WIDTH_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    dtype: Optional[str] = typer.Option(None, "--dtype", help=DTYPE_HELP),
    ci_width: Optional[float] = typer.Option(None, "--ci-width", help="Sequential: keep generating until the 95% interval's full width is below this (0.2 ≈ ±0.10)."),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Per-profession cap with --ci-width (default 1024)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads (default: DEBIAS_NUM_THREADS or cores / processes)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickle (.bin) weights; only for models you trust."),
) -> None:
    """Measure the perceived female share per profession, with 95% intervals (cached, resumable)."""
    import os

    from debias.auditing import audit

    record = audit(
        model, professions=professions, images_per_profession=images_per_profession, out=out, prompt_set=prompt_set,
        templates=templates or None, classifier=classifier, labels_female=labels_female or None,
        labels_male=labels_male or None, labels_none=labels_none or None, min_confidence=min_confidence,
        target=target, tolerance=tolerance, seed=seed, batch_size=batch_size, steps=steps, guidance=guidance,
        height=height, width=width, device=device, dtype=dtype, ci_width=ci_width, max_images=max_images, threads=threads, allow_pickle=allow_pickle, print_table=True,
    )
    if record["hardware"]["processes"] == 1 or int(os.environ.get("RANK", "0") or 0) == 0:
        typer.echo(f"wrote {out / 'audit.json'}, {out / 'audit.csv'} and {out / 'report.html'}")


@app.command("fix")
def fix_command(
    professions: Optional[Path] = typer.Option(None, "--professions", help="Profession list to fix (default: the mini world's for 'mini', TIMED's 35 otherwise); format in professions/README.md."),
    model: str = typer.Option("mini", "--model", help="Hub id, local diffusers folder, or 'mini' (built-in)."),
    target: float = typer.Option(0.5, "--target", help="Target female share (a list line's target=… overrides it)."),
    tolerance: float = typer.Option(0.05, "--tolerance", help="Band around the target a profession should end in."),
    budget: int = typer.Option(320, "--budget", help="Images per profession the λ search may use (never exceeded; 320 ≈ ±0.08 at 95% on the tuning prompts)."),
    out: Path = typer.Option(Path("runs/fix"), "--out", help="Run folder: fix.json, edit.safetensors, before/, after/, images (rerun to resume)."),
    tuning_templates: list[str] = typer.Option([], "--tuning-templates", help="Validation template with {} that λ_p is tuned on (repeatable), or one template file; never a test template (default: the model family's validation templates; TIMED's is 'A photo of {}')."),
    preserve: list[str] = typer.Option([], "--preserve", help="Prompt to keep unchanged (repeatable), or a file with one per line; professions left unedited are always preserved."),
    seed: int = typer.Option(0, "--seed", help="Seed of test image 0; image i uses seed + i (the same seeds before and after); tuning, search and joint rounds use seeds from seed + 1,000,000."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads (default: DEBIAS_NUM_THREADS or cores)."),
    test_images: int = typer.Option(128, "--test-images", help="Images per profession on the held-out test prompts, before and after."),
    check_images: int = typer.Option(128, "--check-images", help="Images per profession per joint round on the tuning prompts."),
    joint_rounds: int = typer.Option(2, "--joint-rounds", help="Rounds of re-tuning strengths against cross-effects of the joint edit."),
    side_prompts: list[str] = typer.Option([], "--side-prompts", help="Unrelated prompt for the side-effect check (repeatable; default: the mini world's objects, or everyday objects and scenes)."),
    side_seeds: int = typer.Option(16, "--side-seeds", help="Seeds per unrelated prompt for the side-effect check."),
    anchor_strength: float = typer.Option(100.0, "--anchor-strength", help="Weight of the anchors (the bare augmentation templates and the empty prompt, kept fixed so the edit moves only what the profession adds); 0 turns them off."),
    max_drift: float = typer.Option(0.12, "--max-drift", help="Strongest edit allowed: unrelated prompts' conditioning may move by at most this (relative norm); 0 turns the limit off."),
    classifier: Optional[str] = typer.Option(None, "--classifier", help="CLIP for perceived gender (as for debias audit)."),
    min_confidence: Optional[float] = typer.Option(None, "--min-confidence", help="Abstain (unclear) when max(p_female, 1-p_female) is below this (default 0.6)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps (default: 10 mini, 25 real models)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance (default: 1.0 mini, 7.5 real models)."),
    height: Optional[int] = typer.Option(None, "--height", help=HEIGHT_HELP),
    width: Optional[int] = typer.Option(None, "--width", help=WIDTH_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    dtype: Optional[str] = typer.Option(None, "--dtype", help=DTYPE_HELP),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=BATCH_HELP),
    save_pipeline_dir: Optional[Path] = typer.Option(None, "--save-pipeline", help="Also write the edited model as a diffusers folder."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickle (.bin) weights; only for models you trust."),
) -> None:
    """Edit the model so that each profession reaches the target share on held-out prompts (TIME, one joint edit)."""
    from debias.fixing import fix, print_summary

    preserve_arg: list[str] | str | None = preserve or None
    if preserve and len(preserve) == 1 and Path(preserve[0]).is_file():
        preserve_arg = preserve[0]
    record = fix(model, professions=professions, out=out, target=target, tolerance=tolerance, budget=budget,
                 test_images=test_images, check_images=check_images, joint_rounds=joint_rounds,
                 tuning_templates=tuning_templates or None, preserve=preserve_arg,
                 anchor_strength=anchor_strength, side_prompts=side_prompts or None, side_seeds=side_seeds, max_drift=max_drift or None, seed=seed,
                 classifier=classifier, min_confidence=min_confidence, steps=steps, guidance=guidance, height=height,
                 width=width, device=device, dtype=dtype, batch_size=batch_size, threads=threads, save_pipeline=save_pipeline_dir, allow_pickle=allow_pickle)
    print_summary(record)
    written = [out / "fix.json"] + ([out / "edit.safetensors"] if record["edit_file"] else [])
    typer.echo(f"wrote {', '.join(map(str, written + [out / 'before', out / 'after']))}")
    typer.echo(f"report: {out / 'report.html'}")


@app.command("report")
def report_command(
    run_dirs: list[Path] = typer.Argument(..., help="An audit folder, a fix folder, or two audit folders (before, then after).", show_default=False),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file to write (default: RUN_DIR/report.html; for two audits AFTER_DIR/compare_report.html). report.json and report.csv go beside it."),
) -> None:
    """Render the self-contained HTML report (offline, one file) from the JSON in run folders; no model is loaded."""
    from debias.report import render_report, twin_paths

    path = render_report(run_dirs, out)
    json_path, csv_path = twin_paths(path)
    typer.echo(f"wrote {path} (numbers in {json_path.name}, {csv_path.name})")


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
