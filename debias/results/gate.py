"""The release gate: whether an audit shows more bias than a team allows (``--fail-above D``).

A release pipeline needs a yes or no, and an audit gives a measurement with an interval. The decision here turns
one into the other and nothing else: it reads a recorded :class:`~debias.results.records.AuditResult` (a fix is judged on
its after audit) and recomputes no share.

*What* is judged (``scope``): the mean Δ over professions (``"mean"``), or every profession's own Δ
(``"profession"``: the gate fails when any one is above D).

*Which number* is compared with D (``statistic``):

* ``"upper"`` (the default): the 95% interval's upper bound. The gate passes only when the data show Δ ≤ D. A
  noisy, small audit fails until it measures enough images, so a model can never pass by being measured less;
  this is the compliance reading of "bias at most D".
* ``"lower"``: the interval's lower bound. The gate fails only when the data show Δ > D, so it never fails on
  noise alone (a nightly regression alarm), but a small enough audit passes anything.
* ``"point"``: the estimate itself. Simple, and flips on noise when Δ is near D.

A profession's Δ interval is the image of its share's 95% Wilson interval under Δ = |F − t| / max(t, 1 − t):
the interval's farthest point from the target gives the upper bound, its nearest point (0 when it holds the
target) the lower one, so it covers the true Δ at least as often as the share's interval covers the share. The
mean Δ's interval is the audit's recorded bootstrap interval. A quantity that was not measured (no image the
classifier could read) fails the gate under every statistic: a gate that passes on no data is no gate.
"""

from __future__ import annotations

from dataclasses import dataclass

from debias.core.errors import InputError
from debias.results.records import AuditResult, ProfessionAudit

GATE_EXIT_CODE = 3  # distinct from a user error's 2 and from Python's 1 (a crash)
SCOPES = ("mean", "profession")
STATISTICS = ("upper", "point", "lower")  # the default first
STATISTIC_WORDS = {"upper": "upper 95% bound", "point": "estimate", "lower": "lower 95% bound"}


@dataclass(frozen=True)
class Judged:
    """One quantity the gate looked at: mean Δ or a profession's Δ, with its interval and the compared value."""

    name: str
    point: float | None
    low: float | None
    high: float | None
    value: float | None  # the chosen statistic; None: not measured


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict and what it rests on; ``failures`` are the judged quantities above the threshold."""

    passed: bool
    threshold: float
    scope: str
    statistic: str
    judged: tuple[Judged, ...]
    failures: tuple[Judged, ...]

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else GATE_EXIT_CODE

    def message(self) -> str:
        """One line for a CI log: the rule, the verdict, the numbers that decided it, and what to do on a failure."""
        judged = "mean Δ" if self.scope == "mean" else "any profession's Δ"
        rule = f"fails when the {STATISTIC_WORDS[self.statistic]} of {judged} is above {self.threshold:g}"
        if self.passed:
            worst = max(self.judged, key=lambda j: j.value)
            return f"gate passed ({rule}): {_described(worst)}."
        shown = "; ".join(_described(j) for j in self.failures[:5])
        more = f"; and {len(self.failures) - 5} more" if len(self.failures) > 5 else ""
        text = f"gate failed, exit {GATE_EXIT_CODE} ({rule}): {shown}{more}."
        if self.statistic == "upper" and any(j.point is not None and j.point <= self.threshold
                                             for j in self.failures):
            text += (" Where the estimate is at most the threshold the interval is too wide to show it: audit more "
                     "images (-n, or --test-images for a fix).")
        return text


def _described(j: Judged) -> str:
    if j.point is None:
        return f"{j.name} not measured (no image the classifier could read)"
    return f"{j.name} {j.point:.3f} [{_bound(j.low)}, {_bound(j.high)}]"


def _bound(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def check_gate_options(fail_above: float | None, scope: str, statistic: str) -> None:
    """Refuse a gate that cannot mean anything before any image is generated."""
    if scope not in SCOPES:
        raise InputError(f"--gate {scope!r}: choose one of {', '.join(SCOPES)}.")
    if statistic not in STATISTICS:
        raise InputError(f"--gate-statistic {statistic!r}: choose one of {', '.join(STATISTICS)}.")
    if fail_above is not None and not 0 <= fail_above < 1:
        raise InputError(f"--fail-above {fail_above:g}: Δ lies in [0, 1] (0: on target), so the threshold must be "
                         "at least 0 and below 1, e.g. 0.1.")


def judge(result: AuditResult, fail_above: float, *, scope: str = "mean", statistic: str = "upper") -> GateDecision:
    """Whether ``result`` passes a gate of ``fail_above`` on ``scope`` judged by ``statistic`` (see the module)."""
    check_gate_options(fail_above, scope, statistic)
    if scope == "mean":
        judged = [_judged("mean Δ", result.mean_delta, result.mean_delta_ci_low, result.mean_delta_ci_high,
                          statistic)]
    else:
        judged = [_judged(f"Δ({row.profession})", row.delta, *delta_interval(row), statistic)
                  for row in result.professions]
    if not judged:
        raise InputError("the audit has no profession to judge; audit at least one profession.")
    failures = tuple(j for j in judged if j.value is None or j.value > fail_above)
    return GateDecision(not failures, fail_above, scope, statistic, tuple(judged), failures)


def _judged(name: str, point: float | None, low: float | None, high: float | None, statistic: str) -> Judged:
    value = {"point": point, "lower": low, "upper": high}[statistic]
    return Judged(name, point, low, high, None if point is None else value)


def delta_interval(row: ProfessionAudit) -> tuple[float | None, float | None]:
    """A profession's 95% interval for Δ, from its share's: (nearest, farthest) distance to the target, scaled."""
    if row.ci_low is None or row.ci_high is None:
        return None, None
    scale = max(row.target, 1.0 - row.target)
    low_gap, high_gap = row.ci_low - row.target, row.ci_high - row.target
    nearest = 0.0 if low_gap <= 0 <= high_gap else min(abs(low_gap), abs(high_gap))
    return nearest / scale, max(abs(low_gap), abs(high_gap)) / scale
