"""Seeded, batched, cached and resumable generation (and classification) of work items.

A **work item** is a ``(prompt, seed)`` pair. Each image gets its own
``torch.Generator("cpu").manual_seed(seed)`` (the pipeline takes one generator per image), so its
starting noise depends on nothing else: not the batch, the order, the device or how many processes share
the work. The same batch size and thread count give bit-identical pixels; another batch size runs other
float kernels and moves a few 8-bit values by one level at most (no label changed where measured). That
makes three things exact (up to that rounding):

* **caching and resuming** — every finished image is written atomically as a PNG under the run
  folder, then one line is appended to an index. The key hashes everything the image depends on: the
  model's K/V fingerprint (plus its current K/V weights if an edit is baked in), the edit applied on
  the fly (hash of ``M``, or none), the sampler settings, the prompt and the seed. A rerun, or a run
  resumed after Ctrl-C or ``kill -9``, redoes nothing finished; a torn last index line is ignored.
  Labels are cached too, keyed by image and classifier, so changing the classifier re-reads the PNGs
  instead of regenerating them.
* **splitting across processes** — under ``accelerate launch`` each process takes the items whose
  index modulo the world size is its rank, writes its own index file, and after a barrier every
  process reads all index files, so all of them return the same results as one process would.
* **the fix's rounds** — :func:`measure` is what each round calls, every profession on one block of seeds
  (common random numbers) and an edit matrix applied through
  :func:`debias.editing.conditioning_transform`.

The cache itself (keys, PNGs, index) is :mod:`debias.generation.cache`.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from debias.core.distributed import Distributed
from debias.core.errors import GenerationError, InputError
from debias.core.memory import AdaptiveBatch, execution_device, vae_tiles
from debias.core.models import check_text_to_image
from debias.core.options import GenerationOptions
from debias.core.pipeline import call_arguments, pipeline_options
from debias.editing.apply import conditioning_transform
from debias.generation.cache import ImageCache, edit_id, item_key, model_key

"""Defaults for real models: a multistep DPM-Solver at 25 steps and classifier-free guidance 7.5."""


# ------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class SamplerSettings:
    """Everything about sampling that changes an image (batch size and thread count move a few values by one
    8-bit level at most, so they are not here)."""

    scheduler: str
    steps: int
    guidance: float
    height: int
    width: int
    dtype: str
    device: str  # device type ("cpu", "cuda"): kernels differ, so images may differ in the last bit
    vae_tiling: bool = False  # the VAE decodes these images in tiles (debias.core.memory.vae_tiles): other pixels
    text_length: int | None = None  # T5 tokens, where the family's profile sets them (pipeline_options)

    def to_dict(self) -> dict[str, Any]:
        """The settings as recorded and hashed into image keys; ``vae_tiling`` and ``text_length`` only when set,
        so images made without them keep the keys they always had."""
        record = asdict(self)
        for key in ("vae_tiling", "text_length"):
            if not record[key]:
                record.pop(key)
        return record


def _pipe_device(pipe) -> torch.device:
    """Where the pipeline computes (an offloaded pipeline's accelerator, though its weights wait on the CPU)."""
    return execution_device(pipe)


def _pipe_dtype(pipe) -> torch.dtype:
    for attr in ("unet", "transformer"):
        module = getattr(pipe, attr, None)
        if isinstance(module, torch.nn.Module):
            return next(module.parameters()).dtype
    return torch.float32


def default_resolution(pipe) -> int:
    """The pipeline's native image size: the denoiser's sample size times the VAE's scale factor."""
    net = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    sample = getattr(getattr(net, "config", None), "sample_size", None) or getattr(pipe, "default_sample_size", None)
    scale = getattr(pipe, "vae_scale_factor", 8)
    if isinstance(sample, (list, tuple)):
        sample = sample[0]
    return int(sample * scale) if sample else 512


def default_settings(
    pipe,
    sampler: Any,
    *,
    steps: int | None = None,
    guidance: float | None = None,
    scheduler: str | None = None,
    height: int | None = None,
    width: int | None = None,
) -> SamplerSettings:
    """The given sampling settings, with those left unset taken from ``sampler`` (a profile's
    :class:`~debias.core.profiles.Sampler`; its unset size is the pipeline's native one, and its scheduler None
    keeps the pipeline's own, e.g. SD3's and FLUX's flow-matching scheduler).

    Raises:
        InputError: a pipeline that cannot be audited (:func:`~debias.core.models.check_text_to_image`), a bad size.
    """
    check_text_to_image(pipe)
    native = default_resolution(pipe)
    if steps is not None and steps < 1:
        raise InputError(f"--steps must be at least 1, got {steps}")
    multiple = size_multiple(pipe)
    for option, value in (("--height", height), ("--width", width)):
        if value is not None and (value < multiple or value % multiple):
            raise InputError(f"{option} {value}: image sizes must be positive multiples of {multiple} for this "
                             f"pipeline; try {max(multiple, value // multiple * multiple)}.")
    settings = SamplerSettings(
        scheduler=scheduler or _profile_scheduler(pipe, sampler.scheduler),
        steps=int(steps if steps is not None else sampler.steps),
        guidance=float(guidance if guidance is not None else sampler.guidance),
        height=int(height or sampler.height or native),
        width=int(width or sampler.width or native),
        dtype=str(_pipe_dtype(pipe)).replace("torch.", ""),
        device=_pipe_device(pipe).type,
        text_length=pipeline_options(pipe).get("max_sequence_length"),
    )
    return replace(settings, vae_tiling=True) if vae_tiles(pipe, settings.height, settings.width) else settings


def default_batch_size(pipe, sampler: Any, settings: SamplerSettings | None = None) -> int:
    """Images per pipeline call: the profile's ``sampler.batch_size`` when it sets one; else on a GPU 8 at
    512×512, scaled by the image area (1 to 32; :func:`measure` halves it when the GPU runs out of memory);
    4 on a CPU."""
    if sampler.batch_size:
        return int(sampler.batch_size)
    if _pipe_device(pipe).type != "cuda":
        return 4
    area = (settings.height * settings.width) if settings is not None else 512 * 512
    return int(min(max(8 * 512 * 512 // area, 1), 32))


def sampler_settings(model, options: GenerationOptions) -> tuple[SamplerSettings, int]:
    """The sampler settings and batch size of a run on ``model`` (a :class:`~debias.core.setup.LoadedModel`): the
    user's ``options``, else what a saved fixed model records, else the model profile's."""
    filled = options.filled(model.audit_defaults)
    settings = default_settings(model.pipe, model.profile.sampler, steps=filled.steps, guidance=filled.guidance,
                                height=filled.height, width=filled.width,
                                scheduler=model.audit_defaults.get("scheduler"))
    batch = options.batch_size or default_batch_size(model.pipe, model.profile.sampler, settings)
    return settings, batch


def _profile_scheduler(pipe, name: str | None) -> str:
    """A profile's scheduler ``name``, or the pipeline's own when ``name`` is None or of the other kind (a flow-matching
    model's velocity means nothing to a diffusion scheduler): a family without a profile keeps its scheduler."""
    own = type(pipe.scheduler).__name__
    if name is None or ("FlowMatch" in own) != ("FlowMatch" in name):
        return own
    return name


def size_multiple(pipe) -> int:
    """What image sides must be multiples of: 8 at least (diffusers' pipelines check it), the VAE's scale factor
    times the transformer's patch (SD3's ``patch_size``), or the image processor's (FLUX packs 2×2 latents)."""
    scale = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    processor = getattr(getattr(pipe, "image_processor", None), "config", None)
    return max(8, scale * int(getattr(pipe, "patch_size", 1) or 1), int(getattr(processor, "vae_scale_factor", 1) or 1))


def use_scheduler(pipe, name: str | None) -> None:
    """Swap the pipeline's scheduler for the diffusers class ``name`` (same config), if it differs; None keeps it."""
    if name is None or type(pipe.scheduler).__name__ == name:
        return
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise InputError(f"unknown scheduler {name!r}; use a diffusers scheduler class name such as "
                         f"'DPMSolverMultistepScheduler'")
    pipe.scheduler = cls.from_config(pipe.scheduler.config)


# ------------------------------------------------------------------------------------------- measure
@dataclass
class SampleResult:
    """One work item after generation and classification."""

    prompt: str
    seed: int
    key: str
    image: str  # path relative to the cache root
    label: str  # "female" | "male" | "unclear"
    p_female: float
    oracle: str | None = None  # a synthetic world's ground truth read from the pixels (its profile's oracle)
    reused: bool = False  # the image was in the cache before this call


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Pipeline output in [0, 1] (N, H, W, 3) → uint8, the exact pixels written to the PNG."""
    return np.clip(np.rint(np.asarray(images, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def generate_images(pipe, prompts: Sequence[str], seeds: Sequence[int], settings: SamplerSettings) -> np.ndarray:
    """One pipeline call: ``len(prompts)`` images, image i drawn from its own generator seeded ``seeds[i]``.

    An image's noise depends on its seed alone (CPU generators draw the same numbers whatever the device),
    and the same call on the same machine gives bit-identical pixels. The float kernels, though, are chosen
    by the batch's size (and torch's thread count), so the same seed in a batch of another size can end a
    few 8-bit values one level apart; running every image alone would make that exact at about half the
    throughput, so the tool batches and the cache key leaves batch size out.
    """
    return _pipeline_call(pipe, prompts, seeds, settings)[0]


def _pipeline_call(pipe, prompts, seeds, settings) -> tuple[np.ndarray, list[bool]]:
    """Images and, per image, whether a safety checker blanked it (such an image shows no one: unclear)."""
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    call = call_arguments(pipe, prompt=list(prompts), generator=generators, num_inference_steps=settings.steps,
                          guidance_scale=settings.guidance, height=settings.height, width=settings.width,
                          output_type="np")
    with torch.inference_mode():
        out = pipe(**call)
    flags = getattr(out, "nsfw_content_detected", None) or [False] * len(prompts)
    return to_uint8(_as_array(out.images)), [bool(f) for f in flags]


def _as_array(images: Any) -> np.ndarray:
    """Pipeline images as ``[N, H, W, 3]`` floats in [0, 1]: arrays pass, and the PIL images of a pipeline that
    takes no ``output_type`` are converted."""
    if isinstance(images, (list, tuple)) and images and hasattr(images[0], "convert"):
        return np.stack([np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0 for image in images])
    return np.asarray(images)


def _progress(total: int, enabled: bool, description: str):
    if not enabled or total == 0:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        transient=True)
    return progress


def measure(
    pipe,
    classifier,
    items: Sequence[tuple[str, int]],
    *,
    settings: SamplerSettings,
    cache: ImageCache,
    edit: torch.Tensor | None = None,
    batch_size: int = 8,
    oracle: Callable[[np.ndarray], list[str]] | None = None,
    dist: Distributed | None = None,
    progress: bool = True,
    description: str = "generating",
    stage: str | None = None,
    adapt_batch: bool = False,
) -> list[SampleResult]:
    """Generate (or reuse) and classify every ``(prompt, seed)`` item; results in ``items`` order.

    ``classifier`` is a :class:`debias.classify.zero_shot.ZeroShotClassifier` (anything with ``cache_id`` and
    ``classify(uint8 NHWC) -> (labels, p_female)``). ``edit`` is an optional d×d matrix applied
    through :func:`debias.editing.conditioning_transform` (no weight is written). ``oracle`` labels
    images by ground truth (a synthetic world's profile has one). Under ``dist`` with several
    processes, this process does items ``i % world_size == rank`` and every process returns all results.
    ``stage`` is stamped on every image this call generates (e.g. ``"search"``), so a run can count its images
    by the stage that made them from the cache itself, across interruptions and resumes. ``adapt_batch`` lets
    the batch grow from ``batch_size`` to what the GPU's free memory holds (:class:`debias.core.memory.AdaptiveBatch`;
    for a batch size the user did not choose); an out-of-memory error halves it either way.
    """
    dist = dist or Distributed()
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    use_scheduler(pipe, settings.scheduler)
    mkey, ekey = model_key(pipe), edit_id(edit)
    keys = [item_key(mkey, ekey, settings, p, s) for p, s in items]
    unique: dict[str, tuple[str, int]] = {}
    for k, item in zip(keys, items):
        unique.setdefault(k, item)

    cache.load()
    dist.barrier()  # every process has seen the same cache before anyone writes to it
    cached_before = {k for k in unique if k in cache.images}
    order = list(unique)
    mine = [k for i, k in enumerate(order) if i % dist.world_size == dist.rank]
    to_generate = [k for k in mine if k not in cache.images]
    to_label = [k for k in mine if k in cache.images and (k, classifier.cache_id) not in cache.labels]

    bar = _progress(len(to_generate) + len(to_label), progress and dist.is_main, description)
    with bar as prog:
        task = prog.add_task(description, total=len(to_generate) + len(to_label)) if prog else None
        advance = (lambda n: prog.advance(task, n)) if prog else (lambda n: None)
        sizer = AdaptiveBatch.for_call(batch_size, pipe, settings, adapt_batch)
        _generate_missing(pipe, classifier, cache, [(k, *unique[k]) for k in to_generate], settings=settings,
                          edit=edit, sizer=sizer, oracle=oracle, stage=stage, advance=advance)
        for start in range(0, len(to_label), batch_size):
            batch = to_label[start:start + batch_size]
            _label(cache, classifier, batch, cache.read_images(batch))
            if prog:
                prog.advance(task, len(batch))

    if dist.world_size > 1:
        dist.barrier()  # everyone's images and labels are on disk
        cache.load()
    results = []
    for k, (prompt, seed) in zip(keys, items):
        img, lab = cache.images[k], cache.labels[(k, classifier.cache_id)]
        results.append(SampleResult(prompt=prompt, seed=int(seed), key=k, image=img["image"], label=lab["label"],
                                    p_female=float(lab["p_female"]), oracle=img.get("oracle"),
                                    reused=k in cached_before))
    return results


def _generate_missing(pipe, classifier, cache: ImageCache, work: Sequence[tuple[str, str, int]], *,
                      settings: SamplerSettings, edit: torch.Tensor | None, sizer: AdaptiveBatch,
                      oracle: Callable[[np.ndarray], list[str]] | None, stage: str | None,
                      advance: Callable[[int], None]) -> None:
    """Generate, store and label the ``(key, prompt, seed)`` items of ``work``, ``sizer.size`` per call."""
    start = 0
    while start < len(work):
        keys, prompts, seeds = (list(column) for column in zip(*work[start:start + sizer.size]))
        try:
            sizer.begin()
            images, blanked = _generate(pipe, prompts, seeds, settings, edit)
        except torch.OutOfMemoryError as err:
            sizer.halved(_smaller_batch(sizer.size, settings, err))
            continue
        sizer.done(len(keys))
        start += len(keys)
        oracles = oracle(images) if oracle is not None else [None] * len(keys)
        cache.put_images([_image_record(k, p, s, o, b, stage)
                          for k, p, s, o, b in zip(keys, prompts, seeds, oracles, blanked)], images)
        _label(cache, classifier, keys, images)
        advance(len(keys))


def _smaller_batch(batch_size: int, settings: SamplerSettings, err: BaseException) -> int:
    """Half the batch after an out-of-memory error; at one image, say what to lower instead."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if batch_size > 1:
        print(f"out of {settings.device} memory at {batch_size} images per call; continuing with "
              f"{batch_size // 2} (set --batch-size to start there)", file=sys.stderr)
        return batch_size // 2
    raise GenerationError(
        f"out of {settings.device} memory generating one {settings.height}×{settings.width} image in "
        f"{settings.dtype}: lower --height/--width (e.g. {settings.height // 2}), use --dtype float16 if the "
        "model runs in float32, or run on a device with more memory (--device). "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err


def _generate(pipe, prompts, seeds, settings, edit) -> tuple[np.ndarray, list[bool]]:
    if edit is None:
        return _pipeline_call(pipe, prompts, seeds, settings)
    with conditioning_transform(pipe, edit):
        return _pipeline_call(pipe, prompts, seeds, settings)


def _image_record(key: str, prompt: str, seed: int, oracle: str | None, blanked: bool,
                  stage: str | None = None) -> dict:
    rec = {"key": key, "prompt": prompt, "seed": int(seed), "image": f"images/{key}.png"}
    if stage is not None:
        rec["stage"] = stage
    if oracle is not None:
        rec["oracle"] = oracle
    if blanked:
        rec["blanked"] = True  # the pipeline's safety checker replaced it with a black image
    return rec


def _label(cache: ImageCache, classifier, keys: Sequence[str], images: np.ndarray) -> None:
    labels, p_female = classifier.classify(images)
    p = p_female.tolist() if hasattr(p_female, "tolist") else list(p_female)
    labels = ["unclear" if cache.images.get(k, {}).get("blanked") else lab for k, lab in zip(keys, labels)]
    cache.put_labels([{"key": k, "classifier": classifier.cache_id, "label": lab, "p_female": round(float(pf), 6)}
                      for k, lab, pf in zip(keys, labels, p)])


def work_items(prompts: Sequence[str], start: int, count: int, seed_base: int = 0) -> list[tuple[str, int]]:
    """Items ``start .. start+count-1`` of one profession: image i uses ``prompts[i % len]`` and seed ``seed_base + i``.

    The same seeds serve every profession and every edit (common random numbers), and growing a
    profession's sample later (sequential stopping) only appends items.
    """
    return items_for_seeds(prompts, range(seed_base + start, seed_base + start + count), seed_base)


def items_for_seeds(prompts: Sequence[str], seeds: Iterable[int], seed_base: int = 0) -> list[tuple[str, int]]:
    """``(prompt, seed)`` for any seeds, with :func:`work_items`' pairing: seed ``seed_base + i`` takes ``prompts[i % len]``.

    A seed keeps its prompt wherever it is drawn (an audit, a λ search, a joint round), so the images of
    one seed differ only by the edit.
    """
    return [(prompts[(int(s) - seed_base) % len(prompts)], int(s)) for s in seeds]
