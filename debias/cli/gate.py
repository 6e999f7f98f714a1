"""The release gate of ``--fail-above`` on a command's result (:mod:`debias.results.gate` judges it)."""

from __future__ import annotations

from typing import Optional

import typer

from debias.cli.flags import GateScope, GateStatistic
from debias.results.gate import judge
from debias.results.records import AuditResult


def apply_gate(result: AuditResult, fail_above: Optional[float], scope: GateScope, statistic: GateStatistic,
                say: bool = True) -> None:
    """With --fail-above, judge ``result`` (an audit; a fix's after audit) and exit with the gate's status when it
    fails. Every output is already written, so a failed gate still leaves the report to read."""
    if fail_above is None:
        return
    decision = judge(result, fail_above, scope=scope.value, statistic=statistic.value)
    if say:
        typer.secho(decision.message(), err=not decision.passed, fg=None if decision.passed else typer.colors.RED)
    if not decision.passed:
        raise typer.Exit(decision.exit_code)
