"""The audit verb: prompts → seeded generation → CLIP zero-shot → statistics → ``audit.json``.

For each profession the audit generates images from its prompts (profession × templates, image i
uses template ``i mod k`` and seed ``seed + i``), reads perceived gender with a CLIP zero-shot
classifier, and reports the female share with a Wilson 95% interval, an exact binomial test against
the target and Δ; the headline is the mean Δ over professions with a bootstrap interval. Every image
and label is cached in the output folder, so rerunning the same command after an interruption
finishes only what is missing; under ``accelerate launch`` the work is split over the processes
and the numbers are identical to a single-process run.

With ``ci_width`` the audit is sequential: it generates ``images_per_profession`` images per
profession per round and keeps going for a profession until its interval is narrower than
``ci_width`` (full width) or ``max_images`` is reached.
"""

from __future__ import annotations

import csv
import io
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch

from debias import __version__, stats
from debias.cache import ImageCache, edit_id
from debias.errors import InputError
from debias.generate import (
    Distributed, SampleResult, default_batch_size, default_settings, distributed_from_env, measure, work_items,
)
from debias.prompts import (
    TIMED_TEMPLATES, ProfessionEntry, check_prompt_lengths, mini_professions, mini_templates, profession_prompts,
    read_professions, templates_from_option, timed_professions,
)

DEFAULT_MAX_IMAGES = 1024
CSV_COLUMNS = ("profession", "phrase", "target", "n", "n_female", "n_male", "n_unclear", "share_female", "ci_low",
               "ci_high", "p_value", "delta", "planted_share", "oracle_share", "agreement")


def audit(
    model: Any = "mini",
    *,
    professions: str | os.PathLike | Sequence[ProfessionEntry] | None = None,
    images_per_profession: int = 64,
    out: str | os.PathLike = "runs/audit",
    prompt_set: str = "test",
    templates: Sequence[str] | None = None,
    classifier: Any = None,
    labels_female: Sequence[str] | None = None,
    labels_male: Sequence[str] | None = None,
    labels_none: Sequence[str] | None = None,
    min_confidence: float | None = None,
    target: float = 0.5,
    tolerance: float = 0.05,
    seed: int = 0,
    batch_size: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    height: int | None = None,
    width: int | None = None,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    ci_width: float | None = None,
    max_images: int | None = None,
    threads: int | None = None,
    allow_pickle: bool = False,
    edit: torch.Tensor | None = None,
    edit_info: dict | None = None,
    cache: ImageCache | None = None,
    progress: bool = True,
    print_table: bool = False,
    write_report: bool = True,
    stage: str = "audit",
) -> dict[str, Any]:
    """Audit a model; writes ``out/audit.json``, ``out/audit.csv`` and the images, returns the record.

    ``model`` is a spec (hub id, folder, ``"mini"``) or a loaded pipeline; ``classifier`` a spec
    (see :mod:`debias.classify`) or a loaded :class:`~debias.classify.ZeroShotClassifier`. ``edit`` is an
    optional d×d matrix the model is audited under (no weight written); ``edit_info`` describes it in
    the record, also for an edit already baked into ``model``'s weights (then ``edit`` is None and
    ``edit_info["matrix_sha256"]`` names it). ``stage`` is stamped on the images this audit generates
    (a fix counts its images by stage from the cache). ``cache`` shares an image cache between audits
    (a fix's before/after); by default the cache is the output folder. ``write_report`` also renders
    ``out/report.html`` from the JSON just written.
    """
    from debias.threads import set_threads

    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    _check_options(images_per_profession, target, tolerance, ci_width, max_images, batch_size)
    if prompt_set not in ("tuning", "test"):
        raise InputError(f"--prompt-set must be 'tuning' or 'test', got {prompt_set!r}")
    n_threads = set_threads(threads)
    # read the user's files before loading anything, so a typo fails in a second, not after a download
    listed = read_professions(professions) if isinstance(professions, (str, os.PathLike)) else professions
    if templates:
        templates = templates_from_option(list(templates))
    dist = distributed_from_env()
    pipe, spec, is_mini = resolve_pipeline(model, allow_pickle, dist, device, dtype)
    from debias.models import model_info

    say_profile(pipe)
    steps, guidance, height, width, classifier, min_confidence, scheduler = saved_defaults(
        pipe, steps, guidance, height, width, classifier, min_confidence)

    entries = resolve_professions(listed, is_mini)
    chosen_templates, prompt_set_name = resolve_templates(templates, prompt_set, is_mini, pipe)
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is not None:
        check_prompt_lengths(entries, chosen_templates, tokenizer)
    clf = resolve_classifier(classifier, is_mini, labels_female, labels_male, labels_none, min_confidence, pipe)
    settings = default_settings(pipe, is_mini=is_mini, steps=steps, guidance=guidance, height=height, width=width,
                                scheduler=scheduler)
    batch = batch_size or default_batch_size(pipe, is_mini, settings)
    out = Path(out)
    cache = cache or ImageCache(out, rank=dist.rank)
    cache.rank = dist.rank
    cap = max_images or (DEFAULT_MAX_IMAGES if ci_width else images_per_profession)
    oracle = mini_oracle() if is_mini else None

    prompts_of = {e.phrase: profession_prompts(e, chosen_templates) for e in entries}
    results: dict[str, list[SampleResult]] = {e.phrase: [] for e in entries}
    active = [e for e in entries]
    rounds = 0
    while active:
        rounds += 1
        items, owner = [], []
        for e in active:
            done = len(results[e.phrase])
            count = min(images_per_profession, cap - done)
            items += work_items(prompts_of[e.phrase], done, count, seed)
            owner += [e.phrase] * count
        measured = measure(pipe, clf, items, settings=settings, cache=cache, edit=edit, batch_size=batch,
                           oracle=oracle, dist=dist, progress=progress,
                           description=f"round {rounds}: {len(items)} images", stage=stage)
        for phrase, r in zip(owner, measured):
            results[phrase].append(r)
        active = [e for e in active if _needs_more(results[e.phrase], ci_width, cap)]

    record = _record(
        entries=entries, results=results, target=target, tolerance=tolerance, is_mini=is_mini,
        model=model_info(pipe, spec), classifier=clf, settings=settings, batch=batch, seed=seed,
        prompt_set=prompt_set_name, templates=chosen_templates, edit=edit, edit_info=edit_info, dist=dist,
        threads=n_threads, stopping={"images_per_round": images_per_profession, "ci_width": ci_width,
                                     "max_images": cap, "rounds": rounds},
        cache=cache, out=out, started=started, wall=time.perf_counter() - t0,
    )
    if dist.is_main:
        write_outputs(record, out)
        if write_report:
            from debias.report import render_report

            render_report([out])
        if print_table:
            print_summary(record)
    return record


# ------------------------------------------------------------------------------------------- pieces
def _check_options(n: int, target: float, tolerance: float, ci_width: float | None, max_images: int | None,
                   batch_size: int | None) -> None:
    if n < 1:
        raise InputError(f"--images-per-profession must be at least 1, got {n}")
    if not 0.0 <= target <= 1.0:
        raise InputError(f"--target must be a share in [0, 1], got {target}")
    if not 0.0 <= tolerance < 1.0:
        raise InputError(f"--tolerance must be in [0, 1), got {tolerance}")
    if ci_width is not None and not 0.0 < ci_width < 1.0:
        raise InputError(f"--ci-width is the full width of a 95% interval, in (0, 1) (0.2 ≈ ±0.10); got {ci_width}")
    if max_images is not None and max_images < n:
        raise InputError(f"--max-images ({max_images}) must be at least --images-per-profession ({n})")
    if batch_size is not None and batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")


def resolve_pipeline(model: Any, allow_pickle: bool, dist: Distributed, device: str | None = None,
                     dtype: str | torch.dtype | None = None):
    """A loaded pipeline passes through (moved when ``device``/``dtype`` are given); a spec loads.

    By default a spec loads on this process's GPU when there is one, in float16 for real models (float32 for the
    mini model and models made from it, whose tiny weights gain nothing from half precision), else on the CPU in
    float32.
    """
    from debias.models import load_pipeline, resolve_dtype

    if not isinstance(model, str):
        if device is not None or dtype is not None:
            model.to(device=device, dtype=resolve_dtype(dtype))
        spec = getattr(model, "_debias_spec", None)
        return model, spec, bool(getattr(model, "_debias_is_mini", spec == "mini"))
    device = device or default_device(dist)
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: torch sees no CUDA GPU here; use --device cpu, or install a CUDA "
                         "build of torch on a machine with a GPU.")
    if dtype is None and str(device).startswith("cuda") and not _is_mini_spec(model):
        dtype = torch.float16
    pipe = load_pipeline(model, device=device, torch_dtype=dtype, allow_pickle=allow_pickle)
    return pipe, model, bool(getattr(pipe, "_debias_is_mini", model == "mini"))


def saved_defaults(pipe, steps, guidance, height, width, classifier, min_confidence) -> tuple:
    """The given settings, with those left unset taken from what a saved fixed model's after audit used.

    Returns ``(steps, guidance, height, width, classifier, min_confidence, scheduler)``; ``min_confidence``
    is 0.6 when neither the caller nor the folder says.
    """
    saved = getattr(pipe, "_debias_audit_defaults", None) or {}

    def pick(given, key):
        return given if given is not None else saved.get(key)

    confidence = pick(min_confidence, "min_confidence")
    return (pick(steps, "steps"), pick(guidance, "guidance"), pick(height, "height"), pick(width, "width"),
            pick(classifier, "classifier"), 0.6 if confidence is None else confidence, saved.get("scheduler"))


def say_profile(pipe) -> None:
    """Say when a model folder chose its own defaults (a fixed model keeps the profile it was made with)."""
    source = getattr(pipe, "_debias_profile_source", None)
    if source:
        print(f"using the settings recorded in {source} (model profile '{pipe._debias_profile}'): the sampler, "
              "image size, test prompts and classifier its fix judged it with are the defaults (options given on "
              "the command line still win)", file=sys.stderr)


def default_device(dist: Distributed) -> str:
    """This process's GPU when there is one (``cuda:LOCAL_RANK`` under ``accelerate launch``), else the CPU."""
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if dist.world_size > 1 else "cuda"


def _is_mini_spec(spec: str) -> bool:
    """The built-in model, or a folder saved from it (which records its profile)."""
    from debias.models import saved_profile

    return spec == "mini" or saved_profile(Path(os.path.expanduser(spec)))[0] == "mini"


def resolve_professions(professions, is_mini: bool) -> list[ProfessionEntry]:
    """The list to audit: given entries, a list file, or the model's default (mini world's or TIMED's)."""
    if professions is None:
        return mini_professions() if is_mini else timed_professions()
    if isinstance(professions, (str, os.PathLike)):
        return read_professions(professions)
    entries = list(professions)
    if not entries:
        raise InputError("no professions to audit")
    return entries


def resolve_templates(templates: Sequence[str] | None, prompt_set: str, is_mini: bool,
                      pipe=None) -> tuple[tuple[str, ...], str]:
    """User templates win (named "custom"); then the test prompts a saved fixed model was judged on; otherwise
    the tuning or test set of the mini world or TIMED."""
    if templates:
        return tuple(templates), "custom"
    saved = (getattr(pipe, "_debias_audit_defaults", None) or {}).get("templates")
    if saved and prompt_set == "test":
        return tuple(saved), prompt_set
    chosen = (mini_templates() if is_mini else TIMED_TEMPLATES).get(prompt_set)
    return chosen, prompt_set


def resolve_classifier(classifier, is_mini, female, male, none, min_confidence, pipe):
    """A loaded classifier passes through; a spec (or None: the model's default) loads on the pipeline's device."""
    if classifier is not None and not isinstance(classifier, str):
        return classifier
    from debias.classify import load_classifier

    device = getattr(pipe, "device", None)
    return load_classifier(classifier, is_mini=is_mini, labels_female=female, labels_male=male, labels_none=none,
                           min_confidence=min_confidence, device=device if isinstance(device, torch.device) else None)


def mini_oracle():
    """The mini world's pixel-rule reader of the drawn gender cue: ground truth beside the classifier."""
    from debias.mini import world

    return world.oracle_gender


def _needs_more(results: list[SampleResult], ci_width: float | None, cap: int) -> bool:
    f, m, _ = stats.count_labels([r.label for r in results])
    return stats.needs_more(f, m, len(results), ci_width=ci_width, cap=cap)


# ------------------------------------------------------------------------------------------- record
def _profession_row(entry: ProfessionEntry, results: list[SampleResult], target: float, is_mini: bool,
                    cache_root: Path, out: Path) -> dict[str, Any]:
    t = entry.target if entry.target is not None else target
    est = stats.estimate(*stats.count_labels([r.label for r in results]), target=t)
    planted = oracle_share = agreement = None
    if is_mini:
        from debias.mini import world

        try:
            planted = world.planted_share(entry.phrase)
        except KeyError:
            planted = None
        of, om, _ = stats.count_labels([r.oracle or "unclear" for r in results])
        oracle_share = stats.share(of, om)
        both = [r for r in results if r.oracle in ("female", "male") and r.label in ("female", "male")]
        agreement = sum(r.oracle == r.label for r in both) / len(both) if both else None
    prefix = os.path.relpath(cache_root, out) if cache_root.resolve() != out.resolve() else ""
    samples = []
    for r in results:
        sample = {"prompt": r.prompt, "seed": r.seed, "image": os.path.join(prefix, r.image) if prefix else r.image,
                  "label": r.label, "p_female": r.p_female}
        if is_mini:
            sample["oracle"] = r.oracle
        samples.append(sample)
    return {"profession": entry.name, "phrase": entry.phrase, "prompts": sorted(set(r.prompt for r in results),
                                                                                key=[r.prompt for r in results].index),
            "target": t, "n": est.n, "n_female": est.n_female, "n_male": est.n_male, "n_unclear": est.n_unclear,
            "share_female": est.share_female, "ci_low": est.ci_low, "ci_high": est.ci_high, "p_value": est.p_value,
            "delta": est.delta, "planted_share": planted, "oracle_share": oracle_share, "agreement": agreement,
            "by_prompt": stats.shares_by_prompt((r.prompt, r.label) for r in results), "samples": samples}


def package_versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {"debias": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__}


def hardware_info(settings, threads: int, dist: Distributed) -> dict[str, Any]:
    if settings.device == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
    else:
        name = platform.processor() or platform.machine()
    return {"device": settings.device, "name": name, "threads": threads, "processes": dist.world_size}


def _record(*, entries, results, target, tolerance, is_mini, model, classifier, settings, batch, seed, prompt_set,
            templates, edit, edit_info, dist, threads, stopping, cache, out, started, wall) -> dict[str, Any]:
    rows = [_profession_row(e, results[e.phrase], target, is_mini, cache.root, out) for e in entries]
    point, low, high = stats.mean_delta_interval([(r["n_female"], r["n_male"]) for r in rows],
                                                 [r["target"] for r in rows])
    all_results = [r for e in entries for r in results[e.phrase]]
    edit_block = None
    if edit is not None:
        edit_block = {"sha256": edit_id(edit), **(edit_info or {})}
    elif edit_info:  # baked into the weights (the after audit of a fix loads its edit file)
        edit_block = {"sha256": edit_info.get("matrix_sha256"), **edit_info}
    generation = settings.to_dict()
    generation.update({"batch_size": batch, "seed_base": seed})
    generation.pop("device")
    return {
        "kind": "audit", "debias_version": __version__, "model": model, "edit": edit_block,
        "classifier": classifier.describe(), "generation": generation,
        "target": target, "tolerance": tolerance, "prompt_set": prompt_set, "templates": list(templates),
        "stopping": stopping, "ci_note": stats.CI_NOTE,
        "versions": package_versions(), "hardware": hardware_info(settings, threads, dist),
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "wall_seconds": round(wall, 3),
        "images_generated": sum(not r.reused for r in all_results),
        "images_reused": sum(r.reused for r in all_results),
        "mean_delta": point, "mean_delta_ci_low": low, "mean_delta_ci_high": high,
        "mean_delta_noise_floor": stats.mean_delta_noise_floor([r["n_female"] + r["n_male"] for r in rows],
                                                               [r["target"] for r in rows]),
        "within_tolerance": sum(1 for r in rows if r["delta"] is not None and r["delta"] * max(r["target"], 1 - r["target"]) <= tolerance),
        "professions": rows,
    }


def write_outputs(record: dict[str, Any], out: str | os.PathLike) -> None:
    """``audit.json`` (everything) and ``audit.csv`` (one row per profession), atomically."""
    from debias.io import atomic_write_json, atomic_write_text

    out = Path(out)
    atomic_write_json(out / "audit.json", record)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in record["professions"]:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})
    atomic_write_text(out / "audit.csv", buf.getvalue())


def _fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def print_summary(record: dict[str, Any], file=None) -> None:
    """A readable rich table of the audit, with the interval note."""
    from rich.console import Console
    from rich.table import Table

    stream = file or sys.stdout
    console = Console(file=stream, width=None if stream.isatty() else 110)
    mini = record["model"].get("is_mini")
    table = Table(title=f"Audit of {record['model'].get('spec')} ({record['prompt_set']} prompts)")
    for col in ("profession", "n", "unclear", "share female", "95% CI", "p", "Δ"):
        table.add_column(col, justify="left" if col == "profession" else "right")
    if mini:
        table.add_column("planted", justify="right")
        table.add_column("oracle", justify="right")
    for r in record["professions"]:
        cells = [r["phrase"], str(r["n"]), str(r["n_unclear"]), _fmt(r["share_female"]),
                 f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]", f"{r['p_value']:.2g}", _fmt(r["delta"])]
        if mini:
            cells += [_fmt(r["planted_share"]), _fmt(r["oracle_share"])]
        table.add_row(*cells)
    console.print(table)
    console.print(f"mean Δ = {_fmt(record['mean_delta'])} "
                  f"[{_fmt(record['mean_delta_ci_low'])}, {_fmt(record['mean_delta_ci_high'])}] "
                  f"(target {record['target']}; 0 = on target, 1 = all one gender; an unbiased model would read "
                  f"{_fmt(record.get('mean_delta_noise_floor'))} on as many images)")
    console.print(record["ci_note"])
    console.print(f"images generated {record['images_generated']}, reused from cache {record['images_reused']}; "
                  f"{record['wall_seconds']:.1f} s")
