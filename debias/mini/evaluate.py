"""Measure the mini model against its planted ground truth.

``python -m debias.mini.evaluate [--n 200]`` prints, per profession: the planted female share, the
share the pixel-rule oracle reads off generated images, the share the mini CLIP reads, their
agreement on generated people, and the generation speed. The same functions serve ``train.py``
(its closing measurements) and the tests.

Images are made and read the way an audit makes and reads them: :func:`debias.generation.generate.generate_images`
(image i of a prompt from its own generator seeded ``seed + i``) and the zero-shot classifier of
:func:`debias.classify.zero_shot.load_classifier`, here without abstaining (``min_confidence=0.5``) so that every
image counts towards the "clip" share.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..core.io import atomic_write, atomic_write_json
from ..core.options import ClassifierOptions
from ..core.threads import set_threads
from . import CLASSIFIER_DIR, SAMPLER, V2_WEIGHTS_DIR, WEIGHTS_DIR, world, world2


def sampler_settings(pipe, steps: int = 10, guidance: float = 1.0):
    """The package's sampler settings for the mini pipeline: its own scheduler, 32×32, float32 on the CPU."""
    # deferred, like torch in this module: the pipeline stack loads only when a model is evaluated
    from ..generation.generate import SamplerSettings

    return SamplerSettings(scheduler=type(pipe.scheduler).__name__, steps=int(steps), guidance=float(guidance),
                           height=world.SIZE, width=world.SIZE, dtype="float32", device="cpu")


def generate(pipe, prompt: str, n: int, seed: int = 0, steps: int = 10, guidance: float = 1.0,
             batch_size: int = 64) -> np.ndarray:
    """``n`` images of one prompt as uint8 [n,32,32,3]; image i uses seed ``seed + i``, as in an audit."""
    # deferred, like torch in this module: the pipeline stack loads only when a model is evaluated
    from ..generation.generate import generate_images

    settings = sampler_settings(pipe, steps, guidance)
    out = []
    for start in range(0, n, batch_size):
        seeds = list(range(seed + start, seed + min(start + batch_size, n)))
        out.append(generate_images(pipe, [prompt] * len(seeds), seeds, settings))
    return np.concatenate(out)


def load_mini_classifier(folder: str | Path | None = None):
    """The package's zero-shot classifier on a mini CLIP folder (default: the shipped one), reading every image."""
    # deferred, like torch in this module: the pipeline stack loads only when a model is evaluated
    from ..classify.zero_shot import load_classifier

    return load_classifier(str(folder or CLASSIFIER_DIR), ClassifierOptions(min_confidence=0.5))


def measure_professions(pipe, classifier, n: int = 64, seed: int = 0, steps: int = 10,
                        guidance: float = 1.0, template: str = world.TUNING_TEMPLATE,
                        batch_size: int = 64) -> tuple[list[dict], float]:
    """Per-profession rows (planted / oracle / CLIP share, agreement) and images per second."""
    rows, seconds, count = [], 0.0, 0
    for prof in world.PROFESSIONS:
        t0 = time.perf_counter()
        imgs = generate(pipe, template.format(prof.phrase), n, seed, steps, guidance, batch_size)
        seconds += time.perf_counter() - t0
        count += n
        oracle = np.asarray(world.oracle_gender(imgs))
        clip = np.asarray(classifier.classify(imgs)[0])
        people = oracle != "unclear"
        rows.append({
            "profession": prof.name,
            "planted": prof.planted_share,
            "oracle": float((oracle[people] == "female").mean()) if people.any() else None,
            "clip": float((clip == "female").mean()),
            "agreement": float((clip[people] == oracle[people]).mean()) if people.any() else None,
            "unclear": float((~people).mean()),
            "profession_read": float(np.mean([p == prof.name for p in world.oracle_profession(imgs)])),
        })
    return rows, count / max(seconds, 1e-9)


def format_table(rows: list[dict], images_per_s: float) -> str:
    lines = [f"{'profession':<10} {'planted':>7} {'oracle':>7} {'clip':>7} {'agree':>7} {'unclear':>7} {'prof':>5}"]
    for r in rows:
        f = {k: ("-" if v is None else f"{v:.2f}") for k, v in r.items() if k != "profession"}
        lines.append(f"{r['profession']:<10} {f['planted']:>7} {f['oracle']:>7} {f['clip']:>7} "
                     f"{f['agreement']:>7} {f['unclear']:>7} {f['profession_read']:>5}")
    lines.append(f"generation: {images_per_s:.1f} images/s")
    return "\n".join(lines)


def measure_attributes(pipe, classifier, n: int = 64, seed: int = 0, template: str = world.TUNING_TEMPLATE,
                       professions=None, steps: int = 10, guidance: float = 1.0) -> dict:
    """Mini world v2 against its ground truth: per profession and attribute, planted / oracle / CLIP shares.

    Each attribute is read by the classifier as an audit reads it (gender with the classifier's own labels, skin
    and age with the built-in attributes' label prompts) and by the v2 pixel oracle. Shares are over every image
    for CLIP and over the images the oracle could read for the oracle; ``agreement`` is over those images too.
    The summary per attribute pools the professions: agreement, and the correlation of CLIP's class shares with
    the planted ones (and with the oracle's) over professions × classes.
    """
    rows = []
    professions = list(professions or world2.PROFESSIONS)
    readers = {name: (classifier if name == "gender" else classifier.for_attribute(attr))
               for name, attr in world2.ATTRIBUTES.items()}
    for prof in professions:
        imgs = generate(pipe, template.format(prof.phrase), n, seed, steps, guidance)
        truth = world2.oracle(imgs)
        for name, attr in world2.ATTRIBUTES.items():
            clip = np.asarray(readers[name].classify(imgs)[0])
            oracle = np.asarray([t[name] for t in truth])
            clear = oracle != "unclear"
            rows.append({
                "profession": prof.name, "attribute": name, "classes": list(attr.class_names),
                "planted": list(prof.planted(name)),
                "oracle": [float((oracle[clear] == c).mean()) if clear.any() else None for c in attr.class_names],
                "clip": [float((clip == c).mean()) for c in attr.class_names],
                "agree": int((clip[clear] == oracle[clear]).sum()), "clear": int(clear.sum()), "n": n,
            })
    return {"n": n, "seed": seed, "template": template, "steps": steps, "guidance": guidance, "rows": rows,
            "summary": attribute_summary(rows)}


def _correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson's r, or None where it is undefined (fewer than 3 points, or a constant side)."""
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def attribute_summary(rows: list[dict]) -> dict:
    """Per attribute: pooled CLIP–oracle agreement, and r(planted, CLIP), r(planted, oracle) and r(oracle, CLIP)
    over professions × classes.

    The three correlations split the audit's error: r(planted, oracle) is the generator's (does it draw the shares
    it was trained on, as far as the pixel oracle can tell?), r(oracle, CLIP) the classifier's (does it read what
    was drawn?), r(planted, CLIP) both.
    """
    out = {}
    for name in dict.fromkeys(r["attribute"] for r in rows):
        mine = [r for r in rows if r["attribute"] == name]
        planted = np.concatenate([r["planted"] for r in mine])
        clip = np.concatenate([r["clip"] for r in mine])
        oracle = np.concatenate([[np.nan if v is None else v for v in r["oracle"]] for r in mine])
        ok = ~np.isnan(oracle)
        out[name] = {
            "agreement": sum(r["agree"] for r in mine) / max(1, sum(r["clear"] for r in mine)),
            "unclear": 1 - sum(r["clear"] for r in mine) / sum(r["n"] for r in mine),
            "r_planted_clip": _correlation(planted, clip),
            "r_planted_oracle": _correlation(planted[ok], oracle[ok]),
            "r_oracle_clip": _correlation(oracle[ok], clip[ok]),
        }
    return out


def format_attributes(measured: dict) -> str:
    """The v2 table: one line per profession and attribute, then the summary per attribute."""
    def shares(values) -> str:
        return "/".join("-" if v is None else f"{v:.2f}" for v in values)

    def num(v) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines = [f"{'profession':<10} {'attribute':<7} {'planted':>16} {'oracle':>16} {'clip':>16} {'agree':>6}"]
    for r in measured["rows"]:
        agree = r["agree"] / r["clear"] if r["clear"] else float("nan")
        lines.append(f"{r['profession']:<10} {r['attribute']:<7} {shares(r['planted']):>16} "
                     f"{shares(r['oracle']):>16} {shares(r['clip']):>16} {agree:>6.2f}")
    for name, s in measured["summary"].items():
        lines.append(f"{name}: agreement {num(s['agreement'])}, unclear {num(s['unclear'])}, "
                     f"r(planted, clip) {num(s['r_planted_clip'])}, r(planted, oracle) "
                     f"{num(s['r_planted_oracle'])}, r(oracle, clip) {num(s['r_oracle_clip'])}")
    return "\n".join(lines)


def lambda_sweep(pipe, source: str = "a nurse", destination: str = "a male nurse",
                 lams: tuple[float, ...] = (1e4, 3e3, 1e3, 300.0, 100.0, 30.0, 10.0), n: int = 64, seed: int = 0,
                 steps: int = 10, guidance: float = 1.0, other: str = "a teacher") -> list[dict]:
    """TIME edit ``source → destination`` at each λ (as a conditioning transform, weights untouched).

    Per λ: the oracle's female share of the edited prompt, of another profession (should stay put)
    and of the destination itself. Same seeds at every λ (common random numbers), so the curve is
    smooth; λ = inf is the unedited model.
    """
    # deferred, like torch in this module: the pipeline stack loads only when a model is evaluated
    from ..editing import conditioning_transform, edit_from_prompts

    def share(prompt: str) -> float:
        labels = np.asarray(world.oracle_gender(generate(pipe, prompt, n, seed, steps, guidance)))
        people = labels != "unclear"
        return float((labels[people] == "female").mean()) if people.any() else float("nan")

    tpl = world.TUNING_TEMPLATE
    rows = [{"lambda": float("inf"), "source": share(tpl.format(source)), "other": share(tpl.format(other)),
             "destination": share(tpl.format(destination))}]
    for lam in lams:
        M, _ = edit_from_prompts(pipe, [(source, destination)], lam=lam, augmentations=world.AUGMENTATIONS)
        with conditioning_transform(pipe, M.float()):
            rows.append({"lambda": lam, "source": share(tpl.format(source)), "other": share(tpl.format(other)),
                         "destination": share(tpl.format(destination))})
    return rows


def format_sweep(rows: list[dict], source: str, destination: str, other: str) -> str:
    lines = [f"TIME edit {source!r} -> {destination!r}: oracle female share of {world.TUNING_TEMPLATE!r}",
             f"{'lambda':>8} {source:>14} {other:>14} {destination:>14}"]
    for r in rows:
        lines.append(f"{r['lambda']:>8.0f} {r['source']:>14.2f} {r['other']:>14.2f} {r['destination']:>14.2f}")
    return "\n".join(lines)


def sample_grid(pipe, path: str | Path, per_row: int = 10, seed: int = 0, steps: int = 10,
                guidance: float = 1.0, scale: int = 3) -> Path:
    """Save a PNG grid: one row per profession (tuning template) plus one of objects."""
    from PIL import Image

    rows = [generate(pipe, world.TUNING_TEMPLATE.format(p.phrase), per_row, seed, steps, guidance)
            for p in world.PROFESSIONS]
    objects = [generate(pipe, prompt, per_row // len(world.OBJECT_PROMPTS) + 1, seed, steps, guidance)
               for prompt in world.OBJECT_PROMPTS]
    rows.append(np.concatenate(objects)[:per_row])
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    image = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def load(weights: str | Path | None = None, v2: bool = False):
    """(pipeline, zero-shot classifier) of a mini-model folder (default: the shipped weights of v1, or of v2)."""
    import torch
    from diffusers import StableDiffusionPipeline

    root = Path(weights) if weights else (V2_WEIGHTS_DIR if v2 else WEIGHTS_DIR)
    pipe = StableDiffusionPipeline.from_pretrained(root / "pipeline", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe, load_mini_classifier(root / "classifier")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="images per profession")
    ap.add_argument("--weights", default=None, help="a mini-model folder (default: the shipped weights)")
    ap.add_argument("--world", choices=("v1", "v2"), default="v1",
                    help="v2: measure gender, skin and age against mini world v2's oracle (default weights: mini-v2)")
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--grid", default=None, metavar="PNG", help="also save a grid of samples")
    ap.add_argument("--json", default=None, metavar="FILE", help="v2: also write the measurements as JSON")
    ap.add_argument("--sweep", action="store_true", help="also sweep λ of a TIME edit a nurse -> a male nurse")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    pipe, classifier = load(args.weights, v2=args.world == "v2")
    steps = args.steps or SAMPLER["steps"]
    guidance = SAMPLER["guidance"] if args.guidance is None else args.guidance
    print(f"sampler: {type(pipe.scheduler).__name__}, {steps} steps, guidance {guidance}, n={args.n}, "
          f"template {world.TUNING_TEMPLATE!r}")
    if args.world == "v2":
        measured = measure_attributes(pipe, classifier, n=args.n, seed=args.seed, steps=steps, guidance=guidance)
        print(format_attributes(measured))
        if args.json:
            print(f"wrote {atomic_write_json(args.json, measured)}")
        return
    rows, ips = measure_professions(pipe, classifier, n=args.n, seed=args.seed, steps=steps, guidance=guidance)
    print(format_table(rows, ips))
    if args.grid:
        print(f"wrote {sample_grid(pipe, args.grid, seed=args.seed, steps=steps, guidance=guidance)}")
    if args.sweep:
        sweep = lambda_sweep(pipe, n=min(args.n, 64), seed=args.seed, steps=steps, guidance=guidance)
        print(format_sweep(sweep, "a nurse", "a male nurse", "a teacher"))


if __name__ == "__main__":
    main()
