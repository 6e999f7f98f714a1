"""Rebuild the mini model from a seed: tokenizer → tiny CLIP → VAE → UNet → pipeline folder.

``python -m debias.mini.train --out DIR --seed 0`` writes ``DIR/pipeline`` (a standard diffusers
``StableDiffusionPipeline`` folder), ``DIR/classifier`` (a transformers ``CLIPModel`` folder) and
``DIR/world.json``, and prints what it measured. ``--smoke`` runs every stage for a few steps.
Run it with one torch thread per core you give it: two threads on a shared core stall badly.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from ..io import atomic_write_json, atomic_write_text
from . import SAMPLER, world

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 16


# --------------------------------------------------------------------------------- tokenizer
def bpe_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges (CLIP's "</w>" word end) until every word is one symbol, deterministically.

    Plain BPE: repeatedly merge the most frequent adjacent pair, ties broken by the pair's text
    (the ``tokenizers`` trainer breaks ties in hash order, so its ids change from run to run).
    """
    from collections import Counter

    pieces = [list(w[:-1]) + [w[-1] + "</w>"] for w in words]
    merges: list[tuple[str, str]] = []
    while any(len(p) > 1 for p in pieces):
        counts = Counter(pair for p in pieces for pair in zip(p, p[1:]))
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for k, p in enumerate(pieces):
            out, i = [], 0
            while i < len(p):
                if i + 1 < len(p) and (p[i], p[i + 1]) == best:
                    out.append(p[i] + p[i + 1])
                    i += 2
                else:
                    out.append(p[i])
                    i += 1
            pieces[k] = out
    return merges


def build_tokenizer(folder: Path):
    """A BPE tokenizer in which every mini-world word is exactly one token, as a CLIPTokenizer.

    The merges come from :func:`bpe_merges`; vocab.json and merges.txt are written by hand because
    newer transformers saves only tokenizer.json, and classic CLIP loaders expect the two files.
    """
    from transformers import CLIPTokenizer

    words = world.vocabulary()
    pairs = bpe_merges(words)
    merges = [f"{a} {b}" for a, b in pairs]
    letters = "abcdefghijklmnopqrstuvwxyz"
    alphabet = list(letters) + [c + "</w>" for c in letters]
    products = [a + b for a, b in pairs]
    vocab = {tok: i for i, tok in enumerate([BOS, EOS] + alphabet + [p for p in products if p not in alphabet])}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    atomic_write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    clip_tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges],
                             model_max_length=MAX_LENGTH, pad_token=EOS, unk_token=EOS,
                             bos_token=BOS, eos_token=EOS)
    save_tokenizer(clip_tok, folder)
    clip_tok = CLIPTokenizer.from_pretrained(folder)
    for w in words:
        ids = clip_tok(w, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"tokenizer splits {w!r} into {ids}")
    return clip_tok


def save_tokenizer(tok, folder: Path) -> None:
    """save_pretrained plus the classic vocab.json / merges.txt next to tokenizer.json."""
    folder = Path(folder)
    vocab = (folder / "vocab.json").read_text() if (folder / "vocab.json").exists() else None
    merges = (folder / "merges.txt").read_text() if (folder / "merges.txt").exists() else None
    tok.save_pretrained(folder)
    if vocab is not None and not (folder / "vocab.json").exists():
        atomic_write_text(folder / "vocab.json", vocab)
    if merges is not None and not (folder / "merges.txt").exists():
        atomic_write_text(folder / "merges.txt", merges)


def copy_tokenizer_files(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        shutil.copy2(f, dst / f.name)


class CaptionIds:
    """Caches token ids per caption (the world has only a few hundred distinct captions)."""

    def __init__(self, tokenizer):
        self.tok, self.cache = tokenizer, {}

    def __call__(self, captions):
        import torch

        missing = sorted({c for c in captions if c not in self.cache})
        if missing:
            ids = self.tok(missing, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                           return_tensors="pt").input_ids
            self.cache.update(zip(missing, ids))
        return torch.stack([self.cache[c] for c in captions])


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


def train_clip(tokenizer, steps: int, batch: int, rng: np.random.Generator, lr: float = 2e-3):
    """Contrastive training; images with identical captions count as positives of each other."""
    import torch
    from transformers import CLIPModel

    model = CLIPModel(clip_config(tokenizer))
    ids_of = CaptionIds(tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = _lr_schedule(opt, steps, 0.1)
    bar = _progress(steps, "clip")
    for _ in range(steps):
        images, samples = world.sample_batch(batch, rng)
        captions = [s.caption for s in samples]
        same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
        logits = model(input_ids=ids_of(captions), pixel_values=_to_tensor(images)).logits_per_image
        target = same / same.sum(1, keepdim=True)
        loss = -(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.T.log_softmax(1)).sum(1).mean()
        opt.zero_grad()
        (loss / 2).backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item() / 2:.3f}")
        bar.update()
    bar.close()
    return model.eval()


def clip_zero_shot(model, tokenizer, rng: np.random.Generator, n: int = 512) -> dict:
    """Zero-shot gender and profession accuracy on fresh renders (held-out templates included)."""
    from .evaluate import clip_gender

    samples = [world.sample_caption(rng) for _ in range(4 * n)]
    people = [s for s in samples if s.subject in world.BACKGROUND][:n]
    images = np.stack([world.render(s.subject, s.gender, rng, s.template) for s in people])
    p = clip_gender(model, tokenizer, images)
    gender_acc = float(np.mean([(pi > 0.5) == (s.gender == "female") for pi, s in zip(p, people)]))
    import torch

    labels = [world.TUNING_TEMPLATE.format(prof.phrase) for prof in world.PROFESSIONS]
    ids = CaptionIds(tokenizer)(labels)
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=_to_tensor(images)).logits_per_image
    names = [prof.name for prof in world.PROFESSIONS]
    prof_acc = float(np.mean([names[i] == s.subject for i, s in zip(logits.argmax(1).tolist(), people)]))
    return {"clip_gender_accuracy": gender_acc, "clip_profession_accuracy": prof_acc, "clip_eval_n": len(people)}


# --------------------------------------------------------------------------------------- VAE
def train_vae(steps: int, batch: int, rng: np.random.Generator, lr: float = 1e-3, kl_weight: float = 1e-6):
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=32, sample_size=world.SIZE)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = _lr_schedule(opt, steps, 0.05)
    bar = _progress(steps, "vae")
    for _ in range(steps):
        images, _ = world.sample_batch(batch, rng)
        x = _to_tensor(images)
        post = vae.encode(x).latent_dist
        recon = vae.decode(post.sample()).sample
        mse = torch.nn.functional.mse_loss(recon, x)
        loss = mse + kl_weight * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(mse=f"{mse.item():.4f}")
        bar.update()
    bar.close()
    return vae.eval()


def encode_dataset(vae, n: int, rng: np.random.Generator, batch: int = 256):
    """Render n training samples once and keep their latent mean/std and captions."""
    import torch

    means, stds, captions, psnrs = [], [], [], []
    with torch.no_grad():
        for start in range(0, n, batch):
            images, samples = world.sample_batch(min(batch, n - start), rng)
            x = _to_tensor(images)
            dist = vae.encode(x).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
            captions += [s.caption for s in samples]
            if start < 1024:
                recon = vae.decode(dist.mean).sample.clamp(-1, 1)
                mse = ((recon - x) ** 2).mean(dim=(1, 2, 3)) / 4  # range 2 → 1
                psnrs.append(-10 * torch.log10(mse))
    return torch.cat(means), torch.cat(stds), captions, float(torch.cat(psnrs).mean())


# -------------------------------------------------------------------------------------- UNet
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
               dropout: float = 0.1, snr_gamma: float = 5.0):
    """Epsilon DDPM loss on pre-encoded latents, frozen text encoder, EMA weights returned.

    The loss is Min-SNR-γ weighted (Hang et al., 2023): each timestep's ε-loss is scaled by
    min(SNR, γ)/SNR, so the nearly-clean steps, whose error is pixel noise, stop dominating and the
    noisy steps that decide the picture's layout (which gender cue, which background) learn faster.
    """
    import copy

    import torch

    unet = build_unet()
    ema = copy.deepcopy(unet).requires_grad_(False)
    sched = noise_scheduler()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    lr_sched = _lr_schedule(opt, steps, 0.05)
    text_cache: dict[str, torch.Tensor] = {}

    def embed(caps):
        missing = sorted({c for c in caps if c not in text_cache})
        if missing:
            with torch.no_grad():
                hidden = text_encoder(ids_of(missing))[0]
            text_cache.update(zip(missing, hidden))
        return torch.stack([text_cache[c] for c in caps])

    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    alphas = sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    weight = snr.clamp(max=snr_gamma) / snr
    bar = _progress(steps, "unet")
    losses = []
    for step in range(steps):
        idx = rng.integers(0, len(captions), batch)
        caps = ["" if rng.random() < dropout else captions[i] for i in idx]
        idx_t = torch.from_numpy(idx)
        z = (means[idx_t] + stds[idx_t] * torch.randn(means[idx_t].shape, generator=gen)) * scaling
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen)
        pred = unet(sched.add_noise(z, noise, t), t, encoder_hidden_states=embed(caps)).sample
        loss = (weight[t] * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
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
    return ema.eval(), float(np.mean(losses[-200:])) if losses else float("nan")


# ------------------------------------------------------------------------------------- save
def assemble_pipeline(vae, text_encoder, tokenizer, unet):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    scheduler = DPMSolverMultistepScheduler.from_config(noise_scheduler().config)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def text_encoder_from_clip(model):
    from transformers import CLIPTextModel

    te = CLIPTextModel(model.config.text_config)
    te.load_state_dict(model.text_model.state_dict())
    return te.eval().requires_grad_(False)


def world_json(seed: int, measurements: dict, settings: dict) -> dict:
    return {
        "name": "debias mini world",
        "image_size": world.SIZE,
        "professions": [{"name": p.name, "article": p.article, "phrase": p.phrase,
                         "planted_share": p.planted_share} for p in world.PROFESSIONS],
        "tuning_template": world.TUNING_TEMPLATE,
        "augmentations": list(world.AUGMENTATIONS),
        "test_templates": list(world.TEST_TEMPLATES),
        "object_prompts": list(world.OBJECT_PROMPTS),
        "classifier_labels": {g: [world.TUNING_TEMPLATE.format("a " + w)] for g, w in world.PERSON_WORDS.items()},
        "caption_mix": world.CAPTION_MIX,
        "sampler": dict(SAMPLER),
        "training": {"seed": seed, **settings},
        "measurements": measurements,
    }


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def save_all(out: Path, pipe, clip_model, tokenizer, tok_dir: Path, info: dict) -> None:
    from transformers import CLIPImageProcessor

    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out / "pipeline", safe_serialization=True)
    copy_tokenizer_files(tok_dir, out / "pipeline" / "tokenizer")
    clip_model.save_pretrained(out / "classifier", safe_serialization=True)
    copy_tokenizer_files(tok_dir, out / "classifier")
    CLIPImageProcessor(do_resize=True, size={"shortest_edge": world.SIZE}, do_center_crop=True,
                       crop_size={"height": world.SIZE, "width": world.SIZE}, do_rescale=True,
                       rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5] * 3,
                       image_std=[0.5] * 3).save_pretrained(out / "classifier")
    atomic_write_json(out / "world.json", info)


def export_weights(src: Path, dst: Path) -> int:
    """Copy a trained folder for shipping: UNet and VAE weights in float16, the rest as trained.

    float16 halves the two big parts at no visible cost; the text encoder and the classifier stay
    float32 because transformers would otherwise load them as float16 by default, which a plain
    ``from_pretrained(folder)`` on CPU must not get. Returns the size in bytes.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    src, dst = Path(src), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    for sub, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
        model = cls.from_pretrained(src / "pipeline" / sub, torch_dtype=torch.float32)
        shutil.rmtree(dst / "pipeline" / sub)
        model.to(torch.float16).save_pretrained(dst / "pipeline" / sub, safe_serialization=True)
    info = json.loads((src / "world.json").read_text())
    info["measurements"]["size_bytes"] = folder_size(dst)
    info["storage"] = {"unet": "float16", "vae": "float16", "text_encoder": "float32", "classifier": "float32"}
    atomic_write_json(dst / "world.json", info)
    return folder_size(dst)


# -------------------------------------------------------------------------------------- main
STEPS = {"full": dict(clip_steps=800, clip_batch=256, vae_steps=600, vae_batch=32, latents=32768,
                      unet_steps=3800, unet_batch=32, eval_n=64),
         "smoke": dict(clip_steps=3, clip_batch=16, vae_steps=3, vae_batch=8, latents=64,
                       unet_steps=3, unet_batch=8, eval_n=4)}


def main(argv: list[str] | None = None) -> dict:
    import tempfile

    import torch

    from ..threads import set_threads
    from .evaluate import format_table, measure_professions

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder (pipeline/, classifier/, world.json)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="every stage for a few steps (seconds)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--export-from", default=None, metavar="DIR",
                    help="no training: copy the trained folder DIR to --out for shipping (UNet/VAE in float16)")
    for key, value in STEPS["full"].items():
        ap.add_argument("--" + key.replace("_", "-"), type=int, default=None, help=f"default {value}")
    args = ap.parse_args(argv)
    threads = set_threads(args.threads)
    if args.export_from:
        size = export_weights(Path(args.export_from), Path(args.out))
        print(f"exported {args.export_from} -> {args.out} ({size / 1e6:.1f} MB)")
        return json.loads((Path(args.out) / "world.json").read_text())
    settings = dict(STEPS["smoke" if args.smoke else "full"])
    for key in settings:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    out = Path(args.out)
    torch.manual_seed(args.seed)
    rngs = [np.random.default_rng([args.seed, k]) for k in range(6)]
    times, m = {}, {}
    print(f"mini model: seed {args.seed}, {threads} thread(s), settings {settings}", flush=True)

    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = Path(tmp) / "tokenizer"
        tokenizer = build_tokenizer(tok_dir)
        times["tokenizer_s"] = time.perf_counter() - t

        t = time.perf_counter()
        torch.manual_seed(args.seed)
        clip_model = train_clip(tokenizer, settings["clip_steps"], settings["clip_batch"], rngs[0])
        times["clip_s"] = time.perf_counter() - t
        m.update(clip_zero_shot(clip_model, tokenizer, rngs[1], n=64 if args.smoke else 512))
        print(f"clip: zero-shot gender {m['clip_gender_accuracy']:.3f}, profession "
              f"{m['clip_profession_accuracy']:.3f} on {m['clip_eval_n']} held-out renders "
              f"({times['clip_s']:.0f}s)", flush=True)

        t = time.perf_counter()
        torch.manual_seed(args.seed + 1)
        vae = train_vae(settings["vae_steps"], settings["vae_batch"], rngs[2])
        means, stds, captions, psnr = encode_dataset(vae, settings["latents"], rngs[3])
        scaling = float(1.0 / (means + stds * torch.randn_like(means)).std())
        vae.register_to_config(scaling_factor=scaling)
        times["vae_s"] = time.perf_counter() - t
        m["vae_psnr_db"], m["vae_scaling_factor"] = psnr, scaling
        print(f"vae: PSNR {psnr:.1f} dB, scaling_factor {scaling:.3f} ({times['vae_s']:.0f}s)", flush=True)

        t = time.perf_counter()
        torch.manual_seed(args.seed + 2)
        text_encoder = text_encoder_from_clip(clip_model)
        unet, loss = train_unet(text_encoder, CaptionIds(tokenizer), means, stds, captions, scaling,
                                settings["unet_steps"], settings["unet_batch"], rngs[4])
        times["unet_s"] = time.perf_counter() - t
        m["unet_loss"] = loss
        m["unet_params"] = sum(p.numel() for p in unet.parameters())
        print(f"unet: loss {loss:.4f}, {m['unet_params']} params ({times['unet_s']:.0f}s)", flush=True)

        pipe = assemble_pipeline(vae, text_encoder, tokenizer, unet)
        t = time.perf_counter()
        rows, ips = measure_professions(pipe, clip_model, tokenizer, n=settings["eval_n"], seed=args.seed,
                                        steps=SAMPLER["steps"], guidance=SAMPLER["guidance"])
        times["eval_s"] = time.perf_counter() - t
        m["shares"], m["images_per_s_one_thread"] = rows, ips
        print(format_table(rows, ips), flush=True)
        m["times_s"] = {k: round(v, 1) for k, v in times.items()}
        save_all(out, pipe, clip_model, tokenizer, tok_dir, world_json(args.seed, m, settings))
    m["size_bytes"] = folder_size(out)
    info = world_json(args.seed, m, settings)
    atomic_write_json(out / "world.json", info)
    print(f"wrote {out} ({m['size_bytes'] / 1e6:.1f} MB); times {m['times_s']}", flush=True)
    return info


if __name__ == "__main__":
    main()
