"""SD3 and FLUX (MMDiT): the edit on the text input projection, its rows, files and profiles; auditing any pipeline.

MMDiT transformers have no cross-attention: the text tokens enter through one linear projection
(``context_embedder``) and then attend jointly with the image tokens. These tests build tiny random SD3 and FLUX
pipelines from configs (``tiny_models``) and check that the edit changes exactly that projection, that trying an
edit on the conditioning and baking it agree (under classifier-free and embedded guidance), that edit files load
with plain diffusers and refuse the other family, and that the fix runs on both. A family the edit does not
support (HunyuanDiT) and pipelines without a prompt or a text encoder get errors that say so.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from audit_helpers import HalfClassifier
from debias.editing import (
    MATRIX_KEY, align_tokens, bake_edit, conditioning_transform, edit_from_prompts, edit_rows, encode_conditioning,
    load_edit, prompt_tokens, read_edit, revert_edit, save_edit,
)
from debias.core.errors import EditError, InputError
from debias.core.profiles import MMDIT_ANCHOR_STRENGTH, get_profile
from debias.core.models import conditioning_width, denoiser, find_text_projections, fingerprint, model_family
from tiny_models import clip_tokenizer, t5_tokenizer, tiny_flux, tiny_hunyuan_dit, tiny_sd1, tiny_sd3

QUICK = dict(budget=48, test_images=8, check_images=8, joint_rounds=1, side_seeds=2, steps=2, progress=False, log=None,
             height=16, width=16)
CALL = dict(num_inference_steps=2, height=16, width=16, output_type="latent")


@functools.lru_cache(maxsize=None)
def _pipe(name: str):
    builders = {"sd3": tiny_sd3, "flux": tiny_flux, "flux-dev": functools.partial(tiny_flux, guidance_embeds=True)}
    return builders[name]()


def _random_edit(pipe, strength: float = 0.3, seed: int = 1) -> torch.Tensor:
    d = conditioning_width(pipe)
    return torch.eye(d) + strength * torch.randn(d, d, generator=torch.Generator().manual_seed(seed)) / d**0.5


def _latents(pipe, guidance: float, prompt: str = "a photo of a nurse") -> torch.Tensor:
    return pipe(prompt=[prompt], guidance_scale=guidance, generator=[torch.Generator().manual_seed(0)], **CALL).images


# ---- the layer ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_the_text_input_projection_is_found_by_what_it_is(name: str) -> None:
    pipe = _pipe(name)
    net = denoiser(pipe)
    found = find_text_projections(pipe)
    assert [(p.name, p.kind, p.in_features) for p in found] == [("context_embedder", "context", 48)]
    assert found[0].module is net.context_embedder and conditioning_width(pipe) == net.config.joint_attention_dim
    # FLUX's pooled projection reads the same width (48 here) but sits in time_text_embed: it is not edited
    pooled = net.time_text_embed.text_embedder.linear_1
    assert all(p.module is not pooled for p in found)
    assert model_family(pipe) == {"sd3": "SD3", "flux": "FLUX.1"}[name]


def test_sd3_rows_are_clip_side_by_side_then_t5_as_encode_prompt_builds_them() -> None:
    pipe = _pipe("sd3")
    prompt = "a photo of a nurse"
    captured = encode_conditioning(pipe, [prompt])
    with torch.no_grad():  # as the pipeline encodes (with gradients other kernels run, 1e-5 apart)
        embeds = pipe.encode_prompt(prompt, None, None, do_classifier_free_guidance=False, device="cpu")[0]
    assert captured.shape == (1, 77 + 256, 48) and torch.equal(captured, embeds)
    assert torch.all(captured[0, :77, 16 + 24:] == 0)  # CLIP-L (16) and CLIP-G (24) zero-padded to T5's width
    tokens = prompt_tokens(pipe, prompt, captured.shape[1])
    assert tokens[:3] == ["<|startoftext|>", "a</w>", "photo</w>"] and tokens[77:80] == ["▁a", "▁photo", "▁of"]
    # without T5 its rows are zeros: they carry nothing and are no edit rows
    no_t5 = tiny_sd3(with_t5=False)
    C, C_star = edit_rows(no_t5, "a nurse", "a male nurse", augmentations=())
    assert C.shape[0] == 77 - 1 and torch.all(encode_conditioning(no_t5, [prompt])[0, 77:] == 0)


def test_flux_rows_are_t5_tokens_and_pair_after_the_inserted_word() -> None:
    pipe = _pipe("flux")
    captured = encode_conditioning(pipe, ["a nurse", "a male nurse"])
    with torch.no_grad():
        embeds = pipe.encode_prompt(["a nurse", "a male nurse"], None, device="cpu", max_sequence_length=256)[0]
    assert captured.shape == (2, 256, 48) and torch.equal(captured, embeds)  # schnell: 256 T5 tokens
    C, C_star = edit_rows(pipe, "a nurse", "a male nurse", augmentations=())
    # ▁a ↔ ▁a, ▁nurse ↔ ▁nurse (after ▁male), </s> ↔ </s>, padding in order; the last source pad has no partner
    assert C.shape == (255, 48)
    assert torch.equal(C[:3], captured[0, :3]) and torch.equal(C_star[:3], captured[1, [0, 2, 3]])
    # T5 is bidirectional: the inserted word changes every row, the pads too, so they are edit rows
    assert not torch.allclose(captured[0, 0], captured[1, 0]) and not torch.allclose(captured[0, 200], captured[1, 200])


@pytest.mark.parametrize("tokenizer", [t5_tokenizer, clip_tokenizer])
def test_alignment_matches_whole_words_for_sentencepiece_and_bpe(tokenizer) -> None:
    tok = tokenizer()

    def tokens(text: str) -> list[str]:
        return tok.convert_ids_to_tokens(tok(text, padding="max_length", max_length=24, truncation=True).input_ids)

    # T5's small test vocabulary spells both words out, so they both start with the piece "▁t"
    src, dst = tokens("a tiger"), tokens("a tall tiger")
    mapping = align_tokens(src, dst, end_token=tok.eos_token)
    first, end = (2 if src[0] == "<|startoftext|>" else 1), src.index(tok.eos_token)
    shift = dst.index(tok.eos_token) - end  # the pieces "tall" adds
    assert shift >= 1 and mapping[:first] == list(range(first))
    assert mapping[first:end + 2] == [i + shift for i in range(first, end + 2)]  # tiger's pieces, the end, a pad
    assert [dst[mapping[i]] for i in range(first, end)] == src[first:end]
    with pytest.raises(EditError, match="does not contain the source's words in order"):
        align_tokens(tokens("a tiger"), tokens("a tall cat"), end_token=tok.eos_token)


# ---- the edit -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_the_edit_changes_exactly_the_text_input_projection(name: str) -> None:
    pipe = _pipe(name)
    before = {f"{c}.{k}": v.clone() for c, m in pipe.components.items() if isinstance(m, torch.nn.Module)
              for k, v in m.state_dict().items()}
    fp = fingerprint(pipe)
    M = _random_edit(pipe)
    bake_edit(pipe, M)
    try:
        after = {f"{c}.{k}": v.clone() for c, m in pipe.components.items() if isinstance(m, torch.nn.Module)
                 for k, v in m.state_dict().items()}
    finally:
        revert_edit(pipe)
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["transformer.context_embedder.weight"]  # its bias and everything else: bit-identical
    W = before["transformer.context_embedder.weight"]
    assert torch.allclose(after["transformer.context_embedder.weight"], (W.double() @ M.double()).float(), atol=1e-6)
    assert fingerprint(pipe) == fp and torch.equal(pipe.transformer.context_embedder.weight, W)


@pytest.mark.parametrize("name, guidance", [("sd3", 4.0), ("flux", 0.0), ("flux-dev", 3.5)])
def test_baked_and_transformed_edits_give_the_same_images(name: str, guidance: float) -> None:
    """SD3 under classifier-free guidance (the negative prompt's rows share the call), FLUX.1-schnell without
    guidance and FLUX.1-dev with its embedded guidance: transforming the conditioning is baking ``W @ M``."""
    pipe = _pipe(name)
    M = _random_edit(pipe)
    base = _latents(pipe, guidance)
    with conditioning_transform(pipe, M):
        transformed = _latents(pipe, guidance)
    bake_edit(pipe, M)
    try:
        baked = _latents(pipe, guidance)
    finally:
        revert_edit(pipe)
    assert float((transformed - base).abs().max()) > 1e-3  # the edit does something …
    assert float((transformed - baked).abs().max()) < 1e-5 * max(1.0, float(base.abs().max()))  # … the same thing


def test_under_guidance_the_unconditional_rows_are_transformed_as_the_baked_weight_would() -> None:
    pipe = _pipe("sd3")
    M = _random_edit(pipe)
    seen: list[torch.Tensor] = []
    spy = pipe.transformer.context_embedder.register_forward_hook(lambda _m, _a, out: seen.append(out.detach()))
    try:
        with conditioning_transform(pipe, M):
            pipe(prompt=["a nurse"], guidance_scale=4.0, generator=[torch.Generator().manual_seed(0)],
                 **{**CALL, "num_inference_steps": 1})
        bake_edit(pipe, M)
        pipe(prompt=["a nurse"], guidance_scale=4.0, generator=[torch.Generator().manual_seed(0)],
             **{**CALL, "num_inference_steps": 1})
    finally:
        revert_edit(pipe)
        spy.remove()
    transformed, baked = seen
    assert transformed.shape[0] == 2  # the negative prompt's rows and the prompt's, in one call
    assert torch.allclose(transformed, baked, atol=1e-5)


# ---- edit files ---------------------------------------------------------------------------------


def test_edit_files_load_with_plain_diffusers_and_refuse_the_other_family(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    files = {}
    for name, build in (("sd3", tiny_sd3), ("flux", tiny_flux)):
        pipe = _pipe(name)
        M, _ = edit_from_prompts(pipe, [("a nurse", "a male nurse")], lam_relative=0.01)
        files[name] = save_edit(tmp_path / f"{name}.safetensors", pipe, M, spec=f"tiny-{name}")
        assert read_edit(files[name]).metadata["family"] == model_family(pipe)
        with conditioning_transform(pipe, M):
            expected = _latents(pipe, 1.0)
        fresh = build()  # plain diffusers: the file's keys are relative to the transformer
        state = load_file(str(files[name]))
        assert set(state) == {"context_embedder.weight", MATRIX_KEY}
        result = fresh.transformer.load_state_dict(state, strict=False)
        assert result.unexpected_keys == [MATRIX_KEY]
        assert torch.allclose(_latents(fresh, 1.0), expected, atol=1e-5)
        assert float((_latents(fresh, 1.0) - _latents(pipe, 1.0)).abs().max()) > 1e-4
    with pytest.raises(EditError, match="different base model") as info:
        load_edit(_pipe("flux"), files["sd3"], spec="tiny-flux")
    assert "family 'SD3', this one 'FLUX.1'" in str(info.value)
    with pytest.raises(EditError, match="family 'FLUX.1', this one 'SD3'"):
        load_edit(_pipe("sd3"), files["flux"])
    with pytest.raises(EditError, match="family 'SD 1.x/2.x', this one 'SD3'"):
        sd1 = tiny_sd1()
        load_edit(_pipe("sd3"), save_edit(tmp_path / "sd1.safetensors", sd1, torch.eye(conditioning_width(sd1))))
    loaded = load_edit(_pipe("sd3"), files["sd3"])  # its own model takes it
    revert_edit(_pipe("sd3"))
    assert loaded.metadata["base_model"] == "tiny-sd3"


# ---- profiles and any pipeline ------------------------------------------------------------------


def test_the_family_profile_is_chosen_from_the_pipeline() -> None:
    from debias.generation.generate import default_settings, use_scheduler
    from debias.core.setup import LoadedModel

    chosen = {name: LoadedModel.of(_pipe(name)).profile for name in ("sd3", "flux", "flux-dev")}
    assert {k: p.name for k, p in chosen.items()} == {"sd3": "sd3-medium", "flux": "flux.1-schnell",
                                                      "flux-dev": "flux.1-dev"}
    for name, profile in chosen.items():
        pipe = _pipe(name)
        settings = default_settings(pipe, profile.sampler)
        assert settings.scheduler == "FlowMatchEulerDiscreteScheduler" == type(pipe.scheduler).__name__
        assert (settings.steps, settings.guidance) == (profile.sampler.steps, profile.sampler.guidance)
        use_scheduler(pipe, None)  # None keeps the pipeline's own
        assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert (chosen["flux"].sampler.steps, chosen["flux"].sampler.guidance) == (4, 0.0)
    sd35 = tiny_sd3()
    sd35.transformer.register_to_config(qk_norm="rms_norm")
    assert LoadedModel.of(sd35).profile.name == "sd3.5-large"
    sd35.register_to_config(_name_or_path="stabilityai/stable-diffusion-3.5-large-turbo")
    assert LoadedModel.of(sd35).profile.name == "sd3.5-large-turbo"
    from debias.core.profiles import get_profile

    # the default profile's DPM-Solver is for diffusion models: a flow-matching pipeline keeps its own
    assert default_settings(_pipe("flux"), get_profile("default").sampler).scheduler == "FlowMatchEulerDiscreteScheduler"


def test_an_unsupported_family_is_audited_but_fix_and_edit_fail_early(tmp_path: Path) -> None:
    import debias
    from debias.verbs.audit import audit

    pipe = tiny_hunyuan_dit()
    professions = tmp_path / "professions.txt"
    professions.write_text("a nurse\n", encoding="utf-8")
    record = audit(pipe, classifier=HalfClassifier(), professions=professions, images_per_profession=2,
                   out=tmp_path / "audit", steps=2, batch_size=2, progress=False).to_dict()
    assert record["images_generated"] == 2 and record["model"]["class"] == "HunyuanDiTPipeline"
    for verb in (lambda: debias.fix(pipe, professions=professions, classifier=HalfClassifier(), out=tmp_path / "fix",
                                    **{**QUICK, "height": None, "width": None}),
                 lambda: debias.edit(pipe, [("a nurse", "a male nurse")], lam_relative=1.0, out=tmp_path / "e.st")):
        with pytest.raises(EditError) as info:
            verb()
        message = str(info.value)
        assert "HunyuanDiTPipeline" in message and "cannot be edited" in message
        assert "SD3/3.5 and FLUX.1" in message and "can still be audited" in message
    assert not list((tmp_path / "fix").glob("**/*.png"))  # it failed before generating anything


def test_pipelines_without_a_prompt_or_a_text_encoder_cannot_be_audited(tmp_path: Path) -> None:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from debias.verbs.audit import audit

    torch.manual_seed(0)
    unconditional = DDPMPipeline(unet=UNet2DModel(sample_size=8, block_out_channels=(32, 32), norm_num_groups=8,
                                                  down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2),
                                 scheduler=DDPMScheduler())
    with pytest.raises(InputError, match="DDPMPipeline cannot be audited: it takes no text prompt"):
        audit(unconditional, classifier=HalfClassifier(), images_per_profession=1, out=tmp_path / "a", progress=False)
    sd1 = tiny_sd1()
    sd1.text_encoder = None
    with pytest.raises(InputError, match=r"no text encoder loaded \(text_encoder is None\)"):
        audit(sd1, classifier=HalfClassifier(), images_per_profession=1, out=tmp_path / "b", progress=False)


def test_generation_passes_only_the_options_a_pipeline_takes() -> None:
    from diffusers import StableDiffusionPipeline

    from debias.core.pipeline import call_arguments
    from debias.generation.generate import default_settings, generate_images
    from debias.core.profiles import get_profile

    class NoGuidance(StableDiffusionPipeline):
        """A pipeline whose ``__call__`` has no ``guidance_scale`` and no ``negative_prompt``."""

        def __call__(self, prompt, generator=None, num_inference_steps=2, height=None, width=None, output_type="pil"):
            return super().__call__(prompt=prompt, generator=generator, num_inference_steps=num_inference_steps,
                                    guidance_scale=1.0, height=height, width=width, output_type=output_type)

    pipe = NoGuidance(**tiny_sd1().components)
    pipe.set_progress_bar_config(disable=True)
    assert "guidance_scale" not in call_arguments(pipe, prompt=["a"], guidance_scale=7.5)
    settings = default_settings(pipe, get_profile("default").sampler, steps=2)
    images = generate_images(pipe, ["a nurse"], [0], settings)
    assert images.shape == (1, settings.height, settings.width, 3) and images.dtype.name == "uint8"


# ---- the fix, end to end -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_fix_runs_end_to_end_on_mmdit(name: str, tmp_path: Path) -> None:
    import debias

    professions = tmp_path / "professions.txt"
    professions.write_text("a nurse\na doctor\n", encoding="utf-8")
    out = tmp_path / "run"
    record = debias.fix(_pipe(name), professions=professions, classifier=HalfClassifier(), out=out, **QUICK).to_dict()
    assert json.loads((out / "fix.json").read_text())["kind"] == "fix" and (out / "report.html").is_file()
    assert record["model"]["profile"] == {"sd3": "sd3-medium", "flux": "flux.1-schnell"}[name]
    assert record["generation"]["scheduler"] == "FlowMatchEulerDiscreteScheduler"
    assert record["anchors"]["strength"] == MMDIT_ANCHOR_STRENGTH  # the family's, since none was given
    assert {p["status"] for p in record["professions"]} <= {"fixed", "already_within_tolerance", "not_reachable",
                                                            "budget_exhausted"}
    if record["edit_file"] is not None:
        edit = read_edit(out / record["edit_file"]["path"])
        assert set(edit.weights) == {"context_embedder.weight"} and edit.metadata["family"] == model_family(_pipe(name))


def test_the_anchor_weight_is_the_users_else_the_familys() -> None:
    from debias.fixing import DEFAULT_ANCHOR_STRENGTH
    from debias.fixing.steps import anchor_strength_for

    assert anchor_strength_for(None, get_profile("flux.1-schnell")) == MMDIT_ANCHOR_STRENGTH == 10.0
    assert anchor_strength_for(None, get_profile("sd3.5-large")) == MMDIT_ANCHOR_STRENGTH
    assert anchor_strength_for(None, get_profile("default")) == DEFAULT_ANCHOR_STRENGTH == 100.0
    assert anchor_strength_for(0.0, get_profile("flux.1-schnell")) == 0.0  # the user's word wins, 0 included


def test_a_gpu_loads_each_family_in_its_own_half_precision(tmp_path: Path) -> None:
    from debias.core.setup import gpu_dtype
    from tiny_models import save_tiny

    for name, expected in (("flux", torch.bfloat16), ("sd3", torch.float16)):
        assert gpu_dtype(str(save_tiny(_pipe(name), tmp_path / name))) == expected  # from model_index.json
    assert gpu_dtype("mini") is None  # tiny weights gain nothing from half precision
    # an unreachable hub (HF_HUB_OFFLINE=1 in tests) leaves the class unknown: float16, at once
    assert gpu_dtype("black-forest-labs/FLUX.1-not-cached") == torch.float16


def test_schnell_reads_256_t5_tokens_as_its_card_says_in_generation_and_edit_alike() -> None:
    from debias.core.pipeline import pipeline_options
    from debias.generation.generate import default_settings
    from debias.core.profiles import profile_of_pipeline

    for name, length in (("flux", 256), ("flux-dev", None)):
        pipe = _pipe(name)
        assert pipeline_options(pipe).get("max_sequence_length") == length
        rows = encode_conditioning(pipe, ["a photo of a nurse"]).shape[1]
        assert rows == (length or 512)  # the edit's rows are the rows generation feeds the transformer
        settings = default_settings(pipe, profile_of_pipeline(pipe).sampler, steps=1, height=16, width=16)
        assert settings.to_dict().get("text_length") == length  # in the record and the image keys, when set
