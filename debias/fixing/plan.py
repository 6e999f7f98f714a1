"""The rows a fix's edits are made of: destination phrases, edit rows, anchors, probe and preserve rows.

A profession's edit is its rows (source tokens C and each destination's C*), strengths, the anchors every edit keeps
fixed, and the preserve rows (c* = c) of the professions left unedited. The pure solver lives in
:mod:`debias.editing.solver`; :mod:`debias.fixing.kclass` builds a profession's matrices from these rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from debias.editing.tokens import edit_rows, encode_conditioning

GENDER_WORDS = {"female": "female", "male": "male"}


def destination_phrase(entry_phrase: str, side: str) -> str:
    """ "a nurse" + "male" → "a male nurse"; "an engineer" + "female" → "a female engineer" (article follows)."""
    name = entry_phrase.split(" ", 1)[1]
    return f"a {GENDER_WORDS[side]} {name}"


def edit_contexts(augmentations: Sequence[str], tuning: Sequence[str]) -> tuple[str, ...]:
    """The templates an edit's rows are encoded in: the profile's augmentations, then each tuning template not
    among them (compared without case).

    λ_p is judged on the tuning templates' images, so the edit is fitted on their rows too: a tuning style the
    augmentations lack (TIMED's "A sketch of {}") would otherwise be reached only as far as an edit carries to an
    unseen context."""
    contexts = {t.lower(): t for t in augmentations}
    for template in tuning:
        contexts.setdefault(template.lower(), template)
    return tuple(contexts.values())


def anchor_prompts_for(augmentations: Sequence[str]) -> list[str]:
    """The bare templates ("a photo of {}" → "a photo of") and the empty prompt: context that every prompt shares."""
    prompts = [t.replace("{}", " ").strip() for t in augmentations] + [""]
    return list(dict.fromkeys(" ".join(p.split()) for p in prompts))


@dataclass(frozen=True)
class Anchors:
    """Conditioning rows kept fixed by every edit of a fix, and their weight relative to one edit row."""

    rows: torch.Tensor
    strength: float


def profession_edit_rows(pipe, source: str, destination: str, augmentations) -> tuple[torch.Tensor, torch.Tensor]:
    C, C_star = edit_rows(pipe, source, destination, augmentations)
    return C.double(), C_star.double()


def probe_rows(pipe, prompts: Sequence[str]) -> torch.Tensor:
    emb = encode_conditioning(pipe, list(prompts))
    return emb.reshape(-1, emb.shape[-1]).double()


def preserve_prompt_list(preserve, unedited: Sequence) -> list[str]:
    """The user's preserve prompts (a list, one prompt, or a file of one per line) and the unedited professions'."""
    prompts: list[str] = []
    if isinstance(preserve, (str, os.PathLike)) and Path(preserve).is_file():
        lines = Path(preserve).read_text(encoding="utf-8").splitlines()
        prompts += [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]
    elif isinstance(preserve, str):
        prompts.append(preserve)
    elif preserve:
        prompts += [str(p) for p in preserve]
    prompts += [p.entry.phrase for p in unedited]
    return list(dict.fromkeys(prompts))


def encode_preserve_rows(pipe, prompts: Sequence[str], augmentations) -> torch.Tensor:
    return probe_rows(pipe, [p for prompt in prompts for p in [prompt, *(t.format(prompt) for t in augmentations)]])


def kept_rows(preserve_rows, preserve_strength: float, anchors: Optional[Anchors]) -> list[tuple]:
    """The (rows, weight) blocks the joint edit keeps in place: preserve rows and anchors."""
    return [(preserve_rows, preserve_strength)] + ([(anchors.rows, anchors.strength)] if anchors else [])
