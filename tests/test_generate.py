"""Seeded generation: images of a seed up to 8-bit rounding whatever the batch, the cache, resume, edits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from audit_helpers import HalfClassifier, load_tiny
from debias.generation.cache import ImageCache, edit_id, item_key, model_key
from debias.generation.generate import (
    default_settings, generate_images, items_for_seeds, measure, pipeline_options, use_scheduler, work_items,
)

from debias.core.profiles import get_profile  # noqa: E402

ITEMS = work_items(["a photo of a nurse", "a nurse working"], 0, 6) + work_items(["a photo of a pilot"], 0, 6)


@pytest.fixture(scope="module")
def tiny():
    pipe, _ = load_tiny()
    settings = default_settings(pipe, get_profile("default").sampler, steps=3)
    return pipe, HalfClassifier(), settings


def _pixels(cache: ImageCache, results) -> np.ndarray:
    return cache.read_images([r.key for r in results])


def _run(tiny, root: Path, items=ITEMS, batch_size: int = 4, **kw):
    pipe, clf, settings = tiny
    cache = ImageCache(root)
    return cache, measure(pipe, clf, items, settings=settings, cache=cache, batch_size=batch_size, progress=False, **kw)


def test_defaults_come_from_the_profile(tiny) -> None:
    pipe, _, _ = tiny
    real = default_settings(pipe, get_profile("default").sampler)
    assert (real.scheduler, real.steps, real.guidance) == ("DPMSolverMultistepScheduler", 25, 7.5)
    assert real.height == real.width == 16  # the tiny pipeline's native size (SD 1.x gives 512)
    from debias.mini import SAMPLER

    mini = default_settings(pipe, get_profile("mini").sampler)
    assert (mini.scheduler, mini.steps, mini.guidance, mini.height) == (
        SAMPLER["scheduler"], SAMPLER["steps"], SAMPLER["guidance"], SAMPLER["height"])
    use_scheduler(pipe, "DPMSolverMultistepScheduler")
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"


def test_same_seeds_same_images_and_numbers(tiny, tmp_path: Path) -> None:
    c1, r1 = _run(tiny, tmp_path / "a")
    c2, r2 = _run(tiny, tmp_path / "b")
    assert [(r.label, r.p_female, r.key) for r in r1] == [(r.label, r.p_female, r.key) for r in r2]
    assert np.array_equal(_pixels(c1, r1), _pixels(c2, r2))
    # different seeds give different images (the test could fail if seeds were ignored)
    assert not np.array_equal(_pixels(c1, r1)[0], _pixels(c1, r1)[1])
    labels = {r.label for r in r1}
    assert {"female", "male"} <= labels


def test_batch_size_and_order_move_pixels_by_at_most_one_level(tiny, tmp_path: Path) -> None:
    c1, r1 = _run(tiny, tmp_path / "b1", batch_size=1)
    c4, r4 = _run(tiny, tmp_path / "b4", batch_size=4)
    reversed_items = list(reversed(ITEMS))
    cr, rr = _run(tiny, tmp_path / "rev", items=reversed_items, batch_size=5)
    rr = list(reversed(rr))
    assert [(r.key, r.label, r.p_female) for r in r1] == [(r.key, r.label, r.p_female) for r in r4]
    assert [(r.key, r.label, r.p_female) for r in r1] == [(r.key, r.label, r.p_female) for r in rr]
    p1, p4, pr = _pixels(c1, r1), _pixels(c4, r4), _pixels(cr, rr)
    # float kernels may differ with the batch shape in the last bit; after 8-bit rounding images agree
    assert np.abs(p1.astype(int) - p4.astype(int)).max() <= 1
    assert np.abs(p1.astype(int) - pr.astype(int)).max() <= 1
    assert (p1 == p4).mean() > 0.999


def test_mini_model_batch_size_changes_no_label(tmp_path: Path) -> None:
    """The documented reproducibility on the shipped model: the same batch size gives bit-identical images;
    another batch size may move a few 8-bit values by one level (in half of these 8 images where this was
    measured, on one CPU thread), which changes no label."""
    from debias.classify.zero_shot import load_classifier
    from debias.mini import load_world_config
    from debias.core.models import load_pipeline

    pipe = load_pipeline("mini")
    settings = default_settings(pipe, get_profile("mini").sampler)
    use_scheduler(pipe, settings.scheduler)
    world = load_world_config()
    prompts = [world["test_templates"][i % 4].format(p["phrase"]) for i, p in enumerate(world["professions"])]
    seeds = list(range(len(prompts)))
    batched = generate_images(pipe, prompts, seeds, settings)
    assert np.array_equal(batched, generate_images(pipe, prompts, seeds, settings))
    alone = np.concatenate([generate_images(pipe, [p], [s], settings) for p, s in zip(prompts, seeds)])
    assert np.abs(batched.astype(int) - alone.astype(int)).max() <= 1
    clf = load_classifier("mini")
    labels, p_batched = clf.classify(batched)
    labels_alone, p_alone = clf.classify(alone)
    assert labels == labels_alone and {"female", "male"} <= set(labels)
    assert np.abs(np.asarray(p_batched, float) - np.asarray(p_alone, float)).max() < 1e-3


def test_pipelines_get_only_the_call_options_they_take(tiny) -> None:
    from tiny_models import tiny_pixart

    pipe, _, _ = tiny
    assert pipeline_options(pipe) == {}  # Stable Diffusion's call takes neither
    assert pipeline_options(tiny_pixart()) == {"use_resolution_binning": False, "clean_caption": False}


def test_one_generator_per_image(tiny) -> None:
    pipe, _, settings = tiny
    together = generate_images(pipe, ["a photo of a nurse"] * 2, [5, 6], settings)
    alone = generate_images(pipe, ["a photo of a nurse"], [6], settings)
    assert np.abs(together[1].astype(int) - alone[0].astype(int)).max() <= 1


def test_cache_reuses_everything_and_survives_torn_lines(tiny, tmp_path: Path) -> None:
    pipe, clf, settings = tiny
    cache, first = _run(tiny, tmp_path)
    assert not any(r.reused for r in first)
    # a torn last line (kill -9 mid-write) must be ignored, and the next append starts a fresh line
    with open(cache.index_path, "ab") as fh:
        fh.write(b'{"type": "image", "key": "abc')
    calls = []
    original = pipe.__class__.__call__

    def counting(self, *args, **kwargs):
        calls.append(len(kwargs.get("prompt", [])))
        return original(self, *args, **kwargs)

    pipe.__class__.__call__ = counting
    try:
        cache2, second = _run(tiny, tmp_path)
        assert calls == []  # nothing regenerated
        assert all(r.reused for r in second)
        assert [(r.label, r.p_female) for r in first] == [(r.label, r.p_female) for r in second]
        # two new items: only they are generated, appended after the torn line
        more = ITEMS + [("a photo of a nurse", 100), ("a photo of a nurse", 101)]
        _, third = _run(tiny, tmp_path, items=more)
        assert sum(calls) == 2 and [r.reused for r in third].count(False) == 2
    finally:
        pipe.__class__.__call__ = original
    lines = cache.index_path.read_text().splitlines()
    assert sum(1 for ln in lines if ln.startswith('{"type": "image", "key": "abc')) == 1
    assert json.loads(lines[-1])["type"] == "label"


def test_changing_the_classifier_relabels_without_regenerating(tiny, tmp_path: Path) -> None:
    pipe, clf, settings = tiny
    cache, first = _run(tiny, tmp_path)

    class Flipped(HalfClassifier):
        cache_id = "half-flipped"

        def classify(self, images):
            labels, p = super().classify(images)
            return [{"female": "male", "male": "female"}.get(x, x) for x in labels], 1 - p

    second = measure(pipe, Flipped(), ITEMS, settings=settings, cache=ImageCache(tmp_path), progress=False)
    assert all(r.reused for r in second)
    assert [r.p_female for r in second] == pytest.approx([1 - r.p_female for r in first], abs=2e-6)


def test_keys_depend_on_everything_that_changes_an_image(tiny) -> None:
    pipe, _, settings = tiny
    base = item_key("m", None, settings, "a photo of a nurse", 0)
    assert base == item_key("m", None, settings, "a photo of a nurse", 0)
    assert base != item_key("m", None, settings, "a photo of a nurse", 1)
    assert base != item_key("m", None, settings, "a photo of a pilot", 0)
    assert base != item_key("m2", None, settings, "a photo of a nurse", 0)
    assert base != item_key("m", "sha256:x", settings, "a photo of a nurse", 0)
    from dataclasses import replace

    assert base != item_key("m", None, replace(settings, steps=4), "a photo of a nurse", 0)
    eye = torch.eye(4)
    assert edit_id(eye) == edit_id(eye.clone()) != edit_id(2 * eye)
    assert edit_id(None) is None


def test_edit_is_applied_and_keyed(tiny, tmp_path: Path) -> None:
    from debias.core.models import conditioning_width

    pipe, clf, settings = tiny
    d = conditioning_width(pipe)
    items = ITEMS[:4]
    cache, plain = _run(tiny, tmp_path, items=items)
    _, same = _run(tiny, tmp_path, items=items, edit=torch.eye(d, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    M = torch.eye(d, dtype=torch.float64) + 0.5 * torch.randn(d, d, generator=g, dtype=torch.float64)
    _, edited = _run(tiny, tmp_path, items=items, edit=M)
    assert {r.key for r in plain}.isdisjoint({r.key for r in same})  # the identity is still an edit key
    assert np.abs(_pixels(cache, plain).astype(int) - _pixels(cache, same).astype(int)).max() <= 1
    assert np.abs(_pixels(cache, plain).astype(int) - _pixels(cache, edited).astype(int)).mean() > 1.0


def test_baked_weights_change_the_model_key(tiny) -> None:
    from debias.editing import bake_edit, revert_edit
    from debias.core.models import conditioning_width

    pipe, _, _ = tiny
    before = model_key(pipe)
    d = conditioning_width(pipe)
    bake_edit(pipe, 1.1 * torch.eye(d))
    try:
        assert model_key(pipe) != before
    finally:
        revert_edit(pipe)
    assert model_key(pipe).split("+")[0] == before


def test_images_blanked_by_a_safety_checker_are_unclear(tiny, tmp_path: Path, monkeypatch) -> None:
    pipe, clf, settings = tiny
    original = pipe.__class__.__call__

    def flagged(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        out.nsfw_content_detected = [seed.initial_seed() == 1 for seed in kwargs["generator"]]
        return out

    _, plain = _run(tiny, tmp_path / "plain", items=ITEMS[:4])
    assert plain[1].label != "unclear"
    monkeypatch.setattr(pipe.__class__, "__call__", flagged)
    _, results = _run(tiny, tmp_path / "flagged", items=ITEMS[:4])
    assert [r.label for r in results] == [r.label if i != 1 else "unclear" for i, r in enumerate(plain)]


def test_items_for_seeds_give_every_seed_the_prompt_the_audit_gives_it():
    prompts = ["a snapshot of a nurse", "a nurse on duty", "a mural of a nurse"]
    assert items_for_seeds(prompts, [5, 6, 7, 8, 12], seed_base=5) == [
        (prompts[0], 5), (prompts[1], 6), (prompts[2], 7), (prompts[0], 8), (prompts[1], 12)]
    # a λ search's unedited images are the tuning audit's images (same prompt for the same seed)
    assert items_for_seeds(prompts, range(5, 5 + 10), seed_base=5) == work_items(prompts, 0, 10, seed_base=5)
    # a later slice (a joint round's fresh seeds) continues the audit's cycle of templates
    assert work_items(prompts, 4, 2, seed_base=5) == [(prompts[1], 9), (prompts[2], 10)]
