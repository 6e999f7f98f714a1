"""Images per second of the audit's generation against the loop a user would write, and what batching does to pixels.

    python benchmarks/throughput.py [--threads 1] [--repeats 3] [--skip-sd]

Two arms on the same pipeline object, in the same process, interleaved (the order alternates every repetition,
and each repetition draws fresh seeds, so a slow moment of a shared machine lands on both arms):

* **audit**: :func:`debias.generation.generate.measure` as ``debias audit`` calls it — batches of the profile's batch size,
  one ``torch.Generator`` per image, PNGs and the index written to a fresh run folder, the classifier on each
  batch (and the mini world's pixel oracle);
* **hand-written**: ``pipe(prompt, generator=torch.Generator().manual_seed(seed))`` once per image, the pixels
  rounded to 8 bits, then the same classifier called on that image.

Each arm is timed with and without classification: the time inside the pipeline call
(:func:`debias.generation.generate._pipeline_call` for the audit, ``pipe(...)`` for the loop) is "generation", the whole
loop is "with classification". Models:

* the built-in mini model with its profile's settings (DPM-Solver 10 steps, 32×32, batch 64) and mini CLIP;
* an SD 1.5-shaped pipeline with random weights (``rehearsal.build_sd15``: the published UNet, VAE and CLIP
  ViT-L/14 text encoder configurations) at 64×64, 2 steps, guidance 7.5 (the default profile's), batch 4 (the
  CPU default), classified by a random CLIP ViT-B/32.

Determinism: the same items generated with :func:`debias.generation.generate.generate_images` at batch sizes 1, 4, 16 (and
64 on the mini model), compared with batch size 1: the largest difference in 8-bit levels, how many values and
images differ, and how many labels change. The hand-written loop's images (one per call) are compared with the
audit's at batch size 1, bit for bit. On the random SD-shaped model the labels mean nothing; its |Δ p_female|
says how much the classifier's input moved.

Writes ``benchmarks/results/throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import debias.generation.generate as generate  # noqa: E402
from debias.generation.cache import ImageCache  # noqa: E402
from debias.generation.generate import generate_images, measure, to_uint8, use_scheduler, work_items  # noqa: E402

# OpenAI CLIP ViT-B/32's shape (https://huggingface.co/openai/clip-vit-base-patch32, config.json): a light image tower
VIT_B_32 = dict(text=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12),
                vision=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                            image_size=224, patch_size=32), projection_dim=512, logit_scale=100.0)
TARGETS = {"mini": 1.5, "sd15-shaped": 1.0}  # audit images/s ÷ hand-written images/s, with classification


class PipelineTimer:
    """Seconds spent inside the audit's pipeline calls (wraps ``debias.generation.generate._pipeline_call``)."""

    def __init__(self):
        self.seconds = 0.0
        self._call = generate._pipeline_call

    def __enter__(self) -> "PipelineTimer":
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return self._call(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        generate._pipeline_call = timed
        return self

    def __exit__(self, *exc) -> None:
        generate._pipeline_call = self._call


def run_audit(model, items, folder: Path) -> dict:
    """``measure`` on ``items`` into a fresh cache; returns times and the uint8 images in item order."""
    cache = ImageCache(folder)
    with PipelineTimer() as timer:
        start = time.perf_counter()
        results = measure(model["pipe"], model["classifier"], items, settings=model["settings"], cache=cache,
                          batch_size=model["batch"], oracle=model["oracle"], progress=False)
        wall = time.perf_counter() - start
    return {"wall": wall, "generation": timer.seconds, "images": cache.read_images([r.key for r in results]),
            "labels": [r.label for r in results], "p_female": [r.p_female for r in results]}


def run_by_hand(model, items) -> dict:
    """One pipeline call per image with its own generator, then the classifier on that image."""
    pipe, settings = model["pipe"], model["settings"]
    images, labels, p_female, generation = [], [], [], 0.0
    start = time.perf_counter()
    for prompt, seed in items:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = pipe(prompt, generator=torch.Generator().manual_seed(seed), num_inference_steps=settings.steps,
                       guidance_scale=settings.guidance, height=settings.height, width=settings.width,
                       output_type="np")
        image = to_uint8(out.images)
        generation += time.perf_counter() - t0
        label, p = model["classifier"].classify(image)
        images.append(image[0])
        labels.append(label[0])
        p_female.append(float(p[0]))
    return {"wall": time.perf_counter() - start, "generation": generation, "images": np.stack(images),
            "labels": labels, "p_female": p_female}


def compare_throughput(model, items_per_rep: int, repeats: int, prompts: list[str]) -> dict:
    """Interleaved repetitions of both arms on fresh seeds; per-repetition ratios and their median."""
    reps, runs = [], {"audit": [], "hand": []}
    warm = work_items(prompts, 10_000, min(model["batch"], 4))
    with tempfile.TemporaryDirectory() as tmp:  # first calls allocate and pick kernels: not timed
        run_audit(model, warm, Path(tmp))
    run_by_hand(model, warm[:1])
    for rep in range(repeats):
        items = work_items(prompts, rep * items_per_rep, items_per_rep)
        order = ("audit", "hand") if rep % 2 == 0 else ("hand", "audit")
        result = {}
        for arm in order:
            with tempfile.TemporaryDirectory() as tmp:
                result[arm] = run_audit(model, items, Path(tmp)) if arm == "audit" else run_by_hand(model, items)
            runs[arm].append(result[arm])
        n = len(items)
        reps.append({arm: {"images_per_s": n / r["wall"], "generation_images_per_s": n / r["generation"],
                           "wall_s": r["wall"], "generation_s": r["generation"]} for arm, r in result.items()})
        reps[-1]["ratio"] = result["hand"]["wall"] / result["audit"]["wall"]
        reps[-1]["generation_ratio"] = result["hand"]["generation"] / result["audit"]["generation"]
        print(f"  rep {rep}: audit {reps[-1]['audit']['images_per_s']:.2f} img/s "
              f"(generation {reps[-1]['audit']['generation_images_per_s']:.2f}), by hand "
              f"{reps[-1]['hand']['images_per_s']:.2f} img/s (generation "
              f"{reps[-1]['hand']['generation_images_per_s']:.2f}); ratio {reps[-1]['ratio']:.2f}×, "
              f"generation only {reps[-1]['generation_ratio']:.2f}×", flush=True)
    summary = {key: statistics.median(r[key] for r in reps) for key in ("ratio", "generation_ratio")}
    for arm in ("audit", "hand"):
        for key in ("images_per_s", "generation_images_per_s"):
            summary[f"{arm}_{key}"] = statistics.median(r[arm][key] for r in reps)
    return {"repetitions": reps, "median": summary, "runs": runs}


def image_differences(run: tuple, reference: tuple) -> dict:
    """How ``run`` differs from ``reference``, each ``(uint8 images, labels, p_female)`` of the same items."""
    (images, labels, p), (ref_images, ref_labels, ref_p) = run, reference
    diff = np.abs(images.astype(np.int16) - ref_images.astype(np.int16))
    return {"max_levels": int(diff.max()), "values_differing": int((diff > 0).sum()), "values": int(diff.size),
            "images_differing": int((diff.reshape(len(diff), -1).max(axis=1) > 0).sum()), "images": len(diff),
            "label_changes": int(sum(a != b for a, b in zip(labels, ref_labels))),
            "max_abs_p_female_change": float(np.max(np.abs(np.asarray(p) - np.asarray(ref_p))))}


def determinism(model, items, batch_sizes: tuple[int, ...], by_hand: dict) -> dict:
    """``generate_images`` at each batch size on the same items, compared with batch size 1."""
    sets = {}
    for size in batch_sizes:
        start = time.perf_counter()
        chunks = [generate_images(model["pipe"], [p for p, _ in items[i:i + size]], [s for _, s in items[i:i + size]],
                                  model["settings"]) for i in range(0, len(items), size)]
        images = np.concatenate(chunks)
        labels, p = model["classifier"].classify(images)
        sets[size] = (images, labels, p.tolist())
        print(f"  batch size {size}: {len(items)} images in {time.perf_counter() - start:.1f} s", flush=True)
    ref = sets[1]
    out = {"items": len(items), "labels_at_batch_1": {lab: ref[1].count(lab) for lab in sorted(set(ref[1]))},
           "vs_batch_1": {str(size): image_differences(sets[size], ref)
                                               for size in batch_sizes if size != 1}}
    n = len(by_hand["images"])
    out["hand_written_vs_audit_batch_1"] = image_differences(
        (by_hand["images"], by_hand["labels"], by_hand["p_female"]), tuple(x[:n] for x in ref))
    return out


def load_mini() -> dict:
    from debias.classify.zero_shot import load_classifiers
    from debias.core.options import ClassifierOptions, GenerationOptions
    from debias.core.setup import load_model
    from debias.generation.generate import sampler_settings

    loaded = load_model("mini")
    settings, batch = sampler_settings(loaded, GenerationOptions())
    use_scheduler(loaded.pipe, settings.scheduler)
    from debias.core.prompts import profession_prompts

    templates = loaded.profile.template_set().test
    prompts = [p for e in loaded.profile.default_professions() for p in profession_prompts(e, templates)]
    classifier = load_classifiers(loaded, ClassifierOptions().filled(loaded.audit_defaults))[0]
    return {"pipe": loaded.pipe, "classifier": classifier, "settings": settings, "batch": batch,
            "oracle": loaded.profile.oracle, "prompts": prompts, "describe": "built-in mini model, mini CLIP"}


def load_sd15(folder: Path) -> dict:
    from debias.classify.zero_shot import load_classifier
    from debias.generation.generate import default_batch_size, default_settings
    from debias.core.profiles import get_profile
    from rehearsal import build_sd15, save_random_clip

    pipe, info = build_sd15("full")
    pipe.set_progress_bar_config(disable=True)
    sampler = get_profile("default").sampler
    settings = default_settings(pipe, sampler, steps=2, height=64, width=64)
    use_scheduler(pipe, settings.scheduler)
    classifier = load_classifier(str(save_random_clip(folder / "clip", VIT_B_32)))
    prompts = [t.format(p) for p in ("a nurse", "an engineer") for t in ("A painting of {}", "{} working")]
    return {"pipe": pipe, "classifier": classifier, "settings": settings, "oracle": None, "prompts": prompts,
            "batch": default_batch_size(pipe, sampler, settings), "params": info["params"],
            "describe": "SD 1.5-shaped, random weights; random CLIP ViT-B/32 classifier"}


def bench(name: str, model: dict, items_per_rep: int, repeats: int, batch_sizes: tuple[int, ...]) -> dict:
    s = model["settings"]
    print(f"{name}: {model['describe']}; {s.scheduler} {s.steps} steps, guidance {s.guidance}, {s.height}×{s.width}, "
          f"batch {model['batch']}, {items_per_rep} images × {repeats} repetitions", flush=True)
    result = compare_throughput(model, items_per_rep, repeats, model["prompts"])
    items = work_items(model["prompts"], 0, max(batch_sizes))
    hand = result.pop("runs")["hand"][0]
    record = {"describe": model["describe"], "settings": s.to_dict(), "batch_size": model["batch"],
              "images_per_repetition": items_per_rep, **result, "target_ratio": TARGETS[name],
              "meets_target": result["median"]["ratio"] >= TARGETS[name],
              "determinism": determinism(model, items, batch_sizes, hand)}
    if "params" in model:
        record["params"] = model["params"]
    m = record["median"]
    print(f"{name}: audit {m['audit_images_per_s']:.2f} img/s, by hand {m['hand_images_per_s']:.2f} img/s → "
          f"{m['ratio']:.2f}× (target ≥ {TARGETS[name]}×; generation only {m['generation_ratio']:.2f}×)")
    for size, d in record["determinism"]["vs_batch_1"].items():
        print(f"  batch {size} vs 1: max {d['max_levels']} level(s), {d['values_differing']}/{d['values']} values in "
              f"{d['images_differing']}/{d['images']} images, {d['label_changes']} label change(s), "
              f"max |Δp| {d['max_abs_p_female_change']:.2g}")
    d = record["determinism"]["hand_written_vs_audit_batch_1"]
    print(f"  hand-written vs audit at batch 1: max {d['max_levels']} level(s), {d['label_changes']} label change(s)")
    return record


def main(argv: list[str] | None = None) -> None:
    from debias.core.threads import set_threads

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repetitions per model (mini)")
    ap.add_argument("--sd-repeats", type=int, default=2, help="interleaved repetitions on the SD 1.5-shaped model")
    ap.add_argument("--mini-images", type=int, default=64, help="images per repetition and arm on the mini model")
    ap.add_argument("--sd-images", type=int, default=8, help="images per repetition and arm on the SD-shaped model")
    ap.add_argument("--skip-sd", action="store_true", help="only the mini model")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "throughput.json")
    args = ap.parse_args(argv)
    threads = set_threads(args.threads)
    start, load = time.perf_counter(), os.getloadavg()
    record = {"kind": "bench-throughput", "torch": torch.__version__, "threads": threads,
              "load_average_at_start": [round(x, 2) for x in load], "models": {}}
    record["models"]["mini"] = bench("mini", load_mini(), args.mini_images, args.repeats, (1, 4, 16, 64))
    if not args.skip_sd:
        with tempfile.TemporaryDirectory() as tmp:
            record["models"]["sd15-shaped"] = bench("sd15-shaped", load_sd15(Path(tmp)), args.sd_images,
                                                    args.sd_repeats, (1, 4, 16))
    record["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    record["wall_seconds"] = round(time.perf_counter() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({record['wall_seconds']} s)")


if __name__ == "__main__":
    main()
