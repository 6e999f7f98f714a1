"""Finding and reading the run files a report is rendered from, as the typed results of :mod:`debias.results.records`.

A report takes one audit folder, one fix folder, or two audit folders (before, then after). Every file is read
into an :class:`~debias.results.records.AuditResult` or :class:`~debias.results.records.FixResult`, so the report sees exactly the
fields the verbs wrote and recomputes none of them. A file that is broken, cut short, or written by another
version of debias fails here, with a message saying what to do, rather than giving a page with numbers missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from debias.core.errors import InputError
from debias.results.records import AuditResult, FixResult

RERUN = "rerun the command that wrote it (debias audit / debias fix with the same --out); finished images are cached"


@dataclass
class Runs:
    """The results one report is rendered from, and the files they came from.

    ``audits`` is keyed ``"audit"`` for one audit, ``"before"`` / ``"after"`` for a fix or a comparison; ``files``
    has the same keys (plus ``"fix"``), so every number on the page can name the file it was read from.
    """

    kind: str  # "audit" | "fix" | "compare"
    audits: dict[str, AuditResult]
    files: dict[str, Path]
    fix: FixResult | None = None

    @property
    def sides(self) -> list[str]:
        return list(self.audits)

    @property
    def paired(self) -> bool:
        return self.kind != "audit"

    @property
    def first(self) -> AuditResult:
        return self.audits[self.sides[0]]

    @property
    def last(self) -> AuditResult:
        return self.audits[self.sides[-1]]

    @property
    def has_oracle(self) -> bool:
        """A synthetic world (its planted and oracle shares are known): shown as extra columns and a caveat."""
        return any(audit.has_oracle for audit in self.audits.values())

    def folder(self, side: str) -> Path:
        return self.files[side].parent


def read_runs(run_dirs: Sequence[str | Path]) -> Runs:
    """Locate and read the results behind a report; the number and kinds of folders decide the report's kind."""
    if not run_dirs:
        raise InputError("no run folder given; pass an audit folder, a fix folder, or two audit folders "
                         "(before, after).")
    located = [locate(d) for d in run_dirs]
    kinds = [kind for kind, _ in located]
    if kinds == ["fix"]:
        return _read_fix(located[0][1])
    if kinds == ["audit"]:
        path = located[0][1]
        return Runs("audit", {"audit": read_result(path, AuditResult)}, {"audit": path})
    if kinds == ["audit", "audit"]:
        files = {"before": located[0][1], "after": located[1][1]}
        return Runs("compare", {side: read_result(path, AuditResult) for side, path in files.items()}, files)
    raise InputError("pass one audit folder, one fix folder, or two audit folders (before, then after); got "
                     + ", ".join(f"{k} ({p.parent})" for k, p in located) + ".")


def locate(run_dir: str | Path) -> tuple[str, Path]:
    """Return ("audit" | "fix", json file) for a run folder (or a run JSON file given directly)."""
    path = Path(run_dir)
    if path.is_file():
        if path.name.endswith("fix.json"):
            return "fix", path
        if path.suffix == ".json":
            return "audit", path
        raise InputError(f"{path}: is not a run folder or a run JSON file; pass the folder that "
                         "'debias audit --out' or 'debias fix --out' wrote.")
    if not path.is_dir():
        raise InputError(f"{path}: no such folder; pass the folder that 'debias audit --out' or "
                         "'debias fix --out' wrote.")
    for kind, cls in (("fix", FixResult), ("audit", AuditResult)):
        if (path / cls.FILE).is_file():
            return kind, path / cls.FILE
    raise InputError(f"{path}: contains neither audit.json nor fix.json; pass the folder that "
                     "'debias audit --out' or 'debias fix --out' wrote (or finish that run first).")


def _read_fix(path: Path) -> Runs:
    """A fix and the before/after audits it judged itself by, which must be in the same folder."""
    fix = read_result(path, FixResult)
    files = {"fix": path}
    audits = {}
    for side, rel in (("before", fix.before), ("after", fix.after)):
        files[side] = path.parent / rel
        if not files[side].is_file():
            raise InputError(f"{path}: refers to {side} audit '{rel}', which is missing ({files[side]}); copy the "
                             "whole fix folder, or rerun 'debias fix' with the same --out to finish it.")
        audits[side] = read_result(files[side], AuditResult)
    return Runs("fix", audits, files, fix)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number in strict JSON")


def read_result(path: Path, cls: type[AuditResult] | type[FixResult]) -> AuditResult | FixResult:
    """Read one run file into its result type, turning every way it can be broken into an error that teaches."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror}); check the path and permissions.") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: is not UTF-8 text, so not a file written by debias; {RERUN}.") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{err.lineno}:{err.colno}: not valid JSON ({err.msg}). The file was cut short "
                         f"or edited by hand; {RERUN}.") from None
    except ValueError as err:
        raise InputError(f"{path}: not valid JSON ({err}); {RERUN}.") from None
    expected = cls.FILE.removesuffix(".json")
    if not isinstance(data, dict) or data.get("kind") != expected:
        found = data.get("kind") if isinstance(data, dict) else type(data).__name__
        raise InputError(f"{path}: expected a debias {expected} record (\"kind\": \"{expected}\"), found {found!r}; "
                         f"pass the folder that 'debias {expected} --out' wrote.")
    rows = data.get("professions")
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise InputError(f"{path}: has no 'professions' list of objects, so it is not a complete {expected} "
                         f"record; {RERUN}.")
    return cls.from_dict(data, str(path))
