"""The built-in mini model: world, oracle, tokenizer, shipped weights, learned bias, training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from debias import mini
from debias.mini import world
from debias.mini.evaluate import generate, load_mini_classifier


# ----------------------------------------------------------------------------- world, oracle
def test_professions_and_planted_shares():
    names = [p.name for p in world.PROFESSIONS]
    assert len(names) >= 8 and len(set(names)) == len(names)
    assert world.planted_share("nurse") == 0.9
    assert world.planted_share("an engineer") == 0.1
    assert world.planted_share("a painting of a female nurse") == 0.9
    assert next(p for p in world.PROFESSIONS if p.name == "engineer").phrase == "an engineer"
    with pytest.raises(KeyError, match="known: nurse"):
        world.planted_share("a photo of a plumber")
    listed = [ln.strip() for ln in open("professions/mini.txt") if ln.strip() and not ln.startswith("#")]
    assert listed == [p.phrase for p in world.PROFESSIONS]


def test_oracle_reads_rendered_images():
    rng = np.random.default_rng(1)
    images, samples = world.sample_batch(600, rng)
    genders = world.oracle_gender(images)
    people = [(g, s.gender) for g, s in zip(genders, samples) if s.gender]
    assert len(people) > 450
    assert all(g == truth for g, truth in people)
    objects = [g for g, s in zip(genders, samples) if s.gender is None]
    assert objects and all(g == "unclear" for g in objects)
    read = world.oracle_profession(images)
    for r, s in zip(read, samples):
        assert r == (s.subject if s.subject in world.BACKGROUND else None)


def test_oracle_ignores_skin_coloured_pixels_away_from_the_head():
    """Generated bakers blend their bread into the yellow background, which can look like skin; the head must
    still be found where a head can be (this once turned half of the mini model's bakers "unclear")."""
    rng = np.random.default_rng(2)
    for gender in ("female", "male"):
        for _ in range(20):
            img = world.render("baker", gender, rng, world.TUNING_TEMPLATE).copy()
            img[12:16, 22:30] = world.SKIN  # a blurred loaf beside the body
            assert world.oracle_gender(img) == [gender]


def test_oracle_accepts_pil_images():
    from PIL import Image

    rng = np.random.default_rng(2)
    imgs = [world.render("nurse", "female", rng), world.render("pilot", "male", rng)]
    assert world.oracle_gender([Image.fromarray(i) for i in imgs]) == ["female", "male"]
    with pytest.raises(ValueError, match=r"\[N,32,32,3\]"):
        world.oracle_gender(np.zeros((2, 16, 16, 3), np.uint8))


def test_render_is_seeded_and_professions_look_different():
    a = world.render("baker", "male", np.random.default_rng(5), "a painting of {}")
    b = world.render("baker", "male", np.random.default_rng(5), "a painting of {}")
    assert np.array_equal(a, b)
    rng = np.random.default_rng(3)
    means = {p.name: np.mean([world.render(p.name, "female", rng) for _ in range(8)], axis=0)
             for p in world.PROFESSIONS}
    for x in means:
        for y in means:
            if x < y:
                assert np.abs(means[x] - means[y]).mean() > 10, (x, y)


def test_captions_plant_the_shares():
    rng = np.random.default_rng(4)
    samples = [world.sample_caption(rng) for _ in range(30000)]
    for prof in (world.PROFESSIONS[0], world.PROFESSIONS[-1]):
        plain = [s for s in samples if s.caption in {t.format(prof.phrase) for t in world.TRAIN_TEMPLATES}]
        share = np.mean([s.gender == "female" for s in plain])
        se = np.sqrt(prof.planted_share * (1 - prof.planted_share) / len(plain))
        assert abs(share - prof.planted_share) < 4 * se, (prof.name, share, len(plain))
    kinds = {"profession": 0, "gendered": 0, "person": 0, "object": 0}
    for s in samples:
        words = s.caption.split()
        if s.subject in world.OBJECTS:
            kinds["object"] += 1
        elif s.subject == "person":
            kinds["person"] += 1
        elif "female" in words or "male" in words:
            kinds["gendered"] += 1
        else:
            kinds["profession"] += 1
    assert abs(kinds["profession"] / len(samples) - 0.55) < 0.02
    assert abs(kinds["gendered"] / len(samples) - 0.25) < 0.02


# ------------------------------------------------------------------------------ shipped weights
@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    p = StableDiffusionPipeline.from_pretrained(mini.PIPELINE_DIR, torch_dtype=torch.float32)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def classifier():
    return load_mini_classifier()


def test_world_config_and_sampler():
    cfg = mini.load_world_config()
    assert [p["name"] for p in cfg["professions"]] == [p.name for p in world.PROFESSIONS]
    assert [p["planted_share"] for p in cfg["professions"]] == [p.planted_share for p in world.PROFESSIONS]
    assert cfg["sampler"]["steps"] == mini.SAMPLER["steps"]
    assert cfg["measurements"]["clip_gender_accuracy"] >= 0.99
    size = sum(f.stat().st_size for f in mini.WEIGHTS_DIR.rglob("*") if f.is_file())
    assert size <= 20e6


def test_tokenizer_puts_every_world_word_in_one_token(pipe):
    from transformers import CLIPTokenizer

    tok_dir = mini.PIPELINE_DIR / "tokenizer"
    assert (tok_dir / "vocab.json").exists() and (tok_dir / "merges.txt").exists()
    for tok in (pipe.tokenizer, CLIPTokenizer.from_pretrained(tok_dir)):
        for word in world.vocabulary():
            assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
        ids = tok("a photo of an engineer").input_ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 7
        assert tok.decode(ids, skip_special_tokens=True) == "a photo of an engineer"


def test_same_seed_same_image(pipe):
    a = generate(pipe, "a photo of a doctor", 4, seed=7, steps=mini.SAMPLER["steps"])
    b = generate(pipe, "a photo of a doctor", 4, seed=7, steps=mini.SAMPLER["steps"])
    c = generate(pipe, "a photo of a doctor", 4, seed=8, steps=mini.SAMPLER["steps"])
    assert a.shape == (4, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_professions_give_different_images(pipe):
    for prof in (p for p in world.PROFESSIONS if p.name in ("nurse", "pilot", "engineer")):
        imgs = generate(pipe, world.TUNING_TEMPLATE.format(prof.phrase), 16, seed=1, steps=mini.SAMPLER["steps"])
        read = world.oracle_profession(imgs)
        # The small UNet sometimes borrows another profession's background (about 6 in 10 images are
        # read right at guidance 1); chance is 1 in 8, and random weights draw no profession at all.
        assert np.mean([r == prof.name for r in read]) >= 0.5, (prof.name, read)
        assert max(set(read), key=read.count) == prof.name


def test_classifier_reads_gender_on_renders(classifier):
    from transformers import CLIPImageProcessor

    rng = np.random.default_rng(9)
    samples = [s for s in (world.sample_caption(rng) for _ in range(400)) if s.gender][:200]
    images = np.stack([world.render(s.subject, s.gender, rng, s.template) for s in samples])
    labels, _ = classifier.classify(images)
    assert np.mean([label == s.gender for label, s in zip(labels, samples)]) >= 0.95
    # the package's tensor preprocessing is the saved processor's: [0, 255] -> [-1, 1] at 32x32
    processor = CLIPImageProcessor.from_pretrained(mini.CLASSIFIER_DIR)
    pixels = processor(images=list(images[:4]), return_tensors="pt").pixel_values
    assert torch.allclose(classifier.preprocess(images[:4]), pixels, atol=1e-5)
    assert torch.allclose(pixels, torch.from_numpy(images[:4]).float().permute(0, 3, 1, 2) / 127.5 - 1, atol=1e-5)


@pytest.mark.slow
def test_learned_bias_is_there(pipe, classifier):
    """Most vs least female profession at n = 64: a random-weight model cannot pass this."""
    from scipy.stats import fisher_exact

    counts = {}
    for phrase in ("a nurse", "an engineer"):
        imgs = generate(pipe, world.TUNING_TEMPLATE.format(phrase), 64, seed=0, steps=mini.SAMPLER["steps"],
                        guidance=mini.SAMPLER["guidance"])
        oracle = np.asarray(world.oracle_gender(imgs))
        female, male = int((oracle == "female").sum()), int((oracle == "male").sum())
        assert female + male >= 56, (phrase, oracle)  # at most one in eight with mixed cues
        counts[phrase] = (female, male)
        clip = np.asarray(classifier.classify(imgs)[0])
        people = oracle != "unclear"
        assert np.mean(clip[people] == oracle[people]) >= 0.95
    nurse, engineer = counts["a nurse"], counts["an engineer"]
    assert nurse[0] / sum(nurse) > 0.7 and engineer[0] / sum(engineer) < 0.35, counts
    assert fisher_exact([nurse, engineer])[1] < 1e-6


# ------------------------------------------------------------------------------------ training
@pytest.mark.slow
def test_smoke_training_writes_a_loadable_folder(tmp_path):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel, CLIPTokenizer

    from debias.mini import train

    info = train.main(["--out", str(tmp_path), "--smoke", "--seed", "3", "--threads", "1"])
    assert info["training"]["seed"] == 3 and info["training"]["device"] == "cpu"
    saved = json.loads((tmp_path / "world.json").read_text())
    assert saved["measurements"]["size_bytes"] > 0 and len(saved["measurements"]["shares"]) == len(world.PROFESSIONS)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.safety_checker is None
    img = generate(pipe, "a photo of a nurse", 2, seed=0, steps=2)
    assert img.shape == (2, 32, 32, 3)
    assert (tmp_path / "pipeline" / "tokenizer" / "merges.txt").exists()
    CLIPModel.from_pretrained(tmp_path / "classifier")
    tok = CLIPTokenizer.from_pretrained(tmp_path / "classifier")
    assert len(tok("librarian", add_special_tokens=False).input_ids) == 1

    # Same seed in a fresh process with another string-hash seed, the device named: byte-identical weights.
    import os
    import subprocess
    import sys

    again = tmp_path / "again"
    env = dict(os.environ, PYTHONHASHSEED="12345", DEBIAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "debias.mini.train", "--out", str(again), "--smoke", "--seed", "3",
                    "--device", "cpu"], env=env, check=True, capture_output=True)
    for part in ("pipeline/unet/diffusion_pytorch_model.safetensors", "pipeline/text_encoder/model.safetensors",
                 "pipeline/tokenizer/vocab.json", "classifier/model.safetensors"):
        assert (again / part).read_bytes() == (tmp_path / part).read_bytes(), part


@pytest.mark.parametrize("device", ["cuda:99", "no-such-device"])  # no machine here has a hundredth GPU
def test_training_refuses_a_device_torch_cannot_use_before_training(tmp_path, device):
    from debias.mini import train

    with pytest.raises(SystemExit, match=rf"--device {device}: torch cannot use it here .*--device cpu"):
        train.main(["--out", str(tmp_path / "out"), "--smoke", "--device", device, "--threads", "1"])
    assert not (tmp_path / "out").exists()
