"""Which anchor rows let an edit move an MMDiT model (SD3, FLUX.1) without moving unrelated prompts.

    python benchmarks/mmdit_anchors.py [--threads 1]

The fix keeps its anchors (the bare templates and the empty prompt, :func:`debias.fixing.plan.anchor_prompts_for`)
in place with every edit. On CLIP-conditioned models an anchor's padding rows summarise only the template; T5 is
bidirectional and SD3/FLUX read all its rows unmasked, so the padding rows of "a photo of" lie close to those of
"a photo of a nurse", and pinning them can pin the edit. This script measures, on the tiny random SD3 and FLUX.1
pipelines of the tests, for each anchor choice and λ_rel:

* **move**: how far held-out prompts ("a portrait of a nurse", …) go towards their destination ("… a male nurse"),
  as the projection of (edited − unedited) on (destination − unedited), 1 = all the way; the outputs compared are
  the latents after two sampler steps from one noise, with the pooled vector held at the source's;
* **side**: how far unrelated prompts move, as a fraction of the mean source → destination distance.

Anchor choices: none; all rows of the anchor prompts at strength 100 (the default before this measurement), 10, 1;
and "content" rows (words and end token only; padding rows left free) at 100. Results go to
``benchmarks/results/mmdit_anchors.json``. The tiny models are random, so the figures say how the rows interact,
not how a real SD3 or FLUX behaves.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

PAIRS = [("a nurse", "a male nurse"), ("a doctor", "a female doctor"), ("a pilot", "a female pilot"),
         ("an engineer", "a female engineer")]
HELD_OUT = ["a portrait of {}", "{} at work", "a painting of {}"]
UNRELATED = ["a photo of an apple", "a photo of a car", "a house by a lake", "a photo of a tree", "a red bicycle",
             "a bowl of soup"]
LAMBDAS = [0.01, 0.1, 1.0, 10.0]
CHOICES = {"none": (None, 0.0), "all@100": ("all", 100.0), "all@10": ("all", 10.0), "all@1": ("all", 1.0),
           "content@100": ("content", 100.0)}


def embeds(pipe, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(pipe, "tokenizer_3"):
        pe, _, pooled, _ = pipe.encode_prompt(prompt, prompt, prompt, device="cpu", do_classifier_free_guidance=False)
    else:
        pe, pooled, _ = pipe.encode_prompt(prompt, prompt, device="cpu")
    return pe, pooled


def latent(pipe, pe, pooled, M=None) -> torch.Tensor:
    from debias.editing import conditioning_transform

    with conditioning_transform(pipe, M) if M is not None else nullcontext():
        out = pipe(prompt_embeds=pe, pooled_prompt_embeds=pooled, num_inference_steps=2, height=16, width=16,
                   guidance_scale=0.0, output_type="latent", generator=torch.Generator().manual_seed(0))
    return out.images.double().flatten()


def anchor_rows(pipe, prompts: list[str], kind: str) -> torch.Tensor:
    from debias.editing import encode_conditioning, prompt_tokens

    emb = encode_conditioning(pipe, prompts).double()
    if kind == "all":
        return emb.reshape(-1, emb.shape[-1])
    rows = []
    for k, prompt in enumerate(prompts):
        tokens = prompt_tokens(pipe, prompt, emb.shape[1])
        keep = [i for i, t in enumerate(tokens) if t and t not in ("<pad>", "!", "<|endoftext|>") or _is_end(tokens, i)]
        rows.append(emb[k, keep])
    return torch.cat(rows)


def _is_end(tokens: list[str], i: int) -> bool:
    """The first end token of a segment (CLIP's <|endoftext|>, T5's </s>) is content; its repeats are padding."""
    return tokens[i] in ("</s>", "<|endoftext|>") and (i == 0 or tokens[i - 1] not in ("</s>", "<|endoftext|>"))


def measure(name: str) -> dict:
    from debias.editing import DEFAULT_AUGMENTATIONS, edit_matrix, edit_rows, lambda_scale
    from debias.fixing.plan import anchor_prompts_for
    from tiny_models import MMDIT_BUILDERS

    pipe = MMDIT_BUILDERS[name]()
    base = {p: latent(pipe, *embeds(pipe, p)) for p in UNRELATED}
    cases = []
    for src, dst in PAIRS:
        for t in HELD_OUT:
            s_pe, s_pool = embeds(pipe, t.format(src))
            d_pe, _ = embeds(pipe, t.format(dst))
            x0, xd = latent(pipe, s_pe, s_pool), latent(pipe, d_pe, s_pool)
            cases.append((src, dst, s_pe, s_pool, x0, xd))
    scale_d = sum(float((xd - x0).norm()) for *_, x0, xd in cases) / len(cases)
    anchors_prompts = anchor_prompts_for(DEFAULT_AUGMENTATIONS)
    out: dict = {"anchor_prompts": anchors_prompts, "choices": {}}
    for choice, (kind, strength) in CHOICES.items():
        preserve = anchor_rows(pipe, anchors_prompts, kind) if kind else None
        out["choices"][choice] = {"anchor_rows": None if preserve is None else int(preserve.shape[0]), "by_lambda": {}}
        for lam_rel in LAMBDAS:
            moves = []
            for src, dst, s_pe, s_pool, x0, xd in cases:
                C, C_star = edit_rows(pipe, src, dst, DEFAULT_AUGMENTATIONS)
                M = edit_matrix(C.double(), C_star.double(), lam_rel * lambda_scale(C), preserve=preserve,
                                preserve_weight=strength)
                xe, d = latent(pipe, s_pe, s_pool, M), xd - x0
                moves.append(float((xe - x0) @ d / (d @ d)))
            sides = []
            for src, dst in PAIRS:
                C, C_star = edit_rows(pipe, src, dst, DEFAULT_AUGMENTATIONS)
                M = edit_matrix(C.double(), C_star.double(), lam_rel * lambda_scale(C), preserve=preserve,
                                preserve_weight=strength)
                sides += [float((latent(pipe, *embeds(pipe, u), M) - base[u]).norm()) / scale_d for u in UNRELATED]
            out["choices"][choice]["by_lambda"][str(lam_rel)] = {
                "move_mean": round(sum(moves) / len(moves), 3), "move_min": round(min(moves), 3),
                "side_mean": round(sum(sides) / len(sides), 3), "side_max": round(max(sides), 3)}
            print(f"{name} {choice:12s} λ_rel {lam_rel:<5} move {sum(moves) / len(moves):6.3f} "
                  f"side {sum(sides) / len(sides):6.3f} (max {max(sides):.3f})", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mmdit_anchors.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    record = {"kind": "bench-mmdit-anchors", "models": {name: measure(name) for name in ("sd3", "flux")}}
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
