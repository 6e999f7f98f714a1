"""Mini world v2: people with a skin tone and an age, planted shares per profession, and an oracle for each."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from debias.core.attributes import AGE, GENDER, SKIN
from debias.mini import world, world2

# (agreement, r(planted, CLIP)) floors for the shipped mini-v2 weights, under what docs/mini-model.md measured at
# n = 128 (gender 0.997 / 0.985, skin 0.998 / 0.969, age 0.967 / 0.903): the test reads 48 images per profession on
# other seeds (there 1.000 / 0.983, 0.992 / 0.935, 0.975 / 0.847; an r over 48 images is pulled down by their
# sampling noise), about ±0.02 in pooled agreement and ±0.06 in r
GENDER_FLOOR = (0.97, 0.92)
SKIN_FLOOR = (0.96, 0.87)
AGE_FLOOR = (0.93, 0.78)


def test_the_oracle_reads_every_attribute_of_rendered_people() -> None:
    rng = np.random.default_rng(7)
    images, samples = world2.sample_batch(600, rng)
    read = world2.oracle(images)
    people = [(r, s.person) for r, s in zip(read, samples) if s.person is not None]
    assert len(people) > 400
    for name in ("gender", "skin", "age"):
        right = np.mean([r[name] == getattr(p, name) for r, p in people])
        assert right == 1.0, name
    objects = [r for r, s in zip(read, samples) if s.person is None]
    assert objects and all(r == {"gender": "unclear", "skin": "unclear", "age": "unclear"} for r in objects)


def test_every_class_is_drawn_and_read_on_every_profession_background() -> None:
    rng = np.random.default_rng(3)
    for prof in world2.PROFESSIONS:
        for skin in SKIN.class_names:
            for age in AGE.class_names:
                for gender in GENDER.class_names:
                    person = world2.Person(gender, skin, age)
                    image = world2.render(prof.name, person, rng, "a painting of {}")
                    assert world2.read_person(image.astype(float)) == {"gender": gender, "skin": skin, "age": age}


@pytest.mark.parametrize("t, age", [(0.3, "young"), (0.7, "middle-aged")])
def test_hair_between_two_ages_is_read_as_the_nearer_and_leaves_face_and_gender_alone(t, age) -> None:
    # a generator draws hair between the classes' colours; between young and middle-aged it comes within the
    # face finder's reach of the dark skin tone, and a finder that took it for the face read the hair as skin
    # and the background as hair (light-skinned women read dark-skinned, old and of unclear gender)
    young, middle = (np.asarray(world2.HAIR_BY_AGE[a], float) for a in ("young", "middle-aged"))
    hair = tuple(np.round((1 - t) * young + t * middle).astype(int))
    rng = np.random.default_rng(5)
    for prof in world2.PROFESSIONS:
        for skin in SKIN.class_names:
            for gender in GENDER.class_names:
                for _ in range(3):
                    image = world.render(prof.name, gender, rng, None, skin_colour=world2.SKIN_TONES[skin],
                                         hair_colour=hair)
                    assert world2.read_person(image) == {"gender": gender, "skin": skin, "age": age}


def test_planted_shares_differ_from_uniform_and_older_pilots_are_men() -> None:
    for prof in world2.PROFESSIONS:
        for name in ("skin", "age"):
            assert sum(prof.planted(name)) == pytest.approx(1.0)
        if prof.female_by_age is not None:  # the age-given female shares average to the profession's
            assert float(np.dot(prof.age, prof.female_by_age)) == pytest.approx(prof.female)
    skins = {prof.planted("skin") for prof in world2.PROFESSIONS}
    assert len(skins) >= 6 and (1 / 3, 1 / 3, 1 / 3) not in skins
    pilot = next(p for p in world2.PROFESSIONS if p.name == "pilot")
    rng = np.random.default_rng(0)
    drawn = [world2.draw_person(pilot, rng) for _ in range(6000)]
    assert np.mean([p.gender == "female" for p in drawn]) == pytest.approx(0.20, abs=0.02)
    assert not any(p.gender == "female" and p.age == "old" for p in drawn)
    skin = Counter(p.skin for p in drawn)
    assert [skin[c] / len(drawn) for c in SKIN.class_names] == pytest.approx(pilot.skin, abs=0.025)
    # a caption that names the age draws gender given it: "an elderly pilot" is a man
    assert {world2.draw_person(pilot, rng, {"age": "old"}).gender for _ in range(200)} == {"male"}
    # the v2 world keeps the first world's female shares
    assert [p.female for p in world2.PROFESSIONS] == [p.planted_share for p in world.PROFESSIONS]


def test_captions_use_the_builtin_attributes_words_so_a_fix_edits_towards_seen_phrases() -> None:
    assert world2.describe("an engineer", {"gender": "female", "age": "old", "skin": "dark"}) == (
        "an elderly female engineer with dark skin")
    assert world2.describe("a pilot", {"age": "middle-aged"}) == "a middle-aged pilot"
    rng = np.random.default_rng(1)
    captions = Counter(world2.sample_caption(rng).caption for _ in range(20000))
    for cls in SKIN.classes:
        assert captions[cls.labels[0]] > 0  # the label prompts an audit reads with are captions
        assert captions["a photo of " + cls.destination_phrase("a pilot")] > 0  # and the fix's destinations
    assert "a photo of an elderly female pilot" in captions


def test_every_v2_word_is_one_token_and_the_first_world_keeps_its_ids(tmp_path: Path) -> None:
    from debias.mini.tokenizer import build_tokenizer

    words = world2.vocabulary()
    assert {"-", "middle", "aged", "skinned", "elderly"} <= set(words)
    tok = build_tokenizer(tmp_path / "v2", words)  # raises if a word splits
    assert len(tok("a middle-aged person", add_special_tokens=False).input_ids) == 5  # a middle - aged person
    first = build_tokenizer(tmp_path / "v1")
    shipped = (Path(world.__file__).parent / "weights" / "pipeline" / "tokenizer" / "vocab.json").read_text()
    assert (tmp_path / "v1" / "vocab.json").read_text() == shipped


def test_the_attribute_summary_pools_agreement_and_correlates_shares() -> None:
    from debias.mini.evaluate import attribute_summary

    rows = [{"attribute": "skin", "planted": [0.6, 0.3, 0.1], "oracle": [0.5, 0.3, 0.2], "clip": [0.5, 0.25, 0.25],
             "agree": 45, "clear": 50, "n": 64},
            {"attribute": "skin", "planted": [0.2, 0.3, 0.5], "oracle": [None, None, None], "clip": [0.2, 0.3, 0.5],
             "agree": 0, "clear": 0, "n": 64}]
    (name, s), = attribute_summary(rows).items()
    assert name == "skin" and s["agreement"] == 0.9 and s["unclear"] == pytest.approx(1 - 50 / 128)
    assert s["r_planted_clip"] == pytest.approx(np.corrcoef([0.6, 0.3, 0.1, 0.2, 0.3, 0.5],
                                                            [0.5, 0.25, 0.25, 0.2, 0.3, 0.5])[0, 1])
    assert s["r_oracle_clip"] == pytest.approx(np.corrcoef([0.5, 0.3, 0.2], [0.5, 0.25, 0.25])[0, 1])
    assert s["r_planted_oracle"] == pytest.approx(np.corrcoef([0.6, 0.3, 0.1], [0.5, 0.3, 0.2])[0, 1])


@pytest.mark.slow
def test_v2_smoke_training_fine_tunes_from_the_first_model_and_measures_every_attribute(tmp_path: Path) -> None:
    import json

    from debias.mini import WEIGHTS_DIR, train

    info = train.main(["--out", str(tmp_path), "--smoke", "--world", "v2", "--init-from", str(WEIGHTS_DIR),
                       "--head-weight", "5", "--threads", "1"])
    saved = json.loads((tmp_path / "world.json").read_text())
    assert saved == json.loads(json.dumps(info))
    pilot = next(p for p in saved["professions"] if p["name"] == "pilot")
    assert pilot["planted"]["skin"] == [0.7, 0.2, 0.1] and pilot["female_by_age"] == [0.4, 0.2, 0.0]
    m = saved["measurements"]
    assert set(m["attributes"]["summary"]) == {"gender", "skin", "age"}
    assert len(m["attributes"]["rows"]) == 3 * len(world2.PROFESSIONS)
    assert {"vae_round_trip_skin", "clip_skin_accuracy", "clip_age_accuracy"} <= set(m)
    assert saved["training"]["init_from"] == str(WEIGHTS_DIR) and saved["training"]["head_weight"] == 5.0


def test_fine_tuning_clip_needs_a_folder_to_start_from(tmp_path: Path) -> None:
    from debias.mini import train

    with pytest.raises(SystemExit, match="--fine-tune-clip needs --init-from DIR"):
        train.main(["--out", str(tmp_path), "--smoke", "--world", "v2", "--fine-tune-clip"])


@pytest.mark.slow
def test_v2_smoke_training_fine_tunes_the_shipped_clip_keeping_its_tokenizer(tmp_path: Path) -> None:
    import torch
    from transformers import CLIPModel

    from debias.mini import V2_WEIGHTS_DIR, train

    train.main(["--out", str(tmp_path), "--smoke", "--world", "v2", "--init-from", str(V2_WEIGHTS_DIR),
                "--fine-tune-clip", "--threads", "1"])
    vocab = "pipeline/tokenizer/vocab.json"
    assert (tmp_path / vocab).read_text() == (V2_WEIGHTS_DIR / vocab).read_text()
    before = CLIPModel.from_pretrained(V2_WEIGHTS_DIR / "classifier").state_dict()
    after = CLIPModel.from_pretrained(tmp_path / "classifier").state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved  # trained further, from the shipped weights
    close = [k for k in before if torch.allclose(before[k], after[k], atol=0.05)]
    assert len(close) == len(before)  # three small steps: every tensor near where it started


@pytest.fixture(scope="module")
def v2_measured() -> dict:
    from debias.mini.evaluate import load, measure_attributes

    pipe, classifier = load(v2=True)
    return measure_attributes(pipe, classifier, n=48, seed=1000)  # seeds the shipped figures did not use


@pytest.mark.slow
def test_the_shipped_v2_model_draws_and_its_clip_reads_the_planted_shares(v2_measured) -> None:
    s = v2_measured["summary"]
    # floors a little under the shipped measurements (docs/mini-model.md), which n = 48 per profession reads to
    # about ±0.03 in agreement; a broken model, classifier or oracle lands far below them
    assert s["gender"]["agreement"] >= GENDER_FLOOR[0] and s["gender"]["r_planted_clip"] >= GENDER_FLOOR[1]
    assert s["skin"]["agreement"] >= SKIN_FLOOR[0] and s["skin"]["r_planted_clip"] >= SKIN_FLOOR[1]
    assert s["age"]["agreement"] >= AGE_FLOOR[0] and s["age"]["r_planted_clip"] >= AGE_FLOOR[1]
    assert all(s[name]["r_oracle_clip"] >= 0.85 for name in ("gender", "skin", "age"))  # CLIP reads what is drawn


@pytest.mark.slow
def test_an_audit_of_mini_v2_reads_skin_and_age_with_their_oracle(tmp_path: Path) -> None:
    import debias

    result = debias.audit("mini-v2", professions=["a pilot", "a baker"], images_per_profession=24,
                          attributes=["skin", "age"], intersect=["gender,age"], out=tmp_path / "audit",
                          progress=False, threads=1)
    skin, age = (result.attribute(name) for name in ("skin", "age"))
    assert skin["has_oracle"] and age["has_oracle"]
    for row in skin["professions"] + age["professions"]:
        assert row["oracle_shares"] is not None and 0 <= row["agreement"] <= 1
    baker, pilot = (next(r for r in skin["professions"] if r["profession"] == p) for p in ("baker", "pilot"))
    assert pilot["shares"][0] > baker["shares"][0]  # planted light skin: pilot 0.7, baker 0.2
    (crossed,) = result.intersections
    assert crossed["attributes"] == ["gender", "age"] and len(crossed["professions"][0]["cells"]) == 6


def test_evaluate_v2_samples_with_the_requested_steps_and_guidance(tmp_path: Path, monkeypatch) -> None:
    import json

    from debias.mini import evaluate

    calls = []
    real = evaluate.generate

    def spy(pipe, prompt, n, seed=0, steps=10, guidance=1.0, batch_size=64):
        calls.append((steps, guidance))
        return real(pipe, prompt, n, seed, steps, guidance, batch_size)

    monkeypatch.setattr(evaluate, "generate", spy)
    out = tmp_path / "measured.json"
    evaluate.main(["--world", "v2", "--n", "2", "--steps", "3", "--guidance", "2.5", "--threads", "1",
                   "--json", str(out)])
    assert calls and set(calls) == {(3, 2.5)}  # every profession, with what was asked (it once used 10 and 1.0)
    measured = json.loads(out.read_text())
    assert (measured["steps"], measured["guidance"]) == (3, 2.5)
    assert len(measured["rows"]) == 3 * len(world2.PROFESSIONS)


def test_head_loss_maps_weight_the_latent_cells_over_hair_and_face() -> None:
    from debias.mini.stages import head_loss_maps

    rng = np.random.default_rng(11)
    images, samples = world2.sample_batch(64, rng)
    maps = head_loss_maps(images, world2, 5.0).numpy()
    assert maps.shape == (64, 16, 16) and set(np.unique(maps)) <= {1.0, 5.0}
    people = [i for i, s in enumerate(samples) if s.person is not None]
    assert len(people) > 30
    for i in people:
        dy, dx = world2._head(images[i])
        face = [(r, c) for r in range(6 + dy, 11 + dy) for c in range(13 + dx, 19 + dx)]  # the oracle's face
        hair = [(5 + dy, c) for c in range(13 + dx, 19 + dx)]  # the hair strip under a hat
        assert all(maps[i, r // 2, c // 2] == 5.0 for r, c in face + hair)
        assert maps[i, 0, 0] == 1.0 and maps[i, 15, 8] == 1.0  # sky and feet: plain loss
        assert (maps[i] == 5.0).sum() <= 25  # the head only: at most 5 × 5 of the 256 cells
    objects = [i for i, s in enumerate(samples) if s.person is None]
    assert objects and all((maps[i] == 1.0).all() for i in objects)


def test_the_unet_loss_uses_the_maps_and_all_ones_is_the_plain_loss() -> None:
    import torch
    from transformers import CLIPTextModel, CLIPTokenizer

    from debias.mini import V2_WEIGHTS_DIR
    from debias.mini.stages import train_unet
    from debias.mini.tokenizer import CaptionIds

    tokenizer = CLIPTokenizer.from_pretrained(V2_WEIGHTS_DIR / "pipeline" / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(V2_WEIGHTS_DIR / "pipeline" / "text_encoder")
    gen = torch.Generator().manual_seed(0)
    means, stds = torch.randn(8, 4, 16, 16, generator=gen), torch.full((8, 4, 16, 16), 0.1)
    captions = ["a photo of a nurse", "a photo of a pilot"] * 4
    heads = torch.ones(8, 16, 16)
    heads[:, 2:6, 6:10] = 5.0

    def trained(maps):
        torch.manual_seed(0)
        unet, loss = train_unet(text_encoder, CaptionIds(tokenizer), means, stds, captions, 1.0, steps=2, batch=4,
                                rng=np.random.default_rng(0), loss_maps=maps)
        return unet.state_dict(), loss

    plain, plain_loss = trained(None)
    ones, ones_loss = trained(torch.ones(8, 16, 16))
    weighted, weighted_loss = trained(heads)
    assert ones_loss == plain_loss and all(torch.equal(plain[k], ones[k]) for k in plain)
    assert weighted_loss != plain_loss and any(not torch.equal(plain[k], weighted[k]) for k in plain)


@pytest.mark.parametrize("argv", [["--head-weight", "5"], ["--world", "v2", "--head-weight", "0"]])
def test_head_weight_is_refused_outside_world_v2_or_at_zero(tmp_path: Path, argv) -> None:
    from debias.mini import train

    with pytest.raises(SystemExit, match="--head-weight .*world v2 .*must be above 0"):
        train.main(["--out", str(tmp_path / "out"), "--smoke", "--threads", "1", *argv])
    assert not (tmp_path / "out").exists()


def test_a_decoder_fine_tune_keeps_the_encoder_and_weights_the_heads_pixels() -> None:
    import torch
    from diffusers import AutoencoderKL

    from debias.mini import V2_PIPELINE_DIR
    from debias.mini.stages import head_loss_maps, train_vae

    images, samples = world2.sample_batch(16, np.random.default_rng(3))
    pixels = head_loss_maps(images, world2, 5.0, cell=1)
    latent = head_loss_maps(images, world2, 5.0)
    assert pixels.shape == (16, 32, 32)  # a cell per pixel
    people = [i for i, s in enumerate(samples) if s.person is not None]
    assert people and all(int((pixels[i] == 5.0).sum()) == 7 * 8 for i in people)  # hair cap to chin, 8 wide
    assert torch.equal(latent.repeat_interleave(2, 1).repeat_interleave(2, 2)[pixels == 5.0],
                       torch.full((56 * len(people),), 5.0))  # inside the latent map's head cells

    shipped = AutoencoderKL.from_pretrained(V2_PIPELINE_DIR / "vae", torch_dtype=torch.float32)

    def tuned(head_weight: float) -> dict:
        torch.manual_seed(0)
        vae = train_vae(2, 4, np.random.default_rng(0), w=world2, init=shipped, lr=3e-4, decoder_only=True,
                        head_weight=head_weight)
        return vae.state_dict()

    plain, weighted = tuned(1.0), tuned(5.0)
    before = shipped.state_dict()
    for name in before:
        frozen = name.startswith(("encoder.", "quant_conv."))
        assert torch.equal(before[name], plain[name]) == frozen, name  # the encoder alone is kept
    assert any(not torch.equal(plain[k], weighted[k]) for k in plain if k.startswith("decoder."))


def test_fine_tuning_the_decoder_needs_a_folder_and_steps(tmp_path: Path) -> None:
    from debias.mini import V2_WEIGHTS_DIR, train

    for argv in (["--fine-tune-decoder"], ["--fine-tune-decoder", "--init-from", str(V2_WEIGHTS_DIR)]):
        with pytest.raises(SystemExit, match="--fine-tune-decoder needs --init-from DIR and --vae-steps N"):
            train.main(["--out", str(tmp_path / "out"), "--world", "v2", "--threads", "1", *argv])
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_v2_smoke_decoder_fine_tune_keeps_the_shipped_encoder_and_latent_scale(tmp_path: Path) -> None:
    import torch
    from diffusers import AutoencoderKL

    from debias.mini import V2_WEIGHTS_DIR, train

    info = train.main(["--out", str(tmp_path), "--smoke", "--world", "v2", "--init-from", str(V2_WEIGHTS_DIR),
                       "--clip-steps", "0", "--fine-tune-decoder", "--vae-steps", "2", "--head-weight", "5",
                       "--threads", "1"])
    before = AutoencoderKL.from_pretrained(V2_WEIGHTS_DIR / "pipeline" / "vae", torch_dtype=torch.float32)
    after = AutoencoderKL.from_pretrained(tmp_path / "pipeline" / "vae", torch_dtype=torch.float32)
    assert after.config.scaling_factor == before.config.scaling_factor  # its UNet's latents keep their scale
    old, new = before.state_dict(), after.state_dict()
    assert all(torch.equal(old[k], new[k]) for k in old if k.startswith(("encoder.", "quant_conv.")))
    assert any(not torch.equal(old[k], new[k]) for k in old if k.startswith("decoder."))
    assert info["training"]["fine_tune_decoder"] is True and info["training"]["head_weight"] == 5.0
