"""The command line as a whole: --version, usage errors, and the option groups every verb's --help shows."""

from __future__ import annotations

import importlib.metadata
import re

import pytest
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


VERBS = ("audit", "fix", "edit", "report", "label")


@pytest.mark.parametrize("verb", VERBS)
def test_every_option_of_every_verb_has_a_help_group(verb):
    import typer

    from debias.cli import PANELS, app

    command = typer.main.get_command(app).commands[verb]
    options = [p for p in command.params if p.param_type_name == "option" and p.name != "help"]
    assert options
    for option in options:
        assert getattr(option, "rich_help_panel", None) in PANELS, f"{verb} {option.opts}: no help group"


@pytest.mark.parametrize("verb", VERBS)
def test_help_shows_the_groups_in_their_order(verb, capsys):
    from debias.cli import PANELS

    code, out, _ = run_cli([verb, "--help"], capsys)
    assert code == 0
    shown = [m for m in re.findall(r"^╭─ (.+?) ─", out, flags=re.M) if m not in ("Options", "Arguments")]
    assert shown and len(shown) == len(set(shown)), shown
    assert shown == sorted(shown, key=PANELS.index), shown  # an unknown title fails here too (not in PANELS)


def test_everyday_options_come_first(capsys):
    """What most runs set (the model, the professions, where to write, how many images) is in the first groups."""
    from debias.cli import CLASSIFIER

    for verb, everyday in (("audit", ["--model", "--professions", "--out", "--images-per-profession"]),
                           ("fix", ["--model", "--professions", "--out", "--test-images"])):
        _, out, _ = run_cli([verb, "--help"], capsys)
        places = [out.index(flag) for flag in everyday]
        assert places == sorted(places) and places[-1] < out.index(f"╭─ {CLASSIFIER} ─"), verb
