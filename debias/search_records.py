"""The records of a λ search: one evaluation, the result, and their JSON form.

A search's trace (every λ tried, its seeds and labels) is what ``fix.json`` shows a reviewer and what a rerun
reads back instead of searching again (:meth:`SearchResult.from_dict`), so it is kept apart from the search
algorithm (:mod:`debias.search`) and the curve fitted to it (:mod:`debias.logistic`). All names here are
importable from :mod:`debias.search` too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional, Sequence

from debias.stats import interval_within_band

Label = str  # "female" | "male" | "unclear"
Evaluate = Callable[[float, Sequence[int]], Sequence[Label]]
Status = Literal["converged", "not_reachable", "budget_exhausted"]

LABELS = ("female", "male", "unclear")


@dataclass(frozen=True)
class Evaluation:
    """One call of ``evaluate``: the seeds tried at one λ and the labels they got."""

    round: int
    phase: str  # "reference" (unedited) | "bracket" | "refine"
    log_lambda_relative: float  # math.inf for the unedited reference
    seeds: tuple[int, ...]
    labels: tuple[Label, ...]

    @property
    def lambda_relative(self) -> float:
        return math.exp(self.log_lambda_relative) if math.isfinite(self.log_lambda_relative) else math.inf

    @property
    def n_female(self) -> int:
        return sum(label == "female" for label in self.labels)

    @property
    def n_male(self) -> int:
        return sum(label == "male" for label in self.labels)

    @property
    def n_unclear(self) -> int:
        return len(self.labels) - self.n_female - self.n_male

    @property
    def share(self) -> float:
        """Female share among clear images (nan when every image is unclear)."""
        clear = self.n_female + self.n_male
        return self.n_female / clear if clear else math.nan

    @property
    def unclear_rate(self) -> float:
        return self.n_unclear / len(self.labels) if self.labels else 0.0

    def to_dict(self, lambda_scale: float = 1.0) -> dict:
        """A JSON-ready row of the search trace; ``lambda`` is absolute (λ_rel × ``lambda_scale``)."""
        finite = math.isfinite(self.log_lambda_relative)
        return {
            "round": self.round,
            "phase": self.phase,
            "lambda": self.lambda_relative * lambda_scale if finite else None,
            "lambda_relative": self.lambda_relative if finite else None,
            "n": len(self.labels),
            "n_female": self.n_female,
            "n_male": self.n_male,
            "n_unclear": self.n_unclear,
            "share_female": None if math.isnan(self.share) else self.share,
            "seeds": [int(s) for s in self.seeds],
        }


@dataclass
class SearchResult:
    """Outcome of a search: the chosen λ, the share there with its interval, and the full trace."""

    status: Status
    target: float
    tolerance: float
    budget: int
    images_used: int
    log_lambda_relative: Optional[float]  # chosen λ (None only if nothing could be chosen)
    share: float  # fitted female share at the chosen λ
    ci_low: float
    ci_high: float
    bracket: tuple[float, float]  # log λ_rel window of the fit
    closest_share: float  # best share seen (observed) — what a not_reachable profession gets at most
    message: str
    evaluations: list[Evaluation] = field(default_factory=list)
    direction: int = 0  # +1: the share rises with λ (the edit lowers it); -1: the edit raises it

    @property
    def lambda_relative(self) -> Optional[float]:
        return None if self.log_lambda_relative is None else math.exp(self.log_lambda_relative)

    @property
    def within_tolerance(self) -> bool:
        """The whole interval at the chosen λ lies inside target ± tolerance (what ``converged`` means)."""
        return interval_within_band(self.ci_low, self.ci_high, self.target, self.tolerance)

    def trace(self, lambda_scale: float = 1.0) -> list[dict]:
        return [e.to_dict(lambda_scale) for e in self.evaluations]

    def to_dict(self, lambda_scale: float = 1.0) -> dict:
        lam = self.lambda_relative
        num = lambda v: None if v is None or not math.isfinite(v) else float(v)  # noqa: E731 — JSON has no NaN
        return {
            "status": self.status,
            "target": self.target,
            "tolerance": self.tolerance,
            "budget": self.budget,
            "images_used": self.images_used,
            "lambda": None if lam is None else lam * lambda_scale,
            "lambda_relative": lam,
            "share": num(self.share),
            "ci_low": num(self.ci_low),
            "ci_high": num(self.ci_high),
            "bracket_lambda_relative": [math.exp(self.bracket[0]), math.exp(self.bracket[1])],
            "closest_share": num(self.closest_share),
            "message": self.message,
            "direction": self.direction,
            "search": self.trace(lambda_scale),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SearchResult":
        """Rebuild a result saved with ``to_dict`` (so a finished search is never redone)."""
        evaluations = []
        for row in d["search"]:
            lam = row["lambda_relative"]
            labels = ["female"] * row["n_female"] + ["male"] * row["n_male"] + ["unclear"] * row["n_unclear"]
            evaluations.append(
                Evaluation(row["round"], row["phase"], math.log(lam) if lam is not None else math.inf,
                           tuple(row["seeds"]), tuple(labels))  # label order per seed is not kept in the trace
            )
        lam = d["lambda_relative"]
        lo, hi = d["bracket_lambda_relative"]
        nan = lambda v: math.nan if v is None else v  # noqa: E731
        return cls(d["status"], d["target"], d["tolerance"], d["budget"], d["images_used"],
                   None if lam is None else math.log(lam), nan(d["share"]), nan(d["ci_low"]), nan(d["ci_high"]),
                   (math.log(lo), math.log(hi)), nan(d["closest_share"]), d["message"], evaluations,
                   d.get("direction", 0))
