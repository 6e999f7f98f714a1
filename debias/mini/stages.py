"""The three networks of the mini model and how each is trained: tiny CLIP, VAE, UNet (each from its own rng).

:mod:`debias.mini.train` runs them in order. Every stage takes a numpy ``Generator`` for the world's samples and
seeds torch itself where it draws noise, so the same seed and thread count give byte-identical weights. The
stages that draw training images take the world module as ``w``: :mod:`debias.mini.world` (the default) or
:mod:`debias.mini.world2`, which share the sampling interface (``sample_batch``, ``sample_caption``,
``render_sample``, ``PROFESSIONS``).
"""

from __future__ import annotations

import numpy as np

from . import world
from .tokenizer import MAX_LENGTH, CaptionIds


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, mininterval=15, miniters=1, dynamic_ncols=False, ncols=100)


def _lr_schedule(opt, steps: int, warmup_frac: float):
    """Linear warm-up then cosine decay to 5% (plain LambdaLR: works for any step count)."""
    import math

    import torch

    warmup = max(1, int(steps * warmup_frac))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _to_tensor(images: np.ndarray):
    import torch

    return torch.from_numpy(images).float().permute(0, 3, 1, 2) / 127.5 - 1


# -------------------------------------------------------------------------------------- CLIP
def clip_config(tokenizer):
    from transformers import CLIPConfig

    text = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                num_attention_heads=4, max_position_embeddings=MAX_LENGTH, projection_dim=64,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                  image_size=world.SIZE, patch_size=4, projection_dim=64)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)


def train_clip(tokenizer, steps: int, batch: int, rng: np.random.Generator, lr: float = 2e-3, w=world, init=None,
               device: str = "cpu"):
    """Contrastive training; images with identical captions count as positives of each other.

    ``init`` (a trained CLIPModel with the same tokenizer) is fine-tuned rather than a new one trained, so the
    text space a UNet was trained on moves little when the renders change. Trains on ``device`` and returns the
    model on the CPU, where the rest of the build uses it.
    """
    import torch
    from transformers import CLIPModel

    model = (CLIPModel(clip_config(tokenizer)) if init is None else init.train()).to(device)
    ids_of = CaptionIds(tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = _lr_schedule(opt, steps, 0.1)
    bar = _progress(steps, "clip")
    for _ in range(steps):
        images, samples = w.sample_batch(batch, rng)
        captions = [s.caption for s in samples]
        same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32).to(device)
        pixels = _to_tensor(images).to(device)
        logits = model(input_ids=ids_of(captions).to(device), pixel_values=pixels).logits_per_image
        target = same / same.sum(1, keepdim=True)
        loss = -(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.T.log_softmax(1)).sum(1).mean()
        opt.zero_grad()
        (loss / 2).backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item() / 2:.3f}")
        bar.update()
    bar.close()
    return model.to("cpu").eval()


def clip_zero_shot(model, classifier, tokenizer, rng: np.random.Generator, n: int = 512, w=world) -> dict:
    """Zero-shot gender and profession accuracy on fresh renders (held-out templates included).

    Gender is read by ``classifier``, the package's zero-shot classifier loaded from the saved CLIP folder, so the
    figure is the one audits get (in mini world v2 also skin and age, with the built-in attributes' label
    prompts); the profession is read by the CLIP ``model`` itself over "a photo of <profession>" prompts (a check
    of what it learned; no audit reads professions).
    """
    import torch

    samples = [w.sample_caption(rng) for _ in range(4 * n)]
    people = [s for s in samples if s.subject in world.BACKGROUND][:n]
    images = np.stack([w.render_sample(s, rng) for s in people])
    labels, _ = classifier.classify(images)
    gender_acc = float(np.mean([label == s.gender for label, s in zip(labels, people)]))
    out = {"clip_gender_accuracy": gender_acc}
    for name, attribute in getattr(w, "ATTRIBUTES", {}).items():
        if name != "gender":
            read, _ = classifier.for_attribute(attribute).classify(images)
            out[f"clip_{name}_accuracy"] = float(np.mean([r == getattr(s.person, name) for r, s in zip(read, people)]))
    prompts = [world.TUNING_TEMPLATE.format(prof.phrase) for prof in w.PROFESSIONS]
    ids = CaptionIds(tokenizer)(prompts)
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=_to_tensor(images)).logits_per_image
    names = [prof.name for prof in w.PROFESSIONS]
    prof_acc = float(np.mean([names[i] == s.subject for i, s in zip(logits.argmax(1).tolist(), people)]))
    return {**out, "clip_profession_accuracy": prof_acc, "clip_eval_n": len(people)}


# --------------------------------------------------------------------------------------- VAE
def train_vae(steps: int, batch: int, rng: np.random.Generator, lr: float = 1e-3, kl_weight: float = 1e-6, w=world,
              init=None, device: str = "cpu", decoder_only: bool = False, head_weight: float = 1.0):
    """Reconstruction + tiny KL; ``init`` (a trained VAE of the same shape) makes it a fine-tune. Trains on
    ``device``, returns the VAE on the CPU.

    ``decoder_only`` freezes the encoder: the latents stay exactly what they were, so a UNet trained on them
    stays valid while the decoder learns to draw them better. ``head_weight`` ≠ 1 weights the reconstruction
    error on the pixels of each head (see :func:`head_loss_maps`), where a grey hair cap of six pixels
    decides a person's age.
    """
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=32, sample_size=world.SIZE)
    if init is not None:
        vae.load_state_dict(init.state_dict())
    vae.to(device)
    if decoder_only:  # the KL term then has no gradient left: it only measures the frozen encoder
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    sched = _lr_schedule(opt, steps, 0.05)
    bar = _progress(steps, "vae")
    for _ in range(steps):
        images, _ = w.sample_batch(batch, rng)
        x = _to_tensor(images).to(device)
        post = vae.encode(x).latent_dist
        recon = vae.decode(post.sample()).sample
        if head_weight == 1.0:
            mse = torch.nn.functional.mse_loss(recon, x)
        else:
            mse = (mean_one(head_loss_maps(images, w, head_weight, cell=1)).to(device) * (recon - x) ** 2).mean()
        loss = mse + kl_weight * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(mse=f"{mse.item():.4f}")
        bar.update()
    bar.close()
    return vae.to("cpu").eval()


def encode_dataset(vae, n: int, rng: np.random.Generator, batch: int = 256, w=world, device: str = "cpu",
                   head_weight: float = 1.0):
    """Render n training samples once and keep their latent mean/std (on the CPU) and captions.

    With ``head_weight`` ≠ 1 it also keeps each sample's loss map (see :func:`head_loss_maps`), else None.
    """
    import torch

    means, stds, captions, psnrs, maps = [], [], [], [], []
    vae.to(device)
    with torch.no_grad():
        for start in range(0, n, batch):
            images, samples = w.sample_batch(min(batch, n - start), rng)
            x = _to_tensor(images).to(device)
            dist = vae.encode(x).latent_dist
            means.append(dist.mean.cpu())
            stds.append(dist.std.cpu())
            captions += [s.caption for s in samples]
            if head_weight != 1.0:
                maps.append(head_loss_maps(images, w, head_weight))
            if start < 1024:
                recon = vae.decode(dist.mean).sample.clamp(-1, 1)
                mse = ((recon - x) ** 2).mean(dim=(1, 2, 3)) / 4  # range 2 → 1
                psnrs.append(-10 * torch.log10(mse).cpu())
    vae.to("cpu")
    return torch.cat(means), torch.cat(stds), captions, float(torch.cat(psnrs).mean()), \
        (torch.cat(maps) if maps else None)


def head_loss_maps(images: np.ndarray, w, weight: float, cell: int = 2):
    """Per render, a map of loss weights: ``weight`` on the cells over the head, 1 elsewhere. A cell is
    ``cell`` × ``cell`` pixels: 2 for the latent (the image halved), 1 for the image itself.

    Why: in mini world v2 skin tone and age are the face's and the hair's colour, 6 to 30 of 1,024 pixels, so
    in a plain ε-loss they weigh almost nothing next to the background and clothes, and the UNet learned them
    last and loosely (faces between two tones, age shares flattened towards a third). Weighting those cells
    (the latent is the image halved) makes their error count. Renders without a found head keep all ones.
    """
    import torch

    side = world.SIZE // cell
    maps = torch.ones(len(images), side, side)
    for i, img in enumerate(images):
        box = w.head_box(img)
        if box is not None:
            top, bottom, left, right = (min(side - 1, max(0, v // cell)) for v in box)
            maps[i, top:bottom + 1, left:right + 1] = weight
    return maps


def mean_one(maps):
    """Loss maps scaled to mean 1 each, with a channel axis: weighting moves the error, not the loss's size."""
    return (maps / maps.mean(dim=(1, 2), keepdim=True))[:, None]


# -------------------------------------------------------------------------------------- UNet
def round_trip_oracle(vae, rng: np.random.Generator, n: int = 512, w=world) -> dict:
    """How often the world's oracle still reads each attribute after a VAE round trip (the ceiling a generated
    image can reach): renders of people, encoded to the latent mean and decoded."""
    import torch

    samples = [s for s in (w.sample_caption(rng) for _ in range(3 * n)) if s.gender is not None][:n]
    images = np.stack([w.render_sample(s, rng) for s in samples])
    with torch.no_grad():
        recon = vae.decode(vae.encode(_to_tensor(images)).latent_dist.mean).sample.clamp(-1, 1)
    recon = ((recon.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)
    read = w.oracle(recon)
    return {f"vae_round_trip_{name}": float(np.mean([r[name] == getattr(s.person, name)
                                                     for r, s in zip(read, samples)]))
            for name in w.ATTRIBUTES}


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=world.SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=16)


def noise_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False,
                         steps_offset=1)


def train_unet(text_encoder, ids_of: CaptionIds, means, stds, captions, scaling: float, steps: int,
               batch: int, rng: np.random.Generator, lr: float = 1e-3, ema_decay: float = 0.999,
               dropout: float = 0.1, snr_gamma: float = 5.0, init=None, device: str = "cpu", loss_maps=None):
    """Epsilon DDPM loss on pre-encoded latents, frozen text encoder, EMA weights returned (on the CPU).

    The loss is Min-SNR-γ weighted (Hang et al., 2023): each timestep's ε-loss is scaled by
    min(SNR, γ)/SNR, so the nearly-clean steps, whose error is pixel noise, stop dominating and the
    noisy steps that decide the picture's layout (which gender cue, which background) learn faster.

    ``loss_maps`` (one latent-sized map per sample, from :func:`head_loss_maps`) weight the ε-error per latent
    cell, each map scaled to mean 1 so the loss keeps its size.

    On another ``device`` the noise and timesteps are still drawn on the CPU from the same generator, so a GPU
    run sees the same draws as a CPU run (its weights differ only by the device's arithmetic).
    """
    import copy

    import torch

    unet = build_unet()
    if init is not None:  # fine-tune: start from a trained UNet of the same shape (e.g. the first world's)
        unet.load_state_dict(init.state_dict())
    unet.to(device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    text_encoder = text_encoder.to(device)
    means, stds = means.to(device), stds.to(device)
    if loss_maps is not None:
        loss_maps = mean_one(loss_maps).to(device)
    sched = noise_scheduler()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    lr_sched = _lr_schedule(opt, steps, 0.05)
    text_cache: dict[str, torch.Tensor] = {}

    def embed(caps):
        missing = sorted({c for c in caps if c not in text_cache})
        if missing:
            with torch.no_grad():
                hidden = text_encoder(ids_of(missing).to(device))[0]
            text_cache.update(zip(missing, hidden))
        return torch.stack([text_cache[c] for c in caps])

    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    alphas = sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    weight = (snr.clamp(max=snr_gamma) / snr).to(device)
    bar = _progress(steps, "unet")
    losses = []
    for step in range(steps):
        idx = rng.integers(0, len(captions), batch)
        caps = ["" if rng.random() < dropout else captions[i] for i in idx]
        idx_t = torch.from_numpy(idx).to(device)
        z = (means[idx_t] + stds[idx_t] * torch.randn(means[idx_t].shape, generator=gen).to(device)) * scaling
        noise = torch.randn(z.shape, generator=gen).to(device)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen).to(device)
        pred = unet(sched.add_noise(z, noise, t), t, encoder_hidden_states=embed(caps)).sample
        error = (pred - noise) ** 2 if loss_maps is None else loss_maps[idx_t] * (pred - noise) ** 2
        loss = (weight[t] * error.mean(dim=(1, 2, 3))).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
        bar.update()
    bar.close()
    text_encoder.to("cpu")
    return ema.to("cpu").eval(), float(np.mean(losses[-200:])) if losses else float("nan")
