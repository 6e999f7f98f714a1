"""Device, dtype, image size and batch options: the same names on audit, fix and edit, and what they change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from audit_helpers import HalfClassifier, load_tiny, run_cli, tiny_folders
from debias.generation import generate
from debias.editing import read_edit


def _list(tmp_path: Path) -> Path:
    path = tmp_path / "professions.txt"
    path.write_text("a nurse\na pilot\n", encoding="utf-8")
    return path


SIZE = ["--height", "24", "--width", "32", "--device", "cpu", "--dtype", "float32"]  # tiny model's native: 16×16


def test_audit_takes_size_device_and_dtype(tmp_path, capsys):
    sd, clip = tiny_folders()
    out = tmp_path / "audit"
    code, _, err = run_cli(["audit", "--model", str(sd), "--classifier", str(clip), "--professions", str(_list(tmp_path)),
                        "-n", "2", "--steps", "2", "--out", str(out), "--threads", "1", *SIZE], capsys)
    assert code == 0, err
    record = json.loads((out / "audit.json").read_text())
    assert (record["generation"]["height"], record["generation"]["width"]) == (24, 32)
    assert record["generation"]["dtype"] == "float32" and record["hardware"]["device"] == "cpu"
    from PIL import Image

    image = record["professions"][0]["samples"][0]["image"]
    assert Image.open(out / image).size == (32, 24)


def test_fix_takes_the_generation_options_of_audit(tmp_path, capsys):
    sd, clip = tiny_folders()
    out = tmp_path / "fix"
    code, stdout, err = run_cli(["fix", "--model", str(sd), "--classifier", str(clip), "--professions",
                             str(_list(tmp_path)), "--budget", "32", "--test-images", "2", "--check-images", "2",
                             "--joint-rounds", "1", "--side-seeds", "1", "--steps", "2", "--guidance", "3.0",
                             "--batch-size", "3", "--min-confidence", "0.5", "--out", str(out), "--threads", "1",
                             *SIZE], capsys)
    assert code == 0, err
    record = json.loads((out / "fix.json").read_text())
    generation = record["generation"]
    assert (generation["height"], generation["width"], generation["steps"], generation["guidance"]) == (24, 32, 2, 3.0)
    assert record["classifier"]["abstain"]["min_confidence"] == 0.5
    for stage in ("before", "tuning", "after"):
        audited = json.loads((out / stage / "audit.json").read_text())
        assert audited["generation"]["height"] == 24 and audited["generation"]["batch_size"] == 3
    # the edit file is named exactly when there is one
    assert ("edit.safetensors" in stdout) == (record["edit_file"] is not None) == (out / "edit.safetensors").exists()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_edit_takes_device_and_dtype(tmp_path, capsys, dtype):
    sd, _ = tiny_folders()
    out = tmp_path / "edit.safetensors"
    code, _, err = run_cli(["edit", "--model", str(sd), "--source", "a nurse", "--destination", "a male nurse",
                        "--lam-relative", "1.0", "--device", "cpu", "--dtype", dtype, "--out", str(out)], capsys)
    assert code == 0, err
    edit = read_edit(out)
    assert {str(w.dtype) for w in edit.weights.values()} == {f"torch.{dtype}"}
    assert edit.matrix.dtype == torch.float64  # the solve keeps full precision whatever the weights' dtype


@pytest.mark.parametrize("argv, expected", [
    (["--height", "18"], "--height 18: image sizes must be positive multiples of 8 for this pipeline; try 16"),
    (["--dtype", "float8"], "unknown dtype 'float8'"),
])
def test_bad_generation_options_are_clear_errors(tmp_path, capsys, argv, expected):
    sd, clip = tiny_folders()
    code, _, err = run_cli(["audit", "--model", str(sd), "--classifier", str(clip), "--professions",
                        str(_list(tmp_path)), "-n", "1", "--out", str(tmp_path / "a"), *argv], capsys)
    assert code == 2 and expected in err, err


def test_a_gpu_device_without_a_gpu_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    sd, _ = tiny_folders()
    code, _, err = run_cli(["edit", "--model", str(sd), "--source", "a nurse", "--destination", "a male nurse",
                        "--lam-relative", "1.0", "--device", "cuda", "--out", str(tmp_path / "e.safetensors")], capsys)
    assert code == 2 and "torch sees no CUDA GPU here; use --device cpu" in err, err


def test_out_of_memory_halves_the_batch_then_says_what_to_lower(tmp_path, capsys, monkeypatch):
    pipe, _ = load_tiny()
    real = generate._generate
    sizes = []

    def limited(pipe, prompts, seeds, settings, edit):
        sizes.append(len(prompts))
        if len(prompts) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(pipe, prompts, seeds, settings, edit)

    monkeypatch.setattr(generate, "_generate", limited)
    from debias.verbs.audit import audit

    record = audit(pipe, classifier=HalfClassifier(), professions=_list(tmp_path), images_per_profession=5,
                   out=tmp_path / "a", steps=2, batch_size=8, progress=False).to_dict()
    assert sizes[:3] == [8, 4, 2] and set(sizes[3:]) <= {1, 2}  # halved twice, then kept
    assert sum(row["n"] for row in record["professions"]) == 10
    assert "continuing with 4" in capsys.readouterr().err

    monkeypatch.setattr(generate, "_generate", lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError("OOM")))
    from debias.core.errors import GenerationError

    with pytest.raises(GenerationError, match=r"out of cpu memory generating one 16×16 image in float32: lower "
                                              r"--height/--width \(e.g. 8\)"):
        audit(pipe, classifier=HalfClassifier(), professions=_list(tmp_path), images_per_profession=1,
              out=tmp_path / "b", steps=2, batch_size=2, progress=False)


def test_attribute_options_are_declared_once_for_audit_and_fix(capsys):
    """--attribute and --intersect are shared declarations (flags.AttributeOptions, flags.IntersectOptions): audit has
    them, and a verb that audits (fix) takes them under the same names."""
    import typing

    from debias.cli import flags

    for declared, flag in ((flags.AttributeOptions, "--attribute"), (flags.IntersectOptions, "--intersect")):
        option = typing.get_args(declared)[1]
        assert flag in (option.default, *option.param_decls)  # typer keeps an Annotated option's name as its default
    code, out, _ = run_cli(["audit", "--help"], capsys)
    assert code == 0 and "--attribute" in out and "--intersect" in out
