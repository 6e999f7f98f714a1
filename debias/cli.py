"""The ``debias`` command line: a thin typer layer over the Python API with the same verbs.

Each command parses options, calls one API function, and prints a summary. Errors a user can
cause are ``DebiasError``s; ``main`` prints their message (no stack trace) and exits with 2. A release gate
(``--fail-above``, :mod:`debias.results.gate`) that fails exits with 3, after every output is written.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from debias import __version__
from debias.core.errors import DebiasError
from debias.results.gate import GATE_EXIT_CODE, SCOPES, STATISTICS, check_gate_options
from debias.core.profiles import DEFAULT_MODEL, builtin_names

if TYPE_CHECKING:
    from debias.results.records import AuditResult

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
    from importlib.metadata import PackageNotFoundError, version

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


# ---- commands are added below, one function per verb ----

# Every option sits in one of these --help groups, shown in this order: what most runs set comes first (which
# model, which professions, where to write, how many images); tuning, memory and speed come last.
MODEL, PROMPTS, OUTPUT, GENERATION = "Model", "Professions and prompts", "Output", "Generation"
CLASSIFIER, SEARCH, GATE = "Classifier", "Search and edit", "CI gate"
LABELLING, SERVER, MEMORY = "Labelling", "Server", "Memory and speed"
PANELS = (MODEL, PROMPTS, OUTPUT, GENERATION, CLASSIFIER, SEARCH, GATE, LABELLING, SERVER, MEMORY)

# Options that mean the same on every verb that has them, declared once: (type, typer.Option) pairs.
Model = Annotated[str, typer.Option(
    "--model", rich_help_panel=MODEL,
    help=f"Hub id, local diffusers folder, or a built-in model ({', '.join(builtin_names())}).")]
Device = Annotated[Optional[str], typer.Option(
    "--device", rich_help_panel=MODEL,
    help="Torch device, e.g. cuda, cuda:1 or cpu (default: this process's GPU when there is one, else cpu).")]
Dtype = Annotated[Optional[str], typer.Option(
    "--dtype", rich_help_panel=MODEL,
    help="Weights' dtype: float32, float16 or bfloat16 (default: float16 on a GPU for real models, float32 "
         "otherwise; edits are judged and saved in this dtype, see docs/real-models.md on precision).")]
AllowPickle = Annotated[bool, typer.Option(
    "--allow-pickle", rich_help_panel=MODEL, help="Allow pickle (.bin) weights; only for models you trust.")]
Professions = Annotated[Optional[Path], typer.Option(
    "--professions", rich_help_panel=PROMPTS,
    help="Profession list (default: the model profile's, e.g. TIMED's 35 for real models); format in "
         "professions/README.md.")]
Target = Annotated[float, typer.Option(
    "--target", rich_help_panel=PROMPTS, help="Target female share (a list line's target=… overrides it).")]
Tolerance = Annotated[float, typer.Option(
    "--tolerance", rich_help_panel=PROMPTS,
    help="The band: a profession is within it when |share - target| <= this.")]
Templates = Annotated[list[str], typer.Option(
    "--templates", rich_help_panel=PROMPTS,
    help="Held-out test prompt template with {} for the profession (repeatable), or one template file (default: "
         "the model profile's test templates).")]
AttributeOptions = Annotated[list[str], typer.Option(
    "--attribute", rich_help_panel=PROMPTS,
    help="Also read this attribute from the same images (repeatable): a built-in name (skin, age; gender is always "
         "audited) or an attribute file (format in debias/core/attributes.py). A profession list may give "
         "per-profession targets: 'a CEO | skin=0.5,0.3,0.2'.")]
IntersectOptions = Annotated[list[str], typer.Option(
    "--intersect", rich_help_panel=PROMPTS,
    help="Cross two audited attributes per profession, e.g. gender,skin (repeatable): joint shares with "
         "simultaneous 95% intervals; cells too thin to read are flagged.")]
FixAttributeOptions = Annotated[list[str], typer.Option(
    "--attribute", rich_help_panel=PROMPTS,
    help="Fix this attribute instead of gender (repeatable; gender too when named): a built-in name (gender, skin, "
         "age) or an attribute file. k - 1 strengths per profession towards the list's targets ('a CEO | "
         "skin=0.5,0.3,0.2') or uniform; gender is always measured. Two are fixed crossed (one destination per "
         "pair of classes); at most two per run.")]
SavePipeline = Annotated[Optional[Path], typer.Option(
    "--save-pipeline", rich_help_panel=OUTPUT,
    help="Also write the edited model as a diffusers folder, with a model card (README.md) ready for a hub.")]
Seed = Annotated[int, typer.Option(
    "--seed", rich_help_panel=GENERATION,
    help="Seed of image 0; image i uses seed + i (the same seeds before and after a fix).")]
Steps = Annotated[Optional[int], typer.Option(
    "--steps", rich_help_panel=GENERATION, help="Sampling steps (default: the model profile's).")]
Guidance = Annotated[Optional[float], typer.Option(
    "--guidance", rich_help_panel=GENERATION, help="Classifier-free guidance (default: the model profile's).")]
Height = Annotated[Optional[int], typer.Option(
    "--height", rich_help_panel=GENERATION,
    help="Image height in pixels, a multiple of the VAE's factor (default: the profile's, or the model's native "
         "size).")]
Width = Annotated[Optional[int], typer.Option(
    "--width", rich_help_panel=GENERATION,
    help="Image width in pixels (default: the profile's, or the model's native size).")]
BatchSize = Annotated[Optional[int], typer.Option(
    "--batch-size", rich_help_panel=GENERATION,
    help="Images per pipeline call (default: the profile's, or 8 at 512² on a GPU scaled by image area, halved "
         "automatically on out-of-memory; 4 on a CPU).")]
Classifiers = Annotated[list[str], typer.Option(
    "--classifier", rich_help_panel=CLASSIFIER,
    help="CLIP: open_clip:ARCH/PRETRAINED, a transformers hub id or folder, or a built-in model's name (default: "
         "the model profile's; open_clip:ViT-L-14/openai for real models). Repeatable: the first is the primary "
         "(the audit's shares); the others read the same images and are compared with it (a fix's before and "
         "after audits).")]
LabelsFemale = Annotated[list[str], typer.Option(
    "--labels-female", rich_help_panel=CLASSIFIER,
    help="Label prompt(s) for female (repeatable; default 'a photo of a woman').")]
LabelsMale = Annotated[list[str], typer.Option(
    "--labels-male", rich_help_panel=CLASSIFIER,
    help="Label prompt(s) for male (repeatable; default 'a photo of a man').")]
LabelsNone = Annotated[list[str], typer.Option(
    "--labels-none", rich_help_panel=CLASSIFIER,
    help="'No person' prompt(s) (repeatable; off by default); images closer to these than to a person are "
         "unclear.")]
MinConfidence = Annotated[Optional[float], typer.Option(
    "--min-confidence", rich_help_panel=CLASSIFIER,
    help="Abstain (unclear) when max(p_female, 1-p_female) is below this (default 0.6, or what a saved fixed "
         "model records).")]
CpuOffload = Annotated[str, typer.Option(
    "--cpu-offload", rich_help_panel=MEMORY,
    help="none, model (one component at a time on the GPU, a little slower) or sequential (one layer at a time: "
         "least GPU memory, much slower).")]
VaeTiling = Annotated[bool, typer.Option(
    "--vae-tiling", rich_help_panel=MEMORY,
    help="Decode in tiles (large images; changes pixels above the VAE's tile size, recorded).")]
VaeSlicing = Annotated[bool, typer.Option(
    "--vae-slicing", rich_help_panel=MEMORY, help="Decode one image of a batch at a time.")]
AttentionSlicing = Annotated[bool, typer.Option(
    "--attention-slicing", rich_help_panel=MEMORY,
    help="Compute attention a few heads at a time (UNets only; rarely needed with PyTorch 2).")]
AdaptBatch = Annotated[bool, typer.Option(
    "--adapt-batch", rich_help_panel=MEMORY,
    help="Grow the batch to what the GPU's free memory holds (measured on the first batch).")]
Threads = Annotated[Optional[int], typer.Option(
    "--threads", rich_help_panel=MEMORY, help="Torch threads (default: DEBIAS_NUM_THREADS, or cores / processes).")]


# the gate's choices, as enums so that --help lists them and a typo is a usage error
GateScope = Enum("GateScope", {name: name for name in SCOPES}, type=str)
GateStatistic = Enum("GateStatistic", {name: name for name in STATISTICS}, type=str)


FailAbove = Annotated[Optional[float], typer.Option(
    "--fail-above", metavar="D", rich_help_panel=GATE, show_default=False,
    help=f"Release gate: after writing every output, exit with status {GATE_EXIT_CODE} when Δ is above this (e.g. "
         "0.1; a fix is judged on its after audit). Errors exit with 2.")]
Gate = Annotated[GateScope, typer.Option(
    "--gate", rich_help_panel=GATE,
    help="What --fail-above judges: the mean Δ over professions, or each profession's Δ (fails when any is above).")]
GateStatisticOption = Annotated[GateStatistic, typer.Option(
    "--gate-statistic", rich_help_panel=GATE,
    help="The number compared with --fail-above. upper (the 95% interval's upper bound): passes only when the data "
         "show Δ <= D, so measuring fewer images never helps a model pass; lower: fails only when the data show "
         "Δ > D (never on noise alone, but a small audit passes anything); point: the estimate. See docs/ci.md.")]


def _memory(cpu_offload: str, vae_tiling: bool, vae_slicing: bool, attention_slicing: bool,
            adapt_batch: bool):
    """The memory options, or None when none is asked for (runs and their records stay as without them)."""
    from debias.core.memory import MemoryOptions

    options = MemoryOptions(cpu_offload, vae_tiling, vae_slicing, attention_slicing, adapt_batch)
    return None if options == MemoryOptions() else options


def _shared(**options) -> dict:
    """The shared options as API keyword arguments: repeatable options left empty mean the default (None)."""
    return {name: (value or None) if isinstance(value, list) else value for name, value in options.items()}


def _read_edit_pairs_csv(path: Path, source_column: str, destination_column: str) -> list[tuple[str, str]]:
    """(source, destination) pairs from a CSV with a header (TIMED's files use columns old,new)."""
    import csv

    from debias.core.errors import InputError

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
    model: Model = DEFAULT_MODEL,
    device: Device = None,
    dtype: Dtype = None,
    allow_pickle: AllowPickle = False,
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
    threads: Threads = None,
) -> None:
    """Compute a TIME edit (source → destination prompts) and write it as an edit file.

    The edit's matrix is solved in float64 whatever --dtype is; the edited weights in the file are stored in the
    model's dtype. No image is generated, so there is no --height/--width here."""
    from debias.core.errors import InputError

    if csv_path is not None and (source or destination):
        raise InputError("give either --csv or --source/--destination pairs, not both.")
    if csv_path is not None:
        pairs = _read_edit_pairs_csv(csv_path, source_column, destination_column)
    else:
        if not source or len(source) != len(destination):
            raise InputError(f"give --source and --destination in pairs (got {len(source)} --source and "
                             f"{len(destination)} --destination), or --csv FILE.")
        pairs = list(zip(source, destination))
    from debias.editing import DEFAULT_AUGMENTATIONS
    from debias.verbs.edit import edit

    result = edit(model, pairs, lam=lam, lam_relative=lam_relative,
                  augmentations=DEFAULT_AUGMENTATIONS if augment else (), out=out, save_pipeline=save_pipeline,
                  device=device, dtype=dtype, threads=threads, allow_pickle=allow_pickle, progress=True)
    result.print_summary()


@app.command("audit")
def audit_command(
    model: Model = DEFAULT_MODEL,
    device: Device = None,
    dtype: Dtype = None,
    allow_pickle: AllowPickle = False,
    professions: Professions = None,
    target: Target = 0.5,
    tolerance: Tolerance = 0.05,
    prompt_set: str = typer.Option(
        "test", "--prompt-set", rich_help_panel=PROMPTS,
        help="'test' (held-out prompts) or 'tuning' (the prompt a fix tunes on)."),
    templates: Templates = [],
    attribute: AttributeOptions = [],
    intersect: IntersectOptions = [],
    out: Path = typer.Option(
        Path("runs/audit"), "--out", rich_help_panel=OUTPUT,
        help="Run folder: audit.json, audit.csv, images/, report.html, report.md (also the cache; rerun to resume)."),
    images_per_profession: int = typer.Option(
        64, "--images-per-profession", "-n", rich_help_panel=GENERATION,
        help="Images per profession (per round with --ci-width)."),
    ci_width: Optional[float] = typer.Option(
        None, "--ci-width", rich_help_panel=GENERATION,
        help="Sequential: keep generating until the 95% interval's full width is below this (0.2 ≈ ±0.10)."),
    max_images: Optional[int] = typer.Option(
        None, "--max-images", rich_help_panel=GENERATION, help="Per-profession cap with --ci-width (default 1024)."),
    seed: Seed = 0,
    steps: Steps = None,
    guidance: Guidance = None,
    height: Height = None,
    width: Width = None,
    batch_size: BatchSize = None,
    classifier: Classifiers = [],
    labels_female: LabelsFemale = [],
    labels_male: LabelsMale = [],
    labels_none: LabelsNone = [],
    min_confidence: MinConfidence = None,
    fail_above: FailAbove = None,
    gate: Gate = GateScope.mean,
    gate_statistic: GateStatisticOption = GateStatistic.upper,
    cpu_offload: CpuOffload = "none",
    vae_tiling: VaeTiling = False,
    vae_slicing: VaeSlicing = False,
    attention_slicing: AttentionSlicing = False,
    adapt_batch: AdaptBatch = False,
    threads: Threads = None,
) -> None:
    """Measure the perceived female share per profession, with 95% intervals (cached, resumable); with --attribute,
    other attributes' class shares too."""
    from debias.verbs.audit import audit

    check_gate_options(fail_above, gate.value, gate_statistic.value)  # a typo fails before any image is made
    memory = _memory(cpu_offload, vae_tiling, vae_slicing, attention_slicing, adapt_batch)
    result = audit(model, images_per_profession=images_per_profession, out=out, prompt_set=prompt_set,
                   ci_width=ci_width, max_images=max_images, print_table=True, memory=memory, **_shared(
                       attributes=attribute, intersect=intersect,
                       professions=professions, templates=templates, classifier=classifier,
                       labels_female=labels_female, labels_male=labels_male, labels_none=labels_none,
                       min_confidence=min_confidence, target=target, tolerance=tolerance, seed=seed,
                       batch_size=batch_size, steps=steps, guidance=guidance, height=height, width=width,
                       device=device, dtype=dtype, threads=threads, allow_pickle=allow_pickle))
    main_process = result.hardware["processes"] == 1 or int(os.environ.get("RANK", "0") or 0) == 0
    if main_process:
        extra = [name for name, present in (("audit_attributes.csv", result.attributes),
                                            ("audit_intersections.csv", result.intersections)) if present]
        written = ", ".join(str(out / name) for name in ["audit.json", "audit.csv", *extra])
        typer.echo(f"wrote {written} and {out / 'report.html'}")
    _apply_gate(result, fail_above, gate, gate_statistic, say=main_process)


@app.command("fix")
def fix_command(
    model: Model = DEFAULT_MODEL,
    device: Device = None,
    dtype: Dtype = None,
    allow_pickle: AllowPickle = False,
    professions: Professions = None,
    target: Target = 0.5,
    tolerance: Tolerance = 0.05,
    templates: Templates = [],
    tuning_templates: list[str] = typer.Option(
        [], "--tuning-templates", rich_help_panel=PROMPTS,
        help="Validation template with {} that λ_p is tuned on (repeatable), or one template file; never a test "
             "template (default: the model profile's validation templates; TIMED's is 'A photo of {}')."),
    preserve: list[str] = typer.Option(
        [], "--preserve", rich_help_panel=PROMPTS,
        help="Prompt to keep unchanged (repeatable), or a file with one per line; professions left unedited are "
             "always preserved."),
    attribute: FixAttributeOptions = [],
    out: Path = typer.Option(
        Path("runs/fix"), "--out", rich_help_panel=OUTPUT,
        help="Run folder: fix.json, edit.safetensors, before/, after/, images, report.html, report.md (rerun to "
             "resume)."),
    save_pipeline: SavePipeline = None,
    test_images: int = typer.Option(
        128, "--test-images", rich_help_panel=GENERATION,
        help="Images per profession on the held-out test prompts, before and after."),
    seed: Seed = 0,
    steps: Steps = None,
    guidance: Guidance = None,
    height: Height = None,
    width: Width = None,
    batch_size: BatchSize = None,
    classifier: Classifiers = [],
    labels_female: LabelsFemale = [],
    labels_male: LabelsMale = [],
    labels_none: LabelsNone = [],
    min_confidence: MinConfidence = None,
    budget: Optional[int] = typer.Option(
        None, "--budget", rich_help_panel=SEARCH,
        help="Images per profession on the tuning side: the tuning audit and every round (never exceeded; default "
             "320 per class beyond the first: gender 320, skin 640)."),
    check_images: int = typer.Option(
        128, "--check-images", rich_help_panel=SEARCH,
        help="Images per profession per joint round on the tuning prompts."),
    joint_rounds: int = typer.Option(
        3, "--joint-rounds", rich_help_panel=SEARCH,
        help="Rounds that tune every strength together under the joint edit, pooling all images."),
    anchor_strength: Optional[float] = typer.Option(
        None, "--anchor-strength", rich_help_panel=SEARCH,
        help="Weight of the anchors (the bare augmentation templates and the empty prompt, kept fixed so the edit "
             "moves only what the profession adds); 0 turns them off. Default: the model family's (100; 10 for "
             "SD3/FLUX.1)."),
    max_drift: float = typer.Option(
        0.12, "--max-drift", rich_help_panel=SEARCH,
        help="Strongest edit allowed: unrelated prompts' conditioning may move by at most this (relative norm); 0 "
             "turns the limit off."),
    side_prompts: list[str] = typer.Option(
        [], "--side-prompts", rich_help_panel=SEARCH,
        help="Unrelated prompt for the side-effect check (repeatable; default: the model profile's)."),
    side_seeds: int = typer.Option(
        16, "--side-seeds", rich_help_panel=SEARCH, help="Seeds per unrelated prompt for the side-effect check."),
    fail_above: FailAbove = None,
    gate: Gate = GateScope.mean,
    gate_statistic: GateStatisticOption = GateStatistic.upper,
    cpu_offload: CpuOffload = "none",
    vae_tiling: VaeTiling = False,
    vae_slicing: VaeSlicing = False,
    attention_slicing: AttentionSlicing = False,
    adapt_batch: AdaptBatch = False,
    threads: Threads = None,
) -> None:
    """Edit the model so that each profession reaches the target share on held-out prompts (TIME, one joint edit);
    with --attribute, the target distribution of those attributes."""
    from debias.verbs.fix import fix

    check_gate_options(fail_above, gate.value, gate_statistic.value)  # a typo fails before any image is made
    preserve_arg: list[str] | str | None = preserve or None
    if preserve and len(preserve) == 1 and Path(preserve[0]).is_file():
        preserve_arg = preserve[0]
    result = fix(model, out=out, budget=budget, test_images=test_images, check_images=check_images,
                 joint_rounds=joint_rounds, tuning_templates=tuning_templates or None, preserve=preserve_arg,
                 anchor_strength=anchor_strength, side_prompts=side_prompts or None, side_seeds=side_seeds,
                 max_drift=max_drift or None, save_pipeline=save_pipeline,
                 memory=_memory(cpu_offload, vae_tiling, vae_slicing, attention_slicing, adapt_batch), **_shared(
                     attributes=attribute,
                     professions=professions, templates=templates, classifier=classifier,
                     labels_female=labels_female, labels_male=labels_male, labels_none=labels_none,
                     min_confidence=min_confidence, target=target, tolerance=tolerance, seed=seed,
                     batch_size=batch_size, steps=steps, guidance=guidance, height=height, width=width,
                     device=device, dtype=dtype, threads=threads, allow_pickle=allow_pickle))
    result.print_summary()
    written = [out / "fix.json"] + ([out / "edit.safetensors"] if result.edit_file else [])
    typer.echo(f"wrote {', '.join(map(str, written + [out / 'before', out / 'after']))}")
    typer.echo(f"report: {out / 'report.html'}")
    _apply_gate(result.audits(out)[1], fail_above, gate, gate_statistic)


def _apply_gate(result: AuditResult, fail_above: Optional[float], scope: GateScope, statistic: GateStatistic,
                say: bool = True) -> None:
    """With --fail-above, judge ``result`` (an audit; a fix's after audit) and exit with the gate's status when it
    fails. Every output is already written, so a failed gate still leaves the report to read."""
    if fail_above is None:
        return
    from debias.results.gate import judge

    decision = judge(result, fail_above, scope=scope.value, statistic=statistic.value)
    if say:
        typer.secho(decision.message(), err=not decision.passed, fg=None if decision.passed else typer.colors.RED)
    if not decision.passed:
        raise typer.Exit(decision.exit_code)


@app.command("report")
def report_command(
    run_dirs: list[Path] = typer.Argument(
        ..., show_default=False,
        help="An audit folder, a fix folder, or two audit folders (before, then after)."),
    out: Optional[Path] = typer.Option(
        None, "--out", rich_help_panel=OUTPUT,
        help="HTML file to write (default: RUN_DIR/report.html; for two audits AFTER_DIR/compare_report.html). "
             "report.json, report.csv and report.md (a model card's bias section) go beside it."),
) -> None:
    """Render the self-contained HTML report (offline, one file) from the JSON in run folders; no model is loaded.

    Human labels added since the audit ran (debias label) are read first: each audit's validity block in its
    audit.json is recomputed from them, so the report shows the prediction-powered shares."""
    from debias.report import markdown_path, render_report, twin_paths

    path = render_report(run_dirs, out)
    json_path, csv_path = twin_paths(path)
    typer.echo(f"wrote {path} (numbers in {json_path.name}, {csv_path.name}; a model card's bias section in "
               f"{markdown_path(path).name})")


@app.command("label")
def label_command(
    run_dir: Path = typer.Argument(
        ..., show_default=False, help="An audit folder (with audit.json), e.g. runs/audit or a fix's before/."),
    labeller: Optional[str] = typer.Option(
        None, "--labeller", rich_help_panel=LABELLING,
        help="Your name, saved with each label (default: your user name)."),
    per_profession: int = typer.Option(
        93, "--per-profession", rich_help_panel=LABELLING,
        help="Images to label per profession (93 pins the classifier's error rate to ±0.10, 381 to ±0.05)."),
    seed: int = typer.Option(
        0, "--seed", rich_help_panel=LABELLING,
        help="Seed of the random sample and its order (the same seed gives the same sample)."),
    import_csv: Optional[Path] = typer.Option(
        None, "--import", rich_help_panel=LABELLING,
        help="Import labels from a CSV (header image,label,labeller) and exit; no server."),
    port: int = typer.Option(
        8765, "--port", rich_help_panel=SERVER,
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
        from debias.validity.labels import import_labels_csv

        done = import_labels_csv(import_csv, run_dir)
        skipped = f"; skipped {done.skipped} already recorded (same image, labeller and label)" if done.skipped else ""
        typer.echo(f"imported {len(done.added)} labels into {run_dir / 'labels' / 'labels.jsonl'}{skipped}")
        return
    import getpass

    from debias.validity.server import serve

    serve(run_dir, labeller or getpass.getuser() or "labeller", host=host, port=port,
          per_profession=per_profession, seed=seed, allow_host=allow_host)


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
