"""How much of an audit's wall time is spent outside the UNet and VAE, and how fast it is.

    python benchmarks/audit.py [--n 32] [--threads 1] [--weights DIR]

On the built-in mini model this runs the audit's inner function (:func:`debias.generation.generate.measure`:
batched generation with one generator per image, PNG cache and index, CLIP classification, oracle)
over every profession, with timers on the UNet's forward passes and the VAE's decode, and prints the
share of wall time spent elsewhere (target: at most 5%). Then, in the same run and on the same
items, a plain loop that calls the pipeline once per prompt with one image per call, for images/s
side by side.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class Timers:
    """Accumulated seconds inside the UNet's forward and the VAE's decode (forward hooks / a wrapper)."""

    def __init__(self, pipe):
        self.unet = 0.0
        self.vae = 0.0
        self._start = 0.0
        self._sync = torch.cuda.synchronize if pipe.device.type == "cuda" else (lambda: None)
        self._handles = [pipe.unet.register_forward_pre_hook(self._pre),
                         pipe.unet.register_forward_hook(self._post)]
        self._pipe = pipe
        self._decode = pipe.vae.decode
        pipe.vae.decode = self._timed_decode

    def _pre(self, module, args):
        self._sync()
        self._start = time.perf_counter()

    def _post(self, module, args, output):
        self._sync()
        self.unet += time.perf_counter() - self._start

    def _timed_decode(self, *args, **kwargs):
        self._sync()
        t0 = time.perf_counter()
        out = self._decode(*args, **kwargs)
        self._sync()
        self.vae += time.perf_counter() - t0
        return out

    def reset(self) -> None:
        self.unet = self.vae = 0.0

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._pipe.vae.decode = self._decode


def load_mini(weights: str | None):
    from debias.classify.zero_shot import load_classifier
    from debias.core.models import load_pipeline

    if weights is None:
        pipe = load_pipeline("mini")
        clf = load_classifier("mini")
    else:
        pipe = load_pipeline(str(Path(weights) / "pipeline"))
        clf = load_classifier(str(Path(weights) / "classifier"))
    return pipe, clf


def main(argv: list[str] | None = None) -> None:
    from debias.generation.cache import ImageCache
    from debias.generation.generate import default_batch_size, default_settings, measure, use_scheduler, work_items
    from debias.mini import world
    from debias.core.profiles import get_profile
    from debias.core.prompts import profession_prompts
    from debias.core.threads import set_threads

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="images per profession")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--weights", default=None, help="a mini-model folder (pipeline/, classifier/); default: shipped")
    args = ap.parse_args(argv)
    threads = set_threads(args.threads)
    pipe, clf = load_mini(args.weights)
    mini = get_profile("mini")
    settings = default_settings(pipe, mini.sampler)
    batch = args.batch_size or default_batch_size(pipe, mini.sampler)
    use_scheduler(pipe, settings.scheduler)
    templates, professions = mini.template_set().test, mini.default_professions()
    items = [it for e in professions for it in work_items(profession_prompts(e, templates), 0, args.n)]

    # warm-up outside the measurement (first calls allocate and pick kernels)
    with tempfile.TemporaryDirectory() as tmp:
        measure(pipe, clf, items[:batch], settings=settings, cache=ImageCache(tmp), batch_size=batch,
                oracle=world.oracle_gender, progress=False)

    timers = Timers(pipe)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        measure(pipe, clf, items, settings=settings, cache=ImageCache(tmp), batch_size=batch,
                oracle=world.oracle_gender, progress=False)
        wall = time.perf_counter() - t0
    unet, vae = timers.unet, timers.vae
    timers.reset()

    t0 = time.perf_counter()
    with torch.inference_mode():
        for prompt, seed in items:
            pipe(prompt, generator=torch.Generator("cpu").manual_seed(seed), num_images_per_prompt=1,
                 num_inference_steps=settings.steps, guidance_scale=settings.guidance, height=settings.height,
                 width=settings.width, output_type="np")
    plain = time.perf_counter() - t0
    plain_unet, plain_vae = timers.unet, timers.vae
    timers.close()

    n = len(items)
    outside = wall - unet - vae
    print(f"mini model, {n} images ({len(professions)} professions × {args.n}), {settings.scheduler} "
          f"{settings.steps} steps, guidance {settings.guidance}, {threads} thread(s), batch {batch}, "
          f"device {settings.device}")
    print(f"{'':34} {'images/s':>9} {'wall s':>8} {'UNet s':>8} {'VAE s':>8} {'outside':>8}")
    print(f"{'measure (batched, cached, CLIP)':34} {n / wall:9.1f} {wall:8.2f} {unet:8.2f} {vae:8.2f} "
          f"{outside / wall:8.1%}")
    plain_outside = plain - plain_unet - plain_vae
    print(f"{'plain loop (1 image per call)':34} {n / plain:9.1f} {plain:8.2f} {plain_unet:8.2f} {plain_vae:8.2f} "
          f"{plain_outside / plain:8.1%}")
    print(f"speed-up {plain / wall:.1f}×; time outside UNet and VAE in measure: {outside / wall:.1%} (target ≤ 5%)")


if __name__ == "__main__":
    main()
