"""Sharing a run's work items between the processes of an ``accelerate launch`` group (or doing all of them alone).

:func:`debias.generation.generate.measure` takes a :class:`Distributed`: each process generates every ``world_size``-th missing
item, and all wait at the barrier before any writes to the shared cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass(frozen=True)
class Distributed:
    """Which share of the work items this process does, and how to wait for the others."""

    rank: int = 0
    world_size: int = 1
    barrier: Callable[[], None] = field(default=lambda: None, compare=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_from_env() -> Distributed:
    """One process, or the ``accelerate launch`` group this process belongs to (from its env vars)."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return Distributed()
    from accelerate import PartialState

    # cpu=True selects accelerate's multi-CPU (gloo) state when there is no GPU to share the work
    state = PartialState(cpu=not torch.cuda.is_available())
    return Distributed(rank=state.process_index, world_size=state.num_processes, barrier=state.wait_for_everyone)
