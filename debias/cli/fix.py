"""``debias fix``: one joint TIME edit that moves each profession to its target share on held-out prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from debias.cli.app import OUTPUT, app
from debias.cli.flags import (
    FailAbove, FixAttributeOptions, Gate, GateScope, GateStatistic, GateStatisticOption, Model, SavePipeline, takes,
)
from debias.cli.gate import apply_gate
from debias.core.options import (
    ClassifierOptions, GenerationOptions, MemoryOptions, PromptOptions, RuntimeOptions, SearchOptions,
)
from debias.core.profiles import DEFAULT_MODEL
from debias.results.gate import check_gate_options


@app.command("fix")
@takes({"prompts": PromptOptions, "generation": GenerationOptions, "classification": ClassifierOptions,
        "search": SearchOptions, "memory": MemoryOptions, "runtime": RuntimeOptions})
def fix_command(
    model: Model = DEFAULT_MODEL,
    attribute: FixAttributeOptions = [],
    out: Path = typer.Option(
        Path("runs/fix"), "--out", rich_help_panel=OUTPUT,
        help="Run folder: fix.json, edit.safetensors, before/, after/, images, report.html, report.md (rerun to "
             "resume)."),
    save_pipeline: SavePipeline = None,
    fail_above: FailAbove = None,
    gate: Gate = GateScope.mean,
    gate_statistic: GateStatisticOption = GateStatistic.upper,
    **groups: Any,
) -> None:
    """Edit the model so that each profession reaches the target share on held-out prompts (TIME, one joint edit);
    with --attribute, the target distribution of those attributes."""
    from debias.verbs.fix import fix  # heavy: torch and diffusers load only when a command runs

    check_gate_options(fail_above, gate.value, gate_statistic.value)  # a typo fails before any image is made
    result = fix(model, out=out, attributes=attribute or None, save_pipeline=save_pipeline, **groups)
    result.print_summary()
    written = [out / "fix.json"] + ([out / "edit.safetensors"] if result.edit_file else [])
    typer.echo(f"wrote {', '.join(map(str, written + [out / 'before', out / 'after']))}")
    typer.echo(f"report: {out / 'report.html'}")
    apply_gate(result.audits(out)[1], fail_above, gate, gate_statistic)
