"""How debias calls a diffusers pipeline: the options fixed for every call, and the arguments its ``__call__`` takes.

Generation (:mod:`debias.generation.generate`) and the edit's prompt capture (:mod:`debias.editing.tokens`) both
call the pipeline through :func:`call_arguments`, so an edit is computed from exactly the text that generation
encodes.
"""

from __future__ import annotations

import inspect
from typing import Any

from debias.core.profiles import profile_of_pipeline

PIPELINE_OPTIONS: dict[str, Any] = {"use_resolution_binning": False, "clean_caption": False}
"""Call options fixed for every pipeline whose ``__call__`` takes them (PixArt's); see :func:`pipeline_options`."""


def pipeline_options(pipe) -> dict[str, Any]:
    """The :data:`PIPELINE_OPTIONS` this pipeline's ``__call__`` names (none for Stable Diffusion).

    Generation and the edit's prompt capture (:func:`debias.editing.encode_conditioning`) both call the
    pipeline with these, so an edit is computed from exactly the text and the size that generation uses:

    * ``use_resolution_binning=False``: PixArt would otherwise round the requested size to the nearest
      entry of its aspect-ratio table (and raise ``Invalid sample size`` for a transformer with no table);
      the image is made at the height and width the cache key records.
    * ``clean_caption=False``: caption cleaning needs beautifulsoup4 and ftfy (without them diffusers
      warns on every call and skips it) and rewrites the text (URLs, punctuation, …), so the encoded text
      would depend on which optional packages are installed. Without it PixArt encodes
      ``prompt.lower().strip()``.
    * ``max_sequence_length``: the T5 token count a family's profile names (``Sampler.text_length``;
      FLUX.1-schnell: 256, as its card says), where the pipeline takes it; else the pipeline's own.
    """
    accepted = inspect.signature(pipe.__call__).parameters
    options = {name: value for name, value in PIPELINE_OPTIONS.items() if name in accepted}
    profile = profile_of_pipeline(pipe)
    if profile is not None and profile.sampler.text_length and "max_sequence_length" in accepted:
        options["max_sequence_length"] = profile.sampler.text_length
    return options


def call_arguments(pipe, **arguments: Any) -> dict[str, Any]:
    """``arguments`` and :func:`pipeline_options`, less those the pipeline's ``__call__`` does not take.

    Generation passes the same options to every pipeline; one without, say, ``guidance_scale`` gets the others
    (its guidance is its own). A ``__call__`` that takes ``**kwargs`` is given everything."""
    parameters = inspect.signature(pipe.__call__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return {**arguments, **pipeline_options(pipe)}
    return {k: v for k, v in arguments.items() if k in parameters} | pipeline_options(pipe)
