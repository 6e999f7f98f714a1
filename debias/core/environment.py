"""What a run record says about where it ran: the package versions and the hardware (audit and fix both record it)."""

from __future__ import annotations

import platform
from typing import Any

import torch

from debias import __version__
from debias.core.distributed import Distributed


def package_versions() -> dict[str, str]:
    import diffusers  # heavy: imported only when a record is written, by which time a model has loaded it anyway
    import transformers

    return {"debias": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__}


def hardware_info(settings, threads: int, dist: Distributed) -> dict[str, Any]:
    """The device the sampler ran on (``settings.device``), its name, torch threads and processes."""
    if settings.device == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
    else:
        name = platform.processor() or platform.machine()
    return {"device": settings.device, "name": name, "threads": threads, "processes": dist.world_size}
