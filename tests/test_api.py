"""The public API: the verbs are functions of the ``debias`` package, and the README's Python blocks run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import debias

README = Path(__file__).resolve().parents[1] / "README.md"


def test_verbs_stay_functions_after_their_modules_are_imported():
    """A verb's module must not share its name: importing it would replace ``debias.audit`` by the module."""
    import debias.auditing  # noqa: F401
    import debias.editing  # noqa: F401
    import debias.fixing  # noqa: F401
    import debias.report  # noqa: F401

    for name in ("audit", "fix", "edit", "render_report"):
        assert callable(getattr(debias, name)), name
        assert getattr(debias, name).__name__ == name


def _python_block(containing: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    (block,) = [b for b in blocks if containing in b]
    return block


def test_readme_edit_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_python_block("debias.edit("), "README.md", "exec"), {})
    said = capsys.readouterr().out
    assert re.search(r"^\d+ K/V layers edited; \d+ token rows$", said, flags=re.M)
    assert "edit: 1 pair(s)" in said and (tmp_path / "nurse.safetensors").is_file()
    edit = debias.editing.read_edit(tmp_path / "nurse.safetensors")
    assert edit.metadata["edits"][0]["destination"] == "a male nurse"
    assert edit.metadata["lambda_relative"] == pytest.approx(1.0)
