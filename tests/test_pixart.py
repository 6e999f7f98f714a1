"""PixArt-α through the audit and the edit: the size it is generated at and the text it encodes.

The tiny PixArt transformer has sample size 8, which has no entry in PixArt's aspect-ratio tables, so a
call with resolution binning raises; and caption cleaning warns on every call without beautifulsoup4.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from audit_helpers import HalfClassifier
from debias.verbs.audit import audit
from debias.editing import edit_rows, encode_conditioning, prompt_tokens
from debias.generation.generate import default_settings, generate_images
from debias.core.models import find_cross_attention
from tiny_models import tiny_pixart

CLEANING_WORDS = ("bs4", "beautifulsoup", "ftfy", "clean_caption", "Invalid sample size")


@pytest.fixture(scope="module")
def pipe():
    return tiny_pixart(seed=0)


def _settings(pipe, guidance: float = 1.0):
    from debias.core.profiles import get_profile

    return default_settings(pipe, get_profile("default").sampler, steps=2, guidance=guidance)


def test_pixart_audit_runs_at_a_size_without_a_bin_and_prints_no_warning(
        pipe, tmp_path: Path, capfd, caplog, recwarn) -> None:
    assert pipe.transformer.config.sample_size not in (32, 64, 128, 256)  # no aspect-ratio table for it
    professions = tmp_path / "professions.txt"
    professions.write_text("a nurse\na doctor\n", encoding="utf-8")
    capfd.readouterr()
    with caplog.at_level(logging.WARNING):
        rec = audit(pipe, classifier=HalfClassifier(), professions=professions, images_per_profession=2,
                    out=tmp_path / "run", steps=2, batch_size=2, progress=False).to_dict()
    printed = "".join(capfd.readouterr()) + caplog.text + "".join(str(w.message) for w in recwarn)
    assert not [word for word in CLEANING_WORDS if word.lower() in printed.lower()], printed
    assert rec["images_generated"] == 4
    assert json.loads((tmp_path / "run" / "audit.json").read_text())["model"]["class"] == "PixArtAlphaPipeline"
    side = rec["generation"]["height"]
    for row in rec["professions"]:
        assert row["n"] == 2 == row["n_female"] + row["n_male"] + row["n_unclear"]
        for sample in row["samples"]:
            assert Image.open(tmp_path / "run" / sample["image"]).size == (side, side)  # the size asked for


def test_generation_and_the_edit_call_pixart_with_the_same_text_options(pipe, monkeypatch) -> None:
    calls: list[dict] = []
    original = type(pipe).__call__

    @functools.wraps(original)  # keeps the signature the options are read from
    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "__call__", spy)
    generate_images(pipe, ["a photo of a nurse"], [0], _settings(pipe))
    encode_conditioning(pipe, ["a photo of a nurse"])
    options = [{k: c.get(k) for k in ("clean_caption", "use_resolution_binning")} for c in calls]
    assert options == [{"clean_caption": False, "use_resolution_binning": False}] * 2


def _kv_input_during_generation(pipe, prompt: str) -> torch.Tensor:
    """What the first K/V projection reads on the first denoiser call of a real generation."""
    seen: list[torch.Tensor] = []
    handle = find_cross_attention(pipe)[0].module.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].detach().clone()) if not seen else None)
    try:
        generate_images(pipe, [prompt], [0], _settings(pipe))  # guidance 1: no unconditional rows
    finally:
        handle.remove()
    return seen[0]


def test_the_edit_encodes_the_text_generation_encodes(pipe) -> None:
    prompt = "  A Photo of a NURSE "
    generated = _kv_input_during_generation(pipe, prompt)
    captured = encode_conditioning(pipe, [prompt])
    assert torch.equal(captured, generated)
    # the pipeline lower-cases and strips the prompt, so it is the same conditioning as the plain prompt …
    assert torch.equal(captured, encode_conditioning(pipe, ["a photo of a nurse"]))
    # … and token alignment reads the tokens that were encoded ("NURSE" alone would be five letters)
    length = captured.shape[1]
    assert prompt_tokens(pipe, prompt, length) == prompt_tokens(pipe, "a photo of a nurse", length)
    assert prompt_tokens(pipe, prompt, length)[:5] == ["▁a", "▁photo", "▁of", "▁a", "▁nurse"]
    upper = edit_rows(pipe, "A NURSE", "A MALE NURSE")
    lower = edit_rows(pipe, "a nurse", "a male nurse")
    assert all(torch.equal(u, v) for u, v in zip(upper, lower))
    assert not torch.allclose(lower[0], lower[1])  # the rows do move: the comparison can fail


def test_pixart_images_depend_on_the_seed_not_on_the_batch(pipe) -> None:
    settings = _settings(pipe, guidance=4.5)
    together = generate_images(pipe, ["a photo of a nurse"] * 2, [3, 4], settings)
    alone = generate_images(pipe, ["a photo of a nurse"], [4], settings)
    assert together.shape[1:3] == (settings.height, settings.width)
    assert not np.array_equal(together[0], together[1])
    assert np.abs(together[1].astype(int) - alone[0].astype(int)).max() <= 1
