"""Memory options for large pipelines, and a batch size that follows the memory a GPU has left.

A model that does not fit next to its activations can still be audited and fixed, slower, with diffusers' own
switches; :class:`MemoryOptions` names them and :func:`apply_memory_options` applies each one where the pipeline
supports it and says why where it does not:

* ``cpu_offload="model"`` keeps every component in CPU memory and moves a whole one (text encoder, denoiser, VAE)
  to the accelerator while it runs (``enable_model_cpu_offload``): about the largest component's weights on the
  GPU, a few percent slower.
* ``cpu_offload="sequential"`` moves each layer while it runs (``enable_sequential_cpu_offload``): the least GPU
  memory, many times slower. Its weights live in accelerate's hooks (the modules hold empty "meta" tensors), and
  debias reads and writes the cross-attention K/V weights (fingerprints, edits), so those few stay on the
  accelerator (SD 1.x: 20 M parameters, SDXL: 0.3 B).
* ``vae_tiling`` decodes large images in overlapping tiles (``vae.enable_tiling``). It changes pixels only where
  the latent is larger than the VAE's tile (above 512×512 for SD 1.x, 1024×1024 for SDXL); there the images
  differ from untiled ones by more than rounding, so :func:`debias.generation.generate.default_settings` records it and the
  image cache keeps such images apart.
* ``vae_slicing`` decodes one image of a batch at a time (``vae.enable_slicing``);
* ``attention_slicing`` computes attention a few heads at a time (``enable_attention_slicing``); only UNets
  have it (diffusers' transformers ignore it), and PyTorch's own attention is already memory-efficient, so it
  rarely helps.

Slicing and offload run the same arithmetic in another order or place: images stay within the one 8-bit level
that another batch size also moves (``tests/test_memory.py`` checks this on CPU).

diffusers 0.42 has no pipeline-level ``enable_vae_tiling``/``enable_vae_slicing`` any more (older versions
forwarded them to the VAE), so the VAE's own ``enable_tiling``/``enable_slicing`` are called, which every
version has.

:class:`AdaptiveBatch` is the batch size :func:`debias.generation.generate.measure` uses when asked to adapt: on a CUDA
device it measures the first batch's peak memory per image and sizes the next batches from what
``torch.cuda.mem_get_info`` says is free; elsewhere it keeps the size it was given. Out-of-memory halving stays.
"""

from __future__ import annotations

import importlib.util
import sys
import weakref
from typing import Any, Callable, Optional

import torch

from debias.core.models import denoiser, find_cross_attention
from debias.core.options import MemoryOptions  # noqa: F401 - the group is declared with the others; its code is here


def apply_memory_options(pipe, options: MemoryOptions, *, device: str | torch.device | None = None,
                         say: Callable[[str], None] | None = None) -> list[str]:
    """Apply ``options`` to ``pipe`` in place; returns what was applied, in words (for a run's record).

    Each option the pipeline cannot take is skipped and ``say`` (default: print to stderr) is told why.
    ``device`` is where offloaded components run: by default the pipeline's device when it is an accelerator,
    else the first CUDA GPU; with none, offloading is skipped (the weights are in CPU memory already). Apply
    the options after loading and moving the pipeline: diffusers refuses ``pipe.to(...)`` once offload is on.
    """
    say = say or (lambda text: print(text, file=sys.stderr))
    applied: list[str] = ["batch size adapts to free GPU memory"] if options.adapt_batch else []
    for name, apply in (("vae_tiling", _vae_tiling), ("vae_slicing", _vae_slicing),
                        ("attention_slicing", _attention_slicing)):
        if getattr(options, name):
            done, note = apply(pipe)
            applied += [note] if done else []
            if not done:
                say(f"{name} skipped: {note}")
    if options.cpu_offload != "none":
        done, note = _offload(pipe, options.cpu_offload, device)
        applied += [note] if done else []
        if not done:
            say(f"cpu_offload={options.cpu_offload} skipped: {note}")
    return applied


def _vae_switch(pipe, kind: str) -> tuple[bool, str]:
    """The VAE's own ``enable_tiling`` / ``enable_slicing`` (``kind``: "tiling" | "slicing"), where it has them."""
    vae = getattr(pipe, "vae", None)
    if vae is None or not hasattr(vae, f"enable_{kind}") or not hasattr(vae, f"use_{kind}"):
        return False, f"{type(vae).__name__ if vae is not None else 'this pipeline'} has no {kind[:-3]}ed decoding"
    getattr(vae, f"enable_{kind}")()
    where = f": tiles above {tile_size(pipe)} px" if kind == "tiling" else ""
    return True, f"vae_{kind} ({type(vae).__name__}.enable_{kind}{where})"


def _vae_tiling(pipe) -> tuple[bool, str]:
    return _vae_switch(pipe, "tiling")


def _vae_slicing(pipe) -> tuple[bool, str]:
    return _vae_switch(pipe, "slicing")


def _attention_slicing(pipe) -> tuple[bool, str]:
    net = denoiser(pipe)
    if not hasattr(net, "set_attention_slice") or not hasattr(pipe, "enable_attention_slicing"):
        return False, (f"{type(net).__name__} has no sliced attention (diffusers offers it for UNets); its "
                       "attention is PyTorch's memory-efficient kernel already")
    pipe.enable_attention_slicing()
    return True, f"attention_slicing ({type(net).__name__}, slice 'auto': half the heads at a time)"


def tile_size(pipe) -> Optional[int]:
    """The image size above which a tiled VAE decodes in tiles (None: the VAE does not tile)."""
    size = getattr(getattr(pipe, "vae", None), "tile_sample_min_size", None)
    return int(size) if size else None


def vae_tiles(pipe, height: int, width: int) -> bool:
    """Whether decoding a ``height``×``width`` image goes through tiles (tiling on, image larger than a tile):
    the only memory option that changes pixels by more than rounding."""
    vae = getattr(pipe, "vae", None)
    size = tile_size(pipe)
    return bool(getattr(vae, "use_tiling", False)) and size is not None and max(height, width) > size


# --------------------------------------------------------------------------------------------- offload
def execution_device(pipe) -> torch.device:
    """Where the pipeline computes: the accelerator of offloaded components, else the pipeline's device."""
    device = getattr(pipe, "_execution_device", None)
    if not isinstance(device, torch.device):
        device = getattr(pipe, "device", None)
    return device if isinstance(device, torch.device) and device.type != "meta" else torch.device("cpu")


def _offload(pipe, mode: str, device: str | torch.device | None) -> tuple[bool, str]:
    """Model or sequential CPU offload onto ``device`` (see :func:`apply_memory_options`)."""
    target = _offload_device(pipe, device)
    if target is None:
        return False, ("no accelerator to offload to: on the CPU the weights are in CPU memory already (offload "
                       "saves GPU memory; on a CPU lower --batch-size or the image size instead)")
    if mode == "sequential" and target.type == "cpu":
        return False, ("sequential offload needs an accelerator to run on (accelerate's per-layer hooks fail with "
                       "the CPU as the execution device, and would save nothing there)")
    if getattr(pipe, "model_cpu_offload_seq", None) is None and mode == "model":
        return False, f"{type(pipe).__name__} declares no component order for model offload (model_cpu_offload_seq)"
    if importlib.util.find_spec("accelerate") is None:  # diffusers' offload is built on it
        return False, "offloading needs the accelerate package: pip install accelerate"
    resident = _kv_modules(pipe) if mode == "sequential" else []
    if mode == "model":
        pipe.enable_model_cpu_offload(device=target)
    else:
        pipe.enable_sequential_cpu_offload(device=target)
        _keep_on_device(resident, target)
    note = f"cpu_offload={mode} onto {target}"
    if target.type == "cpu":
        note += " (no memory saved: the execution device is the CPU)"
    if resident:
        note += f"; {len(resident)} cross-attention K/V projections kept on {target} so edits can read and write them"
    return True, note


def _offload_device(pipe, device: str | torch.device | None) -> Optional[torch.device]:
    if device is not None:
        return torch.device(device)
    current = execution_device(pipe)
    if current.type != "cpu":
        return current
    return torch.device("cuda", 0) if torch.cuda.is_available() else None


def _kv_modules(pipe) -> list[torch.nn.Module]:
    try:
        return [p.module for p in find_cross_attention(pipe)]
    except Exception:  # noqa: BLE001 - a pipeline debias cannot edit: nothing to keep resident
        return []


def _keep_on_device(modules: list[torch.nn.Module], device: torch.device) -> None:
    """Take ``modules`` out of accelerate's sequential offload: their weights become ordinary tensors on
    ``device``, so reading them (fingerprints) and writing them (baked edits) works as without offload."""
    from accelerate.hooks import remove_hook_from_module

    for module in modules:
        hook = getattr(module, "_hf_hook", None)
        weights = getattr(hook, "weights_map", None)
        remove_hook_from_module(module)
        for name, param in list(module.named_parameters(recurse=False)):
            value = weights[name] if weights is not None and param.device.type == "meta" else param.data
            module._parameters[name] = torch.nn.Parameter(value.to(device), requires_grad=False)


# -------------------------------------------------------------------------------------- adaptive batch
MAX_ADAPTIVE_BATCH = 32
"""Largest batch the adaptive size grows to: beyond about 16 images at 512² a GPU gains little throughput, and
an interrupted batch is lost work."""
HEADROOM = 0.8
"""Share of the free memory the next batches may plan to use (allocator fragmentation, other processes)."""


def batch_size_for(per_image: float, available: float, current: int, *, limit: int = MAX_ADAPTIVE_BATCH,
                   headroom: float = HEADROOM) -> int:
    """Images per call that fit ``headroom`` of ``available`` bytes at ``per_image`` bytes each. Pure.

    Never below ``current`` (that many just ran) nor above ``max(limit, current)``."""
    if per_image <= 0:
        return max(current, min(limit, current))
    fits = int(headroom * available // per_image)
    return max(current, min(fits, max(limit, current)))


class CudaMemory:
    """The two numbers :class:`AdaptiveBatch` needs from a CUDA device."""

    def __init__(self, device: torch.device):
        self.device = device
        self._base = 0

    def begin(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self._base = torch.cuda.memory_allocated(self.device)

    def peak_since_begin(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - self._base

    def available(self) -> int:
        """Free device memory plus what torch's allocator holds unused (it hands that out first)."""
        free, _ = torch.cuda.mem_get_info(self.device)
        return free + torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)


_PER_IMAGE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # pipe -> {settings: bytes per image}


class AdaptiveBatch:
    """The batch size of one :func:`debias.generation.generate.measure` call.

    With a ``memory`` probe (a CUDA device) the first batch is measured, its peak memory per image is
    remembered for the pipeline and these settings, and the size becomes what fits (:func:`batch_size_for`).
    Without one, or after an out-of-memory error, the size only changes by halving.
    """

    def __init__(self, size: int, memory: Optional[CudaMemory] = None, pipe: Any = None, key: Any = None):
        self.size = int(size)
        self.memory = memory
        self._costs = _PER_IMAGE.setdefault(pipe, {}) if memory is not None and pipe is not None else {}
        self._key = key
        if memory is not None and key in self._costs:
            self.size = batch_size_for(self._costs[key], memory.available(), self.size)
            self.memory = None

    @classmethod
    def for_call(cls, size: int, pipe: Any, settings: Any, adapt: bool) -> "AdaptiveBatch":
        device = execution_device(pipe)
        probe = CudaMemory(device) if adapt and device.type == "cuda" and torch.cuda.is_available() else None
        return cls(size, probe, pipe, settings)

    def begin(self) -> None:
        if self.memory is not None:
            self.memory.begin()

    def done(self, images: int) -> None:
        """After a batch of ``images`` that fit: size the next ones from its peak (once)."""
        if self.memory is None or images < 1:
            return
        per_image = self.memory.peak_since_begin() / images
        self._costs[self._key] = per_image
        self.size = batch_size_for(per_image, self.memory.available(), self.size)
        self.memory = None

    def halved(self, size: int) -> None:
        """An out-of-memory error set the size to ``size``: keep it, and stop adapting."""
        self.size = size
        self.memory = None
