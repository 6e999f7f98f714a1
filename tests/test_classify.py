"""CLIP zero-shot classification: the abstain rule, preprocessing, prompt averaging, loading errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from audit_helpers import tiny_folders
from debias.classify import Preprocess, decide, load_classifier, resolve_labels
from debias.errors import InputError, ModelLoadError


def test_abstain_rule() -> None:
    # columns: female, male, none
    probs = torch.tensor([[0.80, 0.10, 0.10],   # confident female
                          [0.05, 0.90, 0.05],   # confident male
                          [0.20, 0.10, 0.70],   # no person
                          [0.42, 0.38, 0.20]])  # ambiguous: p_female 0.525 < 0.6
    labels, p_female = decide(probs, min_confidence=0.6)
    assert labels == ["female", "male", "unclear", "unclear"]
    assert p_female.tolist() == pytest.approx([0.8 / 0.9, 0.05 / 0.95, 0.2 / 0.3, 0.42 / 0.80])
    labels, _ = decide(probs[:, :2], min_confidence=0.5)  # no "none" group, no confidence floor
    assert labels == ["female", "male", "female", "female"]


def test_labels_defaults_and_errors() -> None:
    labels = resolve_labels(is_mini=False)
    assert labels["female"] == ("a photo of a woman",) and labels["male"] == ("a photo of a man",)
    assert labels["none"] == () == resolve_labels(is_mini=True)["none"]  # off unless asked for
    assert resolve_labels(none=["a photo of a car", ""])["none"] == ("a photo of a car",)
    with pytest.raises(InputError, match="more than one group"):
        resolve_labels(["a photo of a person"], ["a photo of a person"])


def test_preprocess_matches_clip_image_processor() -> None:
    from transformers import CLIPImageProcessor

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    # no resize needed (the mini classifier's case): exact
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                              image_mean=[0.5] * 3, image_std=[0.5] * 3)
    ref = torch.as_tensor(proc(list(images), return_tensors="np")["pixel_values"])
    ours = Preprocess(size=32, crop=32, mean=(0.5,) * 3, std=(0.5,) * 3)(images)
    assert torch.allclose(ours, ref, atol=1e-5)
    # resize 48x32 → shortest side 16, centre crop: close to PIL's bicubic
    images = rng.integers(0, 256, size=(2, 48, 32, 3), dtype=np.uint8)
    proc = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    ref = torch.as_tensor(proc(list(images), return_tensors="np")["pixel_values"])
    ours = Preprocess(size=16, crop=16, mean=tuple(proc.image_mean), std=tuple(proc.image_std))(images)
    assert ours.shape == ref.shape == (2, 3, 16, 16)
    assert (ours - ref).abs().mean() < 0.1  # bicubic resampling differs slightly between PIL and torch


def test_transformers_clip_matches_a_direct_computation() -> None:
    from transformers import CLIPModel, CLIPTokenizer

    _, clip_dir = tiny_folders()
    female = ("a photo of a woman", "a picture of a woman")
    clf = load_classifier(str(clip_dir), labels_female=female, labels_none=("a photo of a car",), min_confidence=0.5)
    assert clf.backend == "transformers"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 16, 16, 3), dtype=np.uint8)
    probs = clf.probabilities(images)

    model, tok = CLIPModel.from_pretrained(clip_dir).eval(), CLIPTokenizer.from_pretrained(clip_dir)

    def text(prompts):
        ids = tok(list(prompts), padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model.get_text_features(input_ids=ids.input_ids, attention_mask=ids.attention_mask)
        out = out if isinstance(out, torch.Tensor) else out.pooler_output
        return out / out.norm(dim=-1, keepdim=True)

    f = text(female).mean(0)
    rows = torch.stack([f / f.norm(), text(["a photo of a man"])[0], text(["a photo of a car"])[0]])
    pixels = (torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255 - torch.tensor(clf.preprocess.mean).view(1, 3, 1, 1)) \
        / torch.tensor(clf.preprocess.std).view(1, 3, 1, 1)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=pixels)
    img = img if isinstance(img, torch.Tensor) else img.pooler_output
    img = img / img.norm(dim=-1, keepdim=True)
    expected = (model.logit_scale.exp() * img @ rows.T).softmax(-1)
    assert torch.allclose(probs, expected, atol=1e-5)
    labels, p_female = clf.classify(images)
    assert len(labels) == 5 and set(labels) <= {"female", "male", "unclear"}
    d = clf.describe()
    assert d["labels"]["female"] == list(female) and d["abstain"]["min_confidence"] == 0.5
    assert clf.cache_id != load_classifier(str(clip_dir), min_confidence=0.7).cache_id


def test_loading_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_classifier(str(tmp_path))
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_classifier(str(tmp_path / "missing" / "clip"))
    with pytest.raises(ModelLoadError, match="Keep CLIP on disk"):
        load_classifier("openai/clip-vit-base-patch32")  # offline in tests (HF_HUB_OFFLINE=1)
    with pytest.raises(ModelLoadError, match="Keep CLIP on disk"):
        load_classifier("open_clip:ViT-B-32/openai")
    with pytest.raises(ModelLoadError, match="unknown pretrained tag"):
        load_classifier("open_clip:ViT-B-32/nonsense")
    with pytest.raises(InputError, match="open_clip:ARCH/PRETRAINED"):
        load_classifier("open_clip:ViT-B-32")
    with pytest.raises(InputError, match="min-confidence"):
        load_classifier("mini", min_confidence=0.3)


def test_clip_score_ranks_the_matching_prompt_first() -> None:
    """The mini CLIP scores rendered objects higher against their own prompt than against another's."""
    from debias.mini import world

    rng = np.random.default_rng(0)
    clf = load_classifier("mini")
    for name, phrase in world.OBJECTS.items():
        images = np.stack([world.render(name, None, rng, world.TUNING_TEMPLATE) for _ in range(8)])
        own = clf.clip_score(images, world.TUNING_TEMPLATE.format(phrase))
        assert own.shape == (8,) and torch.all(own.abs() <= 100.0)
        for other_name, other in world.OBJECTS.items():
            if other_name != name:
                assert own.mean() > clf.clip_score(images, world.TUNING_TEMPLATE.format(other)).mean() + 5, (name, other)
