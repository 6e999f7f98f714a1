"""CLIP zero-shot classification: the abstain rule, preprocessing, prompt averaging, loading (the activation
weights run with, errors, no network)."""

from __future__ import annotations

import copy
import importlib
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from audit_helpers import tiny_folders
from debias.classify.zero_shot import DEFAULT_REAL_CLASSIFIER, Preprocess, decide, load_classifier, resolve_labels
from debias.core.options import ClassifierOptions
from debias.core.errors import InputError, ModelLoadError


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
    labels = resolve_labels()
    assert labels["female"] == ("a photo of a woman",) and labels["male"] == ("a photo of a man",)
    assert labels["none"] == () == resolve_labels(none=[" "])["none"]  # off unless asked for
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
    clf = load_classifier(str(clip_dir), ClassifierOptions(labels_female=female, labels_none=("a photo of a car",), min_confidence=0.5))
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
    assert clf.cache_id != load_classifier(str(clip_dir), ClassifierOptions(min_confidence=0.7)).cache_id


def test_loading_errors_say_what_to_do(tmp_path: Path, hub_cache: Path) -> None:
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
        load_classifier("mini", ClassifierOptions(min_confidence=0.3))


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


# ------------------------------------------------------------------ open_clip weights and their activation
TINY_VIT = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}}


@pytest.fixture
def tiny_vit_l(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """ViT-L-14 (and its -quickgelu twin) shrunk to one layer of width 64, and a random checkpoint for it.

    Only the sizes change: tag resolution, activation flags and checkpoint loading run open_clip's own code.
    """
    import open_clip
    from open_clip import factory
    from safetensors.torch import save_file

    monkeypatch.setitem(factory._MODEL_CONFIGS, "ViT-L-14", copy.deepcopy(TINY_VIT))
    monkeypatch.setitem(factory._MODEL_CONFIGS, "ViT-L-14-quickgelu", {**copy.deepcopy(TINY_VIT), "quick_gelu": True})
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-L-14")
    with torch.no_grad():
        model.logit_scale.fill_(math.log(50.0))
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture
def hub_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty Hugging Face cache in place of the user's."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def put_in_hub_cache(cache: Path, repo_id: str, filename: str, src: Path) -> None:
    """Leave ``src`` where downloading ``repo_id``'s ``filename`` would have (the cache's refs/snapshots layout)."""
    repo, commit = cache / f"models--{repo_id.replace('/', '--')}", "0" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    shutil.copy(src, repo / "snapshots" / commit / filename)


def put_openai_vit_l_in_cache(cache: Path, checkpoint: Path) -> None:
    """The checkpoint as the download of ``open_clip:ViT-L-14/openai``, located by open_clip's own tag settings."""
    import open_clip

    repo_id = open_clip.get_pretrained_cfg("ViT-L-14", "openai")["hf_hub"].rstrip("/")
    put_in_hub_cache(cache, repo_id, "open_clip_model.safetensors", checkpoint)


@pytest.fixture
def built_models(monkeypatch: pytest.MonkeyPatch) -> list[torch.nn.Module]:
    """Every model open_clip builds while the test runs (create_model, also as create_model_and_transforms calls it)."""
    import open_clip
    from open_clip import factory

    built, create = [], factory.create_model

    def spy(*args, **kwargs):
        built.append(create(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(open_clip, "create_model", spy)
    monkeypatch.setattr(factory, "create_model", spy)
    return built


def activation_classes(model: torch.nn.Module) -> set[str]:
    return {type(m).__name__ for m in model.modules() if type(m).__name__ in ("GELU", "QuickGELU")}


def test_default_classifier_runs_openai_weights_with_quick_gelu(tiny_vit_l: Path, hub_cache: Path,
                                                                built_models: list) -> None:
    """OpenAI's weights were trained with QuickGELU; built with GELU they give other features and no error."""
    import open_clip

    put_openai_vit_l_in_cache(hub_cache, tiny_vit_l)
    clf = load_classifier(None)  # open_clip:ViT-L-14/openai, read from the cache (HF_HUB_OFFLINE=1 in tests)
    assert clf.model == DEFAULT_REAL_CLASSIFIER and clf.logit_scale == pytest.approx(50.0)  # the cached weights
    assert [activation_classes(m) for m in built_models] == [{"QuickGELU"}]
    assert clf.describe()["activation"] == "quick_gelu"

    images = np.random.default_rng(0).integers(0, 256, size=(3, 40, 48, 3), dtype=np.uint8)
    pixels = clf.preprocess(images)
    with torch.no_grad():
        ours = clf.encode_images(pixels)
        quick = open_clip.create_model("ViT-L-14-quickgelu", pretrained=str(tiny_vit_l)).eval().encode_image(pixels)
        gelu = open_clip.create_model("ViT-L-14", pretrained=str(tiny_vit_l)).eval().encode_image(pixels)
    assert torch.allclose(ours, quick, atol=1e-6)
    assert (ours - gelu).abs().max() > 1e-3


@pytest.mark.parametrize("arch, activation", [("ViT-L-14-quickgelu", "quick_gelu"), ("ViT-L-14", "gelu")])
def test_local_checkpoint_runs_the_activation_its_architecture_names(tiny_vit_l: Path, built_models: list,
                                                                     arch: str, activation: str) -> None:
    clf = load_classifier(f"open_clip:{arch}/{tiny_vit_l}")  # an absolute path: ARCH//path
    assert clf.backend == "open_clip" and clf.logit_scale == pytest.approx(50.0)
    assert [activation_classes(m) for m in built_models] == [{"QuickGELU" if activation == "quick_gelu" else "GELU"}]
    assert clf.describe()["activation"] == activation


def test_transformers_and_mini_classifiers_record_their_activation(tmp_path: Path) -> None:
    _, clip_dir = tiny_folders()
    assert load_classifier(str(clip_dir)).describe()["activation"] == "quick_gelu"  # CLIPConfig's default
    assert load_classifier("mini").describe()["activation"] == "quick_gelu"
    mixed = Path(shutil.copytree(clip_dir, tmp_path / "clip"))
    config = json.loads((mixed / "config.json").read_text())
    config["vision_config"]["hidden_act"] = "gelu"
    (mixed / "config.json").write_text(json.dumps(config))
    assert load_classifier(str(mixed)).describe()["activation"] == "gelu+quick_gelu"


# --------------------------------------------------------------------------------- no network
@pytest.fixture
def unreachable_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list]]:
    """HF_HUB_OFFLINE unset and every connection refused; records the requests made and the backoff sleeps.

    huggingface_hub's sleeps are recorded instead of slept, so a retry loop shows up as counts, not minutes.
    """
    import huggingface_hub
    from huggingface_hub.utils import _http

    # the HTTP library huggingface_hub is built on (httpx or httpx2, by version)
    http = importlib.import_module(type(huggingface_hub.get_session()).__module__.split(".")[0])
    seen: dict[str, list] = {"requests": [], "sleeps": []}

    def refuse(request):
        seen["requests"].append(str(request.url))
        raise http.ConnectError("[Errno 101] Network is unreachable", request=request)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(_http, "_GLOBAL_CLIENT_FACTORY", lambda: http.Client(transport=http.MockTransport(refuse)))
    monkeypatch.setattr(_http.time, "sleep", seen["sleeps"].append)
    _http.close_session()
    yield seen
    _http.close_session()


def hub_requests(seen: dict[str, list]) -> list[str]:
    """Requests for models (huggingface_hub may also ask for its registry of agent harnesses, once a day)."""
    return [url for url in seen["requests"] if "/api/agent-harnesses" not in url]


def test_open_clip_without_network_fails_after_one_request(unreachable_hub: dict, hub_cache: Path, tiny_vit_l: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ModelLoadError) as err:
        load_classifier("open_clip:ViT-L-14/openai")
    assert len(hub_requests(unreachable_hub)) == 1 and unreachable_hub["sleeps"] == []
    assert "Retrying" not in caplog.text
    message = str(err.value)
    assert "not in the Hugging Face cache and the hub cannot be reached (ConnectError" in message
    assert "HF_HUB_OFFLINE=1" in message and "open_clip:ViT-L-14-quickgelu//path/to/" in message

    # once the weights are in the cache, the same machine loads them, still without waiting
    put_openai_vit_l_in_cache(hub_cache, tiny_vit_l)
    clf = load_classifier("open_clip:ViT-L-14/openai")
    assert clf.describe()["activation"] == "quick_gelu"
    assert len(hub_requests(unreachable_hub)) == 2 and unreachable_hub["sleeps"] == []


def test_transformers_hub_id_without_network_fails_after_one_request(unreachable_hub: dict, hub_cache: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ModelLoadError) as err:
        load_classifier("debias-tests/uncached-clip")
    assert len(hub_requests(unreachable_hub)) == 1 and unreachable_hub["sleeps"] == []
    assert "Retrying" not in caplog.text
    message = str(err.value)
    assert "not in the Hugging Face cache and the hub cannot be reached (ConnectError" in message
    assert "HF_HUB_OFFLINE=1" in message and "--classifier /path/to/clip-folder" in message
