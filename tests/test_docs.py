"""The README's and docs/'s command and Python blocks: each runs in a test, or is checked where it needs what a test
machine lacks.

Every command is checked as its program would read it: a ``debias`` command by the CLI's own parser (every option
and value), a benchmark or training script by its argparse parser, a ``make`` target against the Makefile; every
Python block compiles. Then the blocks that run offline in seconds run here in a temporary folder, as a reader
would run them, on run folders built by the report tests' fixtures where they need one (``debias report``, label
imports, ``validity_for_run``). The Python API's examples run in tests/test_api.py. What is not run is a real model
(a download and a GPU), the labelling server (it waits for a person), or an offline run of minutes that a test
already makes smaller (``LONG`` says which test).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import re
import sys
from pathlib import Path

import pytest
from audit_helpers import run_cli
from doc_blocks import ROOT, Block, all_commands, block, blocks, commands, run_python_block

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "report"))

import runs  # noqa: E402

from debias.core.profiles import builtin_names  # noqa: E402
from debias.results.records import AuditResult  # noqa: E402

SHELL = ("printf", "echo")  # shell commands in the examples; nothing of debias to check
# offline runs of minutes, and the test that makes the same run smaller
LONG = {
    "debias fix --model mini --professions professions/mini.txt --out runs/fix":
        "5 minutes (make demo); tests/test_api.py fixes the mini model through Python",
    "--budget 1280 --test-images 1024": "over 10 minutes; tests/test_fix.py runs the rounds on the mini model",
    "--attribute gender --attribute skin --test-images 128": "5 minutes; tests/test_kclass_fix.py fixes crossed",
    "debias audit --model mini --out runs/audit":
        "a minute; tests/test_api.py audits the mini model through Python, tests/test_gate.py through the CLI",
    "--model mini-v2 --attribute skin --attribute age --intersect gender,age":
        "a minute; tests/test_mini_v2.py audits mini-v2's attributes on two professions",
}


def _id(item: tuple[Block, list[str]]) -> str:
    example, argv = item
    return f"{example.name}: {' '.join(argv)[:70]}"


COMMANDS = all_commands()


# --------------------------------------------------------------------------------------------- every block checked
@pytest.mark.parametrize("example, argv", COMMANDS, ids=[_id(c) for c in COMMANDS])
def test_every_command_is_one_its_program_accepts(example, argv, monkeypatch):
    program = Path(argv[0]).name
    if program == "debias":
        _parse_debias(argv[1:])
    elif program == "accelerate":  # accelerate launch … -m debias VERB …
        at = argv.index("-m")
        assert argv[at + 1] == "debias", argv
        _parse_debias(argv[at + 2:])
    elif program == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(encoding="utf-8"), flags=re.M)
        assert set(argv[1:]) <= set(targets), f"{example.name}: no make target {argv[1:]}"
    elif program.startswith("python"):
        _parse_python(argv[1:], monkeypatch)
    else:
        assert program in SHELL, f"{example.name}: {program}: say in tests/test_docs.py how to check it"


def _parse_debias(args: list[str]) -> None:
    """Parse a command line with the CLI's own parser (unknown options and bad values fail) without running it."""
    import typer

    from debias.cli import app

    verb = typer.main.get_command(app).commands[args[0]]
    with verb.make_context(args[0], list(args[1:])):
        pass


class _Parsed(Exception):
    """Raised once a script's arguments are parsed, so that nothing of the script runs."""


def _parse_python(args: list[str], monkeypatch) -> None:
    """``python SCRIPT …`` or ``python -m MODULE …``: the script's argparse parser reads the arguments, then it stops."""
    if args[:2] == ["-m", "pytest"]:
        return  # pytest's own options
    if args[0] == "-m":
        spec, rest = importlib.util.find_spec(args[1]), args[2:]
    else:
        assert (ROOT / args[0]).is_file(), f"no script {args[0]}"
        spec, rest = importlib.util.spec_from_file_location(Path(args[0]).stem, ROOT / args[0]), args[1:]
    assert spec is not None, args
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # as an import would (a dataclass looks its module up)
    spec.loader.exec_module(module)
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, _args=None, namespace=None):
        real(self, rest, namespace)  # a bad option exits with argparse's message
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(_Parsed):
        module.main()


@pytest.mark.parametrize("example", blocks("python"), ids=lambda b: f"{b.name}: {b.text[:40]}")
def test_every_python_block_compiles(example):
    compile(example.text, example.name, "exec")


def test_offline_runs_not_run_here_are_named_with_the_test_that_runs_them_smaller():
    """A command that audits or fixes a built-in model runs here, or LONG names it: a new one needs a decision."""
    offline = [" ".join(argv) for _, argv in COMMANDS if Path(argv[0]).name == "debias"
               and argv[1] in ("audit", "fix") and _model(argv) in builtin_names()]
    ran_here = {" ".join(argv) for argv in _gate_example()}
    for line in offline:
        assert line in ran_here or any(key in line for key in LONG), f"run it in a test, or name it in LONG: {line}"
    assert all(any(key in line for line in offline) for key in LONG)  # nothing in LONG has left the docs


def _model(argv: list[str]) -> str:
    return argv[argv.index("--model") + 1] if "--model" in argv else "mini"


# ----------------------------------------------------------------------------------------- the blocks that run
@pytest.fixture
def run_folders(tmp_path) -> Path:
    """The run folders the docs' report and label commands name, built as the report tests build theirs."""
    runs.make_audit(tmp_path / "runs" / "audit")
    runs.make_fix(tmp_path / "runs" / "fix")
    runs.make_fix(tmp_path / "runs" / "sd14-fix")
    runs.make_audit(tmp_path / "runs" / "sd14", runs.REAL_BEFORE, spec="CompVis/stable-diffusion-v1-4",
                    synthetic=False)
    runs.make_audit(tmp_path / "runs" / "sd14-fixed", runs.REAL_AFTER, spec="CompVis/stable-diffusion-v1-4",
                    synthetic=False)
    audit = AuditResult.from_json(tmp_path / "runs" / "audit")
    samples = [s["image"] for row in audit.professions for s in row.samples]
    with (tmp_path / "labels.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label", "labeller"])
        writer.writerows([image, "female" if i % 2 else "male", "ana"] for i, image in enumerate(samples[:6]))
    return tmp_path


def _report_and_import_commands() -> list[list[str]]:
    """Every ``debias report`` and ``debias label … --import`` of the docs: they read run folders and load no model,
    so each runs here, on folders built where the docs name them."""
    return [argv for _, argv in COMMANDS if argv[0] == "debias"
            and (argv[1] == "report" or (argv[1] == "label" and "--import" in argv))]


def test_report_and_label_import_commands_run(run_folders, monkeypatch, capsys):
    monkeypatch.chdir(run_folders)
    ran = _report_and_import_commands()
    assert any(argv[1] == "label" for argv in ran) and len(ran) >= 4
    for argv in sorted(ran, key=lambda a: a[1] != "label"):  # labels first, as a reader would
        if not Path(argv[2]).exists():
            pytest.fail(f"{' '.join(argv)}: the test builds no {argv[2]}")
        code, out, err = run_cli(argv[1:], capsys)
        assert code == 0, (argv, err)
        assert out.startswith("imported" if argv[1] == "label" else "wrote"), (argv, out)


def test_the_edit_command_on_the_mini_model_runs(tmp_path, monkeypatch, capsys):
    (argv,) = [a for a in commands(block("bash", "debias edit --model mini")) if _model(a) == "mini"]
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(argv[1:], capsys)
    assert code == 0 and (tmp_path / "nurse.safetensors").is_file(), err


def test_the_mini_model_loads_with_plain_diffusers(tmp_path, monkeypatch, capsys):
    example = block("python", "debias.mini.PIPELINE_DIR")
    namespace: dict = {}
    monkeypatch.chdir(tmp_path)
    exec(compile(example.text, example.name, "exec"), namespace)
    assert len(namespace["images"]) == 64 and namespace["images"][0].size == (32, 32)


def test_validity_for_run_example_runs(run_folders, monkeypatch, capsys):
    run_python_block("validity_for_run", run_folders, monkeypatch, capsys)


def _gate_example() -> list[list[str]]:
    return commands(block("bash", "--fail-above 0.3"))


@pytest.mark.slow
def test_the_gate_example_fails_and_prints_what_the_docs_say(tmp_path, monkeypatch, capsys):
    """docs/ci.md's CPU example: the mini model's gate fails with exit 3 and the line the page quotes."""
    (audit_argv, echo) = _gate_example()
    assert echo[0] == "echo"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "professions").symlink_to(ROOT / "professions")
    code, out, err = run_cli(audit_argv[1:], capsys)
    page = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    quoted = re.search(r"^(gate failed, exit 3 .*)$", page, flags=re.M).group(1)
    assert code == 3 and quoted in err.splitlines(), err
    assert (tmp_path / "runs" / "gate" / "report.html").is_file()
