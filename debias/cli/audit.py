"""``debias audit``: perceived shares per profession with 95% intervals (cached, resumable)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from debias.cli.app import GENERATION, OUTPUT, PROMPTS, app
from debias.cli.flags import (
    AttributeOptions, FailAbove, Gate, GateScope, GateStatistic, GateStatisticOption, IntersectOptions, Model, takes,
)
from debias.cli.gate import apply_gate
from debias.core.options import ClassifierOptions, GenerationOptions, MemoryOptions, PromptOptions, RuntimeOptions
from debias.core.profiles import DEFAULT_MODEL
from debias.results.gate import check_gate_options
from debias.results.summaries import print_audit


@app.command("audit")
@takes({"prompts": PromptOptions, "generation": GenerationOptions, "classification": ClassifierOptions,
        "memory": MemoryOptions, "runtime": RuntimeOptions})
def audit_command(
    model: Model = DEFAULT_MODEL,
    prompt_set: str = typer.Option(
        "test", "--prompt-set", rich_help_panel=PROMPTS,
        help="'test' (held-out prompts) or 'tuning' (the prompt a fix tunes on)."),
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
    fail_above: FailAbove = None,
    gate: Gate = GateScope.mean,
    gate_statistic: GateStatisticOption = GateStatistic.upper,
    **groups: Any,
) -> None:
    """Measure the perceived female share per profession, with 95% intervals (cached, resumable); with --attribute,
    other attributes' class shares too."""
    from debias.verbs.audit import audit  # heavy: torch and diffusers load only when a command runs

    check_gate_options(fail_above, gate.value, gate_statistic.value)  # a typo fails before any image is made
    memory = groups["memory"]
    result = audit(model, out=out, images_per_profession=images_per_profession, prompt_set=prompt_set,
                   ci_width=ci_width, max_images=max_images, attributes=attribute or None,
                   intersect=intersect or None, **{**groups, "memory": None if memory == MemoryOptions() else memory})
    main_process = result.hardware["processes"] == 1 or int(os.environ.get("RANK", "0") or 0) == 0
    if main_process:
        print_audit(result, sys.stdout, run_dir=str(out))
        extra = [name for name, present in (("audit_attributes.csv", result.attributes),
                                            ("audit_intersections.csv", result.intersections)) if present]
        written = ", ".join(str(out / name) for name in ["audit.json", "audit.csv", *extra])
        typer.echo(f"wrote {written} and {out / 'report.html'}")
    apply_gate(result, fail_above, gate, gate_statistic, say=main_process)
