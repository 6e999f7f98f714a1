"""The built-in mini model: a tiny procedural world with planted female shares, and a real
diffusers ``StableDiffusionPipeline`` trained on it, shipped in the package.

``PIPELINE_DIR`` loads with ``StableDiffusionPipeline.from_pretrained`` offline;
``CLASSIFIER_DIR`` is the mini CLIP (transformers ``CLIPModel``) that reads gender zero-shot. ``V2_*`` are the
same for mini world v2 (gender, skin tone and age).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from debias.core.errors import DebiasError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PIPELINE_DIR = WEIGHTS_DIR / "pipeline"
CLASSIFIER_DIR = WEIGHTS_DIR / "classifier"
WORLD_JSON = WEIGHTS_DIR / "world.json"

# Mini world v2 (``--model mini-v2``): the same world whose people also carry a skin tone and an age
# (:mod:`debias.mini.world2`), trained the same way; its own pipeline and classifier.
V2_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights_v2"
V2_PIPELINE_DIR = V2_WEIGHTS_DIR / "pipeline"
V2_CLASSIFIER_DIR = V2_WEIGHTS_DIR / "classifier"

# Default sampler settings (see docs/mini-model.md for why): a multistep solver at 10 steps and no
# classifier-free guidance, which samples the learned shares instead of amplifying them.
SAMPLER: dict[str, Any] = {"scheduler": "DPMSolverMultistepScheduler", "steps": 10, "guidance": 1.0,
                           "height": 32, "width": 32, "batch_size": 64}


def load_world_config(path: str | Path | None = None) -> dict[str, Any]:
    """The shipped ``world.json``: professions, planted shares, templates, sampler, measurements."""
    path = Path(path) if path else WORLD_JSON
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DebiasError(f"{path}: the mini model's world.json is missing; rebuild it with "
                          f"`python -m debias.mini.train --out DIR` or reinstall debias") from None
