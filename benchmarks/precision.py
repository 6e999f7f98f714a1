"""Precision of a shipped edit per dtype: the baked weights against the conditioning transform that was measured.

A λ search and a fix's joint rounds judge an edit M through ``conditioning_transform`` (the conditioning c is
replaced by c·Mᵀ); the edit file and ``--save-pipeline`` ship it baked (W·M), and the after audit judges that.
In float32 the two agree; in float16 and bfloat16 each path rounds something: the baked weight W·M, which
differs from W by a little, and the transformed conditioning. For every K/V layer, on the conditioning rows of the edited profession's tuning
and test prompts, ``debias.editing.edit_precision`` computes in float64, from what each path actually holds in
that dtype, the error relative to the edit's effect ‖c(WM)ᵀ − cWᵀ‖:

* baked vs transform: how far the shipped model is from the one the edit was tuned on (``shipped_edit_error``);
* baked vs exact and transform vs exact: the two roundings on their own;
* edit size: the edit's effect relative to the unedited K/V outputs (the errors scale with its inverse).

"before" is the same measurement with the formulas this module replaced: W·M multiplied in float32 before the
cast, and the transform multiplied in the rows' own dtype (M rounded to float16/bfloat16 first).

Edits: ``debias edit``'s (``edit_from_prompts``, "a nurse" → "a male nurse" at λ_rel 1) and two fix-like single
edits (the same rows with the fix's anchors at strength 100, λ_rel 1 and a weak λ_rel 10). Models:

* the built-in mini model (width 64), loaded in each dtype;
* an SD 1.x-shaped random pipeline: a 12-layer 768-wide CLIP text encoder and SD 1.x's UNet (16 cross-attention
  layers, K/V out widths 320/640/1280) with random weights, built in float32 and cast (5 GB of memory). A random
  text encoder's conditioning is not a trained one's (trained CLIP gives the start token a far larger norm than
  the others), so its edit sizes, and the errors, are indicative only.

Run:  ``python benchmarks/precision.py [--threads N] [--skip-sd1] [--out benchmarks/results/precision.json]``
(13 minutes with one thread on 2 busy cores; 30 s with ``--skip-sd1``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable
from unittest import mock

import torch

from debias import editing
from debias.editing import (DEFAULT_AUGMENTATIONS, edit_from_prompts, edit_matrix, edit_precision, edit_rows,
                            lambda_scale)
from debias.fixing import DEFAULT_ANCHOR_STRENGTH, anchor_prompts_for
from debias.core.models import load_pipeline, original_weights
from debias.core.profiles import get_profile
from debias.core.prompts import TIMED_TEMPLATES
from debias.core.threads import set_threads

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SOURCE, DESTINATION = "a nurse", "a male nurse"
FIX_LAMBDAS = (1.0, 10.0)


def previous_baked_weight(W: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """The bake this module replaced: W·M multiplied in float32 (at least), then cast."""
    work = torch.promote_types(W.dtype, torch.float32)
    return (W.to(work) @ M.to(W.device, work)).to(W.dtype)


def previous_transform_operand(M: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The transform this module replaced: Mᵀ rounded to the rows' dtype, multiplied in that dtype."""
    return M.to(device=like.device, dtype=like.dtype).T.contiguous()


def measure(weights: dict[str, torch.Tensor], rows: torch.Tensor, M: torch.Tensor) -> dict:
    now = edit_precision(weights, rows, M)
    with mock.patch.object(editing, "baked_weight", previous_baked_weight), \
            mock.patch.object(editing, "_transform_operand", previous_transform_operand):
        before = edit_precision(weights, rows, M)
    return {**now, "before": {k: v for k, v in before.items() if k != "edit_size"}}


def bake_seconds(weights: dict[str, torch.Tensor], M: torch.Tensor) -> dict[str, float]:
    """Wall time to bake every K/V weight with the float64 product (now) and the float32 one (before)."""
    out = {}
    for key, bake in (("float64_product", editing.baked_weight), ("float32_product", previous_baked_weight)):
        start = time.perf_counter()
        for W in weights.values():
            bake(W, M)
        out[key] = time.perf_counter() - start
    return out


def edits(pipe, augmentations: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """``debias edit``'s edit and fix-like single edits (anchored) of SOURCE → DESTINATION, all from ``pipe``."""
    M, _ = edit_from_prompts(pipe, [(SOURCE, DESTINATION)], lam_relative=1.0)
    out = {"debias edit, lambda_rel 1": M}
    C, C_star = (rows.double() for rows in edit_rows(pipe, SOURCE, DESTINATION, augmentations))
    anchors = editing.encode_conditioning(pipe, anchor_prompts_for(augmentations))
    anchors = anchors.reshape(-1, anchors.shape[-1]).double()
    for lam_rel in FIX_LAMBDAS:
        out[f"fix-like, lambda_rel {lam_rel:g}"] = edit_matrix(C, C_star, lam_rel * lambda_scale(C), preserve=anchors,
                                                               preserve_weight=DEFAULT_ANCHOR_STRENGTH)
    return out


def run_model(name: str, build: Callable[[torch.dtype], object], augmentations: tuple[str, ...],
              templates: tuple[str, ...]) -> dict:
    prompts = [t.format(SOURCE) for t in templates]
    results: dict = {"prompts": prompts, "edits": {}}
    matrices: dict[str, torch.Tensor] = {}
    for dtype_name, dtype in DTYPES.items():
        pipe = build(dtype)
        if not matrices:  # the edits are made on the float32 model, as `debias edit` and `debias fix` make them on CPU
            matrices = edits(pipe, augmentations)
        conditioning = editing.encode_conditioning(pipe, prompts)
        rows = conditioning.reshape(-1, conditioning.shape[-1])
        weights = original_weights(pipe)
        for edit_name, M in matrices.items():
            record = measure(weights, rows, M)
            results["edits"].setdefault(edit_name, {})[dtype_name] = record
            print(f"{name:<10}{edit_name:<28}{dtype_name:<10}{record['edit_size']:>10.2%}"
                  f"{record['before']['baked_vs_transform']:>12.3%}{record['baked_vs_transform']:>10.3%}"
                  f"{record['before']['baked_vs_exact']:>12.3%}{record['baked_vs_exact']:>10.3%}"
                  f"{record['before']['transform_vs_exact']:>12.3%}{record['transform_vs_exact']:>10.3%}", flush=True)
        results.setdefault("bake_seconds", {})[dtype_name] = bake_seconds(weights, next(iter(matrices.values())))
        del pipe, weights
    return results


def build_mini(dtype: torch.dtype):
    return load_pipeline("mini", torch_dtype=dtype)


def build_sd1(dtype: torch.dtype, seed: int = 0):
    """SD 1.x's text encoder and UNet shapes with random weights (seeded), cast to ``dtype``."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_models import clip_tokenizer  # the real CLIP BPE vocabulary, built offline from open_clip's file

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)  # diffusers' defaults are SD 1.x's layout
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, vocab_size=49408, projection_dim=768, hidden_act="quick_gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    pipe = StableDiffusionPipeline(unet=unet, vae=AutoencoderKL(), text_encoder=text_encoder,
                                   tokenizer=clip_tokenizer(), scheduler=DDIMScheduler(steps_offset=1),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dtype=dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: DEBIAS_NUM_THREADS or all cores)")
    parser.add_argument("--skip-sd1", action="store_true", help="only the mini model")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "precision.json")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    print(f"torch {torch.__version__}, {threads} thread(s); errors relative to the edit's effect on the K/V outputs")
    print(f"{'model':<10}{'edit':<28}{'dtype':<10}{'edit size':>10}{'baked vs transform':>22}"
          f"{'baked vs exact':>22}{'transform vs exact':>22}")
    print(f"{'':<48}{'':>10}{'before':>12}{'now':>10}{'before':>12}{'now':>10}{'before':>12}{'now':>10}")
    start = time.perf_counter()
    record = {"kind": "bench-precision", "torch": torch.__version__, "threads": threads, "models": {}}
    mini = get_profile("mini").template_set()
    from debias.mini import world

    record["models"]["mini"] = run_model("mini", build_mini, tuple(world.AUGMENTATIONS), mini.tuning + mini.test)
    if not args.skip_sd1:
        record["models"]["sd1-random"] = run_model("sd1-random", build_sd1, DEFAULT_AUGMENTATIONS,
                                                   TIMED_TEMPLATES.tuning + TIMED_TEMPLATES.test)
    for model, result in record["models"].items():
        for dtype_name, seconds in result["bake_seconds"].items():
            print(f"bake all K/V weights of {model} in {dtype_name}: float64 product "
                  f"{seconds['float64_product']:.3f} s, float32 product {seconds['float32_product']:.3f} s")
    record["wall_seconds"] = round(time.perf_counter() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({record['wall_seconds']} s)")


if __name__ == "__main__":
    main()
