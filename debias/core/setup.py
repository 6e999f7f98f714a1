"""One setup for every verb: threads, processes, the model with its profile, and the prompts it is judged on.

``audit``, ``fix`` and ``edit`` start the same way: set torch's thread count on purpose, learn whether this
process is one of several (``accelerate launch``), load the model (or take a loaded pipeline) together with
what debias knows about it (:class:`LoadedModel`), and choose the defaults the user left unset: first from
what a saved fixed model records, then from the model's profile (:mod:`debias.core.profiles`).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from debias.core.distributed import Distributed, distributed_from_env
from debias.core.errors import InputError
from debias.core.memory import apply_memory_options
from debias.core.models import (
    cached_revision, fingerprint, hub_unreachable, load_pipeline, resolve_dtype, saved_profile, saved_record,
)
from debias.core.options import MemoryOptions, RuntimeOptions
from debias.core.prompts import parse_professions, read_professions
from debias.core.threads import set_threads
from debias.core.profiles import (
    Profile, builtin_model, get_profile, profile_of_folder, profile_of_pipeline, profiles_of_class,
)


@dataclass
class LoadedModel:
    """A pipeline and what debias knows about it; the pipeline itself is exactly what diffusers loaded."""

    pipe: Any
    spec: Optional[str]  # what the user named: a hub id, a folder, or a built-in model's name
    profile: Profile
    revision: Optional[str] = None
    profile_source: Optional[str] = None  # the saved folder's record when it chose the profile
    audit_defaults: dict = field(default_factory=dict)  # the settings a saved fixed model was judged with
    memory: MemoryOptions = field(default_factory=MemoryOptions)  # what start() traded for memory
    memory_applied: tuple[str, ...] = ()  # the same, in words, where the pipeline took it (run records)

    @classmethod
    def of(cls, pipe, spec: str | None = None, revision: str | None = None) -> "LoadedModel":
        """Describe a pipeline from where diffusers loaded it (``pipe.name_or_path``): a built-in model's
        folder, a folder saved by ``--save-pipeline`` (which records its profile and defaults), a pipeline class
        a profile is made for (SD3, FLUX: :func:`~debias.core.profiles.profile_of_pipeline`), or anything else (the
        default profile)."""
        source = getattr(pipe, "name_or_path", None) or None
        folder = Path(os.path.expanduser(source)) if source else None
        builtin = profile_of_folder(folder) if folder is not None and folder.is_dir() else None
        if builtin is not None:
            return cls(pipe, spec if spec is not None else builtin.name, builtin, revision)
        record = saved_record(folder) if folder is not None and folder.is_dir() else {}
        name, profile_source = saved_profile(folder, record) if record else (None, None)
        profile = get_profile(name) if name else (profile_of_pipeline(pipe) or get_profile("default"))
        return cls(pipe, spec if spec is not None else source, profile, revision,
                   profile_source, dict(record.get("audit_defaults") or {}))

    def info(self) -> dict[str, Any]:
        """What a run record says about the model: spec, fingerprint, revision, profile (and where it came from)."""
        return {"spec": self.spec, "fingerprint": fingerprint(self.pipe), "revision": self.revision,
                "profile": self.profile.name, "profile_source": self.profile_source, "class": type(self.pipe).__name__,
                **({"memory": list(self.memory_applied)} if self.memory_applied else {})}

    def say_profile(self) -> None:
        """Say when a model folder chose its own defaults (a fixed model keeps the profile it was made with)."""
        if self.profile_source:
            print(f"using the settings recorded in {self.profile_source} (model profile '{self.profile.name}'): the "
                  "sampler, image size, test prompts and classifier its fix judged it with are the defaults (options "
                  "given on the command line still win)", file=sys.stderr)


def load_model(model: Any, *, allow_pickle: bool = False, dist: Distributed | None = None, device: str | None = None,
               dtype: str | torch.dtype | None = None, revision: str | None = None) -> LoadedModel:
    """A :class:`LoadedModel` from a spec (hub id, folder, built-in name), a pipeline, or a LoadedModel.

    By default a spec loads on this process's GPU when there is one, in float16 unless the model's profile says
    half precision gains nothing (the built-in model), else on the CPU in float32. A loaded model is moved when
    ``device``/``dtype`` are given.
    """
    if isinstance(model, LoadedModel) or not isinstance(model, str):
        loaded = model if isinstance(model, LoadedModel) else LoadedModel.of(model)
        if device is not None or dtype is not None:
            loaded.pipe.to(device=device, dtype=resolve_dtype(dtype))
        return loaded
    device = device or default_device(dist or distributed_from_env())
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: torch sees no CUDA GPU here; use --device cpu, or install a CUDA "
                         "build of torch on a machine with a GPU.")
    if dtype is None and str(device).startswith("cuda"):
        dtype = gpu_dtype(model, revision)
    pipe = load_pipeline(model, device=device, torch_dtype=dtype, allow_pickle=allow_pickle, revision=revision)
    return LoadedModel.of(pipe, model, revision if revision is not None else _hub_revision(model))


def gpu_dtype(spec: str, revision: str | None = None) -> torch.dtype | None:
    """The precision ``spec`` loads in on a GPU when the user names none: its family's half precision (float16;
    bfloat16 for FLUX.1), or None (float32) for a profile that gains nothing from it. The family is known before
    loading from a built-in name, a saved fixed model's record, or the pipeline class in ``model_index.json``."""
    profiles = _profiles_before_loading(spec, revision)
    if not profiles:
        return torch.float16
    if not all(p.half_precision_on_gpu for p in profiles):
        return None
    kinds = {p.half_dtype for p in profiles}
    return getattr(torch, kinds.pop()) if len(kinds) == 1 else torch.float16


def _profiles_before_loading(spec: str, revision: str | None) -> list[Profile]:
    builtin = builtin_model(spec)
    if builtin is not None:
        return [builtin]
    folder = Path(os.path.expanduser(spec))
    name = saved_profile(folder)[0] if folder.is_dir() else None
    if name:
        return [get_profile(name)]
    class_name = _pipeline_class_name(spec, folder, revision)
    return profiles_of_class(class_name) if class_name else []


def _pipeline_class_name(spec: str, folder: Path, revision: str | None) -> str | None:
    """``_class_name`` from a folder's or a hub model's ``model_index.json``; None where it cannot be read (the
    load that follows then says what is wrong)."""
    try:
        index = folder / "model_index.json" if folder.is_dir() else _hub_model_index(spec, revision)
        return json.loads(index.read_text(encoding="utf-8")).get("_class_name") if index else None
    except Exception:  # offline, gated, not a pipeline: from_pretrained reports it with what to do
        return None


def _hub_model_index(spec: str, revision: str | None) -> Path | None:
    """The cached ``model_index.json`` of a hub model, else downloaded, but only after one request without
    retries says the hub answers (huggingface_hub retries an unreachable hub for about 23 s a file)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(spec, "model_index.json", revision=revision)
    if isinstance(cached, str):
        return Path(cached)
    if hub_unreachable(spec, "model_index.json"):
        return None
    return Path(hf_hub_download(spec, "model_index.json", revision=revision))


def _hub_revision(spec: str) -> str | None:
    if builtin_model(spec) is not None or Path(os.path.expanduser(spec)).exists():
        return None
    return cached_revision(spec)


def default_device(dist: Distributed) -> str:
    """This process's GPU when there is one (``cuda:LOCAL_RANK`` under ``accelerate launch``), else the CPU."""
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if dist.world_size > 1 else "cuda"


# ------------------------------------------------------------------------------------------- defaults
def professions_for(model: LoadedModel, professions) -> list:
    """The list to work on: given entries (or phrases such as "a nurse"), a list file, or the profile's default."""
    if professions is None:
        return model.profile.default_professions()
    if isinstance(professions, (str, os.PathLike)):
        return read_professions(professions)
    entries = list(professions)
    if entries and all(isinstance(p, str) for p in entries):  # phrases, checked as a list file's lines would be
        entries = parse_professions("\n".join(entries), "professions=[…]")
    if not entries:
        raise InputError("no professions given; pass a profession list file or leave it unset for the defaults")
    return entries


def templates_for(model: LoadedModel, templates, prompt_set: str) -> tuple[tuple[str, ...], str]:
    """User templates win (named "custom"); then the test prompts a saved fixed model was judged on; otherwise
    the profile's tuning or test set."""
    if templates:
        return tuple(templates), "custom"
    saved = model.audit_defaults.get("templates")
    if saved and prompt_set == "test":
        return tuple(saved), prompt_set
    return model.profile.template_set().get(prompt_set), prompt_set


@dataclass
class Setup:
    """What every verb starts from."""

    threads: int
    dist: Distributed
    model: LoadedModel


def start(model: Any, runtime: RuntimeOptions | None = None, memory: MemoryOptions | None = None) -> Setup:
    """Threads, processes and the model, in that order (the thread count must be set before torch works); then
    the ``memory`` options, after the model is on its device (diffusers refuses to move an offloaded one)."""
    runtime = runtime or RuntimeOptions()
    n_threads = set_threads(runtime.threads)
    dist = distributed_from_env()
    loaded = load_model(model, allow_pickle=runtime.allow_pickle, dist=dist, device=runtime.device,
                        dtype=runtime.dtype)
    if memory is not None and memory != MemoryOptions():
        loaded.memory = memory
        loaded.memory_applied = tuple(apply_memory_options(loaded.pipe, memory, device=runtime.device))
    loaded.say_profile()
    return Setup(threads=n_threads, dist=dist, model=loaded)
