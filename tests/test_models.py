"""Loading pipelines, finding cross-attention K/V layers, fingerprints — on tiny random pipelines."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from debias.editing import bake_edit, conditioning_transform, encode_conditioning, revert_edit
from debias.core.errors import ModelLoadError
from debias.core.models import conditioning_width, denoiser, find_cross_attention, fingerprint, load_pipeline
from tiny_models import BUILDERS, save_tiny, tiny_sd1

# model → (conditioning width, number of to_k + to_v layers that read it)
EXPECTED = {"sd1": (32, 8), "sd2": (48, 14), "sdxl": (64, 16), "pixart": (24, 4)}


@pytest.fixture(scope="module")
def pipes() -> dict:
    return {name: build() for name, build in BUILDERS.items()}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_find_cross_attention_finds_exactly_the_text_kv_layers(pipes: dict, name: str) -> None:
    pipe = pipes[name]
    width, count = EXPECTED[name]
    found = find_cross_attention(pipe)
    assert conditioning_width(pipe) == width
    assert len(found) == count
    assert {p.kind for p in found} == {"to_k", "to_v"}
    net = denoiser(pipe)
    modules = dict(net.named_modules())
    for p in found:
        assert modules[p.name] is p.module
        assert p.in_features == width == p.module.in_features
        assert p.name.endswith(f"attn2.{p.kind}")
    # every cross-attention K/V of the denoiser is found, no self-attention one is
    expected = sorted(n for n in modules if n.endswith(("attn2.to_k", "attn2.to_v")))
    assert sorted(p.name for p in found) == expected


def test_sdxl_conditioning_is_both_encoders_concatenated(pipes: dict) -> None:
    pipe = pipes["sdxl"]
    width_1 = pipe.text_encoder.config.hidden_size
    width_2 = pipe.text_encoder_2.config.hidden_size
    assert conditioning_width(pipe) == width_1 + width_2
    captured = encode_conditioning(pipe, ["a photo of a nurse"])
    embeds, _, pooled, _ = pipe.encode_prompt("a photo of a nurse", device="cpu", do_classifier_free_guidance=False)
    assert torch.allclose(captured, embeds.float())
    assert pooled.shape[-1] == pipe.text_encoder_2.config.projection_dim  # pooled embeds go elsewhere


def test_sdxl_transform_leaves_pooled_embeds_untouched(pipes: dict) -> None:
    pipe = pipes["sdxl"]
    d = conditioning_width(pipe)
    M = torch.eye(d) + 0.1 * torch.randn(d, d, generator=torch.Generator().manual_seed(0))
    call = dict(prompt="a nurse", num_inference_steps=1, height=64, width=64, output_type="latent",
                generator=torch.Generator().manual_seed(0))

    def capture() -> tuple[torch.Tensor, torch.Tensor]:
        seen = []

        def spy(_module, args, kwargs):  # runs after any hook registered before it
            seen.append((kwargs["encoder_hidden_states"].clone(), kwargs["added_cond_kwargs"]["text_embeds"].clone()))

        handle = denoiser(pipe).register_forward_pre_hook(spy, with_kwargs=True)
        try:
            pipe(**call)
        finally:
            handle.remove()
        return seen[0]

    hidden, pooled = capture()
    with conditioning_transform(pipe, M):
        hidden_t, pooled_t = capture()
    assert torch.equal(pooled, pooled_t)
    assert torch.allclose(hidden_t, hidden @ M.T, atol=1e-5)
    assert not torch.allclose(hidden_t, hidden, atol=1e-3)


def test_pixart_conditioning_is_taken_after_the_caption_projection(pipes: dict) -> None:
    pipe = pipes["pixart"]
    captured = encode_conditioning(pipe, ["a photo of a nurse", "a photo of a male nurse"])
    embeds = pipe.encode_prompt(["a photo of a nurse", "a photo of a male nurse"], do_classifier_free_guidance=False,
                                device="cpu")[0]
    assert embeds.shape[-1] == 32  # the T5 width
    with torch.no_grad():
        projected = pipe.transformer.caption_projection(embeds)
    assert captured.shape == (2, 120, 24)
    assert torch.allclose(captured, projected, atol=1e-6)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_each_model_is_edited_and_transform_matches_bake(pipes: dict, name: str) -> None:
    """Baking W @ M and transforming the conditioning give the same denoiser output, for every layout."""
    pipe = pipes[name]
    d = conditioning_width(pipe)
    M = torch.eye(d) + 0.2 * torch.randn(d, d, generator=torch.Generator().manual_seed(1)) / d**0.5
    call = dict(prompt="a photo of a nurse", num_inference_steps=2, guidance_scale=3.0, output_type="latent",
                height=64, width=64)
    if name == "pixart":
        call.update(use_resolution_binning=False, clean_caption=False)

    def run():
        return pipe(generator=torch.Generator().manual_seed(0), **call).images

    before = fingerprint(pipe)
    base = run()
    with conditioning_transform(pipe, M):
        transformed = run()
    bake_edit(pipe, M)
    try:
        baked = run()
        others = {k: v.clone() for k, v in denoiser(pipe).state_dict().items()}
    finally:
        revert_edit(pipe)
    edited_names = {f"{p.name}.weight" for p in find_cross_attention(pipe)}
    for key, value in denoiser(pipe).state_dict().items():
        if key in edited_names:
            assert not torch.equal(value, others[key])  # the K/V layers were edited …
        else:
            assert torch.equal(value, others[key])  # … and nothing else was
    change = float((transformed - base).abs().max())
    gap = float((transformed - baked).abs().max())
    assert change > 1e-3
    assert gap < 1e-4 * max(1.0, float(base.abs().max()))
    assert fingerprint(pipe) == before


def test_fingerprint_is_stable_and_identifies_weights() -> None:
    a, b, c = tiny_sd1(seed=0), tiny_sd1(seed=0), tiny_sd1(seed=1)
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(c)
    assert fingerprint(a).startswith("sha256:") and len(fingerprint(a)) == 7 + 64
    d = conditioning_width(a)
    bake_edit(a, 2 * torch.eye(d))
    assert fingerprint(a) == fingerprint(b)  # fingerprints name the original weights, edited or not


def test_weights_summary_survives_dtypes_and_tells_models_apart() -> None:
    from debias.core.models import WEIGHTS_TOLERANCE, compare_weights, weights_distance, weights_summary

    base = weights_summary(tiny_sd1())
    assert base == weights_summary(tiny_sd1()) and base["dtype"] == "float32"
    assert len(base["modules"]) == EXPECTED["sd1"][1]
    for dtype, rounding in ((torch.float16, 5e-4), (torch.bfloat16, 4e-3)):
        cast = weights_summary(tiny_sd1().to(dtype=dtype))
        assert cast["dtype"] == str(dtype).removeprefix("torch.") and compare_weights(base, cast) == []
        assert max(weights_distance(base["modules"][n], m) for n, m in cast["modules"].items()) < rounding
    other = weights_summary(tiny_sd1(seed=1))
    distances = [weights_distance(base["modules"][n], m) for n, m in other["modules"].items()]
    assert min(distances) > 50 * WEIGHTS_TOLERANCE
    assert len(compare_weights(base, other)) == len(base["modules"])


def test_weights_distance_estimates_the_relative_frobenius_distance() -> None:
    from debias.core.models import weights_distance, weights_summary

    pipe = tiny_sd1()
    first = find_cross_attention(pipe)[0]
    before = weights_summary(pipe)["modules"][first.name]
    noise = torch.randn(first.module.weight.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        first.module.weight.add_(noise * (0.05 * first.module.weight.norm() / noise.norm()))
    after = weights_summary(pipe)["modules"][first.name]
    assert 0.025 < weights_distance(before, after) < 0.1  # 16 projections: within a factor of 2 of the true 5%


# ---- loading -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd1_folder(tmp_path_factory) -> Path:
    return save_tiny(tiny_sd1(), tmp_path_factory.mktemp("tiny") / "sd1")


def test_load_local_folder(sd1_folder: Path) -> None:
    pipe = load_pipeline(str(sd1_folder))
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert fingerprint(pipe) == fingerprint(tiny_sd1())
    from debias.core.setup import LoadedModel

    info = LoadedModel.of(pipe).info()  # described from where diffusers loaded it: no attribute of ours on the pipe
    assert info == {"spec": str(sd1_folder), "fingerprint": fingerprint(pipe), "revision": None,
                    "profile": "default", "profile_source": None, "class": "StableDiffusionPipeline"}
    assert not [name for name in vars(pipe) if name.startswith("_debias")]
    assert pipe._progress_bar_config.get("disable") is True


def test_load_with_dtype(sd1_folder: Path) -> None:
    pipe = load_pipeline(str(sd1_folder), torch_dtype="bfloat16")
    assert pipe.unet.dtype == torch.bfloat16
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_pipeline(str(sd1_folder), torch_dtype="float8")


def test_pickle_only_folder_is_refused_unless_allowed(tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    tiny_sd1().save_pretrained(folder, safe_serialization=False)
    assert list((folder / "unet").glob("*.bin")) and not list((folder / "unet").glob("*.safetensors"))
    with pytest.raises(ModelLoadError) as info:
        load_pipeline(str(folder))
    message = str(info.value)
    assert "only pickle" in message and "--allow-pickle" in message and str(folder) in message and "unet" in message
    pipe = load_pipeline(str(folder), allow_pickle=True)
    assert fingerprint(pipe) == fingerprint(tiny_sd1())


def test_missing_hub_model_offline_says_what_to_do() -> None:
    with pytest.raises(ModelLoadError) as info:
        load_pipeline("no-such-owner/no-such-model-xyz")
    message = str(info.value)
    assert "no-such-owner/no-such-model-xyz" in message
    assert "local" in message and ("HF_HUB_OFFLINE" in message or "check the id" in message)


def test_missing_folder_and_non_pipeline_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_pipeline(str(tmp_path / "nope" / "deeper"))
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_pipeline(str(tmp_path))


def test_a_registered_built_in_model_loads_from_its_folder(sd1_folder: Path) -> None:
    from debias.core.profiles import _REGISTRY, Profile, register_profile
    from debias.core.setup import LoadedModel, load_model

    folder = {"path": sd1_folder}
    register_profile(Profile(name="tiny-builtin", description="a test", builtin_folder=lambda: folder["path"]))
    try:
        loaded = load_model("tiny-builtin")
        assert (loaded.spec, loaded.profile.name) == ("tiny-builtin", "tiny-builtin")
        assert LoadedModel.of(loaded.pipe).spec == "tiny-builtin"  # recognised from the folder it loaded from
        folder["path"] = sd1_folder.parent / "missing"
        with pytest.raises(ModelLoadError, match="built-in model 'tiny-builtin' has no weights"):
            load_pipeline("tiny-builtin")
    finally:
        del _REGISTRY["tiny-builtin"]


@pytest.mark.parametrize(
    "error_name, text, expected",
    [
        ("GatedRepoError", "Access to model is restricted.", "huggingface-cli login"),
        ("RepositoryNotFoundError", "404 Client Error.", "check the id"),
        ("OSError", "the model is not fully cached locally", "HF_HUB_OFFLINE=1"),
        ("OSError", "no file named diffusion_pytorch_model.safetensors found", "--allow-pickle"),
    ],
)
def test_load_failures_are_explained(error_name: str, text: str, expected: str) -> None:
    from debias.core.models import _explain_load_failure

    cause = type(error_name, (Exception,), {})(text)
    try:
        try:
            raise cause
        except Exception as inner:
            raise OSError(f"Cannot load model owner/gated-name: {text}") from inner
    except OSError as err:
        message = _explain_load_failure("owner/gated-name", err, allow_pickle=False)
    assert expected in message and "'owner/gated-name'" in message
