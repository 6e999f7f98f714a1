"""What debias knows about an edit applied to a pipeline, kept beside the pipeline rather than on it.

Baking an edit writes ``W @ M`` into the K/V weights; to revert it bit for bit, and to keep naming the model by
its original weights, the originals must be kept somewhere. They live in an :class:`EditState` looked up by
pipeline (a weak mapping: the state goes when the pipeline does), so a diffusers pipeline object carries no
attributes of ours and is exactly what ``from_pretrained`` returned.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Optional

import torch

_STATES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@dataclass
class EditState:
    originals: Optional[dict[str, torch.Tensor]] = None  # the unedited K/V weights while an edit is baked in
    matrix: Optional[torch.Tensor] = None  # the edit baked in (None: unedited)
    transform_active: bool = False  # inside conditioning_transform()
    fingerprint: Optional[str] = None  # memo of models.fingerprint (it hashes every K/V weight)


def edit_state(pipe) -> EditState:
    """The edit state of ``pipe`` (created empty the first time it is asked for)."""
    state = _STATES.get(pipe)
    if state is None:
        state = _STATES[pipe] = EditState()
    return state
