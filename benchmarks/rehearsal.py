"""A real-size rehearsal: audit → fix → report through the CLI on SD 1.5-, SDXL- and FLUX.1-shaped pipelines.

    python benchmarks/rehearsal.py [--families sd15,sdxl,flux] [--threads 1] [--size auto|full|reduced]
    python benchmarks/rehearsal.py --threads 8 --pixels 512 --steps 2 --size full \
        --out benchmarks/results/rehearsal-gpu.json                       # on a GPU machine

Each family is built from its published configuration (the values are below, with where they come from) with
random weights, saved with ``save_pretrained`` (safetensors) and run as a user would: ``debias audit``, ``fix``
and ``report`` as subprocesses on that folder, with a random tiny CLIP folder as ``--classifier``, 64×64 images (``--pixels``),
1 step (``--steps``) and the smallest budgets the fix accepts, on one profession. The images mean nothing; what
is measured does not depend on them: every stage runs at the real widths; each command's peak memory (RSS; the
CUDA peak on a GPU), seconds per image, the modules the edit changes and the edit file's size.

Sizes: SD 1.5 at full size (1.07 B parameters, 4 GB in float32). SDXL (3.5 B, 13 GB) at full size when the
memory available holds it twice over, else with its real widths and 2 instead of 10 transformer layers in the
deepest blocks (``--size`` forces either). FLUX.1 (12 B transformer + 4.7 B T5-XXL: 63 GB in float32) always
with its real widths (hidden 3072 = 24 heads × 128, T5 4096, joint_attention_dim 4096, pooled 768) but 1 of 19
double-stream blocks, 1 of 38 single-stream blocks and none of the 24 T5 layers (its 4096-wide embedding and
final norm stay: one layer at 512 tokens costs as much as the transformer here). Full-size weights are
extrapolated from their per-block parameter counts. A failed stage is recorded with its error and the script
goes on; running a subset of families updates their entries in ``benchmarks/results/rehearsal.json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tiny_models: the real CLIP BPE vocabulary, built offline

# --------------------------------------------------------------------------------------------- configs
# SD 1.5: https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5 — unet/config.json, vae/config.json,
# text_encoder/config.json (OpenAI CLIP ViT-L/14's text tower), scheduler/scheduler_config.json.
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1,
)
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    act_fn="silu", sample_size=512, scaling_factor=0.18215,
)
CLIP_L_TEXT = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
    vocab_size=49408, hidden_act="quick_gelu", projection_dim=768, layer_norm_eps=1e-5,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)
SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)

# SDXL base 1.0: https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0 — unet/config.json,
# text_encoder_2/config.json (OpenCLIP ViT-bigG/14's text tower), vae/config.json, scheduler/scheduler_config.json.
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
)
SDXL_REDUCED_LAYERS = (1, 2, 2)  # transformer layers per block when the full model does not fit (widths unchanged)
CLIP_BIGG_TEXT = dict(
    hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, vocab_size=49408, hidden_act="gelu", projection_dim=1280, layer_norm_eps=1e-5,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
)

# FLUX.1 [dev]: https://huggingface.co/black-forest-labs/FLUX.1-dev — transformer/config.json, vae/config.json,
# text_encoder_2/config.json (Google T5 v1.1 XXL encoder), scheduler/scheduler_config.json.
FLUX_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)
FLUX_REDUCED = dict(num_layers=1, num_single_layers=1, t5_layers=0)  # always: the full model needs 63 GB in float32
FLUX_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    act_fn="silu", sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
    use_post_quant_conv=False, force_upcast=True,
)
T5_XXL = dict(
    d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=32128, feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
    is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False,
)
FLUX_SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                      max_image_seq_len=4096, num_train_timesteps=1000)


# -------------------------------------------------------------------------------------------- builders
def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _clip_text(config: dict, with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(CLIPTextConfig(**config))


def build_sd15(size: str) -> tuple[Any, dict]:
    """SD 1.5's UNet, VAE and CLIP ViT-L/14 text encoder at full size (it fits wherever debias runs)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from tiny_models import clip_tokenizer

    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel(**SD15_UNET), vae=AutoencoderKL(**SD_VAE), text_encoder=_clip_text(CLIP_L_TEXT),
        tokenizer=clip_tokenizer(), scheduler=PNDMScheduler(**SD_BETAS, skip_prk_steps=True, steps_offset=1,
                                                             set_alpha_to_one=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return pipe, {"size": "full", "params": _params_of(pipe)}


def build_sdxl(size: str) -> tuple[Any, dict]:
    """SDXL base: full size, or (``size == "reduced"``) 2 instead of 10 transformer layers in the deepest blocks."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from tiny_models import clip_tokenizer

    unet_config = dict(SDXL_UNET)
    if size == "reduced":
        unet_config["transformer_layers_per_block"] = SDXL_REDUCED_LAYERS
    torch.manual_seed(0)
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL(**{**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}),
        text_encoder=_clip_text(CLIP_L_TEXT), text_encoder_2=_clip_text(CLIP_BIGG_TEXT, with_projection=True),
        tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(pad_token="!"),
        unet=UNet2DConditionModel(**unet_config),
        scheduler=EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="leading", steps_offset=1),
        force_zeros_for_empty_prompt=True)
    info: dict = {"size": size, "params": _params_of(pipe)}
    if size == "reduced":
        info["reduced"] = (f"transformer_layers_per_block {SDXL_REDUCED_LAYERS} instead of "
                           f"{SDXL_UNET['transformer_layers_per_block']} (widths unchanged)")
        blocks = pipe.unet.down_blocks[2].attentions[0].transformer_blocks
        per_layer = _params(blocks[0])
        missing = (2 + 1 + 3) * (10 - SDXL_REDUCED_LAYERS[2])  # deepest level: 2 down, 1 mid and 3 up attentions
        info["full_params_estimate"] = info["params"]["total"] + missing * per_layer
    return pipe, info


def build_flux(size: str) -> tuple[Any, dict]:
    """FLUX.1 [dev] at its real widths with 1 double-stream block, 1 single-stream block and no T5-XXL layer."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from tiny_models import clip_tokenizer, t5_tokenizer
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(**{**FLUX_TRANSFORMER, "num_layers": FLUX_REDUCED["num_layers"],
                                            "num_single_layers": FLUX_REDUCED["num_single_layers"]})
    t5 = T5EncoderModel(T5Config(**{**T5_XXL, "num_layers": FLUX_REDUCED["t5_layers"]}))
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), vae=AutoencoderKL(**FLUX_VAE),
                        text_encoder=_clip_text(CLIP_L_TEXT), tokenizer=clip_tokenizer(), text_encoder_2=t5,
                        tokenizer_2=t5_tokenizer(), transformer=transformer)
    double, single = _params(transformer.transformer_blocks[0]), _params(transformer.single_transformer_blocks[0])
    t5_layer = 4 * T5_XXL["d_model"] * T5_XXL["num_heads"] * T5_XXL["d_kv"] + 3 * T5_XXL["d_model"] * T5_XXL["d_ff"] \
        + 2 * T5_XXL["d_model"]  # attention, gated feed-forward, two norms
    missing = ((FLUX_TRANSFORMER["num_layers"] - FLUX_REDUCED["num_layers"]) * double
               + (FLUX_TRANSFORMER["num_single_layers"] - FLUX_REDUCED["num_single_layers"]) * single
               + (T5_XXL["num_layers"] - FLUX_REDUCED["t5_layers"]) * t5_layer)
    params, reduced = _params_of(pipe), "{num_layers} of 19 double-stream, {num_single_layers} of 38 single-stream blocks"
    return pipe, {"size": "reduced", "params": params, "full_params_estimate": params["total"] + missing,
                  "reduced": reduced.format(**FLUX_REDUCED) + f", {FLUX_REDUCED['t5_layers']} of 24 T5-XXL layers",
                  "params_per_block": {"double": double, "single": single, "t5_layer": t5_layer}}


def _params_of(pipe) -> dict[str, int]:
    out = {name: _params(m) for name, m in pipe.components.items() if hasattr(m, "named_modules")}
    out["total"] = sum(out.values())
    return out


# a random classifier's shape: tiny, with a large logit scale so that its probabilities spread (both labels occur)
TINY_CLIP = dict(text=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2),
                 vision=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                             image_size=32, patch_size=8), projection_dim=16, logit_scale=400.0)


def save_random_clip(folder: Path, spec: dict = TINY_CLIP) -> Path:
    """A transformers CLIP folder of shape ``spec`` with random weights, which ``--classifier FOLDER`` loads."""
    import numpy as np
    import torch
    from tiny_models import clip_tokenizer
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    text = dict(spec["text"], vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                pad_token_id=49407)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=spec["vision"],
                                 projection_dim=spec["projection_dim"])).eval()
    with torch.no_grad():
        model.logit_scale.fill_(float(np.log(spec["logit_scale"])))
    model.save_pretrained(folder)
    clip_tokenizer().save_pretrained(folder)
    size = spec["vision"]["image_size"]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------------ the runs
@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[str], tuple[Any, dict]]
    full_params: int  # published parameter count of the whole pipeline (all components)
    full_kv_modules: int  # cross-attention K/V projections an edit changes at full size (0: not a cross-attention model)


FAMILIES = {  # parameters of the published models built from the configurations above (SDXL, FLUX.1: about)
    "sd15": Family("sd15", build_sd15, 1_066_235_307, 32),
    "sdxl": Family("sdxl", build_sdxl, 3_470_000_000, 140),
    "flux": Family("flux", build_flux, 16_870_000_000, 0),
}
PROFESSIONS = "a nurse\n"
SIDE_PROMPT = "a photo of an apple"
# the debias console script's entry point, run as a child that also reports the CUDA peak when on a GPU
CLI = ("import atexit, os, sys\nimport torch\n\ndef _cuda_peak():\n    if torch.cuda.is_available():\n"
       "        open(os.environ['REHEARSAL_CUDA_PEAK'], 'w').write(str(torch.cuda.max_memory_allocated()))\n\n"
       "atexit.register(_cuda_peak)\nfrom debias.cli import main\nmain(sys.argv[1:])\n")


def _last_lines(log: Path, count: int = 12) -> list[str]:
    lines = [line.split("\r")[-1].rstrip() for line in log.read_text(encoding="utf-8", errors="replace").split("\n")]
    return [line for line in lines if line.strip() and "Warning" not in line][-count:]


def seconds_per_image(images: Path) -> dict | None:
    """Generation pace from the PNGs' modification times: a batch's PNGs are written together, so the time from
    one batch to the next over its images is the time per image; the median over the batches leaves out the
    first (warm-up) and the pauses between a fix's stages (solving, baking the edit)."""
    times = sorted(p.stat().st_mtime for p in images.glob("*.png"))
    starts = [0] + [i for i in range(1, len(times)) if times[i] - times[i - 1] >= 0.5]  # each batch's first PNG
    ends = starts[1:] + [len(times)]
    paces = [(times[e - 1] - times[s - 1]) / (e - s) for s, e in zip(starts[1:], ends[1:])]
    if not paces:
        return None
    return {"seconds_per_image": round(statistics.median(paces), 3), "images": len(times), "batches": len(starts)}


def describe_edit(path: Path) -> dict | None:
    """Size of the edit file and the modules it changes: names (digits folded to ``*``), kinds and widths."""
    if not path.is_file():
        return None
    import re
    from collections import Counter

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    weights = {name: shape for name, shape in shapes.items() if name.endswith(".weight")}
    patterns = dict(Counter(re.sub(r"\.\d+\.", ".*.", name) for name in weights))
    return {"bytes": path.stat().st_size, "mb": round(path.stat().st_size / 2**20, 2), "modules": len(weights),
            "in_widths": sorted({s[1] for s in weights.values()}), "out_widths": sorted({s[0] for s in weights.values()}),
            "names": patterns, "other_tensors": {n: list(s) for n, s in shapes.items() if n not in weights}}


def run_child(argv: list[str], log: Path, threads: int, label: str) -> dict:
    """A child process: exit code, wall seconds and its peak resident memory (its CUDA peak on a GPU).

    The peak is the child's own ``ru_maxrss`` (``os.wait4``). Linux carries a process's peak across ``exec``, so
    a child starts from this process's peak: this process never loads a model (pipelines are built in a child of
    their own), which keeps that floor at tens of MB (``parent_peak_rss_gb`` in the record)."""
    env = dict(os.environ, DEBIAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", REHEARSAL_CUDA_PEAK=str(log.with_suffix(".cuda")))
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        child = subprocess.Popen([sys.executable, *argv], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own resource usage, not all children's
        child.returncode = os.waitstatus_to_exitcode(status)
    record = {"exit_code": child.returncode, "wall_s": round(time.perf_counter() - start, 1),
              "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2)}
    cuda = log.with_suffix(".cuda")
    if cuda.is_file():
        record["cuda_peak_gb"] = round(int(cuda.read_text()) / 2**30, 2)
    if child.returncode != 0:
        record["error"] = _last_lines(log)
    print(f"    {label}: exit {child.returncode}, {record['wall_s']} s, peak RSS {record['peak_rss_gb']} GB"
          + (f"\n      {record['error'][-1]}" if child.returncode else ""), flush=True)
    return record


def run_cli(args: list[str], log: Path, threads: int) -> dict:
    """``debias ARGS`` through the console script's entry point, in a child process (:func:`run_child`)."""
    return {"command": "debias " + " ".join(args), **run_child(["-c", CLI, *args], log, threads, args[0])}


def build_in_child(name: str, size: str, folder: Path, threads: int) -> dict:
    """Build ``name`` (a family, or "clip": the classifier) in a child process that saves it to ``folder``."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    run = run_child([str(Path(__file__).resolve()), "--build", name, "--size", size, "--folder", str(folder)],
                    folder.parent / f"build-{name}.log", threads, f"build {name}")
    if run["exit_code"] != 0:
        raise SystemExit(f"building {name} failed:\n" + "\n".join(run["error"]))
    info = json.loads((folder / "build.json").read_text())
    return {**info, "build": run}


def build_and_save(name: str, size: str, folder: Path) -> None:
    """The child's side of :func:`build_in_child`: build, ``save_pretrained`` (safetensors), describe."""
    import torch

    start = time.perf_counter()
    if name == "clip":
        save_random_clip(folder)
        info: dict = {}
    else:
        pipe, info = FAMILIES[name].build(size)
        info["pipeline"] = type(pipe).__name__
        info["build_s"] = round(time.perf_counter() - start, 1)
        pipe.save_pretrained(folder, safe_serialization=True)
        info["folder_gb"] = round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**30, 2)
    info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    (folder / "build.json").write_text(json.dumps(info, indent=2), encoding="utf-8")


# the memory options measured with --memory (each an audit of the same images as the plain one, in its own folder)
MEMORY_VARIANTS = {
    "slicing": ["--vae-slicing", "--attention-slicing"],
    "vae_tiling": ["--vae-tiling"],
    "model_offload": ["--cpu-offload", "model"],  # skipped with its reason where there is no GPU
}


def memory_variants(base: list[str], runs: Path, threads: int) -> dict:
    """The plain audit again under each memory option: peak memory and time beside the plain one."""
    out = {}
    for name, flags in MEMORY_VARIANTS.items():
        out[name] = run_cli(["audit", *base, *flags, "-n", "1", "--out", str(runs / f"audit-{name}")],
                            runs / f"audit-{name}.log", threads)
    return out


def rehearse(family: Family, size: str, work: Path, threads: int, common: list[str], memory: bool = False) -> dict:
    """Build and save (in a child), then audit → fix → report through the CLI; a failed stage is recorded."""
    print(f"{family.name}: building ({size})", flush=True)
    runs = work / family.name
    folder = runs / "pipeline"
    record = build_in_child(family.name, size, folder, threads)
    record["weights_gb_float32"] = round(record["params"]["total"] * 4 / 2**30, 2)
    if "full_params_estimate" in record:
        record["full_weights_gb_float32_estimate"] = round(record["full_params_estimate"] * 4 / 2**30, 1)
    record["full_kv_modules"] = family.full_kv_modules or None
    base = ["--model", str(folder), *common]
    record["audit"] = run_cli(["audit", *base, "-n", "1", "--out", str(runs / "audit")], runs / "audit.log", threads)
    # 3 check images: a share of 0, 1/3, 2/3 or 1 is never within 0.5 ± 0.05, so the fix always makes an edit
    record["fix"] = run_cli(["fix", *base, "--budget", "32", "--test-images", "1", "--check-images", "3",
                             "--joint-rounds", "0", "--side-seeds", "1", "--side-prompts", SIDE_PROMPT,
                             "--out", str(runs / "fix")], runs / "fix.log", threads)
    reported = runs / ("fix" if record["fix"]["exit_code"] == 0 else "audit")
    record["report"] = run_cli(["report", str(reported)], runs / "report.log", threads)
    if memory:
        record["memory_variants"] = memory_variants(base, runs, threads)
    record.update(_outcome(runs))
    shutil.rmtree(folder, ignore_errors=True)
    return record


def _outcome(runs: Path) -> dict:
    """What the audit and fix wrote: images, pace, edit and its modules, each profession's status."""
    out: dict[str, Any] = {}
    audit = runs / "audit" / "audit.json"
    if audit.is_file():
        data = json.loads(audit.read_text())
        out["audit_images"] = data["images_generated"]
        out["audit_wall_s"] = data["wall_seconds"]
    fix = runs / "fix" / "fix.json"
    if fix.is_file():
        data = json.loads(fix.read_text())
        out["fix_images"] = data["images"]["generated"]
        out["fix_wall_s"] = data["wall_seconds"]
        out["statuses"] = {p["profession"]: p["status"] for p in data["professions"]}
        out["edit_note"] = data.get("edit_note")
    out["pace"] = seconds_per_image(runs / "fix" / "images") or seconds_per_image(runs / "audit" / "images")
    out["edit"] = describe_edit(runs / "fix" / "edit.safetensors")
    return out


def choose_size(family: Family, requested: str) -> str:
    """``auto``: full size when the memory available holds the float32 weights twice over (room for the machine's
    other work), else reduced; FLUX.1 is always reduced."""
    if family.name == "flux" or requested == "reduced":
        return "reduced"
    if requested == "full" or family.name == "sd15":
        return "full"
    import psutil

    return "full" if psutil.virtual_memory().available > 2 * 4 * family.full_params else "reduced"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated subset of {', '.join(FAMILIES)}")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in every child (builder and CLI)")
    ap.add_argument("--size", choices=("auto", "full", "reduced"), default="auto",
                    help="SDXL at full size or with fewer transformer layers (auto: full when memory allows)")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--pixels", type=int, default=64, help="image height and width (64 on a CPU; 512 on a GPU)")
    ap.add_argument("--memory", action="store_true",
                    help="also audit under each memory option (slicing, VAE tiling, model offload) and record peaks")
    ap.add_argument("--work", type=Path, default=None, help="folder for pipelines and runs (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "rehearsal.json")
    ap.add_argument("--build", default=None, help=argparse.SUPPRESS)  # the builder child (build_in_child)
    ap.add_argument("--folder", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.build:
        return build_and_save(args.build, args.size, args.folder)
    names = [n.strip() for n in args.families.split(",") if n.strip()]
    if not names or set(names) - set(FAMILIES):
        ap.error(f"--families {args.families!r}: give a comma-separated subset of {', '.join(FAMILIES)}")
    record = json.loads(args.out.read_text()) if args.out.is_file() else {"kind": "bench-rehearsal", "families": {}}
    work = args.work or Path(tempfile.mkdtemp(prefix="debias-rehearsal-"))
    clip, professions = work / "clip", work / "professions.txt"
    cuda = build_in_child("clip", "full", clip, args.threads)["cuda"]
    record.update(_machine(args.threads, args.steps, args.pixels, cuda))
    professions.write_text(PROFESSIONS, encoding="utf-8")
    common = ["--classifier", str(clip), "--professions", str(professions), "--steps", str(args.steps),
              "--height", str(args.pixels), "--width", str(args.pixels), "--threads", str(args.threads)]
    start = time.perf_counter()
    for name in names:
        family = FAMILIES[name]
        result = rehearse(family, choose_size(family, args.size), work, args.threads, common, args.memory)
        result["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        record["families"][name] = result
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")  # each family as it finishes
        _print_row(name, result)
    print(f"wrote {args.out} ({time.perf_counter() - start:.0f} s; runs in {work})")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def _machine(threads: int, steps: int, pixels: int, cuda: str | None) -> dict:
    import psutil

    return {"threads": threads, "settings": f"{pixels}×{pixels}, {steps} step(s), each family's default sampler and "
                                            "guidance, default batch size (4 on a CPU); one profession",
            "parent_peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
            "machine": {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                        "cuda": cuda, "platform": platform.platform(),
                        "load_average": [round(x, 2) for x in os.getloadavg()]},
            "versions": {name: importlib.metadata.version(name) for name in ("torch", "diffusers", "transformers")}}


def _print_row(name: str, r: dict) -> None:
    edit, pace = r.get("edit") or {}, (r.get("pace") or {}).get("seconds_per_image", "–")
    failed = ", ".join(stage for stage in ("audit", "fix", "report") if r[stage]["exit_code"] != 0) or "nothing"
    print(f"{name}: {r['size']}, {r['params']['total'] / 1e9:.2f} B parameters, peak RSS "
          f"{max(r[s]['peak_rss_gb'] for s in ('audit', 'fix'))} GB, {pace} s/image, edit: {edit.get('modules', 0)} "
          f"modules, {edit.get('mb', 0)} MB; failed: {failed}", flush=True)
    for variant, run in (r.get("memory_variants") or {}).items():
        print(f"    audit with {variant}: exit {run['exit_code']}, peak RSS {run['peak_rss_gb']} GB, CUDA peak "
              f"{run.get('cuda_peak_gb', '–')} GB (plain: {r['audit'].get('cuda_peak_gb', '–')}), {run['wall_s']} s",
              flush=True)


if __name__ == "__main__":
    main()
