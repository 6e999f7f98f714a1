"""Tiny random pipelines built from configs (no downloads), the way diffusers' own tests build them.

Each builder returns a complete diffusers pipeline with random weights seeded for reproducibility:
``tiny_sd1`` (CLIPTextModel, SD 1.x UNet), ``tiny_sd2`` (OpenCLIP-style gelu text encoder, linear
projections, tuple ``attention_head_dim``), ``tiny_sdxl`` (two text encoders whose outputs are
concatenated; pooled embeddings go to the added conditioning) and ``tiny_pixart`` (T5 encoder and a
PixArt transformer with a caption projection). They are fast to build (well under a second each
after the first tokenizer) and deterministic.

The CLIP tokenizer is the real OpenAI CLIP BPE (shipped with open_clip), so prompts tokenize as on
real models; the T5 tokenizer is a small Unigram vocabulary of common words and letters.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import torch

CLIP_VOCAB_SIZE = 49408
_T5_WORDS = (
    "a an the of in photo image picture painting person working laughing at workplace digital art "
    "male female man woman nurse doctor attendant engineer ceo teacher apple car tree with and"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


@functools.lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    import open_clip

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == CLIP_VOCAB_SIZE
    return {tok: i for i, tok in enumerate(vocab)}, merges


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """The CLIP BPE tokenizer (SD 1.x pads with the end token, SD 2.x with "!")."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), pad_token=pad_token, model_max_length=77)


def t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{w}", -1.0) for w in _T5_WORDS] + [(f"▁{w.capitalize()}", -1.0) for w in _T5_WORDS]
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    pieces += [(c, -5.0) for c in chars] + [(f"▁{c}", -4.0) for c in chars]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=120)


def _clip_text_config(hidden_act: str = "quick_gelu", hidden_size: int = 32, projection_dim: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=hidden_size, intermediate_size=37,
        layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, vocab_size=CLIP_VOCAB_SIZE,
        max_position_embeddings=77, hidden_act=hidden_act, projection_dim=projection_dim,
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=32,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], sample_size=32,
    )


def _ddim():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def tiny_sd1(seed: int = 0):
    """SD 1.x layout: CLIPTextModel (width 32) → UNet2DConditionModel with cross_attention_dim 32."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    )
    vae = _vae()
    text_encoder = CLIPTextModel(_clip_text_config())
    return _finish(StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), scheduler=_ddim(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ))


def tiny_sd2(seed: int = 0):
    """SD 2.x layout: gelu text encoder (OpenCLIP-style, width 48), linear projections, tuple head dims."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=48, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=32,
    )
    text_encoder = CLIPTextModel(_clip_text_config(hidden_act="gelu", hidden_size=48, projection_dim=48))
    return _finish(StableDiffusionPipeline(
        unet=unet, vae=_vae(), text_encoder=text_encoder, tokenizer=clip_tokenizer(pad_token="!"), scheduler=_ddim(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ))


def tiny_sdxl(seed: int = 0):
    """SDXL layout: two text encoders (32 + 32 concatenated = 64 wide conditioning), pooled text embeds."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 time ids × 8 + 32 pooled
        cross_attention_dim=64, norm_num_groups=1,
    )
    config = _clip_text_config(hidden_act="gelu")
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    return _finish(StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=CLIPTextModel(config), text_encoder_2=CLIPTextModelWithProjection(config),
        tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(pad_token="!"), unet=unet, scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    ))


def tiny_pixart(seed: int = 0):
    """PixArt-α layout: T5 encoder (width 32) → caption projection → transformer cross-attention (width 24)."""
    from diffusers import AutoencoderKL, DDIMScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
    )
    tokenizer = t5_tokenizer()
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=2,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))
    vae = AutoencoderKL(block_out_channels=[32], latent_channels=4, norm_num_groups=32, sample_size=16,
                        down_block_types=["DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D"])
    return _finish(PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                       transformer=transformer, scheduler=DDIMScheduler(steps_offset=1)))


BUILDERS = {"sd1": tiny_sd1, "sd2": tiny_sd2, "sdxl": tiny_sdxl, "pixart": tiny_pixart}


def _finish(pipe):
    pipe.set_progress_bar_config(disable=True)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    return pipe


def save_tiny(pipe, folder: str | Path) -> Path:
    """Write a tiny pipeline as a diffusers folder (safetensors) that ``from_pretrained`` loads offline."""
    folder = Path(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


# --------------------------------------------------------------------------------------------------
# MMDiT families (SD3/3.5, FLUX.1): the text enters through one input projection, not cross-attention
# --------------------------------------------------------------------------------------------------


def _clip_encoder(hidden_size: int, projection_dim: int, with_projection: bool, pad_token_id: int = 49407):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        bos_token_id=49406, eos_token_id=49407, pad_token_id=pad_token_id, hidden_size=hidden_size,
        intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=CLIP_VOCAB_SIZE, max_position_embeddings=77, hidden_act="gelu", projection_dim=projection_dim,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _t5_encoder(d_model: int, tokenizer):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_ff=37, d_kv=8, num_heads=4, num_layers=2,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))


def _flow_vae(latent_channels: int):
    """A one-block VAE (scale factor 1) with SD3/FLUX's shift and scaling factors."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    )


def tiny_sd3(seed: int = 0, with_t5: bool = True):
    """SD3 layout: CLIP-L (16) and CLIP-G (24) per-token embeddings concatenated (40), zero-padded to T5's width
    (48) and followed by T5's tokens on the sequence axis (77 + 256 rows); ``context_embedder`` reads them (48 → 32).
    The pooled CLIP vectors (16 + 24) go to ``time_text_embed``. ``with_t5=False`` drops T5 (its rows are zeros)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=48, pooled_projection_dim=40, out_channels=4,
        pos_embed_max_size=32,
    )
    tokenizer_3 = t5_tokenizer()
    return _finish(StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flow_vae(latent_channels=4),
        text_encoder=_clip_encoder(16, 16, with_projection=True), tokenizer=clip_tokenizer(),
        text_encoder_2=_clip_encoder(24, 24, with_projection=True), tokenizer_2=clip_tokenizer(pad_token="!"),
        text_encoder_3=_t5_encoder(48, tokenizer_3) if with_t5 else None, tokenizer_3=tokenizer_3 if with_t5 else None,
    ))


def tiny_flux(seed: int = 0, guidance_embeds: bool = False):
    """FLUX.1 layout: T5's tokens (width 48, 512 rows) → ``context_embedder`` (48 → 32); the pooled CLIP vector
    (also width 48, so widths alone cannot tell the two projections apart) → ``time_text_embed``.
    ``guidance_embeds=True`` is FLUX.1-dev's embedded guidance; False is FLUX.1-schnell's."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=48, pooled_projection_dim=48, guidance_embeds=guidance_embeds, axes_dims_rope=[4, 4, 8],
    )
    tokenizer_2 = t5_tokenizer()
    return _finish(FluxPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flow_vae(latent_channels=1),
        text_encoder=_clip_encoder(48, 48, with_projection=False), tokenizer=clip_tokenizer(),
        text_encoder_2=_t5_encoder(48, tokenizer_2), tokenizer_2=tokenizer_2, image_encoder=None, feature_extractor=None,
    ))


MMDIT_BUILDERS = {"sd3": tiny_sd3, "flux": tiny_flux}


def tiny_hunyuan_dit(seed: int = 0):
    """HunyuanDiT layout, a family the edit does not support: its cross-attention reads BERT's tokens followed by
    T5's tokens projected inside the transformer, not the embeddings it is given. It can still be audited.
    A four-block VAE (scale factor 8), because the pipeline sizes its position grid in units of 8 pixels."""
    import tempfile

    from diffusers import AutoencoderKL, DDPMScheduler, HunyuanDiT2DModel, HunyuanDiTPipeline
    from transformers import BertConfig, BertModel, BertTokenizer

    torch.manual_seed(seed)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(_T5_WORDS), *"abcdefghijklmnopqrstuvwxyz"]
    vocab = Path(tempfile.mkdtemp(prefix="debias-bert-")) / "vocab.txt"
    vocab.write_text("\n".join(words + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]), encoding="utf-8")
    tokenizer = BertTokenizer(str(vocab), model_max_length=77)
    text_encoder = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=37, max_position_embeddings=77))
    transformer = HunyuanDiT2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, in_channels=4,
        cross_attention_dim=32, cross_attention_dim_t5=48, pooled_projection_dim=16, hidden_size=24,
        activation_fn="gelu-approximate",
    )
    vae = AutoencoderKL(block_out_channels=(4, 4, 4, 4), down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=1, layers_per_block=1)
    tokenizer_2 = t5_tokenizer()
    return _finish(HunyuanDiTPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, scheduler=DDPMScheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        text_encoder_2=_t5_encoder(48, tokenizer_2), tokenizer_2=tokenizer_2,
    ))
