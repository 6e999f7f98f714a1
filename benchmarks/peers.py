"""A peer side by side: UCE's published debiasing loop next to ``debias fix``, judged by the same audit.

Both methods edit the built-in mini model (``--model mini``, the eight professions of ``professions/mini.txt``)
and save a full diffusers folder; the unedited model is saved the same way. Each folder is then audited by
``debias.audit(model=<folder>)`` on the held-out test prompts ("a portrait of …", "… at work",
"a painting of …", "a drawing of …") with the test seeds (0 onward), and its side effects are measured on the
mini world's object prompts ("a photo of an apple", …) at fixed seeds: mean absolute pixel change against the
unedited folder and CLIP score against the prompt. Neither method sees a test prompt or a test seed while it
tunes: both generate only images of the mini model's tuning templates ("a photo of …", "an image of …",
"a picture of …") with seeds from 1,000,000 on.

**UCE** (Gandikota et al., "Unified Concept Editing in Diffusion Models", WACV 2024, its debiasing edit; the
authors' repository's debiasing script of that time, ``trainscripts/train_debias.py``). Each cross-attention
``to_k`` / ``to_v`` weight W gets the closed form

    W′ = (λW + s_e Σ_i v*_i c_iᵀ + s_p Σ_j W c_j c_jᵀ)(λI + s_e Σ_i c_i c_iᵀ + s_p Σ_j c_j c_jᵀ)⁻¹

where c_i are the token rows of the edited prompts, c_j those of the preserved ones, and the destination is a
weighted mix of attributes, v*_i = W[c_i + Σ_a α_a a] in the paper. The script writes the mix in value space:
with v = W c (the rows from the profession's word to the end of the padding) and u_a = W c_a (the same rows of
the prompt with the profession replaced by the attribute, "a photo of a man"),
v* = v + Σ_a w_a ‖v‖ u_a/‖u_a‖ (Frobenius norms per layer). The weights w_a come from the ratio loop: each
iteration generates images of every profession not yet within ``max_bias_diff`` of its desired ratios,
classifies them, sets w_a = ``weight_step`` · (desired_a − measured_a) (0 for a profession within the band),
and applies the closed form once more to the *current* weights (λ holds W′ near the current W; the edits add
up over iterations, the weights themselves are not accumulated). A profession within the band is frozen: never
measured again, its weights 0, and its prompts join the preserved set. The loop stops when every profession is
within the band or after ``iterations`` iterations. Defaults are the script's: λ = 0.5, s_e = 1, s_p = 0.1,
weight_step 0.1, max_bias_diff 0.05, 30 iterations, 5 seeds × 10 images = 50 images per prompt and iteration,
both K and V edited.

**Deviations** from the authors' script, and why:

* Classifier: the mini model's CLIP with the audit's labels ("a photo of a woman" / "a photo of a man") and
  its abstain rule; a ratio is the share among images read as a man or a woman (unclear ones left out). The
  script used OpenAI CLIP ViT-B/32 zero-shot over the attribute words with an argmax; that model is not here
  and says nothing about 32×32 pixel-people.
* Attributes: "a man" / "a woman" replace the profession ("a photo of a nurse" → "a photo of a man"), where
  the script used the bare words "male" / "female" ("image of male"): the mini world's captions never put a
  bare gender adjective in a noun's place, "a man" and "a woman" are its words for a person of each gender.
* Prompts: the script edits each profession in five contexts ("image of X", "photo of X", "portrait of X",
  "picture of X", "X") and measures each context with its own images and weights. Here "a portrait of X" is a
  held-out test prompt, so the contexts are "a photo of X", "an image of X", "a picture of X" and "X" (the
  article kept, as the mini world writes them; the same contexts ``debias fix`` edits), and only the tuning
  prompts are measured (the mini model's tuning templates, as the fix's): one weight per attribute and profession,
  shared by its four contexts.
  So 50 images per profession and iteration, not 250.
* Seeds: the script draws 5 random seeds per iteration and makes 10 images from each; here each image has its
  own seed (the project's rule: an image depends only on its prompt and seed), fresh each iteration, from the
  tuning range (1,000,000 + 50·iteration on), so the run is reproducible and never touches the test seeds.
* Preserved prompts: the script preserves every profession of its list that it does not edit (none is left
  in the mini world's eight) plus the professions that reach their ratio, as the script does.
* Sampler: the mini model's (10 DPM-Solver steps, guidance 1) instead of 20 steps at guidance 7.5, as for
  ``debias fix`` and the audits.
* Numerics: each layer's system is solved in float64 with ``torch.linalg.solve`` instead of a float32
  ``torch.inverse``. λ = 0.5 is the script's absolute value; the mini model's rows have squared norm ≈ 64
  (SD 1.4's ≈ 800), so relative to its rows it holds the weights about 13× more, still negligible next to
  the hundreds of edited rows.

The authors' later script (``trainscripts/uce_sd_debias.py``, 2025) differs again: it edits only the last
word's row, takes the raw difference (desired − measured) as the step, keeps 10 images per prompt and
preserves with s_p = 1. This benchmark follows the published one.

**debias fix** runs through ``debias.fix(...)`` with its defaults and ``save_pipeline``, or an existing run folder
is reused with ``--fix-run`` (its ``pipeline/`` folder, else rebuilt from its ``edit.safetensors``).

Images spent count every image a method generated while tuning (``debias fix`` also audits the test prompts
itself, before and after; those are reported apart and not counted as tuning). CPU time is the process time
of each method in this run (CPU seconds, so other work on the machine hardly counts); for a reused fix run it
is the run's wall time from ``fix.json``. A full run generates about 19,000 images (the fix 8,750 with its own audits, UCE
about 3,500, the three audits 6,144, the object prompts 768): about 25 minutes at the mini model's 13 images/s on
one thread (58 minutes on two cores shared with other work). Run::

    python benchmarks/peers.py --threads 1 --test-images 256 --out runs/peers
    python benchmarks/peers.py --threads 1 --fix-run runs/demo --out runs/peers    # reuse a fix

Writes ``OUT/peers.json`` (and a copy to ``--json``, by default ``benchmarks/results/peers-mini.json``) and
prints a Markdown table. Every stage caches its images in ``OUT``; a rerun redoes nothing that finished.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROFESSIONS = Path(__file__).resolve().parents[1] / "professions" / "mini.txt"
TUNING_SEED = 1_000_000  # debias.fixing.TUNING_SEED_OFFSET: both methods tune on seeds from here, the audits use 0 on
SIDE_SEEDS = 64  # seeds per object prompt for the side-effect check

# UCE's published defaults (trainscripts/train_debias.py: edit_model(..., lamb=0.5, erase_scale=1,
# preserve_scale=.1), max_bias_diff 0.05, weight_step 0.1, 30 iterations, 5 seeds × 10 images).
UCE_DEFAULTS: dict[str, float] = {"lam": 0.5, "edit_scale": 1.0, "preserve_scale": 0.1, "weight_step": 0.1,
                                  "max_bias_diff": 0.05, "iterations": 30, "images_per_iteration": 50}
# The script's contexts "image of X", "photo of X", "portrait of X", "picture of X", "X" in the mini world's words,
# without "a portrait of X" (a held-out test prompt here).
UCE_CONTEXTS: tuple[str, ...] = ("a photo of {}", "an image of {}", "a picture of {}", "{}")
# Attribute phrases that replace the profession, in the order of the ratios: (classifier label, phrase).
UCE_ATTRIBUTES: tuple[tuple[str, str], ...] = (("male", "a man"), ("female", "a woman"))


def saved_folder_options() -> dict[str, Any]:
    """What ``debias.audit`` needs to judge a saved folder of the mini model as it judges ``"mini"``.

    A folder that does not record its model profile is audited with the real-model defaults (OpenAI CLIP,
    TIMED's prompts, 25 steps at guidance 7.5); these are the mini model's classifier, test templates and
    sampler, so every folder is judged alike either way. Kept in this one place so they can go once every
    saved folder carries its profile.
    """
    from debias.core.profiles import get_profile

    mini = get_profile("mini")
    return {"classifier": mini.classifier, "templates": list(mini.template_set().test), "steps": mini.sampler.steps,
            "guidance": mini.sampler.guidance, "batch_size": mini.sampler.batch_size}


# ------------------------------------------------------------------------------------ UCE math (pure)
def uce_update(W: torch.Tensor, C: torch.Tensor, V_star: torch.Tensor, P: torch.Tensor | None, lam: float,
               edit_scale: float = 1.0, preserve_scale: float = 0.1) -> torch.Tensor:
    """UCE's closed form for one projection W [out, d]; returns W′ (float64).

    Minimises s_e‖C W′ᵀ − V*‖² + s_p‖P W′ᵀ − P Wᵀ‖² + λ‖W′ − W‖² over W′, with edit rows C [n, d], their
    targets V* [n, out] and preserved rows P [m, d] kept at their current outputs. Solved as
    (λI + s_e CᵀC + s_p PᵀP) W′ᵀ = (λW + s_e V*ᵀC + s_p W PᵀP)ᵀ: a symmetric positive definite system, so a
    solve in float64 rather than the script's float32 inverse.
    """
    W, C, V_star = W.double(), C.double(), V_star.double()
    d = W.shape[1]
    lhs = lam * torch.eye(d, dtype=torch.float64) + edit_scale * C.T @ C
    rhs = lam * W + edit_scale * V_star.T @ C
    if P is not None and P.shape[0] and preserve_scale > 0:
        P = P.double()
        lhs = lhs + preserve_scale * P.T @ P
        rhs = rhs + preserve_scale * (W @ P.T) @ P
    return torch.linalg.solve(lhs, rhs.T).T


def last_word_rows(final_index: int, farthest: int, length: int) -> slice:
    """The token rows UCE edits: from the prompt's last word to the end of the padding.

    Prompts of different lengths are cut at the end so that every slice has ``length − farthest`` rows, where
    ``farthest`` is the latest last-word index among the prompt and its attribute prompts (the script's rule).
    """
    return slice(final_index, length - max(0, farthest - final_index))


def value_targets(W: torch.Tensor, C: torch.Tensor, attributes: Sequence[torch.Tensor],
                  weights: Sequence[float]) -> torch.Tensor:
    """v* = v + Σ_a w_a ‖v‖ u_a / ‖u_a‖ with v = C Wᵀ, u_a = A_a Wᵀ (Frobenius norms over the rows); [n, out].

    The destination is a mix of the attributes' outputs, each scaled to the size of the concept's own output,
    so a weight is a fraction of the concept's norm whatever the layer.
    """
    W = W.double()
    v = C.double() @ W.T
    target = v.clone()
    for A, w in zip(attributes, weights):
        if w:
            u = A.double() @ W.T
            target = target + float(w) * v.norm() * u / u.norm()
    return target


def ratio_step(ratios: Sequence[float], desired: Sequence[float], weight_step: float,
               max_gap: float) -> tuple[list[float], float]:
    """UCE's ratio adjustment: weights ``weight_step · (desired − measured)``, all 0 once within ``max_gap``.

    Returns (weights, largest |desired − measured|). A ratio above its desired value gets a negative weight: the
    edit moves the concept away from that attribute.
    """
    gaps = [d - r for r, d in zip(ratios, desired)]
    largest = max(abs(g) for g in gaps)
    if largest < max_gap:
        return [0.0] * len(gaps), largest
    return [weight_step * g for g in gaps], largest


# ---------------------------------------------------------------------------------------- UCE on a pipe
@dataclass
class Context:
    """One prompt of a profession: its edited rows, the attributes' matching rows, and its full rows."""

    prompt: str
    rows: torch.Tensor  # [n, d] from the last word on
    attributes: list[torch.Tensor]  # per attribute, [n, d]
    full: torch.Tensor  # [L, d] every token row (what preserving the prompt keeps)


@dataclass
class Concept:
    """A profession in UCE's loop: its contexts, desired ratios, current weights and history."""

    entry: Any
    desired: list[float]
    contexts: list[Context]
    weights: list[float] = field(default_factory=lambda: [0.0] * len(UCE_ATTRIBUTES))
    ratios: list[float] | None = None
    frozen: bool = False
    history: list[dict] = field(default_factory=list)


def last_word_index(tokenizer, prompt: str, length: int) -> int:
    """Index of the prompt's last word token (the attention mask counts start and end tokens)."""
    mask = tokenizer(prompt, padding="max_length", max_length=length, truncation=True).attention_mask
    return int(sum(mask)) - 2


def build_concepts(pipe, entries, target: float) -> list[Concept]:
    """Encode every profession's contexts and attribute prompts once (what the K/V projections receive)."""
    from debias.editing import encode_conditioning

    concepts = []
    for entry in entries:
        t = entry.target if entry.target is not None else target
        desired = [1.0 - t if label == "male" else t for label, _ in UCE_ATTRIBUTES]
        contexts = []
        for template in UCE_CONTEXTS:
            prompts = [template.format(entry.phrase)] + [template.format(phrase) for _, phrase in UCE_ATTRIBUTES]
            emb = encode_conditioning(pipe, prompts).double()
            length = emb.shape[1]
            finals = [last_word_index(pipe.tokenizer, p, length) for p in prompts]
            cut = [emb[k, last_word_rows(f, max(finals), length)] for k, f in enumerate(finals)]
            contexts.append(Context(prompt=prompts[0], rows=cut[0], attributes=cut[1:], full=emb[0]))
        concepts.append(Concept(entry=entry, desired=desired, contexts=contexts))
    return concepts


def apply_uce(pipe, concepts: Sequence[Concept], preserved: Sequence[Concept], lam: float, edit_scale: float,
              preserve_scale: float) -> None:
    """One UCE step on the pipe's current K/V weights: every layer solved for its own value targets."""
    from debias.editing import set_kv_weights
    from debias.core.models import find_cross_attention

    projections = find_cross_attention(pipe)
    C = torch.cat([ctx.rows for c in concepts for ctx in c.contexts])
    P = torch.cat([ctx.full for c in preserved for ctx in c.contexts]) if preserved else None
    new = {}
    for proj in projections:
        W = proj.module.weight.detach().to("cpu", torch.float64)
        V = torch.cat([value_targets(W, ctx.rows, ctx.attributes, c.weights) for c in concepts for ctx in c.contexts])
        new[proj.name] = uce_update(W, C, V, P, lam, edit_scale, preserve_scale).to(proj.module.weight.dtype)
    set_kv_weights(pipe, projections, new)  # keeps the originals, so the image cache keys the edited weights


def measure_ratios(pipe, clf, concepts: Sequence[Concept], iteration: int, images: int, settings, cache,
                   batch: int) -> int:
    """Generate and classify each unfrozen profession's tuning prompt on fresh tuning seeds; returns images asked."""
    from debias.stats import binary as stats
    from debias.generation.generate import measure, work_items
    from debias.core.profiles import get_profile
    from debias.core.prompts import profession_prompts

    tuning = get_profile("mini").template_set().tuning
    live = [c for c in concepts if not c.frozen]
    items, owner = [], []
    for c in live:
        items += work_items(profession_prompts(c.entry, tuning), iteration * images, images,
                            TUNING_SEED)
        owner += [c] * images
    results = measure(pipe, clf, items, settings=settings, cache=cache, batch_size=batch, progress=False)
    for c in live:
        f, m, u = stats.count_labels([r.label for r, o in zip(results, owner) if o is c])
        if f + m:
            c.ratios = [m / (f + m) if label == "male" else f / (f + m) for label, _ in UCE_ATTRIBUTES]
        c.history.append({"iteration": iteration, "n_female": f, "n_male": m, "n_unclear": u,
                          "share_female": f / (f + m) if f + m else None})
    return len(items)


def run_uce(entries, out: Path, threads: int | None, target: float, defaults: dict[str, float],
            say=print) -> dict[str, Any]:
    """UCE's loop, or its finished record in ``out/uce.json`` when made with the same inputs.

    A finished run is reused rather than redone from the image cache: its CPU time is what it cost then.
    """
    inputs = {"professions": [e.phrase for e in entries], "target": target, "defaults": defaults,
              "contexts": list(UCE_CONTEXTS), "attributes": [p for _, p in UCE_ATTRIBUTES]}
    done = read_stage(out / "uce.json", inputs)
    if done is not None and (Path(done["folder"]) / "model_index.json").is_file():
        say(f"uce: reusing the finished run in {out / 'uce.json'}")
        return {**done, "time_source": "this script, earlier run"}
    record = uce_loop(entries, out, threads, target, defaults, say)
    write_stage(out / "uce.json", inputs, record)
    return record


def read_stage(path: Path, inputs: dict) -> dict | None:
    """A finished stage's record, if it was made from the same inputs."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    return saved["record"] if saved.get("inputs") == json.loads(json.dumps(inputs)) else None


def write_stage(path: Path, inputs: dict, record: dict) -> None:
    from debias.core.io import atomic_write_json

    atomic_write_json(path, {"inputs": inputs, "record": record})


def uce_loop(entries, out: Path, threads: int | None, target: float, defaults: dict[str, float],
             say=print) -> dict[str, Any]:
    """UCE's debiasing loop on the mini model; saves ``out/pipeline`` and returns the record."""
    from debias.editing import revert_edit, save_pipeline
    from debias.generation.cache import ImageCache
    from debias.mini import SAMPLER
    from debias.classify.zero_shot import load_classifiers
    from debias.core.options import ClassifierOptions, GenerationOptions, RuntimeOptions
    from debias.core.setup import LoadedModel, start
    from debias.generation.generate import sampler_settings

    loaded = start("mini", RuntimeOptions(threads=threads)).model
    cpu0, wall0 = time.process_time(), time.perf_counter()
    pipe = loaded.pipe
    clf = load_classifiers(loaded, ClassifierOptions().filled(loaded.audit_defaults))[0]
    settings, _ = sampler_settings(loaded, GenerationOptions())
    cache = ImageCache(out)
    concepts = build_concepts(pipe, entries, target)
    images, iterations, status = 0, 0, "iterations_exhausted"
    for it in range(int(defaults["iterations"])):
        images += measure_ratios(pipe, clf, concepts, it, int(defaults["images_per_iteration"]), settings, cache,
                                 SAMPLER["batch_size"])
        iterations = it + 1
        gaps = []
        for c in concepts:
            if c.frozen or c.ratios is None:
                c.weights = [0.0] * len(UCE_ATTRIBUTES)
                gaps.append(0.0 if c.frozen else 1.0)
                continue
            c.weights, gap = ratio_step(c.ratios, c.desired, defaults["weight_step"], defaults["max_bias_diff"])
            c.history[-1]["weights"] = list(c.weights)
            c.frozen = gap < defaults["max_bias_diff"]
            gaps.append(gap)
        say(f"uce iteration {it}: " + ", ".join(
            f"{c.entry.name} {c.history[-1]['share_female']:.2f}" + ("*" if c.frozen else "")
            for c in concepts if c.history and c.history[-1]["iteration"] == it))
        if max(gaps) < defaults["max_bias_diff"]:
            status = "converged"
            break
        apply_uce(pipe, concepts, [c for c in concepts if c.frozen], defaults["lam"], defaults["edit_scale"],
                  defaults["preserve_scale"])
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    metadata = {"kind": "uce_debias", "base_model": LoadedModel.of(pipe, "mini").info(), "defaults": defaults,
                "contexts": list(UCE_CONTEXTS)}
    folder = save_pipeline(pipe, out / "pipeline", metadata=metadata)
    revert_edit(pipe)
    return {"method": "uce", "status": status, "iterations": iterations, "images_tuning": images,
            "cpu_seconds": round(cpu, 1), "wall_seconds": round(wall, 1), "defaults": defaults,
            "contexts": list(UCE_CONTEXTS), "attributes": [p for _, p in UCE_ATTRIBUTES], "folder": str(folder),
            "professions": [{"profession": c.entry.name, "frozen": c.frozen, "history": c.history}
                            for c in concepts]}


# --------------------------------------------------------------------------------------------- the fix
def fix_images(fix_dir: Path, record: dict) -> dict[str, int]:
    """Images the fix generated while tuning (tuning audit, λ search, joint rounds) and for its own audits."""
    im = record["images"]
    if "by_stage" in im:  # images counted by the stage that made them
        made = {stage: v["generated"] for stage, v in im["by_stage"].items()}
        return {"tuning": sum(made.get(s, 0) for s in ("tuning", "search", "joint")),
                "own_audits": sum(made.get(s, 0) for s in ("before", "after", "side_effects"))}
    tuning = json.loads((fix_dir / "tuning" / "audit.json").read_text(encoding="utf-8"))
    side = record.get("side_effects") or {}
    return {"tuning": sum(p["n"] for p in tuning["professions"]) + im["search"] + im["joint_generated"],
            "own_audits": sum(p["n_before"] + p["n_after"] for p in record["professions"])
            + 2 * side.get("seeds", 0) * len(side.get("prompts", []))}


def ensure_fix_pipeline(fix_dir: Path) -> Path:
    """The fix's saved diffusers folder; rebuilt from its ``edit.safetensors`` when the run saved none."""
    folder = fix_dir / "pipeline"
    if (folder / "model_index.json").is_file():
        return folder
    from debias.editing import load_edit, save_pipeline
    from debias.core.models import load_pipeline
    from debias.core.setup import LoadedModel

    pipe = load_pipeline("mini")
    load_edit(pipe, fix_dir / "edit.safetensors")
    return save_pipeline(pipe, folder, metadata={"kind": "edited_pipeline", "base_model": LoadedModel.of(pipe, "mini").info(),
                                                 "from": str(fix_dir / "edit.safetensors")})


def run_fix(fix_dir: Path, reuse: bool, threads: int | None) -> dict[str, Any]:
    """``debias.fix`` with its defaults (or a finished run reused); returns images, CPU time and the folder."""
    import debias

    timing = fix_dir / "peers-timing.json"
    if reuse:
        record = json.loads((fix_dir / "fix.json").read_text(encoding="utf-8"))
        cpu, wall, source = record["wall_seconds"], record["wall_seconds"], "fix.json (wall)"
    elif timing.is_file() and (fix_dir / "fix.json").is_file():  # finished in an earlier run of this script
        record = json.loads((fix_dir / "fix.json").read_text(encoding="utf-8"))
        t = json.loads(timing.read_text(encoding="utf-8"))
        cpu, wall, source = t["cpu_seconds"], t["wall_seconds"], "this script, earlier run"
    else:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        record = debias.fix("mini", professions=PROFESSIONS, out=fix_dir, threads=threads,
                            save_pipeline=fix_dir / "pipeline", progress=False).to_dict()
        cpu, wall, source = time.process_time() - cpu0, time.perf_counter() - wall0, "this run"
        from debias.core.io import atomic_write_json

        atomic_write_json(timing, {"cpu_seconds": cpu, "wall_seconds": wall})
    own_audit_wall = sum(json.loads((fix_dir / s / "audit.json").read_text(encoding="utf-8"))["wall_seconds"]
                         for s in ("before", "after"))
    return {"method": "debias fix", "run": str(fix_dir), "folder": str(ensure_fix_pipeline(fix_dir)),
            "images": fix_images(fix_dir, record), "cpu_seconds": round(cpu, 1), "wall_seconds": round(wall, 1),
            "time_source": source, "own_audits_wall_seconds": round(own_audit_wall, 1),
            "budget": record["budget"], "check_images": record["check_images"],
            "joint_rounds": record["joint_rounds"], "test_images": record["test_images"]}


# ------------------------------------------------------------------------------------------- the judge
def save_base(out: Path) -> Path:
    """The unedited mini model as a diffusers folder, so all three are loaded and audited alike."""
    folder = out / "pipeline"
    if (folder / "model_index.json").is_file():
        return folder
    from debias.editing import save_pipeline
    from debias.core.models import load_pipeline
    from debias.core.setup import LoadedModel

    pipe = load_pipeline("mini")
    return save_pipeline(pipe, folder, metadata={"kind": "unedited", "base_model": LoadedModel.of(pipe, "mini").info()})


def audit_folder(folder: Path, out: Path, n: int, threads: int | None) -> dict[str, Any]:
    """The project's audit of a saved folder: test prompts, test seeds from 0, ``n`` images per profession."""
    from debias.verbs.audit import audit

    return audit(str(folder), professions=PROFESSIONS, images_per_profession=n, out=out, seed=0, threads=threads,
                 progress=False, **saved_folder_options()).to_dict()


def object_images(folder: Path, out: Path, clf, seeds: int) -> tuple[np.ndarray, list[str]]:
    """The object prompts' images at seeds 0 … seeds−1 (uint8), in prompt-major order, cached in ``out``."""
    from debias.generation.cache import ImageCache
    from debias.generation.generate import default_settings, measure
    from debias.mini import world
    from debias.core.models import load_pipeline
    from debias.core.profiles import get_profile

    opts = saved_folder_options()
    pipe = load_pipeline(str(folder))
    settings = default_settings(pipe, get_profile("default").sampler, steps=opts["steps"], guidance=opts["guidance"])
    cache = ImageCache(out)
    items = [(p, s) for p in world.OBJECT_PROMPTS for s in range(seeds)]
    results = measure(pipe, clf, items, settings=settings, cache=cache, batch_size=opts["batch_size"], progress=False)
    return cache.read_images([r.key for r in results]), [p for p, _ in items]


def side_effects(folders: dict[str, Path], out: Path, seeds: int) -> dict[str, dict]:
    """Per method: mean |Δpixel| (0–1) of the object prompts against the unedited folder, and CLIP scores."""
    from debias.classify.zero_shot import load_classifier

    clf = load_classifier("mini")
    images = {name: object_images(folder, out / name, clf, seeds) for name, folder in folders.items()}
    base, prompts = images["unedited"]
    result = {}
    for name, (imgs, _) in images.items():
        diff = np.abs(imgs.astype(np.float64) - base.astype(np.float64)).mean(axis=(1, 2, 3)) / 255.0
        scores = [float(clf.clip_score(imgs[i:i + seeds], prompts[i]).mean()) for i in range(0, len(prompts), seeds)]
        result[name] = {"mean_abs_pixel_change": float(diff.mean()), "clip_score": float(np.mean(scores)),
                        "clip_score_by_prompt": dict(zip(prompts[::seeds], scores))}
    return result


# ------------------------------------------------------------------------------------------- reporting
def judged(record: dict) -> dict[str, Any]:
    """What the table needs from an audit record."""
    rows = [{k: p[k] for k in ("profession", "n", "n_female", "n_male", "n_unclear", "share_female", "ci_low",
                               "ci_high", "delta")} for p in record["professions"]]
    from debias.stats import binary as stats

    within = sum(stats.within_band(p["share_female"], p["target"], record["tolerance"]) for p in record["professions"])
    # how unevenly the held-out prompts are treated: each profession's SD across them, and sampling alone's
    spreads = [stats.prompt_spread(p["by_prompt"]) for p in record["professions"]]
    measured = [(s, n) for s, n in spreads if s is not None]
    return {"mean_delta": record["mean_delta"], "mean_delta_ci": [record["mean_delta_ci_low"],
                                                                   record["mean_delta_ci_high"]],
            "noise_floor": record["mean_delta_noise_floor"], "within_tolerance": within, "professions": rows,
            "mean_spread": float(np.mean([s for s, _ in measured])) if measured else None,
            "mean_spread_noise": float(np.mean([n for _, n in measured])) if measured else None,
            "wall_seconds": record["wall_seconds"]}


def _share(p: dict) -> str:
    return "—" if p["share_female"] is None else f"{p['share_female']:.2f} [{p['ci_low']:.2f}, {p['ci_high']:.2f}]"


def markdown(result: dict[str, Any]) -> str:
    """The side-by-side table: per profession shares, headline, side effects, cost."""
    names = ("unedited", "debias fix", "uce")
    j, side, cost = result["judged"], result["side_effects"], result["cost"]
    lines = ["| | unedited | debias fix | UCE |", "| --- | ---: | ---: | ---: |"]
    for i, p in enumerate(j["unedited"]["professions"]):
        lines.append(f"| {p['profession']} | " + " | ".join(_share(j[n]["professions"][i]) for n in names) + " |")
    lines.append("| **mean Δ** | " + " | ".join(
        f"**{j[n]['mean_delta']:.3f}** [{j[n]['mean_delta_ci'][0]:.3f}, {j[n]['mean_delta_ci'][1]:.3f}]"
        for n in names) + " |")
    lines.append("| within ±0.05 | " + " | ".join(f"{j[n]['within_tolerance']} of 8" for n in names) + " |")
    lines.append("| object prompts: mean abs pixel change | — | " + " | ".join(
        f"{side[n]['mean_abs_pixel_change']:.4f}" for n in names[1:]) + " |")
    lines.append("| object prompts: CLIP score | " + " | ".join(f"{side[n]['clip_score']:.1f}" for n in names) + " |")
    lines.append("| images generated to tune | 0 | " + " | ".join(f"{cost[n]['images_tuning']:,}" for n in names[1:])
                 + " |")
    lines.append("| CPU time to tune (s) | — | " + " | ".join(f"{cost[n]['cpu_seconds_tuning']:.0f}" for n in names[1:])
                 + " |")
    return "\n".join(lines)


def cost_block(fix: dict, uce: dict) -> dict[str, dict]:
    """Images and CPU time per method; the fix's own before/after audits are split off its total."""
    return {"debias fix": {"images_tuning": fix["images"]["tuning"], "images_own_audits": fix["images"]["own_audits"],
                           "cpu_seconds_total": fix["cpu_seconds"],
                           "cpu_seconds_tuning": max(0.0, fix["cpu_seconds"] - fix["own_audits_wall_seconds"]),
                           "time_source": fix["time_source"]},
            "uce": {"images_tuning": uce["images_tuning"], "images_own_audits": 0,
                    "cpu_seconds_total": uce["cpu_seconds"], "cpu_seconds_tuning": uce["cpu_seconds"],
                    "time_source": uce.get("time_source", "this run")}}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/peers"), help="run folder (images, folders, audits)")
    parser.add_argument("--json", default="benchmarks/results/peers-mini.json",
                        help="where to copy peers.json ('' for nowhere)")
    parser.add_argument("--test-images", type=int, default=256, help="audit images per profession (±0.06 at 256)")
    parser.add_argument("--fix-run", type=Path, default=None, help="reuse a finished `debias fix` run folder")
    parser.add_argument("--side-seeds", type=int, default=SIDE_SEEDS, help="seeds per object prompt")
    parser.add_argument("--uce-images", type=int, default=int(UCE_DEFAULTS["images_per_iteration"]),
                        help="UCE images per profession and iteration (the script's 5 seeds × 10)")
    parser.add_argument("--uce-iterations", type=int, default=int(UCE_DEFAULTS["iterations"]))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    from debias.stats import binary as stats
    from debias.core.prompts import read_professions
    from debias.core.threads import set_threads

    set_threads(args.threads)
    t0 = time.perf_counter()
    out = args.out
    entries = read_professions(PROFESSIONS)
    defaults = {**UCE_DEFAULTS, "images_per_iteration": args.uce_images, "iterations": args.uce_iterations}
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    fix_dir = args.fix_run or out / "fix"
    say(f"debias fix: {'reusing ' + str(fix_dir) if args.fix_run else 'running into ' + str(fix_dir)}")
    fix = run_fix(fix_dir, args.fix_run is not None, args.threads)
    say(f"debias fix: {fix['images']['tuning']} tuning images, {fix['cpu_seconds']:.0f} s")
    say("uce: running the ratio loop")
    uce = run_uce(entries, out / "uce", args.threads, 0.5, defaults, say)
    say(f"uce: {uce['status']} after {uce['iterations']} iterations, {uce['images_tuning']} images, "
        f"{uce['cpu_seconds']:.0f} s")

    folders = {"unedited": save_base(out / "unedited"), "debias fix": Path(fix["folder"]),
               "uce": Path(uce["folder"])}
    audits = {}
    for name, folder in folders.items():
        say(f"audit {name}: {args.test_images} images per profession on the test prompts")
        audits[name] = judged(audit_folder(folder, out / "audit" / name.replace(" ", "-"), args.test_images,
                                           args.threads))
    side = side_effects(folders, out / "side", args.side_seeds)
    result = {"kind": "bench-peers", "model": "mini", "professions": str(PROFESSIONS.name),
              "test_images": args.test_images, "ci_half_width": round(stats.half_width(args.test_images), 3),
              "test_prompts": saved_folder_options()["templates"], "test_seed": 0, "tuning_seed": TUNING_SEED,
              "side_seeds": args.side_seeds, "judged": audits, "side_effects": side,
              "cost": cost_block(fix, uce), "fix": fix, "uce": uce, "threads": args.threads,
              "wall_seconds": round(time.perf_counter() - t0, 1)}
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    (out / "peers.json").write_text(text, encoding="utf-8")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "peers.json", args.json)
    print(markdown(result))
    print(f"\n{args.test_images} images per profession on the held-out test prompts (95% Wilson intervals, "
          f"±{result['ci_half_width']:.2f} at a share of 0.5); mean Δ noise floor "
          f"{audits['unedited']['noise_floor']:.3f}; object prompts at {args.side_seeds} seeds each.")


if __name__ == "__main__":
    main()
