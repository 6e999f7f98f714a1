"""Rebuild the mini model from a seed: tokenizer → tiny CLIP → VAE → UNet → pipeline folder.

``python -m debias.mini.train --out DIR --seed 0`` writes ``DIR/pipeline`` (a standard diffusers
``StableDiffusionPipeline`` folder), ``DIR/classifier`` (a transformers ``CLIPModel`` folder) and
``DIR/world.json``, and prints what it measured. ``--smoke`` runs every stage for a few steps.
Run it with one torch thread per core you give it: two threads on a shared core stall badly. ``--device cuda``
trains on a GPU, where batches far larger than the CPU's 32 are cheap.

The tokenizer is :mod:`debias.mini.tokenizer`, the networks and their training loops :mod:`debias.mini.stages`;
this module runs them in order, measures, and writes (or exports) the folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from ..core.io import atomic_write_json
from ..core.threads import set_threads
from . import SAMPLER, world, world2
from .stages import (
    clip_zero_shot,
    encode_dataset,
    noise_scheduler,
    round_trip_oracle,
    train_clip,
    train_unet,
    train_vae,
)
from .tokenizer import CaptionIds, build_tokenizer, copy_tokenizer_files


# ------------------------------------------------------------------------------------- save
def assemble_pipeline(vae, text_encoder, tokenizer, unet):
    """A standard ``StableDiffusionPipeline`` of the trained parts with the default sampler (no safety checker)."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    scheduler = DPMSolverMultistepScheduler.from_config(noise_scheduler().config)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def text_encoder_from_clip(model):
    """The CLIP's text tower as the pipeline's frozen text encoder: the classifier and the generator read prompts alike."""
    from transformers import CLIPTextModel

    te = CLIPTextModel(model.config.text_config)
    te.load_state_dict(model.text_model.state_dict())
    return te.eval().requires_grad_(False)


WORLDS = {"v1": world, "v2": world2}


def _profession_json(p) -> dict:
    if hasattr(p, "planted_share"):
        return {"name": p.name, "article": p.article, "phrase": p.phrase, "planted_share": p.planted_share}
    return {"name": p.name, "article": p.article, "phrase": p.phrase, "planted_share": p.female,
            "planted": {name: list(p.planted(name)) for name in world2.ATTRIBUTES},
            "female_by_age": list(p.female_by_age) if p.female_by_age else None}


def world_json(seed: int, measurements: dict, settings: dict, w=world) -> dict:
    return {
        "name": "debias mini world" if w is world else "debias mini world v2 (gender, skin tone, age)",
        "image_size": world.SIZE,
        "professions": [_profession_json(p) for p in w.PROFESSIONS],
        "tuning_template": world.TUNING_TEMPLATE,
        "augmentations": list(world.AUGMENTATIONS),
        "test_templates": list(world.TEST_TEMPLATES),
        "object_prompts": list(world.OBJECT_PROMPTS),
        "classifier_labels": {g: [world.TUNING_TEMPLATE.format("a " + w)] for g, w in world.PERSON_WORDS.items()},
        "caption_mix": w.CAPTION_MIX,
        "sampler": dict(SAMPLER),
        "training": {"seed": seed, **settings},
        "measurements": measurements,
    }


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def save_classifier(folder: Path, clip_model, tok_dir: Path) -> None:
    """The CLIP as a transformers folder (model, tokenizer, 32×32 image processor): what ``--classifier`` loads."""
    from transformers import CLIPImageProcessor

    clip_model.save_pretrained(folder, safe_serialization=True)
    copy_tokenizer_files(tok_dir, folder)
    CLIPImageProcessor(do_resize=True, size={"shortest_edge": world.SIZE}, do_center_crop=True,
                       crop_size={"height": world.SIZE, "width": world.SIZE}, do_rescale=True,
                       rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5] * 3,
                       image_std=[0.5] * 3).save_pretrained(folder)


def save_all(out: Path, pipe, clip_model, tok_dir: Path, info: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out / "pipeline", safe_serialization=True)
    copy_tokenizer_files(tok_dir, out / "pipeline" / "tokenizer")
    save_classifier(out / "classifier", clip_model, tok_dir)
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder (pipeline/, classifier/, world.json)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="every stage for a few steps (seconds)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu",
                    help="where CLIP, the VAE and the UNet train and the training set is encoded (cpu, cuda, "
                         "cuda:1, …); rendering and the evaluation stay on the CPU. A GPU makes large batches "
                         "cheap (--unet-batch 1024)")
    ap.add_argument("--head-weight", type=float, default=1.0,
                    help="world v2: weight of the UNet's loss on the latent cells over each head (hair and face, "
                         "where skin tone and age are drawn), and of the VAE's on its pixels when --vae-steps trains "
                         "it; 1 is the plain loss. The shipped mini-v2 used 5")
    ap.add_argument("--world", choices=sorted(WORLDS), default="v1",
                    help="v1: gender only (the shipped mini model); v2: gender, skin tone and age (mini-v2)")
    ap.add_argument("--init-from", default=None, metavar="DIR",
                    help="a trained mini-model folder to fine-tune from: its VAE and UNet are the starting points "
                         "(with --vae-steps 0 its VAE is used as it is, with --clip-steps 0 its tokenizer and CLIP)")
    ap.add_argument("--fine-tune-clip", action="store_true",
                    help="with --init-from: train its tokenizer's CLIP further for --clip-steps instead of a new one "
                         "(for renders that changed while the words did not)")
    ap.add_argument("--fine-tune-decoder", action="store_true",
                    help="with --init-from and --vae-steps N: train only its VAE's decoder (with --head-weight, "
                         "weighted on the heads' pixels). The encoder, the latents and the UNet trained on them "
                         "stay valid; the decoder draws a few-pixel cue (grey hair) more faithfully")
    ap.add_argument("--export-from", default=None, metavar="DIR",
                    help="no training: copy the trained folder DIR to --out for shipping (UNet/VAE in float16)")
    for key, value in STEPS["full"].items():
        ap.add_argument("--" + key.replace("_", "-"), type=int, default=None, help=f"default {value}")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Train (or, with ``--export-from``, export) a mini model folder; returns its ``world.json``."""
    args = parse_args(argv)
    if args.fine_tune_clip and not args.init_from:
        raise SystemExit("--fine-tune-clip needs --init-from DIR: the folder whose CLIP is trained further")
    if args.fine_tune_decoder and not (args.init_from and args.vae_steps):
        raise SystemExit("--fine-tune-decoder needs --init-from DIR and --vae-steps N: the folder whose VAE "
                         "decoder is trained further, and for how many steps")
    check_device(args.device)
    if args.head_weight != 1.0 and (args.head_weight <= 0 or not hasattr(WORLDS[args.world], "head_box")):
        raise SystemExit(f"--head-weight {args.head_weight}: it weights the loss over heads in world v2 (add "
                         "--world v2) and must be above 0; 1 is the plain loss")
    threads = set_threads(args.threads)
    if args.export_from:
        size = export_weights(Path(args.export_from), Path(args.out))
        print(f"exported {args.export_from} -> {args.out} ({size / 1e6:.1f} MB)")
        return json.loads((Path(args.out) / "world.json").read_text())
    settings = dict(STEPS["smoke" if args.smoke else "full"])
    for key in settings:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    settings["device"] = args.device
    if args.head_weight != 1.0:
        settings["head_weight"] = args.head_weight
    print(f"mini model: seed {args.seed}, {threads} thread(s), settings {settings}", flush=True)
    if args.init_from:
        settings["init_from"] = str(args.init_from)
        settings["fine_tune_clip"] = args.fine_tune_clip
        if args.fine_tune_decoder:
            settings["fine_tune_decoder"] = True
    return build(Path(args.out), args.seed, settings, smoke=args.smoke, w=WORLDS[args.world])


def check_device(device: str) -> None:
    """Refuse a device torch cannot use before anything is trained, saying what to use instead."""
    import torch

    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as err:  # a bad name, or CUDA/MPS absent from this machine or build
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SystemExit(f"--device {device}: torch cannot use it here ({first}). Train on the CPU with "
                         "--device cpu (the default), or on a machine whose torch sees that device "
                         "(python -c 'import torch; print(torch.cuda.is_available())').") from None


def build(out: Path, seed: int, settings: dict, *, smoke: bool = False, w=world) -> dict:
    """Every stage in order, each seeded on its own (so a change to one leaves the others' draws alone).

    torch is reseeded before each network and every stage has its own numpy rng; the evaluation runs on the
    finished pipeline with the classifier read back from its saved folder, as an audit would load it.
    """
    import tempfile

    import torch

    # deferred: evaluation loads diffusers and the classifier stack, heavy and needed only once training is done
    from .evaluate import (format_attributes, format_table, load_mini_classifier, measure_attributes,
                           measure_professions)

    torch.manual_seed(seed)
    rngs = [np.random.default_rng([seed, k]) for k in range(6)]
    times, m = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = Path(tmp) / "tokenizer"
        t = time.perf_counter()
        if settings.get("init_from") and (settings["clip_steps"] == 0 or settings.get("fine_tune_clip")):
            tokenizer, clip_model = _trained_clip(Path(settings["init_from"]), tok_dir)  # keep its text space
            if settings["clip_steps"]:
                clip_model = train_clip(tokenizer, settings["clip_steps"], settings["clip_batch"], rngs[0], w=w,
                                        init=clip_model, lr=FINE_TUNE_LR["clip"], device=_device(settings))
        else:
            tokenizer = build_tokenizer(tok_dir, w.vocabulary())
            torch.manual_seed(seed)
            clip_model = train_clip(tokenizer, settings["clip_steps"], settings["clip_batch"], rngs[0], w=w,
                                    device=_device(settings))
        times["clip_s"] = time.perf_counter() - t
        save_classifier(Path(tmp) / "classifier", clip_model, tok_dir)  # read back as audits load it
        classifier = load_mini_classifier(Path(tmp) / "classifier")
        m.update(clip_zero_shot(clip_model, classifier, tokenizer, rngs[1], n=64 if smoke else 512, w=w))
        accuracies = ", ".join(f"{k[5:-9]} {v:.3f}" for k, v in m.items() if k.endswith("_accuracy"))
        print(f"clip: zero-shot {accuracies} on {m['clip_eval_n']} held-out renders ({times['clip_s']:.0f}s)",
              flush=True)

        t = time.perf_counter()
        torch.manual_seed(seed + 1)
        vae, means, stds, captions, loss_maps = vae_stage(settings, rngs[2], rngs[3], m, w)
        times["vae_s"] = time.perf_counter() - t
        trip = "".join(f", round trip {k[15:]} {v:.3f}" for k, v in m.items() if k.startswith("vae_round_trip_"))
        print(f"vae: PSNR {m['vae_psnr_db']:.1f} dB, scaling_factor {m['vae_scaling_factor']:.3f}{trip} "
              f"({times['vae_s']:.0f}s)", flush=True)

        t = time.perf_counter()
        torch.manual_seed(seed + 2)
        text_encoder = text_encoder_from_clip(clip_model)
        init = _trained_part(settings, "unet")
        unet, m["unet_loss"] = train_unet(text_encoder, CaptionIds(tokenizer), means, stds, captions,
                                          m["vae_scaling_factor"], settings["unet_steps"], settings["unet_batch"],
                                          rngs[4], init=init, lr=_lr(settings, "unet"), device=_device(settings),
                                          loss_maps=loss_maps)
        times["unet_s"] = time.perf_counter() - t
        m["unet_params"] = sum(p.numel() for p in unet.parameters())
        print(f"unet: loss {m['unet_loss']:.4f}, {m['unet_params']} params ({times['unet_s']:.0f}s)", flush=True)

        pipe = assemble_pipeline(vae, text_encoder, tokenizer, unet)
        t = time.perf_counter()
        if w is world2:  # its faces and hair are not the first world's, so its own oracle reads them
            m["attributes"] = measure_attributes(pipe, classifier, n=settings["eval_n"], seed=seed,
                                                 steps=SAMPLER["steps"], guidance=SAMPLER["guidance"])
            print(format_attributes(m["attributes"]), flush=True)
        else:
            m["shares"], m["images_per_s_one_thread"] = measure_professions(
                pipe, classifier, n=settings["eval_n"], seed=seed, steps=SAMPLER["steps"],
                guidance=SAMPLER["guidance"])
            print(format_table(m["shares"], m["images_per_s_one_thread"]), flush=True)
        times["eval_s"] = time.perf_counter() - t
        m["times_s"] = {k: round(v, 1) for k, v in times.items()}
        save_all(out, pipe, clip_model, tok_dir, world_json(seed, m, settings, w))
    m["size_bytes"] = folder_size(out)
    info = world_json(seed, m, settings, w)
    atomic_write_json(out / "world.json", info)
    print(f"wrote {out} ({m['size_bytes'] / 1e6:.1f} MB); times {m['times_s']}", flush=True)
    return info


# from scratch: 2e-3 for CLIP, 1e-3 for the VAE and UNet; a full-size first Adam step wrecks a trained net
FINE_TUNE_LR = {"clip": 3e-4, "vae": 3e-4, "unet": 5e-4}


def _device(settings: dict) -> str:
    return settings.get("device", "cpu")  # settings written before --device existed name none: the CPU


def _lr(settings: dict, part: str) -> float:
    return FINE_TUNE_LR[part] if settings.get("init_from") else 1e-3


def _trained_part(settings: dict, part: str):
    """The ``part`` ("unet" or "vae") of the ``init_from`` folder in float32, or None without one."""
    if not settings.get("init_from"):
        return None
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    cls = UNet2DConditionModel if part == "unet" else AutoencoderKL
    return cls.from_pretrained(Path(settings["init_from"]) / "pipeline" / part, torch_dtype=torch.float32).eval()


def _trained_clip(folder: Path, tok_dir: Path):
    """The tokenizer and CLIP of a trained folder: a UNet trained further must keep the text space it learned."""
    from transformers import CLIPModel, CLIPTokenizer

    copy_tokenizer_files(folder / "pipeline" / "tokenizer", tok_dir)
    return CLIPTokenizer.from_pretrained(tok_dir), CLIPModel.from_pretrained(folder / "classifier").eval()


def vae_stage(settings: dict, train_rng: np.random.Generator, data_rng: np.random.Generator, m: dict, w=world):
    """Train the VAE (or take ``init_from``'s with ``vae_steps`` 0), encode the UNet's training set once, and set
    the latent scaling factor.

    The scaling factor makes sampled latents unit-variance, the scale the noise schedule assumes. Records PSNR
    and the factor in ``m``; returns (vae, latent means, latent stds, captions, loss maps or None).
    """
    import torch

    init = _trained_part(settings, "vae")
    vae = init if init is not None and settings["vae_steps"] == 0 else \
        train_vae(settings["vae_steps"], settings["vae_batch"], train_rng, w=w, init=init, lr=_lr(settings, "vae"),
                  device=_device(settings), decoder_only=bool(settings.get("fine_tune_decoder")),
                  head_weight=settings.get("head_weight", 1.0))
    if hasattr(w, "oracle"):
        m.update(round_trip_oracle(vae, np.random.default_rng(data_rng.integers(2**31)), w=w))
    means, stds, captions, psnr, loss_maps = encode_dataset(vae, settings["latents"], data_rng, w=w,
                                                            device=_device(settings),
                                                            head_weight=settings.get("head_weight", 1.0))
    scaling = float(1.0 / (means + stds * torch.randn_like(means)).std())
    if vae is init or settings.get("fine_tune_decoder"):  # the same encoder: its UNet's latents keep its factor
        scaling = float(init.config.scaling_factor)
    vae.register_to_config(scaling_factor=scaling)
    m["vae_psnr_db"], m["vae_scaling_factor"] = psnr, scaling
    return vae, means, stds, captions, loss_maps


if __name__ == "__main__":
    main()
