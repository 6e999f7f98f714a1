"""The public API: the verbs are functions of the ``debias`` package, and the Python examples of the docs run."""

from __future__ import annotations

import re

import pytest
from doc_blocks import run_python_block

import debias


def test_verbs_stay_functions_after_their_modules_are_imported():
    """A verb's module must not share its name: importing it would replace ``debias.audit`` by the module."""
    import debias.verbs.audit  # noqa: F401
    import debias.editing  # noqa: F401
    import debias.fixing  # noqa: F401
    import debias.report  # noqa: F401

    for name in ("audit", "fix", "edit", "render_report"):
        assert callable(getattr(debias, name)), name
        assert getattr(debias, name).__name__ == name


def test_the_edit_example_runs(tmp_path, monkeypatch, capsys):
    said = run_python_block("debias.edit(", tmp_path, monkeypatch, capsys)
    assert re.search(r"^\d+ K/V layers edited; \d+ token rows$", said, flags=re.M)
    assert "edit: 1 pair(s)" in said and (tmp_path / "nurse.safetensors").is_file()
    edit = debias.editing.read_edit(tmp_path / "nurse.safetensors")
    assert edit.metadata["edits"][0]["destination"] == "a male nurse"
    assert edit.metadata["lambda_relative"] == pytest.approx(1.0)


@pytest.mark.slow
def test_the_audit_example_runs(tmp_path, monkeypatch, capsys):
    said = run_python_block("debias.audit(", tmp_path, monkeypatch, capsys)
    result = debias.AuditResult.from_json(tmp_path / "runs/py-audit")
    nurse = result.row("a nurse")
    assert f"nurse {nurse.share_female:.2f} [{nurse.ci_low:.2f}, {nurse.ci_high:.2f}]" in said
    assert [r.n for r in result.professions] == [32, 32] and (tmp_path / "runs/py-audit/report.html").is_file()
    assert nurse.share_female > result.row("a pilot").share_female  # the mini world plants 0.9 and 0.1


@pytest.mark.slow
def test_the_fix_and_report_example_runs(tmp_path, monkeypatch, capsys):
    said = run_python_block("debias.fix(", tmp_path, monkeypatch, capsys)
    result = debias.FixResult.from_json(tmp_path / "runs/py-fix")
    for row in result.professions:
        assert f"{row.profession}: {row.share_before:.2f} -> {row.share_after:.2f} ({row.status})" in said
    assert result.mean_delta_after < result.mean_delta_before
    assert (tmp_path / "runs/py-fix/report-again.html").is_file() and (tmp_path / "runs/py-fix/report.html").is_file()
