"""The command line as a whole: --version, usage errors, and the option groups every verb's --help shows."""

from __future__ import annotations

import importlib.metadata

from audit_helpers import run_cli

import debias


def test_version_is_the_installed_one(capsys):
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out == f"debias {importlib.metadata.version('debias')}\n"


def test_version_falls_back_to_the_source_tree(capsys, monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out == f"debias {debias.__version__}\n"


def test_an_unknown_option_is_a_usage_error_not_a_traceback(capsys):
    code, _, err = run_cli(["audit", "--no-such-option"], capsys)
    assert code == 2 and "No such option: --no-such-option" in err and "Traceback" not in err
