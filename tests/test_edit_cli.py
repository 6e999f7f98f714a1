"""`debias edit` on a tiny pipeline saved to a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from debias.editing import load_edit, read_edit, revert_edit
from debias.core.models import find_cross_attention, fingerprint, load_pipeline
from audit_helpers import run_cli
from tiny_models import save_tiny, tiny_sd1


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny(tiny_sd1(), tmp_path_factory.mktemp("cli") / "sd1")


def test_edit_pairs_writes_an_edit_file_and_pipeline(model_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "nurse.safetensors"
    code, stdout, err = run_cli(["edit", "--model", str(model_dir), "--source", "a nurse", "--destination", "a male nurse",
                             "--source", "a CEO", "--destination", "a female CEO", "--lam-relative", "0.1",
                             "--out", str(out), "--save-pipeline", str(tmp_path / "edited"), "--threads", "1"], capsys)
    assert code == 0, err
    assert "2 pair(s)" in stdout and str(out) in stdout
    edit = read_edit(out)
    assert edit.metadata["lambda_relative"] == pytest.approx(0.1)
    assert [e["destination"] for e in edit.metadata["edits"]] == ["a male nurse", "a female CEO"]
    assert edit.metadata["base_model"] == str(model_dir)
    assert len(edit.metadata["augmentations"]) == 3

    pipe = load_pipeline(str(model_dir))
    original = {p.name: p.module.weight.detach().clone() for p in find_cross_attention(pipe)}
    load_edit(pipe, out)
    edited = {p.name: p.module.weight.detach().clone() for p in find_cross_attention(pipe)}
    assert all(not torch.equal(edited[n], original[n]) for n in original)
    revert_edit(pipe)

    saved = load_pipeline(str(tmp_path / "edited"))
    assert all(torch.equal(p.module.weight, edited[p.name]) for p in find_cross_attention(saved))
    assert (tmp_path / "edited" / "debias_edit.json").is_file()
    card = (tmp_path / "edited" / "README.md").read_text(encoding="utf-8")  # a model card, ready for a hub
    assert card.startswith("---\nlicense: ") and 'library_name: "diffusers"' in card
    assert "| a CEO | a female CEO | 0.1 |" in card and "## Bias evaluation\n\nNot measured yet." in card


def test_edit_from_timed_style_csv(model_dir: Path, tmp_path: Path, capsys) -> None:
    csv = tmp_path / "pairs.csv"
    csv.write_text("old,new,positive1\nA nurse,A male nurse,x\nAn attendant,A female attendant,y\n\n")
    out = tmp_path / "csv.safetensors"
    code, stdout, err = run_cli(["edit", "--model", str(model_dir), "--csv", str(csv), "--lam", "2.5", "--no-augment",
                             "--out", str(out)], capsys)
    assert code == 0, err
    edit = read_edit(out)
    assert edit.metadata["lambda"] == pytest.approx(2.5)
    assert edit.metadata["augmentations"] == []
    assert edit.metadata["rows"] == 76 + 76  # one bare prompt per pair, one padding position dropped each
    assert edit.metadata["fingerprint"] == fingerprint(load_pipeline(str(model_dir)))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--csv", "{csv}"], "missing column(s) new"),
        (["--csv", "{tmp}/none.csv"], "no such file"),
        (["--source", "a nurse"], "in pairs"),
        (["--source", "a nurse", "--destination", "a male nurse"], "exactly one of --lam"),
        (["--source", "a nurse", "--destination", "a male nurse", "--lam", "0"], "positive"),
        (["--source", "a nurse", "--destination", "a tall doctor", "--lam", "1"], "does not contain"),
    ],
)
def test_bad_inputs_give_a_clear_message_and_exit_2(model_dir: Path, tmp_path: Path, capsys, args, message) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("old,other\nA nurse,A male nurse\n")
    args = [a.format(csv=csv, tmp=tmp_path) for a in args]
    code, _, err = run_cli(["edit", "--model", str(model_dir), *args, "--out", str(tmp_path / "e.safetensors")], capsys)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "e.safetensors").exists()


def test_missing_model_is_a_clear_error(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["edit", "--model", str(tmp_path / "no" / "model"), "--source", "a nurse",
                        "--destination", "a male nurse", "--lam", "1"], capsys)
    assert code == 2 and "no such folder" in err and "Traceback" not in err
